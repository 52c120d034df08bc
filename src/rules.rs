//! Which files of a case go to which socket, the item's title, and the manifest that identifies the case.
//!
//! Everything here is a pure function of the folder's rules and a list of files, so the mapping can be
//! explained (`explain`) and tested without a server, a clock or a disk. The one I/O helper,
//! [`hash_files`], is kept apart and only reads.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{Folder, RuleSource, SocketRule};
use gc_client::TargetKind;

/// The platform refuses longer upload file names (gc-protocol.md §2.2).
pub const MAX_UPLOAD_NAME: usize = 128;

/// A regular file inside a case, relative to the case folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFile {
    pub rel: PathBuf,
    pub size: u64,
}

/// A file as it will be uploaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedFile {
    /// Path relative to the case folder (lossy UTF-8 for display; the real path is `rel`).
    pub path: String,
    #[serde(skip)]
    pub rel: PathBuf,
    /// The name the platform stores it under: the base name, unless two files of one socket share it.
    pub upload_name: String,
    pub size: u64,
}

/// Where one socket's value comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// One image from one or many files, or one file for a file socket (decided by the socket's super kind).
    Files(Vec<PlannedFile>),
    /// The files of one DICOM series as a DICOM image set.
    DicomImageSet {
        files: Vec<PlannedFile>,
        image_name: String,
    },
    /// A JSON file holding the value.
    ValueFile(PlannedFile),
    /// A constant from the config.
    Value(serde_json::Value),
}

