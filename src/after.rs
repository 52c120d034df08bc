//! What happens to a delivered case folder: left in place, deleted, or moved out of the drop folder, as
//! the folder's `after` says. The delivery is done whatever happens here; a post-action that fails (a
//! folder the service may not move) leaves the case where it is, and says so where people look: the
//! journal (so `status` lists it), the case's receipt, and an alert. The agent tries it again with
//! back-off, at each start and on `retry`.

use std::path::{Path, PathBuf};

use crate::config::{After, Folder};
use crate::journal::{Journal, JournalError};
use crate::receipt::CaseKey;
use crate::rules;

/// What became of a delivered case's post-action.
#[derive(Debug, PartialEq, Eq)]
pub enum PostAction {
    /// Nothing to do: `after = "leave"`, or the folder is already gone.
    Nothing,
    Done,
    /// It failed, `failures` times in a row now, for `reason`.
    Failed {
        failures: u32,
        reason: String,
    },
}

/// A delivered case, where its post-action applies.
pub struct Delivered<'a> {
    pub folder: &'a Folder,
    pub case_dir: &'a Path,
    /// The case's path inside its drop folder.
    pub case: &'a Path,
    /// The case's journal record.
    pub id: i64,
}

/// Apply the folder's post-action to a delivered case, and record how it went: a failure in the
/// journal and the receipt (once per reason), a success after failures by clearing both.
pub fn apply(
    c: &Delivered<'_>,
    journal: &Journal,
    receipts: &Path,
) -> Result<PostAction, JournalError> {
    if c.folder.after == After::Leave {
        return Ok(PostAction::Nothing);
    }
    let key = CaseKey {
        folder: &c.folder.path,
        case: c.case,
    };
    let case = rules::path_text(c.case);
    if !c.case_dir.exists() {
        journal.post_action_done(c.id)?;
        return Ok(PostAction::Nothing);
    }
    match act(c, receipts, key) {
        Ok(done) => {
            tracing::info!(case, "post-action done: {done}");
            let failed_before = journal.post_action_done(c.id)?;
            if failed_before
                && let Err(e) =
                    crate::receipt::record_post_action(receipts, &c.folder.target_slug, key, None)
            {
                tracing::warn!(
                    case,
                    "cannot clear the post-action's failure in the receipt: {e}"
                );
            }
            Ok(PostAction::Done)
        }
        Err(e) => {
            let reason = format!(
                "post-action ({}) failed, the case stays where it is: {e}",
                c.folder.after
            );
            let failures = journal.post_action_failed(c.id, &reason)?;
            if failures == 1 {
                tracing::error!(case, "{reason}");
                if let Err(e) = crate::receipt::record_post_action(
                    receipts,
                    &c.folder.target_slug,
                    key,
                    Some(&reason),
                ) {
                    tracing::warn!(
                        case,
                        "cannot note the failed post-action in the receipt: {e}"
                    );
                }
            } else {
                tracing::warn!(case, failures, "{reason}");
            }
            Ok(PostAction::Failed { failures, reason })
        }
    }
}

/// The post-action itself: what was done, for the log.
fn act(c: &Delivered<'_>, receipts: &Path, key: CaseKey<'_>) -> std::io::Result<String> {
    match &c.folder.after {
        After::Leave => Ok("left in place".into()),
        After::Delete => std::fs::remove_dir_all(c.case_dir).map(|()| "deleted".to_owned()),
        After::Move(dest) => {
            let to = move_case(c.case_dir, &dest.join(c.case), c.folder)?;
            if let Err(e) = crate::receipt::record_move(receipts, &c.folder.target_slug, key, &to) {
                tracing::warn!(case = %rules::path_text(c.case), "cannot note the new place in the receipt: {e}");
            }
            Ok(format!("moved to {}", to.display()))
        }
    }
}

/// Move a case folder out of its drop folder, never over an existing one: a name taken in the
/// destination gets a numbered suffix. The folders it creates on the way are shared with the drop
/// folder's people; folders the move leaves empty in the drop folder go. Returns where it went.
pub fn move_case(from: &Path, to: &Path, folder: &Folder) -> std::io::Result<PathBuf> {
    if let Some(parent) = to.parent() {
        folder.sharing().create_dir_all(parent)?;
    }
    let mut dest = to.to_owned();
    let mut n = 1;
    while dest.exists() {
        n += 1;
        let mut name = to.as_os_str().to_owned();
        name.push(format!(".{n}"));
        dest = PathBuf::from(name);
    }
    std::fs::rename(from, &dest)?;
    crate::fsutil::remove_empty_parents(from, &folder.path);
    Ok(dest)
}
