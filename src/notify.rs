//! Webhook alerts: an operator is told when a case is quarantined, when a case is stuck (still not ready
//! after `max_wait`) and when the platform refuses the token, instead of finding out from a log weeks later.
//!
//! The payload goes to chat systems and ticket queues outside the hospital's control, so it carries no
//! patient data: the case is named only by a hash of its path, and its name and path are taken out of the
//! reason text. Alerts wait in the journal until a receiver took them, so neither a receiver that is down
//! nor a crash of the agent loses one; they are sent from a task per webhook, in order, and a receiver
//! that is down never slows deliveries.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::{AlertKind, Folder, Notify};
use crate::journal::Journal;
use crate::rules::case_id;
use gc_client::TargetKind;

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
    /// An alert about one case of `folder`. `case` is its path below the drop folder; it and the full
    /// path are replaced by the case id wherever they occur in `reason`.
    pub fn about_case(
        event: AlertKind,
        folder: &Folder,
        case: &str,
        state: &'static str,
        reason: &str,
    ) -> Alert {
        let id = case_id(&folder.path, case);
        let reason = scrub(reason, &folder.path.join(case), case, &id);
        Alert {
            case_id: Some(id),
            ..Alert::about_target(event, folder, state, &reason)
        }
    }

    /// An alert about the target of `folder` as a whole, e.g. a refused token.
    pub fn about_target(
        event: AlertKind,
        folder: &Folder,
        state: &'static str,
        reason: &str,
    ) -> Alert {
        Alert {
            event,
            at: crate::clock::now_rfc3339(),
            agent: concat!("gc-hotfolder ", env!("CARGO_PKG_VERSION")),
            folder: folder.path.display().to_string(),
            target: Target {
                kind: match folder.target {
                    TargetKind::Archive => "archive",
                    TargetKind::ReaderStudy => "reader_study",
                    TargetKind::Algorithm => "algorithm",
                },
                slug: folder.target_slug.clone(),
            },
            case_id: None,
            state,
            reason: reason.to_owned(),
        }
    }
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

/// Queues alerts in the journal for the webhook tasks. Cheap to clone; with no webhook configured it
/// drops alerts.
#[derive(Clone, Default)]
pub struct Notifier {
    journal: Option<Arc<Journal>>,
    hooks: Vec<Hook>,
}

#[derive(Clone)]
struct Hook {
    url: String,
    events: Vec<AlertKind>,
    /// Wakes the hook's task; the task ends once every sender is gone and its queue is empty.
    wake: mpsc::UnboundedSender<()>,
}

/// The running webhook tasks; [`Senders::finish`] lets them drain their queues for a while.
pub struct Senders {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// First wait after a failed POST; it doubles up to [`LONGEST_WAIT`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(300);
/// How often an idle webhook task looks at its queue without being woken.
const IDLE_LOOK: Duration = Duration::from_secs(30);
/// An alert not sent within a day is stale: it is dropped (and logged) rather than sent late.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Notifier {
    /// Start one sending task per webhook. Alerts queued by an earlier run (the agent stopped or crashed
    /// before they went out) are sent first; those for webhooks no longer configured are dropped.
    pub fn start(hooks: &[Notify], journal: &Arc<Journal>) -> (Notifier, Senders) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let urls: Vec<String> = hooks.iter().map(|h| h.url.to_string()).collect();
        match journal.drop_alerts_except(&urls) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                alerts = n,
                "dropped alerts queued for webhooks that are no longer configured"
            ),
            Err(e) => tracing::error!("cannot read the queued alerts: {e}"),
        }
        let mut notifier = Notifier {
            journal: Some(journal.clone()),
            hooks: Vec::new(),
        };
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
                    tracing::error!(webhook = %hook.label(), "cannot set up the webhook client, alerts to it are off: {e}");
                    continue;
                }
            };
            let (wake, rx) = mpsc::unbounded_channel();
            // Whatever an earlier run left queued goes out now.
            let _ = wake.send(());
            notifier.hooks.push(Hook {
                url: hook.url.to_string(),
                events: hook.events.clone(),
                wake,
            });
            tasks.push(tokio::spawn(send_all(
                client,
                hook.url.clone(),
                hook.label(),
                journal.clone(),
                rx,
            )));
        }
        (notifier, Senders { tasks })
    }

    /// Queue the alert for every webhook that wants it. The queue is in the journal, so an alert raised
    /// just before a crash is still sent after the restart.
    pub fn send(&self, alert: Alert) {
        let Some(journal) = &self.journal else {
            return;
        };
        let payload = match serde_json::to_string(&alert) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot encode an alert: {e}");
                return;
            }
        };
        for hook in self
            .hooks
            .iter()
            .filter(|h| h.events.contains(&alert.event))
        {
            match journal.queue_alert(&hook.url, &payload) {
                Ok(()) => {
                    let _ = hook.wake.send(());
                }
                Err(e) => tracing::error!("cannot queue an alert: {e}"),
            }
        }
    }
}

