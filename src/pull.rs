//! The `pull` command: the way back from the platform to folders. It exists so that delivered cases can
//! be checked, copied or moved on without a browser, and so that a pulled folder is again a drop folder
//! whose cases the same socket rules upload as they are (a round trip). An algorithm's succeeded jobs
//! come back the same way: a job is pulled as an item whose values are its outputs, named by its pk.
//!
//! The decisions (folder names, which paths are safe, what to fetch again) are plain functions below the
//! I/O. Every download is staged in `DEST/.gc-pull.tmp` and moved into place when complete, and the state
//! file records it soon after (at most a second later, and at the end), so a run that is killed fetches
//! again at most its last second's sockets and never leaves a partial file (or any dotfile) inside an
//! item folder.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cli::{PullArgs, exit};
use crate::item_folder::{
    Problem, ensure_dirs, is_safe_name, real_parents, remove_any, safe_relative_path, write_value,
};
use gc_client::{
    Client, GcError, InterfaceRef, Item, ItemValue, Job, JobFilter, JobStatus, Socket, Target,
    TargetKind,
};

/// The state file, in DEST itself.
pub const STATE_FILE: &str = ".gc-pull.json";
/// Where downloads are staged; on the same filesystem as the item folders, so moving them is a rename.
pub const STAGING_DIR: &str = ".gc-pull.tmp";
const LOCK_FILE: &str = ".gc-pull.lock";
const STATE_VERSION: u32 = 1;

// ---- the state file ---------------------------------------------------------------------------------

/// What a pull has completely written into DEST, saved as `DEST/.gc-pull.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullState {
    pub version: u32,
    pub target: StateTarget,
    /// By item pk.
    #[serde(default)]
    pub items: BTreeMap<String, ItemRecord>,
}

/// The container DEST mirrors. Compared by kind and pk: a slug can be renamed, a pk cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTarget {
    pub kind: TargetKind,
    pub slug: String,
    pub pk: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// The item's folder below DEST, chosen once and kept even if the title changes later.
    pub folder: String,
    /// By socket slug: only sockets whose files were completely written.
    #[serde(default)]
    pub sockets: BTreeMap<String, SocketRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketRecord {
    /// The socket value (`values[].pk`) that was written.
    pub value_pk: i64,
    /// The socket's relative path at the time, below the item folder.
    pub path: String,
    /// Every file written for it, below the item folder.
    pub files: Vec<String>,
}

impl PullState {
    fn new(target: StateTarget) -> PullState {
        PullState {
            version: STATE_VERSION,
            target,
            items: BTreeMap::new(),
        }
    }
}

