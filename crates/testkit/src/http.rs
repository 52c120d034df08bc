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

    /// Create an archive item in the demo archive; returns its pk.
    pub async fn new_item(&self, title: &str) -> String {
        let r = self
            .post(
                "archives/items/",
                DEMO,
                json!({"archive": self.url(&format!("archives/{ARCHIVE_PK}/")), "title": title}),
            )
            .await;
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
        let urls = self
            .patch(
                &format!("uploads/{pk}/{id}/generate-presigned-urls/"),
                token,
                json!({"part_numbers": [1]}),
            )
            .await;
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
        let done = self
            .patch(
                &format!("uploads/{pk}/{id}/complete-multipart-upload/"),
                token,
                json!({"parts": [{"ETag": etag, "PartNumber": 1}]}),
            )
            .await;
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
