//! The retry policy, as pure decisions: given what happened and how often, retry after how long, or give up.
//! No clocks and no sockets here (the current time and the random jitter are arguments), so every rule is
//! tested directly.
//!
//! The rules follow gc-protocol.md §1.9, §1.10, §2.5 and §9, but retry more than gcapi does: a hot-folder
//! agent runs unattended, so connection resets and timeouts are retried too, and 500 is retried where
//! repeating the request cannot change anything.
//!
//! Non-idempotent requests (creating an item or an upload, PATCHing values) are retried on transient
//! failures as well, even though the first attempt may have taken effect:
//! - a repeated item creation is caught by the platform's unique titles (every item we create has one) and
//!   answered with "must make a unique set", which the caller resolves by finding the item by title;
//! - a repeated upload creation leaves an unused upload behind, which the platform deletes after a day;
//! - a repeated values PATCH sets the same values again (replacement semantics).
//!
//! Creating an item is the exception: it is repeated only when it certainly did not take effect (no
//! connection was made, or the platform refused it with 408/429/503). A duplicate-title answer to a repeat
//! could not tell our own item from someone else's, so the caller records each request before sending it
//! and decides itself (the agent's delivery).
//!
//! They are not retried on a 500, though: that is an unhandled error on the server, and repeating a write
//! that failed in an unknown way is a decision for the caller, not for a retry loop.

use std::time::{Duration, SystemTime};

use crate::error::GcError;

/// How random the back-off is. Both spread simultaneous clients apart; `Equal` keeps at least half the
/// exponential delay, `Full` may retry almost at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    Full,
    Equal,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The delay ceiling before the first retry; it doubles with every further retry.
    pub base: Duration,
    /// No single wait is longer, whatever the exponent or a `Retry-After` header say.
    pub max_delay: Duration,
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// How long to wait after "You have created too many uploads" (for the caller; gcapi's docs say 300 s).
    pub too_many_uploads_wait: Duration,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            max_attempts: 8,
            too_many_uploads_wait: Duration::from_secs(300),
            jitter: Jitter::Equal,
        }
    }
}

/// What kind of request an attempt belonged to: that decides what may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Reads, and the presigned-URL PATCH: repeating them changes nothing, so even a 500 is retried.
    Idempotent,
    /// Creating uploads, PATCHing values (see the module comment).
    NonIdempotent,
    /// Creating an item: repeated only where the first request certainly had no effect.
    Create,
    /// complete / abort / list-parts of a multipart upload. The server answers an HTML 500 when the upload is
    /// not open any more or S3 refuses the parts (gc-protocol.md §2.5–2.7): that upload is dead.
    UploadAction,
    /// A part PUT to a presigned S3 URL. Every retry uses a fresh URL, so a 403 (expired or invalid
    /// signature) is retried too; a 404 (NoSuchUpload) means the multipart upload is gone.
    PartPut,
}

/// A transport-level failure, before or while reading a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// The connection could not be made; nothing was sent.
    Connect,
    /// A connect or read phase took longer than the configured timeout.
    Timeout,
    /// The connection broke while sending the request or reading the response body.
    Reset,
    /// The TLS handshake failed: the server speaks no TLS on that port, or its certificate is not
    /// trusted. Repeating it cannot help.
    Tls,
    /// Anything else the HTTP stack reported.
    Other,
}

impl TransportFailure {
    /// The name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            TransportFailure::Connect => "connect",
            TransportFailure::Timeout => "timeout",
            TransportFailure::Reset => "reset",
            TransportFailure::Tls => "tls",
            TransportFailure::Other => "transport",
        }
    }
}

/// Why a request was retried, as a metrics label: `http_<status>` or the transport failure's name.
pub fn retry_cause(status: Option<u16>, failure: Option<TransportFailure>) -> String {
    match (status, failure) {
        (Some(s), _) => format!("http_{s}"),
        (None, Some(f)) => f.name().to_owned(),
        (None, None) => "transport".to_owned(),
    }
}