/// A state file decides what gets deleted and replaced, so a damaged or edited one must not point
/// anywhere outside its item folders.
pub fn check_state(state: &PullState) -> Result<(), String> {
    if state.version != STATE_VERSION {
        return Err(format!(
            "has version {} (this program writes version {STATE_VERSION})",
            state.version
        ));
    }
    for (pk, item) in &state.items {
        if !is_safe_name(&item.folder) {
            return Err(format!(
                "item {pk}: the folder {:?} is not a plain folder name",
                item.folder
            ));
        }
        for (slug, s) in &item.sockets {
            let paths = std::iter::once(&s.path).chain(&s.files);
            for p in paths {
                if safe_relative_path(p).as_deref() != Ok(p.as_str()) {
                    return Err(format!(
                        "item {pk}, socket {slug}: the path {p:?} is not a plain relative path"
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---- pure decisions ---------------------------------------------------------------------------------

/// The folder for an item: its title if usable and free, else its pk (if usable and free), else none.
pub fn folder_name(title: &str, pk: &str, taken: impl Fn(&str) -> bool) -> Option<String> {
    [title, pk]
        .into_iter()
        .find(|n| is_safe_name(n) && !taken(n))
        .map(str::to_owned)
}

/// One socket value of an item, as the decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketValue {
    pub slug: String,
    pub value_pk: i64,
    pub relative_path: String,
}

/// What to do with one socket value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Unchanged and on disk, with this many files.
    Keep(usize),
    /// Write it at this (normalised) path below the item folder.
    Fetch(String),
    Skip(String),
}

fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    a == b || inside(a, b) || inside(b, a)
}

/// Per value (same order): keep it, fetch it, or skip it and why. `present` says whether a file below the
/// item folder exists. A value is kept only if the state recorded this very value at this path and every
/// file written for it is still there; a changed value, a moved path or a missing file means fetching.
pub fn decide(
    record: Option<&ItemRecord>,
    values: &[SocketValue],
    present: impl Fn(&str) -> bool,
) -> Vec<Decision> {
    let mut claimed: Vec<(String, &str)> = Vec::new();
    values
        .iter()
        .map(|v| {
            let path = match safe_relative_path(&v.relative_path) {
                Ok(p) => p,
                Err(e) => return Decision::Skip(e),
            };
            if let Some((_, other)) = claimed.iter().find(|(p, _)| overlaps(p, &path)) {
                return Decision::Skip(format!(
                    "its path {path} collides with the path of socket {other}"
                ));
            }
            claimed.push((path.clone(), &v.slug));
            match record.and_then(|r| r.sockets.get(&v.slug)) {
                Some(s)
                    if s.value_pk == v.value_pk
                        && s.path == path
                        && !s.files.is_empty()
                        && s.files.iter().all(|f| present(f)) =>
                {
                    Decision::Keep(s.files.len())
                }
                _ => Decision::Fetch(path),
            }
        })
        .collect()
}

/// Recorded sockets that no longer have a value on the item, and whether their files may be deleted:
/// not when their path is now used by a current value (fetching that replaces them anyway).
pub fn removed_sockets(record: Option<&ItemRecord>, values: &[SocketValue]) -> Vec<(String, bool)> {
    let Some(record) = record else {
        return Vec::new();
    };
    let current: Vec<String> = values
        .iter()
        .filter_map(|v| safe_relative_path(&v.relative_path).ok())
        .collect();
    record
        .sockets
        .iter()
        .filter(|(slug, _)| !values.iter().any(|v| &v.slug == *slug))
        .map(|(slug, s)| {
            let delete = !current.iter().any(|p| overlaps(p, &s.path));
            (slug.clone(), delete)
        })
        .collect()
}

/// Where a socket's files were written before, when its value now goes to `new_path` and no current
/// value uses the old place: those files are stale once the new ones are in.
pub fn moved_from(
    record: Option<&ItemRecord>,
    slug: &str,
    new_path: &str,
    values: &[SocketValue],
) -> Option<String> {
    let old = &record?.sockets.get(slug)?.path;
    if old == new_path {
        return None;
    }
    let in_use = values
        .iter()
        .filter_map(|v| safe_relative_path(&v.relative_path).ok())
        .any(|p| overlaps(&p, old));
    (!in_use).then(|| old.clone())
}

/// A job with nothing to pull (yet): it has not succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSucceeded {
    pub pk: String,
    pub status: JobStatus,
}

/// An algorithm's jobs as pull sees them: each succeeded job as an item whose values are its outputs,
/// untitled so that its folder is its pk (a job has no name of its own), and the jobs that have not
/// succeeded. Those are no failure of the pull: one that is still running is pulled by a later run.
pub fn jobs_as_items(jobs: Vec<Job>) -> (Vec<Item>, Vec<NotSucceeded>) {
    let mut items = Vec::new();
    let mut not_succeeded = Vec::new();
    for job in jobs {
        if job.status == JobStatus::Succeeded {
            items.push(Item {
                pk: job.pk,
                title: String::new(),
                values: job.outputs,
                order: None,
            });
        } else {
            not_succeeded.push(NotSucceeded {
                pk: job.pk,
                status: job.status,
            });
        }
    }
    (items, not_succeeded)
}

/// What a target's pull reports on: items and display sets, or jobs.
fn noun(kind: TargetKind) -> (&'static str, &'static str) {
    match kind {
        TargetKind::Archive => ("archive", "item"),
        TargetKind::ReaderStudy => ("reader study", "item"),
        TargetKind::Algorithm => ("algorithm", "job"),
    }
}

// ---- the command ------------------------------------------------------------------------------------

/// Entry point of `gc-hotfolder pull`.
pub fn main(args: PullArgs) -> u8 {
    let (kind, slug) = match (args.archive, args.reader_study, args.algorithm) {
        (Some(a), None, None) => (TargetKind::Archive, a),
        (None, Some(r), None) => (TargetKind::ReaderStudy, r),
        (None, None, Some(a)) => (TargetKind::Algorithm, a),
        _ => {
            eprintln!("error: give exactly one of --archive, --reader-study and --algorithm");
            return exit::USAGE;
        }
    };
    let config = match crate::start::load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let parallel = config.limits.parallel_cases;
    match crate::start::runtime() {
        Ok(rt) => rt.block_on(async {
            let client = match crate::start::connect(&config, false).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            // The target first: a misspelled slug must leave no folder behind.
            if let Err(e) = client.resolve_target(kind, &slug).await {
                eprintln!("error: {e}");
                return match e {
                    GcError::NotFound(_) => exit::USAGE,
                    _ => exit::PLATFORM,
                };
            }
            let dest = match Dest::open(&args.dest) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {}: {e}", args.dest.display());
                    return exit::USAGE;
                }
            };
            let code = run(&client, &dest, kind, &slug, parallel).await;
            dest.clean_staging();
            code
        }),
        Err(code) => code,
    }
}

/// DEST, locked against a second pull writing into it at the same time.
struct Dest {
    root: PathBuf,
    staging: PathBuf,
    /// Held for the life of the command; the lock goes with the descriptor.
    _lock: std::fs::File,
}

impl Dest {
    fn open(dest: &Path) -> Result<Dest, String> {
        std::fs::create_dir_all(dest).map_err(|e| format!("cannot create the folder: {e}"))?;
        let root = std::fs::canonicalize(dest).map_err(|e| format!("cannot open: {e}"))?;
        if !root.is_dir() {
            return Err("is not a folder".into());
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK_FILE))
            .map_err(|e| format!("cannot create {LOCK_FILE}: {e}"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err("another pull is writing into this folder".into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {LOCK_FILE}: {e}"));
            }
        }
        let staging = root.join(STAGING_DIR);
        // Whatever is staged is from a run that was killed: its sockets were never recorded.
        remove_any(&staging).map_err(|e| format!("cannot clear {STAGING_DIR}: {e}"))?;
        std::fs::create_dir(&staging).map_err(|e| format!("cannot create {STAGING_DIR}: {e}"))?;
        Ok(Dest {
            root,
            staging,
            _lock: lock,
        })
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    fn load_state(&self) -> Result<Option<PullState>, String> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let state: PullState = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not a pull state file ({e}); remove it to start over",
                path.display()
            )
        })?;
        check_state(&state)
            .map_err(|e| format!("{} {e}; remove it to start over", path.display()))?;
        Ok(Some(state))
    }

    fn clean_staging(&self) {
        if let Err(e) = remove_any(&self.staging) {
            tracing::warn!(path = %self.staging.display(), "cannot remove the staging folder: {e}");
        }
    }
}

