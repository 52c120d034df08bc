//! Verification: a PATCH only schedules imports, so delivery ends when every socket shows its new value
//! (gc-protocol.md §4.6), or when an import session reports `Failed`.
//!
//! The platform gives no handle on the background work, so this polls the item, less often the longer it
//! has waited, and watches the side channels the protocol offers: the upload session that the server
//! creates for an image value (its `status` and `error_message`), and, for file values, whether the upload
//! was ever consumed. [`Client::await_values`] waits for one item; [`super::verifier`] waits for many at
//! once with the same schedule, deadlines and judgements.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::Client;
use super::models::{Item, Target, UploadSession};
use crate::error::GcError;

/// What one socket should show once the delivery has landed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    pub socket: String,
    /// The socket value's pk before the PATCH (`None` if the socket was empty): an asynchronous value is
    /// there when the socket shows a value with another pk.
    pub previous_pk: Option<i64>,
    pub awaiting: Awaiting,
}

/// How the socket's new value was sent, which decides how it shows up and how failure is detected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Awaiting {
    /// An inline JSON value: set inside the PATCH. Values are shared platform-wide, so an unchanged value
    /// may keep its pk: what counts is that the socket shows this JSON.
    Value(serde_json::Value),
    /// An image from uploads (their API URLs): imported by an upload session, which can report `Failed`.
    Image { uploads: Vec<String> },
    /// A DICOM image set from uploads: imported without a visible session; only the deadline tells failure.
    DicomImageSet { uploads: Vec<String> },
    /// A file from one upload (its API URL or pk): copied and validated in the background.
    File { upload: String },
    /// An existing image's API URL: set inside the PATCH.
    ExistingImage(String),
}

/// How patiently to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyTiming {
    /// The shortest pause between polls. A pause is an eighth of the time waited so far
    /// ([`VerifyTiming::pause_after`]), from this up to `max_poll`.
    pub first_poll: Duration,
    pub max_poll: Duration,
    pub image_deadline: Duration,
    pub dicom_deadline: Duration,
    /// For file values, and for inline values and existing images (normally visible on the first poll).
    pub file_deadline: Duration,
}

impl Default for VerifyTiming {
    fn default() -> Self {
        VerifyTiming {
            first_poll: Duration::from_millis(250),
            max_poll: Duration::from_secs(5),
            image_deadline: Duration::from_secs(30 * 60),
            dicom_deadline: Duration::from_secs(2 * 60 * 60),
            file_deadline: Duration::from_secs(10 * 60),
        }
    }
}

/// The pause after a look is this fraction of the time waited so far: an import that finishes just
/// after a look is seen an eighth of the wait late (plus a request), well inside the goal of at most
/// 20 % of the wait, or 1 s when that is more. A doubling pause would see it up to the whole wait late.
const POLL_FRACTION: u32 = 8;

impl VerifyTiming {
    /// The pause before the next look at an item whose values have been awaited for `waited`.
    pub fn pause_after(&self, waited: Duration) -> Duration {
        (waited / POLL_FRACTION).clamp(self.first_poll, self.max_poll.max(self.first_poll))
    }

    /// The pause before the next look, but no later than the first deadline of what is still pending.
    pub fn next_pause(
        &self,
        expectations: &[Expectation],
        pending: &[usize],
        waited: Duration,
    ) -> Duration {
        let pause = self.pause_after(waited);
        let next_deadline = pending
            .iter()
            .map(|&i| {
                self.deadline(&expectations[i].awaiting)
                    .saturating_sub(waited)
            })
            .min()
            .unwrap_or(pause);
        pause.min(next_deadline).max(Duration::from_millis(1))
    }

    /// How long a socket awaited this way may take before verification gives up.
    pub fn deadline(&self, awaiting: &Awaiting) -> Duration {
        match awaiting {
            Awaiting::Image { .. } => self.image_deadline,
            Awaiting::DicomImageSet { .. } => self.dicom_deadline,
            Awaiting::File { .. } | Awaiting::Value(_) | Awaiting::ExistingImage(_) => {
                self.file_deadline
            }
        }
    }
}

/// Whether the item shows what `e` expects (pure).
pub fn is_satisfied(item: &Item, e: &Expectation) -> bool {
    let Some(v) = item.value_for(&e.socket) else {
        return false;
    };
    let replaced = Some(v.pk) != e.previous_pk;
    match &e.awaiting {
        Awaiting::Value(expected) => v
            .value
            .as_ref()
            .is_some_and(|actual| json_equal(actual, expected)),
        Awaiting::ExistingImage(url) => v
            .image
            .as_deref()
            .is_some_and(|actual| same_resource(actual, url)),
        Awaiting::Image { .. } | Awaiting::DicomImageSet { .. } => replaced && v.image.is_some(),
        Awaiting::File { .. } => replaced && v.file.is_some(),
    }
}

