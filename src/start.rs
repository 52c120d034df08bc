//! What every command does first: load the config, start the async runtime, connect to the platform
//! with the token checked, and listen for the signal that stops it. Each failure is one line on stderr
//! and the exit code that says what kind of failure it was.

use std::path::Path;

use crate::cli::exit;
use crate::config::Config;
use gc_client::{Client, GcError};

/// The platform client of a config, its token checked. A daemon starts even when the platform cannot be
/// reached (its deliveries retry); a one-shot command gives up. A refused token stops both.
pub async fn connect(config: &Config, tolerate_unreachable: bool) -> Result<Client, u8> {
    let client = config
        .client(crate::metrics::client_observer())
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::PLATFORM
        })?;
    match client.whoami().await {
        Ok(user) => tracing::info!(user, url = %config.server.url, "token accepted"),
        Err(e) if tolerate_unreachable && e.is_retryable_later() => {
            tracing::warn!(url = %config.server.url, "cannot check the token yet: {e}")
        }
        Err(e) => {
            eprintln!("error: {}", platform_error(config, &e));
            return Err(exit::PLATFORM);
        }
    }
    Ok(client)
}

/// One sentence about a failure to talk to the platform, with the likely fix. For a refused token it says
/// where the token came from (never the token).
pub fn platform_error(config: &Config, e: &GcError) -> String {
    match e {
        GcError::Auth { .. } => {
            let source = config
                .token_source()
                .map_or_else(|| "nowhere".to_owned(), |s| s.to_string());
            format!(
                "the platform at {} refused the token from {source} ({e}); create a new token at \
                 https://grand-challenge.org/settings/api-tokens/ for an account that may use the targets, \
                 and put it there",
                config.server.url
            )
        }
        _ => format!("{}: {e}", config.server.url),
    }
}

pub fn load(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

pub fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        exit::PLATFORM
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is
/// first polled, so a stop request that arrives during startup is not lost (nor fatal).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate())
        .map_err(|e| tracing::error!("cannot listen for SIGTERM: {e}"))
        .ok();
    let int = signal(SignalKind::interrupt())
        .map_err(|e| tracing::error!("cannot listen for SIGINT: {e}"))
        .ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => tracing::info!("SIGTERM received"),
            _ = wait(int) => tracing::info!("interrupt received"),
        }
    }
}
