//! The retry policy, as pure decisions: given what happened and how often, retry after how long, or give up.
//! No clocks and no sockets here, so every rule is tested directly.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    /// How long to wait after "You have created too many uploads".
    pub too_many_uploads_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            max_attempts: 8,
            too_many_uploads_wait: Duration::from_secs(300),
        }
    }
}