/// JSON equality where numbers compare by value (`2` and `2.0` are the same float).
pub fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(i), Some(j), _, _) => i == j,
                (_, _, Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// The last path segment of an API URL (its pk), or the string itself when it is a bare pk.
fn resource_key(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().unwrap_or(s)
}

/// Two references to the same API object: absolute URLs may differ in host spelling, the pk does not.
fn same_resource(a: &str, b: &str) -> bool {
    a == b || resource_key(a) == resource_key(b)
}

/// The session importing these uploads, if the list shows it. Uploads left by a failed import can be
/// sent again, so an older `Failed` session may list them too: a session still at work (or succeeded)
/// is the current one; only when every candidate failed is the failure ours.
pub fn session_for<'a>(
    sessions: &'a [UploadSession],
    uploads: &[String],
) -> Option<&'a UploadSession> {
    let mut matching = sessions
        .iter()
        .filter(|s| {
            s.uploads
                .iter()
                .any(|su| uploads.iter().any(|u| same_resource(su, u)))
        })
        .peekable();
    let first = *matching.peek()?;
    matching.find(|s| s.status != "Failed").or(Some(first))
}

/// The operator-facing explanation when a file upload was never consumed (the platform reports nothing).
const FILE_NOT_ACCEPTED: &str = "the platform did not accept the file (the upload was never consumed); it reports no \
     reason for file validation failures: check that the content suits the socket (e.g. JSON matching its schema)";

/// Told while verification waits. The client knows nothing of journals or progress bars: whoever shows a
/// delivery's progress listens here.
pub trait VerifyObserver: Send + Sync {
    /// After each poll that found values missing: the expectations still pending, and the time since
    /// verification began.
    fn pending(&self, _pending: &[&Expectation], _waited: Duration) {}
}

/// Nobody listens.
pub struct Unobserved;
impl VerifyObserver for Unobserved {}

/// The expectations `item` does not meet yet (indices into `expectations`).
pub fn pending(item: &Item, expectations: &[Expectation]) -> Vec<usize> {
    (0..expectations.len())
        .filter(|&i| !is_satisfied(item, &expectations[i]))
        .collect()
}

/// The import failure an image's session reports, in the platform's words (pure).
pub fn session_failure(e: &Expectation, s: &UploadSession) -> Option<GcError> {
    if s.status != "Failed" {
        return None;
    }
    let message = s
        .error_message
        .clone()
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| "the image import failed without a message".into());
    Some(GcError::ImportFailed {
        socket: e.socket.clone(),
        message,
    })
}

impl Client {
    /// Poll the item until every expectation is met and return it; or fail with `ImportFailed` (an upload
    /// session said `Failed`, or a file upload was never consumed) or `VerifyTimeout`.
    pub async fn await_values(
        &self,
        target: &Target,
        item_pk: &str,
        expectations: &[Expectation],
        timing: &VerifyTiming,
    ) -> Result<Item, GcError> {
        self.await_values_observed(target, item_pk, expectations, timing, &Unobserved)
            .await
    }

    /// [`Client::await_values`], telling `observer` after every poll what is still awaited.
    pub async fn await_values_observed(
        &self,
        target: &Target,
        item_pk: &str,
        expectations: &[Expectation],
        timing: &VerifyTiming,
        observer: &dyn VerifyObserver,
    ) -> Result<Item, GcError> {
        let start = Instant::now();
        // Once an image's session is known, read it directly instead of listing all sessions.
        let mut sessions: Vec<Option<String>> = vec![None; expectations.len()];
        loop {
            let item = self.get_item(target, item_pk).await?;
            let pending = pending(&item, expectations);
            if pending.is_empty() {
                return Ok(item);
            }
            let awaited: Vec<&Expectation> = pending.iter().map(|&i| &expectations[i]).collect();
            observer.pending(&awaited, start.elapsed());
            let mut listed: Option<Vec<UploadSession>> = None;
            for &i in &pending {
                let e = &expectations[i];
                if let Awaiting::Image { uploads } = &e.awaiting {
                    let session = match &sessions[i] {
                        Some(url) => Some(self.session(url).await?),
                        None => {
                            if listed.is_none() {
                                listed = Some(self.upload_sessions().await?);
                            }
                            listed
                                .as_deref()
                                .and_then(|all| session_for(all, uploads))
                                .cloned()
                        }
                    };
                    if let Some(s) = session {
                        if let Some(failed) = session_failure(e, &s) {
                            return Err(failed);
                        }
                        sessions[i] = Some(s.api_url);
                    }
                }
            }
            let elapsed = start.elapsed();
            for &i in &pending {
                self.check_deadline(&expectations[i], elapsed, timing)
                    .await?;
            }
            tokio::time::sleep(timing.next_pause(expectations, &pending, elapsed)).await;
        }
    }

