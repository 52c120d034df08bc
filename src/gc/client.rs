//! The HTTP client: TLS, the token, retries, lookups by slug, pagination, items and values.

use std::path::PathBuf;
use std::time::Duration;

use super::retry::RetryPolicy;
use super::{GcError, Token};

/// How to reach the platform and how hard to push it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API base, with its trailing slash, e.g. `https://grand-challenge.org/api/v1/`.
    pub base_url: url::Url,
    pub token: Token,
    /// An extra CA certificate (PEM) to trust, e.g. the sandbox's self-signed one.
    pub ca_cert: Option<PathBuf>,
    /// S3 part size in bytes (gcapi uses 32 MiB).
    pub part_size: u64,
    /// Parts in flight at once, across all files of this client.
    pub parallel_parts: usize,
    /// Files being uploaded at once, across all cases of this client.
    pub parallel_files: usize,
    pub retry: RetryPolicy,
    /// Per connect/read phase, like gcapi's 60 s.
    pub timeout: Duration,
}

/// A client for one platform and one token. Cheap to clone; clones share connections and caches.
#[derive(Clone)]
pub struct Client {}

impl Client {
    pub fn new(_config: ClientConfig) -> Result<Client, GcError> {
        Err(GcError::Config("not implemented yet".into()))
    }
}
