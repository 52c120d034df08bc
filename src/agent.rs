//! The daemon: hints from [`watch`](crate::watch) → readiness from [`settle`](crate::settle) → a plan from
//! [`rules`](crate::rules) → the [`journal`](crate::journal) → [`deliver`](crate::deliver) → a
//! [`receipt`](crate::receipt) and the post-action.
//!
//! One task owns the per-case settle state and decides; deliveries run as separate tasks, bounded, and
//! report back. A delivery holds an upload slot only while it prepares, uploads and sets its values; once
//! the platform imports them it waits without one (see [`crate::deliver::lanes`]), and all waiting cases
//! are looked at together by one [`Verifier`]. Every decision that must survive a crash is in the journal before it takes effect, so the
//! loop can be killed at any instant and restarted with nothing lost and nothing delivered twice.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::after::PostAction;
use crate::config::{AlertKind, Config, Folder, OnChange};
use crate::deliver::{
    AwaitingImport, Checkpoints, DeliverError, Delivered, EarlierUpload, ItemStart, Lanes, Privacy,
    Sent, Timings, UploadRecord,
};
use crate::journal::{CaseRecord, CaseState, Journal, JournalError, Planned, Step};
use crate::notify::{Alert, Notifier};
use crate::preflight::Verdict;
use crate::receipt::{CaseFacts, CaseKey, ItemRef, Receipt, TargetRef};
use crate::rules::{self, Manifest};
use crate::settle::{Decision, SettleRules, Snapshot, Tracker, Waiting};
use crate::watch::{self, Hint};
use gc_client::models::UserUpload;
use gc_client::uploads::ResumeFrom;
use gc_client::verify::VerifyTiming;
use gc_client::{Client, TargetKind, Verifier};
use gc_content::deidentify::UidMap;

/// Why the agent holds a drop folder's cases.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// Its target and sockets are being checked on the platform.
    Checking,
    /// The platform could not say yet (unreachable, token refused).
    Unknown(String),
    /// The target or a socket is not on the platform, or does not fit its rule.
    Unusable(String),
}

/// How the agent paces itself (from the config's `[agent]` section).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Full scans of every folder, catching whatever events missed.
    pub reconcile_every: Duration,
    /// How long in-flight deliveries may run on after a stop request before they are cut off (they resume
    /// from the journal on the next start).
    pub shutdown_grace: Duration,
    /// First wait after a failure that may pass (platform unavailable); doubles up to `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// How long a target stays paused after the platform refused the token.
    pub auth_pause: Duration,
    pub verify: VerifyTiming,
}

impl AgentOptions {
    pub fn from_config(config: &Config) -> AgentOptions {
        let a = &config.agent;
        AgentOptions {
            reconcile_every: a.reconcile,
            shutdown_grace: a.shutdown_grace,
            retry_first: a.retry_first,
            retry_max: a.retry_max,
            auth_pause: a.auth_pause,
            verify: VerifyTiming::default(),
        }
    }
}

/// What the agent shares with its delivery tasks.
struct Shared {
    config: Config,
    journal: Arc<Journal>,
    client: Client,
    receipts: PathBuf,
    options: AgentOptions,
    lanes: Lanes,
    /// Awaits the imports of every case whose values are set.
    verifier: Verifier,
    notifier: Notifier,
    /// Cancelled when the agent stops: a case waiting for the platform's import stops waiting at once
    /// (the journal has what it waits for; the next start waits on).
    stopping: CancellationToken,
}

impl Shared {
    /// Record that a case is quarantined, and alert the webhooks that want to know.
    fn quarantined(
        &self,
        folder: &Folder,
        id: i64,
        case: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        self.journal.quarantined(id, reason)?;
        self.notifier.send(Alert::about_case(
            AlertKind::Quarantined,
            folder,
            case,
            "quarantined",
            reason,
        ));
        Ok(())
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{file}: metrics.listen: cannot listen on {addr}: {source}")]
    Metrics {
        file: PathBuf,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The in-memory side of one case: only what is needed to decide readiness. Everything durable is in
/// the journal.
struct Slot {
    folder: usize,
    tracker: Tracker,
    /// A delivery task owns the case right now.
    in_flight: bool,
    /// Something happened while in flight: look again when it returns.
    dirty: bool,
    /// Do not try before this (agent clock), after a failure that may pass.
    not_before: Option<Duration>,
    failures: u32,
    /// Since when (agent clock) the case has been waiting to be delivered; `None` once it is delivered or
    /// quarantined.
    pending_since: Option<Duration>,
    /// The case is ready but its folder is paused or held, and the journal says so.
    held: bool,
    /// What the journal was last told about why the case still settles, so that `status` lists it
    /// with its reason while each check that finds the same reason writes nothing.
    noted: Option<String>,
    /// An operator asked for a retry while a delivery owned the case: if that delivery ends in a
    /// quarantine, the case goes back in line.
    retry_requested: bool,
}

/// How a delivery task ended.
enum Done {
    /// Delivered; its post-action has failed this many times in a row (0: done, or none to do).
    Delivered {
        post_action_failures: u32,
    },
    /// Nothing to upload: the content is what was delivered already.
    Unchanged,
    Quarantined,
    /// Try again after this long.
    Later(Duration),
    /// The target refused the token (the platform's words): pause it.
    AuthPaused(TargetKind, String, String),
    /// The case changed while it was being delivered: settle again.
    Changed,
}

impl Done {
    /// The name used in metrics.
    fn name(&self) -> &'static str {
        match self {
            Done::Delivered { .. } => "delivered",
            Done::Unchanged => "unchanged",
            Done::Quarantined => "quarantined",
            Done::Later(_) => "postponed",
            Done::AuthPaused(..) => "auth_failed",
            Done::Changed => "changed",
        }
    }
}

/// Run until `stop` resolves. Returns after in-flight deliveries reached a checkpoint (or the grace
/// period ran out, in which case they resume from the journal at the next start).
pub async fn run(
    config: Config,
    client: Client,
    options: AgentOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let journal = Arc::new(Journal::open(&config.server.state_dir)?);
    before_start(&config);
    // Bound before anything else happens, so a taken port is a startup error, not a silent gap.
    let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
    let metrics_server = serve_metrics(&config, &journal, config_rx, started).await?;
    let (mut loop_, mut inputs) = Loop::start(config, journal, client, options, started, config_tx);
    loop_.start_preflight();
    crate::service::ready(&status_line(&loop_.shared.journal));
    loop_.serve(&mut inputs, stop).await?;
    loop_.shut_down(inputs, metrics_server).await;
    Ok(())
}

/// What a start does before the loop: de-identified copies left by a crash go (every delivery makes its
/// own again, the same bytes), and folders that send DICOM as it is are named in the log.
fn before_start(config: &Config) {
    crate::deliver::remove_staging(&config.server.state_dir.join("staging"));
    for f in config.folders.iter().filter(|f| !f.deidentify) {
        tracing::warn!(
            folder = %f.path.display(),
            "deidentify = false: DICOM files of this folder are uploaded as they are, with patient names, IDs and dates: identifiable data will leave this machine"
        );
    }
}

/// The metrics and status endpoint, if the config asks for one; bound now, so that a taken port is an
/// error at start.
async fn serve_metrics(
    config: &Config,
    journal: &Arc<Journal>,
    config_rx: tokio::sync::watch::Receiver<Arc<Config>>,
    started: Instant,
) -> Result<Option<AbortOnDrop>, AgentError> {
    let Some(m) = &config.metrics else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(m.listen)
        .await
        .map_err(|source| AgentError::Metrics {
            file: config.file.clone(),
            addr: m.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(m.listen);
    tracing::info!(%addr, "serving /metrics and /status");
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "/status names cases (their folder names) to anyone who can reach this address");
    }
    let sources = crate::metrics::Sources {
        journal: journal.clone(),
        config: config_rx,
        started,
    };
    let server = tokio::spawn(crate::metrics::serve(listener, sources));
    Ok(Some(AbortOnDrop(server)))
}

/// What the loop listens to besides its own tasks and timers.
struct Inputs {
    hints: mpsc::UnboundedReceiver<Hint>,
    /// For watches made later (a reload, a folder that appears) and for requeued cases.
    hint_tx: mpsc::UnboundedSender<Hint>,
    verdicts: mpsc::UnboundedReceiver<(u64, PathBuf, Verdict)>,
    watches: watch::Watches,
    hangups: Option<tokio::signal::unix::Signal>,
}

/// How often the journal is read for requests of other processes (`pause`, `resume`, `retry`).
const REQUESTS_EVERY: Duration = Duration::from_secs(2);
/// How long queued alerts may take to go out when the agent stops.
const ALERT_GRACE: Duration = Duration::from_secs(5);

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn journal_paused(journal: &Journal) -> std::collections::BTreeSet<PathBuf> {
    journal.paused().unwrap_or_else(|e| {
        tracing::error!("cannot read the paused folders: {e}");
        Default::default()
    })
}

/// The one-line summary for systemd: cases by state.
fn status_line(journal: &Journal) -> String {
    match journal.counts() {
        Ok(c) => {
            let n = |k: &str| c.get(k).copied().unwrap_or(0);
            format!(
                "{} waiting, {} uploading, {} awaiting import, {} quarantined, {} delivered",
                n("settling") + n("ready"),
                n("uploading"),
                n("awaiting_import"),
                n("quarantined"),
                n("delivered")
            )
        }
        Err(e) => format!("journal unreadable: {e}"),
    }
}

async fn hangup(signals: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Loop {
    shared: Arc<Shared>,
    settle_rules: Vec<SettleRules>,
    started: Instant,
    slots: HashMap<PathBuf, Slot>,
    /// Rechecks due at an agent-clock time; stale entries are harmless (a check is idempotent).
    timers: BinaryHeap<Reverse<(Duration, PathBuf)>>,
    tasks: JoinSet<(PathBuf, Done)>,
    /// Targets whose token was refused, until an agent-clock time.
    paused: HashMap<(TargetKind, String), Duration>,
    /// Drop folders an operator paused (`gc-hotfolder pause`).
    paused_folders: std::collections::BTreeSet<PathBuf>,
    /// Drop folders whose target and sockets are not known to be on the platform (not checked yet, or
    /// missing there), and why: their cases wait.
    held: HashMap<PathBuf, Held>,
    /// Drop folders that could not be listed at the last scan (said once, not at every poll).
    missing: HashSet<PathBuf>,
    /// Files lying where case folders are expected (said once each, not at every look).
    misplaced: watch::MisplacedFiles,
    /// The task asking the platform about each folder's target and sockets, for the current config.
    preflight: Option<AbortOnDrop>,
    /// Counts configs; a verdict about an older one is ignored.
    generation: u64,
    preflight_tx: mpsc::UnboundedSender<(u64, PathBuf, Verdict)>,
    /// The webhook tasks.
    senders: Option<crate::notify::Senders>,
    /// Tells the metrics server about a reloaded config.
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
}

impl Loop {
    /// The loop's state for a config, with its watches started and the channels it listens to.
    fn start(
        config: Config,
        journal: Arc<Journal>,
        client: Client,
        options: AgentOptions,
        started: Instant,
        config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    ) -> (Loop, Inputs) {
        let settle_rules: Vec<SettleRules> = config.folders.iter().map(SettleRules::of).collect();
        let (notifier, senders) = Notifier::start(&config.notify, &journal);
        let shared = Arc::new(Shared {
            lanes: Lanes::new(&config.limits),
            verifier: Verifier::start(client.clone(), options.verify.clone()),
            receipts: config.server.state_dir.join("receipts"),
            config,
            journal,
            client,
            options,
            notifier,
            stopping: CancellationToken::new(),
        });
        if let Err(e) = shared.journal.clear_held() {
            tracing::error!("cannot clear the held folders of an earlier run: {e}");
        }
        let paused_folders = journal_paused(&shared.journal);
        for f in shared.config.folders.iter() {
            if paused_folders.contains(&f.path) {
                tracing::warn!(
                    folder = %f.path.display(),
                    "this drop folder is paused: its cases are watched but not delivered until `gc-hotfolder resume`"
                );
            }
        }
        let (preflight_tx, verdicts) = mpsc::unbounded_channel();
        let (hint_tx, hints) = mpsc::unbounded_channel();
        let watches = watch::start(
            &shared.config.folders,
            shared.options.reconcile_every,
            hint_tx.clone(),
        );
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!("cannot listen for SIGHUP, reloading is off: {e}"))
            .ok();
        let loop_ = Loop {
            shared,
            settle_rules,
            started,
            slots: HashMap::new(),
            timers: BinaryHeap::new(),
            tasks: JoinSet::new(),
            paused: HashMap::new(),
            paused_folders,
            held: HashMap::new(),
            missing: HashSet::new(),
            misplaced: watch::MisplacedFiles::default(),
            preflight: None,
            generation: 0,
            preflight_tx,
            senders: Some(senders),
            config_tx,
        };
        let inputs = Inputs {
            hints,
            hint_tx,
            verdicts,
            watches,
            hangups,
        };
        (loop_, inputs)
    }

    /// Take what comes (hints, finished deliveries, timers, verdicts, a reload, requests of other
    /// processes, the watchdog's beat) until `stop` resolves.
    async fn serve(
        &mut self,
        inputs: &mut Inputs,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let mut heartbeat = tokio::time::interval(
            crate::service::watchdog_interval().unwrap_or(Duration::from_secs(10)),
        );
        // Other processes (`pause`, `resume`, `retry`) leave requests in the journal; look for them often.
        let mut requests = tokio::time::interval(REQUESTS_EVERY);
        requests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = String::new();
        tokio::pin!(stop);
        loop {
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((at, _))| self.started + *at);
            tokio::select! {
                _ = &mut stop => return Ok(()),
                Some(hint) = inputs.hints.recv() => self.on_input_hint(hint, inputs)?,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok((case_dir, done)) => self.on_done(case_dir, done)?,
                    Err(e) => tracing::error!("a delivery task failed: {e}"),
                },
                _ = sleep_until(next_timer) => self.on_timers()?,
                Some((generation, folder, verdict)) = inputs.verdicts.recv() => {
                    self.on_verdict(generation, folder, verdict, &inputs.hint_tx)?
                }
                Some(()) = hangup(&mut inputs.hangups) => self.on_hangup(inputs),
                _ = requests.tick() => {
                    self.on_requests(&inputs.hint_tx);
                    crate::metrics::global().set_live(self.live());
                }
                _ = heartbeat.tick() => {
                    crate::service::watchdog();
                    let status = status_line(&self.shared.journal);
                    if status != last_status {
                        crate::service::status(&status);
                        last_status = status;
                    }
                }
            }
        }
    }