/// A response as the policy needs to see it. The body is the whole (small) body of an API error.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub location: Option<&'a str>,
    pub body: &'a [u8],
}

/// What happened in one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Reply(Reply<'a>),
    Transport {
        failure: TransportFailure,
        message: &'a str,
    },
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A 2xx: the caller reads the response.
    Accept,
    /// Try again after this long.
    Retry(Duration),
    /// Give up with this classified failure.
    Fail(Failure),
}

/// A failure classified by what the caller should do about it; [`Failure::into_error`] adds the context.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Auth {
        status: u16,
        detail: String,
    },
    TooManyUploads(String),
    UploadLimit(String),
    Rejected {
        status: u16,
        message: String,
        body: serde_json::Value,
    },
    NotFound(String),
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    UploadDead(String),
}

impl Failure {
    /// `context` says what we were doing, e.g. `"creating an archive item"`.
    pub fn into_error(self, context: &str) -> GcError {
        match self {
            Failure::Auth { status, detail } => GcError::Auth {
                status,
                detail: format!("{context}: {detail}"),
            },
            Failure::TooManyUploads(m) => GcError::TooManyUploads(m),
            Failure::UploadLimit(m) => GcError::UploadLimit(m),
            Failure::Rejected {
                status,
                message,
                body,
            } => GcError::Rejected {
                status,
                context: context.to_owned(),
                message,
                body: Box::new(body),
            },
            Failure::NotFound(m) => GcError::NotFound(format!("{context}: {m}")),
            Failure::Unavailable {
                message,
                retry_after,
            } => GcError::Unavailable {
                context: context.to_owned(),
                message,
                retry_after,
            },
            Failure::UploadDead(message) => GcError::UploadDead {
                context: context.to_owned(),
                message,
            },
        }
    }
}

/// The platform's texts that select a failure class (gc-protocol.md §2.2, §2.3, §8.2).
const TOO_MANY_UPLOADS: &str = "You have created too many uploads";
const UPLOAD_LIMIT: &str = "Upload limit reached";
/// Longest server message we keep; error pages and validation dumps can be huge.
const MAX_MESSAGE: usize = 2000;

impl RetryPolicy {
    /// Decide after attempt number `attempt` (1 for the first). `jitter` is a number in `[0, 1)` from the
    /// caller's random source; `now` is used to turn an HTTP-date `Retry-After` into a delay.
    pub fn decide(
        &self,
        kind: RequestKind,
        attempt: u32,
        outcome: &Outcome<'_>,
        jitter: f64,
        now: SystemTime,
    ) -> Decision {
        let exhausted = attempt >= self.max_attempts;
        match outcome {
            Outcome::Transport { failure, message } => {
                let message = format!("{} ({message})", transport_words(*failure));
                if kind == RequestKind::Create
                    && !matches!(failure, TransportFailure::Connect | TransportFailure::Tls)
                {
                    return Decision::Fail(Failure::Unavailable {
                        message: format!(
                            "{message}; not repeated automatically because the item may have been created"
                        ),
                        retry_after: None,
                    });
                }
                if exhausted || *failure == TransportFailure::Tls {
                    Decision::Fail(Failure::Unavailable {
                        message: after_attempts(&message, attempt),
                        retry_after: None,
                    })
                } else {
                    Decision::Retry(self.backoff(attempt, jitter))
                }
            }
            Outcome::Reply(reply) => {
                self.decide_reply(kind, attempt, exhausted, reply, jitter, now)
            }
        }
    }

