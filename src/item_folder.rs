//! An item's values as files in a folder, as `pull` writes an item and `outbox` an algorithm job's
//! outputs: which names and paths are safe inside the folder, and one socket value written whole (staged
//! on the same filesystem, fsynced, then moved into place), so that no reader ever sees half a file.

use std::path::Path;

use crate::cli::exit;
use gc_client::{Client, GcError, ItemValue, Socket, SuperKind};

/// The longest file name common filesystems accept, in bytes.
const MAX_NAME: usize = 255;

/// Can `name` be used as one path component inside DEST? Besides `/`, NUL, `.` and `..`, names starting
/// with a dot are refused: in a drop folder they are temp files that mean "still being written", and
/// DEST's own `.gc-pull*` entries must never be hit.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
}

/// A socket's `relative_path` from the server, normalised (`a//b/` → `a/b`), or why it cannot be used:
/// it must stay inside the item folder and must not create dotfiles there.
pub fn safe_relative_path(rel: &str) -> Result<String, String> {
    if rel.starts_with('/') {
        return Err(format!("the relative path {rel:?} is absolute"));
    }
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("the relative path is empty".into());
    }
    if let Some(bad) = parts.iter().find(|p| !is_safe_name(p)) {
        return Err(match *bad {
            "." | ".." => format!("the relative path {rel:?} would leave the item folder"),
            _ => format!("the relative path {rel:?} has the unusable component {bad:?}"),
        });
    }
    Ok(parts.join("/"))
}

/// The file name a media URL stands for: its last path segment, percent-decoded.
pub fn file_name_from_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("the file URL is not a URL ({e})"))?;
    let segment = parsed
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("the file URL {} names no file", parsed.path()))?;
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| format!("the file name {segment:?} is not UTF-8"))?;
    if is_safe_name(&name) {
        Ok(name.into_owned())
    } else {
        Err(format!(
            "the file name {name:?} is not usable as a file name"
        ))
    }
}

/// Why a socket was not written: for this socket only, or for everything that follows (the token was
/// refused or the platform is gone: exit 3; the disk is full or the state cannot be saved: exit 1).
pub enum Problem {
    Skip(String),
    Fatal(String, u8),
}