    /// A hint from the watches. A scan first renews the folder's watch if the folder came or went: a
    /// drop folder missing at start gets its events once it exists, one deleted and made again gets
    /// them back.
    fn on_input_hint(&mut self, hint: Hint, inputs: &mut Inputs) -> Result<(), JournalError> {
        if let Hint::Scan { folder, .. } = &hint
            && let Some(f) = self
                .shared
                .config
                .folders
                .iter()
                .find(|f| &f.path == folder)
        {
            let every = self.shared.options.reconcile_every;
            match inputs.watches.refresh(f, every, &inputs.hint_tx) {
                Some(true) => {
                    tracing::info!(folder = %folder.display(), "the drop folder appeared")
                }
                Some(false) => {
                    tracing::warn!(folder = %folder.display(), "the drop folder is gone; it is polled until it is back")
                }
                None => {}
            }
        }
        self.on_hint(hint)
    }

    /// SIGHUP: the config is read again; a good one replaces the watches and is checked on the platform.
    fn on_hangup(&mut self, inputs: &mut Inputs) {
        crate::service::reloading();
        if let Some(w) = self.reload(&inputs.hint_tx) {
            inputs.watches = w;
            self.start_preflight();
        }
        tracing::debug!(folders = inputs.watches.modes().len(), "watching");
        crate::service::ready(&status_line(&self.shared.journal));
    }