    fn decide_reply(
        &self,
        kind: RequestKind,
        attempt: u32,
        exhausted: bool,
        reply: &Reply<'_>,
        jitter: f64,
        now: SystemTime,
    ) -> Decision {
        let status = reply.status;
        if (200..300).contains(&status) {
            return Decision::Accept;
        }
        let (message, body) = summarise(reply);
        let retry_after = reply.retry_after.and_then(|v| parse_retry_after(v, now));
        if !is_transient(kind, status) {
            return Decision::Fail(lasting_failure(kind, reply, message, body, retry_after));
        }
        if exhausted {
            let message = after_attempts(&message, attempt);
            return Decision::Fail(match status {
                403 => Failure::Rejected {
                    status,
                    message,
                    body,
                },
                _ => Failure::Unavailable {
                    message,
                    retry_after,
                },
            });
        }
        let delay = match retry_after {
            Some(d) => d.min(self.max_delay),
            None => self.backoff(attempt, jitter),
        };
        Decision::Retry(delay)
    }

    /// The exponential back-off before retry number `attempt` (1 for the first retry), with jitter.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.jitter {
            Jitter::Full => ceiling.mul_f64(jitter),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(jitter),
        }
    }
}

/// Whether repeating a request of this kind after this status may succeed (and is safe).
fn is_transient(kind: RequestKind, status: u16) -> bool {
    let busy = if kind == RequestKind::Create {
        matches!(status, 408 | 429 | 503)
    } else {
        matches!(status, 408 | 429 | 502 | 503 | 504 | 507)
    };
    busy || (status == 500 && matches!(kind, RequestKind::Idempotent | RequestKind::PartPut))
        || (status == 403 && kind == RequestKind::PartPut)
}

/// The failure class of an error answer that repeating would not change.
fn lasting_failure(
    kind: RequestKind,
    reply: &Reply<'_>,
    message: String,
    body: serde_json::Value,
    retry_after: Option<Duration>,
) -> Failure {
    let status = reply.status;
    match (status, kind) {
        (300..=399, _) => Failure::Rejected {
            status,
            message: format!(
                "the platform answered with a redirect to {}; the base URL must be the https API root \
                 and every path must end in '/'",
                reply.location.unwrap_or("another address")
            ),
            body,
        },
        (500, RequestKind::UploadAction)
        | (404, RequestKind::UploadAction | RequestKind::PartPut) => Failure::UploadDead(message),
        (500, _) => Failure::Unavailable {
            message: format!(
                "{message}; not repeated automatically because the request may have taken effect"
            ),
            retry_after,
        },
        (401, _) => Failure::Auth {
            status,
            detail: message,
        },
        (403, _) if message.contains(UPLOAD_LIMIT) => Failure::UploadLimit(message),
        (403, _) => Failure::Auth {
            status,
            detail: message,
        },
        (404, _) => Failure::NotFound(message),
        (400, _) if message.contains(TOO_MANY_UPLOADS) => Failure::TooManyUploads(message),
        (400..=499, _) => Failure::Rejected {
            status,
            message,
            body,
        },
        _ => Failure::Unavailable {
            message,
            retry_after,
        },
    }
}

fn transport_words(f: TransportFailure) -> &'static str {
    match f {
        TransportFailure::Connect => "could not connect",
        TransportFailure::Timeout => "timed out",
        TransportFailure::Reset => "the connection broke",
        TransportFailure::Tls => "the TLS handshake failed",
        TransportFailure::Other => "the request failed",
    }
}

fn after_attempts(message: &str, attempts: u32) -> String {
    if attempts > 1 {
        format!("{message} (after {attempts} attempts)")
    } else {
        message.to_owned()
    }
}

