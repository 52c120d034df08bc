//! S3 multipart uploads (gc-protocol.md §2): streamed from disk in parts, bounded concurrency, ETags kept
//! verbatim, resumable via list-parts after a crash.
//!
//! Differences from gcapi, each for a reason:
//! - parts go up concurrently (a client-wide limit on parts in flight, another on files), because one
//!   32 MiB part at a time leaves most links idle;
//! - every part is read from disk as it is sent (open, seek, take), so memory stays flat for any file size;
//! - a failed part is retried alone with a fresh presigned URL (an expired URL answers 403) instead of the
//!   whole file being aborted;
//! - an empty file is sent as one empty part 1, which S3 accepts (gcapi sends no part and fails);
//! - a 500 on complete means the upload is dead: it is aborted and the file uploaded again once;
//! - the observer learns the upload's pk and S3 upload id before any part is sent, so a journal can resume
//!   after a crash with list-parts, skipping the parts already there with the right size and, where the
//!   ETag is the part's MD5, the same content as the file on disk now.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, ETAG, HeaderMap};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use url::Url;

use super::client::{
    Client, check_pk, classify_transport, read_limited, reply_of, transport_message,
};
use super::models::UserUpload;
use super::retry::{Decision, Outcome, RequestKind, TransportFailure, retry_cause};
use crate::error::GcError;

/// A file to upload, and the name the platform will know it by (the basename, unique within one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub path: PathBuf,
    pub filename: String,
}

/// An upload started earlier (recorded by [`UploadObserver::created`]) to continue instead of starting over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    pub upload_pk: String,
    pub s3_upload_id: String,
}

/// Hooks into an upload, for the journal and for progress reporting. Called from the uploading task; keep
/// them quick.
pub trait UploadObserver: Send + Sync {
    /// A new upload exists on the platform. Called before any part is sent: record `pk` and
    /// `s3_upload_id` now, so that a crash from here on can be resumed.
    fn created(&self, _upload: &UserUpload) {}
    /// A part is stored, with the ETag S3 gave it.
    fn part_done(&self, _upload_pk: &str, _part: u32, _etag: &str) {}
    /// `bytes` more bytes went over the wire (a retried part counts again).
    fn progress(&self, _bytes: u64) {}
}

/// For callers that do not care.
pub struct NoObserver;
impl UploadObserver for NoObserver {}

/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Presigned URLs live 3600 s; one older than this is not used any more.
const URL_MAX_AGE: Duration = Duration::from_secs(50 * 60);
/// Most presigned URLs asked for at once.
const MAX_URL_BATCH: usize = 100;
/// How often a part PUT checks its progress (for the observer and the idle timeout).
const TICK: Duration = Duration::from_millis(100);
/// Read buffer for streaming a part from disk.
const READ_CHUNK: usize = 256 << 10;

/// How a file is cut into parts: every part `part_size` bytes except the last; an empty file is one empty
/// part (S3 rejects a completion without parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartLayout {
    size: u64,
    part_size: u64,
    count: u32,
}

