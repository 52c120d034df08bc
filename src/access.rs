//! Whether the service could reach the files a config names.
//!
//! The systemd unit runs the agent as a dynamic user that owns nothing outside its state directory and is
//! in no group of the machine. A config checked by root can therefore name files that root reads and the
//! service cannot (a 0700 directory, a 0600 token file), and the service then stops at start with
//! "Permission denied". `check` warns about that up front. The verdict uses only the permission bits for
//! "other users", which is what such a user gets; a folder shared through a group
//! (`SupplementaryGroups=`) is accepted when the group may enter and read it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the service needs to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a file.
    ReadFile,
    /// List a folder and enter it (a drop folder; a shared group may grant it).
    ListFolder,
}

/// One path on the way, as `stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
}

/// Why the service could not get at a path: the first step that stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub what: &'static str,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (mode {:04o}, owner uid {}) {}",
            self.path.display(),
            self.mode & 0o7777,
            self.uid,
            self.what
        )
    }
}

/// The verdict on a path given its ancestors (outermost first) and the path itself (last).
pub fn verdict(chain: &[Step], need: Need) -> Option<Blocked> {
    let (last, ancestors) = chain.split_last()?;
    let block = |s: &Step, what| Blocked {
        path: s.path.clone(),
        mode: s.mode,
        uid: s.uid,
        what,
    };
    for s in ancestors {
        if s.mode & 0o001 == 0 {
            return Some(block(s, "cannot be entered by other users"));
        }
    }
    match need {
        Need::ReadFile if last.mode & 0o004 == 0 => {
            Some(block(last, "cannot be read by other users"))
        }
        Need::ListFolder if last.mode & 0o005 != 0o005 && last.mode & 0o050 != 0o050 => Some(
            block(last, "cannot be listed by other users nor by its group"),
        ),
        _ => None,
    }
}

/// Stat `path` and its ancestors. `None` when something on the way does not exist (other checks report that).
fn chain(path: &Path) -> Option<Vec<Step>> {
    let path = std::path::absolute(path).ok()?;
    let mut steps: Vec<Step> = path
        .ancestors()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Step {
                path: p.to_owned(),
                mode: m.mode(),
                uid: m.uid(),
            })
        })
        .collect::<Option<_>>()?;
    steps.reverse();
    Some(steps)
}

/// Whether another, unprivileged user could do `need` with `path`; `None` if nothing is in the way (or the
/// path does not exist).
pub fn blocked_for_service(path: &Path, need: Need) -> Option<Blocked> {
    verdict(&chain(path)?, need)
}

/// Warnings for every file of `config` that the service's dynamic user could not use, each naming the
/// config key and the fix.
pub fn service_warnings(config: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(b) = blocked_for_service(&config.file, Need::ReadFile) {
        out.push(format!(
            "{}: the service cannot read this config: {b}; make its folder 0755 and the file 0644 \
             (the token belongs in the credential file, not in the config)",
            config.file.display()
        ));
    }
    if let Some(f) = &config.server.token_file
        && let Some(b) = blocked_for_service(f, Need::ReadFile)
    {
        out.push(format!(
            "server.token_file: the service cannot read {}: {b}; leave token_file out and let systemd \
             pass the token with LoadCredential=gc-token:{} (see the unit)",
            f.display(),
            f.display()
        ));
    }
    if let Some(f) = &config.server.ca_cert
        && let Some(b) = blocked_for_service(f, Need::ReadFile)
    {
        out.push(format!(
            "server.ca_cert: the service cannot read {}: {b}; make it readable by everyone (a CA \
             certificate is no secret)",
            f.display()
        ));
    }
    for f in &config.folders {
        if let Some(b) = blocked_for_service(&f.path, Need::ListFolder) {
            out.push(format!(
                "folder[{}].path: the service cannot list {}: {b}; give it a group that may \
                 (SupplementaryGroups= in a drop-in) or open the folder to other users",
                f.index,
                f.path.display()
            ));
        }
    }
    out
}

/// What `status` found in its way to the journal, for [`journal_denied_text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalDenied {
    pub journal: PathBuf,
    /// The nearest of the journal, its folder and their ancestors that could be looked at: its path,
    /// owner and mode.
    pub blocker: Option<(PathBuf, String, u32)>,
    /// Who ran the command.
    pub me: String,
    /// Where the running agent serves `/status`, if the config says.
    pub status_at: Option<std::net::SocketAddr>,
}

/// Why the journal cannot be read, if it is permissions: the current user may not open it (or a
/// folder on its way, or the `-shm` file an agent has open). `None` for other failures.
pub fn journal_denied(
    state_dir: &Path,
    status_at: Option<std::net::SocketAddr>,
) -> Option<JournalDenied> {
    let journal = state_dir.join("journal.sqlite3");
    let denied = |p: &Path| {
        std::fs::File::open(p).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    };
    let shm = journal.with_extension("sqlite3-shm");
    let shm_denied = shm.exists() && denied(&shm);
    if !(denied(&journal) || shm_denied) {
        return None;
    }
    let blocker = first_closed(&journal).map(|s| (s.path, user_name(s.uid), s.mode & 0o7777));
    Some(JournalDenied {
        journal,
        blocker,
        me: user_name(unsafe { libc::geteuid() }),
        status_at,
    })
}

