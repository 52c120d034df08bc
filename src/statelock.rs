//! One agent per state folder.
//!
//! Two agents on one journal would both pick up the same ready case and deliver it twice: exactly once
//! rests on a single agent deciding. So `run` (and the demo's agent) takes an exclusive advisory lock on
//! `<state_dir>/agent.lock` for as long as it runs, and a second one refuses to start, naming the
//! process that holds it. The kernel drops the lock when its holder dies, `kill -9` included, so a
//! crash never leaves a stale lock behind. Commands that only read (`status`, `check`, `receipts`,
//! `explain`) and `upload` (which shares the journal by design) do not take it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Held while the agent runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another agent{holder} is already running on the state folder {dir}: stop it first (two agents on one journal could deliver a case twice)"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock the state folder ({path}): {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StateLock {
    /// Take the lock of `state_dir` (created if need be) without waiting.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("agent.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared with the call.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (process {pid})"),
            };
            return Err(LockError::Held {
                dir: state_dir.to_owned(),
                holder,
            });
        }
        // Who holds it, for the message a second agent prints.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process conflicts
        // just as another process's would.
        let second = StateLock::acquire(dir.path()).unwrap_err();
        let said = second.to_string();
        assert!(
            said.contains(&format!("process {}", std::process::id())),
            "{said}"
        );
        assert!(said.contains(&dir.path().display().to_string()), "{said}");
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
