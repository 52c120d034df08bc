//! Shared test setup for every crate of the workspace, so that no test file starts its own sandbox or
//! builds its own client by hand.
//!
//! - [`http`]   a sandbox on loopback and a plain HTTP client to talk to it as any platform client would,
//!   with replies kept whole (status, headers, text) for exact assertions.
//! - [`client`] the platform client against a sandbox, with test-sized part sizes, retries and polls,
//!   request counts from the sandbox, and an upload observer that records what it heard.
//! - [`python`] the platform's own Python tools (gcapi, panimg, the de-identifier) in venvs made once
//!   under `target/tmp/venvs`.
//! - [`eventually`] polling with a deadline, the only way a test waits for something.
//!
//! A dev-dependency only: nothing here is part of the product.

pub mod client;
pub mod http;
pub mod python;

use std::time::{Duration, Instant};

/// Poll `check` until it returns `Some`, or panic after `limit` naming `what`.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The folder the test venvs live in: `target/tmp/venvs`, cargo's scratch folder for integration tests.
/// A macro because cargo names that folder only to the integration test being compiled.
#[macro_export]
macro_rules! venvs {
    () => {
        ::std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("venvs")
    };
}
