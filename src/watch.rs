//! Which cases may have changed. Nothing more: events are hints, never proof that a case is complete.
//!
//! Three sources feed the same channel, so that no case depends on one of them working: filesystem
//! events (notify, recursive, including folders created later), polling (for network filesystems, which
//! send no events, and for folders whose watch failed), and scans of whole folders (at start, on a timer,
//! and whenever events may have been lost: queue overflow or a watch limit).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{Folder, Poll};
use crate::rules::case_of;

/// A reason to look at something again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something below this case folder changed.
    Case { case_dir: PathBuf },
    /// Look at every case of the drop folder (start, timer, polling, or events may have been lost).
    Scan { folder: PathBuf, why: ScanReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanReason {
    Startup,
    Reconcile,
    Poll,
    /// The kernel's event queue overflowed: some events are lost.
    Overflow,
    /// A watch could not be set up (limit reached, folder missing): this folder is polled instead.
    WatchFailed,
    /// A folder above the cases arrived (a patient's folder at `depth = 2`): what it already held when
    /// its watch was added sent no events.
    NewFolder,
    /// The drop folder itself was removed or moved away: its watch is gone with it, so it is polled
    /// until a folder of its name is back.
    FolderGone,
}

impl ScanReason {
    /// The name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ScanReason::Startup => "startup",
            ScanReason::Reconcile => "reconcile",
            ScanReason::Poll => "poll",
            ScanReason::Overflow => "overflow",
            ScanReason::WatchFailed => "watch_failed",
            ScanReason::NewFolder => "new_folder",
            ScanReason::FolderGone => "folder_gone",
        }
    }
}

/// How a folder is being watched, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Events,
    /// Polling, and why.
    Polling(String),
    /// The folder does not exist: polled until it appears, then watched afresh.
    Missing,
}

/// Filesystems that deliver no (or unreliable) inotify events for changes made by other machines.
pub fn network_fs_name(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return None;
    }
    fs_magic_name(buf.f_type as i64)
}

/// The network filesystem a `statfs` magic number stands for, if it is one.
pub fn fs_magic_name(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x517B => "smb",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        0x00C3_6400 => "ceph",
        0x5346_414F => "afs",
        0x0BD0_0BD0 => "lustre",
        0x4750_4653 => "gpfs",
        _ => return None,
    })
}

/// Why a drop folder cannot be listed right now, if it cannot. A network share that is not mounted is the
/// classic cause, which is why a drop folder should be a folder inside the share, not its mount point: an
/// empty mount point looks like a drop folder without cases.
pub fn folder_missing(path: &Path) -> Option<String> {
    match std::fs::read_dir(path) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("does not exist (a network share that is not mounted?)".into())
        }
        Err(e) => Some(format!("cannot be listed: {e}")),
    }
}

/// What a drop folder holds down to the depth of its cases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The case folders, sorted.
    pub cases: Vec<PathBuf>,
    /// Files where the folder expects folders (at depth 1 to `depth`): never part of a case, so never
    /// delivered. Hidden and temporary files are left out. Sorted.
    pub misplaced: Vec<PathBuf>,
}

/// The case folders currently inside a drop folder (symbolic links are not followed).
pub fn list_cases(folder: &Folder) -> std::io::Result<Vec<PathBuf>> {
    list(folder).map(|l| l.cases)
}

/// The case folders of a drop folder and the files lying where case folders (or the folders above
/// them) are expected, in one walk of the levels down to the cases.
pub fn list(folder: &Folder) -> std::io::Result<Listing> {
    let mut level = vec![folder.path.clone()];
    let mut misplaced = Vec::new();
    for _ in 0..folder.depth {
        let mut next = Vec::new();
        for dir in level {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if dir != folder.path && e.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                match entry.file_type() {
                    Ok(t) if t.is_dir() => next.push(entry.path()),
                    Ok(t) if t.is_file() && !folder.ignore.is_match(entry.file_name()) => {
                        misplaced.push(entry.path())
                    }
                    _ => {}
                }
            }
        }
        level = next;
    }
    let mut cases: Vec<PathBuf> = level
        .into_iter()
        .filter(|p| case_of(folder, p).as_deref() == Some(p))
        .collect();
    cases.sort();
    misplaced.sort();
    Ok(Listing { cases, misplaced })
}

