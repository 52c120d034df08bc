//! Webhook alerts: an operator is told when a case is quarantined, when a case is stuck (still not ready
//! after `max_wait`) and when the platform refuses the token, instead of finding out from a log weeks later.
//!
//! The payload goes to chat systems and ticket queues outside the hospital's control, so it carries no
//! patient data: the case is named only by a hash of its path, and its name and path are taken out of the
//! reason text. Alerts are sent from a task of their own, in order per webhook, with a few retries; a
//! receiver that is down never slows deliveries.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::{AlertKind, Notify};
use crate::gc::TargetKind;

/// One alert, already free of patient data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    pub event: AlertKind,
    pub at: String,
    pub agent: &'static str,
    /// The drop folder (configured by the operator, not named after a patient).
    pub folder: String,
    pub target: Target,
    /// A stable pseudonym of the case: the same case always gets the same id. `None` for alerts about a
    /// whole target.
    pub case_id: Option<String>,
    /// The case's state after the event (`quarantined`, `settling`, `paused`).
    pub state: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Target {
    pub kind: &'static str,
    pub slug: String,
}

impl Alert {
    /// An alert about one case. `case` is its path below the drop folder; it and the full path are
    /// replaced by the case id wherever they occur in `reason`.
    pub fn about_case(
        event: AlertKind,
        folder: &Path,
        case: &str,
        target: (TargetKind, &str),
        state: &'static str,
        reason: &str,
    ) -> Alert {
        let id = case_id(folder, case);
        Alert {
            event,
            at: crate::receipt::now_rfc3339(),
            agent: concat!("gc-hotfolder ", env!("CARGO_PKG_VERSION")),
            folder: folder.display().to_string(),
            target: target_of(target),
            reason: scrub(reason, &folder.join(case), case, &id),
            case_id: Some(id),
            state,
        }
    }

    /// An alert about a whole target, e.g. a refused token.
    pub fn about_target(
        event: AlertKind,
        folder: &Path,
        target: (TargetKind, &str),
        state: &'static str,
        reason: &str,
    ) -> Alert {
        Alert {
            event,
            at: crate::receipt::now_rfc3339(),
            agent: concat!("gc-hotfolder ", env!("CARGO_PKG_VERSION")),
            folder: folder.display().to_string(),
            target: target_of(target),
            case_id: None,
            state,
            reason: reason.to_owned(),
        }
    }
}

fn target_of((kind, slug): (TargetKind, &str)) -> Target {
    Target {
        kind: match kind {
            TargetKind::Archive => "archive",
            TargetKind::ReaderStudy => "reader_study",
        },
        slug: slug.to_owned(),
    }
}

/// `sha256:` and the first 16 hex digits of SHA-256 over the drop folder and the case path: enough to
/// tell cases apart and to find one in `status --json` (which shows the same id), too little to guess a
/// patient from.
pub fn case_id(folder: &Path, case: &str) -> String {
    let mut h = Sha256::new();
    h.update(folder.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(case.as_bytes());
    format!("sha256:{}", &hex::encode(h.finalize())[..16])
}

/// Replace the case's full path, its path below the drop folder and its folder name by `id`.
fn scrub(reason: &str, case_dir: &Path, case: &str, id: &str) -> String {
    let mut out = reason.replace(&*case_dir.to_string_lossy(), id);
    if !case.is_empty() {
        out = out.replace(case, id);
    }
    if let Some(name) = Path::new(case).file_name().map(|n| n.to_string_lossy()) {
        // A very short name ("1") would shred ordinary words; such a name is no patient identifier.
        if name.chars().count() >= 3 {
            out = out.replace(&*name, id);
        }
    }
    out
}

/// Hands alerts to the webhook tasks. Cheap to clone; with no webhook configured it drops alerts.
#[derive(Clone, Default)]
pub struct Notifier {
    hooks: Vec<(Vec<AlertKind>, mpsc::UnboundedSender<Alert>)>,
}

/// The running webhook tasks; [`Senders::finish`] lets them drain their queues for a while.
pub struct Senders {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often and how patiently one alert is offered to a receiver.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);

impl Notifier {
    /// Start one sending task per webhook.
    pub fn start(hooks: &[Notify]) -> (Notifier, Senders) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut notifier = Notifier::default();
        let mut tasks = Vec::new();
        for hook in hooks {
            let client = match reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(hook.timeout)
                .user_agent(concat!("gc-hotfolder/", env!("CARGO_PKG_VERSION")))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(url = %hook.url, "cannot set up the webhook client, alerts to it are off: {e}");
                    continue;
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            notifier.hooks.push((hook.events.clone(), tx));
            tasks.push(tokio::spawn(send_all(client, hook.url.clone(), rx)));
        }
        (notifier, Senders { tasks })
    }

    pub fn send(&self, alert: Alert) {
        for (events, tx) in &self.hooks {
            if events.contains(&alert.event) {
                let _ = tx.send(alert.clone());
            }
        }
    }
}