impl PartLayout {
    pub(crate) fn new(size: u64, part_size: u64) -> Result<PartLayout, String> {
        if part_size == 0 {
            return Err("the part size is zero".into());
        }
        let count = size.div_ceil(part_size).max(1);
        if count > MAX_PARTS {
            return Err(format!(
                "a file of {size} bytes needs {count} parts of {part_size} bytes; S3 allows {MAX_PARTS}: \
                 raise the part size"
            ));
        }
        Ok(PartLayout {
            size,
            part_size,
            count: count as u32,
        })
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Offset and length of part `n` (1-based).
    pub(crate) fn range(&self, n: u32) -> (u64, u64) {
        let offset = u64::from(n - 1) * self.part_size;
        (
            offset,
            self.part_size.min(self.size - offset.min(self.size)),
        )
    }
}

/// Which of the parts S3 already has can be kept: those of this layout with exactly the expected size
/// (a part of another size was cut with another part size, or is truncated, and is sent again).
pub(crate) fn reusable_parts(layout: &PartLayout, listed: &[ListedPart]) -> BTreeMap<u32, String> {
    listed
        .iter()
        .filter(|p| p.part_number >= 1 && p.part_number <= layout.count())
        .filter(|p| p.size == Some(layout.range(p.part_number).1) && !p.etag.is_empty())
        .map(|p| (p.part_number, p.etag.clone()))
        .collect()
}

/// The MD5 an ETag states, when it is a plain part ETag (`"<32 hex>"`). S3 gives other forms for
/// KMS-encrypted objects; those say nothing about the content.
pub(crate) fn etag_md5(etag: &str) -> Option<String> {
    let inner = etag.trim().trim_matches('"');
    (inner.len() == 32 && inner.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| inner.to_ascii_lowercase())
}

/// Keep only the parts whose stated MD5 matches the local bytes: a file rewritten with the same size
/// since the interrupted attempt must not be completed from stale parts. Parts without a plain MD5
/// ETag are kept on their size alone.
fn parts_matching_disk(
    path: &Path,
    layout: &PartLayout,
    parts: BTreeMap<u32, String>,
) -> std::io::Result<BTreeMap<u32, String>> {
    use md5::{Digest, Md5};
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut kept = BTreeMap::new();
    for (n, etag) in parts {
        let Some(expected) = etag_md5(&etag) else {
            kept.insert(n, etag);
            continue;
        };
        let (offset, len) = layout.range(n);
        file.seek(SeekFrom::Start(offset))?;
        let mut part = (&mut file).take(len);
        let mut md5 = Md5::new();
        loop {
            let read = part.read(&mut buf)?;
            if read == 0 {
                break;
            }
            md5.update(&buf[..read]);
        }
        if hex::encode(md5.finalize()) == expected {
            kept.insert(n, etag);
        } else {
            tracing::info!(
                part = n,
                "a stored part differs from the file on disk; sending it again"
            );
        }
    }
    Ok(kept)
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ListedPart {
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "PartNumber")]
    part_number: u32,
    #[serde(rename = "Size", default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct PartsList {
    #[serde(default)]
    parts: Vec<ListedPart>,
}

#[derive(Deserialize)]
struct PresignedUrls {
    presigned_urls: HashMap<String, String>,
}

/// Where an upload starts from.
enum Start {
    New,
    Existing {
        upload: UserUpload,
        parts: BTreeMap<u32, String>,
    },
    Completed(UserUpload),
}

impl Client {
    /// Upload one file and return the completed upload, whose `api_url` goes into a values entry.
    ///
    /// With `resume`, an upload recorded earlier is continued: if it is still open, the parts S3 already
    /// has (with the right size) are kept; if it is already complete it is returned as is; if it is gone,
    /// a new upload is started. On a final failure the open upload is aborted (best effort).
    pub async fn upload_file(
        &self,
        file: &LocalFile,
        resume: Option<&ResumeFrom>,
        observer: &dyn UploadObserver,
    ) -> Result<UserUpload, GcError> {
        if file.filename.is_empty()
            || file.filename.contains('/')
            || file.filename.chars().count() > 128
        {
            return Err(GcError::Config(format!(
                "'{}' cannot be an upload filename (1 to 128 characters, no '/')",
                file.filename
            )));
        }
        let _file_slot = self
            .inner
            .file_slots
            .acquire()
            .await
            .map_err(|_| GcError::Config("the client is shutting down".into()))?;
        let meta = tokio::fs::metadata(&file.path)
            .await
            .map_err(|e| GcError::io(&file.path, e))?;
        if !meta.is_file() {
            return Err(GcError::io(
                &file.path,
                std::io::Error::other("not a regular file"),
            ));
        }
        let size = meta.len();
        let layout = PartLayout::new(size, self.inner.part_size)
            .map_err(|m| GcError::io(&file.path, std::io::Error::other(m)))?;

        let mut start = match resume {
            Some(r) => self.resume_point(r, &file.path, &layout).await?,
            None => Start::New,
        };
        let mut restarted = false;
        let began = Instant::now();
        loop {
            let (upload, parts) = match start {
                Start::Completed(upload) => return Ok(upload),
                Start::Existing { upload, parts } => (upload, parts),
                Start::New => {
                    let upload = self.create_upload(&file.filename).await?;
                    observer.created(&upload);
                    (upload, BTreeMap::new())
                }
            };
            match self
                .send_parts_and_complete(file, size, &layout, &upload, parts, observer)
                .await
            {
                Ok(done) => {
                    self.inner.observer.file_uploaded(size, began.elapsed());
                    return Ok(done);
                }
                Err(GcError::UploadDead { context, message }) if !restarted => {
                    tracing::warn!(upload = %upload.pk, %context, %message, "upload is dead, starting a new one");
                    self.abort_quietly(&upload).await;
                    restarted = true;
                    start = Start::New;
                }
                Err(e) => {
                    self.abort_quietly(&upload).await;
                    return Err(e);
                }
            }
        }
    }