/// The file among `path` and its parents, down to the depth of the cases, that sits where the drop
/// folder expects a folder (`ct-export/P06001/IM0001` at `depth = 2`), if there is one.
pub fn misplaced_file(folder: &Folder, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(&folder.path).ok()?;
    let mut at = folder.path.clone();
    for c in rel.components().take(folder.depth) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_file() => return Some(at),
            Ok(m) if m.is_dir() => {}
            _ => return None,
        }
    }
    None
}

/// Files found where case folders are expected, each logged once while it stays there: the agent
/// meets them in scans and in filesystem events, and would otherwise say so at every look.
#[derive(Debug, Default)]
pub struct MisplacedFiles {
    reported: std::collections::HashSet<PathBuf>,
}

impl MisplacedFiles {
    /// After a scan of `folder`: log the files not reported yet, forget those gone from it.
    pub fn scanned(&mut self, folder: &Folder, found: &[PathBuf]) {
        self.reported
            .retain(|p| !p.starts_with(&folder.path) || found.contains(p));
        for file in found {
            self.report(folder, file);
        }
    }

    /// A case to look at turned out to be `path`; if it is a file where a folder is expected, log it
    /// (once) and say so: it is no case, and looking again will not make it one.
    pub fn is_misplaced(&mut self, folder: &Folder, path: &Path) -> bool {
        match misplaced_file(folder, path) {
            Some(file) => {
                self.report(folder, &file);
                true
            }
            None => false,
        }
    }

    fn report(&mut self, folder: &Folder, file: &Path) {
        if self.reported.insert(file.to_owned()) {
            let rel = file.strip_prefix(&folder.path).unwrap_or(file);
            tracing::warn!(
                folder = %folder.path.display(),
                "{}",
                crate::rules::misplaced_file_text(folder, rel)
            );
        }
    }
}

/// Is `path` a folder between the drop folder and its cases (depth 1 to `depth - 1`)? Whatever is
/// created in a new folder before its watch is in place sends no event, so its arrival asks for a scan.
fn is_above_cases(folder: &Folder, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(&folder.path) else {
        return false;
    };
    let depth = rel.components().count();
    (1..folder.depth).contains(&depth)
        && !crate::rules::is_ignored(folder, rel)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Keeps the watches and timers alive; dropping it stops them all (e.g. on a config reload).
pub struct Watches {
    folders: Vec<FolderWatch>,
}

/// The watch of one drop folder: its events (if any) and its timers.
struct FolderWatch {
    path: PathBuf,
    mode: Mode,
    _watcher: Option<notify::RecommendedWatcher>,
    timers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        for t in &self.timers {
            t.abort();
        }
    }
}

impl Watches {
    /// How each folder is watched, in config order.
    pub fn modes(&self) -> Vec<&Mode> {
        self.folders.iter().map(|f| &f.mode).collect()
    }

    /// A scan of `folder` is due: if the folder was missing when its watch started and is there now, or
    /// was watched and is gone (its watch went with it), watch it afresh: with events once it is there,
    /// polled until it appears. Returns whether it did, and whether the folder is there.
    pub fn refresh(
        &mut self,
        folder: &Folder,
        reconcile_every: Duration,
        tx: &UnboundedSender<Hint>,
    ) -> Option<bool> {
        let w = self.folders.iter_mut().find(|w| w.path == folder.path)?;
        let there = folder.path.is_dir();
        let stale = match w.mode {
            Mode::Missing => there,
            Mode::Events => !there,
            Mode::Polling(_) => false,
        };
        if !stale {
            return None;
        }
        *w = watch_one(folder, reconcile_every, tx);
        Some(there)
    }
}

/// The remedy printed when the kernel refuses more watches.
pub const WATCH_LIMIT_HELP: &str = "the kernel's inotify watch limit is reached; raise it with \
     `sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d/ to keep it). \
     Until then this folder is polled, which is slower to notice new cases";

/// Start watching every folder; hints go to `tx`. Also sends the startup scans and starts the timers.
pub fn start(folders: &[Folder], reconcile_every: Duration, tx: UnboundedSender<Hint>) -> Watches {
    Watches {
        folders: folders
            .iter()
            .map(|f| watch_one(f, reconcile_every, &tx))
            .collect(),
    }
}

