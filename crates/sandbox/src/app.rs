//! The state every request handler and background job of a running sandbox shares.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::faults::FaultEngine;
use crate::recorder::Recorder;
use crate::s3::Signer;
use crate::store::{Urls, World};

pub(crate) struct Config {
    pub import_delay: Duration,
}

/// State shared by every request and background job.
pub(crate) struct App {
    pub world: Mutex<World>,
    pub faults: Mutex<FaultEngine>,
    pub config: Config,
    pub data_dir: PathBuf,
    pub urls: Urls,
    pub limits: Limits,
    pub signer: Signer,
    pub tasks: Mutex<Vec<AbortHandle>>,
    pub recorder: Option<Recorder>,
}

impl App {
    pub fn track(&self, handle: AbortHandle) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(handle);
        }
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Server-side limits (gc-protocol.md §8.2), configurable for tests.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_uploads_per_user: usize,
    pub upload_limit_unverified: u64,
    pub upload_limit_verified: u64,
    pub max_files_per_session: usize,
    /// The smallest non-final part S3 accepts.
    pub min_part_size: u64,
}