    /// No new cases from here; deliveries in flight get the grace period to reach a checkpoint, queued
    /// alerts a few seconds to go out.
    async fn shut_down(mut self, inputs: Inputs, metrics_server: Option<AbortOnDrop>) {
        crate::service::stopping();
        tracing::info!(
            in_flight = self.tasks.len(),
            "stopping: no new cases are taken"
        );
        self.shared.stopping.cancel();
        drop(inputs.watches);
        let grace = tokio::time::sleep(self.shared.options.shutdown_grace);
        tokio::pin!(grace);
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = &mut grace => {
                    tracing::warn!(in_flight = self.tasks.len(), "grace period over: cutting off deliveries; they resume at the next start");
                    self.tasks.abort_all();
                    break;
                }
                _ = self.tasks.join_next() => {}
            }
        }
        drop(metrics_server);
        let senders = self.senders.take();
        drop(self);
        if let Some(s) = senders {
            s.finish(ALERT_GRACE).await;
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests other processes left in the journal: paused and resumed folders, retried cases.
    fn on_requests(&mut self, hint_tx: &mpsc::UnboundedSender<Hint>) {
        match self.shared.journal.paused() {
            Ok(now_paused) => {
                for folder in self.paused_folders.difference(&now_paused) {
                    tracing::info!(folder = %folder.display(), "resumed");
                    for (_, slot) in self.slots.iter_mut().filter(|(p, _)| p.starts_with(folder)) {
                        slot.held = false;
                    }
                    let _ = hint_tx.send(Hint::Scan {
                        folder: folder.clone(),
                        why: watch::ScanReason::Reconcile,
                    });
                }
                for folder in now_paused.difference(&self.paused_folders) {
                    tracing::info!(folder = %folder.display(), "paused");
                }
                self.paused_folders = now_paused;
            }
            Err(e) => tracing::error!("cannot read the paused folders: {e}"),
        }
        match self.shared.journal.take_wakeups() {
            Ok(cases) => {
                for (folder, case) in cases {
                    if let Err(e) = self.on_retry(&folder, &case) {
                        tracing::error!(case = %rules::path_text(&case), "cannot take up the retry: {e}");
                    }
                    let case_dir = folder.join(&case);
                    let _ = hint_tx.send(Hint::Case { case_dir });
                }
            }
            Err(e) => tracing::error!("cannot read retry requests: {e}"),
        }
    }

    /// An operator's retry of a case: it starts afresh, with no back-off left over from earlier
    /// failures. A retry that came while the case was being delivered holds whatever that delivery ends
    /// with: a quarantine written after the retry (its receipt is written first, so the operator may
    /// have acted on it) is put back in line, at once or when the delivery returns.
    fn on_retry(&mut self, folder: &Path, case: &Path) -> Result<(), JournalError> {
        tracing::info!(case = %rules::path_text(case), "retry requested");
        if let Some(slot) = self.slots.get_mut(&folder.join(case)) {
            slot.not_before = None;
            slot.failures = 0;
            if slot.in_flight {
                slot.retry_requested = true;
                return Ok(());
            }
        }
        let journal = &self.shared.journal;
        match journal.get(folder, case)? {
            Some(rec) if rec.state == CaseState::Quarantined => {
                tracing::info!(case = %rec.case_text(), "quarantined while its retry was requested: trying it again");
                journal.requeue(rec.id)
            }
            _ => Ok(()),
        }
    }

    /// Ask the platform about every folder of the current config; until it answers, their cases wait.
    fn start_preflight(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        let folders = self.shared.config.folders.clone();
        for f in &folders {
            self.held.insert(f.path.clone(), Held::Checking);
        }
        self.held
            .retain(|p, _| folders.iter().any(|f| &f.path == p));
        let client = self.shared.client.clone();
        let tx = self.preflight_tx.clone();
        let (first, max) = (
            self.shared.options.retry_first,
            self.shared.options.retry_max,
        );
        self.preflight = Some(AbortOnDrop(tokio::spawn(async move {
            let mut pending = folders;
            let mut wait = first;
            loop {
                let mut again = Vec::new();
                for f in pending {
                    let verdict = crate::preflight::check_folder(&client, &f).await.verdict;
                    if verdict != Verdict::Usable {
                        again.push(f.clone());
                    }
                    if tx.send((generation, f.path.clone(), verdict)).is_err() {
                        return;
                    }
                }
                if again.is_empty() {
                    return;
                }
                // A folder naming what the platform lacks is asked about again too: the target may be
                // created there, and then its cases go without a restart.
                pending = again;
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(max);
            }
        })));
    }

    /// What the platform said about a folder: let its cases go, or hold them and say why (once).
    fn on_verdict(
        &mut self,
        generation: u64,
        path: PathBuf,
        verdict: Verdict,
        hint_tx: &mpsc::UnboundedSender<Hint>,
    ) -> Result<(), JournalError> {
        if generation != self.generation {
            return Ok(());
        }
        let shared = self.shared.clone();
        let Some(folder) = shared.config.folders.iter().find(|f| f.path == path) else {
            return Ok(());
        };
        let before = self.held.get(&path).cloned();
        let now = match verdict {
            Verdict::Usable => None,
            Verdict::Unknown(why) => Some(Held::Unknown(format!(
                "cannot check its {} {} and sockets on the platform yet: {why}",
                kind_name(folder.target),
                folder.target_slug
            ))),
            Verdict::Unusable(why) => Some(Held::Unusable(format!(
                "the platform does not have what folder[{}] of {} names: {why}",
                folder.index,
                shared.config.file.display()
            ))),
        };
        match &now {
            None => {
                self.held.remove(&path);
                shared.journal.set_held(&path, None)?;
                if matches!(before, Some(Held::Unusable(_) | Held::Unknown(_))) {
                    tracing::info!(folder = %path.display(), "the platform has this folder's target and sockets now: delivering its cases");
                } else {
                    tracing::debug!(folder = %path.display(), "target and sockets found on the platform");
                }
                for (_, slot) in self.slots.iter_mut().filter(|(p, _)| p.starts_with(&path)) {
                    slot.held = false;
                }
                let _ = hint_tx.send(Hint::Scan {
                    folder: path.clone(),
                    why: watch::ScanReason::Reconcile,
                });
            }
            Some(held) => {
                let (Held::Unknown(why) | Held::Unusable(why)) = held else {
                    return Ok(());
                };
                shared.journal.set_held(&path, Some(why))?;
                if before.as_ref() != Some(held) {
                    match held {
                        Held::Unusable(_) => {
                            tracing::error!(folder = %path.display(), "{why}; its cases are held until the config is fixed and reloaded");
                            shared.notifier.send(Alert::about_target(
                                AlertKind::FolderHeld,
                                folder,
                                "held",
                                why,
                            ));
                        }
                        _ => tracing::warn!(folder = %path.display(), "{why}; its cases wait"),
                    }
                }
                self.held.insert(path, held.clone());
            }
        }
        Ok(())
    }

    /// What the metrics report about cases in memory.
    fn live(&self) -> crate::metrics::Live {
        let now = self.now();
        let pending: Vec<Duration> = self
            .slots
            .values()
            .filter_map(|s| s.pending_since)
            .collect();
        crate::metrics::Live {
            pending: pending.len() as u64,
            in_flight: self.tasks.len() as u64,
            oldest_pending_seconds: pending
                .iter()
                .map(|since| now.saturating_sub(*since).as_secs_f64())
                .fold(0.0, f64::max),
            paused_targets: self
                .paused
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|((kind, slug), _)| format!("{} {slug}", kind_name(*kind)))
                .collect(),
        }
    }

    fn schedule(&mut self, at: Duration, case_dir: &Path) {
        self.timers.push(Reverse((at, case_dir.to_owned())));
    }

    /// The current config's index of the drop folder a path is in.
    fn folder_of(&self, path: &Path) -> Option<usize> {
        self.shared
            .config
            .folders
            .iter()
            .position(|f| path.starts_with(&f.path))
    }

    fn on_hint(&mut self, hint: Hint) -> Result<(), JournalError> {
        match hint {
            Hint::Case { case_dir } => match self.folder_of(&case_dir) {
                Some(folder) => self.check(folder, &case_dir),
                None => Ok(()), // from a folder a reload removed
            },
            Hint::Scan { folder: path, why } => {
                let Some(folder) = self
                    .shared
                    .config
                    .folders
                    .iter()
                    .position(|f| f.path == path)
                else {
                    return Ok(());
                };
                let shared = self.shared.clone();
                let f = &shared.config.folders[folder];
                let t0 = Instant::now();
                crate::metrics::global().scanned(why.name());
                match watch::list(f) {
                    Ok(watch::Listing { cases, misplaced }) => {
                        self.misplaced.scanned(f, &misplaced);
                        if self.missing.remove(&f.path) {
                            tracing::info!(folder = %f.path.display(), "the drop folder is back");
                        }
                        let n = cases.len();
                        let present: HashSet<PathBuf> = cases.iter().cloned().collect();
                        for case_dir in cases {
                            self.check(folder, &case_dir)?;
                        }
                        // Cases whose folder vanished without an event.
                        let gone: Vec<PathBuf> = self
                            .slots
                            .iter()
                            .filter(|(p, s)| {
                                s.folder == folder && !s.in_flight && !present.contains(*p)
                            })
                            .map(|(p, _)| p.clone())
                            .collect();
                        for case_dir in gone {
                            self.check(folder, &case_dir)?;
                        }
                        let ms = t0.elapsed().as_millis() as u64;
                        if why == watch::ScanReason::Startup {
                            tracing::info!(folder = %f.path.display(), cases = n, ms, "startup scan done");
                        } else {
                            tracing::debug!(folder = %f.path.display(), ?why, cases = n, ms, "scan done");
                        }
                        Ok(())
                    }
                    Err(e) => {
                        if self.missing.insert(f.path.clone()) {
                            let why = crate::watch::folder_missing(&f.path)
                                .unwrap_or_else(|| format!("cannot be listed: {e}"));
                            tracing::error!(
                                folder = %f.path.display(),
                                "the drop folder {why}; nothing is delivered from it until it is back"
                            );
                            shared.notifier.send(Alert::about_target(
                                AlertKind::FolderMissing,
                                f,
                                "missing",
                                &format!("the drop folder {why}"),
                            ));
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// SIGHUP: read the config file again. An invalid config is rejected with its errors and the running
    /// one stays; a valid one replaces it, with new watches (returned).
    fn reload(&mut self, hint_tx: &mpsc::UnboundedSender<Hint>) -> Option<watch::Watches> {
        let file = self.shared.config.file.clone();
        let new = match Config::load(&file) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload rejected, the running config stays: {e}");
                return None;
            }
        };
        let old = &self.shared.config.server;
        if new.server.state_dir != old.state_dir {
            tracing::error!(
                "reload rejected: state_dir cannot change while running; restart the service"
            );
            return None;
        }
        let client = if new.server == *old {
            self.shared.client.clone()
        } else {
            match new.client(crate::metrics::client_observer()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("reload rejected, the running config stays: {e}");
                    return None;
                }
            }
        };
        let watches = watch::start(&new.folders, new.agent.reconcile, hint_tx.clone());
        tracing::info!(file = %file.display(), folders = new.folders.len(), "config reloaded");
        self.reconfigure(new, client);
        Some(watches)
    }

    /// Take a new config: folders added or removed take effect now; in-flight deliveries finish under
    /// the config they started with.
    fn reconfigure(&mut self, config: Config, client: Client) {
        if config.metrics != self.shared.config.metrics {
            tracing::warn!(
                "the [metrics] section changed; it takes effect at the next restart of the service"
            );
        }
        let notifier = if config.notify == self.shared.config.notify {
            self.shared.notifier.clone()
        } else {
            // The old tasks stop at once (their queues are in the journal), so that no webhook is ever
            // served by two tasks.
            if let Some(old) = self.senders.take() {
                old.abort();
            }
            let (notifier, senders) = Notifier::start(&config.notify, &self.shared.journal);
            self.senders = Some(senders);
            notifier
        };
        let _ = self.config_tx.send(Arc::new(config.clone()));
        let options = AgentOptions::from_config(&config);
        // Deliveries under way keep the lanes and the verifier they started with.
        let shared = Arc::new(Shared {
            lanes: Lanes::new(&config.limits),
            verifier: Verifier::start(client.clone(), options.verify.clone()),
            journal: self.shared.journal.clone(),
            receipts: config.server.state_dir.join("receipts"),
            options,
            client,
            notifier,
            config,
            stopping: self.shared.stopping.clone(),
        });
        self.settle_rules = shared.config.folders.iter().map(SettleRules::of).collect();
        self.shared = shared;
        let folder_of = |p: &Path| {
            self.shared
                .config
                .folders
                .iter()
                .position(|f| p.starts_with(&f.path))
        };
        let remap: Vec<(PathBuf, Option<usize>)> = self
            .slots
            .keys()
            .map(|p| (p.clone(), folder_of(p)))
            .collect();
        for (path, folder) in remap {
            match folder {
                Some(i) => {
                    if let Some(slot) = self.slots.get_mut(&path) {
                        slot.folder = i;
                    }
                }
                None => {
                    self.slots.remove(&path);
                }
            }
        }
    }

    fn on_timers(&mut self) -> Result<(), JournalError> {
        let now = self.now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, case_dir))) = self.timers.pop() else {
                break;
            };
            if let Some(folder) = self.slots.get(&case_dir).map(|s| s.folder) {
                self.check(folder, &case_dir)?;
            }
        }
        Ok(())
    }

    /// Look at one case: whether it may be looked at now, what the journal already says of it, and what
    /// its snapshot says about readiness; each of these a step of its own below.
    fn check(&mut self, folder_idx: usize, case_dir: &Path) -> Result<(), JournalError> {
        let now = self.now();
        let shared = self.shared.clone();
        let folder = &shared.config.folders[folder_idx];
        let rel = case_rel(folder, case_dir);
        let seen = Seen {
            folder_idx,
            folder,
            case_dir,
            case: rules::path_text(&rel),
            rel,
        };
        if !self.may_look(&seen, now) {
            return Ok(());
        }
        let snapshot = match crate::settle::snapshot(case_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.vanished(&shared, &seen);
            }
            // A file where a case folder belongs: no case, now or later (a scan reports it again only
            // if it comes back).
            Err(_) if self.misplaced.is_misplaced(folder, case_dir) => {
                self.slots.remove(case_dir);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(case = %seen.case, "cannot read the case folder: {e}");
                self.schedule(now + folder.quiet, case_dir);
                return Ok(());
            }
        };
        // Only a read here: a delivered or quarantined case that is merely seen again needs no write, so
        // scanning thousands of folders costs none; a new case is recorded once it is found settling.
        let known = shared.journal.get(&folder.path, &seen.rel)?;
        let fp = snapshot.fingerprint();
        if self.after_outcome(&shared, &seen, known.as_ref(), &fp)? == Go::Stop {
            return Ok(());
        }
        let Some(slot) = self.slots.get_mut(case_dir) else {
            return Ok(());
        };
        slot.pending_since.get_or_insert(now);
        let decision = slot
            .tracker
            .observe(now, &snapshot, &self.settle_rules[folder_idx]);
        match decision {
            Decision::Ready
                if self.paused_folders.contains(&folder.path)
                    || self.held.contains_key(&folder.path) =>
            {
                self.hold(&shared, &seen)
            }
            Decision::Ready => self.start_delivery(&shared, &seen, snapshot, fp, now),
            Decision::Wait { recheck_at, why } => {
                self.schedule(recheck_at, case_dir);
                let first_delivery = known.as_ref().is_none_or(|r| {
                    !matches!(r.state, CaseState::Delivered | CaseState::Quarantined)
                });
                match first_delivery {
                    true => self.note_settling(&shared, &seen, &why),
                    false => Ok(()),
                }
            }
            Decision::Stuck {
                why,
                waited,
                first_report,
            } => {
                // From here on events and scans bring the news; no timer polls a stuck case.
                match first_report {
                    true => report_stuck(&shared, &seen, &why, waited),
                    false => Ok(()),
                }
            }
        }
    }

    /// Whether the case may be looked at now: not while a delivery owns it (it is looked at again when that
    /// returns), not before a back-off ends (a timer is set for then already). Makes the case's slot.
    fn may_look(&mut self, seen: &Seen, now: Duration) -> bool {
        let slot = self
            .slots
            .entry(seen.case_dir.to_owned())
            .or_insert_with(|| Slot {
                folder: seen.folder_idx,
                tracker: Tracker::new(now),
                in_flight: false,
                dirty: false,
                not_before: None,
                failures: 0,
                pending_since: None,
                held: false,
                noted: None,
                retry_requested: false,
            });
        if slot.in_flight {
            slot.dirty = true;
            return false;
        }
        // Whoever set `not_before` set a timer for then: another one here would only multiply the checks
        // of a case that waits long (a post-action failing for days, seen again at every scan).
        slot.not_before.is_none_or(|nb| nb <= now)
    }

    /// The case folder is gone: forgotten if nothing was sent yet, quarantined with a receipt if it went
    /// while being delivered, left alone once delivered or quarantined.
    fn vanished(&mut self, shared: &Shared, seen: &Seen) -> Result<(), JournalError> {
        self.slots.remove(seen.case_dir);
        match shared.journal.get(&seen.folder.path, &seen.rel)? {
            Some(rec)
                if rec.attempts == 0
                    && matches!(rec.state, CaseState::Settling | CaseState::Ready) =>
            {
                tracing::info!(case = %seen.case, "the case folder disappeared before it was delivered");
                shared.journal.forget(rec.id)
            }
            Some(rec) if !matches!(rec.state, CaseState::Delivered | CaseState::Quarantined) => {
                removed_while_delivering(shared, seen, &rec)
            }
            _ => Ok(()),
        }
    }

    /// What an earlier outcome means for the case as it is now: a quarantined case is tried again only
    /// once it changed; a delivered one is left (its post-action applied) unless it changed, and then
    /// `on_change` decides.
    fn after_outcome(
        &mut self,
        shared: &Shared,
        seen: &Seen,
        known: Option<&CaseRecord>,
        fp: &str,
    ) -> Result<Go, JournalError> {
        let state = known.map_or(CaseState::Settling, |r| r.state.clone());
        let recorded_fp = known.and_then(|r| r.fingerprint.as_deref());
        let id = known.map(|r| r.id).unwrap_or_default();
        match state {
            CaseState::Quarantined if recorded_fp == Some(fp) || recorded_fp.is_none() => {
                self.not_pending(seen.case_dir);
                Ok(Go::Stop)
            }
            CaseState::Quarantined => {
                tracing::info!(case = %seen.case, "a quarantined case changed: trying it again");
                shared.journal.requeue(id)?;
                Ok(Go::On)
            }
            CaseState::Delivered if recorded_fp == Some(fp) => {
                self.not_pending(seen.case_dir);
                let failures = post_action(shared, seen.folder, seen.case_dir, &seen.rel, id)?;
                if failures > 0 {
                    self.retry_post_action(seen.case_dir, failures);
                }
                Ok(Go::Stop)
            }
            CaseState::Delivered => changed_after_delivery(shared, seen, id, fp),
            _ => Ok(Go::On),
        }
    }

    fn not_pending(&mut self, case_dir: &Path) {
        if let Some(slot) = self.slots.get_mut(case_dir) {
            slot.pending_since = None;
        }
    }

    /// A delivered case whose post-action failed `failures` times in a row: looked at again after a
    /// back-off (sooner on `retry`, and at the next start).
    fn retry_post_action(&mut self, case_dir: &Path, failures: u32) {
        let at = self.now() + backoff(&self.shared.options, i64::from(failures));
        if let Some(slot) = self.slots.get_mut(case_dir) {
            slot.not_before = Some(at);
        }
        self.schedule(at, case_dir);
    }

    /// A ready case of a paused or held folder: said once, in the log and the journal, then kept.
    fn hold(&mut self, shared: &Shared, seen: &Seen) -> Result<(), JournalError> {
        let Some(slot) = self.slots.get_mut(seen.case_dir) else {
            return Ok(());
        };
        if slot.held {
            return Ok(());
        }
        slot.held = true;
        let why = match self.held.get(&seen.folder.path) {
            Some(Held::Unusable(why) | Held::Unknown(why)) => format!("held: {why}"),
            Some(Held::Checking) => {
                "held until its target and sockets are checked on the platform".into()
            }
            None => "held while its folder is paused (`gc-hotfolder resume` delivers it)".into(),
        };
        tracing::info!(case = %seen.case, "ready, {why}");
        let rec = shared.journal.discover(&seen.folder.path, &seen.rel)?;
        shared.journal.note(rec.id, &format!("ready, {why}"))
    }

    /// A case that still settles, in the journal with why: `status` and the metrics know it from its
    /// first sight, not only once it is ready. Written only when the reason changes.
    fn note_settling(
        &mut self,
        shared: &Shared,
        seen: &Seen,
        why: &Waiting,
    ) -> Result<(), JournalError> {
        let Some(slot) = self.slots.get_mut(seen.case_dir) else {
            return Ok(());
        };
        let note = format!("settling: {}", settling_reason(why, seen.folder));
        if slot.noted.as_deref() == Some(note.as_str()) {
            return Ok(());
        }
        let rec = shared.journal.discover(&seen.folder.path, &seen.rel)?;
        shared.journal.note(rec.id, &note)?;
        slot.noted = Some(note);
        Ok(())
    }

    /// A ready case: delivered by a task of its own, unless its target is paused (looked at again then).
    fn start_delivery(
        &mut self,
        shared: &Arc<Shared>,
        seen: &Seen,
        snapshot: Snapshot,
        fp: String,
        now: Duration,
    ) -> Result<(), JournalError> {
        let key = (seen.folder.target, seen.folder.target_slug.clone());
        if let Some(until) = self.paused.get(&key).copied().filter(|u| *u > now) {
            self.schedule(until, seen.case_dir);
            return Ok(());
        }
        tracing::info!(case = %seen.case, "ready");
        if let Some(slot) = self.slots.get_mut(seen.case_dir) {
            slot.held = false;
        }
        let rec = shared.journal.discover(&seen.folder.path, &seen.rel)?;
        let Some(slot) = self.slots.get_mut(seen.case_dir) else {
            return Ok(());
        };
        slot.in_flight = true;
        slot.dirty = false;
        let task = Delivery {
            shared: shared.clone(),
            folder: seen.folder_idx,
            case_dir: seen.case_dir.to_owned(),
            case: seen.case.clone(),
            rel: seen.rel.clone(),
            rec,
            snapshot,
            fp,
            settle: now.saturating_sub(slot.tracker.first_seen()),
        };
        self.tasks.spawn(task.run());
        Ok(())
    }

    fn on_done(&mut self, case_dir: PathBuf, done: Done) -> Result<(), JournalError> {
        let now = self.now();
        let Some(slot) = self.slots.get_mut(&case_dir) else {
            return Ok(());
        };
        slot.in_flight = false;
        let folder = slot.folder;
        let dirty = std::mem::take(&mut slot.dirty);
        let retried = std::mem::take(&mut slot.retry_requested);
        crate::metrics::global().delivery_ended(done.name());
        match done {
            Done::Delivered {
                post_action_failures: 0,
            }
            | Done::Unchanged
            | Done::Quarantined => {
                slot.failures = 0;
                slot.not_before = None;
                slot.pending_since = None;
            }
            Done::Delivered {
                post_action_failures: n,
            } => {
                slot.failures = 0;
                slot.pending_since = None;
                let at = now + backoff(&self.shared.options, i64::from(n));
                slot.not_before = Some(at);
                self.schedule(at, &case_dir);
            }
            Done::Later(wait) => {
                slot.failures += 1;
                slot.not_before = Some(now + wait);
                self.schedule(now + wait, &case_dir);
            }
            Done::AuthPaused(kind, slug, why) => {
                let until = now + self.shared.options.auth_pause;
                let already = self
                    .paused
                    .get(&(kind, slug.clone()))
                    .is_some_and(|u| *u > now);
                let until_unix =
                    crate::journal::unix_now() + self.shared.options.auth_pause.as_secs() as i64;
                if let Err(e) = self
                    .shared
                    .journal
                    .target_paused(kind, &slug, until_unix, &why)
                {
                    tracing::error!("cannot record the paused target: {e}");
                }
                if let Some(f) = self.shared.config.folders.get(folder).filter(|_| !already) {
                    self.shared.notifier.send(Alert::about_target(
                        AlertKind::AuthFailed,
                        f,
                        "paused",
                        &why,
                    ));
                }
                self.paused.insert((kind, slug), until);
                slot.not_before = Some(until);
                self.schedule(until, &case_dir);
            }
            Done::Changed => {
                slot.tracker = Tracker::new(now);
                self.schedule(now, &case_dir);
            }
        }
        if retried && let Some(f) = self.shared.config.folders.get(folder) {
            let (drop_folder, case) = (f.path.clone(), case_rel(f, &case_dir));
            self.on_retry(&drop_folder, &case)?;
        }
        if dirty || retried {
            self.check(folder, &case_dir)?;
        }
        Ok(())
    }
}