fn watch_one(
    folder: &Folder,
    reconcile_every: Duration,
    tx: &UnboundedSender<Hint>,
) -> FolderWatch {
    let _ = tx.send(Hint::Scan {
        folder: folder.path.clone(),
        why: ScanReason::Startup,
    });
    let mut watcher = None;
    let mode = match (folder.poll, network_fs_name(&folder.path)) {
        _ if !folder.path.is_dir() => Mode::Missing,
        (Poll::Always, _) => Mode::Polling("poll = \"always\" in the config".into()),
        (Poll::Auto, Some(fs)) => Mode::Polling(format!("{fs} filesystems send no change events")),
        (Poll::Auto, None) => match watch_folder(folder, tx.clone()) {
            Ok(w) => {
                watcher = Some(w);
                Mode::Events
            }
            Err(why) => Mode::Polling(why),
        },
    };
    let mut timers = Vec::new();
    match &mode {
        Mode::Events => tracing::info!(folder = %folder.path.display(), "watching for changes"),
        Mode::Polling(why) => {
            tracing::warn!(folder = %folder.path.display(), every = ?folder.poll_interval, "polling: {why}")
        }
        Mode::Missing => tracing::error!(
            folder = %folder.path.display(),
            every = ?folder.poll_interval,
            "the drop folder does not exist (yet); it is polled until it appears"
        ),
    }
    if mode != Mode::Events {
        timers.push(spawn_timer(
            tx.clone(),
            &folder.path,
            folder.poll_interval,
            ScanReason::Poll,
        ));
    }
    timers.push(spawn_timer(
        tx.clone(),
        &folder.path,
        reconcile_every,
        ScanReason::Reconcile,
    ));
    FolderWatch {
        path: folder.path.clone(),
        mode,
        _watcher: watcher,
        timers,
    }
}

fn spawn_timer(
    tx: UnboundedSender<Hint>,
    folder: &Path,
    every: Duration,
    why: ScanReason,
) -> tokio::task::JoinHandle<()> {
    let folder = folder.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx
                .send(Hint::Scan {
                    folder: folder.clone(),
                    why,
                })
                .is_err()
            {
                return;
            }
        }
    })
}

fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

