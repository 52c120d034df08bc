//! Every failure the platform can cause, classified so that callers decide by kind, never by string.

use std::time::Duration;

/// What went wrong talking to the platform. `Display` is written for an operator and never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// 401, or 403 on something we must be allowed to do: stop work for this target and alert.
    #[error("not authorised ({status}): {detail}")]
    Auth { status: u16, detail: String },
    /// 400 "You have created too many uploads": wait long, then retry.
    #[error("the platform says: {0}")]
    TooManyUploads(String),
    /// 403 "Upload limit reached": bytes in flight exceed the account's quota.
    #[error("the platform says: {0}")]
    UploadLimit(String),
    /// Any other 4xx: the request is wrong and repeating it will not help. `message` is the server's own words.
    #[error("{context}: the platform rejected it ({status}): {message}")]
    Rejected {
        status: u16,
        context: String,
        message: String,
        body: serde_json::Value,
    },
    /// Something looked up by slug or pk does not exist or is not visible to this token.
    #[error("{0}")]
    NotFound(String),
    /// 5xx (HTML or not), or a transport failure, still failing after the retry budget.
    #[error("{context}: {message}")]
    Unavailable {
        context: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The server accepted the value but its background import failed.
    #[error("socket {socket}: the import failed: {message}")]
    ImportFailed { socket: String, message: String },
    /// A socket did not show its new value before the deadline.
    #[error("socket {socket}: no value after {waited:?}")]
    VerifyTimeout { socket: String, waited: Duration },
    /// Reading a local file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The client was configured wrongly (bad URL, unreadable CA file …).
    #[error("{0}")]
    Config(String),
}