/// A case the loop looks at: its folder, where it is and what it is called.
struct Seen<'a> {
    folder_idx: usize,
    folder: &'a Folder,
    case_dir: &'a Path,
    /// The case's path inside its drop folder.
    rel: PathBuf,
    /// `rel` as text, for people.
    case: String,
}

/// Whether looking at a case goes on to its readiness.
#[derive(Debug, PartialEq, Eq)]
enum Go {
    Stop,
    On,
}

/// A delivered case whose files changed since: `on_change` says whether that is a new delivery into the
/// same item, nothing, or a quarantine.
fn changed_after_delivery(
    shared: &Shared,
    seen: &Seen,
    id: i64,
    fp: &str,
) -> Result<Go, JournalError> {
    match seen.folder.on_change {
        OnChange::Update => Ok(Go::On),
        OnChange::Ignore => {
            tracing::info!(case = %seen.case, "files changed after delivery; ignored (on_change = \"ignore\")");
            shared.journal.set_fingerprint(id, fp)?;
            Ok(Go::Stop)
        }
        OnChange::Quarantine => {
            let reason = "files changed after the case was delivered (on_change = \"quarantine\")";
            shared.journal.set_fingerprint(id, fp)?;
            shared.quarantined(seen.folder, id, &seen.case, reason)?;
            tracing::warn!(case = %seen.case, "{reason}");
            Ok(Go::Stop)
        }
    }
}

