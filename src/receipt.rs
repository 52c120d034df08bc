//! Receipts: the proof, per case, of what was delivered where — or why it was not.
//!
//! A receipt is a JSON file per case, replaced atomically, plus one line in an append-only JSONL audit log.
//! It is what an operator or a script reads to find the created item; it never contains the token.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
pub use crate::journal::SentFile;
use gc_client::TargetKind;

/// Bump when the receipt's shape changes incompatibly.
pub const RECEIPT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Quarantined,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt_version: u32,
    pub outcome: Outcome,
    /// Absolute path of the case folder when it was delivered.
    pub case_path: String,
    /// Where the case folder is now, when it was moved after this receipt was first written (the
    /// `move:` post-action, or the quarantine folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_at: Option<String>,
    /// Why the `after` post-action (move or delete) failed, while it fails: the case was delivered but
    /// stays in its drop folder, and the agent tries the post-action again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_action_error: Option<String>,
    /// The case folder relative to its drop folder (its name, for cases directly inside it).
    pub case: String,
    pub title: String,
    pub target: TargetRef,
    pub item: Option<ItemRef>,
    pub manifest_hash: String,
    pub sockets: Vec<SocketReceipt>,
    /// Files in the case that no rule took.
    #[serde(default)]
    pub unmatched: Vec<String>,
    /// Entries that are not regular files (symbolic links are never followed).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Why the case was quarantined, in the platform's own words where it gave any.
    pub reason: Option<String>,
    /// The version of the DICOM de-identification procedure applied; `None` when the folder opted out
    /// (then DICOM files were sent as they are).
    #[serde(default)]
    pub deidentification: Option<String>,
    /// Things said at delivery that an operator should see (e.g. a title that repeats a patient ID).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// For an algorithm folder: the case's job, its status and where its outputs were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::deliver::JobDone>,
    /// How readiness was decided (e.g. "quiet for 30s", "marker DONE present", "one-shot upload").
    pub readiness: String,
    /// 1 for the first delivery of a case, then one more for every update of the same item.
    pub revision: u32,
    pub attempts: u32,
    pub started: String,
    pub finished: String,
    pub seconds: f64,
    /// Seconds per phase (settle, queued, pre-checks, de-identification, upload, PATCH, waiting for the
    /// import): where the time went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<crate::deliver::Timings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub kind: TargetKind,
    pub slug: String,
    pub pk: Option<String>,
    pub url: Option<String>,
}

