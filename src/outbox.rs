//! Where an algorithm's results land: one folder per case in the outbox, holding one entry per output
//! socket at the socket's relative path, written exactly as `pull` writes an item (a value as JSON, a
//! file as downloaded, an image as a folder of its files). The case folder is assembled beside the
//! outbox and renamed into place whole, so whoever watches the outbox never sees half a case, and a
//! folder that is there is complete: writing it again after a crash is a no-op.

use std::path::{Path, PathBuf};

use crate::item_folder::{self, Problem};
use gc_client::{Client, InterfaceRef, ItemValue};

/// An outbox, and how what is written there is shared with the drop folder's people.
#[derive(Debug, Clone, Copy)]
pub struct Outbox<'a> {
    pub dir: &'a Path,
    pub sharing: crate::share::Sharing,
}

/// Where case folders are assembled; inside the outbox, so that moving one into place is a rename.
pub const STAGING_DIR: &str = ".gc-outbox.tmp";

/// What [`write_case`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The folder was written; the relative paths of its files.
    New(Vec<String>),
    /// A complete folder for this case was already there and was left alone.
    AlreadyThere,
}

/// What to do with a folder of the case that is already in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// It holds these very outputs (written before a crash): leave it.
    Keep,
    /// It holds an earlier job's results (the case changed, or was retried): replace it whole.
    Replace,
}

/// Write `outputs` as the folder `outbox/<case>`, shared as `sharing` says (as are the outbox's folders
/// this creates). `Err` is a message for the case's receipt.
pub async fn write_case(
    client: &Client,
    (outbox, sharing): (&Path, crate::share::Sharing),
    case: &str,
    outputs: &[ItemValue],
    existing: Existing,
) -> Result<Written, String> {
    if !item_folder::is_safe_name(case) {
        return Err(format!("{case:?} cannot be a folder name in the outbox"));
    }
    let dest = outbox.join(case);
    let there = std::fs::symlink_metadata(&dest).is_ok();
    if there && existing == Existing::Keep {
        return Ok(Written::AlreadyThere);
    }
    sharing
        .create_dir_all(outbox)
        .map_err(|e| format!("cannot create {}: {e}", outbox.display()))?;
    let staging = outbox.join(STAGING_DIR);
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let staged = staging.join(format!("{case}.{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&staged).map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
    let result = assemble(client, &staged, &staging, outputs).await;
    if result.is_ok() {
        sharing.tree(&staged);
    }
    // The earlier results leave for the staging folder first: the case's folder is missing for the
    // moment between two renames, never half old, half new.
    let old = staging.join(format!("{case}.old.{}", uuid::Uuid::new_v4().simple()));
    let installed = result.and_then(|files| {
        let moved = std::fs::File::open(&staged)
            .and_then(|d| d.sync_all())
            .and_then(|()| match there {
                true => std::fs::rename(&dest, &old),
                false => Ok(()),
            })
            .and_then(|()| std::fs::rename(&staged, &dest))
            .and_then(|()| std::fs::File::open(outbox)?.sync_all());
        moved
            .map(|()| files)
            .map_err(|e| format!("cannot move the outputs to {}: {e}", dest.display()))
    });
    match installed {
        Ok(files) => {
            if there && let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(dir = %old.display(), "cannot remove the earlier results: {e}");
            }
            Ok(Written::New(files))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(e)
        }
    }
}

async fn assemble(
    client: &Client,
    root: &Path,
    staging: &Path,
    outputs: &[ItemValue],
) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    for value in outputs {
        let socket = match &value.interface {
            InterfaceRef::Full(s) => (**s).clone(),
            InterfaceRef::Slug(slug) => client.socket(slug).await.map_err(|e| e.to_string())?,
        };
        let path = item_folder::safe_relative_path(&socket.relative_path)
            .map_err(|e| format!("output {}: {e}", socket.slug))?;
        if paths.contains(&PathBuf::from(&path)) {
            return Err(format!(
                "output {}: its path {path} is taken by another output",
                socket.slug
            ));
        }
        paths.push(PathBuf::from(&path));
        let written = item_folder::write_value(client, root, staging, "", &path, &socket, value)
            .await
            .map_err(|p| match p {
                Problem::Skip(m) | Problem::Fatal(m, _) => format!("output {}: {m}", socket.slug),
            })?;
        files.extend(written);
    }
    Ok(files)
}
