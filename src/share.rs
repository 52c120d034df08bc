//! Who may read what the agent creates for people: the folders it makes under `done/` and
//! `quarantine/` when it moves a case, and an algorithm's results in the outbox.
//!
//! The service runs with `UMask=0077`, so that its state stays its own; left at that, a result written
//! for the radiologists would be readable by the service alone. A drop folder is shared with its people
//! through its group, so what the agent creates for them takes the drop folder's group and the drop
//! folder's group permissions (and its set-group-ID bit, so that folders made below keep the group), and
//! nothing for others. A folder's `mode` sets the files' permissions instead (folders get the matching
//! search bits). The decision ([`Sharing::modes`]) is pure; applying it is a `chmod` and a `chown` of
//! the group, which the service may do for a group it is a member of.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The group and the permissions to give what the agent creates beside one drop folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    /// The drop folder's group; `None` where it could not be read (then the group is left alone).
    pub gid: Option<u32>,
    pub dir_mode: u32,
    pub file_mode: u32,
}

impl Sharing {
    /// The permissions for folders and files, from the drop folder's mode and a folder's `mode`: the
    /// owner reads and writes; the group gets the drop folder's group bits (or `configured`'s); others
    /// get nothing unless `configured` gives it; folders are searchable where they are readable.
    pub fn modes(drop_mode: u32, configured: Option<u32>) -> (u32, u32) {
        let file_mode = match configured {
            Some(m) => (m & 0o666) | 0o600,
            None => 0o600 | (drop_mode & 0o060),
        };
        // A folder is searchable by whoever may read it, and keeps the drop folder's set-group-ID.
        let readable = file_mode & 0o444;
        let dir_mode = file_mode | (readable >> 2) | (drop_mode & 0o2000) | 0o100;
        (dir_mode, file_mode)
    }

    /// The sharing of what is created for the drop folder `drop`.
    pub fn of(drop: &Path, configured: Option<u32>) -> Sharing {
        let meta = std::fs::metadata(drop).ok();
        let (dir_mode, file_mode) =
            Sharing::modes(meta.as_ref().map_or(0, |m| m.mode()), configured);
        Sharing {
            gid: meta.map(|m| m.gid()),
            dir_mode,
            file_mode,
        }
    }

    /// Create `dir` and its missing parents, each shared as a folder.
    pub fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            missing.push(d);
            at = d.parent();
        }
        std::fs::create_dir_all(dir)?;
        for d in missing.into_iter().rev() {
            self.apply(d, self.dir_mode);
        }
        Ok(())
    }

    /// Share `root` and everything below it (symbolic links are not followed).
    pub fn tree(&self, root: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            return;
        };
        if meta.is_dir() {
            self.apply(root, self.dir_mode);
            if let Ok(entries) = std::fs::read_dir(root) {
                for e in entries.flatten() {
                    self.tree(&e.path());
                }
            }
        } else if meta.is_file() {
            self.apply(root, self.file_mode);
        }
    }

    /// Group first, mode second: changing the group clears the set-group-ID bit on some systems. Only
    /// what differs is changed: in a set-group-ID drop folder with the unit's umask, new entries are
    /// born with the right group and bits, and a service that may not set set-group-ID bits
    /// (`RestrictSUIDSGID=`) or name unmapped groups (`PrivateUsers=`) has nothing to do.
    fn apply(&self, path: &Path, mode: u32) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let mut current = meta.mode() & 0o7777;
        if let Some(gid) = self.gid
            && meta.gid() != gid
        {
            match std::os::unix::fs::chown(path, None, Some(gid)) {
                // A change of group may have cleared the set-group-ID bit: look again.
                Ok(()) => {
                    current = std::fs::symlink_metadata(path).map_or(current, |m| m.mode() & 0o7777)
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "cannot give it the drop folder's group {gid} (is the service's user a member?): {e}"
                ),
            }
        }
        if current & 0o777 == mode & 0o777 && current & 0o2000 >= mode & 0o2000 {
            return;
        }
        // A set-group-ID bit the folder was born with stays; one that a sandbox forbids setting is
        // given up rather than the group's access (the group itself is already right).
        let wanted = mode | (current & 0o2000);
        let set = |m: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(m));
        if let Err(e) = set(wanted).or_else(|_| set(wanted & 0o777)) {
            tracing::warn!(path = %path.display(), "cannot set its permissions to {wanted:o}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_entries_follow_the_drop_folders_group_bits() {
        // A shared drop folder, set-group-ID: the group reads and writes, others nothing.
        assert_eq!(Sharing::modes(0o2770, None), (0o2770, 0o660));
        // A group that may only read.
        assert_eq!(Sharing::modes(0o750, None), (0o750, 0o640));
        // A private drop folder stays private.
        assert_eq!(Sharing::modes(0o700, None), (0o700, 0o600));
        // Others' bits of the drop folder are never copied: patient data.
        assert_eq!(Sharing::modes(0o755, None), (0o750, 0o640));
        // A configured mode decides the files; folders become searchable where readable.
        assert_eq!(Sharing::modes(0o2770, Some(0o644)), (0o2755, 0o644));
        assert_eq!(Sharing::modes(0o700, Some(0o400)), (0o700, 0o600));
    }

    #[test]
    fn missing_parents_are_created_shared_and_existing_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("done");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o711)).unwrap();
        let sharing = Sharing {
            gid: None,
            dir_mode: 0o750,
            file_mode: 0o640,
        };
        sharing.create_dir_all(&existing.join("P1/2024")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&existing), 0o711);
        assert_eq!(mode(&existing.join("P1")), 0o750);
        assert_eq!(mode(&existing.join("P1/2024")), 0o750);
        std::fs::write(existing.join("P1/2024/r.json"), "1").unwrap();
        sharing.tree(&existing.join("P1"));
        assert_eq!(mode(&existing.join("P1/2024/r.json")), 0o640);
    }
}