impl TargetRef {
    /// The target a folder names, before the platform has been asked for its pk and URL.
    pub fn named(kind: TargetKind, slug: &str) -> TargetRef {
        TargetRef {
            kind,
            slug: slug.to_owned(),
            pk: None,
            url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRef {
    pub pk: String,
    pub api_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketReceipt {
    pub slug: String,
    pub files: Vec<FileReceipt>,
    /// The socket value's pk on the platform once verified.
    pub value_pk: Option<i64>,
    pub value: Option<serde_json::Value>,
    pub image: Option<String>,
    pub file: Option<String>,
}

/// One file of the case and what the platform holds for it.
///
/// Every receipt states what was sent for every file, whichever revision sent it: an update sends only
/// the sockets whose files changed, and the files of the other sockets keep what an earlier revision
/// sent (`sent_revision` says which), as long as they are byte for byte the files that were sent then.
/// That record is kept in the journal, so it holds across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReceipt {
    /// Relative to the case folder.
    pub path: String,
    /// The name the file was uploaded under: neutral (`dicom-0001.dcm`, ...) for a de-identified copy,
    /// never the original's name, which may carry identifiers; the file's own name otherwise.
    pub upload_name: String,
    pub size: u64,
    /// SHA-256 of the file in the case folder.
    pub sha256: String,
    /// SHA-256 of the bytes the platform holds for this file: the de-identified copy for DICOM, else
    /// the file itself, sent by this revision or carried over from the one in `sent_revision`. Empty
    /// when nothing was uploaded for it: the case was not delivered (a quarantine before any revision
    /// sent this content), or its content went as a JSON value (the socket's `value`).
    #[serde(default)]
    pub sent_sha256: String,
    /// Sent as a de-identified copy (by whichever revision sent it).
    #[serde(default)]
    pub deidentified: bool,
    /// The revision whose delivery sent these bytes: this receipt's own, or an earlier one for a file an
    /// update did not send again. 0 when nothing was sent (see `sent_sha256`).
    #[serde(default)]
    pub sent_revision: u32,
}

/// Which case a receipt is about: its drop folder and its path inside, byte for byte. Two drop folders
/// delivering into one target may hold cases of the same name; their receipts never share a file.
#[derive(Debug, Clone, Copy)]
pub struct CaseKey<'a> {
    pub folder: &'a Path,
    pub case: &'a Path,
}

/// A file name for any bytes, one to one: `%`, `/` and bytes that are not UTF-8 are written as `%XX`,
/// and a leading `.` too (a hidden file would be taken for a temporary one). Ordinary names are unchanged.
fn file_name(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '%' | '/' | '\0' => out.push_str(&format!("%{:02X}", c as u32)),
                '.' if out.is_empty() => out.push_str("%2E"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The folder of a drop folder's receipts inside its target's: the drop folder's name, made unique by
/// the hash of its whole path (two drop folders may both be called `incoming`).
fn folder_dir(folder: &Path) -> String {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    let name = folder.file_name().map_or(&b"root"[..], |n| n.as_bytes());
    let hash = sha2::Sha256::digest(folder.as_os_str().as_bytes());
    format!("{}-{}", file_name(name), &hex::encode(hash)[..8])
}

/// Where the latest receipt of a case lives:
/// `<dir>/<target slug>/<drop folder name>-<hash of its path>/<case path>.json`.
pub fn receipt_path(dir: &Path, target_slug: &str, key: CaseKey<'_>) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    dir.join(file_name(target_slug.as_bytes()))
        .join(folder_dir(key.folder))
        .join(format!(
            "{}.json",
            file_name(key.case.as_os_str().as_bytes())
        ))
}

/// `<folder of the latest receipt>/history/<case>.r<revision>.json`
pub fn history_path(dir: &Path, key: CaseKey<'_>, receipt: &Receipt) -> PathBuf {
    history_file(dir, &receipt.target.slug, key, receipt.revision)
}

fn history_file(dir: &Path, target_slug: &str, key: CaseKey<'_>, revision: u32) -> PathBuf {
    let latest = receipt_path(dir, target_slug, key);
    let name = latest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = latest.parent().map(Path::to_path_buf).unwrap_or_default();
    parent
        .join("history")
        .join(format!("{name}.r{revision}.json"))
}

/// The latest receipt of every case below `dir`, oldest first by when it was finished. Reads the layout of
/// [`receipt_path`] and the earlier one without the drop folder level (`<target>/<case>.json`).
pub fn all(dir: &Path) -> Vec<(PathBuf, Receipt)> {
    let mut out = Vec::new();
    let entries = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    };
    let take = |path: PathBuf, out: &mut Vec<(PathBuf, Receipt)>| {
        let visible = path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
        // Temp files of atomic writes are hidden; only finished receipts count.
        if visible && path.extension().is_some_and(|e| e == "json") {
            match read(&path) {
                Ok(r) => out.push((path, r)),
                Err(e) => tracing::warn!(path = %path.display(), "not a receipt: {e}"),
            }
        }
    };
    for target in entries(dir).filter(|p| p.is_dir()) {
        for p in entries(&target) {
            if p.is_dir() && p.file_name().is_some_and(|n| n != "history") {
                for r in entries(&p) {
                    take(r, &mut out);
                }
            } else {
                take(p, &mut out);
            }
        }
    }
    out.sort_by(|a, b| a.1.finished.cmp(&b.1.finished));
    out
}

/// Write the receipt atomically, then append it as one line to `<dir>/audit.jsonl`.
pub fn write(dir: &Path, key: CaseKey<'_>, receipt: &Receipt) -> std::io::Result<PathBuf> {
    let path = receipt_path(dir, &receipt.target.slug, key);
    let mut json = serde_json::to_vec_pretty(receipt).map_err(std::io::Error::other)?;
    json.push(b'\n');
    if receipt.outcome == Outcome::Delivered {
        // Every delivered revision stays readable; the receipt at `path` is always the latest.
        write_atomic(&history_path(dir, key, receipt), &json)?;
    }
    write_atomic(&path, &json)?;
    retire_earlier_layout(dir, key, receipt);
    let mut line = serde_json::to_vec(receipt).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut audit = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("audit.jsonl"))?;
    // One write call per line: appends of a single write are not interleaved with other writers.
    audit.write_all(&line)?;
    audit.sync_data()?;
    Ok(path)
}

/// Remove this case's receipt of the earlier layout (`<target>/<case with / as __>.json`, written before
/// receipts were kept per drop folder), now that the new one is written: one latest receipt per case. Only
/// a receipt of this very case folder is removed; the earlier layout could hold another folder's.
fn retire_earlier_layout(dir: &Path, key: CaseKey<'_>, receipt: &Receipt) {
    let old_name = format!(
        "{}.json",
        key.case
            .to_string_lossy()
            .replace('/', "__")
            .replace('\0', "")
    );
    let old = dir
        .join(receipt.target.slug.replace('/', "__"))
        .join(old_name);
    let same_case = read(&old).is_ok_and(|r| {
        Path::new(&r.case_path) == key.folder.join(key.case) || r.case_path == receipt.case_path
    });
    if same_case && let Err(e) = std::fs::remove_file(&old) {
        tracing::warn!(path = %old.display(), "cannot remove the receipt of the earlier layout: {e}");
    }
}

/// Say in the latest receipt of a case where its folder went after the receipt was written.
pub fn record_move(
    dir: &Path,
    target_slug: &str,
    key: CaseKey<'_>,
    to: &Path,
) -> std::io::Result<()> {
    amend(dir, target_slug, key, |r| {
        r.now_at = Some(crate::rules::path_text(to));
        r.post_action_error = None;
    })
}

/// Say in the latest receipt of a case that its post-action failed, and why (or, with `None`, that it
/// no longer fails).
pub fn record_post_action(
    dir: &Path,
    target_slug: &str,
    key: CaseKey<'_>,
    error: Option<&str>,
) -> std::io::Result<()> {
    amend(dir, target_slug, key, |r| {
        r.post_action_error = error.map(str::to_owned)
    })
}

/// The latest receipt of a case, changed by `change` and written again whole.
fn amend(
    dir: &Path,
    target_slug: &str,
    key: CaseKey<'_>,
    change: impl FnOnce(&mut Receipt),
) -> std::io::Result<()> {
    let path = receipt_path(dir, target_slug, key);
    let mut receipt = read(&path)?;
    change(&mut receipt);
    let mut json = serde_json::to_vec_pretty(&receipt).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_atomic(&path, &json)
}

/// For a case delivered before, the sockets its item holds, as the case's latest receipt says: what an
/// update may leave out (the item keeps them). None for a first delivery, or when the latest receipt is
/// not of a delivery (or cannot be read).
pub fn on_item(
    dir: &Path,
    target_slug: &str,
    key: CaseKey<'_>,
    rec: &crate::journal::CaseRecord,
) -> Vec<SocketReceipt> {
    if rec.item_pk.is_none() || rec.delivered_hash.is_none() {
        return Vec::new();
    }
    match read(&receipt_path(dir, target_slug, key)) {
        Ok(r) if r.outcome == Outcome::Delivered => r.sockets,
        _ => Vec::new(),
    }
}

/// Read a receipt back.
pub fn read(path: &Path) -> std::io::Result<Receipt> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The facts every receipt of a case carries, delivered or not.
pub struct CaseFacts<'a> {
    pub case_dir: &'a Path,
    pub plan: Option<&'a crate::rules::Plan>,
    pub manifest: Option<&'a crate::rules::Manifest>,
    pub target: TargetRef,
    /// The case's path inside its drop folder.
    pub case: String,
    pub skipped: Vec<String>,
    pub readiness: String,
    pub attempts: u32,
    pub revision: u32,
    pub started: (String, std::time::Instant),
    /// What the platform holds from earlier revisions ([`earlier_sent`]): files of this plan that are
    /// unchanged since say what was sent for them then.
    pub earlier: &'a [SentFile],
    /// The sockets the case's item holds from its earlier delivery ([`on_item`]): those this plan
    /// leaves out are in a delivered receipt as they were, with the item's values.
    pub on_item: &'a [SocketReceipt],
}

/// Fill in, for every file not sent (yet) by this revision, what an earlier revision sent for it, when
/// it is the same file (socket, path and content).
fn carry_over(sockets: &mut [SocketReceipt], earlier: &[SentFile]) {
    for s in sockets {
        for f in &mut s.files {
            if !f.sent_sha256.is_empty() || f.sha256.is_empty() {
                continue;
            }
            let same = earlier
                .iter()
                .find(|e| e.socket == s.slug && e.path == f.path && e.sha256 == f.sha256);
            if let Some(e) = same {
                f.sent_sha256 = e.sent_sha256.clone();
                f.upload_name = e.upload_name.clone();
                f.deidentified = e.deidentified;
                f.sent_revision = e.revision;
            }
        }
    }
}

/// What the platform holds for a case's files before this delivery: the journal's record, or, for a
/// case delivered by a version that did not record it, its delivered receipts read back, latest first.
pub fn earlier_sent(
    journal: &crate::journal::Journal,
    dir: &Path,
    target_slug: &str,
    key: CaseKey<'_>,
    rec: &crate::journal::CaseRecord,
) -> Result<Vec<SentFile>, crate::journal::JournalError> {
    let recorded = journal.sent_files(rec.id)?;
    if !recorded.is_empty() || rec.revision <= 0 {
        return Ok(recorded);
    }
    let mut out: Vec<SentFile> = Vec::new();
    for revision in (1..=rec.revision as u32).rev() {
        let Ok(r) = read(&history_file(dir, target_slug, key, revision)) else {
            continue;
        };
        for f in r.sent_files() {
            if !out.iter().any(|o| o.socket == f.socket && o.path == f.path) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

impl Receipt {
    fn from_facts(f: CaseFacts<'_>, outcome: Outcome) -> Receipt {
        let manifest = f.manifest;
        let mut sockets: Vec<SocketReceipt> = f
            .plan
            .map(|p| {
                p.sockets
                    .iter()
                    .map(|s| SocketReceipt {
                        slug: s.slug.clone(),
                        files: s
                            .source
                            .files()
                            .into_iter()
                            .map(|pf| FileReceipt {
                                path: pf.path.clone(),
                                upload_name: pf.upload_name.clone(),
                                size: pf.size,
                                sha256: manifest
                                    .and_then(|m| m.entries.iter().find(|e| e.path == pf.path))
                                    .map(|e| e.sha256.clone())
                                    .unwrap_or_default(),
                                sent_sha256: String::new(),
                                deidentified: false,
                                sent_revision: 0,
                            })
                            .collect(),
                        value_pk: None,
                        value: None,
                        image: None,
                        file: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        carry_over(&mut sockets, f.earlier);
        Receipt {
            receipt_version: RECEIPT_VERSION,
            outcome,
            case_path: crate::rules::path_text(f.case_dir),
            now_at: None,
            post_action_error: None,
            case: f.case,
            title: f.plan.map(|p| p.title.clone()).unwrap_or_default(),
            target: f.target,
            item: None,
            manifest_hash: manifest.map(|m| m.hash.clone()).unwrap_or_default(),
            sockets,
            unmatched: f.plan.map(|p| p.unmatched.clone()).unwrap_or_default(),
            skipped: f.skipped,
            reason: None,
            deidentification: None,
            warnings: vec![],
            job: None,
            readiness: f.readiness,
            revision: f.revision,
            attempts: f.attempts,
            started: f.started.0,
            finished: crate::clock::now_rfc3339(),
            seconds: f.started.1.elapsed().as_secs_f64(),
            timings: None,
        }
    }

    /// The receipt of a verified delivery.
    pub fn delivered(facts: CaseFacts<'_>, d: &crate::deliver::Delivered) -> Receipt {
        let on_item = facts.on_item;
        let mut r = Receipt::from_facts(facts, Outcome::Delivered);
        // Sockets an update left out (the item keeps their values): as the earlier receipt said.
        let kept: Vec<SocketReceipt> = on_item
            .iter()
            .filter(|k| !r.sockets.iter().any(|s| s.slug == k.slug))
            .cloned()
            .collect();
        r.sockets.extend(kept);
        r.target.pk = Some(d.target.pk.clone());
        r.target.url = Some(d.target.url.clone());
        r.item = Some(ItemRef {
            pk: d.item_pk.clone(),
            api_url: d.item_api_url.clone(),
        });
        r.deidentification = d
            .deidentified
            .procedure
            .as_ref()
            .map(|v| format!("grand-challenge-dicom-de-id-procedure {v}"));
        r.warnings = d.deidentified.warnings.clone();
        r.job = d.job.clone();
        let revision = r.revision;
        for s in &mut r.sockets {
            for f in &mut s.files {
                // What this revision sent replaces what was carried over from an earlier one.
                match d.deidentified.staged.iter().find(|st| st.path == f.path) {
                    Some(st) => {
                        f.sent_sha256 = st.sha256.clone();
                        f.upload_name = st.upload_name.clone();
                        f.deidentified = true;
                        f.sent_revision = revision;
                    }
                    None if d.deidentified.sent.contains(&f.path) => {
                        f.sent_sha256 = f.sha256.clone();
                        f.deidentified = false;
                        f.sent_revision = revision;
                    }
                    None => {}
                }
            }
            if let Some(v) = d.sockets.iter().find(|v| v.slug == s.slug) {
                s.value_pk = Some(v.value_pk);
                s.value = v.value.clone();
                s.image = v.image.clone();
                s.file = v.file.clone();
            }
        }
        r
    }

    /// What the platform holds for the case's files according to this receipt, for the journal.
    pub fn sent_files(&self) -> Vec<SentFile> {
        self.sockets
            .iter()
            .flat_map(|s| {
                s.files
                    .iter()
                    .filter(|f| !f.sent_sha256.is_empty())
                    .map(|f| SentFile {
                        socket: s.slug.clone(),
                        path: f.path.clone(),
                        sha256: f.sha256.clone(),
                        sent_sha256: f.sent_sha256.clone(),
                        upload_name: f.upload_name.clone(),
                        deidentified: f.deidentified,
                        revision: f.sent_revision,
                    })
            })
            .collect()
    }

    /// The receipt of a case that could not be delivered, with the reason.
    pub fn quarantined(facts: CaseFacts<'_>, reason: String, item: Option<ItemRef>) -> Receipt {
        let mut r = Receipt::from_facts(facts, Outcome::Quarantined);
        r.reason = Some(reason);
        r.item = item;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        Receipt {
            receipt_version: RECEIPT_VERSION,
            outcome: Outcome::Delivered,
            case_path: "/drop/p1".into(),
            now_at: None,
            post_action_error: None,
            case: "p1".into(),
            title: "p1".into(),
            target: TargetRef {
                kind: TargetKind::Archive,
                slug: "a".into(),
                pk: Some("pk".into()),
                url: None,
            },
            item: Some(ItemRef {
                pk: "i".into(),
                api_url: "http://x/api/v1/archives/items/i/".into(),
            }),
            manifest_hash: "h".into(),
            sockets: vec![],
            unmatched: vec![],
            skipped: vec![],
            reason: None,
            deidentification: None,
            warnings: vec![],
            job: None,
            readiness: "one-shot upload".into(),
            revision: 1,
            attempts: 1,
            started: crate::clock::now_rfc3339(),
            finished: crate::clock::now_rfc3339(),
            seconds: 0.5,
            timings: None,
        }
    }

    fn key() -> CaseKey<'static> {
        CaseKey {
            folder: Path::new("/drop"),
            case: Path::new("p1"),
        }
    }

    fn file(path: &str, sha256: &str) -> FileReceipt {
        FileReceipt {
            path: path.into(),
            upload_name: path.rsplit('/').next().unwrap().into(),
            size: 1,
            sha256: sha256.into(),
            sent_sha256: String::new(),
            deidentified: false,
            sent_revision: 0,
        }
    }

    #[test]
    fn unchanged_files_keep_what_an_earlier_revision_sent_and_changed_ones_do_not() {
        let sent = |socket: &str, path: &str, sha256: &str| SentFile {
            socket: socket.into(),
            path: path.into(),
            sha256: sha256.into(),
            sent_sha256: format!("copy-of-{sha256}"),
            upload_name: "dicom-0001.dcm".into(),
            deidentified: true,
            revision: 1,
        };
        let earlier = [
            sent("ct", "ct/CT.1.2.3", "a"),
            sent("ct", "ct/CT.1.2.4", "b"),
            sent("mr", "mr/x.dcm", "c"),
        ];
        let mut sockets = vec![SocketReceipt {
            slug: "ct".into(),
            files: vec![
                file("ct/CT.1.2.3", "a"),
                file("ct/CT.1.2.4", "changed"),
                file("ct/new.dcm", "d"),
            ],
            value_pk: None,
            value: None,
            image: None,
            file: None,
        }];
        carry_over(&mut sockets, &earlier);
        let f = &sockets[0].files;
        assert_eq!(
            (
                f[0].sent_sha256.as_str(),
                f[0].upload_name.as_str(),
                f[0].deidentified,
                f[0].sent_revision
            ),
            ("copy-of-a", "dicom-0001.dcm", true, 1),
            "the same file: what was sent for it"
        );
        assert_eq!(f[1], file("ct/CT.1.2.4", "changed"), "changed since");
        assert_eq!(f[2], file("ct/new.dcm", "d"), "new");

        // The same path in another socket is another file.
        let mut other = sockets.clone();
        other[0].slug = "mr".into();
        other[0].files = vec![file("ct/CT.1.2.3", "a")];
        carry_over(&mut other, &earlier);
        assert_eq!(other[0].files[0], file("ct/CT.1.2.3", "a"));
    }

    #[test]
    fn a_delivered_receipt_read_back_stands_in_for_a_journal_that_did_not_record_what_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crate::journal::Journal::open(&dir.path().join("state")).unwrap();
        let rec = journal
            .discover(Path::new("/drop"), Path::new("p1"))
            .unwrap();
        let receipts = dir.path().join("receipts");
        let mut r1 = sample();
        let mut sent = file("ct/a.dcm", "a");
        sent.sent_sha256 = "copy".into();
        sent.deidentified = true;
        sent.sent_revision = 1;
        r1.sockets = vec![SocketReceipt {
            slug: "ct".into(),
            files: vec![sent, file("count.json", "n")],
            value_pk: None,
            value: None,
            image: None,
            file: None,
        }];
        write(&receipts, key(), &r1).unwrap();
        assert!(
            earlier_sent(&journal, &receipts, "a", key(), &rec)
                .unwrap()
                .is_empty(),
            "not delivered: nothing to read back"
        );
        let m = crate::rules::Manifest {
            entries: vec![],
            hash: "h".into(),
        };
        journal.delivered(rec.id, &m).unwrap();
        let rec = journal.by_id(rec.id).unwrap().unwrap();
        let from_receipt = earlier_sent(&journal, &receipts, "a", key(), &rec).unwrap();
        assert_eq!(from_receipt, r1.sent_files());
        assert_eq!(from_receipt.len(), 1, "only files that were sent");

        // Once the journal has the record, it is the truth.
        let mut recorded = from_receipt.clone();
        recorded[0].sent_sha256 = "recorded".into();
        journal.delivered_sent(rec.id, &m, &recorded).unwrap();
        let rec = journal.by_id(rec.id).unwrap().unwrap();
        assert_eq!(
            earlier_sent(&journal, &receipts, "a", key(), &rec).unwrap(),
            recorded
        );
    }

    #[test]
    fn writes_atomically_and_appends_to_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample();
        let p = write(dir.path(), key(), &r).unwrap();
        let folder = dir.path().join("a").join(folder_dir(Path::new("/drop")));
        assert_eq!(p, folder.join("p1.json"));
        assert!(folder_dir(Path::new("/drop")).starts_with("drop-"));
        assert_eq!(read(&p).unwrap(), r);
        write(dir.path(), key(), &r).unwrap();
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(audit.lines().count(), 2);
        let leftovers: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "the receipt and its history, no temp files: {leftovers:?}"
        );
        assert_eq!(read(&folder.join("history/p1.r1.json")).unwrap(), r);
        assert_eq!(all(dir.path()), vec![(p, r)]);
    }

    #[test]
    fn a_receipt_of_the_earlier_layout_gives_way_to_the_new_one_of_the_same_case_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut theirs = sample();
        theirs.case_path = "/elsewhere/p1".into();
        let mut ours = sample();
        ours.case_path = "/drop/p1".into();
        // Written by an earlier version: two folders' cases named p1 shared one file, and q2 had one.
        let earlier = dir.path().join("a");
        std::fs::create_dir_all(&earlier).unwrap();
        let write_old = |name: &str, r: &Receipt| {
            std::fs::write(earlier.join(name), serde_json::to_vec(r).unwrap()).unwrap()
        };
        write_old("p1.json", &theirs);
        write(dir.path(), key(), &ours).unwrap();
        assert!(
            earlier.join("p1.json").is_file(),
            "another folder's receipt stays"
        );
        write_old("p1.json", &ours);
        write(dir.path(), key(), &ours).unwrap();
        assert!(!earlier.join("p1.json").exists(), "this case's is replaced");
        assert_eq!(all(dir.path()).len(), 1);
    }

    #[test]
    fn every_case_of_every_folder_has_a_receipt_of_its_own() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = [
            (Path::new("/site-a/incoming"), Path::new("p-001")),
            (Path::new("/site-b/incoming"), Path::new("p-001")),
            (Path::new("/drop"), Path::new("x/y__z")),
            (Path::new("/drop"), Path::new("x__y/z")),
            (
                Path::new("/drop"),
                Path::new(OsStr::from_bytes(b"M\xfcller")),
            ),
            (
                Path::new("/drop"),
                Path::new(OsStr::from_bytes(b"M\xf6ller")),
            ),
            (Path::new("/drop"), Path::new("M%FCller")),
        ];
        let mut paths = std::collections::BTreeSet::new();
        for (n, (folder, case)) in keys.iter().enumerate() {
            let mut r = sample();
            r.case = format!("{n}");
            let p = write(dir.path(), CaseKey { folder, case }, &r).unwrap();
            assert_eq!(
                p,
                receipt_path(dir.path(), "a", CaseKey { folder, case }),
                "stable"
            );
            paths.insert(p);
        }
        assert_eq!(paths.len(), keys.len(), "{paths:?}");
        assert_eq!(all(dir.path()).len(), keys.len());
        let latin1 = receipt_path(
            dir.path(),
            "a",
            CaseKey {
                folder: Path::new("/drop"),
                case: Path::new(OsStr::from_bytes(b"M\xfcller")),
            },
        );
        assert_eq!(latin1.file_name().unwrap(), "M%FCller.json");
    }
}