fn watch_folder(
    folder: &Folder,
    tx: UnboundedSender<Hint>,
) -> Result<notify::RecommendedWatcher, String> {
    let f = folder.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) if event.need_rescan() => {
            tracing::warn!(folder = %f.path.display(), "the event queue overflowed; rescanning the folder");
            let _ = tx.send(Hint::Scan {
                folder: f.path.clone(),
                why: ScanReason::Overflow,
            });
        }
        // Opening or reading is not a change, and the agent reads every case it checks: counting those
        // events would make each check cause the next. A writer closing its file is a change.
        Ok(event) if is_read_only(&event.kind) => {}
        Ok(event) => {
            let arrived = matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            for path in &event.paths {
                if path == &f.path && !f.path.is_dir() {
                    let _ = tx.send(Hint::Scan {
                        folder: f.path.clone(),
                        why: ScanReason::FolderGone,
                    });
                } else if let Some(case_dir) = case_of(&f, path) {
                    let _ = tx.send(Hint::Case { case_dir });
                } else if arrived && is_above_cases(&f, path) {
                    let _ = tx.send(Hint::Scan {
                        folder: f.path.clone(),
                        why: ScanReason::NewFolder,
                    });
                }
            }
        }
        Err(e) => {
            if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                tracing::error!(folder = %f.path.display(), "{WATCH_LIMIT_HELP}");
            } else {
                tracing::warn!(folder = %f.path.display(), "watch error, rescanning: {e}");
            }
            let _ = tx.send(Hint::Scan {
                folder: f.path.clone(),
                why: ScanReason::WatchFailed,
            });
        }
    };
    let mut w =
        notify::recommended_watcher(handler).map_err(|e| format!("cannot start a watcher: {e}"))?;
    w.watch(&folder.path, RecursiveMode::Recursive)
        .map_err(|e| match e.kind {
            notify::ErrorKind::MaxFilesWatch => {
                tracing::error!(folder = %folder.path.display(), "{WATCH_LIMIT_HELP}");
                "the inotify watch limit is reached".to_owned()
            }
            _ => format!("cannot watch the folder: {e}"),
        })?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn folder(path: &Path, depth: usize) -> Folder {
        let text = format!(
            "[server]\nurl = \"http://localhost/api/v1/\"\n[[folder]]\npath = \"{}\"\narchive = \"a\"\ncase = \"p*\"\ndepth = {depth}\n[[folder.socket]]\nslug = \"s\"\nvalue = 1\n",
            path.display()
        );
        Config::parse(Path::new("/c.toml"), &text)
            .unwrap()
            .folders
            .remove(0)
    }

    #[test]
    fn network_filesystems_are_recognised_by_magic() {
        assert_eq!(fs_magic_name(0x6969), Some("nfs"));
        assert_eq!(fs_magic_name(0xFF53_4D42), Some("cifs"));
        assert_eq!(fs_magic_name(0x0102_1997), Some("9p"));
        assert_eq!(fs_magic_name(0xEF53), None, "ext4 sends events");
    }

    #[test]
    fn lists_case_folders_at_the_configured_depth() {
        let d = tempfile::tempdir().unwrap();
        for p in ["p1", "p2/x", "other", "site/p3", "site/q4"] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(d.path().join("p-file"), b"not a folder").unwrap();
        std::fs::write(
            d.path().join("site/IM0001"),
            b"a file where a case should be",
        )
        .unwrap();
        std::fs::write(d.path().join("site/.DS_Store"), b"hidden").unwrap();
        let one = list(&folder(d.path(), 1)).unwrap();
        assert_eq!(one.cases, [d.path().join("p1"), d.path().join("p2")]);
        assert_eq!(one.misplaced, [d.path().join("p-file")]);
        let two = list(&folder(d.path(), 2)).unwrap();
        assert_eq!(two.cases, [d.path().join("site/p3")]);
        assert_eq!(
            two.misplaced,
            [d.path().join("p-file"), d.path().join("site/IM0001")]
        );
        let f = folder(d.path(), 2);
        assert_eq!(
            misplaced_file(&f, &d.path().join("site/IM0001")),
            Some(d.path().join("site/IM0001"))
        );
        assert_eq!(misplaced_file(&f, &d.path().join("site/p3")), None);
        assert_eq!(misplaced_file(&f, &d.path().join("site/p3/x")), None);
    }

    #[tokio::test]
    async fn events_hint_the_case_including_folders_created_later() {
        let d = tempfile::tempdir().unwrap();
        let f = folder(d.path(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = start(std::slice::from_ref(&f), Duration::from_secs(3600), tx);
        assert_eq!(w.modes(), [&Mode::Events]);
        assert_eq!(
            rx.recv().await,
            Some(Hint::Scan {
                folder: d.path().to_owned(),
                why: ScanReason::Startup
            })
        );
        std::fs::create_dir_all(d.path().join("p9/deep/er")).unwrap();
        std::fs::write(d.path().join("p9/deep/er/a.dcm"), b"x").unwrap();
        let want = Hint::Case {
            case_dir: d.path().join("p9"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let h = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("a hint for p9 within 10 s");
            if h.as_ref() == Some(&want) {
                break;
            }
        }
        // A case moved in whole (the atomic-rename fast path) is hinted too.
        let staging = tempfile::tempdir_in(d.path().parent().unwrap()).unwrap();
        std::fs::write(staging.path().join("a.dcm"), b"x").unwrap();
        std::fs::rename(staging.path(), d.path().join("p10")).unwrap();
        let want = Hint::Case {
            case_dir: d.path().join("p10"),
        };
        loop {
            let h = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("a hint for p10 within 10 s");
            if h.as_ref() == Some(&want) {
                break;
            }
        }
    }
    #[tokio::test]
    async fn reading_a_case_is_not_a_change() {
        let d = tempfile::tempdir().unwrap();
        for p in ["p1/sub", "p2"] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(d.path().join("p1/sub/a.dcm"), b"x").unwrap();
        let f = folder(d.path(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = start(std::slice::from_ref(&f), Duration::from_secs(3600), tx);
        assert!(matches!(rx.recv().await, Some(Hint::Scan { .. })));
        // What a check does: list the case and read its files.
        crate::settle::snapshot(&d.path().join("p1")).unwrap();
        std::fs::read(d.path().join("p1/sub/a.dcm")).unwrap();
        // Events arrive in order: the hint for this later write must be the first one.
        std::fs::write(d.path().join("p2/b.dcm"), b"y").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert_eq!(
            first,
            Some(Hint::Case {
                case_dir: d.path().join("p2")
            })
        );
    }
}