/// The last step on the way to `path` that the current user can look at: the folder it may not pass
/// through, or `path` itself when it gets that far. Symbolic links are followed by hand, so that a
/// `/var/lib/gc-hotfolder` pointing into a closed `/var/lib/private` names the closed folder.
fn first_closed(path: &Path) -> Option<Step> {
    let mut target = std::path::absolute(path).ok()?;
    for _ in 0..40 {
        let mut at = PathBuf::new();
        let mut last = None;
        let mut redirected = None;
        for c in target.components() {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    let link = std::fs::read_link(&at).ok()?;
                    let rest = target.strip_prefix(&at).ok()?;
                    redirected = Some(at.parent()?.join(link).join(rest));
                    break;
                }
                Ok(m) => {
                    last = Some(Step {
                        path: at.clone(),
                        mode: m.mode(),
                        uid: m.uid(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return last,
                Err(_) => return None,
            }
        }
        match redirected {
            Some(t) => target = t,
            None => return last,
        }
    }
    None
}

/// "name (uid N)", or "uid N" for a user the system does not name (a dynamic user that is gone).
pub fn user_name(uid: u32) -> String {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the name is copied before `buf` goes.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return format!("uid {uid}");
    }
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    format!("{} (uid {uid})", name.to_string_lossy())
}

/// The explanation `status` gives when the journal is not readable to the person running it: which
/// file, who may read it, and the two ways to let an operator group read status.
pub fn journal_denied_text(d: &JournalDenied) -> String {
    let owner = match &d.blocker {
        Some((path, owner, mode)) if *path == d.journal => format!(
            "It belongs to {owner} (mode {mode:04o}), and this command runs as {}: run status as \
             that user or as root (sudo).",
            d.me
        ),
        Some((path, owner, mode)) => format!(
            "{} (owner {owner}, mode {mode:04o}) lets no one else through, and this command runs \
             as {}: run status as the service's user or as root (sudo).",
            path.display(),
            d.me
        ),
        None => format!("This command runs as {}: run status as root (sudo).", d.me),
    };
    let endpoint = match d.status_at {
        Some(addr) => format!(
            "the running agent serves the same report to local users: curl -s http://{addr}/status"
        ),
        None => "let the running agent serve the same report to local users: [metrics] listen = \
                 \"127.0.0.1:9898\" in the config, then curl -s http://127.0.0.1:9898/status"
            .to_owned(),
    };
    format!(
        "cannot read the journal {}. {owner} To let an operator group read status without sudo: \
         {endpoint}; or make the journal readable by the group: the state folder and its files \
         group-owned and group-readable (chgrp -R GROUP DIR; chmod -R g+rX DIR; UMask=0027 for the \
         agent's new files), which a service with DynamicUser= cannot have, as its state lives \
         below the root-only /var/lib/private.",
        d.journal.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str, mode: u32) -> Step {
        Step {
            path: path.into(),
            mode: 0o040000 | mode,
            uid: 0,
        }
    }

    fn file(path: &str, mode: u32) -> Step {
        Step {
            path: path.into(),
            mode: 0o100000 | mode,
            uid: 0,
        }
    }

    #[test]
    fn a_journal_others_cannot_read_is_explained_with_owner_and_ways_out() {
        let d = JournalDenied {
            journal: "/var/lib/gc-hotfolder/journal.sqlite3".into(),
            blocker: Some((
                "/var/lib/gc-hotfolder/journal.sqlite3".into(),
                "gc-hotfolder (uid 61000)".into(),
                0o600,
            )),
            me: "alice (uid 1000)".into(),
            status_at: Some("127.0.0.1:9898".parse().unwrap()),
        };
        let t = journal_denied_text(&d);
        for part in [
            "cannot read the journal /var/lib/gc-hotfolder/journal.sqlite3",
            "belongs to gc-hotfolder (uid 61000) (mode 0600)",
            "runs as alice (uid 1000)",
            "curl -s http://127.0.0.1:9898/status",
            "group-readable",
        ] {
            assert!(t.contains(part), "{part}: {t}");
        }
        let t = journal_denied_text(&JournalDenied {
            blocker: Some(("/var/lib/private".into(), "root (uid 0)".into(), 0o700)),
            status_at: None,
            ..d
        });
        assert!(
            t.contains("/var/lib/private (owner root (uid 0), mode 0700) lets no one else through")
                && t.contains("[metrics] listen"),
            "{t}"
        );
    }

    #[test]
    fn a_root_only_folder_blocks_the_file_inside() {
        let chain = [
            dir("/", 0o755),
            dir("/etc", 0o755),
            dir("/etc/gc-hotfolder", 0o700),
            file("/etc/gc-hotfolder/config.toml", 0o644),
        ];
        let b = verdict(&chain, Need::ReadFile).unwrap();
        assert_eq!(b.path, Path::new("/etc/gc-hotfolder"));
        assert_eq!(
            b.to_string(),
            "/etc/gc-hotfolder (mode 0700, owner uid 0) cannot be entered by other users"
        );
    }

    #[test]
    fn a_private_file_is_blocked_and_a_public_one_is_not() {
        let mut chain = vec![dir("/", 0o755), dir("/etc", 0o755), file("/etc/t", 0o600)];
        assert_eq!(
            verdict(&chain, Need::ReadFile).unwrap().what,
            "cannot be read by other users"
        );
        chain[2] = file("/etc/t", 0o644);
        assert_eq!(verdict(&chain, Need::ReadFile), None);
        // Traversal only needs x on the way.
        chain[1] = dir("/etc", 0o711);
        assert_eq!(verdict(&chain, Need::ReadFile), None);
    }

    #[test]
    fn a_drop_folder_may_be_shared_through_its_group() {
        let base = [dir("/", 0o755), dir("/srv", 0o755)];
        let with = |last: Step| {
            let mut c = base.to_vec();
            c.push(last);
            verdict(&c, Need::ListFolder)
        };
        assert_eq!(with(dir("/srv/drop", 0o2770)), None);
        assert_eq!(with(dir("/srv/drop", 0o755)), None);
        assert!(with(dir("/srv/drop", 0o700)).is_some());
        assert!(with(dir("/srv/drop", 0o740)).is_some(), "r without x");
    }
}
