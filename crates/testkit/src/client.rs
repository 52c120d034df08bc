//! Shared by the platform client's tests: a sandbox on loopback, clients with test-sized timings, and
//! reads of the sandbox's request counts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use gc_client::models::UserUpload;
use gc_client::{
    Client, ClientConfig, Jitter, LocalFile, RetryPolicy, Token, UploadObserver, VerifyTiming,
};
use gc_sandbox::{DEMO_TOKEN, FaultAction, FaultRule, Fixture, Sandbox, SandboxOptions};
use serde_json::Value;

/// The sandbox's S3 part endpoint, as its request counts name it.
pub const S3_PUT: &str = "PUT /s3/grand-challenge-uploads/uploads/{user}/{upload}";
pub const PRESIGN: &str = "PATCH /api/v1/uploads/{pk}/{s3_upload_id}/generate-presigned-urls/";
pub const COMPLETE: &str = "PATCH /api/v1/uploads/{pk}/{s3_upload_id}/complete-multipart-upload/";
pub const ABORT: &str = "PATCH /api/v1/uploads/{pk}/{s3_upload_id}/abort-multipart-upload/";
pub const LIST_PARTS: &str = "GET /api/v1/uploads/{pk}/{s3_upload_id}/list-parts/";

/// The part size the tests use, and the sandbox's minimum for non-final parts to match.
pub const PART: u64 = 64 * 1024;

pub async fn sandbox() -> Sandbox {
    sandbox_with(|_| {}).await
}

pub async fn sandbox_with(tweak: impl FnOnce(&mut SandboxOptions)) -> Sandbox {
    let mut o = SandboxOptions::new(Fixture::demo());
    o.import_delay = Duration::from_millis(30);
    o.min_part_size = PART;
    tweak(&mut o);
    Sandbox::start(o).await.expect("the sandbox starts")
}

/// Quick retries, so that fault tests finish fast, but enough of them to ride out a few faults.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        max_attempts: 5,
        too_many_uploads_wait: Duration::from_secs(1),
        jitter: Jitter::Equal,
    }
}

pub fn config(sb: &Sandbox, token: &str) -> ClientConfig {
    let mut c = ClientConfig::new(sb.base_url(), Token::parse(token).unwrap());
    c.ca_cert = sb.ca_cert_path().map(Path::to_path_buf);
    c.part_size = PART;
    c.retry = fast_retry();
    c.timeout = Duration::from_secs(10);
    c
}

pub fn client(sb: &Sandbox) -> Client {
    Client::new(config(sb, DEMO_TOKEN)).unwrap()
}

pub fn client_as(sb: &Sandbox, token: &str) -> Client {
    Client::new(config(sb, token)).unwrap()
}

/// A client of the demo user whose [`config`] `tweak` changes first (fewer parallel parts, a shorter
/// timeout, ...).
pub fn client_with(sb: &Sandbox, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut c = config(sb, DEMO_TOKEN);
    tweak(&mut c);
    Client::new(c).unwrap()
}

/// What nearly every client test starts with: a [`sandbox`] and a [`client`] of the demo user against it.
pub async fn sandbox_and_client() -> (Sandbox, Client) {
    let sb = sandbox().await;
    let c = client(&sb);
    (sb, c)
}

pub fn timing() -> VerifyTiming {
    VerifyTiming {
        first_poll: Duration::from_millis(20),
        max_poll: Duration::from_millis(200),
        image_deadline: Duration::from_secs(20),
        dicom_deadline: Duration::from_secs(20),
        file_deadline: Duration::from_secs(20),
    }
}

/// How many requests the sandbox answered as `"<METHOD> <route pattern> <status>"`.
pub fn count(sb: &Sandbox, key: &str) -> u64 {
    sb.state()["requests"][key].as_u64().unwrap_or(0)
}

