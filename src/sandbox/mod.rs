//! A Grand Challenge–compatible server, so that tests, the demo and benchmarks run against real HTTP with
//! the platform's behaviour (gc-protocol.md, appendix A) and no account or internet. The official Python
//! client works against it unchanged.
//!
//! - [`fixture`]  the seeded world (users and tokens, sockets, archives, reader studies, items) from TOML.
//! - [`imaging`]  header-level validation of image uploads, as the platform's importer would judge them.
//! - [`schema`]   JSON value validation by socket kind.

pub mod fixture;
pub mod imaging;
pub mod schema;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use fixture::Fixture;

/// How to run a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The externally visible origin used in absolute URLs; default: derived from the bound address.
    pub public_url: Option<url::Url>,
    /// Serve HTTPS with a self-signed certificate; its CA is written into this directory.
    pub tls_dir: Option<PathBuf>,
    pub fixture: Fixture,
    /// Where uploaded bytes are stored; default: a temporary directory removed on stop.
    pub data_dir: Option<PathBuf>,
    /// How long the background worker waits before processing an import.
    pub import_delay: Duration,
    /// The smallest non-final part S3 accepts (5 MiB on the platform; tests lower it).
    pub min_part_size: u64,
}

/// A running sandbox.
pub struct Sandbox {}

impl Sandbox {
    pub async fn start(_options: SandboxOptions) -> anyhow::Result<Sandbox> {
        anyhow::bail!("not implemented yet")
    }

    /// The API base, e.g. `http://127.0.0.1:41234/api/v1/`.
    pub fn base_url(&self) -> url::Url {
        unimplemented!()
    }

    /// The CA certificate to trust when serving HTTPS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        None
    }
}
