//! Shared helpers for the sandbox tests: start a sandbox on loopback and talk to it over real HTTP.

use std::time::{Duration, Instant};

use gc_sandbox::{
    DEMO_ADMIN_TOKEN, DEMO_READER_TOKEN, DEMO_TOKEN, Fixture, Sandbox, SandboxOptions,
};
use serde_json::{Value, json};

pub const ARCHIVE_PK: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
pub const READER_STUDY_PK: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
pub const ANSWERED_PK: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";

pub struct Env {
    pub sandbox: Sandbox,
    pub http: reqwest::Client,
    pub base: String,
    pub origin: String,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn start_with(options: SandboxOptions) -> Env {
    let sandbox = Sandbox::start(options).await.unwrap();
    let base = sandbox.base_url().to_string();
    let origin = sandbox.base_url().origin().ascii_serialization();
    let http = match sandbox.ca_cert_path() {
        Some(ca) => {
            let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tls_certs_merge([ca])
                .build()
                .unwrap()
        }
        None => client(),
    };
    Env {
        sandbox,
        http,
        base,
        origin,
    }
}

/// A sandbox on the world the fixture text `fixture` describes (its files relative to `dir`).
pub async fn start_on(fixture: &str, dir: &std::path::Path) -> Env {
    let fixture = Fixture::from_toml_str(fixture, dir).unwrap();
    start_with(SandboxOptions::new(fixture)).await
}

/// The fixture text of one user, `u` with the token `1111` ([`U`]): how a test's own world starts.
pub const ONE_USER: &str = "[[user]]\nusername = \"u\"\ntoken = \"1111\"\n";
/// The token of [`ONE_USER`].
pub const U: Option<&str> = Some("1111");

pub async fn start() -> Env {
    let mut o = SandboxOptions::new(Fixture::demo());
    o.min_part_size = 8;
    start_with(o).await
}

pub const DEMO: Option<&str> = Some(DEMO_TOKEN);
pub const READER: Option<&str> = Some(DEMO_READER_TOKEN);
pub const ADMIN: Option<&str> = Some(DEMO_ADMIN_TOKEN);

impl Env {
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("GET", path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send("POST", path, token, Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send("PATCH", path, token, Some(body)).await
    }

    /// The body of a plain GET of `url` (no token: media and presigned URLs), which must succeed.
    pub async fn bytes(&self, url: &str) -> bytes::Bytes {
        let r = self.http.get(self.url(url)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        r.bytes().await.unwrap()
    }

    /// The JSON of a plain GET of `url` (no token), e.g. the sandbox's own `/_sandbox/` endpoints.
    pub async fn json_at(&self, url: &str) -> Value {
        serde_json::from_slice(&self.bytes(url).await).unwrap()
    }

    /// Presigned URLs for `parts` of the upload `pk` (S3 upload id `id`), asked as `token`'s user.
    pub async fn presign(&self, token: Option<&str>, pk: &str, id: &str, parts: &[u32]) -> Reply {
        let path = format!("uploads/{pk}/{id}/generate-presigned-urls/");
        self.patch(&path, token, json!({ "part_numbers": parts }))
            .await
    }

    /// The first upload session of `token`'s user with `status` (e.g. "Failed"), if any.
    pub async fn session_with_status(&self, token: Option<&str>, status: &str) -> Option<Value> {
        let list = self.get("cases/upload-sessions/", token).await.json();
        find_by(&list["results"], &["status"], status).cloned()
    }

    pub async fn state(&self) -> Value {
        self.http
            .get(format!("{}/_sandbox/state", self.origin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST archives/items/` of an item titled `title` in the demo archive, as `token`'s user.
    pub async fn post_item(&self, token: Option<&str>, title: &str) -> Reply {
        let archive = self.url(&format!("archives/{ARCHIVE_PK}/"));
        let body = json!({"archive": archive, "title": title});
        self.post("archives/items/", token, body).await
    }

    /// `complete-multipart-upload` of the upload `pk` (S3 upload id `id`) with `body`.
    pub async fn complete(&self, token: Option<&str>, pk: &str, id: &str, body: Value) -> Reply {
        let path = format!("uploads/{pk}/{id}/complete-multipart-upload/");
        self.patch(&path, token, body).await
    }

    /// `abort-multipart-upload` of the upload `pk` (S3 upload id `id`), as `token`'s user.
    pub async fn abort(&self, token: Option<&str>, pk: &str, id: &str) -> Reply {
        let path = format!("uploads/{pk}/{id}/abort-multipart-upload/");
        self.patch(&path, token, json!({})).await
    }

    /// A `PATCH` of the item or display set at `path` that sets `values` (a list of values entries), as
    /// `token`'s user.
    pub async fn set_values(&self, path: &str, token: Option<&str>, values: Value) -> Reply {
        self.patch(path, token, json!({ "values": values })).await
    }

    /// Create an archive item in the demo archive; returns its pk.
    pub async fn new_item(&self, title: &str) -> String {
        let r = self.post_item(DEMO, title).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["pk"].as_str().unwrap().to_string()
    }

    /// Create a display set in the demo reader study; returns the response body.
    pub async fn new_display_set(&self, body: Value) -> Value {
        let r = self.post("reader-studies/display-sets/", DEMO, body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()
    }

    /// A completed upload of `bytes` (one part), owned by `token`'s user; returns the upload JSON.
    pub async fn upload(&self, token: Option<&str>, filename: &str, bytes: &[u8]) -> Value {
        let up = self
            .post("uploads/", token, json!({"filename": filename}))
            .await;
        assert_eq!(up.status, 201, "{}", up.text);
        let up = up.json();
        let (pk, id) = (
            up["pk"].as_str().unwrap(),
            up["s3_upload_id"].as_str().unwrap(),
        );
        let urls = self.presign(token, pk, id, &[1]).await;
        assert_eq!(urls.status, 200, "{}", urls.text);
        let url = urls.json()["presigned_urls"]["1"]
            .as_str()
            .unwrap()
            .to_string();
        let put = self
            .http
            .put(url)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        let etag = put.headers()["etag"].to_str().unwrap().to_string();
        let parts = json!({"parts": [{"ETag": etag, "PartNumber": 1}]});
        let done = self.complete(token, pk, id, parts).await;
        assert_eq!(done.status, 200, "{}", done.text);
        done.json()
    }
}

/// Poll `check` until it returns `Some`, or panic after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys of a JSON object, in order.
pub fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(|k| k.as_str())
        .collect()
}

pub fn has_keys(v: &Value, expected: &[&str]) {
    let got = keys(v);
    for k in expected {
        assert!(got.contains(k), "key {k:?} missing in {v}");
    }
}

/// The element of a JSON array whose `key` (a path of object keys) equals `want`.
pub fn find_by<'a>(list: &'a Value, key: &[&str], want: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|x| key.iter().fold(*x, |v, k| &v[*k]) == want)
}

/// The value of an item or display set, as the API shows it, for the socket `slug`.
pub fn api_value<'a>(item: &'a Value, slug: &str) -> Option<&'a Value> {
    find_by(&item["values"], &["interface", "slug"], slug)
}

/// Output `slug` of the first job of the first algorithm in the sandbox's state.
pub fn first_job_output<'a>(state: &'a Value, slug: &str) -> &'a Value {
    let outputs = &state["algorithms"][0]["jobs"][0]["outputs"];
    find_by(outputs, &["socket"], slug).unwrap_or_else(|| panic!("no output {slug} in {outputs}"))
}