/// `Retry-After` is either delay seconds or an HTTP-date (RFC 9110 §10.2.3). Unparseable → `None`, and the
/// caller falls back to its own back-off, as gcapi does.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A readable one-line message for an error response, and its JSON body when it had one. HTML pages are
/// summarised by their title and never dumped; S3's XML errors by their code and message.
pub fn summarise(reply: &Reply<'_>) -> (String, serde_json::Value) {
    let status_line = status_line(reply.status);
    let content_type = reply.content_type.unwrap_or("").to_ascii_lowercase();
    let text = String::from_utf8_lossy(reply.body);
    let trimmed = text.trim_start();
    let looks_html = content_type.contains("html")
        || trimmed
            .get(..15)
            .is_some_and(|s| s.eq_ignore_ascii_case("<!doctype html>"))
        || trimmed
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("<html"));
    if looks_html {
        let message = match html_title(&text) {
            Some(title) => format!("{status_line} (HTML page \"{title}\")"),
            None => format!("{status_line} (HTML page)"),
        };
        return (message, serde_json::Value::Null);
    }
    let json_allowed = content_type.is_empty() || content_type.contains("json");
    if json_allowed && let Ok(json) = serde_json::from_slice::<serde_json::Value>(reply.body) {
        let flat = flatten_errors(&json);
        let message = if flat.is_empty() {
            status_line
        } else {
            truncate(flat)
        };
        return (message, json);
    }
    if content_type.contains("xml") || trimmed.starts_with("<?xml") || trimmed.starts_with("<Error")
    {
        let code = xml_element(&text, "Code");
        let msg = xml_element(&text, "Message");
        let message = match (code, msg) {
            (Some(c), Some(m)) => format!("{status_line}: {c}: {m}"),
            (Some(c), None) => format!("{status_line}: {c}"),
            (None, Some(m)) => format!("{status_line}: {m}"),
            (None, None) => status_line,
        };
        return (truncate(message), serde_json::Value::Null);
    }
    let first_line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let message = if first_line.is_empty() {
        status_line
    } else {
        let short: String = first_line.chars().take(200).collect();
        format!("{status_line}: {short}")
    };
    (message, serde_json::Value::Null)
}

fn status_line(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match reason {
        Some(r) => format!("HTTP {status} {r}"),
        None => format!("HTTP {status}"),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let title = html[open_end..close]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then(|| title.chars().take(200).collect())
}

fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let value = xml[start..end].trim();
    (!value.is_empty()).then(|| value.chars().take(300).collect())
}

/// Flatten any of DRF's error shapes (gc-protocol.md §1.6) into `path: message` parts joined by `; `:
/// `{"detail": m}` → `m`; `{"field": [m]}` → `field: m`; `["m"]` → `m`;
/// `{"values": [{}, {}, {"__all__": [m]}]}` → `values[2].__all__: m`.
pub fn flatten_errors(json: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    flatten_into("", json, &mut parts);
    parts.join("; ")
}