    async fn resume_point(
        &self,
        resume: &ResumeFrom,
        path: &Path,
        layout: &PartLayout,
    ) -> Result<Start, GcError> {
        let Some(upload) = self.get_upload(&resume.upload_pk).await? else {
            return Ok(Start::New);
        };
        if upload.status == "Completed" {
            return Ok(Start::Completed(upload));
        }
        if upload.status != "Initialized" || upload.s3_upload_id != resume.s3_upload_id {
            return Ok(Start::New);
        }
        let url = self.upload_action_url(&upload, "list-parts")?;
        let context = format!("listing the parts of upload {}", upload.filename);
        match self
            .call::<PartsList>(Method::GET, url, None, RequestKind::UploadAction, &context)
            .await
        {
            Ok(list) => {
                let sized = reusable_parts(layout, &list.parts);
                let (owned_path, owned_layout) = (path.to_path_buf(), *layout);
                let parts = tokio::task::spawn_blocking(move || {
                    parts_matching_disk(&owned_path, &owned_layout, sized)
                })
                .await
                .map_err(|e| GcError::io(path, std::io::Error::other(e)))?
                .map_err(|e| GcError::io(path, e))?;
                tracing::info!(upload = %upload.pk, kept = parts.len(), of = layout.count(), "resuming upload");
                Ok(Start::Existing { upload, parts })
            }
            Err(GcError::UploadDead { .. } | GcError::NotFound(_)) => {
                self.abort_quietly(&upload).await;
                Ok(Start::New)
            }
            Err(e) => Err(e),
        }
    }

    async fn create_upload(&self, filename: &str) -> Result<UserUpload, GcError> {
        let context = format!("creating an upload for {filename}");
        let body = serde_json::json!({ "filename": filename });
        let upload: UserUpload = self
            .call(
                Method::POST,
                self.api_url("uploads/")?,
                Some(&body),
                RequestKind::NonIdempotent,
                &context,
            )
            .await?;
        check_pk("upload", &upload.pk)?;
        if upload.s3_upload_id.is_empty() {
            return Err(GcError::Protocol {
                context,
                message: "the new upload has no s3_upload_id".into(),
            });
        }
        Ok(upload)
    }

    /// `BASE uploads/{pk}/{s3_upload_id}/{action}/`, the id percent-encoded (it is opaque).
    fn upload_action_url(&self, upload: &UserUpload, action: &str) -> Result<Url, GcError> {
        check_pk("upload", &upload.pk)?;
        let mut url = self.api_url("uploads/")?;
        url.path_segments_mut()
            .map_err(|_| GcError::Config("the server URL cannot hold a path".into()))?
            .pop_if_empty()
            .extend([upload.pk.as_str(), upload.s3_upload_id.as_str(), action, ""]);
        Ok(url)
    }