/// A case folder removed while a delivery was under way: a receipt says so and the case is quarantined.
/// The item (if any) stays recorded, so the same case dropped again fills that item instead of a new one.
fn removed_while_delivering(
    shared: &Shared,
    seen: &Seen,
    rec: &CaseRecord,
) -> Result<(), JournalError> {
    let folder = seen.folder;
    let reason = format!(
        "the case folder was removed while it was being delivered. {} Drop it again to deliver it",
        left_by_journal(rec, |pk| item_url(&shared.client, folder, pk)),
    );
    tracing::warn!(case = %seen.case, "{reason}");
    let item = rec.item_pk.as_ref().map(|pk| ItemRef {
        api_url: item_url(&shared.client, folder, pk),
        pk: pk.clone(),
    });
    let facts = CaseFacts {
        case_dir: seen.case_dir,
        plan: None,
        manifest: None,
        target: TargetRef::named(folder.target, &folder.target_slug),
        case: seen.case.clone(),
        skipped: vec![],
        readiness: readiness(folder),
        attempts: rec.attempts as u32,
        revision: rec.revision as u32,
        started: (crate::clock::now_rfc3339(), Instant::now()),
        // No plan: no files to say anything about.
        earlier: &[],
        on_item: &[],
    };
    let key = CaseKey {
        folder: &folder.path,
        case: &seen.rel,
    };
    let receipt = Receipt::quarantined(facts, reason.clone(), item);
    if let Err(e) = crate::receipt::write(&shared.receipts, key, &receipt) {
        tracing::error!(case = %seen.case, "cannot write the receipt: {e}");
    }
    shared.quarantined(folder, rec.id, &seen.case, &reason)
}

/// A case still not ready after `max_wait`: said once, in the log, the journal and an alert.
fn report_stuck(
    shared: &Shared,
    seen: &Seen,
    why: &Waiting,
    waited: Duration,
) -> Result<(), JournalError> {
    let note = format!(
        "still not ready after {}: {}",
        humantime::format_duration(waited),
        describe(why)
    );
    tracing::warn!(case = %seen.case, "{note}");
    let rec = shared.journal.discover(&seen.folder.path, &seen.rel)?;
    shared.journal.note(rec.id, &note)?;
    shared.notifier.send(Alert::about_case(
        AlertKind::Stuck,
        seen.folder,
        &seen.case,
        "settling",
        &note,
    ));
    Ok(())
}

/// The post-action of a delivered case, applied: how often it has failed in a row (0 when done or not
/// due). Its first failure is alerted.
fn post_action(
    shared: &Shared,
    folder: &Folder,
    case_dir: &Path,
    case: &Path,
    id: i64,
) -> Result<u32, JournalError> {
    let c = crate::after::Delivered {
        folder,
        case_dir,
        case,
        id,
    };
    match crate::after::apply(&c, &shared.journal, &shared.receipts)? {
        PostAction::Failed { failures, reason } => {
            if failures == 1 {
                shared.notifier.send(Alert::about_case(
                    AlertKind::PostActionFailed,
                    folder,
                    &rules::path_text(case),
                    "delivered",
                    &reason,
                ));
            }
            Ok(failures)
        }
        PostAction::Nothing | PostAction::Done => Ok(0),
    }
}

/// Why a case still settles, for `status`: what it waits for, and what ends the wait.
fn settling_reason(why: &Waiting, folder: &Folder) -> String {
    let quiet = humantime::format_duration(folder.quiet);
    match why {
        Waiting::Changing => format!("waiting until its files have not changed for {quiet}"),
        Waiting::TempFiles(_) => format!(
            "{}; it is delivered {quiet} after they are gone",
            describe(why)
        ),
        Waiting::NoMarker => match &folder.marker {
            Some(m) => format!("waiting for its completion marker {m}"),
            None => describe(why),
        },
        Waiting::Empty => format!("{}; waiting for files", describe(why)),
    }
}

