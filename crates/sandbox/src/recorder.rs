//! The request recorder: every request the sandbox receives, written to a folder as it arrives, so that a
//! test can search everything a client sent (method, path and query, headers and body) for what must not
//! be there.
//!
//! Request `N` (counted from 1 in order of arrival) becomes two files:
//!
//! - `N.head` (N as six digits): the request line (`METHOD /path?query HTTP/1.1`) and one line per
//!   header, `name: value`, values byte for byte; then, once the body is over, an empty line and
//!   `body: <bytes> bytes, complete` or `body: <bytes> bytes, not read to its end`.
//! - `N.body`: the body, written chunk by chunk as the sandbox reads it, so that parts of gigabytes
//!   are never held in memory.
//!
//! Recording changes nothing the sandbox does: the body is read when and as far as the request's handler
//! reads it, and a body the sandbox does not read to its end (an early error, a fault that drops the
//! connection) is recorded as far as it was read, and says so. The one thing not written is a secret:
//! the credentials of an `Authorization` header are replaced by the first 16 hex digits of their
//! SHA-256, so that a record shows which token was used without holding it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use sha2::Digest;

/// Writes every request into a folder.
pub struct Recorder {
    dir: PathBuf,
    next: AtomicU64,
}

impl Recorder {
    /// Record into `dir` (created if need be), numbering after the records already there, so that two
    /// runs of a sandbox can share a folder.
    pub fn new(dir: &Path) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let last = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| number_of(&e.path()))
            .max()
            .unwrap_or(0);
        Ok(Recorder {
            dir: dir.to_owned(),
            next: AtomicU64::new(last + 1),
        })
    }

    /// Write the request's head now, and return its body, which writes itself out as it is read.
    pub fn record(&self, parts: &http::request::Parts, body: Body) -> Body {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let head = self.dir.join(format!("{n:06}.head"));
        let written = std::fs::write(&head, head_text(parts))
            .and_then(|()| File::create(self.dir.join(format!("{n:06}.body"))));
        let file = match written {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot record request {n}: {e}");
                None
            }
        };
        Body::new(RecordingBody {
            inner: body,
            file,
            head,
            bytes: 0,
            ended: false,
        })
    }
}

/// The number of a record file, `000042.head` → 42.
fn number_of(path: &Path) -> Option<u64> {
    let ext = path.extension()?;
    if ext != "head" && ext != "body" {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// The request line and the headers, as they are written.
fn head_text(parts: &http::request::Parts) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let mut out = format!("{} {target} {:?}\n", parts.method, parts.version).into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        if name == http::header::AUTHORIZATION {
            out.extend_from_slice(&redacted(value.as_bytes()));
        } else {
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// `Bearer <token>` → `Bearer [redacted, sha256 <16 hex digits of the token's SHA-256>]`.
fn redacted(value: &[u8]) -> Vec<u8> {
    let (scheme, credentials) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (&b""[..], value),
    };
    let digest = hex::encode(sha2::Sha256::digest(credentials));
    let mut out = scheme.to_vec();
    if !out.is_empty() {
        out.push(b' ');
    }
    out.extend_from_slice(format!("[redacted, sha256 {}]", &digest[..16]).as_bytes());
    out
}

/// A request body that appends what is read of it to its record.
struct RecordingBody {
    inner: Body,
    /// `None` when the record could not be opened (or a write failed): the request goes on unrecorded.
    file: Option<File>,
    head: PathBuf,
    bytes: u64,
    ended: bool,
}

impl RecordingBody {
    fn write(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if let Some(f) = &mut self.file
            && let Err(e) = f.write_all(data)
        {
            tracing::warn!(head = %self.head.display(), "cannot record a request body: {e}");
            self.file = None;
        }
    }

    /// Trailers are headers too: they go into the head, marked.
    fn write_trailers(&mut self, trailers: &http::HeaderMap) {
        let mut text = Vec::new();
        for (name, value) in trailers {
            text.extend_from_slice(b"trailer ");
            text.extend_from_slice(name.as_str().as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(value.as_bytes());
            text.push(b'\n');
        }
        self.append_to_head(&text);
    }

    /// Say in the head how the body ended; once.
    fn finish(&mut self, complete: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        let how = if complete && self.file.is_some() {
            "complete"
        } else if complete {
            "read to its end, but not all of it could be recorded"
        } else {
            "not read to its end"
        };
        let line = format!("\nbody: {} bytes, {how}\n", self.bytes);
        self.append_to_head(line.as_bytes());
        self.file = None;
    }

    fn append_to_head(&self, text: &[u8]) {
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.head)
            .and_then(|mut f| f.write_all(text));
        if let Err(e) = appended {
            tracing::warn!(head = %self.head.display(), "cannot record a request: {e}");
        }
    }
}

impl hyper::body::Body for RecordingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.write(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.write_trailers(trailers);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        // A body nobody read (a GET) is complete when there was nothing to read.
        let complete = hyper::body::Body::is_end_stream(&self.inner);
        self.finish(complete);
    }
}

/// One request as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The record's number, in order of arrival.
    pub number: u64,
    /// The head file's bytes: request line, headers, and how the body ended.
    pub head: Vec<u8>,
    /// The body file.
    pub body: PathBuf,
}

impl Recorded {
    /// The request line, e.g. `PUT /s3/...?partNumber=1&... HTTP/1.1`.
    pub fn request_line(&self) -> String {
        let end = self
            .head
            .iter()
            .position(|b| *b == b'\n')
            .unwrap_or(self.head.len());
        String::from_utf8_lossy(&self.head[..end]).into_owned()
    }

    /// Whether the sandbox read the body to its end and all of it was recorded; `None` while the
    /// request is still being handled.
    pub fn complete(&self) -> Option<bool> {
        let text = String::from_utf8_lossy(&self.head);
        let last = text.lines().rev().find(|l| !l.is_empty())?;
        last.starts_with("body: ")
            .then(|| last.ends_with(", complete"))
    }
}

/// Every request recorded in `dir`, in order of arrival.
pub fn read(dir: &Path) -> std::io::Result<Vec<Recorded>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "head")
            && let Some(number) = number_of(&path)
        {
            out.push(Recorded {
                number,
                head: std::fs::read(&path)?,
                body: path.with_extension("body"),
            });
        }
    }
    out.sort_by_key(|r| r.number);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_never_written_but_can_be_recognised() {
        let r = redacted(b"Bearer secret-token");
        let text = String::from_utf8(r).unwrap();
        assert!(!text.contains("secret-token"), "{text}");
        let digest = hex::encode(sha2::Sha256::digest(b"secret-token"));
        assert_eq!(text, format!("Bearer [redacted, sha256 {}]", &digest[..16]));
        assert!(
            String::from_utf8(redacted(b"token-without-scheme"))
                .unwrap()
                .starts_with("[redacted, sha256 ")
        );
    }

    #[test]
    fn record_numbers_continue_after_those_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000041.head"), "GET / HTTP/1.1\n").unwrap();
        std::fs::write(dir.path().join("000041.body"), "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let r = Recorder::new(dir.path()).unwrap();
        assert_eq!(r.next.load(Ordering::Relaxed), 42);
        let read = read(dir.path()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].request_line(), "GET / HTTP/1.1");
        assert_eq!(read[0].complete(), None, "no end recorded yet");
    }
}
