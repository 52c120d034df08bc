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

/// The case folders currently inside a drop folder (symbolic links are not followed).
pub fn list_cases(folder: &Folder) -> std::io::Result<Vec<PathBuf>> {
    let mut level = vec![folder.path.clone()];
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
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(entry.path());
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
    Ok(cases)
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

    /// A poll found `folder` on disk: if it was missing when its watch started, watch it again, with
    /// events where it can have them. Returns whether it did.
    pub fn appeared(
        &mut self,
        folder: &Folder,
        reconcile_every: Duration,
        tx: &UnboundedSender<Hint>,
    ) -> bool {
        let Some(w) = self.folders.iter_mut().find(|w| w.path == folder.path) else {
            return false;
        };
        if w.mode != Mode::Missing || !folder.path.is_dir() {
            return false;
        }
        *w = watch_one(folder, reconcile_every, tx);
        true
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
            for path in &event.paths {
                if let Some(case_dir) = case_of(&f, path) {
                    let _ = tx.send(Hint::Case { case_dir });
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
        let cases = list_cases(&folder(d.path(), 1)).unwrap();
        assert_eq!(cases, [d.path().join("p1"), d.path().join("p2")]);
        let cases = list_cases(&folder(d.path(), 2)).unwrap();
        assert_eq!(cases, [d.path().join("site/p3")]);
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