impl From<GcError> for Problem {
    fn from(e: GcError) -> Problem {
        match &e {
            GcError::Auth { .. } | GcError::Unavailable { .. } => {
                Problem::Fatal(e.to_string(), exit::PLATFORM)
            }
            GcError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                Problem::Fatal(e.to_string(), exit::CASE_FAILED)
            }
            _ => Problem::Skip(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Problem {
    fn from(e: std::io::Error) -> Problem {
        if e.kind() == std::io::ErrorKind::StorageFull {
            Problem::Fatal(e.to_string(), exit::CASE_FAILED)
        } else {
            Problem::Skip(e.to_string())
        }
    }
}

/// Write one socket value below `root/<folder>/<path>`, staged in `staging` (on the same filesystem)
/// and moved into place whole; the relative paths of the files written. Also writes algorithm outputs
/// into an outbox, so that both look the same.
pub async fn write_value(
    client: &Client,
    root: &Path,
    staging: &Path,
    folder: &str,
    path: &str,
    socket: &Socket,
    value: &ItemValue,
) -> Result<Vec<String>, Problem> {
    let staged = || staging.join(format!(".{}", uuid::Uuid::new_v4().simple()));
    let rel = Path::new(folder).join(path);
    if let Some(parent) = rel.parent() {
        ensure_dirs(root, parent)?;
    }
    let dest = root.join(&rel);
    match socket.super_kind {
        SuperKind::Value => {
            let null = serde_json::Value::Null;
            let mut bytes = serde_json::to_vec_pretty(value.value.as_ref().unwrap_or(&null))
                .map_err(|e| Problem::Skip(format!("cannot write the value: {e}")))?;
            bytes.push(b'\n');
            let staged = staged();
            write_synced(&staged, &bytes)?;
            install(&staged, &dest, staging)?;
            Ok(vec![path.to_owned()])
        }
        SuperKind::File => {
            let url = value.file.as_deref().ok_or_else(|| {
                Problem::Skip(
                    "the value has no file (yet); the platform may still be processing it".into(),
                )
            })?;
            let staged = staged();
            let downloaded = client.download(url, &staged).await;
            if let Err(e) = downloaded {
                let _ = remove_any(&staged);
                return Err(e.into());
            }
            install(&staged, &dest, staging)?;
            Ok(vec![path.to_owned()])
        }
        SuperKind::Image => {
            let url = value.image.as_deref().ok_or_else(|| {
                Problem::Skip(
                    "the value has no image (yet); the platform may still be importing it".into(),
                )
            })?;
            let staged = staged();
            let names = download_image(client, url, &staged).await?;
            install(&staged, &dest, staging)?;
            Ok(names.iter().map(|n| format!("{path}/{n}")).collect())
        }
    }
}

/// An image's files downloaded into the folder `staged` (made here, synced, removed on failure): their
/// names. A DICOM image set, an image without files or with two files of one name is skipped.
async fn download_image(client: &Client, url: &str, staged: &Path) -> Result<Vec<String>, Problem> {
    let image = client.get_image(url).await?;
    if image.dicom_image_set.is_some() {
        return Err(Problem::Skip(format!(
            "image {:?} is a DICOM image set, whose files cannot be downloaded through the API",
            image.name
        )));
    }
    if image.files.is_empty() {
        return Err(Problem::Skip(format!(
            "image {:?} has no files to download",
            image.name
        )));
    }
    let mut names: Vec<String> = Vec::new();
    for f in &image.files {
        let name = file_name_from_url(&f.file).map_err(Problem::Skip)?;
        if names.contains(&name) {
            return Err(Problem::Skip(format!(
                "image {:?} has two files named {name:?}",
                image.name
            )));
        }
        names.push(name);
    }
    std::fs::create_dir(staged)?;
    for (f, name) in image.files.iter().zip(&names) {
        if let Err(e) = client.download(&f.file, &staged.join(name)).await {
            let _ = remove_any(staged);
            return Err(e.into());
        }
    }
    sync_dir(staged)?;
    Ok(names)
}

// ---- file system helpers ----------------------------------------------------------------------------

/// Create the folders of `rel` below `root` one by one, refusing to pass through a symbolic link or a
/// file: a link planted in DEST must not carry a download elsewhere.
pub fn ensure_dirs(root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(std::io::Error::other(format!(
                "{} is not a plain relative path",
                rel.display()
            )));
        };
        p.push(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a folder",
                    p.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&p)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Every folder between `base` and `base/rel` is a real folder (no link), so deleting `base/rel` deletes
/// what the state recorded and nothing else.
pub fn real_parents(base: &Path, rel: &str) -> std::io::Result<()> {
    let mut p = base.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        p.push(part);
        if !std::fs::symlink_metadata(&p)?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a folder",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Remove a file, a link or a whole folder; gone already is fine.
pub fn remove_any(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Move a finished download into place. A file replaces a file in one rename, so the old version stays
/// readable until the new one is there; anything else is moved aside first (a kill in between leaves the
/// path missing, which the next run notices and fetches again).
pub fn install(staged: &Path, dest: &Path, staging: &Path) -> std::io::Result<()> {
    let staged_is_file = std::fs::symlink_metadata(staged)?.is_file();
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_file() && staged_is_file => std::fs::rename(staged, dest)?,
        Ok(_) => {
            let old = staging.join(format!(".old-{}", uuid::Uuid::new_v4().simple()));
            std::fs::rename(dest, &old)?;
            std::fs::rename(staged, dest)?;
            if let Err(e) = remove_any(&old) {
                tracing::warn!(path = %old.display(), "cannot remove the replaced files: {e}");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::rename(staged, dest)?,
        Err(e) => return Err(e),
    }
    match dest.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}