fn describe(why: &Waiting) -> String {
    match why {
        Waiting::Changing => "its files keep changing".into(),
        Waiting::TempFiles(files) => format!(
            "temporary files remain: {}",
            files
                .iter()
                .take(5)
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Waiting::NoMarker => "its completion marker is missing".into(),
        Waiting::Empty => "it holds no files".into(),
    }
}

/// What an interrupted delivery left on the platform, as far as the journal knows it (without asking the
/// platform): exact for the steps before the PATCH, a warning from there on.
fn left_by_journal(rec: &CaseRecord, url_of: impl Fn(&str) -> String) -> String {
    let step = match rec.state {
        CaseState::Uploading { step } => Some(step),
        _ => None,
    };
    match (&rec.item_pk, &rec.create_sent, step) {
        (None, None, _) => "Nothing was created on the platform.".into(),
        (None, Some(title), _) => format!(
            "A request to create the item \"{title}\" may have reached the platform without an answer; an \
             empty item of that title would be this case's, and is taken up when the case is dropped again."
        ),
        (Some(pk), _, Some(Step::Patching | Step::Verifying)) => format!(
            "Its values were sent to the item {}, which may hold some or all of them.",
            url_of(pk)
        ),
        (Some(pk), _, _) if rec.revision == 0 => format!(
            "The item {} was created for it and holds no values: none were sent.",
            url_of(pk)
        ),
        (Some(pk), _, _) => format!(
            "The item {} keeps the values of its delivery number {}; none of this update were sent.",
            url_of(pk),
            rec.revision
        ),
    }
}

/// The case folder relative to its drop folder: the journal's and the receipts' key, byte for byte.
fn case_rel(folder: &Folder, case_dir: &Path) -> PathBuf {
    case_dir
        .strip_prefix(&folder.path)
        .unwrap_or(case_dir)
        .to_owned()
}

/// One delivery attempt of one case, as a task.
struct Delivery {
    shared: Arc<Shared>,
    folder: usize,
    case_dir: PathBuf,
    /// The case as text, for logs and receipts.
    case: String,
    /// The case folder relative to the drop folder, byte for byte.
    rel: PathBuf,
    rec: CaseRecord,
    snapshot: Snapshot,
    fp: String,
    /// How long the case took to settle.
    settle: Duration,
}

impl Delivery {
    async fn run(self) -> (PathBuf, Done) {
        let case_dir = self.case_dir.clone();
        let done = match self.attempt().await {
            Ok(done) => done,
            Err(e) => {
                // The journal could not record a step: stop this attempt; it resumes later from what
                // was recorded.
                tracing::error!(case = %case_dir.display(), "{e}");
                Done::Later(Duration::from_secs(60))
            }
        };
        (case_dir, done)
    }

    /// The facts of this attempt's receipt.
    fn facts<'a>(
        &'a self,
        plan: Option<&'a rules::Plan>,
        manifest: Option<&'a Manifest>,
        attempts: i64,
        revision: i64,
        begun: &'a Begun,
    ) -> CaseFacts<'a> {
        let folder = &self.shared.config.folders[self.folder];
        CaseFacts {
            case_dir: &self.case_dir,
            plan,
            manifest,
            target: TargetRef::named(folder.target, &folder.target_slug),
            case: self.case.clone(),
            skipped: self.snapshot.skipped_lines(),
            readiness: readiness(folder),
            attempts: attempts as u32,
            revision: revision as u32,
            started: begun.at.clone(),
            earlier: &begun.earlier,
            on_item: &begun.on_item,
        }
    }

    /// Plan and hash the case: its plan and manifest, or how the attempt ended already.
    async fn planned(
        &self,
        started: &Begun,
        timings: Timings,
    ) -> Result<Result<(rules::Plan, Manifest), Done>, JournalError> {
        let sh = &self.shared;
        let folder = &sh.config.folders[self.folder];
        let (attempts, revision) = (self.rec.attempts, self.rec.revision);
        let on_item: Vec<String> = started.on_item.iter().map(|s| s.slug.clone()).collect();
        let files = self.snapshot.case_files();
        let plan = match rules::plan_update(folder, &self.case_dir, &files, &on_item) {
            Ok(p) => p,
            Err(e) => {
                let facts = self.facts(None, None, attempts, revision, started);
                return self
                    .quarantine(facts, e.to_string(), None, timings)
                    .map(Err);
            }
        };
        let hashed = {
            let (dir, plan) = (self.case_dir.clone(), plan.clone());
            tokio::task::spawn_blocking(move || rules::hash_files(&dir, &plan)).await
        };
        let manifest = match hashed {
            Ok(Ok(h)) => Manifest::new(&plan, &h),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(Done::Changed));
            }
            Ok(Err(e)) => {
                let reason = format!("cannot read a file of the case: {e}");
                let facts = self.facts(Some(&plan), None, attempts, revision, started);
                return self.quarantine(facts, reason, None, timings).map(Err);
            }
            Err(e) => {
                tracing::error!("hashing failed: {e}");
                return Ok(Err(Done::Later(sh.options.retry_first)));
            }
        };
        // Hashing took time: the case must not have changed meanwhile.
        if crate::settle::snapshot(&self.case_dir)
            .map(|s| s.fingerprint())
            .ok()
            .as_deref()
            != Some(&self.fp)
        {
            return Ok(Err(Done::Changed));
        }
        Ok(Ok((plan, manifest)))
    }

    async fn attempt(self) -> Result<Done, JournalError> {
        let queued = Instant::now();
        let sh = self.shared.clone();
        let _place = sh.lanes.case().await;
        let slot = sh.lanes.upload().await;
        let folder = &sh.config.folders[self.folder];
        let mut timings = Timings {
            settle: self.settle.as_secs_f64(),
            queued: queued.elapsed().as_secs_f64(),
            ..Timings::default()
        };
        let started = Begun {
            at: (crate::clock::now_rfc3339(), Instant::now()),
            earlier: crate::receipt::earlier_sent(
                &sh.journal,
                &sh.receipts,
                &folder.target_slug,
                self.key(),
                &self.rec,
            )?,
            on_item: crate::receipt::on_item(
                &sh.receipts,
                &folder.target_slug,
                self.key(),
                &self.rec,
            ),
        };
        let (plan, manifest) = match self.planned(&started, timings).await? {
            Ok(planned) => planned,
            Err(done) => return Ok(done),
        };
        if self.rec.delivered_hash.as_deref() == Some(&manifest.hash) {
            // Same content as delivered (e.g. touched, or copied again): never upload it twice.
            sh.journal.set_fingerprint(self.rec.id, &self.fp)?;
            if self.rec.state != CaseState::Delivered {
                sh.journal.delivered(self.rec.id, &manifest)?;
            }
            tracing::info!(case = %self.case, "unchanged content: already delivered");
            return Ok(Done::Unchanged);
        }
        timings.prechecks = started.at.1.elapsed().as_secs_f64();
        let _records = sh
            .lanes
            .records(crate::deliver::bundle::uploads(&plan))
            .await;
        tracing::info!(case = %self.case, files = manifest.entries.len(), "delivering");
        let case = CaseRun {
            client: &sh.client,
            journal: &sh.journal,
            folder,
            state_dir: &sh.config.server.state_dir,
            rec: &self.rec,
            case_dir: &self.case_dir,
            plan: &plan,
            manifest: &manifest,
            fingerprint: &self.fp,
            verify: &sh.options.verify,
            progress: Progress::default(),
        };
        let sent = send_recorded(&case, &mut timings).await?;
        // Waiting for the platform's import is not work: the next case may upload meanwhile.
        drop(slot);
        let result = match sent {
            Ok(sent) => tokio::select! {
                r = verified(&case, &sh.verifier, sent, &mut timings) => r,
                // The journal has what the case waits for: the next start waits on.
                () = sh.stopping.cancelled() => return Ok(Done::Later(sh.options.retry_first)),
            },
            Err(e) => Err(e),
        };
        self.outcome(result, &plan, &manifest, &started, timings)
    }

    /// Receipts, journal and post-action after an attempt that reached the platform.
    fn outcome(
        &self,
        result: Result<Delivered, DeliverError>,
        plan: &rules::Plan,
        manifest: &Manifest,
        started: &Begun,
        timings: Timings,
    ) -> Result<Done, JournalError> {
        let sh = &self.shared;
        let folder = &sh.config.folders[self.folder];
        let attempts = self.rec.attempts + 1;
        match result {
            Ok(d) => {
                let facts = self.facts(
                    Some(plan),
                    Some(manifest),
                    attempts,
                    self.rec.revision + 1,
                    started,
                );
                let mut receipt = Receipt::delivered(facts, &d);
                receipt.timings = Some(timings);
                // The receipt first: a crash before the journal says "delivered" only repeats the
                // delivery into the same item, while the other order could lose the receipt.
                if let Err(e) = crate::receipt::write(&sh.receipts, self.key(), &receipt) {
                    tracing::error!(case = %self.case, "cannot write the receipt: {e}");
                    return Ok(Done::Later(sh.options.retry_first));
                }
                sh.journal
                    .delivered_sent(self.rec.id, manifest, &receipt.sent_files())?;
                tracing::info!(case = %self.case, item = %d.item_pk, "delivered and verified");
                if !plan.unmatched.is_empty() {
                    tracing::warn!(
                        case = %self.case,
                        "{} file(s) of the case matched no socket rule and were not sent: {}",
                        plan.unmatched.len(),
                        plan.unmatched.join(", ")
                    );
                }
                let post_action_failures =
                    post_action(sh, folder, &self.case_dir, &self.rel, self.rec.id)?;
                Ok(Done::Delivered {
                    post_action_failures,
                })
            }
            Err(DeliverError::Quarantine(reason)) => {
                let item = sh
                    .journal
                    .by_id(self.rec.id)?
                    .and_then(|r| r.item_pk)
                    .map(|pk| ItemRef {
                        api_url: item_url(&sh.client, folder, &pk),
                        pk,
                    });
                let facts = self.facts(
                    Some(plan),
                    Some(manifest),
                    attempts,
                    self.rec.revision,
                    started,
                );
                self.quarantine(facts, reason, item, timings)
            }
            Err(e) => self.postponed(e, attempts),
        }
    }

    /// An attempt that can be repeated: when, and what the journal says meanwhile.
    fn postponed(&self, e: DeliverError, attempts: i64) -> Result<Done, JournalError> {
        let sh = &self.shared;
        let folder = &sh.config.folders[self.folder];
        match e {
            DeliverError::Changed => {
                sh.journal
                    .postpone(self.rec.id, "the case changed during upload")?;
                Ok(Done::Changed)
            }
            DeliverError::Auth(e) => {
                let why = format!(
                    "the platform refused the token for {} {}: {e}",
                    kind_name(folder.target),
                    folder.target_slug
                );
                tracing::error!(case = %self.case, "{why}; pausing this target");
                sh.journal.postpone(self.rec.id, &why)?;
                Ok(Done::AuthPaused(
                    folder.target,
                    folder.target_slug.clone(),
                    why,
                ))
            }
            DeliverError::Later(e) => {
                crate::metrics::global().delivery_retried(e.class());
                let wait = backoff(&sh.options, attempts);
                tracing::warn!(case = %self.case, retry_in = ?wait, "{e}");
                sh.journal.postpone(self.rec.id, &e.to_string())?;
                Ok(Done::Later(wait))
            }
            DeliverError::Checkpoint(e) => {
                tracing::error!(case = %self.case, "{e}");
                Ok(Done::Later(sh.options.retry_first))
            }
            DeliverError::Local(e) => {
                tracing::warn!(case = %self.case, "{e}");
                sh.journal.postpone(self.rec.id, &e)?;
                Ok(Done::Later(sh.options.retry_first))
            }
            DeliverError::Quarantine(_) => Ok(Done::Later(sh.options.retry_first)),
        }
    }

    fn quarantine(
        &self,
        facts: CaseFacts<'_>,
        reason: String,
        item: Option<ItemRef>,
        timings: Timings,
    ) -> Result<Done, JournalError> {
        let sh = &self.shared;
        let folder = &sh.config.folders[self.folder];
        tracing::warn!(case = %self.case, "quarantined: {reason}");
        let mut receipt = Receipt::quarantined(facts, reason.clone(), item);
        receipt.timings = Some(timings);
        if let Err(e) = crate::receipt::write(&sh.receipts, self.key(), &receipt) {
            tracing::error!(case = %self.case, "cannot write the receipt: {e}");
        }
        sh.journal.set_fingerprint(self.rec.id, &self.fp)?;
        sh.quarantined(folder, self.rec.id, &self.case, &reason)?;
        if let Some(q) = &folder.quarantine {
            match crate::after::move_case(&self.case_dir, &q.join(&self.rel), folder) {
                Ok(to) => {
                    let key = CaseKey {
                        folder: &folder.path,
                        case: &self.rel,
                    };
                    if let Err(e) =
                        crate::receipt::record_move(&sh.receipts, &folder.target_slug, key, &to)
                    {
                        tracing::warn!(case = %self.case, "cannot note the new place in the receipt: {e}");
                    }
                    sh.journal.moved_to(self.rec.id, Some(&to))?
                }
                Err(e) => {
                    tracing::error!(case = %self.case, "cannot move the case to quarantine: {e}")
                }
            }
        }
        Ok(Done::Quarantined)
    }

    fn key(&self) -> CaseKey<'_> {
        CaseKey {
            folder: &self.shared.config.folders[self.folder].path,
            case: &self.rel,
        }
    }
}