    /// Fail an expectation still pending after its deadline: `ImportFailed` for a file whose upload is
    /// still there (the platform did not take it), else `VerifyTimeout`.
    pub(crate) async fn check_deadline(
        &self,
        e: &Expectation,
        elapsed: Duration,
        timing: &VerifyTiming,
    ) -> Result<(), GcError> {
        if elapsed < timing.deadline(&e.awaiting) {
            return Ok(());
        }
        if let Awaiting::File { upload } = &e.awaiting
            && let Some(u) = self.get_upload(resource_key(upload)).await?
        {
            let message = if u.status == "Completed" {
                FILE_NOT_ACCEPTED.to_owned()
            } else {
                format!(
                    "the upload {} was never completed (status {})",
                    u.filename, u.status
                )
            };
            return Err(GcError::ImportFailed {
                socket: e.socket.clone(),
                message,
            });
        }
        Err(GcError::VerifyTimeout {
            socket: e.socket.clone(),
            waited: elapsed,
        })
    }

    pub(crate) async fn session(&self, api_url: &str) -> Result<UploadSession, GcError> {
        let url = url::Url::parse(api_url).map_err(|e| GcError::Protocol {
            context: "reading an upload session".into(),
            message: format!("bad session URL ({e})"),
        })?;
        self.get_json(url, "reading an upload session").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(values: serde_json::Value) -> Item {
        serde_json::from_value(json!({"pk": "i", "title": "t", "values": values})).unwrap()
    }

    fn expect(socket: &str, previous_pk: Option<i64>, awaiting: Awaiting) -> Expectation {
        Expectation {
            socket: socket.into(),
            previous_pk,
            awaiting,
        }
    }

    #[test]
    fn async_values_count_only_with_a_new_pk() {
        let it = item(json!([
            {"interface": "ct-image", "pk": 7, "image": "https://h/api/v1/cases/images/a/", "value": null, "file": null},
            {"interface": "report", "pk": 9, "image": null, "value": null, "file": "https://h/media/r.pdf"}
        ]));
        let img = |prev| {
            expect(
                "ct-image",
                prev,
                Awaiting::Image {
                    uploads: vec!["u".into()],
                },
            )
        };
        assert!(is_satisfied(&it, &img(None)));
        assert!(is_satisfied(&it, &img(Some(3))));
        assert!(!is_satisfied(&it, &img(Some(7))));
        let dicom = expect(
            "ct-image",
            Some(7),
            Awaiting::DicomImageSet { uploads: vec![] },
        );
        assert!(!is_satisfied(&it, &dicom));
        let file = |prev| expect("report", prev, Awaiting::File { upload: "u".into() });
        assert!(is_satisfied(&it, &file(Some(8))));
        assert!(!is_satisfied(&it, &file(Some(9))));
        assert!(!is_satisfied(
            &it,
            &expect("missing", None, Awaiting::File { upload: "u".into() })
        ));
        // The right pk but the wrong kind of content does not count.
        assert!(!is_satisfied(
            &it,
            &expect("report", None, Awaiting::Image { uploads: vec![] })
        ));
    }

    #[test]
    fn inline_values_count_by_content_even_with_an_old_pk() {
        let it = item(
            json!([{"interface": "lung-volume", "pk": 5, "value": 2.0, "image": null, "file": null},
                             {"interface": "metadata", "pk": 6, "value": {"a": [1, 2.5], "b": "x"}, "image": null, "file": null}]),
        );
        assert!(is_satisfied(
            &it,
            &expect("lung-volume", Some(5), Awaiting::Value(json!(2)))
        ));
        assert!(!is_satisfied(
            &it,
            &expect("lung-volume", None, Awaiting::Value(json!(2.5)))
        ));
        assert!(is_satisfied(
            &it,
            &expect(
                "metadata",
                None,
                Awaiting::Value(json!({"b": "x", "a": [1.0, 2.5]}))
            )
        ));
        assert!(!is_satisfied(
            &it,
            &expect(
                "metadata",
                None,
                Awaiting::Value(json!({"b": "x", "a": [1, 2.5], "c": null}))
            )
        ));
    }

    #[test]
    fn existing_images_match_by_url_or_pk() {
        let it = item(
            json!([{"interface": "ct-image", "pk": 1, "image": "https://h/api/v1/cases/images/abc/", "value": null, "file": null}]),
        );
        assert!(is_satisfied(
            &it,
            &expect(
                "ct-image",
                Some(1),
                Awaiting::ExistingImage("https://h/api/v1/cases/images/abc/".into())
            )
        ));
        assert!(is_satisfied(
            &it,
            &expect(
                "ct-image",
                None,
                Awaiting::ExistingImage("http://127.0.0.1/api/v1/cases/images/abc/".into())
            )
        ));
        assert!(!is_satisfied(
            &it,
            &expect(
                "ct-image",
                None,
                Awaiting::ExistingImage("https://h/api/v1/cases/images/abd/".into())
            )
        ));
    }

    #[test]
    fn json_numbers_compare_by_value() {
        assert!(json_equal(&json!(1), &json!(1.0)));
        assert!(json_equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_equal(&json!(1), &json!("1")));
        assert!(!json_equal(&json!([1, 2]), &json!([2, 1])));
        assert!(json_equal(&json!(null), &json!(null)));
    }

    #[test]
    fn the_session_is_found_by_its_uploads() {
        let sessions: Vec<UploadSession> = serde_json::from_value(json!([
            {"pk": "s1", "status": "Succeeded", "error_message": "", "image_set": [], "uploads": [], "api_url": "https://h/api/v1/cases/upload-sessions/s1/"},
            {"pk": "s2", "status": "Failed", "error_message": "1 file could not be imported", "image_set": [],
             "uploads": ["https://h/api/v1/uploads/u1/", "https://h/api/v1/uploads/u2/"], "api_url": "https://h/api/v1/cases/upload-sessions/s2/"}
        ]))
        .unwrap();
        assert_eq!(
            session_for(&sessions, &["https://h/api/v1/uploads/u2/".into()])
                .unwrap()
                .pk,
            "s2"
        );
        assert_eq!(session_for(&sessions, &["u1".into()]).unwrap().pk, "s2");
        assert!(session_for(&sessions, &["https://h/api/v1/uploads/u3/".into()]).is_none());
        // The same uploads sent again after a failure: the new session, still queued, is the one.
        let mut again = sessions.clone();
        let mut retry = again[1].clone();
        retry.pk = "s3".into();
        retry.status = "Re-Queued".into();
        again.push(retry);
        assert_eq!(session_for(&again, &["u2".into()]).unwrap().pk, "s3");
    }

    #[test]
    fn default_timing_matches_the_protocol_advice() {
        let t = VerifyTiming::default();
        assert_eq!(t.first_poll, Duration::from_millis(250));
        assert_eq!(t.max_poll, Duration::from_secs(5));
        assert_eq!(
            t.deadline(&Awaiting::Image { uploads: vec![] }),
            Duration::from_secs(1800)
        );
        assert_eq!(
            t.deadline(&Awaiting::DicomImageSet { uploads: vec![] }),
            Duration::from_secs(7200)
        );
        assert_eq!(
            t.deadline(&Awaiting::File {
                upload: String::new()
            }),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn a_finished_import_is_seen_within_a_fifth_of_the_wait_or_a_second() {
        let t = VerifyTiming::default();
        // Looks as the schedule places them, each taking a slow request's 150 ms.
        let rtt = Duration::from_millis(150);
        let mut looks = vec![Duration::ZERO];
        while *looks.last().unwrap() < Duration::from_secs(3600) {
            let last = *looks.last().unwrap();
            looks.push(last + rtt + t.pause_after(last + rtt));
        }
        for ms in (0..3_600_000u64).step_by(37) {
            let done = Duration::from_millis(ms);
            let seen = looks.iter().find(|l| **l >= done).unwrap();
            let bound = (done / 5).max(Duration::from_secs(1));
            assert!(
                *seen - done <= bound,
                "finished at {done:?}, seen at {seen:?}"
            );
        }
        assert_eq!(t.pause_after(Duration::ZERO), t.first_poll);
        assert_eq!(
            t.pause_after(Duration::from_secs(8)),
            Duration::from_secs(1)
        );
        assert_eq!(t.pause_after(Duration::from_secs(3600)), t.max_poll);
    }
}