impl Senders {
    /// Stop now; queued alerts stay in the journal.
    pub fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// Wait up to `grace` for queued alerts to go out (the notifiers must be dropped first), then stop;
    /// what is left stays queued for the next start.
    pub async fn finish(self, grace: Duration) {
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                "some alerts could not be sent before stopping; they go out at the next start"
            );
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// What became of one POST.
enum Sent {
    Yes,
    /// The receiver refused this alert (a 4xx other than 408/429): sending it again will not help.
    Refused(u16),
    Failed(String),
}

async fn post(client: &reqwest::Client, url: &url::Url, payload: &str) -> Sent {
    let req = client
        .post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(payload.to_owned());
    match req.send().await {
        Ok(r) if r.status().is_success() => Sent::Yes,
        Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
            Sent::Refused(r.status().as_u16())
        }
        Ok(r) => Sent::Failed(format!("status {}", r.status().as_u16())),
        Err(e) => Sent::Failed(e.without_url().to_string()),
    }
}

/// Send one webhook's queue, oldest first, until every [`Notifier`] is gone and the queue is empty.
async fn send_all(
    client: reqwest::Client,
    url: url::Url,
    label: String,
    journal: Arc<Journal>,
    mut wake: mpsc::UnboundedReceiver<()>,
) {
    let hook = url.to_string();
    let mut wait = FIRST_RETRY;
    loop {
        let next = match journal.next_alert(&hook) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(webhook = %label, "cannot read the queued alerts: {e}");
                None
            }
        };
        let Some(alert) = next else {
            // Woken by a new alert, or a look now and then for alerts that a notifier of an earlier
            // config queued after its task was replaced.
            if let Ok(None) = tokio::time::timeout(IDLE_LOOK, wake.recv()).await {
                return;
            }
            continue;
        };
        let age = crate::journal::unix_now().saturating_sub(alert.created_unix);
        let outcome = if age as u64 > GIVE_UP_AFTER.as_secs() {
            crate::metrics::global().alert("expired");
            tracing::error!(webhook = %label, attempts = alert.attempts, "an alert could not be sent for a day; dropped");
            journal.alert_done(alert.id)
        } else {
            match post(&client, &url, &alert.payload).await {
                Sent::Yes => {
                    crate::metrics::global().alert("sent");
                    tracing::debug!(webhook = %label, "alert sent");
                    wait = FIRST_RETRY;
                    journal.alert_done(alert.id)
                }
                Sent::Refused(status) => {
                    crate::metrics::global().alert("refused");
                    tracing::error!(webhook = %label, status, "the webhook refused an alert; it is dropped");
                    journal.alert_done(alert.id)
                }
                Sent::Failed(why) => {
                    crate::metrics::global().alert("failed");
                    tracing::warn!(webhook = %label, attempt = alert.attempts + 1, retry_in = ?wait, "cannot send an alert: {why}");
                    let r = journal.alert_failed(alert.id);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LONGEST_WAIT);
                    r
                }
            }
        };
        if let Err(e) = outcome {
            // The journal is unwritable: do not spin on the same alert.
            tracing::error!(webhook = %label, "cannot record an alert's outcome: {e}");
            tokio::time::sleep(LONGEST_WAIT).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drop folder of archive `lung`.
    fn folder(path: &str) -> Folder {
        let text = format!(
            "[server]\nurl = \"http://127.0.0.1:1/\"\n[[folder]]\npath = \"{path}\"\narchive = \"lung\"\n\
             [[folder.socket]]\nslug = \"s\"\nvalue = 1\n"
        );
        let c = crate::config::Config::parse(Path::new("/etc/c.toml"), &text).unwrap();
        c.folders[0].clone()
    }

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
        let a = Alert::about_case(
            AlertKind::Quarantined,
            &folder("/srv/drop/lung"),
            "2024/Jane_Doe_1962",
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
    fn alerts_are_queued_only_for_hooks_that_want_them() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(dir.path()).unwrap());
        let (wake_all, mut rx_all) = mpsc::unbounded_channel();
        let (wake_auth, mut rx_auth) = mpsc::unbounded_channel();
        let n = Notifier {
            journal: Some(journal.clone()),
            hooks: vec![
                Hook {
                    url: "https://all/".into(),
                    events: AlertKind::ALL.to_vec(),
                    wake: wake_all,
                },
                Hook {
                    url: "https://auth/".into(),
                    events: vec![AlertKind::AuthFailed],
                    wake: wake_auth,
                },
            ],
        };
        let f = folder("/d");
        n.send(Alert::about_case(
            AlertKind::Stuck,
            &f,
            "c1",
            "settling",
            "r",
        ));
        assert!(rx_all.try_recv().is_ok() && rx_auth.try_recv().is_err());
        n.send(Alert::about_target(
            AlertKind::AuthFailed,
            &f,
            "paused",
            "401",
        ));
        assert!(rx_auth.try_recv().is_ok());
        let event = |hook: &str| {
            let a = journal.next_alert(hook).unwrap().unwrap();
            journal.alert_done(a.id).unwrap();
            serde_json::from_str::<serde_json::Value>(&a.payload).unwrap()["event"].clone()
        };
        assert_eq!(event("https://all/"), "stuck");
        assert_eq!(event("https://all/"), "auth_failed");
        assert_eq!(event("https://auth/"), "auth_failed");
        assert!(journal.next_alert("https://auth/").unwrap().is_none());
    }
}
