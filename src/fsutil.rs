//! Atomic file writes: a reader sees the old file or the new one, never half of either, even after a crash.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: temp file in the same folder, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Remove the folders between `moved` (a case folder just moved away) and `root` (its drop or quarantine
/// folder) that the move left empty, deepest first: a patient folder `P1/` whose only study was moved
/// to `done/`. A folder that is not empty (another study, a file arriving) stays, and so does `root`.
pub fn remove_empty_parents(moved: &Path, root: &Path) {
    let mut dir = moved.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}