    async fn abort_quietly(&self, upload: &UserUpload) {
        let Ok(url) = self.upload_action_url(upload, "abort-multipart-upload") else {
            return;
        };
        let context = format!("aborting upload {}", upload.filename);
        if let Err(e) = self
            .send(
                Method::PATCH,
                url,
                None,
                RequestKind::UploadAction,
                &context,
            )
            .await
        {
            tracing::debug!(upload = %upload.pk, error = %e, "abort failed (the upload expires within a day)");
        }
    }

    async fn send_parts_and_complete(
        &self,
        file: &LocalFile,
        size: u64,
        layout: &PartLayout,
        upload: &UserUpload,
        mut parts: BTreeMap<u32, String>,
        observer: &dyn UploadObserver,
    ) -> Result<UserUpload, GcError> {
        let missing: Vec<u32> = (1..=layout.count())
            .filter(|n| !parts.contains_key(n))
            .collect();
        let batch = (self.inner.parallel_parts * 2).clamp(5, MAX_URL_BATCH);
        let urls = UrlSource::new(self, upload, &missing, batch);
        let job = PartJob {
            client: self,
            path: &file.path,
            filename: &file.filename,
            size,
            layout,
            urls: &urls,
            observer,
        };
        let mut puts = futures_util::stream::iter(missing.iter().copied())
            .map(|n| job.put_part(n))
            .buffer_unordered(self.inner.parallel_parts);
        while let Some(done) = puts.next().await {
            let (n, etag) = done?;
            observer.part_done(&upload.pk, n, &etag);
            parts.insert(n, etag);
        }
        drop(puts);
        self.complete(upload, &parts).await
    }