fn save_state(path: &Path, state: &PullState) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    crate::fsutil::write_atomic(path, &bytes)
        .map_err(|e| format!("cannot save {}: {e}", path.display()))
}

/// A socket that was not written, and why.
struct Skipped {
    /// The item's folder (or its pk when it got none).
    item: String,
    socket: Option<String>,
    reason: String,
}

#[derive(Default)]
struct ItemReport {
    folder: String,
    /// False when the pull had stopped before this item's turn.
    ran: bool,
    downloaded: usize,
    kept: usize,
    removed: usize,
    skipped: Vec<Skipped>,
    /// Why the whole pull stopped, and its exit code.
    fatal: Option<(String, u8)>,
}

/// What every item task shares.
struct Shared<'a> {
    client: &'a Client,
    dest: &'a Dest,
    state: Mutex<Recorder>,
    stop: AtomicBool,
}

/// The state in memory, and how its saving goes.
struct Recorder {
    state: PullState,
    saved_at: Option<Instant>,
    /// How long the last save took.
    save_took: Duration,
    unsaved: bool,
}

/// The state file is saved at most this often while a pull runs (and at its end).
const SAVE_EVERY: Duration = Duration::from_secs(1);

impl Recorder {
    fn save(&mut self, path: &Path) -> Result<(), String> {
        let t = Instant::now();
        save_state(path, &self.state)?;
        self.saved_at = Some(Instant::now());
        self.save_took = t.elapsed();
        self.unsaved = false;
        Ok(())
    }
}

impl Shared<'_> {
    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record what was written. Saving rewrites the whole state file, so it happens at most once a
    /// second and never takes more than a tenth of the time: a large archive's pull does not spend itself
    /// rewriting its state. A kill loses the records of that last stretch only, whose sockets are then
    /// fetched again.
    fn update(&self, change: impl FnOnce(&mut PullState)) -> Result<(), String> {
        let mut r = self.recorder();
        change(&mut r.state);
        r.unsaved = true;
        let gap = SAVE_EVERY.max(r.save_took * 10);
        if r.saved_at.is_none_or(|at| at.elapsed() >= gap) {
            r.save(&self.dest.state_path())?;
        }
        Ok(())
    }

    /// Save what is not saved yet.
    fn flush(&self) -> Result<(), String> {
        let mut r = self.recorder();
        if r.unsaved {
            r.save(&self.dest.state_path())?;
        }
        Ok(())
    }

    fn record(&self, item_pk: &str) -> Option<ItemRecord> {
        self.recorder().state.items.get(item_pk).cloned()
    }
}

async fn run(client: &Client, dest: &Dest, kind: TargetKind, slug: &str, parallel: usize) -> u8 {
    let (target, mut state) = match target_and_state(client, dest, kind, slug).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (items, not_succeeded) = match list(client, &target).await {
        Ok(listed) => listed,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::PLATFORM;
        }
    };
    let (jobs, skipped) = assign_folders(&mut state, items, &dest.root);
    let listed: HashSet<&str> = jobs.iter().map(|(i, _)| i.pk.as_str()).collect();
    let gone = state
        .items
        .keys()
        .filter(|pk| !listed.contains(pk.as_str()))
        .count();
    drop(listed);
    if let Err(e) = save_state(&dest.state_path(), &state) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    let shared = Shared {
        client,
        dest,
        state: Mutex::new(Recorder {
            state,
            saved_at: Some(Instant::now()),
            save_took: Duration::ZERO,
            unsaved: false,
        }),
        stop: AtomicBool::new(false),
    };
    let n_items = jobs.len();
    let reports = pull_all(&shared, jobs, parallel).await;
    let mut totals = Totals::of(reports, skipped, shared.flush().err());
    totals.items = n_items;
    totals.gone = gone;
    totals.report(dest, kind, slug, &not_succeeded)
}

