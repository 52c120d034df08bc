//! When is a case complete? Only when it has stopped changing.
//!
//! Filesystem events are hints; readiness is decided from stat snapshots (size, mtime, ctime, inode of
//! every file). This module takes those snapshots; it never follows a symbolic link, so a case can never
//! pull in files from outside its folder.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    pub fn case_files(&self) -> Vec<CaseFile> {
        self.files.iter().map(|f| CaseFile { rel: f.rel.clone(), size: f.size }).collect()
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
                snap.skipped.push(Skipped { rel: rel_dir, why: format!("cannot list the folder: {e}") });
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
                snap.skipped.push(Skipped { rel, why: "symbolic link (not followed)".into() });
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
                snap.skipped.push(Skipped { rel, why: "not a regular file".into() });
            }
        }
    }
    snap.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    snap.skipped.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rels: Vec<_> = s.files.iter().map(|f| f.rel.to_string_lossy().into_owned()).collect();
        assert_eq!(rels, ["b.json", "ct/sub/a.dcm"]);
        assert_eq!(s.files[1].size, 3);
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].rel, Path::new("link"));
    }
}
