//! The Grand Challenge platform client.
//!
//! Everything that crosses the wire to the platform goes through here, so that retries, the token and the
//! protocol's quirks (gc-protocol.md) are handled in exactly one place. The rest of the program speaks in
//! terms of targets, sockets, uploads and values; it never builds a URL or parses an error body itself.
//!
//! - [`auth`]    the API token: loading, gcapi's parsing rules, and redaction everywhere it could leak.
//! - [`retry`]   the pure retry policy: which failures are retried, how long to wait (no I/O, no timers).
//! - [`error`]   [`GcError`]: every failure classified for the caller (fatal auth, quota, rejected, transient).
//! - [`models`]  the JSON shapes the client reads and writes.
//! - [`client`]  [`Client`]: HTTP, TLS, lookups by slug with caching, pagination, items, images and values.
//! - [`uploads`] S3 multipart uploads streamed from disk, bounded concurrency, resume via list-parts.
//! - [`verify`]  polling until every socket shows its new value, or an import session reports `Failed`.
//! - [`algorithms`] algorithms and their interfaces, starting, following and finding jobs.
//! - [`observe`] [`ClientObserver`]: what the client did (retries, uploads), for the caller's counters.

pub mod algorithms;
pub mod auth;
pub mod client;
pub mod error;
pub mod models;
pub mod observe;
pub mod retry;
pub mod uploads;
pub mod verify;

pub use algorithms::{
    Algorithm, AlgorithmInterface, CreatedJob, Job, JobFilter, JobPolling, JobStatus,
};
pub use auth::{TOKEN_ENV, Token};
pub use client::{Client, ClientConfig, DEFAULT_PART_SIZE};
pub use error::GcError;
pub use models::{
    Archive, DicomImageSetRef, HyperlinkedImage, ImageFile, InterfaceRef, Item, ItemValue,
    ReaderStudy, Socket, SuperKind, Target, TargetKind, UploadSession, UserUpload, ValueEntry,
    ValueSource,
};
pub use observe::{ClientObserver, Unobserved};
pub use retry::{Jitter, RetryPolicy};
pub use uploads::{LocalFile, NoObserver, ResumeFrom, UploadObserver};
pub use verify::{Awaiting, Expectation, VerifyTiming};