/// The target named on the command line, and what DEST already holds of it (a pull of another target
/// there is refused).
async fn target_and_state(
    client: &Client,
    dest: &Dest,
    kind: TargetKind,
    slug: &str,
) -> Result<(Target, PullState), u8> {
    let (what, _) = noun(kind);
    let target = client.resolve_target(kind, slug).await.map_err(|e| {
        eprintln!("error: {e}");
        match e {
            GcError::NotFound(_) => exit::USAGE,
            _ => exit::PLATFORM,
        }
    })?;
    let here = StateTarget {
        kind,
        slug: slug.to_owned(),
        pk: target.pk.clone(),
    };
    let mut state = match dest.load_state() {
        Ok(Some(s)) if (s.target.kind, &s.target.pk) != (kind, &target.pk) => {
            let (theirs, _) = noun(s.target.kind);
            eprintln!(
                "error: {} holds a pull of {theirs} '{}'; pull {what} '{slug}' into another folder",
                dest.root.display(),
                s.target.slug
            );
            return Err(exit::USAGE);
        }
        Ok(Some(s)) => s,
        Ok(None) => PullState::new(here.clone()),
        Err(e) => {
            eprintln!("error: {e}");
            return Err(exit::USAGE);
        }
    };
    state.target = here;
    Ok((target, state))
}

