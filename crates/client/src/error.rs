//! Every failure the platform can cause, classified so that callers decide by kind, never by string.
//!
//! The delivery pipeline maps these kinds onto its own reactions (stop the target, wait long, back off,
//! quarantine the case), so the classification lives here, next to the protocol knowledge, and the
//! `Display` texts are written for the operator who reads the alert.

use std::time::Duration;

/// The platform's text for a duplicate title (gc-protocol.md §4.3, §5.3).
const DUPLICATE_TITLE: &str = "must make a unique set";

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
    /// 400 from starting a job because a limit of the account is reached (unfinished jobs at once,
    /// credits): wait until jobs end or credits return, then start it.
    #[error("the platform says: {0}")]
    JobLimit(String),
    /// Any other 4xx: the request is wrong and repeating it will not help. `message` is the server's own words.
    #[error("{context}: the platform rejected it ({status}): {message}")]
    Rejected {
        status: u16,
        context: String,
        message: String,
        /// The answer's JSON as it came (boxed: it is rarely read and would make every error large).
        body: Box<serde_json::Value>,
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
    /// The platform refused to complete a multipart upload (an HTML 500 on complete, gc-protocol.md §2.5):
    /// that upload can never be completed and the file has to be uploaded again as a new upload.
    #[error(
        "{context}: the upload can no longer be completed ({message}); it has to be uploaded again"
    )]
    UploadDead { context: String, message: String },
    /// A 2xx answer that does not have the documented shape: the platform changed, or this is not the
    /// platform's API at all (e.g. a proxy's login page). Repeating will not help.
    #[error("{context}: unexpected answer from the platform: {message}")]
    Protocol { context: String, message: String },
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

impl GcError {
    /// The same error again, for each of several callers that one failed request concerns (a listing
    /// shared by many waiting items). An I/O error keeps its kind and text.
    pub fn duplicate(&self) -> GcError {
        match self {
            GcError::Auth { status, detail } => GcError::Auth {
                status: *status,
                detail: detail.clone(),
            },
            GcError::TooManyUploads(m) => GcError::TooManyUploads(m.clone()),
            GcError::UploadLimit(m) => GcError::UploadLimit(m.clone()),
            GcError::JobLimit(m) => GcError::JobLimit(m.clone()),
            GcError::Rejected {
                status,
                context,
                message,
                body,
            } => GcError::Rejected {
                status: *status,
                context: context.clone(),
                message: message.clone(),
                body: body.clone(),
            },
            GcError::NotFound(m) => GcError::NotFound(m.clone()),
            GcError::Unavailable {
                context,
                message,
                retry_after,
            } => GcError::Unavailable {
                context: context.clone(),
                message: message.clone(),
                retry_after: *retry_after,
            },
            GcError::UploadDead { context, message } => GcError::UploadDead {
                context: context.clone(),
                message: message.clone(),
            },
            GcError::Protocol { context, message } => GcError::Protocol {
                context: context.clone(),
                message: message.clone(),
            },
            GcError::ImportFailed { socket, message } => GcError::ImportFailed {
                socket: socket.clone(),
                message: message.clone(),
            },
            GcError::VerifyTimeout { socket, waited } => GcError::VerifyTimeout {
                socket: socket.clone(),
                waited: *waited,
            },
            GcError::Io { path, source } => GcError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            GcError::Config(m) => GcError::Config(m.clone()),
        }
    }

    /// The error's class, as a metrics label.
    pub fn class(&self) -> &'static str {
        match self {
            GcError::Auth { .. } => "auth",
            GcError::TooManyUploads(_) => "too_many_uploads",
            GcError::UploadLimit(_) => "upload_limit",
            GcError::JobLimit(_) => "job_limit",
            GcError::Rejected { .. } => "rejected",
            GcError::NotFound(_) => "not_found",
            GcError::Unavailable { .. } => "unavailable",
            GcError::UploadDead { .. } => "upload_dead",
            GcError::Protocol { .. } => "protocol",
            GcError::ImportFailed { .. } => "import_failed",
            GcError::VerifyTimeout { .. } => "verify_timeout",
            GcError::Io { .. } => "io",
            GcError::Config(_) => "config",
        }
    }

    /// The item or display set already exists with this title (gc-protocol.md §9.9): the caller should look
    /// it up with `find_item_by_title` and reuse it instead of creating another.
    pub fn is_duplicate_title(&self) -> bool {
        match self {
            GcError::Rejected {
                status: 400,
                message,
                ..
            } => message.contains(DUPLICATE_TITLE),
            _ => false,
        }
    }

    /// The same request is expected to succeed later without anyone changing anything: the platform is
    /// unavailable, or a quota (upload records, bytes in flight) is full until uploads are consumed or expire.
    pub fn is_retryable_later(&self) -> bool {
        matches!(
            self,
            GcError::TooManyUploads(_)
                | GcError::UploadLimit(_)
                | GcError::JobLimit(_)
                | GcError::Unavailable { .. }
        )
    }

    /// How long the server asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GcError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> GcError {
        GcError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, message: &str) -> GcError {
        GcError::Rejected {
            status,
            context: "creating item".into(),
            message: message.into(),
            body: Box::new(serde_json::Value::Null),
        }
    }

    #[test]
    fn duplicate_title_is_recognised_for_archives_and_reader_studies() {
        assert!(
            rejected(
                400,
                "non_field_errors: The fields title, archive must make a unique set."
            )
            .is_duplicate_title()
        );
        assert!(
            rejected(
                400,
                "non_field_errors: The fields title, reader_study must make a unique set."
            )
            .is_duplicate_title()
        );
        assert!(
            !rejected(
                400,
                "title: Ensure this field has no more than 255 characters."
            )
            .is_duplicate_title()
        );
        assert!(!GcError::NotFound("must make a unique set".into()).is_duplicate_title());
    }

    #[test]
    fn quota_and_unavailability_are_retryable_later_but_rejections_are_not() {
        assert!(GcError::TooManyUploads("x".into()).is_retryable_later());
        assert!(GcError::UploadLimit("x".into()).is_retryable_later());
        let unavailable = GcError::Unavailable {
            context: "c".into(),
            message: "m".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(unavailable.is_retryable_later());
        assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(3)));
        assert!(!rejected(400, "x").is_retryable_later());
        assert!(
            !GcError::Auth {
                status: 401,
                detail: "Invalid token.".into()
            }
            .is_retryable_later()
        );
        assert!(
            !GcError::ImportFailed {
                socket: "s".into(),
                message: "m".into()
            }
            .is_retryable_later()
        );
    }
}