impl Source {
    pub fn files(&self) -> Vec<&PlannedFile> {
        match self {
            Source::Files(f) | Source::DicomImageSet { files: f, .. } => f.iter().collect(),
            Source::ValueFile(f) => vec![f],
            Source::Value(_) => vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SocketPlan {
    pub slug: String,
    pub source: Source,
}

/// What a ready case becomes: a title in a target and a value per socket.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Plan {
    /// The case folder's name.
    pub case: String,
    /// The case folder relative to its drop folder.
    pub case_path: String,
    pub title: String,
    pub target: TargetKind,
    pub target_slug: String,
    pub sockets: Vec<SocketPlan>,
    /// Files no rule took (reported in the receipt, not uploaded).
    pub unmatched: Vec<String>,
}

/// How many of a case's files an error lists before it only counts the rest.
const LISTED_FILES: usize = 20;

/// "the case holds: a, b, ... and N more": what a case has, for an error about what it lacks.
fn holdings(found: &[String]) -> String {
    if found.is_empty() {
        return "the case holds no files".into();
    }
    let shown = found[..found.len().min(LISTED_FILES)].join(", ");
    match found.len().saturating_sub(LISTED_FILES) {
        0 => format!("the case holds: {shown}"),
        more => format!("the case holds: {shown} and {more} more"),
    }
}

/// Why a case cannot be planned. Each says what to fix in the case folder or the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    NoFiles {
        socket: String,
        patterns: Vec<String>,
        /// What the case holds instead (paths below the case folder), so the mismatch shows.
        found: Vec<String>,
    },
    ValueFileMissing {
        socket: String,
        file: String,
        found: Vec<String>,
    },
    EmptyFile {
        path: String,
    },
    Ambiguous {
        path: String,
        first: String,
        second: String,
    },
    NameTooLong {
        path: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoFiles {
                socket,
                patterns,
                found,
            } => {
                write!(
                    f,
                    "socket {socket}: no file matches {}; {}",
                    patterns.join(", "),
                    holdings(found)
                )
            }
            PlanError::ValueFileMissing {
                socket,
                file,
                found,
            } => {
                write!(
                    f,
                    "socket {socket}: value file {file} is missing; {}",
                    holdings(found)
                )
            }
            PlanError::EmptyFile { path } => write!(
                f,
                "{path} is empty (0 bytes); an empty file is never a valid value"
            ),
            PlanError::Ambiguous {
                path,
                first,
                second,
            } => {
                write!(
                    f,
                    "{path} matches the rules of both socket {first} and socket {second}"
                )
            }
            PlanError::NameTooLong { path } => {
                write!(
                    f,
                    "{path}: the platform accepts file names of at most {MAX_UPLOAD_NAME} characters"
                )
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// Fill a title or image-name template.
pub fn render(template: &str, case: &str, case_path: &str) -> String {
    template
        .replace("{case}", case)
        .replace("{path}", case_path)
        .replace("{hash}", &path_hash(case_path))
}

/// What `check` says about a folder's title template before looking at any case: at a depth of two or
/// more, a title made of the last folder's name alone (`{case}`) is the same for cases in different
/// parent folders, as in a scanner's `<PatientID>/<StudyDate>/` layout where two patients are scanned
/// on one day: the second is refused, as a title belongs to one case.
pub fn template_warnings(folder: &Folder) -> Vec<String> {
    let t = &folder.title;
    if folder.depth < 2 || t.contains("{path}") || t.contains("{hash}") {
        return vec![];
    }
    vec![format!(
        "title = \"{t}\" at depth = {}: it does not include the parent folders, so cases with the same \
         name in different folders (e.g. two patients' studies of one day) get the same title and all \
         but the first are refused; use title = \"{{hash}}\", which tells them apart without showing a \
         folder name",
        folder.depth
    )]
}

/// `{hash}`: the first 16 hex digits of the SHA-256 of the case's path below its drop folder. Stable
/// across restarts and machines, and it does not show a folder name; but it is no secret: whoever can
/// guess a name can compute its hash.
pub fn path_hash(case_path: &str) -> String {
    let digest = Sha256::digest(case_path.as_bytes());
    hex::encode(&digest[..8])
}

/// A path as text that keeps every name distinct: bytes that are not UTF-8 (a Latin-1 `ü` from an old
/// exporter) are written as `\xfc`, the way Python shows them, instead of all becoming `�`. Names that are
/// UTF-8 are unchanged, so titles and receipts of ordinary cases read as the folders are named.
pub fn path_text(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn lossy(p: &Path) -> String {
    path_text(p)
}

/// The case a path inside a drop folder belongs to: its first `depth` components, if they name a case.
pub fn case_of(folder: &Folder, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(&folder.path).ok()?;
    let comps: Vec<Component> = rel.components().take(folder.depth).collect();
    if comps.len() < folder.depth || comps.iter().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    // A hidden folder (`.snapshot` of a NAS, a tool's staging folder) or one named like a temp file is
    // no case: at most one still being written under a name it will lose.
    if comps
        .iter()
        .any(|c| folder.ignore.is_match(Path::new(c.as_os_str())))
    {
        return None;
    }
    let case_rel: PathBuf = comps.iter().collect();
    let name = case_rel.file_name()?;
    folder
        .case
        .is_match(Path::new(name))
        .then(|| folder.path.join(case_rel))
}

/// Is this file one the folder's rules treat as "still being written" (temp files of copy tools, editors)?
pub fn is_ignored(folder: &Folder, rel: &Path) -> bool {
    rel.components()
        .any(|c| folder.ignore.is_match(Path::new(c.as_os_str())))
}

/// Map the files of a ready case to sockets.
pub fn plan(folder: &Folder, case_path: &Path, files: &[CaseFile]) -> Result<Plan, PlanError> {
    plan_update(folder, case_path, files, &[])
}

/// Map the files of a ready case to sockets, for an update of an item that already holds a value for
/// each socket in `on_item`: such a socket may go without files now (the item keeps its value), as if
/// it were optional. A late series that arrives in a folder of its own after the case was moved away
/// thus updates the item instead of failing for want of what the first delivery sent.
pub fn plan_update(
    folder: &Folder,
    case_path: &Path,
    files: &[CaseFile],
    on_item: &[String],
) -> Result<Plan, PlanError> {
    let case = case_path
        .file_name()
        .map(|n| path_text(Path::new(n)))
        .unwrap_or_default();
    let case_rel = lossy(case_path.strip_prefix(&folder.path).unwrap_or(case_path));
    let candidates: Vec<&CaseFile> = files
        .iter()
        .filter(|f| {
            !is_ignored(folder, &f.rel)
                && folder.marker.as_deref().map(Path::new) != Some(f.rel.as_path())
        })
        .collect();

    let mut taken: BTreeMap<&Path, &str> = BTreeMap::new();
    let mut sockets = Vec::new();
    for rule in &folder.sockets {
        let matched = matching(rule, &candidates);
        for f in &matched {
            if let Some(first) = taken.insert(&f.rel, &rule.slug) {
                return Err(PlanError::Ambiguous {
                    path: lossy(&f.rel),
                    first: first.into(),
                    second: rule.slug.clone(),
                });
            }
            if f.size == 0 {
                return Err(PlanError::EmptyFile {
                    path: lossy(&f.rel),
                });
            }
        }
        let planned = planned_files(&matched)?;
        let names = (case.as_str(), case_rel.as_str());
        let optional = rule.optional || on_item.contains(&rule.slug);
        if let Some(source) = socket_source(rule, optional, planned, &candidates, names)? {
            sockets.push(SocketPlan {
                slug: rule.slug.clone(),
                source,
            });
        }
    }
    let unmatched = candidates
        .iter()
        .filter(|f| !taken.contains_key(f.rel.as_path()))
        .map(|f| lossy(&f.rel))
        .collect();
    Ok(Plan {
        title: render(&folder.title, &case, &case_rel),
        case,
        case_path: case_rel,
        target: folder.target,
        target_slug: folder.target_slug.clone(),
        sockets,
        unmatched,
    })
}

/// The case's files a socket rule takes (none for a rule with a value of its own).
fn matching<'f>(rule: &SocketRule, candidates: &[&'f CaseFile]) -> Vec<&'f CaseFile> {
    match &rule.source {
        RuleSource::Files { matcher, .. } | RuleSource::DicomImageSet { matcher, .. } => candidates
            .iter()
            .copied()
            .filter(|f| matcher.is_match(&f.rel))
            .collect(),
        RuleSource::ValueFile(name) => candidates
            .iter()
            .copied()
            .filter(|f| f.rel == Path::new(name))
            .collect(),
        RuleSource::Value(_) => vec![],
    }
}

/// What a socket gets from the files its rule took: `None` for an `optional` socket without files, an
/// error for a required one (naming what the case holds). `names` are the case's name and path, for
/// a DICOM image set's name.
fn socket_source(
    rule: &SocketRule,
    optional: bool,
    planned: Vec<PlannedFile>,
    candidates: &[&CaseFile],
    (case, case_rel): (&str, &str),
) -> Result<Option<Source>, PlanError> {
    let found = || candidates.iter().map(|f| lossy(&f.rel)).collect();
    Ok(match &rule.source {
        RuleSource::Value(v) => Some(Source::Value(v.clone())),
        _ if planned.is_empty() && optional => None,
        RuleSource::Files { patterns, .. } | RuleSource::DicomImageSet { patterns, .. }
            if planned.is_empty() =>
        {
            return Err(PlanError::NoFiles {
                socket: rule.slug.clone(),
                patterns: patterns.clone(),
                found: found(),
            });
        }
        RuleSource::ValueFile(name) if planned.is_empty() => {
            return Err(PlanError::ValueFileMissing {
                socket: rule.slug.clone(),
                file: name.clone(),
                found: found(),
            });
        }
        RuleSource::Files { .. } => Some(Source::Files(planned)),
        RuleSource::DicomImageSet { image_name, .. } => Some(Source::DicomImageSet {
            files: planned,
            image_name: render(image_name, case, case_rel),
        }),
        RuleSource::ValueFile(_) => planned.into_iter().next().map(Source::ValueFile),
    })
}

/// What is wrong with a file `rel` (below the drop folder) that lies where the folder expects folders:
/// at depth `k` ≤ `depth`, where only folders leading to cases (or the cases themselves) belong. Says
/// where it would have to be, e.g. `P06001/<case>/IM0001` for `P06001/IM0001` at `depth = 2`.
pub fn misplaced_file_text(folder: &Folder, rel: &Path) -> String {
    let comps: Vec<String> = rel
        .components()
        .map(|c| path_text(Path::new(c.as_os_str())))
        .collect();
    let Some((name, parents)) = comps.split_last() else {
        return format!("{} is not a case", rel.display());
    };
    let at = comps.len();
    let mut example: Vec<String> = parents.to_vec();
    // The levels missing between the file's folder and the inside of a case folder.
    for _ in at..folder.depth {
        example.push("<folder>".into());
    }
    example.push("<case>".into());
    example.push(name.clone());
    format!(
        "{} is a file at depth {at}, where the drop folder holds folders: its cases are the folders \
         {} level(s) down (depth = {}), and a case's files are inside them. This file belongs to no \
         case and is not delivered; move it into a case folder, e.g. {}",
        comps.join("/"),
        folder.depth,
        folder.depth,
        example.join("/")
    )
}

/// Upload names are base names; where two files of one socket share a base name, their relative paths
/// (with `/` turned into `__`) keep them apart, because the platform's importer needs unique names.
fn planned_files(matched: &[&CaseFile]) -> Result<Vec<PlannedFile>, PlanError> {
    let base = |f: &CaseFile| {
        f.rel
            .file_name()
            .map(|n| path_text(Path::new(n)))
            .unwrap_or_default()
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for f in matched {
        *counts.entry(base(f)).or_default() += 1;
    }
    let mut out: Vec<PlannedFile> = matched
        .iter()
        .map(|f| {
            let b = base(f);
            let upload_name = if counts[&b] > 1 {
                lossy(&f.rel).replace('/', "__")
            } else {
                b
            };
            if upload_name.chars().count() > MAX_UPLOAD_NAME {
                return Err(PlanError::NameTooLong {
                    path: lossy(&f.rel),
                });
            }
            Ok(PlannedFile {
                path: lossy(&f.rel),
                rel: f.rel.clone(),
                upload_name,
                size: f.size,
            })
        })
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// What `explain` says about a path: which folder, case, rule and socket it maps to, or why none.
/// `misplaced`: the file among the path and its parents that lies where the folder expects a folder
/// (see [`crate::watch::misplaced_file`]), if any.
pub fn explain(
    config: &crate::config::Config,
    path: &Path,
    case_files: Option<&[CaseFile]>,
    misplaced: Option<&Path>,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(folder) = config.folder_for(path) else {
        out.push(format!(
            "{} is not inside any drop folder. The folders are:",
            path.display()
        ));
        out.extend(
            config
                .folders
                .iter()
                .map(|f| format!("  folder[{}] {}", f.index, f.path.display())),
        );
        return out;
    };
    let target = match folder.target {
        TargetKind::Archive => format!("archive {}", folder.target_slug),
        TargetKind::ReaderStudy => format!("reader study {}", folder.target_slug),
        TargetKind::Algorithm => format!("algorithm {}", folder.target_slug),
    };
    out.push(format!(
        "folder[{}] {} → {target}",
        folder.index,
        folder.path.display()
    ));
    if path == folder.path {
        out.push(format!(
            "this is the drop folder; its cases are the folders {} level(s) down whose name matches `{}`",
            folder.depth, folder.case_pattern
        ));
        return out;
    }
    if let Some(file) = misplaced {
        let rel = file.strip_prefix(&folder.path).unwrap_or(file);
        out.push(format!("not a case: {}", misplaced_file_text(folder, rel)));
        return out;
    }
    let Some(case_dir) = case_of(folder, path) else {
        out.push(not_a_case(folder, path));
        return out;
    };
    let case_name = case_dir
        .file_name()
        .map(|n| path_text(Path::new(n)))
        .unwrap_or_default();
    let case_rel = lossy(case_dir.strip_prefix(&folder.path).unwrap_or(&case_dir));
    out.push(format!(
        "case {case_rel}, title \"{}\"",
        render(&folder.title, &case_name, &case_rel)
    ));
    if path != case_dir {
        let rel = path.strip_prefix(&case_dir).unwrap_or(path);
        out.push(explain_file(folder, rel));
        return out;
    }
    if let Some(files) = case_files {
        out.extend(explain_case(folder, &case_dir, files));
    }
    out
}

/// Why a path inside a drop folder is not part of a case.
fn not_a_case(folder: &Folder, path: &Path) -> String {
    let rel = path.strip_prefix(&folder.path).unwrap_or(path);
    let first: PathBuf = rel.components().take(folder.depth).collect();
    if is_ignored(folder, &first) {
        return format!(
            "not part of a case: `{}` is hidden or named like a temporary file ({}), so it is not a \
             case (yet)",
            first.display(),
            folder.ignore_patterns.join(" ")
        );
    }
    format!(
        "not part of a case: `{}` does not match the case pattern `{}` at depth {}",
        first.display(),
        folder.case_pattern,
        folder.depth
    )
}

/// What keeps a case from being ready, and which of its files go to which socket.
fn explain_case(folder: &Folder, case_dir: &Path, files: &[CaseFile]) -> Vec<String> {
    let mut out = Vec::new();
    let temp: Vec<String> = files
        .iter()
        .filter(|f| is_ignored(folder, &f.rel))
        .map(|f| lossy(&f.rel))
        .collect();
    if !temp.is_empty() {
        out.push(format!(
            "not ready: temporary files remain: {}",
            temp.join(", ")
        ));
    }
    if let Some(m) = &folder.marker
        && !files.iter().any(|f| f.rel == Path::new(m))
    {
        out.push(format!("not ready: the marker file {m} is missing"));
    }
    let p = match plan(folder, case_dir, files) {
        Ok(p) => p,
        Err(e) => {
            out.push(format!("cannot be planned: {e}"));
            return out;
        }
    };
    for s in &p.sockets {
        out.push(match &s.source {
            Source::Value(v) => format!("  socket {} ← the value {v} from the config", s.slug),
            Source::DicomImageSet { files, image_name } => format!(
                "  socket {} ← DICOM image set \"{image_name}\" from {} file(s)",
                s.slug,
                files.len()
            ),
            src => {
                let names: Vec<&str> = src.files().iter().map(|f| f.path.as_str()).collect();
                format!("  socket {} ← {}", s.slug, names.join(", "))
            }
        });
    }
    if !p.unmatched.is_empty() {
        out.push(format!(
            "  not uploaded (no rule takes them): {}",
            p.unmatched.join(", ")
        ));
    }
    out
}

fn explain_file(folder: &Folder, rel: &Path) -> String {
    if folder.marker.as_deref().map(Path::new) == Some(rel) {
        return format!(
            "{} is the completion marker; it is not uploaded",
            rel.display()
        );
    }
    if is_ignored(folder, rel) {
        return format!(
            "{} is a temporary file (ignore patterns); while it exists the case is not ready",
            rel.display()
        );
    }
    let hits: Vec<&str> = folder
        .sockets
        .iter()
        .filter(|r| match &r.source {
            RuleSource::Files { matcher, .. } | RuleSource::DicomImageSet { matcher, .. } => {
                matcher.is_match(rel)
            }
            RuleSource::ValueFile(name) => Path::new(name) == rel,
            RuleSource::Value(_) => false,
        })
        .map(|r| r.slug.as_str())
        .collect();
    match hits.as_slice() {
        [] => format!(
            "{} matches no socket rule; it is not uploaded",
            rel.display()
        ),
        [one] => format!("{} → socket {one}", rel.display()),
        many => format!(
            "{} matches several socket rules ({}): the case cannot be planned",
            rel.display(),
            many.join(", ")
        ),
    }
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    pub socket: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What exactly was (or will be) delivered: the identity of a case's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
    /// SHA-256 over the sorted entries, the target and constant values: the idempotency key of a delivery.
    pub hash: String,
}

impl Manifest {
    /// Combine a plan with the files' digests (`sha256` by relative path).
    pub fn new(plan: &Plan, sha256: &BTreeMap<String, String>) -> Manifest {
        let mut entries: Vec<ManifestEntry> = plan
            .sockets
            .iter()
            .flat_map(|s| {
                s.source.files().into_iter().map(move |f| ManifestEntry {
                    socket: s.slug.clone(),
                    path: f.path.clone(),
                    size: f.size,
                    sha256: sha256.get(&f.path).cloned().unwrap_or_default(),
                })
            })
            .collect();
        entries.sort_by(|a, b| (&a.socket, &a.path).cmp(&(&b.socket, &b.path)));
        let mut h = Sha256::new();
        h.update(format!(
            "{:?}\0{}\0{}\n",
            plan.target, plan.target_slug, plan.title
        ));
        for e in &entries {
            h.update(format!(
                "{}\0{}\0{}\0{}\n",
                e.socket, e.path, e.size, e.sha256
            ));
        }
        for s in &plan.sockets {
            if let Source::Value(v) = &s.source {
                h.update(format!("{}\0={v}\n", s.slug));
            }
            if let Source::DicomImageSet { image_name, .. } = &s.source {
                h.update(format!("{}\0name={image_name}\n", s.slug));
            }
        }
        Manifest {
            entries,
            hash: hex::encode(h.finalize()),
        }
    }
}

/// The part of `plan` that differs from what `delivered` holds: sockets whose files (paths, sizes, SHA-256)
/// changed or are new. Constant values always stay in (re-sending one is a no-op on the platform).
pub fn changed_sockets(plan: &Plan, now: &Manifest, delivered: &Manifest) -> Plan {
    let files_of = |m: &Manifest, slug: &str| -> Vec<(String, u64, String)> {
        m.entries
            .iter()
            .filter(|e| e.socket == slug)
            .map(|e| (e.path.clone(), e.size, e.sha256.clone()))
            .collect()
    };
    let mut out = plan.clone();
    out.sockets.retain(|s| {
        matches!(s.source, Source::Value(_))
            || files_of(now, &s.slug) != files_of(delivered, &s.slug)
    });
    out
}

/// SHA-256 of every planned file, streamed (memory stays flat whatever the size).
pub fn hash_files(case_dir: &Path, plan: &Plan) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for s in &plan.sockets {
        for f in s.source.files() {
            let mut file = std::fs::File::open(case_dir.join(&f.rel))?;
            let mut h = Sha256::new();
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            out.insert(f.path.clone(), hex::encode(h.finalize()));
        }
    }
    Ok(out)
}

/// `sha256:` and the first 16 hex digits of SHA-256 over the drop folder and the case path: enough to
/// tell cases apart and to find one in `status --json` (which shows the same id), too little to guess a
/// patient from.
pub fn case_id(folder: &Path, case: &str) -> String {
    let mut h = Sha256::new();
    h.update(folder.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(case.as_bytes());
    format!("sha256:{}", &hex::encode(h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn folder(sockets: &str) -> Folder {
        let text = format!(
            "[server]\nurl = \"http://localhost/api/v1/\"\n[[folder]]\npath = \"/drop\"\narchive = \"a\"\ncase = \"p*\"\nmarker = \"DONE\"\n{sockets}"
        );
        Config::parse(Path::new("/c.toml"), &text)
            .unwrap()
            .folders
            .remove(0)
    }

    fn files(list: &[(&str, u64)]) -> Vec<CaseFile> {
        list.iter()
            .map(|(p, s)| CaseFile {
                rel: PathBuf::from(p),
                size: *s,
            })
            .collect()
    }

    const RULES: &str = "[[folder.socket]]\nslug = \"ct\"\nfiles = \"ct/**/*.dcm\"\n[[folder.socket]]\nslug = \"report\"\nfiles = \"report.pdf\"\noptional = true\n[[folder.socket]]\nslug = \"score\"\nvalue_file = \"score.json\"\n[[folder.socket]]\nslug = \"site\"\nvalue = 3\n";

    #[test]
    fn maps_files_to_sockets_and_renders_the_title() {
        let f = folder(RULES);
        let p = plan(
            &f,
            Path::new("/drop/p1"),
            &files(&[
                ("ct/a.dcm", 10),
                ("ct/b.dcm", 11),
                ("score.json", 3),
                ("notes.txt", 5),
                ("DONE", 0),
                ("x.part", 9),
            ]),
        )
        .unwrap();
        assert_eq!(p.title, "p1");
        let slugs: Vec<&str> = p.sockets.iter().map(|s| s.slug.as_str()).collect();
        assert_eq!(
            slugs,
            ["ct", "score", "site"],
            "the optional report is left out"
        );
        assert_eq!(p.sockets[0].source.files().len(), 2);
        assert_eq!(
            p.unmatched,
            ["notes.txt"],
            "marker and temp files are neither uploaded nor unmatched"
        );
        assert_eq!(p.sockets[2].source, Source::Value(serde_json::json!(3)));
    }

    #[test]
    fn a_hash_title_is_stable_and_hides_the_folder_name() {
        let t = render("case-{hash}", "DOE_JANE", "ward/DOE_JANE");
        assert_eq!(t, render("case-{hash}", "DOE_JANE", "ward/DOE_JANE"));
        assert_ne!(t, render("case-{hash}", "DOE_JOHN", "ward/DOE_JOHN"));
        assert!(!t.contains("DOE"), "{t}");
        assert_eq!(t.len(), "case-".len() + 16);
    }

    #[test]
    fn missing_sources_and_empty_files_are_errors_that_name_the_socket() {
        let f = folder(RULES);
        let e = plan(&f, Path::new("/drop/p1"), &files(&[("score.json", 3)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket ct: no file matches ct/**/*.dcm; the case holds: score.json"
        );
        let e = plan(&f, Path::new("/drop/p1"), &files(&[("ct/a.dcm", 10)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket score: value file score.json is missing; the case holds: ct/a.dcm"
        );
        let many: Vec<(String, u64)> = (0..25).map(|i| (format!("x{i:02}.txt"), 1)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let e = plan(&f, Path::new("/drop/p1"), &files(&many)).unwrap_err();
        assert!(
            e.to_string().ends_with("x18.txt, x19.txt and 5 more"),
            "{e}"
        );
        let e = plan(
            &f,
            Path::new("/drop/p1"),
            &files(&[("ct/a.dcm", 0), ("score.json", 1)]),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::EmptyFile { .. }));
    }

    #[test]
    fn a_file_claimed_by_two_rules_is_ambiguous() {
        let f = folder(
            "[[folder.socket]]\nslug = \"a\"\nfiles = \"*.mha\"\n[[folder.socket]]\nslug = \"b\"\nfiles = \"x*\"\n",
        );
        let e = plan(&f, Path::new("/drop/p1"), &files(&[("x.mha", 1)])).unwrap_err();
        assert!(matches!(e, PlanError::Ambiguous { .. }), "{e}");
    }

    #[test]
    fn duplicate_base_names_get_unique_upload_names() {
        let f = folder("[[folder.socket]]\nslug = \"ct\"\nfiles = \"**/*.dcm\"\n");
        let p = plan(
            &f,
            Path::new("/drop/p1"),
            &files(&[("s1/1.dcm", 1), ("s2/1.dcm", 1), ("2.dcm", 1)]),
        )
        .unwrap();
        let names: Vec<String> = p.sockets[0]
            .source
            .files()
            .iter()
            .map(|f| f.upload_name.clone())
            .collect();
        assert_eq!(names, ["2.dcm", "s1__1.dcm", "s2__1.dcm"]);
    }

    #[test]
    fn names_that_are_not_utf8_keep_their_bytes_in_titles_and_paths() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let f = folder(
            r#"[[folder.socket]]
slug = "ct"
files = "*.mha""#,
        );
        let plan_of = |name: &[u8]| {
            let case = f.path.join(OsStr::from_bytes(name));
            let file = CaseFile {
                rel: PathBuf::from(OsStr::from_bytes(b"ct-\xe9.mha")),
                size: 3,
            };
            plan(&f, &case, &[file]).unwrap()
        };
        let (mueller, moeller) = (plan_of(b"M\xfcller"), plan_of(b"M\xf6ller"));
        assert_eq!(mueller.title, "M\\xfcller");
        assert_eq!(moeller.title, "M\\xf6ller");
        assert_eq!(mueller.case_path, "M\\xfcller");
        assert_eq!(mueller.sockets[0].source.files()[0].path, "ct-\\xe9.mha");
        // A UTF-8 name is its own title, and differs from the Latin-1 spelling of the same word.
        assert_eq!(plan_of("Müller".as_bytes()).title, "Müller");
    }

    #[test]
    fn case_of_respects_depth_and_pattern() {
        let f = folder(RULES);
        assert_eq!(
            case_of(&f, Path::new("/drop/p1/ct/a.dcm")),
            Some(PathBuf::from("/drop/p1"))
        );
        assert_eq!(case_of(&f, Path::new("/drop/q1/a.dcm")), None);
        assert_eq!(case_of(&f, Path::new("/elsewhere/p1")), None);
        let text = format!(
            "[server]\nurl = \"http://localhost/api/v1/\"\n[[folder]]\npath = \"/drop\"\narchive = \"a\"\n{RULES}"
        );
        let any = Config::parse(Path::new("/c.toml"), &text)
            .unwrap()
            .folders
            .remove(0);
        assert_eq!(
            case_of(&any, Path::new("/drop/x/a.dcm")),
            Some(PathBuf::from("/drop/x"))
        );
        for hidden in [
            "/drop/.snapshot/a",
            "/drop/.staging-p1/a",
            "/drop/p1.part/a",
        ] {
            assert_eq!(case_of(&any, Path::new(hidden)), None, "{hidden}");
        }
    }

    #[test]
    fn manifest_hash_changes_with_content_and_mapping() {
        let f = folder(RULES);
        let fs = files(&[("ct/a.dcm", 10), ("score.json", 3)]);
        let p = plan(&f, Path::new("/drop/p1"), &fs).unwrap();
        let mut h: BTreeMap<String, String> = [("ct/a.dcm", "aa"), ("score.json", "bb")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let m1 = Manifest::new(&p, &h);
        assert_eq!(m1, Manifest::new(&p, &h), "deterministic");
        h.insert("ct/a.dcm".into(), "cc".into());
        assert_ne!(m1.hash, Manifest::new(&p, &h).hash);
        let p2 = plan(&f, Path::new("/drop/p2"), &fs).unwrap();
        assert_ne!(
            Manifest::new(&p2, &h).hash,
            Manifest::new(&p, &h).hash,
            "the title is part of the identity"
        );
    }
    #[test]
    fn explain_names_folder_case_and_socket_or_why_not() {
        let text = format!(
            "[server]\nurl = \"http://localhost/api/v1/\"\n[[folder]]\npath = \"/drop\"\narchive = \"a\"\ncase = \"p*\"\nmarker = \"DONE\"\n{RULES}"
        );
        let c = Config::parse(Path::new("/c.toml"), &text).unwrap();
        let e = explain(&c, Path::new("/elsewhere/x"), None, None);
        assert!(e[0].contains("not inside any drop folder"), "{e:?}");
        let e = explain(&c, Path::new("/drop/q1/a.dcm"), None, None);
        assert!(
            e[1].contains("does not match the case pattern `p*`"),
            "{e:?}"
        );
        let e = explain(&c, Path::new("/drop/p1/ct/a.dcm"), None, None);
        assert_eq!(e[2], "ct/a.dcm → socket ct");
        let e = explain(&c, Path::new("/drop/p1/x.part"), None, None);
        assert!(e[2].contains("temporary file"), "{e:?}");
        let e = explain(
            &c,
            Path::new("/drop/p1"),
            Some(&files(&[("ct/a.dcm", 1), ("score.json", 1)])),
            None,
        );
        assert!(
            e.iter().any(|l| l.contains("marker file DONE is missing")),
            "{e:?}"
        );
        assert!(e.iter().any(|l| l == "  socket ct ← ct/a.dcm"), "{e:?}");
        assert!(
            e.iter()
                .any(|l| l == "  socket site ← the value 3 from the config"),
            "{e:?}"
        );
        // A file where a case folder is expected is no case, and explain says where it belongs.
        let e = explain(&c, Path::new("/drop/p9"), None, Some(Path::new("/drop/p9")));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[1].starts_with("not a case: p9 is a file at depth 1") && e[1].ends_with("<case>/p9"),
            "{e:?}"
        );
    }
    #[test]
    fn only_sockets_whose_files_changed_are_sent_again() {
        let f = folder(RULES);
        let p = plan(
            &f,
            Path::new("/drop/p1"),
            &files(&[("ct/a.dcm", 10), ("score.json", 3)]),
        )
        .unwrap();
        let digests = |a: &str, b: &str| -> BTreeMap<String, String> {
            [("ct/a.dcm", a), ("score.json", b)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let before = Manifest::new(&p, &digests("aa", "bb"));
        let after = Manifest::new(&p, &digests("aa", "cc"));
        let slugs: Vec<String> = changed_sockets(&p, &after, &before)
            .sockets
            .into_iter()
            .map(|s| s.slug)
            .collect();
        assert_eq!(
            slugs,
            ["score", "site"],
            "the unchanged image is not sent again; constants always are"
        );
    }
}