/// Every item pulled, `parallel` at a time, with a progress bar on a terminal and a line per item
/// otherwise.
async fn pull_all(
    shared: &Shared<'_>,
    jobs: Vec<(Item, String)>,
    parallel: usize,
) -> Vec<ItemReport> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(jobs.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} items {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let reports = futures_util::stream::iter(jobs)
        .map(|(item, folder)| {
            let bar = bar.as_ref();
            async move {
                let report = pull_item(shared, &item, folder).await;
                match bar {
                    Some(b) => {
                        b.inc(1);
                        b.set_message(report.folder.clone());
                    }
                    None if report.ran => println!("{}", item_line(&report)),
                    None => {}
                }
                report
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    reports
}

/// What a pull did, summed over its items.
#[derive(Default)]
struct Totals {
    items: usize,
    downloaded: usize,
    kept: usize,
    removed: usize,
    /// Items listed before that the platform no longer has.
    gone: usize,
    skipped: Vec<Skipped>,
    /// Why the pull stopped early, and its exit code.
    fatal: Option<(String, u8)>,
}

impl Totals {
    fn of(reports: Vec<ItemReport>, skipped: Vec<Skipped>, unsaved: Option<String>) -> Totals {
        let mut t = Totals {
            skipped,
            fatal: unsaved.map(|e| (e, exit::CASE_FAILED)),
            ..Totals::default()
        };
        for r in reports {
            t.downloaded += r.downloaded;
            t.kept += r.kept;
            t.removed += r.removed;
            t.skipped.extend(r.skipped);
            // Several tasks can stop at once; the platform's refusal is the one to report.
            t.fatal = t
                .fatal
                .take()
                .into_iter()
                .chain(r.fatal)
                .max_by_key(|(_, code)| *code);
        }
        t.skipped
            .sort_by(|a, b| (&a.item, &a.socket).cmp(&(&b.item, &b.socket)));
        t
    }

    /// The lines for what was not pulled, the summary, and the exit code.
    fn report(
        &self,
        dest: &Dest,
        kind: TargetKind,
        slug: &str,
        not_succeeded: &[NotSucceeded],
    ) -> u8 {
        let (what, unit) = noun(kind);
        for u in not_succeeded {
            let when = if u.status.is_final() {
                "it ended without succeeding"
            } else {
                "a later pull fetches it once it has succeeded"
            };
            println!("not pulled: job {} is {} ({when})", u.pk, u.status.label());
        }
        for s in &self.skipped {
            match &s.socket {
                Some(socket) => println!("skipped {} socket {socket}: {}", s.item, s.reason),
                None => println!("skipped {unit} {}: {}", s.item, s.reason),
            }
        }
        let sockets_skipped = self.skipped.iter().filter(|s| s.socket.is_some()).count();
        let mut summary = format!(
            "{what} {slug} → {}: {}, {} downloaded, {} skipped (already there), {} skipped",
            dest.root.display(),
            counted(self.items, unit),
            counted(self.downloaded, "file"),
            counted(self.kept, "file"),
            counted(sockets_skipped, "socket"),
        );
        let items_skipped = self.skipped.len() - sockets_skipped;
        for (n, text) in [
            (items_skipped, counted(items_skipped, unit) + " skipped"),
            (
                not_succeeded.len(),
                counted(not_succeeded.len(), unit) + " not pulled (not succeeded)",
            ),
            (
                self.removed,
                counted(self.removed, "socket") + " removed (no longer on the platform)",
            ),
            (
                self.gone,
                counted(self.gone, unit) + " no longer on the platform (folders kept)",
            ),
        ] {
            if n > 0 {
                summary.push_str(&format!(", {text}"));
            }
        }
        println!("{summary}");
        if let Some((reason, code)) = &self.fatal {
            eprintln!("error: the pull stopped early: {reason}; run it again to resume");
            return *code;
        }
        if !self.skipped.is_empty() {
            return exit::CASE_FAILED;
        }
        if self.downloaded == 0 && self.removed == 0 {
            println!("nothing to download: everything was already there");
        }
        exit::OK
    }
}

/// What DEST mirrors: every item of an archive or reader study; an algorithm's jobs, split by
/// [`jobs_as_items`].
async fn list(client: &Client, target: &Target) -> Result<(Vec<Item>, Vec<NotSucceeded>), GcError> {
    match target.kind {
        TargetKind::Archive | TargetKind::ReaderStudy => {
            Ok((client.list_items(target).await?, Vec::new()))
        }
        TargetKind::Algorithm => {
            let filter = JobFilter {
                algorithm: Some(target.pk.clone()),
                ..JobFilter::default()
            };
            Ok(jobs_as_items(client.jobs(&filter).await?))
        }
    }
}

/// Every listed item with its folder: the recorded one, or a new one recorded now. Names are settled
/// before any download, in listing order, so the first of two equal titles keeps it.
fn assign_folders(
    state: &mut PullState,
    items: Vec<Item>,
    root: &Path,
) -> (Vec<(Item, String)>, Vec<Skipped>) {
    let mut taken: HashSet<String> = state.items.values().map(|r| r.folder.clone()).collect();
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    for item in items {
        if let Some(r) = state.items.get(&item.pk) {
            let folder = r.folder.clone();
            jobs.push((item, folder));
            continue;
        }
        // A folder this pull did not make is someone else's: never write into it.
        let is_taken =
            |n: &str| taken.contains(n) || std::fs::symlink_metadata(root.join(n)).is_ok();
        let Some(name) = folder_name(&item.title, &item.pk, is_taken) else {
            skipped.push(Skipped {
                item: item.pk.clone(),
                socket: None,
                reason: format!(
                    "neither its title {:?} nor its pk can be a new folder in {}",
                    item.title,
                    root.display()
                ),
            });
            continue;
        };
        taken.insert(name.clone());
        state.items.insert(
            item.pk.clone(),
            ItemRecord {
                folder: name.clone(),
                sockets: BTreeMap::new(),
            },
        );
        jobs.push((item, name));
    }
    (jobs, skipped)
}

fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn item_line(r: &ItemReport) -> String {
    let mut line = format!(
        "pulled {}: {} downloaded, {} already there",
        r.folder, r.downloaded, r.kept
    );
    if r.removed > 0 {
        line.push_str(&format!(", {} removed", r.removed));
    }
    if !r.skipped.is_empty() {
        line.push_str(&format!(", {} skipped", r.skipped.len()));
    }
    if r.fatal.is_some() {
        line.push_str(", stopped");
    }
    line
}

async fn pull_item(sh: &Shared<'_>, item: &Item, folder: String) -> ItemReport {
    let mut report = ItemReport {
        folder: folder.clone(),
        ..ItemReport::default()
    };
    if sh.stop.load(Ordering::Relaxed) {
        return report;
    }
    report.ran = true;
    let pull = ItemPull {
        sh,
        item,
        item_dir: sh.dest.root.join(&folder),
        folder,
    };
    match pull.run(&mut report).await {
        Ok(()) => report,
        Err((reason, code)) => stop(sh, report, reason, code),
    }
}

/// Why a pull stops early: the reason, and the exit code.
type Stopped = (String, u8);

/// One item being pulled into its folder.
struct ItemPull<'a, 's> {
    sh: &'a Shared<'s>,
    item: &'a Item,
    folder: String,
    item_dir: PathBuf,
}

impl<'a> ItemPull<'a, '_> {
    /// The item's sockets looked up, its folder made, sockets it no longer has removed, then every value
    /// fetched that the folder does not hold yet.
    async fn run(&self, report: &mut ItemReport) -> Result<(), Stopped> {
        let (values, unknown_socket) = self.sockets(report).await?;
        let views: Vec<SocketValue> = values
            .iter()
            .map(|(v, s)| SocketValue {
                slug: s.slug.clone(),
                value_pk: v.pk,
                relative_path: s.relative_path.clone(),
            })
            .collect();
        if let Err(e) = ensure_dirs(&self.sh.dest.root, Path::new(&self.folder)) {
            return match Problem::from(e) {
                Problem::Fatal(reason, code) => Err((reason, code)),
                Problem::Skip(reason) => {
                    report.skipped.push(Skipped {
                        item: self.folder.clone(),
                        socket: None,
                        reason: format!("cannot create its folder: {reason}"),
                    });
                    Ok(())
                }
            };
        }
        let record = self.sh.record(&self.item.pk);
        // A value whose socket could not be looked up is still there: nothing may count as removed then.
        if !unknown_socket {
            self.remove_gone(report, record.as_ref(), &views)?;
        }
        let decisions = decide(record.as_ref(), &views, |rel| {
            std::fs::symlink_metadata(self.item_dir.join(rel)).is_ok_and(|m| m.is_file())
        });
        for ((value, socket), decision) in values.iter().zip(decisions) {
            if self.sh.stop.load(Ordering::Relaxed) {
                break;
            }
            match decision {
                Decision::Keep(files) => report.kept += files,
                Decision::Skip(reason) => self.skip(report, &socket.slug, reason),
                Decision::Fetch(path) => {
                    let stale = moved_from(record.as_ref(), &socket.slug, &path, &views);
                    self.fetch(report, value, socket, path, stale).await?;
                }
            }
        }
        Ok(())
    }

    fn skip(&self, report: &mut ItemReport, socket: &str, reason: String) {
        report.skipped.push(Skipped {
            item: self.folder.clone(),
            socket: Some(socket.to_owned()),
            reason,
        });
    }

    /// Each value with its socket; a socket named by its slug only is looked up (and skipped, with
    /// `true`, if that fails).
    async fn sockets(
        &self,
        report: &mut ItemReport,
    ) -> Result<(Vec<(&'a ItemValue, Socket)>, bool), Stopped> {
        let mut values = Vec::new();
        let mut unknown_socket = false;
        for v in &self.item.values {
            let socket = match &v.interface {
                InterfaceRef::Full(s) => (**s).clone(),
                // Only write representations carry bare slugs; look the socket up then.
                InterfaceRef::Slug(slug) => match self.sh.client.socket(slug).await {
                    Ok(s) => s,
                    Err(e) => match Problem::from(e) {
                        Problem::Skip(reason) => {
                            self.skip(report, slug, reason);
                            unknown_socket = true;
                            continue;
                        }
                        Problem::Fatal(reason, code) => return Err((reason, code)),
                    },
                },
            };
            values.push((v, socket));
        }
        Ok((values, unknown_socket))
    }

    /// Sockets the item no longer has a value for: their files go (where the state says to delete
    /// them) and the state forgets them.
    fn remove_gone(
        &self,
        report: &mut ItemReport,
        record: Option<&ItemRecord>,
        views: &[SocketValue],
    ) -> Result<(), Stopped> {
        for (slug, delete) in removed_sockets(record, views) {
            let path = record
                .and_then(|r| r.sockets.get(&slug))
                .map(|s| s.path.clone());
            if delete && let Some(path) = path {
                let removal = real_parents(&self.item_dir, &path)
                    .and_then(|()| remove_any(&self.item_dir.join(&path)));
                if let Err(e) = removal {
                    let why =
                        format!("it has no value any more, but {path} cannot be removed: {e}");
                    self.skip(report, &slug, why);
                    continue;
                }
            }
            let pk = &self.item.pk;
            let forget = self.sh.update(|st| {
                if let Some(r) = st.items.get_mut(pk) {
                    r.sockets.remove(&slug);
                }
            });
            forget.map_err(|e| (e, exit::CASE_FAILED))?;
            report.removed += 1;
        }
        Ok(())
    }

    /// One value written to `path`, recorded in the state; the files of its old path go when the
    /// socket's relative path changed on the platform (`stale`).
    async fn fetch(
        &self,
        report: &mut ItemReport,
        value: &ItemValue,
        socket: &Socket,
        path: String,
        stale: Option<String>,
    ) -> Result<(), Stopped> {
        let (sh, root) = (self.sh, &self.sh.dest.root);
        let fetched = write_value(
            sh.client,
            root,
            &sh.dest.staging,
            &self.folder,
            &path,
            socket,
            value,
        )
        .await;
        let files = match fetched {
            Ok(files) => files,
            Err(Problem::Skip(reason)) => {
                self.skip(report, &socket.slug, reason);
                return Ok(());
            }
            Err(Problem::Fatal(reason, code)) => return Err((reason, code)),
        };
        report.downloaded += files.len();
        let written = SocketRecord {
            value_pk: value.pk,
            path,
            files,
        };
        let pk = &self.item.pk;
        let saved = sh.update(|st| {
            if let Some(r) = st.items.get_mut(pk) {
                r.sockets.insert(socket.slug.clone(), written);
            }
        });
        saved.map_err(|e| (e, exit::CASE_FAILED))?;
        if let Some(old) = stale {
            let removal = real_parents(&self.item_dir, &old)
                .and_then(|()| remove_any(&self.item_dir.join(&old)));
            if let Err(e) = removal {
                let why = format!("it moved, but its old {old} cannot be removed: {e}");
                self.skip(report, &socket.slug, why);
            }
        }
        Ok(())
    }
}

fn stop(sh: &Shared<'_>, mut report: ItemReport, reason: String, code: u8) -> ItemReport {
    sh.stop.store(true, Ordering::Relaxed);
    report.fatal = Some((reason, code));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item_folder::*;

    fn value(slug: &str, pk: i64, path: &str) -> SocketValue {
        SocketValue {
            slug: slug.into(),
            value_pk: pk,
            relative_path: path.into(),
        }
    }

    fn record(sockets: &[(&str, i64, &str, &[&str])]) -> ItemRecord {
        ItemRecord {
            folder: "case".into(),
            sockets: sockets
                .iter()
                .map(|(slug, pk, path, files)| {
                    (
                        slug.to_string(),
                        SocketRecord {
                            value_pk: *pk,
                            path: path.to_string(),
                            files: files.iter().map(|f| f.to_string()).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn names_that_could_leave_dest_or_hide_are_not_safe() {
        for ok in ["case-01", "Patient 7 (CT)", "ünï", "a.b", "x..y"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "a\0b",
            ".hidden",
            ".gc-pull.json",
            &long,
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_item_folder_is_its_title_else_its_pk() {
        let none = |_: &str| false;
        assert_eq!(
            folder_name("case-01", "pk1", none).as_deref(),
            Some("case-01")
        );
        assert_eq!(folder_name("", "pk1", none).as_deref(), Some("pk1"));
        assert_eq!(folder_name("../etc", "pk1", none).as_deref(), Some("pk1"));
        assert_eq!(folder_name("a/b", "pk1", none).as_deref(), Some("pk1"));
        assert_eq!(folder_name(".", "pk1", none).as_deref(), Some("pk1"));
        let taken = |n: &str| n == "case-01";
        assert_eq!(
            folder_name("case-01", "pk2", taken).as_deref(),
            Some("pk2"),
            "the second of two equal names gets the pk"
        );
        let all = |_: &str| true;
        assert_eq!(folder_name("case-01", "pk2", all), None);
        assert_eq!(folder_name("", "../pk", none), None, "a pk is checked too");
    }

    #[test]
    fn relative_paths_stay_inside_the_item_folder() {
        assert_eq!(safe_relative_path("images/ct").as_deref(), Ok("images/ct"));
        assert_eq!(safe_relative_path("a//b/").as_deref(), Ok("a/b"));
        assert_eq!(
            safe_relative_path("report.pdf").as_deref(),
            Ok("report.pdf")
        );
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "images/.ct",
            "a\0b",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad:?}");
        }
        assert!(
            safe_relative_path("../x")
                .unwrap_err()
                .contains("would leave the item folder")
        );
    }

    #[test]
    fn file_names_come_percent_decoded_from_the_last_url_segment() {
        assert_eq!(
            file_name_from_url("https://h/media/images/i/f/scan%20one.mha").as_deref(),
            Ok("scan one.mha")
        );
        assert_eq!(
            file_name_from_url("https://h/media/x/ct.mhd?X-Amz-Signature=abc").as_deref(),
            Ok("ct.mhd")
        );
        for bad in [
            "https://h/media/x/",
            "https://h/media/x/..%2F..%2Fetc",
            "https://h/media/x/%2E%2E",
            "https://h/media/x/.hidden",
            "https://h/media/x/a%00b",
            "https://h/media/x/%FF",
            "not a url",
        ] {
            assert!(file_name_from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unchanged_values_with_their_files_are_kept_and_everything_else_is_fetched() {
        let rec = record(&[
            ("count", 5, "count.json", &["count.json"]),
            (
                "ct",
                6,
                "images/ct",
                &["images/ct/a.mhd", "images/ct/a.raw"],
            ),
            ("report", 7, "report.pdf", &["report.pdf"]),
        ]);
        let values = [
            value("count", 5, "count.json"),
            value("ct", 6, "images/ct"),
            value("report", 8, "report.pdf"),
            value("new", 9, "new.json"),
        ];
        let all_there = |_: &str| true;
        assert_eq!(
            decide(Some(&rec), &values, all_there),
            [
                Decision::Keep(1),
                Decision::Keep(2),
                Decision::Fetch("report.pdf".into()),
                Decision::Fetch("new.json".into()),
            ]
        );
        let raw_deleted = |f: &str| f != "images/ct/a.raw";
        assert_eq!(
            decide(Some(&rec), &values[..2], raw_deleted),
            [Decision::Keep(1), Decision::Fetch("images/ct".into())]
        );
        assert_eq!(
            decide(None, &values[..1], all_there),
            [Decision::Fetch("count.json".into())],
            "nothing recorded: fetch even if a file of that name exists"
        );
        let moved = [value("count", 5, "counts/count.json")];
        assert_eq!(
            decide(Some(&rec), &moved, all_there),
            [Decision::Fetch("counts/count.json".into())]
        );
    }

    #[test]
    fn unsafe_or_colliding_paths_are_skipped_with_a_reason() {
        let values = [
            value("a", 1, "../escape.json"),
            value("b", 2, "images/ct"),
            value("c", 3, "images/ct/extra.json"),
            value("d", 4, "images/ct"),
            value("e", 5, "images/ctx"),
        ];
        let d = decide(None, &values, |_| false);
        assert!(matches!(&d[0], Decision::Skip(r) if r.contains("leave the item folder")));
        assert_eq!(d[1], Decision::Fetch("images/ct".into()));
        assert!(
            matches!(&d[2], Decision::Skip(r) if r.contains("socket b")),
            "{:?}",
            d[2]
        );
        assert!(matches!(&d[3], Decision::Skip(_)));
        assert_eq!(
            d[4],
            Decision::Fetch("images/ctx".into()),
            "a shared prefix is no collision"
        );
    }

    #[test]
    fn sockets_without_a_value_lose_their_files_unless_the_path_is_reused() {
        let rec = record(&[
            ("gone", 1, "gone.json", &["gone.json"]),
            ("stays", 2, "stays.json", &["stays.json"]),
            ("renamed", 3, "images/x", &["images/x/a.mha"]),
        ]);
        let values = [
            value("stays", 2, "stays.json"),
            value("other", 9, "images/x"),
        ];
        assert_eq!(
            removed_sockets(Some(&rec), &values),
            [("gone".to_owned(), true), ("renamed".to_owned(), false)]
        );
        assert!(removed_sockets(None, &values).is_empty());
    }

    #[test]
    fn a_socket_that_moved_leaves_its_old_place_unless_something_else_lives_there() {
        let rec = record(&[
            ("ct", 1, "images/ct", &["images/ct/a.mha"]),
            ("score", 2, "score.json", &["score.json"]),
        ]);
        let moved = [
            value("ct", 1, "images/ct-image"),
            value("score", 2, "score.json"),
        ];
        assert_eq!(
            moved_from(Some(&rec), "ct", "images/ct-image", &moved),
            Some("images/ct".to_owned())
        );
        assert_eq!(moved_from(Some(&rec), "score", "score.json", &moved), None);
        assert_eq!(moved_from(None, "ct", "images/ct-image", &moved), None);
        // Another socket now writes where the old one was: fetching it replaces those files anyway.
        let reused = [
            value("ct", 1, "images/ct-image"),
            value("seg", 3, "images/ct/seg"),
        ];
        assert_eq!(
            moved_from(Some(&rec), "ct", "images/ct-image", &reused),
            None
        );
    }

    #[test]
    fn a_state_file_pointing_outside_its_folders_is_refused() {
        let target = StateTarget {
            kind: TargetKind::Archive,
            slug: "a".into(),
            pk: "p".into(),
        };
        let mut state = PullState::new(target);
        state
            .items
            .insert("i".into(), record(&[("s", 1, "s.json", &["s.json"])]));
        check_state(&state).unwrap();
        let text = serde_json::to_string(&state).unwrap();
        let back: PullState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);

        let mut bad = state.clone();
        bad.items.get_mut("i").unwrap().folder = "..".into();
        assert!(check_state(&bad).is_err());
        let mut bad = state.clone();
        bad.items.insert(
            "j".into(),
            record(&[("s", 1, "s.json", &["../../etc/passwd"])]),
        );
        assert!(check_state(&bad).is_err());
        let mut bad = state.clone();
        bad.items
            .insert("j".into(), record(&[("s", 1, "a//b", &["a//b"])]));
        assert!(
            check_state(&bad).is_err(),
            "only normalised paths are written"
        );
        let mut bad = state;
        bad.version = 99;
        assert!(check_state(&bad).is_err());
    }

    #[test]
    fn succeeded_jobs_are_untitled_items_of_their_outputs_and_the_rest_is_set_aside() {
        let output = ItemValue {
            pk: 7,
            interface: InterfaceRef::Slug("lung-volume".into()),
            value: Some(serde_json::json!(120.0)),
            file: None,
            image: None,
        };
        let job = |pk: &str, status: &str, outputs: Vec<ItemValue>| Job {
            pk: pk.into(),
            url: format!("https://h/algorithms/a/jobs/{pk}/"),
            api_url: format!("https://h/api/v1/algorithms/jobs/{pk}/"),
            algorithm: "https://h/api/v1/algorithms/a/".into(),
            status: JobStatus::from_label(status),
            inputs: Vec::new(),
            outputs,
            exec_duration: None,
        };
        let (items, not_succeeded) = jobs_as_items(vec![
            job("j1", "Succeeded", vec![output]),
            job("j2", "Failed", Vec::new()),
            job("j3", "Executing", Vec::new()),
        ]);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].pk.as_str(), items[0].title.as_str()), ("j1", ""));
        assert_eq!(items[0].values[0].pk, 7);
        assert_eq!(
            folder_name(&items[0].title, &items[0].pk, |_| false).as_deref(),
            Some("j1"),
            "a job's folder is its pk"
        );
        assert_eq!(
            not_succeeded,
            [
                NotSucceeded {
                    pk: "j2".into(),
                    status: JobStatus::Failed
                },
                NotSucceeded {
                    pk: "j3".into(),
                    status: JobStatus::Pending("Executing".into())
                },
            ]
        );
    }

    #[test]
    fn install_replaces_files_and_folders_and_leaves_no_dotfiles_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, staging) = (tmp.path().join("dest"), tmp.path().join("staging"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        ensure_dirs(&root, Path::new("case/images")).unwrap();
        let item = root.join("case");

        let staged = staging.join(".v1");
        std::fs::write(&staged, "1").unwrap();
        install(&staged, &item.join("count.json"), &staging).unwrap();
        let staged = staging.join(".v2");
        std::fs::write(&staged, "2").unwrap();
        install(&staged, &item.join("count.json"), &staging).unwrap();
        assert_eq!(
            std::fs::read_to_string(item.join("count.json")).unwrap(),
            "2"
        );

        for (round, name) in [(1, "old.mha"), (2, "new.mha")] {
            let staged = staging.join(format!(".img{round}"));
            std::fs::create_dir(&staged).unwrap();
            std::fs::write(staged.join(name), "x").unwrap();
            install(&staged, &item.join("images/ct"), &staging).unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(item.join("images/ct"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["new.mha"], "the old image's files are gone");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }

    #[test]
    fn folders_are_not_created_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, elsewhere) = (tmp.path().join("dest"), tmp.path().join("elsewhere"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("case")).unwrap();
        assert!(ensure_dirs(&root, Path::new("case/images")).is_err());
        assert!(!elsewhere.join("images").exists());
        assert!(real_parents(&root, "case/x.json").is_err());
        std::fs::write(root.join("file"), "").unwrap();
        assert!(ensure_dirs(&root, Path::new("file/x")).is_err());
    }
}
