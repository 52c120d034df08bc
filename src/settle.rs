//! When is a case complete? Only when it has stopped changing.
//!
//! Filesystem events are hints; readiness is decided from stat snapshots (size, mtime, ctime, inode of
//! every file). This module takes those snapshots; it never follows a symbolic link, so a case can never
//! pull in files from outside its folder.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::rules::CaseFile;

/// The state of one regular file at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub rel: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

/// Something in a case folder that is not a regular file and is therefore not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub rel: PathBuf,
    pub why: String,
}

/// All regular files below a case folder, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub files: Vec<FileStat>,
    pub skipped: Vec<Skipped>,
}

impl Snapshot {
    /// The files left out of the case, each with why, as a receipt lists them.
    pub fn skipped_lines(&self) -> Vec<String> {
        self.skipped
            .iter()
            .map(|s| format!("{}: {}", s.rel.display(), s.why))
            .collect()
    }

    /// A digest of every file's (path, size, mtime, ctime, inode): equal fingerprints mean nothing changed
    /// that a writer could have changed, without reading a byte of content.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for s in &self.skipped {
            h.update(s.rel.as_os_str().as_encoded_bytes());
            h.update(b"\0skipped\n");
        }
        for f in &self.files {
            h.update(f.rel.as_os_str().as_encoded_bytes());
            h.update(format!(
                "\0{}\0{}\0{}\0{}\n",
                f.size, f.mtime_ns, f.ctime_ns, f.ino
            ));
        }
        hex::encode(h.finalize())
    }

    pub fn case_files(&self) -> Vec<CaseFile> {
        self.files
            .iter()
            .map(|f| CaseFile {
                rel: f.rel.clone(),
                size: f.size,
            })
            .collect()
    }
}

/// Walk a case folder without following symbolic links.
pub fn snapshot(case_dir: &Path) -> std::io::Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let entries = match std::fs::read_dir(case_dir.join(&rel_dir)) {
            Ok(e) => e,
            Err(e) if rel_dir.as_os_str().is_empty() => return Err(e),
            Err(e) => {
                snap.skipped.push(Skipped {
                    rel: rel_dir,
                    why: format!("cannot list the folder: {e}"),
                });
                continue;
            }
        };
        for entry in entries {
            let entry = entry?;
            let rel = rel_dir.join(entry.file_name());
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                // Deleted between listing and stat: it is simply not part of this snapshot.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                snap.skipped.push(Skipped {
                    rel,
                    why: "symbolic link (not followed)".into(),
                });
            } else if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_file() {
                snap.files.push(FileStat {
                    rel,
                    size: meta.len(),
                    mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                    ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
                    ino: meta.ino(),
                });
            } else {
                snap.skipped.push(Skipped {
                    rel,
                    why: "not a regular file".into(),
                });
            }
        }
    }
    snap.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    snap.skipped.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(snap)
}

/// The folder rules readiness depends on.
#[derive(Debug, Clone)]
pub struct SettleRules {
    pub quiet: Duration,
    pub max_wait: Duration,
    pub marker: Option<PathBuf>,
    pub ignore: globset::GlobSet,
}

impl SettleRules {
    pub fn of(folder: &crate::config::Folder) -> SettleRules {
        SettleRules {
            quiet: folder.quiet,
            max_wait: folder.max_wait,
            marker: folder.marker.as_ref().map(PathBuf::from),
            ignore: folder.ignore.clone(),
        }
    }

    fn is_temp(&self, rel: &Path) -> bool {
        rel.components()
            .any(|c| self.ignore.is_match(Path::new(c.as_os_str())))
    }
}

/// Why a case is not ready yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Something changed less than the quiet window ago.
    Changing,
    /// Temp files of a copy tool or editor are still there.
    TempFiles(Vec<PathBuf>),
    /// The configured completion marker is not there yet.
    NoMarker,
    /// The folder holds no file at all.
    Empty,
}

/// The verdict on one case at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stable for the quiet window, complete, no temp files: deliver this snapshot.
    Ready,
    /// Look again at `recheck_at` (agent clock), or sooner if an event or scan says something changed.
    Wait { why: Waiting, recheck_at: Duration },
    /// Still not ready after `max_wait`: keep watching, and say so loudly (once).
    Stuck {
        why: Waiting,
        waited: Duration,
        first_report: bool,
    },
}

