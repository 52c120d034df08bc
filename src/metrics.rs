//! What the agent counts about itself, and the two ways an operator reads it: Prometheus text on
//! `/metrics` and a status document on `/status`, served only when the config has a `[metrics]` section.
//!
//! The counters are process-wide (one agent per process), so the code that sees an event — a part stored,
//! a request retried, a watch overflowing — counts it where it happens without a handle threaded through
//! every layer. Gauges about cases come from the journal at scrape time, so they are never stale.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::status::FolderStatus;

/// The process's counters.
/// The platform client's reports, counted in [`global`]: give it to every client the agent makes.
pub fn client_observer() -> std::sync::Arc<dyn gc_client::ClientObserver> {
    std::sync::Arc::new(ClientCounters)
}

/// See [`client_observer`].
#[derive(Debug, Clone, Copy)]
struct ClientCounters;

impl gc_client::ClientObserver for ClientCounters {
    fn request_retried(&self, cause: &str) {
        global().request_retried(cause);
    }
    fn part_stored(&self, bytes: u64) {
        global().uploaded(bytes);
    }
    fn file_uploaded(&self, bytes: u64, took: Duration) {
        global().file_uploaded(bytes, took);
    }
}

pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Counters since the process started, and what the agent's loop last said about the cases in memory.
#[derive(Default)]
pub struct Metrics {
    uploaded_bytes: AtomicU64,
    uploaded_files: AtomicU64,
    /// Wall time spent in completed file uploads, in microseconds.
    upload_micros: AtomicU64,
    /// The throughput of the last completed file, as `f64` bits.
    last_file_rate: AtomicU64,
    labelled: Mutex<Labelled>,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Labelled {
    /// HTTP requests retried, by cause (`http_503`, `timeout`, …).
    request_retries: BTreeMap<String, u64>,
    /// Deliveries postponed after a failure that may pass, by error class.
    delivery_retries: BTreeMap<&'static str, u64>,
    /// Delivery attempts ended, by outcome.
    deliveries: BTreeMap<&'static str, u64>,
    /// Folder scans, by reason.
    scans: BTreeMap<&'static str, u64>,
    /// Webhook POSTs, by result.
    alerts: BTreeMap<&'static str, u64>,
}

/// What only the agent's loop knows: cases that are not in the journal yet, and deliveries in flight.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Live {
    /// Cases seen and not delivered yet (settling, ready, or being delivered).
    pub pending: u64,
    pub in_flight: u64,
    /// How long the case waiting longest has been waiting.
    pub oldest_pending_seconds: f64,
    /// Targets paused after the platform refused the token, as "archive slug".
    pub paused_targets: Vec<String>,
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_insert(0) += 1;
}