/// Requests to one route pattern with any answer.
pub fn count_any(sb: &Sandbox, method_and_pattern: &str) -> u64 {
    let state = sb.state();
    let prefix = format!("{method_and_pattern} ");
    state["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// The sandbox's record of an upload (pk, filename, status, size, parts).
pub fn upload_state(sb: &Sandbox, pk: &str) -> Option<Value> {
    sb.state()["uploads"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["pk"] == pk).cloned())
}

/// Replace the sandbox's faults by `rules`, each in the sandbox's text form (e.g.
/// `"GET /api/v1/archives/items/* 500 times=2"`, `"PUT /s3/* drop after times=1"`).
pub fn set_faults(sb: &Sandbox, rules: &[&str]) {
    let rules = rules
        .iter()
        .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    sb.set_faults(rules).unwrap();
}

/// A fault answering `status` (no `Retry-After`), for [`rule`].
pub fn status(status: u16) -> FaultAction {
    FaultAction::Status {
        status,
        retry_after: None,
    }
}

/// A fault rule on `method` requests to `path` (a glob) that always applies, the first `times` times
/// (or every time with `None`).
pub fn rule(method: &str, path: &str, action: FaultAction, times: Option<u64>) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path: path.into(),
        probability: 1.0,
        action,
        after: false,
        times,
    }
}

/// A file of `len` pseudo-random bytes.
pub fn data_file(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// `path` as the file to upload, under its own file name.
pub fn local_file(path: &Path) -> LocalFile {
    LocalFile {
        path: path.to_path_buf(),
        filename: path.file_name().unwrap().to_string_lossy().into_owned(),
    }
}

/// Everything the observer heard, for assertions.
#[derive(Default)]
pub struct Recorder {
    pub created: Mutex<Vec<UserUpload>>,
    pub parts: Mutex<Vec<(String, u32, String)>>,
    pub bytes: Mutex<u64>,
}

impl Recorder {
    /// The numbers of the parts it heard were done, sorted.
    pub fn part_numbers(&self) -> Vec<u32> {
        let mut numbers: Vec<u32> = self.parts.lock().unwrap().iter().map(|p| p.1).collect();
        numbers.sort();
        numbers
    }
}

impl UploadObserver for Recorder {
    fn created(&self, upload: &UserUpload) {
        self.created.lock().unwrap().push(upload.clone());
    }
    fn part_done(&self, upload_pk: &str, part: u32, etag: &str) {
        self.parts
            .lock()
            .unwrap()
            .push((upload_pk.into(), part, etag.into()));
    }
    fn progress(&self, bytes: u64) {
        *self.bytes.lock().unwrap() += bytes;
    }
}

/// A MetaImage of `dims` written to `dir/ct.mha` and uploaded, then a job of the demo world's
/// `lung-volume-estimator` started on it; the job as its creation answered.
pub async fn job_on_an_uploaded_mha(
    c: &Client,
    dir: &Path,
    dims: [u32; 3],
    seed: u64,
) -> gc_client::CreatedJob {
    let path = &dir.join("ct.mha");
    gc_content::samples::write_mha(path, dims, seed).unwrap();
    job_on_upload(c, "lung-volume-estimator", path).await
}

/// `path` uploaded under its file name with no observer, which must succeed.
pub async fn upload(c: &Client, path: &Path) -> UserUpload {
    c.upload_file(&local_file(path), None, &gc_client::NoObserver)
        .await
        .unwrap()
}

/// How tests follow a job: quick polls, and 20 s for it to end.
pub fn job_polling() -> gc_client::JobPolling {
    gc_client::JobPolling {
        first_poll: Duration::from_millis(20),
        max_poll: Duration::from_millis(200),
        deadline: Duration::from_secs(20),
    }
}

/// `path` uploaded (under its file name), then a job of `algorithm` started on it as its `ct-image`;
/// the job as its creation answered.
pub async fn job_on_upload(c: &Client, algorithm: &str, path: &Path) -> gc_client::CreatedJob {
    let upload = upload(c, path).await;
    let a = c.algorithm(algorithm).await.unwrap();
    c.start_job(
        &a,
        &[gc_client::models::ValueEntry {
            socket: "ct-image".into(),
            source: gc_client::models::ValueSource::UserUploads(vec![upload.api_url]),
        }],
    )
    .await
    .unwrap()
}
