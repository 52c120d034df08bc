//! What the client did, told to whoever keeps counters. The client keeps no counters of its own and knows
//! nothing of how they are shown: a daemon turns these calls into its metrics, a test records them, and
//! everyone else leaves the default, [`Unobserved`].

use std::fmt::Debug;
use std::time::Duration;

/// Hooks the client calls as it works, from whichever task does the work: keep them quick and never
/// block. Every method has an empty default, so an observer implements only what it counts.
pub trait ClientObserver: Send + Sync + Debug {
    /// A request (API call, part PUT or download) failed and will be sent again. `cause` is
    /// `http_<status>` or the transport failure's name ([`crate::retry::retry_cause`]).
    fn request_retried(&self, _cause: &str) {}
    /// S3 stored one part of `bytes` bytes.
    fn part_stored(&self, _bytes: u64) {}
    /// A file's upload was completed, `bytes` long, in `took` (from its first part to completion).
    fn file_uploaded(&self, _bytes: u64, _took: Duration) {}
}

/// The observer of a client nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl ClientObserver for Unobserved {}