impl Metrics {
    fn labelled(&self) -> std::sync::MutexGuard<'_, Labelled> {
        // Counters stay usable after a panic elsewhere; at worst one increment is lost.
        self.labelled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A part (or a whole small file) reached the storage.
    pub fn uploaded(&self, bytes: u64) {
        self.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A file's upload was completed, `bytes` long, in `took`.
    pub fn file_uploaded(&self, bytes: u64, took: Duration) {
        self.uploaded_files.fetch_add(1, Ordering::Relaxed);
        self.upload_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
        self.last_file_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    pub fn request_retried(&self, cause: &str) {
        bump(&mut self.labelled().request_retries, cause.to_owned());
    }

    pub fn delivery_retried(&self, class: &'static str) {
        bump(&mut self.labelled().delivery_retries, class);
    }

    pub fn delivery_ended(&self, outcome: &'static str) {
        bump(&mut self.labelled().deliveries, outcome);
    }

    pub fn scanned(&self, reason: &'static str) {
        bump(&mut self.labelled().scans, reason);
    }

    pub fn alert(&self, result: &'static str) {
        bump(&mut self.labelled().alerts, result);
    }

    pub fn set_live(&self, live: Live) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
    }

    pub fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The Prometheus text exposition (format 0.0.4) of everything, with per-folder case counts.
    pub fn render(&self, folders: &[FolderStatus], uptime: Duration) -> String {
        let mut out = Text::default();
        out.single(
            "gc_hotfolder_up_seconds",
            "gauge",
            "How long the agent has been running.",
            uptime.as_secs_f64(),
        );
        render_folders(&mut out, folders);
        self.render_live(&mut out);
        self.render_uploads(&mut out);
        self.render_labelled(&mut out);
        out.0
    }

    /// What the loop reports of itself: cases pending and in flight, the oldest wait, paused targets.
    fn render_live(&self, out: &mut Text) {
        let live = self.live();
        out.single(
            "gc_hotfolder_cases_pending",
            "gauge",
            "Cases seen and not delivered yet, including those still settling.",
            live.pending as f64,
        );
        out.single(
            "gc_hotfolder_deliveries_in_flight",
            "gauge",
            "Cases being delivered right now.",
            live.in_flight as f64,
        );
        out.single(
            "gc_hotfolder_oldest_pending_seconds",
            "gauge",
            "How long the case waiting longest has been waiting (0 when none waits).",
            live.oldest_pending_seconds,
        );
        out.single(
            "gc_hotfolder_targets_paused",
            "gauge",
            "Targets paused because the platform refused the token.",
            live.paused_targets.len() as f64,
        );
    }

    /// Upload counters: bytes, files, time, the last file's throughput.
    fn render_uploads(&self, out: &mut Text) {
        out.single(
            "gc_hotfolder_uploaded_bytes_total",
            "counter",
            "Bytes stored by the upload storage (a retried part counts again).",
            self.uploaded_bytes.load(Ordering::Relaxed) as f64,
        );
        out.single(
            "gc_hotfolder_uploaded_files_total",
            "counter",
            "Files whose upload was completed.",
            self.uploaded_files.load(Ordering::Relaxed) as f64,
        );
        out.single("gc_hotfolder_upload_seconds_total", "counter", "Time spent uploading completed files; with the bytes it gives the throughput over any window.", self.upload_micros.load(Ordering::Relaxed) as f64 / 1e6);
        out.single(
            "gc_hotfolder_last_file_bytes_per_second",
            "gauge",
            "Throughput of the last completed file upload.",
            f64::from_bits(self.last_file_rate.load(Ordering::Relaxed)),
        );
    }

    /// Counters by label: retries by cause and class, deliveries by outcome, scans, alerts.
    fn render_labelled(&self, out: &mut Text) {
        let l = self.labelled();
        out.counter_family(
            "gc_hotfolder_request_retries_total",
            "HTTP requests to the platform or the upload storage that were retried, by cause.",
            "cause",
            l.request_retries.iter().map(|(k, v)| (k.as_str(), *v)),
        );
        out.counter_family(
            "gc_hotfolder_delivery_retries_total",
            "Deliveries postponed after a failure that may pass, by error class.",
            "class",
            l.delivery_retries.iter().map(|(k, v)| (*k, *v)),
        );
        out.counter_family(
            "gc_hotfolder_deliveries_total",
            "Delivery attempts that ended, by outcome.",
            "outcome",
            l.deliveries.iter().map(|(k, v)| (*k, *v)),
        );
        out.counter_family(
            "gc_hotfolder_watch_scans_total",
            "Scans of a drop folder, by reason (overflow: the kernel's event queue overflowed).",
            "reason",
            l.scans.iter().map(|(k, v)| (*k, *v)),
        );
        out.counter_family(
            "gc_hotfolder_alerts_total",
            "Webhook alerts, by result.",
            "result",
            l.alerts.iter().map(|(k, v)| (*k, *v)),
        );
    }
}

/// Per drop folder: cases by state, whether it is paused, held or missing, and its misplaced files.
fn render_folders(out: &mut Text, folders: &[FolderStatus]) {
    out.family(
        "gc_hotfolder_cases",
        "gauge",
        "Cases the journal knows, by drop folder and state.",
    );
    for f in folders {
        for state in [
            "settling",
            "ready",
            "uploading",
            "awaiting_import",
            "delivered",
            "quarantined",
        ] {
            let n = f.counts.get(state).copied().unwrap_or(0);
            out.sample(
                "gc_hotfolder_cases",
                &[("folder", &f.folder), ("state", state)],
                n as f64,
            );
        }
    }
    out.family(
        "gc_hotfolder_folder_paused",
        "gauge",
        "1 while a drop folder is paused (gc-hotfolder pause).",
    );
    for f in folders {
        out.sample(
            "gc_hotfolder_folder_paused",
            &[("folder", &f.folder)],
            if f.paused { 1.0 } else { 0.0 },
        );
    }

    out.family(
        "gc_hotfolder_folder_held",
        "gauge",
        "1 while the agent holds a drop folder's cases because its target or a socket is not on the platform (or could not be checked).",
    );
    for f in folders {
        out.sample(
            "gc_hotfolder_folder_held",
            &[("folder", &f.folder)],
            if f.held.is_some() { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "gc_hotfolder_folder_missing",
        "gauge",
        "1 while a drop folder does not exist or cannot be listed (an unmounted share?).",
    );
    for f in folders {
        out.sample(
            "gc_hotfolder_folder_missing",
            &[("folder", &f.folder)],
            if f.missing.is_some() { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "gc_hotfolder_misplaced_files",
        "gauge",
        "Files lying where a drop folder expects case folders: in no case, never delivered.",
    );
    for f in folders {
        out.sample(
            "gc_hotfolder_misplaced_files",
            &[("folder", &f.folder)],
            f.misplaced.len() as f64,
        );
    }
}

/// Prometheus text, built family by family.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn counter_family<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl Iterator<Item = (&'a str, u64)>,
    ) {
        self.family(name, "counter", help);
        for (k, v) in values {
            self.sample(name, &[(label, k)], v as f64);
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// What `/metrics` and `/status` read.
#[derive(Clone)]
pub struct Sources {
    pub journal: Arc<crate::journal::Journal>,
    /// The config in force; the agent sends a new one after a reload.
    pub config: tokio::sync::watch::Receiver<Arc<crate::config::Config>>,
    pub started: Instant,
}

/// The `/status` document: the same per-folder report as `gc-hotfolder status --json`, plus what only the
/// running agent knows.
#[derive(serde::Serialize)]
struct StatusDoc {
    version: &'static str,
    uptime_seconds: u64,
    agent: Live,
    folders: Vec<FolderStatus>,
}

/// Serve `/metrics` and `/status` on an already bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, sources: Sources) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/status", get(status_page))
        .with_state(sources);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the metrics server stopped: {e}");
    }
}

fn folders(s: &Sources) -> Result<Vec<FolderStatus>, String> {
    let config = s.config.borrow().clone();
    crate::status::folder_status(&config, &s.journal).map_err(|e| e.to_string())
}

async fn metrics_page(
    axum::extract::State(s): axum::extract::State<Sources>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let s2 = s.clone();
    match tokio::task::spawn_blocking(move || folders(&s2)).await {
        Ok(Ok(f)) => (
            [(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            global().render(&f, s.started.elapsed()),
        )
            .into_response(),
        Ok(Err(e)) => (http::StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status_page(
    axum::extract::State(s): axum::extract::State<Sources>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let s2 = s.clone();
    match tokio::task::spawn_blocking(move || folders(&s2)).await {
        Ok(Ok(folders)) => axum::Json(StatusDoc {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: s.started.elapsed().as_secs(),
            agent: global().live(),
            folders,
        })
        .into_response(),
        Ok(Err(e)) => (http::StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &str, paused: bool) -> FolderStatus {
        FolderStatus {
            folder: path.into(),
            target: "Archive a".into(),
            counts: [("delivered".to_owned(), 3), ("quarantined".to_owned(), 1)].into(),
            oldest_waiting: None,
            last_delivery: None,
            quarantined: vec![],
            notes: vec![],
            paused,
            target_paused: None,
            held: paused.then(|| ("2026-01-01T00:00:00Z".into(), "socket x".into())),
            missing: None,
            misplaced: vec![],
            post_action_failed: vec![],
        }
    }

    /// Checks the rules of the text format that a scraper enforces: every sample belongs to a family
    /// declared once with HELP and TYPE before it, names and labels are well formed, values parse.
    fn assert_valid_exposition(text: &str) {
        let mut declared: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(
                    declared.insert(name.into(), kind.into()).is_none(),
                    "TYPE twice: {line}"
                );
            } else {
                let (series, value) = line.rsplit_once(' ').expect(line);
                let name = series.split('{').next().unwrap();
                assert!(name_ok(name), "bad name in {line}");
                assert!(declared.contains_key(name), "undeclared family: {line}");
                assert!(helped.contains(name), "no HELP: {line}");
                assert!(
                    value.parse::<f64>().is_ok() || matches!(value, "NaN" | "+Inf" | "-Inf"),
                    "{line}"
                );
                if declared[name] == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {line}");
                }
                if let Some(labels) = series.strip_prefix(name)
                    && !labels.is_empty()
                {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                    // Every quote inside a value is escaped: unescaped quotes come in pairs.
                    let inner = &labels[1..labels.len() - 1];
                    let unescaped = inner.replace("\\\\", "").replace("\\\"", "");
                    assert_eq!(unescaped.matches('"').count() % 2, 0, "{line}");
                    assert!(!unescaped.contains('\n'));
                }
            }
        }
    }

    #[test]
    fn the_exposition_is_valid_and_carries_every_family() {
        let m = Metrics::default();
        m.uploaded(1000);
        m.uploaded(24);
        m.file_uploaded(1024, Duration::from_millis(500));
        m.request_retried("http_503");
        m.request_retried("http_503");
        m.request_retried("timeout");
        m.delivery_retried("unavailable");
        m.delivery_ended("delivered");
        m.scanned("overflow");
        m.alert("sent");
        m.set_live(Live {
            pending: 2,
            in_flight: 1,
            oldest_pending_seconds: 12.5,
            paused_targets: vec!["archive a".into()],
        });
        let text = m.render(
            &[folder("/srv/drop/\"odd\"\\name", true)],
            Duration::from_secs(7),
        );
        assert_valid_exposition(&text);
        for needle in [
            "gc_hotfolder_uploaded_bytes_total 1024\n",
            "gc_hotfolder_uploaded_files_total 1\n",
            "gc_hotfolder_upload_seconds_total 0.5\n",
            "gc_hotfolder_last_file_bytes_per_second 2048\n",
            "gc_hotfolder_request_retries_total{cause=\"http_503\"} 2\n",
            "gc_hotfolder_request_retries_total{cause=\"timeout\"} 1\n",
            "gc_hotfolder_delivery_retries_total{class=\"unavailable\"} 1\n",
            "gc_hotfolder_watch_scans_total{reason=\"overflow\"} 1\n",
            "gc_hotfolder_cases{folder=\"/srv/drop/\\\"odd\\\"\\\\name\",state=\"delivered\"} 3\n",
            "gc_hotfolder_cases{folder=\"/srv/drop/\\\"odd\\\"\\\\name\",state=\"settling\"} 0\n",
            "gc_hotfolder_folder_paused{folder=\"/srv/drop/\\\"odd\\\"\\\\name\"} 1\n",
            "gc_hotfolder_folder_held{folder=\"/srv/drop/\\\"odd\\\"\\\\name\"} 1\n",
            "gc_hotfolder_folder_missing{folder=\"/srv/drop/\\\"odd\\\"\\\\name\"} 0\n",
            "gc_hotfolder_cases_pending 2\n",
            "gc_hotfolder_oldest_pending_seconds 12.5\n",
            "gc_hotfolder_targets_paused 1\n",
            "gc_hotfolder_up_seconds 7\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn a_fresh_agent_exposes_zeroes_not_gaps() {
        let text = Metrics::default().render(&[], Duration::ZERO);
        assert_valid_exposition(&text);
        assert!(text.contains("gc_hotfolder_uploaded_bytes_total 0\n"));
        assert!(text.contains("# TYPE gc_hotfolder_request_retries_total counter\n"));
    }

    #[test]
    fn numbers_print_as_the_format_wants() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