pub(crate) fn item_url(client: &Client, folder: &Folder, pk: &str) -> String {
    let target = gc_client::Target {
        kind: folder.target,
        slug: folder.target_slug.clone(),
        pk: String::new(),
        api_url: String::new(),
        url: String::new(),
    };
    client.item_api_url(&target, pk)
}

pub(crate) fn kind_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Archive => "archive",
        TargetKind::ReaderStudy => "reader study",
        TargetKind::Algorithm => "algorithm",
    }
}

fn readiness(folder: &Folder) -> String {
    let mut s = format!("unchanged for {}", humantime::format_duration(folder.quiet));
    if let Some(m) = &folder.marker {
        s.push_str(&format!(", marker {m} present"));
    }
    s.push_str(", no temporary files");
    s
}

/// Exponential backoff with jitter, for failures that may pass.
fn backoff(o: &AgentOptions, attempts: i64) -> Duration {
    let exp = o
        .retry_first
        .saturating_mul(1u32 << attempts.clamp(0, 16) as u32)
        .min(o.retry_max);
    let jitter = rand::random::<f64>() * 0.25 + 0.875;
    exp.mul_f64(jitter)
}

/// Where `upload` shows a case's progress; the agent shows it only in its log and `status`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Progress<'a> {
    /// Bytes just sent.
    pub bytes: Option<&'a (dyn Fn(u64) + Send + Sync)>,
    /// The case's note changed (e.g. how long the platform's import has been awaited).
    pub note: Option<&'a (dyn Fn(&str) + Send + Sync)>,
}

/// A planned case about to be sent, and where its progress is recorded: the agent's and `upload`'s.
#[derive(Clone, Copy)]
pub(crate) struct CaseRun<'a> {
    pub client: &'a Client,
    pub journal: &'a Journal,
    pub folder: &'a Folder,
    pub state_dir: &'a Path,
    pub rec: &'a CaseRecord,
    pub case_dir: &'a Path,
    pub plan: &'a rules::Plan,
    pub manifest: &'a Manifest,
    pub fingerprint: &'a str,
    pub verify: &'a VerifyTiming,
    /// Bytes sent and notes, for a progress bar.
    pub progress: Progress<'a>,
}

/// How sending a case ended, as recorded.
pub(crate) enum Recorded {
    /// An algorithm's job, followed to its end.
    Done(Box<Delivered>),
    /// Values set `.1` ago; the platform imports them.
    Awaiting(Box<AwaitingImport>, Duration),
}

/// Send a planned case, recorded in the journal step by step, resuming what an interrupted attempt left:
/// a case whose values were set for this very content waits on, without sending anything again.
pub(crate) async fn send_recorded(
    run: &CaseRun<'_>,
    timings: &mut Timings,
) -> Result<Result<Recorded, DeliverError>, JournalError> {
    let (journal, rec, manifest) = (run.journal, run.rec, run.manifest);
    if let Some((awaiting, waited)) = resumable(journal, rec, manifest)? {
        tracing::info!(case = %rec.case_text(), item = %awaiting.item_pk, waited = ?waited, "its values were set already: waiting for the platform's import");
        journal.resume_waiting(rec.id)?;
        timings.deidentify = awaiting.timings.deidentify;
        timings.upload = awaiting.timings.upload;
        timings.patch = awaiting.timings.patch;
        return Ok(Ok(Recorded::Awaiting(awaiting, waited)));
    }
    let resuming = rec.manifest_hash.as_deref() == Some(&manifest.hash);
    journal.ready(
        rec.id,
        &Planned {
            manifest_hash: &manifest.hash,
            fingerprint: run.fingerprint,
            title: &run.plan.title,
            target_kind: run.plan.target,
            target_slug: &run.plan.target_slug,
        },
    )?;
    journal.begin_attempt(rec.id)?;
    let earlier = if resuming {
        journal.uploads(rec.id, &manifest.hash)?
    } else {
        vec![]
    };
    let cp = JournalCheckpoints {
        journal,
        id: rec.id,
        manifest: &manifest.hash,
        earlier,
        case_dir: run.case_dir,
        fingerprint: run.fingerprint,
        progress: run.progress,
        last_note: std::sync::Mutex::new(None),
    };
    let (send, start) = what_to_send(run);
    tracing::debug!(case = %rec.case_text(), resuming, "attempt recorded");
    // De-identified copies and the ZIPs of series are made here, and again, byte for byte, by any
    // later attempt: none is kept on disk.
    let staging = run.state_dir.join("staging").join(rec.id.to_string());
    let privacy = privacy(run, &staging)?;
    let local = crate::deliver::Local {
        case_dir: run.case_dir,
        privacy: privacy.as_ref(),
        staging: Some(&staging),
        outbox: run
            .folder
            .outbox
            .as_deref()
            .map(|dir| crate::outbox::Outbox {
                dir,
                sharing: run.folder.sharing(),
            }),
    };
    let result =
        crate::deliver::send(run.client, local, &send, start, run.verify, &cp, timings).await;
    crate::deliver::remove_staging(&staging);
    Ok(result.map(|sent| match sent {
        Sent::Done(d) => Recorded::Done(d),
        Sent::Awaiting(a) => Recorded::Awaiting(a, Duration::ZERO),
    }))
}