fn flatten_into(path: &str, json: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let leaf = |text: String, out: &mut Vec<String>| {
        if path.is_empty() {
            out.push(text)
        } else {
            out.push(format!("{path}: {text}"))
        }
    };
    match json {
        Value::Null => {}
        Value::String(s) => leaf(s.clone(), out),
        Value::Bool(_) | Value::Number(_) => leaf(json.to_string(), out),
        Value::Array(items) => {
            let nested = items.iter().any(|i| i.is_object() || i.is_array());
            for (i, item) in items.iter().enumerate() {
                if nested && (item.is_object() || item.is_array()) {
                    flatten_into(&format!("{path}[{i}]"), item, out);
                } else {
                    flatten_into(path, item, out);
                }
            }
        }
        Value::Object(map) => {
            for (key, value) in map {
                let sub = if path.is_empty() && key == "detail" {
                    String::new()
                } else if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten_into(&sub, value, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: 4,
            too_many_uploads_wait: Duration::from_secs(300),
            jitter: Jitter::Full,
        }
    }

    fn json_reply(status: u16, body: &'static str) -> Reply<'static> {
        Reply {
            status,
            content_type: Some("application/json"),
            retry_after: None,
            location: None,
            body: body.as_bytes(),
        }
    }

    fn html_reply(status: u16) -> Reply<'static> {
        Reply {
            status,
            content_type: Some("text/html; charset=utf-8"),
            retry_after: None,
            location: None,
            body: b"<!doctype html>\n<html><head><title>\n  Server Error (500)\n</title></head><body>secret stack</body></html>",
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn decide(kind: RequestKind, attempt: u32, reply: Reply<'_>) -> Decision {
        policy().decide(kind, attempt, &Outcome::Reply(reply), 0.5, now())
    }

    /// Every kind but `Create`, which has rules of its own.
    const ALL_KINDS: [RequestKind; 4] = [
        RequestKind::Idempotent,
        RequestKind::NonIdempotent,
        RequestKind::UploadAction,
        RequestKind::PartPut,
    ];

    #[test]
    fn success_is_accepted_for_every_kind() {
        for kind in ALL_KINDS {
            for status in [200, 201, 204] {
                assert_eq!(decide(kind, 1, json_reply(status, "{}")), Decision::Accept);
            }
        }
    }

    #[test]
    fn infrastructure_statuses_are_retried_for_every_kind_with_backoff() {
        for kind in ALL_KINDS {
            for status in [408, 429, 502, 503, 504, 507] {
                for attempt in 1..4 {
                    let expected = policy().backoff(attempt, 0.5);
                    assert_eq!(
                        decide(kind, attempt, json_reply(status, "")),
                        Decision::Retry(expected),
                        "{status} {kind:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn retries_stop_after_max_attempts_with_unavailable() {
        let d = decide(RequestKind::Idempotent, 4, json_reply(503, ""));
        let Decision::Fail(Failure::Unavailable {
            message,
            retry_after: None,
        }) = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(message, "HTTP 503 Service Unavailable (after 4 attempts)");
    }

    #[test]
    fn exponential_backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            jitter: Jitter::Full,
            ..policy()
        };
        assert_eq!(
            p.backoff(1, 0.999_999_999),
            Duration::from_millis(100).mul_f64(0.999_999_999)
        );
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(200));
        assert_eq!(p.backoff(30, 1.0), Duration::from_secs(10));
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_secs(10));
        let e = RetryPolicy {
            jitter: Jitter::Equal,
            ..policy()
        };
        assert_eq!(e.backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(e.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(e.backoff(2, 0.5), Duration::from_millis(150));
        assert_eq!(e.backoff(2, f64::NAN), Duration::from_millis(100));
        assert_eq!(e.backoff(2, 7.0), Duration::from_millis(200));
    }

    #[test]
    fn retry_after_seconds_and_http_dates_are_honoured_and_capped() {
        let mut r = json_reply(429, "");
        r.retry_after = Some("3");
        assert_eq!(
            decide(RequestKind::NonIdempotent, 1, r),
            Decision::Retry(Duration::from_secs(3))
        );
        r.retry_after = Some(" 0.25 ");
        assert_eq!(
            decide(RequestKind::NonIdempotent, 1, r),
            Decision::Retry(Duration::from_millis(250))
        );
        r.retry_after = Some("3600");
        assert_eq!(
            decide(RequestKind::NonIdempotent, 1, r),
            Decision::Retry(Duration::from_secs(10))
        );
        let in_five = httpdate::fmt_http_date(now() + Duration::from_secs(5));
        r.retry_after = Some(&in_five);
        assert_eq!(
            decide(RequestKind::Idempotent, 2, r),
            Decision::Retry(Duration::from_secs(5))
        );
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(5));
        r.retry_after = Some(&past);
        assert_eq!(
            decide(RequestKind::Idempotent, 2, r),
            Decision::Retry(Duration::ZERO)
        );
        r.retry_after = Some("soon");
        assert_eq!(
            decide(RequestKind::Idempotent, 2, r),
            Decision::Retry(policy().backoff(2, 0.5))
        );
        r.retry_after = Some("-1");
        assert_eq!(
            decide(RequestKind::Idempotent, 2, r),
            Decision::Retry(policy().backoff(2, 0.5))
        );
        // The uncapped value is kept for the caller when the budget is spent.
        r.retry_after = Some("120");
        let Decision::Fail(Failure::Unavailable { retry_after, .. }) =
            decide(RequestKind::Idempotent, 4, r)
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(120)));
    }

    #[test]
    fn parse_retry_after_forms() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:25 GMT", now()),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_retry_after("NaN", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
    }

    #[test]
    fn html_500_is_retried_only_where_repeating_is_harmless() {
        for kind in [RequestKind::Idempotent, RequestKind::PartPut] {
            assert_eq!(
                decide(kind, 1, html_reply(500)),
                Decision::Retry(policy().backoff(1, 0.5))
            );
        }
        let d = decide(RequestKind::NonIdempotent, 1, html_reply(500));
        let Decision::Fail(Failure::Unavailable { message, .. }) = d else {
            panic!("{d:?}")
        };
        assert!(
            message
                .starts_with("HTTP 500 Internal Server Error (HTML page \"Server Error (500)\")"),
            "{message}"
        );
        assert!(message.contains("may have taken effect"));
        assert!(!message.contains("secret stack") && !message.contains("<html"));
    }

    #[test]
    fn complete_multipart_500_means_the_upload_is_dead() {
        let d = decide(RequestKind::UploadAction, 1, html_reply(500));
        assert_eq!(
            d,
            Decision::Fail(Failure::UploadDead(
                "HTTP 500 Internal Server Error (HTML page \"Server Error (500)\")".into()
            ))
        );
        let gone = decide(
            RequestKind::UploadAction,
            1,
            json_reply(404, r#"{"detail": "Not found."}"#),
        );
        assert_eq!(
            gone,
            Decision::Fail(Failure::UploadDead("Not found.".into()))
        );
        let err = Failure::UploadDead("x".into()).into_error("completing upload a.mha");
        assert!(matches!(err, GcError::UploadDead { .. }));
    }

    #[test]
    fn part_puts_retry_expired_urls_and_report_missing_uploads() {
        let s3_403 = Reply {
            status: 403,
            content_type: Some("application/xml"),
            retry_after: None,
            location: None,
            body: b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        };
        assert_eq!(
            decide(RequestKind::PartPut, 1, s3_403),
            Decision::Retry(policy().backoff(1, 0.5))
        );
        let Decision::Fail(Failure::Rejected {
            status: 403,
            message,
            ..
        }) = decide(RequestKind::PartPut, 4, s3_403)
        else {
            panic!()
        };
        assert_eq!(
            message,
            "HTTP 403 Forbidden: AccessDenied: Request has expired (after 4 attempts)"
        );
        let no_such = Reply {
            status: 404,
            body: b"<Error><Code>NoSuchUpload</Code></Error>",
            ..s3_403
        };
        assert_eq!(
            decide(RequestKind::PartPut, 1, no_such),
            Decision::Fail(Failure::UploadDead(
                "HTTP 404 Not Found: NoSuchUpload".into()
            ))
        );
        let too_big = Reply {
            status: 400,
            body: b"<Error><Code>EntityTooLarge</Code></Error>",
            ..s3_403
        };
        assert!(matches!(
            decide(RequestKind::PartPut, 1, too_big),
            Decision::Fail(Failure::Rejected { status: 400, .. })
        ));
    }

    #[test]
    fn an_item_creation_is_repeated_only_where_it_certainly_had_no_effect() {
        let k = RequestKind::Create;
        for status in [408, 429, 503] {
            assert_eq!(
                decide(k, 1, json_reply(status, "")),
                Decision::Retry(policy().backoff(1, 0.5))
            );
        }
        for status in [500, 502, 504] {
            assert!(
                matches!(
                    decide(k, 1, json_reply(status, "")),
                    Decision::Fail(Failure::Unavailable { .. })
                ),
                "{status}"
            );
        }
        let connect = Outcome::Transport {
            failure: TransportFailure::Connect,
            message: "connection refused",
        };
        assert_eq!(
            policy().decide(k, 1, &connect, 0.5, now()),
            Decision::Retry(policy().backoff(1, 0.5))
        );
        for failure in [
            TransportFailure::Timeout,
            TransportFailure::Reset,
            TransportFailure::Other,
        ] {
            let outcome = Outcome::Transport {
                failure,
                message: "connection reset by peer",
            };
            let Decision::Fail(Failure::Unavailable { message, .. }) =
                policy().decide(k, 1, &outcome, 0.5, now())
            else {
                panic!("{failure:?}")
            };
            assert!(message.contains("may have been created"), "{message}");
        }
    }

    #[test]
    fn transport_failures_are_retried_for_every_kind_then_unavailable() {
        for kind in ALL_KINDS {
            for failure in [
                TransportFailure::Connect,
                TransportFailure::Timeout,
                TransportFailure::Reset,
                TransportFailure::Other,
            ] {
                let outcome = Outcome::Transport {
                    failure,
                    message: "connection reset by peer",
                };
                assert_eq!(
                    policy().decide(kind, 1, &outcome, 0.25, now()),
                    Decision::Retry(policy().backoff(1, 0.25))
                );
                let Decision::Fail(Failure::Unavailable { message, .. }) =
                    policy().decide(kind, 4, &outcome, 0.25, now())
                else {
                    panic!()
                };
                assert!(
                    message.contains("connection reset by peer")
                        && message.contains("after 4 attempts"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn a_failed_tls_handshake_is_not_repeated() {
        for kind in ALL_KINDS {
            let outcome = Outcome::Transport {
                failure: TransportFailure::Tls,
                message: "the server does not speak TLS",
            };
            let Decision::Fail(Failure::Unavailable { message, .. }) =
                policy().decide(kind, 1, &outcome, 0.25, now())
            else {
                panic!("retried")
            };
            assert_eq!(
                message,
                "the TLS handshake failed (the server does not speak TLS)"
            );
        }
    }

    #[test]
    fn auth_quota_and_not_found_are_classified() {
        let k = RequestKind::NonIdempotent;
        assert_eq!(
            decide(k, 1, json_reply(401, r#"{"detail": "Invalid token."}"#)),
            Decision::Fail(Failure::Auth {
                status: 401,
                detail: "Invalid token.".into()
            })
        );
        assert_eq!(
            decide(
                k,
                1,
                json_reply(
                    403,
                    r#"{"detail": "You do not have permission to perform this action."}"#
                )
            ),
            Decision::Fail(Failure::Auth {
                status: 403,
                detail: "You do not have permission to perform this action.".into()
            })
        );
        assert_eq!(
            decide(
                RequestKind::Idempotent,
                1,
                json_reply(403, r#"{"detail": "Upload limit reached"}"#)
            ),
            Decision::Fail(Failure::UploadLimit("Upload limit reached".into()))
        );
        assert_eq!(
            decide(
                k,
                1,
                json_reply(
                    400,
                    r#"{"non_field_errors": ["You have created too many uploads. Please try again later."]}"#
                )
            ),
            Decision::Fail(Failure::TooManyUploads(
                "non_field_errors: You have created too many uploads. Please try again later."
                    .into()
            ))
        );
        assert_eq!(
            decide(
                RequestKind::Idempotent,
                1,
                json_reply(
                    404,
                    r#"{"detail": "No ArchiveItem matches the given query."}"#
                )
            ),
            Decision::Fail(Failure::NotFound(
                "No ArchiveItem matches the given query.".into()
            ))
        );
        let html_404 = Reply {
            status: 404,
            ..html_reply(404)
        };
        let Decision::Fail(Failure::NotFound(m)) = decide(RequestKind::Idempotent, 1, html_404)
        else {
            panic!()
        };
        assert!(m.starts_with("HTTP 404 Not Found (HTML page"), "{m}");
    }

    #[test]
    fn redirects_are_errors_that_explain_the_likely_mistake() {
        let r = Reply {
            status: 301,
            content_type: None,
            retry_after: None,
            location: Some("https://x/api/v1/archives/"),
            body: b"",
        };
        let Decision::Fail(Failure::Rejected {
            status: 301,
            message,
            ..
        }) = decide(RequestKind::Idempotent, 1, r)
        else {
            panic!()
        };
        assert!(
            message.contains("https://x/api/v1/archives/") && message.contains("end in '/'"),
            "{message}"
        );
    }

    #[test]
    fn other_4xx_are_rejected_with_the_flattened_message_and_the_raw_body() {
        let body = r#"{"values": [{}, {}, {"__all__": ["JSON does not fulfill schema: instance 'x' is not of type 'integer'"]}]}"#;
        let Decision::Fail(Failure::Rejected {
            status: 400,
            message,
            body: raw,
        }) = decide(RequestKind::NonIdempotent, 1, json_reply(400, body))
        else {
            panic!()
        };
        assert_eq!(
            message,
            "values[2].__all__: JSON does not fulfill schema: instance 'x' is not of type 'integer'"
        );
        assert_eq!(
            raw["values"][2]["__all__"][0],
            "JSON does not fulfill schema: instance 'x' is not of type 'integer'"
        );
        let Decision::Fail(Failure::Rejected {
            status: 415,
            message,
            ..
        }) = decide(
            RequestKind::NonIdempotent,
            1,
            json_reply(
                415,
                r#"{"detail": "Unsupported media type \"text/plain\" in request."}"#,
            ),
        )
        else {
            panic!()
        };
        assert_eq!(message, "Unsupported media type \"text/plain\" in request.");
    }

    #[test]
    fn flatten_handles_every_drf_shape() {
        assert_eq!(
            flatten_errors(&json!({"detail": "Not found."})),
            "Not found."
        );
        assert_eq!(
            flatten_errors(
                &json!({"non_field_errors": ["The fields title, archive must make a unique set."]})
            ),
            "non_field_errors: The fields title, archive must make a unique set."
        );
        assert_eq!(
            flatten_errors(&json!([
                "This display set cannot be changed, as answers for it already exist."
            ])),
            "This display set cannot be changed, as answers for it already exist."
        );
        assert_eq!(
            flatten_errors(
                &json!({"filename": ["a is not a valid filename", "too long"], "title": ["bad"]})
            ),
            "filename: a is not a valid filename; filename: too long; title: bad"
        );
        assert_eq!(
            flatten_errors(
                &json!({"values": [{}, {"interface": ["Object with slug=x does not exist."]}, {"user_uploads": ["Invalid hyperlink - Object does not exist."]}]})
            ),
            "values[1].interface: Object with slug=x does not exist.; values[2].user_uploads: Invalid hyperlink - Object does not exist."
        );
        assert_eq!(
            flatten_errors(
                &json!({"part_numbers": {"0": ["Ensure this value is greater than or equal to 1."]}})
            ),
            "part_numbers.0: Ensure this value is greater than or equal to 1."
        );
        assert_eq!(
            flatten_errors(&json!({"count": 3, "ok": false})),
            "count: 3; ok: false"
        );
        assert_eq!(flatten_errors(&json!({})), "");
    }

    #[test]
    fn bodies_without_useful_content_fall_back_to_the_status_line() {
        let (m, _) = summarise(&json_reply(502, ""));
        assert_eq!(m, "HTTP 502 Bad Gateway");
        let (m, _) = summarise(&json_reply(400, "{}"));
        assert_eq!(m, "HTTP 400 Bad Request");
        let plain = Reply {
            content_type: Some("text/plain"),
            body: b"\n upstream connect error or disconnect\nmore",
            ..json_reply(503, "")
        };
        assert_eq!(
            summarise(&plain).0,
            "HTTP 503 Service Unavailable: upstream connect error or disconnect"
        );
        let sniffed = Reply {
            content_type: None,
            body: b"  <html><head><title>Bad</title>",
            ..json_reply(502, "")
        };
        assert_eq!(
            summarise(&sniffed).0,
            "HTTP 502 Bad Gateway (HTML page \"Bad\")"
        );
        let huge = format!("[\"{}\"]", "x".repeat(5000));
        let huge = Reply {
            body: huge.as_bytes(),
            ..json_reply(400, "")
        };
        assert!(summarise(&huge).0.chars().count() <= MAX_MESSAGE + 1);
    }
}