/// The per-case memory readiness needs: when it was first seen and when it last changed. Times are an
/// agent clock (time since start), so tests drive it by hand.
#[derive(Debug, Clone)]
pub struct Tracker {
    first_seen: Duration,
    last_change: Duration,
    last: Option<Snapshot>,
    reported_stuck: bool,
}

impl Tracker {
    pub fn new(now: Duration) -> Tracker {
        Tracker {
            first_seen: now,
            last_change: now,
            last: None,
            reported_stuck: false,
        }
    }

    /// When the case was first seen (or seen again after it changed during a delivery), on the agent
    /// clock.
    pub fn first_seen(&self) -> Duration {
        self.first_seen
    }

    /// When something last changed, on the agent clock.
    pub fn last_change(&self) -> Duration {
        self.last_change
    }

    /// Record a snapshot taken at `now` and decide.
    pub fn observe(&mut self, now: Duration, snap: &Snapshot, rules: &SettleRules) -> Decision {
        if self.last.as_ref() != Some(snap) {
            self.last = Some(snap.clone());
            self.last_change = now;
        }
        let temp: Vec<PathBuf> = snap
            .files
            .iter()
            .filter(|f| rules.is_temp(&f.rel))
            .map(|f| f.rel.clone())
            .collect();
        let quiet_until = self.last_change + rules.quiet;
        // Entries that are not taken (links, sockets) still make a case non-empty: it gets planned, and
        // quarantined with a reason, instead of waiting forever.
        let why = if snap.files.is_empty() && snap.skipped.is_empty() {
            Some(Waiting::Empty)
        } else if !temp.is_empty() {
            Some(Waiting::TempFiles(temp))
        } else if rules
            .marker
            .as_ref()
            .is_some_and(|m| !snap.files.iter().any(|f| &f.rel == m))
        {
            Some(Waiting::NoMarker)
        } else if now < quiet_until {
            Some(Waiting::Changing)
        } else {
            None
        };
        let Some(why) = why else {
            return Decision::Ready;
        };
        let waited = now.saturating_sub(self.first_seen);
        if waited >= rules.max_wait {
            let first_report = !self.reported_stuck;
            self.reported_stuck = true;
            return Decision::Stuck {
                why,
                waited,
                first_report,
            };
        }
        // A running quiet window is the only wait with a known end. Anything else (a marker, temp files)
        // changes through a filesystem event or shows in a scan, so no timer polls it, except one to
        // report it stuck when max_wait is up.
        let recheck_at = if why == Waiting::Changing {
            quiet_until
        } else {
            self.first_seen + rules.max_wait
        };
        Decision::Wait { why, recheck_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(rel: &str, size: u64, mtime: i128) -> FileStat {
        FileStat {
            rel: PathBuf::from(rel),
            size,
            mtime_ns: mtime,
            ctime_ns: mtime,
            ino: 1,
        }
    }

    fn snap(files: &[FileStat]) -> Snapshot {
        Snapshot {
            files: files.to_vec(),
            skipped: vec![],
        }
    }

    fn rules(marker: Option<&str>) -> SettleRules {
        let mut b = globset::GlobSetBuilder::new();
        for p in crate::config::DEFAULT_IGNORE {
            b.add(globset::Glob::new(p).unwrap());
        }
        SettleRules {
            quiet: Duration::from_secs(30),
            max_wait: Duration::from_secs(600),
            marker: marker.map(PathBuf::from),
            ignore: b.build().unwrap(),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ready_only_after_a_full_quiet_window_without_change() {
        let r = rules(None);
        let mut t = Tracker::new(S(0));
        let a = snap(&[stat("a.mha", 10, 1)]);
        assert_eq!(
            t.observe(S(0), &a, &r),
            Decision::Wait {
                why: Waiting::Changing,
                recheck_at: S(30)
            }
        );
        assert_eq!(
            t.observe(S(29), &a, &r),
            Decision::Wait {
                why: Waiting::Changing,
                recheck_at: S(30)
            }
        );
        assert_eq!(t.observe(S(30), &a, &r), Decision::Ready);
    }

    #[test]
    fn any_change_restarts_the_quiet_window() {
        let r = rules(None);
        let mut t = Tracker::new(S(0));
        t.observe(S(0), &snap(&[stat("a", 10, 1)]), &r);
        // Same size, newer mtime: a writer that rewrote in place still counts as a change.
        let d = t.observe(S(25), &snap(&[stat("a", 10, 2)]), &r);
        assert_eq!(
            d,
            Decision::Wait {
                why: Waiting::Changing,
                recheck_at: S(55)
            }
        );
        assert_eq!(
            t.observe(S(54), &snap(&[stat("a", 10, 2)]), &r),
            Decision::Wait {
                why: Waiting::Changing,
                recheck_at: S(55)
            }
        );
        assert_eq!(
            t.observe(S(55), &snap(&[stat("a", 10, 2)]), &r),
            Decision::Ready
        );
    }

    #[test]
    fn temp_files_marker_and_emptiness_block_readiness() {
        let mut t = Tracker::new(S(0));
        let r = rules(None);
        let with_part = snap(&[stat("a", 1, 1), stat("ct/b.dcm.part", 1, 1)]);
        assert!(
            matches!(t.observe(S(100), &with_part, &r), Decision::Wait { why: Waiting::TempFiles(ref v), .. } if v == &[PathBuf::from("ct/b.dcm.part")])
        );
        assert!(matches!(
            t.observe(S(100), &snap(&[]), &r),
            Decision::Wait {
                why: Waiting::Empty,
                ..
            }
        ));

        let r = rules(Some("DONE"));
        let mut t = Tracker::new(S(0));
        let files = snap(&[stat("a", 1, 1)]);
        assert!(matches!(
            t.observe(S(0), &files, &r),
            Decision::Wait {
                why: Waiting::NoMarker,
                ..
            }
        ));
        assert!(matches!(
            t.observe(S(40), &files, &r),
            Decision::Wait {
                why: Waiting::NoMarker,
                ..
            }
        ));
        let done = snap(&[stat("DONE", 0, 2), stat("a", 1, 1)]);
        assert!(
            matches!(
                t.observe(S(41), &done, &r),
                Decision::Wait {
                    why: Waiting::Changing,
                    ..
                }
            ),
            "the marker is a change too"
        );
        assert_eq!(t.observe(S(71), &done, &r), Decision::Ready);
    }

    #[test]
    fn a_case_that_never_settles_is_reported_stuck_once_and_kept() {
        let r = rules(None);
        let mut t = Tracker::new(S(0));
        let mut reports = 0;
        for i in 0..100u64 {
            // A writer that never pauses longer than the quiet window.
            match t.observe(S(i * 20), &snap(&[stat("a", i, i as i128)]), &r) {
                Decision::Stuck {
                    first_report,
                    waited,
                    ..
                } => {
                    assert!(waited >= S(600));
                    reports += usize::from(first_report);
                }
                Decision::Wait { .. } => assert!(i * 20 < 600),
                Decision::Ready => panic!("never ready while changing"),
            }
        }
        assert_eq!(reports, 1);
        assert_eq!(
            t.observe(S(5000), &snap(&[stat("a", 99, 99)]), &r),
            Decision::Ready,
            "and delivered once it settles"
        );
    }

    #[test]
    fn snapshots_files_recursively_and_never_follows_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let case = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(case.path().join("ct/sub")).unwrap();
        std::fs::write(case.path().join("ct/sub/a.dcm"), b"abc").unwrap();
        std::fs::write(case.path().join("b.json"), b"1").unwrap();
        std::os::unix::fs::symlink(outside.path(), case.path().join("link")).unwrap();
        let s = snapshot(case.path()).unwrap();
        let rels: Vec<_> = s
            .files
            .iter()
            .map(|f| f.rel.to_string_lossy().into_owned())
            .collect();
        assert_eq!(rels, ["b.json", "ct/sub/a.dcm"]);
        assert_eq!(s.files[1].size, 3);
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].rel, Path::new("link"));
    }
}