    async fn complete(
        &self,
        upload: &UserUpload,
        parts: &BTreeMap<u32, String>,
    ) -> Result<UserUpload, GcError> {
        let url = self.upload_action_url(upload, "complete-multipart-upload")?;
        let context = format!("completing upload {}", upload.filename);
        // Ascending part numbers: the BTreeMap's order.
        let list: Vec<_> = parts
            .iter()
            .map(|(n, etag)| serde_json::json!({"ETag": etag, "PartNumber": n}))
            .collect();
        let body = serde_json::json!({ "parts": list });
        match self
            .call::<UserUpload>(
                Method::PATCH,
                url,
                Some(&body),
                RequestKind::UploadAction,
                &context,
            )
            .await
        {
            Ok(done) if done.status == "Completed" => Ok(done),
            Ok(other) => Err(GcError::Protocol {
                context,
                message: format!("status {} after completing", other.status),
            }),
            Err(GcError::UploadDead { context, message }) => {
                // A repeated complete (the first answer was lost) also ends here: check before giving up.
                match self.get_upload(&upload.pk).await {
                    Ok(Some(u)) if u.status == "Completed" => Ok(u),
                    _ => Err(GcError::UploadDead { context, message }),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Presigned part URLs, fetched in batches on demand and used once each; a retry always gets a new one.
struct UrlSource<'a> {
    client: &'a Client,
    upload: &'a UserUpload,
    batch: usize,
    state: tokio::sync::Mutex<UrlState>,
}

struct UrlState {
    /// Part numbers whose first URL has not been handed out yet, ascending.
    waiting: Vec<u32>,
    cache: HashMap<u32, (String, Instant)>,
}

impl<'a> UrlSource<'a> {
    fn new(
        client: &'a Client,
        upload: &'a UserUpload,
        parts: &[u32],
        batch: usize,
    ) -> UrlSource<'a> {
        let state = UrlState {
            waiting: parts.to_vec(),
            cache: HashMap::new(),
        };
        UrlSource {
            client,
            upload,
            batch,
            state: tokio::sync::Mutex::new(state),
        }
    }

    async fn url_for(&self, n: u32, fresh: bool) -> Result<Url, GcError> {
        let mut state = self.state.lock().await;
        state.waiting.retain(|&w| w != n);
        if let Some((url, at)) = state.cache.remove(&n)
            && !fresh
            && at.elapsed() < URL_MAX_AGE
        {
            return parse_part_url(self.client, &url);
        }
        let mut numbers = vec![n];
        let cached: HashSet<u32> = state.cache.keys().copied().collect();
        numbers.extend(
            state
                .waiting
                .iter()
                .copied()
                .filter(|w| !cached.contains(w))
                .take(self.batch - 1),
        );
        let url = self
            .client
            .upload_action_url(self.upload, "generate-presigned-urls")?;
        let context = format!("asking for part URLs of upload {}", self.upload.filename);
        let body = serde_json::json!({ "part_numbers": numbers });
        let answer: PresignedUrls = self
            .client
            .call(
                Method::PATCH,
                url,
                Some(&body),
                RequestKind::Idempotent,
                &context,
            )
            .await
            .map_err(|e| match e {
                // The upload vanished (expired or aborted elsewhere): only a new upload can help.
                GcError::NotFound(message) => GcError::UploadDead {
                    context: context.clone(),
                    message,
                },
                e => e,
            })?;
        let now = Instant::now();
        for (key, url) in answer.presigned_urls {
            if let Ok(k) = key.parse::<u32>() {
                state.cache.insert(k, (url, now));
            }
        }
        match state.cache.remove(&n) {
            Some((url, _)) => parse_part_url(self.client, &url),
            None => Err(GcError::Protocol {
                context,
                message: format!("no URL for part {n}"),
            }),
        }
    }
}

fn parse_part_url(client: &Client, raw: &str) -> Result<Url, GcError> {
    let url = Url::parse(raw).map_err(|e| GcError::Protocol {
        context: "reading a presigned part URL".into(),
        message: format!("not a URL ({e})"),
    })?;
    let https_required = client.base_url().scheme() == "https";
    match url.scheme() {
        "https" => Ok(url),
        "http" if !https_required => Ok(url),
        other => Err(GcError::Protocol {
            context: "reading a presigned part URL".into(),
            message: format!("refusing a part URL with scheme '{other}'"),
        }),
    }
}

/// Everything one file's part PUTs share.
struct PartJob<'a> {
    client: &'a Client,
    path: &'a Path,
    filename: &'a str,
    size: u64,
    layout: &'a PartLayout,
    urls: &'a UrlSource<'a>,
    observer: &'a dyn UploadObserver,
}

/// What one PUT attempt produced.
enum PutAttempt {
    Reply {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    Transport {
        failure: TransportFailure,
        message: String,
    },
}

impl PutAttempt {
    /// The metrics label of a retried attempt.
    fn retry_cause(&self) -> String {
        match self {
            PutAttempt::Reply { status, .. } => retry_cause(Some(*status), None),
            PutAttempt::Transport { failure, .. } => retry_cause(None, Some(*failure)),
        }
    }
}

impl PartJob<'_> {
    /// PUT part `n` until S3 stores it, each attempt with a fresh URL. Returns the ETag verbatim.
    async fn put_part(&self, n: u32) -> Result<(u32, String), GcError> {
        let context = format!("uploading part {n} of {}", self.filename);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let url = self.urls.url_for(n, attempt > 1).await?;
            let outcome = {
                let _slot = self
                    .client
                    .inner
                    .part_slots
                    .acquire()
                    .await
                    .map_err(|_| GcError::Config("the client is shutting down".into()))?;
                self.put_once(url, n).await?
            };
            let decision = match self.judge(attempt, &outcome) {
                Ok(etag) => {
                    self.client
                        .inner
                        .observer
                        .part_stored(self.layout.range(n).1);
                    return Ok((n, etag));
                }
                Err(decision) => decision,
            };
            match decision {
                Decision::Retry(delay) => {
                    self.client
                        .inner
                        .observer
                        .request_retried(&outcome.retry_cause());
                    tracing::warn!(%context, attempt, ?delay, "part upload failed, retrying with a fresh URL");
                    tokio::time::sleep(delay).await;
                }
                Decision::Fail(f) => return Err(f.into_error(&context)),
                Decision::Accept => {
                    return Err(GcError::Protocol {
                        context,
                        message: "the part was accepted without an ETag".into(),
                    });
                }
            }
        }
    }

    /// The part's ETag if S3 stored it, else the retry policy's decision.
    fn judge(&self, attempt: u32, outcome: &PutAttempt) -> Result<String, Decision> {
        match outcome {
            PutAttempt::Reply {
                status,
                headers,
                body,
            } => {
                let reply = reply_of(*status, headers, body);
                let d = self.client.inner.retry.decide(
                    RequestKind::PartPut,
                    attempt,
                    &Outcome::Reply(reply),
                    self.client.jitter(),
                    SystemTime::now(),
                );
                let etag = headers
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .filter(|e| !e.trim().is_empty());
                match (d, etag) {
                    (Decision::Accept, Some(etag)) => Ok(etag.to_owned()),
                    // A 2xx without an ETag cannot be completed: treat it as a broken answer.
                    (Decision::Accept, None) => Err(self.decide_transport(
                        attempt,
                        TransportFailure::Other,
                        "no ETag in the answer",
                    )),
                    (d, _) => Err(d),
                }
            }
            PutAttempt::Transport { failure, message } => {
                Err(self.decide_transport(attempt, *failure, message))
            }
        }
    }

    /// The retry policy's decision on a PUT that brought no usable answer.
    fn decide_transport(&self, attempt: u32, failure: TransportFailure, message: &str) -> Decision {
        let outcome = Outcome::Transport { failure, message };
        self.client.inner.retry.decide(
            RequestKind::PartPut,
            attempt,
            &outcome,
            self.client.jitter(),
            SystemTime::now(),
        )
    }

    /// One PUT of part `n`, streamed from disk. Local problems (the file cannot be read or changed size)
    /// are errors; everything from the network is an attempt outcome for the retry policy.
    async fn put_once(&self, url: Url, n: u32) -> Result<PutAttempt, GcError> {
        let (offset, len) = self.layout.range(n);
        let file = self.open_at(offset).await?;
        let sent = Arc::new(AtomicU64::new(0));
        let body = if len == 0 {
            reqwest::Body::from(Bytes::new())
        } else {
            let counter = Arc::clone(&sent);
            let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK)
                .inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                });
            reqwest::Body::wrap_stream(stream)
        };
        // No Authorization header, ever: the URL carries its own signature, and the token must not leave
        // for the storage host.
        let request = self
            .client
            .inner
            .s3
            .request(Method::PUT, url)
            .header(CONTENT_LENGTH, len)
            .body(body);
        let exchange = async {
            let resp = request.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = read_limited(resp).await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        Ok(self.watch(exchange, &sent).await)
    }

    /// The file positioned at `offset`, provided it still has the size the upload was planned for.
    async fn open_at(&self, offset: u64) -> Result<tokio::fs::File, GcError> {
        let mut file = tokio::fs::File::open(self.path)
            .await
            .map_err(|e| GcError::io(self.path, e))?;
        let now = file
            .metadata()
            .await
            .map_err(|e| GcError::io(self.path, e))?
            .len();
        if now != self.size {
            return Err(GcError::io(
                self.path,
                std::io::Error::other(format!(
                    "the file changed size during the upload ({} → {now} bytes); it is still being written",
                    self.size
                )),
            ));
        }
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| GcError::io(self.path, e))?;
        Ok(file)
    }

    /// Run one PUT exchange, reporting the bytes `sent` as progress and giving up as a timeout once
    /// nothing moved for the client's timeout.
    async fn watch(
        &self,
        exchange: impl Future<Output = Result<(u16, HeaderMap, Bytes), reqwest::Error>>,
        sent: &AtomicU64,
    ) -> PutAttempt {
        tokio::pin!(exchange);
        let idle_limit = self.client.inner.timeout;
        let mut reported = 0u64;
        let mut last_change = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                result = &mut exchange => {
                    let total = sent.load(Ordering::Relaxed);
                    if total > reported {
                        self.observer.progress(total - reported);
                    }
                    return match result {
                        Ok((status, headers, body)) => PutAttempt::Reply { status, headers, body },
                        Err(e) => PutAttempt::Transport { failure: classify_transport(&e), message: transport_message(&e) },
                    };
                }
                _ = tick.tick() => {
                    let total = sent.load(Ordering::Relaxed);
                    if total > reported {
                        self.observer.progress(total - reported);
                        reported = total;
                        last_change = Instant::now();
                    } else if last_change.elapsed() > idle_limit {
                        return PutAttempt::Transport {
                            failure: TransportFailure::Timeout,
                            message: format!("no progress for {idle_limit:?}"),
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_cuts_parts_and_keeps_empty_files_as_one_empty_part() {
        let l = PartLayout::new(25, 10).unwrap();
        assert_eq!(l.count(), 3);
        assert_eq!(
            [l.range(1), l.range(2), l.range(3)],
            [(0, 10), (10, 10), (20, 5)]
        );
        let exact = PartLayout::new(30, 10).unwrap();
        assert_eq!(exact.count(), 3);
        assert_eq!(exact.range(3), (20, 10));
        let empty = PartLayout::new(0, 10).unwrap();
        assert_eq!(empty.count(), 1);
        assert_eq!(empty.range(1), (0, 0));
        let one = PartLayout::new(1, 32 << 20).unwrap();
        assert_eq!((one.count(), one.range(1)), (1, (0, 1)));
    }

    #[test]
    fn layout_refuses_more_than_ten_thousand_parts() {
        assert!(PartLayout::new(10_000 * 5, 5).is_ok());
        let err = PartLayout::new(10_000 * 5 + 1, 5).unwrap_err();
        assert!(err.contains("10001 parts"), "{err}");
        assert!(PartLayout::new(1, 0).is_err());
        // 4 GiB with the default part size is far from the limit.
        assert_eq!(PartLayout::new(4 << 30, 32 << 20).unwrap().count(), 128);
    }

    #[test]
    fn only_parts_with_the_expected_size_are_reused() {
        let layout = PartLayout::new(25, 10).unwrap();
        let part = |n: u32, size: Option<u64>| ListedPart {
            etag: format!("\"e{n}\""),
            part_number: n,
            size,
        };
        let listed = [
            part(1, Some(10)),
            part(2, Some(9)),
            part(3, Some(5)),
            part(4, Some(10)),
            part(0, Some(10)),
        ];
        let kept = reusable_parts(&layout, &listed);
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            vec![(1, "\"e1\"".to_string()), (3, "\"e3\"".to_string())]
        );
        assert!(reusable_parts(&layout, &[part(1, None)]).is_empty());
    }

    #[test]
    fn etags_state_an_md5_only_in_their_plain_form() {
        assert_eq!(
            etag_md5("\"5D41402ABC4B2A76B9719D911017C592\"").as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(
            etag_md5("5d41402abc4b2a76b9719d911017c592").as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(etag_md5("\"5d41402abc4b2a76b9719d911017c592-3\""), None);
        assert_eq!(etag_md5("\"kms-opaque\""), None);
    }

    #[test]
    fn stored_parts_must_match_the_bytes_on_disk() {
        use md5::{Digest, Md5};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"aaaaabbbbbcc").unwrap();
        let layout = PartLayout::new(12, 5).unwrap();
        let md5 = |b: &[u8]| format!("\"{}\"", hex::encode(Md5::digest(b)));
        let parts = BTreeMap::from([
            (1, md5(b"aaaaa")),
            (2, md5(b"bbbbX")),
            (3, "\"not-an-md5\"".to_string()),
        ]);
        let kept = parts_matching_disk(&path, &layout, parts).unwrap();
        assert_eq!(kept.keys().copied().collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn listed_parts_parse_the_platform_shape() {
        let list: PartsList = serde_json::from_str(
            r#"{"pk":"p","parts":[{"ETag":"\"abc\"","PartNumber":1,"LastModified":"2025-11-14T10:21:09Z","Size":33554432}]}"#,
        )
        .unwrap();
        assert_eq!(list.parts[0].etag, "\"abc\"");
        assert_eq!(list.parts[0].size, Some(33554432));
    }
}