/// What the journal says this content's delivery waits for, if its values were set already.
fn resumable(
    journal: &Journal,
    rec: &CaseRecord,
    manifest: &Manifest,
) -> Result<Option<(Box<AwaitingImport>, Duration)>, JournalError> {
    let Some((json, waited)) = journal.awaited(rec.id, &manifest.hash)? else {
        return Ok(None);
    };
    match serde_json::from_str(&json) {
        Ok(awaiting) => Ok(Some((Box::new(awaiting), waited))),
        Err(e) => {
            // Written by another version: sending again is safe, only slower.
            tracing::warn!(case = %rec.case_text(), "what the case waits for cannot be read ({e}): sending it again");
            Ok(None)
        }
    }
}

/// Which sockets go, into which item. Late files in a delivered case send only the sockets they touch,
/// into the same item; a job runs on the whole case.
fn what_to_send(run: &CaseRun<'_>) -> (rules::Plan, ItemStart) {
    let (rec, plan, manifest) = (run.rec, run.plan, run.manifest);
    if run.folder.target == TargetKind::Algorithm {
        // The recorded job is followed again only for the content it was started on; changed content,
        // or a case retried after its job failed, gets a new job.
        let start = match &rec.item_pk {
            Some(pk) if rec.job_manifest.as_deref() == Some(manifest.hash.as_str()) => {
                ItemStart::Existing(pk.clone())
            }
            _ => ItemStart::New,
        };
        return (plan.clone(), start);
    }
    let delivered: Option<Manifest> = rec
        .delivered_manifest
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok());
    let send = match (&delivered, &rec.item_pk) {
        (Some(before), Some(_)) => rules::changed_sockets(plan, manifest, before),
        _ => plan.clone(),
    };
    let start = match &rec.item_pk {
        Some(pk) => ItemStart::Existing(pk.clone()),
        None => ItemStart::New,
    };
    (send, start)
}

/// DICOM goes out de-identified, with UIDs from the case's own secret in the journal, so that a resumed
/// attempt (of the agent or of `upload`) sends the same bytes.
fn privacy(run: &CaseRun<'_>, staging: &Path) -> Result<Option<Privacy>, JournalError> {
    if !run.folder.deidentify {
        return Ok(None);
    }
    let id = run.rec.id;
    let secret = run.journal.deid_secret(id)?;
    let uids = UidMap::from_hex(&secret)
        .ok_or_else(|| JournalError::Corrupt(format!("case {id}: bad de-identification secret")))?;
    Ok(Some(Privacy {
        staging: staging.to_owned(),
        uids,
    }))
}

/// When an attempt began, what earlier revisions sent and what the item holds (for its plan and
/// receipts).
struct Begun {
    at: (String, Instant),
    earlier: Vec<crate::receipt::SentFile>,
    on_item: Vec<crate::receipt::SocketReceipt>,
}

/// What the platform holds once a sent case is verified: a job's outcome at once, an item's once its
/// imports show (the case's note says meanwhile what it waits for).
pub(crate) async fn verified(
    run: &CaseRun<'_>,
    verifier: &gc_client::Verifier,
    sent: Recorded,
    timings: &mut Timings,
) -> Result<Delivered, DeliverError> {
    match sent {
        Recorded::Done(d) => Ok(*d),
        Recorded::Awaiting(awaiting, waited) => {
            let cp = waiting_checkpoints(run);
            let timing = folder_timing(run);
            crate::deliver::verify(
                run.client,
                verifier,
                (*awaiting, waited),
                &timing,
                &cp,
                timings,
            )
            .await
        }
    }
}

/// Checkpoints for the wait after the values were set: only its notes are written.
fn waiting_checkpoints<'a>(run: &CaseRun<'a>) -> JournalCheckpoints<'a> {
    JournalCheckpoints {
        journal: run.journal,
        id: run.rec.id,
        manifest: &run.manifest.hash,
        earlier: vec![],
        case_dir: run.case_dir,
        fingerprint: run.fingerprint,
        progress: run.progress,
        last_note: std::sync::Mutex::new(None),
    }
}

/// The agent's verification timing with the folder's own deadline for DICOM image sets.
fn folder_timing(run: &CaseRun<'_>) -> VerifyTiming {
    VerifyTiming {
        dicom_deadline: run.folder.dicom_import_deadline,
        ..run.verify.clone()
    }
}

pub(crate) struct JournalCheckpoints<'a> {
    pub journal: &'a Journal,
    pub id: i64,
    pub manifest: &'a str,
    pub earlier: Vec<crate::journal::UploadRecord>,
    pub case_dir: &'a Path,
    pub fingerprint: &'a str,
    pub progress: Progress<'a>,
    /// The last note of this attempt, written only when it reads differently.
    pub last_note: std::sync::Mutex<Option<String>>,
}

impl Checkpoints for JournalCheckpoints<'_> {
    fn creating(
        &self,
        target: &gc_client::Target,
        title: &str,
    ) -> Result<crate::journal::TitleClaim, String> {
        self.journal
            .claim_title(self.id, target.kind, &target.slug, title)
            .map_err(|e| e.to_string())
    }
    fn create_refused(&self) -> Result<(), String> {
        self.journal
            .create_refused(self.id)
            .map_err(|e| e.to_string())
    }
    fn item(&self, pk: &str) -> Result<(), String> {
        self.journal
            .item_created(self.id, pk)
            .map_err(|e| e.to_string())
    }
    fn step(&self, step: Step) -> Result<(), String> {
        self.journal.step(self.id, step).map_err(|e| e.to_string())
    }
    /// Where a case starts waiting for the platform's import: the journal keeps what it waits for.
    fn awaiting(&self, awaiting: &AwaitingImport) -> Result<(), String> {
        let json = serde_json::to_string(awaiting).map_err(|e| e.to_string())?;
        self.journal
            .awaiting_import(self.id, self.manifest, &json)
            .map_err(|e| e.to_string())
    }
    fn job_starting(&self, slug: &str) -> Result<crate::journal::JobStart, String> {
        self.journal
            .job_starting(self.id, slug)
            .map_err(|e| e.to_string())
    }
    fn job_refused(&self) -> Result<(), String> {
        self.journal.job_refused(self.id).map_err(|e| e.to_string())
    }
    fn claimed_jobs(&self, slug: &str) -> Result<Vec<String>, String> {
        self.journal.claimed_jobs(slug).map_err(|e| e.to_string())
    }
    fn job_status(&self, pk: &str, status: &str) {
        if let Err(e) = self.journal.note(self.id, &format!("job {pk}: {status}")) {
            tracing::warn!("cannot note the job's status: {e}");
        }
    }
    fn waiting(&self, wait: &crate::deliver::ImportWait) {
        let note = wait.note();
        let mut last = self.last_note.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(note.as_str()) {
            return;
        }
        // The start of the wait is an event of the case; how long it has lasted only refreshes it.
        let written = if last.is_none() {
            if self.progress.note.is_none() {
                tracing::info!(case = %self.case_dir.display(), "{note}");
            }
            self.journal.note(self.id, &note)
        } else {
            self.journal.renote(self.id, &note)
        };
        if let Err(e) = written {
            tracing::warn!("cannot note the wait for the platform's import: {e}");
        }
        if let Some(show) = self.progress.note {
            show(&note);
        }
        *last = Some(note);
    }
    fn unchanged(&self) -> bool {
        crate::settle::snapshot(self.case_dir)
            .map(|s| s.fingerprint())
            .ok()
            .as_deref()
            == Some(self.fingerprint)
    }
}

impl UploadRecord for JournalCheckpoints<'_> {
    fn progress(&self, bytes: u64) {
        if let Some(p) = self.progress.bytes {
            p(bytes);
        }
    }
    fn upload_created(&self, path: &str, u: &UserUpload) -> Result<(), String> {
        self.journal
            .upload_created(
                self.id,
                self.manifest,
                path,
                &u.pk,
                &u.s3_upload_id,
                &u.api_url,
            )
            .map_err(|e| e.to_string())
    }
    fn part_done(&self, upload_pk: &str, part: u32, etag: &str) -> Result<(), String> {
        self.journal
            .part_done(upload_pk, part, etag)
            .map_err(|e| e.to_string())
    }
    fn upload_completed(&self, _path: &str, u: &UserUpload) -> Result<(), String> {
        self.journal
            .upload_completed(&u.pk)
            .map_err(|e| e.to_string())
    }
    fn earlier_upload(&self, path: &str) -> Option<EarlierUpload> {
        let u = self.earlier.iter().find(|u| u.path == path)?;
        Some(if u.completed {
            EarlierUpload::Completed {
                upload_pk: u.upload_pk.clone(),
                api_url: u.api_url.clone(),
            }
        } else {
            EarlierUpload::Open(ResumeFrom {
                upload_pk: u.upload_pk.clone(),
                s3_upload_id: u.s3_upload_id.clone(),
            })
        })
    }
}