impl Senders {
    /// Wait up to `grace` for queued alerts to go out (the notifiers must be dropped first), then stop.
    pub async fn finish(self, grace: Duration) {
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("some alerts could not be sent before stopping");
        }
    }
}

async fn send_all(client: reqwest::Client, url: url::Url, mut rx: mpsc::UnboundedReceiver<Alert>) {
    while let Some(alert) = rx.recv().await {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            match client.post(url.clone()).json(&alert).send().await {
                Ok(r) if r.status().is_success() => {
                    crate::metrics::global().alert("sent");
                    tracing::debug!(%url, event = alert.event.name(), "alert sent");
                    break;
                }
                Ok(r)
                    if r.status().is_client_error()
                        && !matches!(r.status().as_u16(), 408 | 429) =>
                {
                    crate::metrics::global().alert("refused");
                    tracing::error!(%url, status = r.status().as_u16(), event = alert.event.name(), "the webhook refused the alert");
                    break;
                }
                outcome => {
                    let why = match outcome {
                        Ok(r) => format!("status {}", r.status().as_u16()),
                        Err(e) => e.without_url().to_string(),
                    };
                    if attempt == ATTEMPTS {
                        crate::metrics::global().alert("failed");
                        tracing::error!(%url, event = alert.event.name(), "cannot send the alert after {ATTEMPTS} attempts: {why}");
                    } else {
                        tracing::warn!(%url, attempt, retry_in = ?wait, "cannot send the alert: {why}");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_are_stable_and_tell_cases_apart() {
        let f = Path::new("/srv/drop/lung");
        assert_eq!(case_id(f, "patient-0042"), case_id(f, "patient-0042"));
        assert_ne!(case_id(f, "patient-0042"), case_id(f, "patient-0043"));
        assert_ne!(
            case_id(f, "a"),
            case_id(Path::new("/srv/drop/lun"), "ga"),
            "folder and case are separated"
        );
        assert!(case_id(f, "x").starts_with("sha256:") && case_id(f, "x").len() == 23);
    }

    #[test]
    fn the_reason_loses_the_case_name_and_path() {
        let f = Path::new("/srv/drop/lung");
        let a = Alert::about_case(
            AlertKind::Quarantined,
            f,
            "2024/Jane_Doe_1962",
            (TargetKind::Archive, "lung"),
            "quarantined",
            "cannot read a file of the case: /srv/drop/lung/2024/Jane_Doe_1962/ct/1.dcm: denied; \
             Jane_Doe_1962 again, and 2024/Jane_Doe_1962",
        );
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("Jane"), "{json}");
        let id = a.case_id.clone().unwrap();
        assert_eq!(
            a.reason,
            format!("cannot read a file of the case: {id}/ct/1.dcm: denied; {id} again, and {id}")
        );
        assert_eq!(a.folder, "/srv/drop/lung");
        assert_eq!(a.target.kind, "archive");
    }

    #[test]
    fn alerts_go_only_to_hooks_that_want_them() {
        let (tx_all, mut rx_all) = mpsc::unbounded_channel();
        let (tx_auth, mut rx_auth) = mpsc::unbounded_channel();
        let n = Notifier {
            hooks: vec![
                (AlertKind::ALL.to_vec(), tx_all),
                (vec![AlertKind::AuthFailed], tx_auth),
            ],
        };
        let f = Path::new("/d");
        n.send(Alert::about_case(
            AlertKind::Stuck,
            f,
            "c1",
            (TargetKind::Archive, "a"),
            "settling",
            "r",
        ));
        n.send(Alert::about_target(
            AlertKind::AuthFailed,
            f,
            (TargetKind::Archive, "a"),
            "paused",
            "401",
        ));
        assert_eq!(rx_all.try_recv().unwrap().event, AlertKind::Stuck);
        assert_eq!(rx_all.try_recv().unwrap().event, AlertKind::AuthFailed);
        assert_eq!(rx_auth.try_recv().unwrap().event, AlertKind::AuthFailed);
        assert!(rx_auth.try_recv().is_err());
    }
}
