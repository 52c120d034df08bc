//! A client for the Grand Challenge platform's REST API.
//!
//! Everything that crosses the wire to the platform goes through here, so that retries, the token and the
//! protocol's quirks (gc-protocol.md) are handled in exactly one place. Callers speak in terms of targets,
//! sockets, uploads and values; they never build a URL or parse an error body themselves.
//!
//! The crate knows nothing of folders, journals, receipts or metrics: what it did (retries, finished
//! uploads) is told to a [`ClientObserver`] given in [`ClientConfig`], and an upload's progress to the
//! [`UploadObserver`] passed with it. It can be used on its own by anyone who wants a Rust client for
//! Grand Challenge.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let sandbox = gc_sandbox::Sandbox::start(gc_sandbox::SandboxOptions::new(
//! #     gc_sandbox::Fixture::demo(),
//! # )).await?;
//! # let (url, raw_token) = (sandbox.base_url(), gc_sandbox::DEMO_TOKEN);
//! use gc_client::{Client, ClientConfig, TargetKind, Token};
//!
//! // `url` is the API base (`https://grand-challenge.org/api/v1/`); here a sandbox on loopback.
//! let token = Token::parse(raw_token).ok_or("not a token")?;
//! let client = Client::new(ClientConfig::new(url, token))?;
//! let user = client.whoami().await?;
//! let archive = client.resolve_target(TargetKind::Archive, "demo-archive").await?;
//! let item = client.create_item(&archive, "case 1").await?;
//! println!("{user} made item {} in {}", item.pk, archive.slug);
//! # Ok(())
//! # }
//! ```
//!
//! - [`auth`]    the API token: loading, gcapi's parsing rules, and redaction everywhere it could leak.
//! - [`retry`]   the pure retry policy: which failures are retried, how long to wait (no I/O, no timers).
//! - [`error`]   [`GcError`]: every failure classified for the caller (fatal auth, quota, rejected, transient).
//! - [`models`]  the JSON shapes the client reads and writes.
//! - [`client`]  [`Client`]: HTTP, TLS, lookups by slug with caching, pagination, items, images and values.
//! - [`uploads`] S3 multipart uploads streamed from disk, bounded concurrency, resume via list-parts.
//! - [`verify`]  polling until every socket shows its new value, or an import session reports `Failed`.
//! - [`verifier`] many items awaited at once by one task, in rounds that share listings.
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
pub mod verifier;
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
pub use verifier::Verifier;
pub use verify::{Awaiting, Expectation, VerifyTiming};
