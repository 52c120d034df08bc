//! Delivery of one planned case: check, uploads started while the case is de-identified and judged
//! (`uploads`) → item → one PATCH ([`send`]), then verify on the server ([`verify`]). The two are
//! apart so that a case waiting for the platform's import holds no upload slot: what verifying needs
//! ([`AwaitingImport`]) is in the journal, and a restart waits on instead of sending the case again.
//!
//! Everything that can be checked before anything is created on the platform is checked first (sockets
//! exist and fit their rules, every JSON value is valid for its socket's kind by the platform's built-in
//! schemas, gc-protocol.md §3.7, and every image socket's files as sent are judged by the importer that
//! follows the platform's, refused only when that importer is certain the platform would fail them; a
//! DICOM image set's by the rules of the platform's DICOM import, which reports its failures to no API),
//! so a bad case leaves nothing half-made. An item is only ever adopted
//! (instead of created) when the journal proves it is this case's own lost creation, and a title another
//! case holds is refused before anything is created. When the platform refuses a case after its item
//! exists, the error says what is left there. The outcome is classified for the caller: quarantine the
//! case, pause the target, or try again later. A case of an algorithm folder goes the same way up to
//! the uploads, then becomes one job instead of an item ([`job`]).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::journal::{Step, TitleClaim};
use crate::rules::{Plan, PlannedFile, Source};
use gc_client::models::UserUpload;
use gc_client::uploads::LocalFile;
use gc_client::verify::{Awaiting, Expectation, VerifyTiming};
use gc_client::{
    Client, GcError, Item, Socket, SuperKind, Target, ValueEntry, Verifier, models::ValueSource,
};
use gc_content::deidentify::{PatientIdentifiers, Procedure, UidMap};

pub mod bundle;
pub mod job;
pub mod lanes;
mod uploads;
pub mod wait;
pub use bundle::Bundle;
pub use job::JobDone;
pub use lanes::Lanes;
use uploads::Uploads;
pub use uploads::{EarlierUpload, UploadRecord};
pub use wait::ImportWait;

/// Value files larger than this are refused: large structured values belong in file sockets.
pub const MAX_VALUE_FILE: u64 = 16 << 20;

/// Where a delivery reports its progress, so that it can be resumed after a crash at any instant.
/// Every hook is called after the platform confirmed the step and before the next step starts.
pub trait Checkpoints: UploadRecord {
    /// Right before the request to create the item titled `title` is sent: take the title for this case
    /// and record that a create may be under way. The answer says whether another case holds the title,
    /// or whether an earlier attempt of this case already sent such a request. Without a journal nothing
    /// is known: nothing is ever adopted.
    fn creating(&self, _target: &Target, _title: &str) -> Result<TitleClaim, String> {
        Ok(TitleClaim::Fresh)
    }
    /// The platform refused the create request: it created nothing.
    fn create_refused(&self) -> Result<(), String> {
        Ok(())
    }
    /// The item exists (created or adopted): record its pk before anything is uploaded into it.
    fn item(&self, _pk: &str) -> Result<(), String> {
        Ok(())
    }
    /// The delivery moves on to `step`.
    fn step(&self, _step: Step) -> Result<(), String> {
        Ok(())
    }
    /// The PATCH was answered: the case now waits for the platform's imports. Record what verifying
    /// needs, so that a restart waits on instead of sending the case again.
    fn awaiting(&self, _awaiting: &AwaitingImport) -> Result<(), String> {
        self.step(Step::Verifying)
    }
    /// Asked after the uploads, before the PATCH: is the case still exactly what was planned? A file
    /// rewritten during the upload must not end up on the platform half old, half new.
    fn unchanged(&self) -> bool {
        true
    }
    /// Right before a request to start a job of algorithm `slug` is sent: record it, or say why not yet.
    fn job_starting(&self, _slug: &str) -> Result<crate::journal::JobStart, String> {
        Ok(crate::journal::JobStart::Fresh)
    }
    /// The platform refused to start the job: none was started.
    fn job_refused(&self) -> Result<(), String> {
        Ok(())
    }
    /// Jobs of algorithm `slug` that other cases hold.
    fn claimed_jobs(&self, _slug: &str) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
    /// Where a running job stands (its status label), for `status`.
    fn job_status(&self, _pk: &str, _status: &str) {}
    /// Verification has been waiting a while for the platform to import values (told after each poll
    /// until they are there), for `status` and `upload`'s progress line.
    fn waiting(&self, _wait: &ImportWait) {}
}

/// No journal: the one-shot upload without progress output.
pub struct NoCheckpoints;
impl Checkpoints for NoCheckpoints {}
impl UploadRecord for NoCheckpoints {}

/// Where a delivery reads and writes on this machine. (No `Debug`: the UID map is a secret.)
#[derive(Clone, Copy)]
pub struct Local<'a> {
    pub case_dir: &'a Path,
    /// De-identification of DICOM files, when it is on.
    pub privacy: Option<&'a Privacy>,
    /// Where files made for sending go (the ZIP of a series, see [`bundle`]); the caller removes it
    /// afterwards. Without one, every file is sent on its own.
    pub staging: Option<&'a Path>,
    /// An algorithm folder's outbox.
    pub outbox: Option<crate::outbox::Outbox<'a>>,
}

/// De-identification of a case's DICOM files: where the copies go and the case's UID map.
pub struct Privacy {
    /// The case's own staging folder under the state directory; the caller removes it afterwards.
    pub staging: PathBuf,
    pub uids: UidMap,
}

/// Remove a staging folder and what is in it; a folder that is not there is fine.
pub fn remove_staging(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), "cannot remove de-identified copies: {e}"),
    }
}

/// A file that was sent as a de-identified copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Relative to the case, as in the plan.
    pub path: String,
    /// Where the copy was made; removed once sent, so not kept in the journal (nor is it valid text
    /// when a file's name is not).
    #[serde(skip)]
    pub local: PathBuf,
    /// The name the copy is uploaded under: neutral ([`neutral_name`]), never the original's name,
    /// which may carry identifiers (a scanner's `CT.<SOP Instance UID>`, a patient's name).
    pub upload_name: String,
    /// SHA-256 of the copy: what was sent.
    pub sha256: String,
}

impl Staged {
    /// The copy as the client sends it.
    fn local_file(&self) -> LocalFile {
        LocalFile {
            path: self.local.clone(),
            filename: self.upload_name.clone(),
        }
    }
}

/// What de-identification did for a delivery.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deidentified {
    /// The procedure's version, when de-identification was on.
    pub procedure: Option<String>,
    pub staged: Vec<Staged>,
    /// Said at delivery, and kept in the receipt: e.g. a title that repeats a patient's ID.
    pub warnings: Vec<String>,
    /// The patient identifiers the DICOM files held (each set once), to warn about titles that repeat
    /// them; never written anywhere.
    /// Never written anywhere: kept out of the journal's record of a wait.
    #[serde(skip)]
    pub identifiers: Vec<PatientIdentifiers>,
    /// Every file uploaded by this delivery (relative paths), copies or not: an update sends only the
    /// sockets that changed.
    pub sent: Vec<String>,
}

/// Which item the case goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemStart {
    /// Create an item titled after the case. If the title is taken by an item without values that this
    /// case's journal tried to create before (a creation whose answer was lost), that item is adopted.
    New,
    /// Update this existing item (a resumed delivery, or late files in a delivered case).
    Existing(String),
}

/// Seconds a delivery spent in each phase, for the receipt: where the time went, at a glance. Phases
/// that overlap (de-identification and upload) each count their own wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the first sight of the case to the decision that it had stopped changing.
    pub settle: f64,
    /// Ready, waiting for an upload slot.
    pub queued: f64,
    /// Planning, hashing, the sockets looked up, values and images checked.
    pub prechecks: f64,
    pub deidentify: f64,
    /// From the first file started until the last one sent, the item's creation included. Files go
    /// while the case is de-identified and its copies checked, so this span overlaps those two.
    pub upload: f64,
    pub patch: f64,
    /// From the PATCH's answer until the platform showed every value (across restarts).
    pub import_wait: f64,
}

impl Timings {
    /// Add the time since `start` to a phase.
    pub fn add(phase: &mut f64, start: Instant) {
        *phase += start.elapsed().as_secs_f64();
    }
}

/// A case whose values are set, waiting for the platform to import its files: everything verifying it
/// needs and its receipt will say. Kept in the journal while it waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwaitingImport {
    pub target: Target,
    pub item_pk: String,
    /// The item was created by this delivery (not an update of an earlier one).
    pub created: bool,
    pub expectations: Vec<Expectation>,
    /// The case's files of each socket, named in an import failure's message.
    pub files: Vec<(String, Vec<String>)>,
    pub deidentified: Deidentified,
    /// The phases up to the PATCH.
    pub timings: Timings,
}

/// What sending a case ended with.
#[derive(Debug)]
pub enum Sent {
    /// An algorithm's job, followed to its end: nothing more to wait for.
    Done(Box<Delivered>),
    /// An item whose values are set: [`verify`] waits for the platform's imports.
    Awaiting(Box<AwaitingImport>),
}

/// What the platform holds after a verified delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub target: Target,
    /// The item, display set or (for an algorithm) job.
    pub item_pk: String,
    pub item_api_url: String,
    /// The values of the item; a job's inputs.
    pub sockets: Vec<SocketResult>,
    pub deidentified: Deidentified,
    /// For an algorithm: the job and where its outputs were written.
    pub job: Option<JobDone>,
}

#[derive(Debug, Clone)]
pub struct SocketResult {
    pub slug: String,
    pub value_pk: i64,
    pub value: Option<serde_json::Value>,
    pub image: Option<String>,
    pub file: Option<String>,
}

impl From<&gc_client::ItemValue> for SocketResult {
    fn from(v: &gc_client::ItemValue) -> Self {
        SocketResult {
            slug: v.interface.slug().to_owned(),
            value_pk: v.pk,
            value: v.value.clone(),
            image: v.image.clone(),
            file: v.file.clone(),
        }
    }
}

/// Why a delivery did not complete, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The case cannot be delivered as it is; the reason is for the receipt, in the platform's words where
    /// it gave any.
    #[error("{0}")]
    Quarantine(String),
    /// The token may not do this: pause the target and alert, rather than failing case after case.
    #[error("{0}")]
    Auth(Box<GcError>),
    /// The platform is unavailable or over a quota: the same delivery can succeed later.
    #[error("{0}")]
    Later(Box<GcError>),
    /// The case changed while it was being uploaded: settle it again and deliver the new content.
    #[error("the case changed while it was being uploaded")]
    Changed,
    /// A checkpoint could not be recorded: continuing would risk a duplicate after a crash.
    #[error("cannot record progress: {0}")]
    Checkpoint(String),
    /// Something on this side must happen first, or failed (another case's job start is unconfirmed;
    /// writing an algorithm's results failed): try again later.
    #[error("{0}")]
    Local(String),
}

impl From<uploads::Failed> for DeliverError {
    fn from(e: uploads::Failed) -> Self {
        match e {
            uploads::Failed::Platform(e) => e.into(),
            uploads::Failed::Record(e) => DeliverError::Checkpoint(e),
        }
    }
}

impl From<GcError> for DeliverError {
    fn from(e: GcError) -> Self {
        match e {
            GcError::Auth { .. } => DeliverError::Auth(Box::new(e)),
            // Not the case's fault; a dead upload is simply made again by the next attempt.
            GcError::TooManyUploads(_)
            | GcError::UploadLimit(_)
            | GcError::JobLimit(_)
            | GcError::Unavailable { .. }
            | GcError::UploadDead { .. }
            | GcError::Protocol { .. }
            | GcError::Config(_) => DeliverError::Later(Box::new(e)),
            GcError::Rejected { .. }
            | GcError::NotFound(_)
            | GcError::ImportFailed { .. }
            | GcError::VerifyTimeout { .. }
            | GcError::Io { .. } => DeliverError::Quarantine(e.to_string()),
        }
    }
}

/// How one socket's value travels, decided from the rule and the socket's super kind.
enum Route<'a> {
    Image(&'a [PlannedFile]),
    DicomImageSet(&'a [PlannedFile], &'a str),
    File(&'a PlannedFile),
    Value(serde_json::Value),
}

impl Route<'_> {
    /// The case's files this socket sends (none for a value).
    fn files(&self) -> &[PlannedFile] {
        match self {
            Route::Image(fs) | Route::DicomImageSet(fs, _) => fs,
            Route::File(f) => std::slice::from_ref(*f),
            Route::Value(_) => &[],
        }
    }
}

fn quarantine(msg: String) -> DeliverError {
    DeliverError::Quarantine(msg)
}

/// The kind of source a rule gives, as far as fitting a socket goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceShape {
    Files,
    DicomImageSet,
    ValueFile,
    Value,
}

impl SourceShape {
    pub fn of(source: &Source) -> SourceShape {
        match source {
            Source::Files(_) => SourceShape::Files,
            Source::DicomImageSet { .. } => SourceShape::DicomImageSet,
            Source::ValueFile(_) => SourceShape::ValueFile,
            Source::Value(_) => SourceShape::Value,
        }
    }
}

/// Can a source of this shape fill this socket? The error says what to change in the rule. Used before a
/// delivery and by `check --online`, so both judge alike.
pub fn fits(shape: SourceShape, socket: &Socket) -> Result<(), String> {
    let (slug, kind) = (&socket.slug, &socket.kind);
    match (shape, socket.super_kind) {
        (SourceShape::Files, SuperKind::Image) if socket.is_dicom_image_set() => Err(format!(
            "socket {slug} is a DICOM image set: its rule needs an image_name"
        )),
        (SourceShape::DicomImageSet, _) if !socket.is_dicom_image_set() => Err(format!(
            "socket {slug} is a {kind} socket, not a DICOM image set: remove image_name"
        )),
        (SourceShape::Files | SourceShape::DicomImageSet, SuperKind::Image)
        | (SourceShape::Files | SourceShape::ValueFile, SuperKind::File)
        | (SourceShape::ValueFile | SourceShape::Value, SuperKind::Value) => Ok(()),
        (SourceShape::Files | SourceShape::DicomImageSet, SuperKind::Value) => Err(format!(
            "socket {slug} takes a {kind} value, not files: use value_file or value"
        )),
        (SourceShape::ValueFile | SourceShape::Value, SuperKind::Image) => Err(format!(
            "socket {slug} is an image socket ({kind}): give files"
        )),
        (SourceShape::Value | SourceShape::DicomImageSet, SuperKind::File) => Err(format!(
            "socket {slug} stores its {kind} value as a file: use value_file"
        )),
    }
}

/// Decide the route of one socket, refusing combinations the platform would reject.
fn route<'a>(
    case_dir: &Path,
    socket: &Socket,
    source: &'a Source,
) -> Result<Route<'a>, DeliverError> {
    fits(SourceShape::of(source), socket).map_err(quarantine)?;
    Ok(match (source, socket.super_kind) {
        (Source::Files(files), SuperKind::File) => match files.as_slice() {
            [one] => Route::File(one),
            many => {
                let names: Vec<&str> = many.iter().map(|f| f.path.as_str()).collect();
                return Err(quarantine(format!(
                    "socket {} ({}) takes exactly one file, but {} match: {}",
                    socket.slug,
                    socket.kind,
                    many.len(),
                    names.join(", ")
                )));
            }
        },
        (Source::Files(files), _) => Route::Image(files),
        (Source::DicomImageSet { files, image_name }, _) => Route::DicomImageSet(files, image_name),
        (Source::ValueFile(f), SuperKind::Value) => {
            let value = read_value_file(case_dir, f)?;
            valid_for(socket, &value).map_err(|e| quarantine(format!("{}: {e}", f.path)))?;
            Route::Value(value)
        }
        (Source::ValueFile(f), _) => {
            // A JSON kind stored as a file is validated by the platform after the item exists.
            if gc_content::schema::builtin_schema(&socket.kind).is_some() {
                let value = read_value_file(case_dir, f)?;
                valid_for(socket, &value).map_err(|e| quarantine(format!("{}: {e}", f.path)))?;
            }
            Route::File(f)
        }
        (Source::Value(v), _) => {
            valid_for(socket, v)
                .map_err(|e| quarantine(format!("the configured value {v}: {e}")))?;
            Route::Value(v.clone())
        }
    })
}

/// Is `value` valid for the socket by the built-in schema of its kind? The error is the platform's own
/// message, followed by the socket. A socket's custom schema is not served by the API (gc-protocol.md §3.1):
/// only the platform can check that one.
fn valid_for(socket: &Socket, value: &serde_json::Value) -> Result<(), String> {
    gc_content::schema::validate_value(&socket.kind, value).map_err(|e| {
        format!(
            "{e} (socket {}, a {} socket); nothing was created on the platform",
            socket.slug, socket.kind
        )
    })
}

fn read_value_file(case_dir: &Path, f: &PlannedFile) -> Result<serde_json::Value, DeliverError> {
    if f.size > MAX_VALUE_FILE {
        return Err(quarantine(format!(
            "{}: {} bytes is too large for a value (at most {MAX_VALUE_FILE})",
            f.path, f.size
        )));
    }
    let bytes = std::fs::read(case_dir.join(&f.rel))
        .map_err(|e| quarantine(format!("{}: cannot read: {e}", f.path)))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| quarantine(format!("{} is not valid JSON: {e}", f.path)))?;
    if value.is_null() {
        return Err(quarantine(format!(
            "{}: null is never accepted as a value",
            f.path
        )));
    }
    Ok(value)
}

/// Make the de-identified copies of every DICOM file (by content, however stored) that goes to an image
/// socket, under `privacy.staging`: `gate`, then `copy_all`.
pub fn stage(
    case_dir: &Path,
    files: &[PlannedFile],
    privacy: &Privacy,
) -> Result<Deidentified, DeliverError> {
    let dicom = gate(case_dir, files)?;
    copy_all(case_dir, files, &dicom, privacy, &|_| true)
}

/// Which of the files that go to image sockets hold DICOM (their indexes), judged by content before any
/// file of the case leaves. Fail closed: a file that is neither DICOM nor a recognised non-DICOM format
/// ([`gc_content::deidentify::sniff`]), or one that cannot be read, refuses the case.
fn gate(case_dir: &Path, files: &[PlannedFile]) -> Result<Vec<usize>, DeliverError> {
    use gc_content::deidentify::sniff::{Verdict, judge};
    // Detached MetaImage data files have no signature: they pass because a header names them.
    let rels: Vec<&Path> = files.iter().map(|f| f.rel.as_path()).collect();
    let named = gc_content::deidentify::sniff::named_data_files(case_dir, &rels);
    let mut dicom = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match judge(case_dir, &f.rel, &named)
            .map_err(|e| quarantine(format!("{}: cannot read: {e}", f.path)))?
        {
            Verdict::Dicom(_) => dicom.push(i),
            Verdict::Plain(_) => {}
            Verdict::Refused(why) => {
                return Err(quarantine(format!(
                    "{}: {why}; nothing was created on the platform",
                    f.path
                )));
            }
        }
    }
    Ok(dicom)
}

/// Make the de-identified copy of each of `files` that [`gate`] found DICOM (`dicom`), one worker per
/// core, telling `made` of each as soon as it exists (`made` answering `false` stops the rest). Fail
/// closed: a file the procedure refuses, or one that cannot be read, refuses the case and stops the
/// others.
fn copy_all(
    case_dir: &Path,
    files: &[PlannedFile],
    dicom: &[usize],
    privacy: &Privacy,
    made: &(dyn Fn(&Staged) -> bool + Sync),
) -> Result<Deidentified, DeliverError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let procedure = Procedure::builtin().map_err(quarantine)?;
    // One file per core at a time: de-identification is CPU work, and a delivery waits for all of it.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(dicom.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut results: Vec<(usize, Result<StagedFile, DeliverError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&i) = dicom.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let Some(f) = files.get(i) else { break };
                        let r = copy_one(case_dir, (i, f), privacy, procedure);
                        if !r.as_ref().is_ok_and(|s| made(&s.staged)) {
                            failed.store(true, Ordering::Relaxed);
                        }
                        out.push((i, r));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    // The same case gives the same answer: the first bad file in plan order, the copies in plan order.
    results.sort_by_key(|(i, _)| *i);
    let mut done = Deidentified {
        procedure: Some(procedure.version.clone()),
        ..Deidentified::default()
    };
    let processed = results.len();
    for (_, r) in results {
        let s = r?;
        done.identifiers.push(s.identifiers);
        done.staged.push(s.staged);
    }
    // Without a bad file every file was seen, unless a worker died: then nothing may go out, lest a
    // file that was never looked at be sent as it is.
    if processed != dicom.len() {
        return Err(quarantine(format!(
            "de-identification failed unexpectedly after {processed} of {} files",
            dicom.len()
        )));
    }
    done.identifiers.sort();
    done.identifiers.dedup();
    Ok(done)
}

/// The files of one image socket as they will be sent.
struct SocketFiles {
    slug: String,
    /// A DICOM image set socket (imported as a set, not by panimg).
    dicom_set: bool,
    /// (case path, upload name, local path)
    files: Vec<(String, String, PathBuf)>,
}

impl SocketFiles {
    fn uploads(&self) -> Vec<(String, PathBuf)> {
        self.files
            .iter()
            .map(|(_, name, local)| (name.clone(), local.clone()))
            .collect()
    }

    fn paths(&self) -> Vec<&str> {
        self.files
            .iter()
            .map(|(path, _, _)| path.as_str())
            .collect()
    }
}

/// The files of every image socket, the de-identified copy standing in for a DICOM file that has one.
fn images_as_sent(
    case_dir: &Path,
    routes: &[(&str, Route<'_>)],
    staged: &[Staged],
) -> Vec<SocketFiles> {
    routes
        .iter()
        .filter_map(|(slug, r)| match r {
            Route::Image(fs) => Some((slug, false, *fs)),
            Route::DicomImageSet(fs, _) => Some((slug, true, *fs)),
            Route::File(_) | Route::Value(_) => None,
        })
        .map(|(slug, dicom_set, fs)| {
            let files = fs
                .iter()
                .map(|f| match staged.iter().find(|s| s.path == f.path) {
                    Some(s) => (f.path.clone(), s.upload_name.clone(), s.local.clone()),
                    None => (f.path.clone(), f.upload_name.clone(), case_dir.join(&f.rel)),
                })
                .collect();
            SocketFiles {
                slug: slug.to_string(),
                dicom_set,
                files,
            }
        })
        .collect()
}

/// Refuse a case whose images the platform is certain to fail, judged on this machine by the sandbox's
/// importer, which follows the platform's: an image socket's files by panimg's rules (text named `.mha`,
/// a truncated image, two series in one socket; anything it does not follow exactly is left to the
/// platform), a DICOM image set's by the rules of the platform's DICOM import (readable, an SOP class
/// its de-identification takes, one series of one study).
fn precheck_images(images: &[SocketFiles]) -> Result<(), DeliverError> {
    use gc_content::imaging::{ImportError, Verdict, judge_dicom_image_set, judge_files};
    for socket in images {
        let uploads = socket.uploads();
        let problem = if socket.dicom_set {
            judge_dicom_image_set(&uploads)
                .err()
                .map(|fault| dicom_set_problem(&socket.slug, &socket.paths(), &fault))
        } else {
            match judge_files(&uploads) {
                Verdict::Fails(ImportError::Session(m) | ImportError::Socket(m)) => {
                    Some(image_problem(&socket.slug, &socket.paths(), &m))
                }
                Verdict::Pass => None,
            }
        };
        if let Some(what) = problem {
            return Err(quarantine(format!(
                "{what}; nothing was created on the platform"
            )));
        }
    }
    Ok(())
}

/// An image socket's files that the platform's importer would fail, with its message.
fn image_problem(slug: &str, paths: &[&str], message: &str) -> String {
    match paths {
        [one] => format!("{one} (socket {slug}): the platform would not import it: {message}"),
        many => format!(
            "socket {slug}: the platform would not import its {} files ({}): {message}",
            many.len(),
            many.join(", ")
        ),
    }
}

/// Why the platform would fail a DICOM image set, naming the case's files (pure).
fn dicom_set_problem(
    slug: &str,
    paths: &[&str],
    fault: &gc_content::imaging::DicomSetFault,
) -> String {
    use gc_content::imaging::DicomSetFault;
    let path = |i: &usize| paths.get(*i).copied().unwrap_or("a file");
    let of = |i: &usize| format!("{} (socket {slug}, a DICOM image set)", path(i));
    match fault {
        DicomSetFault::NoFiles => format!("socket {slug} (a DICOM image set) has no files"),
        DicomSetFault::Duplicate([a, b]) => format!(
            "{} and {} (socket {slug}, a DICOM image set) would be uploaded under the same name, \
             which the platform refuses",
            path(a),
            path(b)
        ),
        DicomSetFault::Unreadable { file, why } => {
            format!("{}: not readable as DICOM ({why})", of(file))
        }
        DicomSetFault::Refused { file, why } => {
            let takes = Procedure::builtin()
                .map(|p| p.supported_sop_classes().join(", "))
                .unwrap_or_default();
            format!(
                "{}: the platform's de-identification would refuse it: {why} (it takes the SOP \
                 classes {takes})",
                of(file)
            )
        }
        DicomSetFault::NotShared { keyword, groups } => {
            let listed: Vec<String> = groups
                .iter()
                .map(|g| few(&g.iter().map(path).collect::<Vec<_>>()))
                .collect();
            format!(
                "socket {slug}: a DICOM image set is one series of one study, but its {} files \
                 hold {} different {keyword} values: {}",
                paths.len(),
                groups.len(),
                listed.join("; ")
            )
        }
        DicomSetFault::Missing { keyword } => format!(
            "socket {slug}: its DICOM files have no {keyword}, which the platform's import needs"
        ),
        DicomSetFault::NoImage { file } => {
            format!("{}: holds no image (no Rows and Columns)", of(file))
        }
    }
}

/// A list of paths, the first three named and the rest counted.
fn few(paths: &[&str]) -> String {
    match paths {
        [] => String::new(),
        [a, b, c, rest @ ..] if !rest.is_empty() => {
            format!("{a}, {b}, {c} and {} more", rest.len())
        }
        all => all.join(", "),
    }
}

/// One file's copy and the patient identifiers it had.
struct StagedFile {
    staged: Staged,
    identifiers: PatientIdentifiers,
}

/// The upload name of the de-identified copy of the case's `index`-th image file (in plan order): unique
/// within the case, the same on every attempt, and telling nothing about the original.
pub fn neutral_name(index: usize) -> String {
    format!("dicom-{:04}.dcm", index + 1)
}

/// The de-identified copy of one DICOM file.
fn copy_one(
    case_dir: &Path,
    (index, f): (usize, &PlannedFile),
    privacy: &Privacy,
    procedure: &Procedure,
) -> Result<StagedFile, DeliverError> {
    let src = case_dir.join(&f.rel);
    let dst = privacy.staging.join(&f.rel);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            quarantine(format!(
                "cannot create the staging folder {}: {e}",
                parent.display()
            ))
        })?;
    }
    let written = gc_content::deidentify::deidentify_file(procedure, &privacy.uids, &src, &dst)
        .map_err(|e| quarantine(format!("{}: {e}", f.path)))?;
    Ok(StagedFile {
        staged: Staged {
            path: f.path.clone(),
            local: dst,
            upload_name: neutral_name(index),
            sha256: written.sha256,
        },
        identifiers: written.identifiers,
    })
}

/// Warnings for the texts of a case that leave this machine (its title, the names of its DICOM image
/// sets) and repeat a patient identifier its DICOM files hold.
pub fn identifier_warnings(plan: &Plan, identifiers: &[PatientIdentifiers]) -> Vec<String> {
    use gc_content::deidentify::Leaving;
    let names: Vec<(String, &str)> = plan
        .sockets
        .iter()
        .filter_map(|s| match &s.source {
            Source::DicomImageSet { image_name, .. } => Some((
                format!("image name of socket {}", s.slug),
                image_name.as_str(),
            )),
            _ => None,
        })
        .collect();
    let mut leaving = vec![Leaving {
        what: "title",
        setting: "title",
        text: &plan.title,
    }];
    leaving.extend(names.iter().map(|(what, text)| Leaving {
        what,
        setting: "image_name",
        text,
    }));
    gc_content::deidentify::title_warnings(&plan.case_path, &leaving, identifiers)
}

/// A delivery's uploads while its case is prepared, and the files that wait for their socket's ZIP.
struct Sending<'u, 'a> {
    uploads: &'u mut Uploads<'a>,
    /// Case paths of the files that go inside a ZIP ([`bundled`]), sent once all its members exist.
    held: HashSet<String>,
}

/// Make the de-identified copies (with `privacy`) and refuse images the platform's importer would fail,
/// before anything is created on the platform. With `sending`, each file starts uploading as soon as it
/// may: every file that goes as it is once the whole case has passed the [`gate`], each copy the moment
/// it is made.
async fn prepare(
    case_dir: &Path,
    plan: &Plan,
    routes: &[(&str, Route<'_>)],
    privacy: Option<&Privacy>,
    mut sending: Option<Sending<'_, '_>>,
    timings: &mut Timings,
) -> Result<Deidentified, DeliverError> {
    // Image sockets without DICOM send their files as they are: they are judged first, so that a file
    // the platform would not import anyway is refused in the importer's words rather than for being of
    // no format the de-identification gate recognises. The others are judged as sent, after staging.
    let (as_is, copied): (Vec<SocketFiles>, Vec<SocketFiles>) =
        images_as_sent(case_dir, routes, &[])
            .into_iter()
            .partition(|s| privacy.is_none() || !s.files.iter().any(|(_, _, p)| is_dicom(p)));
    precheck(as_is).await?;
    let t = Instant::now();
    let deidentified = match privacy {
        Some(privacy) => {
            let mut done = deidentify(case_dir, routes, privacy, sending.as_mut()).await?;
            done.warnings = identifier_warnings(plan, &done.identifiers);
            done
        }
        None => {
            start_as_is(case_dir, routes, &HashSet::new(), sending.as_mut());
            Deidentified::default()
        }
    };
    Timings::add(&mut timings.deidentify, t);
    for w in &deidentified.warnings {
        tracing::warn!(case = %plan.case_path, "{w}");
    }
    let t = Instant::now();
    let copied = images_as_sent(case_dir, routes, &deidentified.staged)
        .into_iter()
        .filter(|s| copied.iter().any(|c| c.slug == s.slug))
        .collect();
    match sending {
        Some(s) => s.uploads.alongside(precheck(copied)).await??,
        None => precheck(copied).await?,
    }
    Timings::add(&mut timings.prechecks, t);
    Ok(deidentified)
}

/// The de-identified copies of the DICOM files of a case's image sockets (a file socket's `.dcm` is sent
/// as it is), made off the async threads: reading and writing whole series is blocking work. With
/// `sending`, the case's other files start once [`gate`] has passed them all, and each copy once made.
async fn deidentify(
    case_dir: &Path,
    routes: &[(&str, Route<'_>)],
    privacy: &Privacy,
    sending: Option<&mut Sending<'_, '_>>,
) -> Result<Deidentified, DeliverError> {
    let images: Vec<PlannedFile> = routes
        .iter()
        .filter(|(_, r)| matches!(r, Route::Image(_) | Route::DicomImageSet(..)))
        .flat_map(|(_, r)| r.files().to_vec())
        .collect();
    let (dir, staging, uids) = (
        case_dir.to_owned(),
        privacy.staging.clone(),
        privacy.uids.clone(),
    );
    let (images, dicom) = tokio::task::spawn_blocking(move || {
        let dicom = gate(&dir, &images)?;
        Ok::<_, DeliverError>((images, dicom))
    })
    .await
    .map_err(|e| quarantine(format!("de-identification failed: {e}")))??;
    let copies: HashSet<String> = dicom
        .iter()
        .filter_map(|&i| images.get(i))
        .map(|f| f.path.clone())
        .collect();
    let (made, mut copied) = tokio::sync::mpsc::unbounded_channel();
    let dir = case_dir.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        // Nobody listening means the delivery has stopped: so does the copying.
        let tell = |s: &Staged| made.send((s.path.clone(), s.local_file())).is_ok();
        copy_all(&dir, &images, &dicom, &Privacy { staging, uids }, &tell)
    });
    let sent = match sending {
        Some(sending) => {
            start_as_is(case_dir, routes, &copies, Some(&mut *sending));
            let held = &sending.held;
            let each = sending
                .uploads
                .start_each(&mut copied, |path| held.contains(path));
            each.await
        }
        None => Ok(()),
    };
    // An upload that failed stops the copying, which is waited for all the same: no copy may be written
    // into a staging folder after the delivery has returned and its caller removed the folder.
    if sent.is_err() {
        copied.close();
    }
    let done = task
        .await
        .map_err(|e| quarantine(format!("de-identification failed: {e}")))?;
    sent?;
    done
}

/// Start the uploads of every file of the case that goes as it is: not one of `copies` (whose
/// de-identified copies go instead), not one held for a ZIP.
fn start_as_is(
    case_dir: &Path,
    routes: &[(&str, Route<'_>)],
    copies: &HashSet<String>,
    sending: Option<&mut Sending<'_, '_>>,
) {
    let Some(sending) = sending else { return };
    for (key, local) in outgoing(case_dir, routes, &[]) {
        if !copies.contains(&key) && !sending.held.contains(&key) {
            sending.uploads.start(key, local);
        }
    }
}

/// Every file of the case as it is sent, by its path in the case: the de-identified copy where
/// `staged` has one.
fn outgoing(
    case_dir: &Path,
    routes: &[(&str, Route<'_>)],
    staged: &[Staged],
) -> Vec<(String, LocalFile)> {
    let sent_from: BTreeMap<&str, &Staged> = staged.iter().map(|s| (s.path.as_str(), s)).collect();
    routes
        .iter()
        .flat_map(|(_, r)| r.files())
        .map(|f| {
            let local = match sent_from.get(f.path.as_str()) {
                Some(s) => s.local_file(),
                None => LocalFile {
                    path: case_dir.join(&f.rel),
                    filename: f.upload_name.clone(),
                },
            };
            (f.path.clone(), local)
        })
        .collect()
}

/// Does this file hold DICOM, however stored? (An unreadable file is left to the steps that read it.)
fn is_dicom(path: &Path) -> bool {
    use gc_content::deidentify::sniff::{Content, HEAD, head, sniff};
    head(path, HEAD).is_ok_and(|(bytes, len)| matches!(sniff(&bytes, len), Content::Dicom(_)))
}

/// [`precheck_images`] off the async threads: it reads whole images.
async fn precheck(images: Vec<SocketFiles>) -> Result<(), DeliverError> {
    if images.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || precheck_images(&images))
        .await
        .map_err(|e| quarantine(format!("the images could not be checked: {e}")))?
}

/// Send `plan` (files read from `case_dir`): the item created (or updated), every file uploaded, every
/// value set. With `privacy`, DICOM files going to image sockets are sent as de-identified copies. A case
/// of an algorithm folder becomes one job, followed to its end, whose outputs are written to `outbox`.
pub async fn send(
    client: &Client,
    local: Local<'_>,
    plan: &Plan,
    start: ItemStart,
    timing: &VerifyTiming,
    cp: &dyn Checkpoints,
    timings: &mut Timings,
) -> Result<Sent, DeliverError> {
    let Local {
        case_dir,
        privacy,
        staging: _,
        outbox,
    } = local;
    let t = Instant::now();
    let target = client
        .resolve_target(plan.target, &plan.target_slug)
        .await
        .map_err(|e| match e {
            GcError::NotFound(m) => quarantine(m),
            e => e.into(),
        })?;
    if target.kind == gc_client::TargetKind::Algorithm {
        let outbox = outbox.ok_or_else(|| {
            DeliverError::Local("an algorithm folder needs an outbox for its results".into())
        })?;
        let run = job::Run {
            case_dir,
            plan,
            target,
            timing,
            cp,
            privacy,
            outbox,
        };
        let done = job::deliver_job(client, run, start).await?;
        return Ok(Sent::Done(Box::new(done)));
    }

    // Everything checkable is checked before the item exists.
    let mut routes = Vec::with_capacity(plan.sockets.len());
    for sp in &plan.sockets {
        let socket = platform_socket(client, &sp.slug).await?;
        routes.push((sp.slug.as_str(), route(case_dir, &socket, &sp.source)?));
    }
    Timings::add(&mut timings.prechecks, t);

    let mut uploads = Uploads::new(client, cp);
    let began = Instant::now();
    let first = Before {
        local: &local,
        plan,
        routes: &routes,
        target: &target,
        start,
    };
    let ready = first.item(client, &mut uploads, cp, timings).await;
    let ready = ready.map_err(|e| part_of_nothing(e, uploads.started()))?;
    let (item, created) = (ready.item, ready.created);
    let out = Outgoing {
        routes,
        bundles: ready.bundles,
        deidentified: ready.deidentified,
        uploads,
        began,
    };
    match set_values(client, out, &target, &item, created, cp, timings).await {
        Err(DeliverError::Quarantine(reason)) => {
            let left = left_on_platform(client, &target, &item.pk, created).await;
            Err(DeliverError::Quarantine(format!("{reason}. {left}")))
        }
        Ok(awaiting) => Ok(Sent::Awaiting(Box::new(awaiting))),
        Err(e) => Err(e),
    }
}

/// A case refused before its item exists, told what became of the `started` uploads it had begun.
fn part_of_nothing(e: DeliverError, started: usize) -> DeliverError {
    match e {
        DeliverError::Quarantine(reason) if started > 0 => quarantine(format!(
            "{reason}. {started} of its files had started uploading; those uploads are part of \
             nothing, and the platform deletes them within a day"
        )),
        e => e,
    }
}

/// A case checked and de-identified, its ZIPs packed and its item there: what setting its values needs.
struct ItemReady {
    deidentified: Deidentified,
    bundles: Vec<Bundle>,
    item: Item,
    /// The item was created by this delivery.
    created: bool,
}

/// What a delivery does before its item exists.
struct Before<'b> {
    local: &'b Local<'b>,
    plan: &'b Plan,
    routes: &'b [(&'b str, Route<'b>)],
    target: &'b Target,
    start: ItemStart,
}

impl Before<'_> {
    /// Check and de-identify the case while its files go ([`prepare`]), pack its ZIPs, then create (or
    /// read) its item: nothing is created on the platform before every check has passed.
    async fn item(
        self,
        client: &Client,
        uploads: &mut Uploads<'_>,
        cp: &dyn Checkpoints,
        timings: &mut Timings,
    ) -> Result<ItemReady, DeliverError> {
        let Before {
            local,
            plan,
            routes,
            target,
            start,
        } = self;
        cp.step(Step::Uploading).map_err(DeliverError::Checkpoint)?;
        let held = routes
            .iter()
            .filter(|(_, r)| bundled(local.staging, r))
            .flat_map(|(_, r)| r.files())
            .map(|f| f.path.clone())
            .collect();
        let sending = Sending { uploads, held };
        let deidentified = prepare(
            local.case_dir,
            plan,
            routes,
            local.privacy,
            Some(sending),
            timings,
        )
        .await?;
        let bundles = match local.staging {
            Some(dir) => {
                let packing = bundle_series(dir, local.case_dir, routes, &deidentified.staged);
                uploads.alongside(packing).await??
            }
            None => vec![],
        };
        let item = uploads.alongside(the_item(client, target, plan, start, cp));
        let (item, created) = item.await??;
        Ok(ItemReady {
            deidentified,
            bundles,
            item,
            created,
        })
    }
}

/// The platform's socket of a slug; a socket the platform does not have quarantines the case.
async fn platform_socket(client: &Client, slug: &str) -> Result<Socket, DeliverError> {
    client.socket(slug).await.map_err(|e| match e {
        GcError::NotFound(_) => quarantine(format!("socket {slug} does not exist on the platform")),
        e => e.into(),
    })
}

/// The case's item: created (or adopted, when an earlier creation's answer was lost) for a new case,
/// read for one whose item the journal has; recorded at once. Whether it was created now.
async fn the_item(
    client: &Client,
    target: &Target,
    plan: &Plan,
    start: ItemStart,
    cp: &dyn Checkpoints,
) -> Result<(Item, bool), DeliverError> {
    cp.step(Step::Creating).map_err(DeliverError::Checkpoint)?;
    let (item, created) = match start {
        ItemStart::New => (
            create_or_adopt(client, target, &plan.title, cp).await?,
            true,
        ),
        ItemStart::Existing(pk) => (client.get_item(target, &pk).await?, false),
    };
    cp.item(&item.pk).map_err(DeliverError::Checkpoint)?;
    Ok((item, created))
}

/// Wait until the platform shows every value of a case whose values were set `waited` ago, and say what
/// the item holds. Meanwhile the case's note says what it waits for, since when, and which pages to look
/// at (`cp`). An import that failed quarantines the case, in the platform's words; a DICOM image set that
/// never shows up, with its likely causes and those pages.
pub async fn verify(
    client: &Client,
    verifier: &Verifier,
    (awaiting, waited): (AwaitingImport, Duration),
    timing: &VerifyTiming,
    cp: &dyn Checkpoints,
    timings: &mut Timings,
) -> Result<Delivered, DeliverError> {
    let t = Instant::now();
    let AwaitingImport {
        target,
        item_pk,
        created,
        expectations,
        files,
        deidentified,
        timings: _,
    } = awaiting;
    let pages = (target.item_page(&item_pk), target.notifications_page());
    let since = std::time::SystemTime::now()
        .checked_sub(waited)
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let result = {
        let done = verifier.await_values(&target, &item_pk, &expectations, waited, timing);
        tokio::pin!(done);
        loop {
            tokio::select! {
                r = &mut done => break r,
                () = tokio::time::sleep(wait::NOTE_AFTER) => {
                    let all: Vec<&Expectation> = expectations.iter().collect();
                    let so_far = waited + t.elapsed();
                    if let Some(w) = wait::import_wait(&all, so_far, since, timing, pages.clone()) {
                        cp.waiting(&w);
                    }
                }
            }
        }
    };
    timings.import_wait = (waited + t.elapsed()).as_secs_f64();
    let reason = match result {
        Ok(done) => {
            // Every value of the item, not only the ones just sent: an update sends only what changed.
            let sockets = done.values.iter().map(SocketResult::from).collect();
            return Ok(Delivered {
                item_api_url: client.item_api_url(&target, &item_pk),
                item_pk,
                target,
                sockets,
                deidentified,
                job: None,
            });
        }
        Err(GcError::ImportFailed { socket, message }) => import_failure(&socket, &message, &files),
        Err(e) => match wait::timed_out_dicom_set(&e, &expectations) {
            Some(socket) => wait::dicom_set_timeout(
                socket,
                files
                    .iter()
                    .filter(|(slug, _)| slug == socket)
                    .map(|(_, fs)| fs.len())
                    .sum(),
                timing.dicom_deadline,
                pages.0.as_deref(),
                pages.1.as_deref(),
            ),
            None => match DeliverError::from(e) {
                DeliverError::Quarantine(reason) => reason,
                other => return Err(other),
            },
        },
    };
    let left = left_on_platform(client, &target, &item_pk, created).await;
    Err(DeliverError::Quarantine(format!("{reason}. {left}")))
}

/// What goes into an item: the routes of its sockets, the de-identified copies sent instead of files, and
/// the uploads under way since `began`.
struct Outgoing<'a, 'u> {
    routes: Vec<(&'a str, Route<'a>)>,
    /// Image sockets whose files go as one ZIP.
    bundles: Vec<Bundle>,
    deidentified: Deidentified,
    uploads: Uploads<'u>,
    began: Instant,
}

/// Upload every file of every socket (the de-identified copy where there is one), all at once: the client
/// bounds files and parts in flight. Returns each upload by its file's path in the case.
async fn upload_all(
    client: &Client,
    case_dir: &Path,
    routes: &[(&str, Route<'_>)],
    deidentified: &mut Deidentified,
    cp: &dyn Checkpoints,
) -> Result<Vec<(String, UserUpload)>, DeliverError> {
    let mut uploads = Uploads::new(client, cp);
    for (key, local) in outgoing(case_dir, routes, &deidentified.staged) {
        uploads.start(key, local);
    }
    let done = uploads.finish().await?;
    deidentified.sent = sent_files(routes);
    Ok(done)
}

/// Every file of the case (relative paths), whatever it was sent as.
fn sent_files(routes: &[(&str, Route<'_>)]) -> Vec<String> {
    routes
        .iter()
        .flat_map(|(_, r)| r.files())
        .map(|f| f.path.clone())
        .collect()
}

/// Does this socket's files go as one ZIP ([`bundle`])? Only with a staging folder to write it in, and
/// never a DICOM image set's, which is imported as DICOM files, never from an archive.
fn bundled(staging: Option<&Path>, route: &Route<'_>) -> bool {
    staging.is_some() && matches!(route, Route::Image(fs) if fs.len() >= bundle::BUNDLE_FROM)
}

/// Pack the files of every image socket with many of them (as they will be sent: de-identified copies
/// where there are) into one ZIP each, under `staging`.
async fn bundle_series(
    staging: &Path,
    case_dir: &Path,
    routes: &[(&str, Route<'_>)],
    staged: &[Staged],
) -> Result<Vec<Bundle>, DeliverError> {
    let many: Vec<(String, Vec<(String, PathBuf)>)> = images_as_sent(case_dir, routes, staged)
        .into_iter()
        .filter(|s| {
            let route = routes.iter().find(|(slug, _)| *slug == s.slug);
            route.is_some_and(|(_, r)| bundled(Some(staging), r))
        })
        .map(|s| {
            let members = s.files.into_iter().map(|(_, name, local)| (name, local));
            (s.slug, members.collect())
        })
        .collect();
    if many.is_empty() {
        return Ok(vec![]);
    }
    let staging = staging.to_owned();
    // Reading and writing whole series is blocking work: off the async threads.
    tokio::task::spawn_blocking(move || {
        many.iter()
            .map(|(slug, members)| bundle::write(&staging, slug, members))
            .collect::<std::io::Result<Vec<Bundle>>>()
    })
    .await
    .map_err(|e| DeliverError::Local(format!("packing a series failed: {e}")))?
    .map_err(|e| DeliverError::Local(format!("cannot pack a series into a ZIP: {e}")))
}

/// The `values` entry of every socket, naming the uploads of its files, with what verifying it awaits.
fn value_entries(
    routes: &[(&str, Route<'_>)],
    bundles: &[Bundle],
    uploads: &[(String, UserUpload)],
) -> Vec<(ValueEntry, Awaiting)> {
    let url_by_key = |key: &str| -> String {
        uploads
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, u)| u.api_url.clone())
            .unwrap_or_default()
    };
    let url_of = |f: &PlannedFile| url_by_key(&f.path);
    routes
        .iter()
        .map(|(slug, r)| {
            let (source, awaiting) = match r {
                Route::Image(fs) => {
                    let urls: Vec<String> = match bundles.iter().find(|b| b.slug == *slug) {
                        Some(b) => vec![url_by_key(&b.key)],
                        None => fs.iter().map(url_of).collect(),
                    };
                    (
                        ValueSource::UserUploads(urls.clone()),
                        Awaiting::Image { uploads: urls },
                    )
                }
                Route::DicomImageSet(fs, name) => {
                    let urls: Vec<String> = fs.iter().map(url_of).collect();
                    let source = ValueSource::DicomImageSet {
                        uploads: urls.clone(),
                        image_name: name.to_string(),
                    };
                    (source, Awaiting::DicomImageSet { uploads: urls })
                }
                Route::File(f) => {
                    let url = url_of(f);
                    (
                        ValueSource::UserUpload(url.clone()),
                        Awaiting::File { upload: url },
                    )
                }
                Route::Value(v) => (ValueSource::Value(v.clone()), Awaiting::Value(v.clone())),
            };
            let entry = ValueEntry {
                socket: slug.to_string(),
                source,
            };
            (entry, awaiting)
        })
        .collect()
}

/// The PATCH's entries, and what verifying each awaits, with the pk of the value `item` holds for a
/// file or image socket now (values are deduplicated platform-wide: the pk may legitimately stay the
/// same).
fn values_of(
    item: &Item,
    entries: Vec<(ValueEntry, Awaiting)>,
) -> (Vec<ValueEntry>, Vec<Expectation>) {
    entries
        .into_iter()
        .map(|(entry, awaiting)| {
            let previous_pk = match awaiting {
                Awaiting::Value(_) => None,
                _ => item.value_for(&entry.socket).map(|v| v.pk),
            };
            let expectation = Expectation {
                socket: entry.socket.clone(),
                previous_pk,
                awaiting,
            };
            (entry, expectation)
        })
        .unzip()
}

/// Upload the files into `item` and set every value with one PATCH; return what verifying awaits.
async fn set_values(
    client: &Client,
    out: Outgoing<'_, '_>,
    target: &Target,
    item: &Item,
    created: bool,
    cp: &dyn Checkpoints,
    timings: &mut Timings,
) -> Result<AwaitingImport, DeliverError> {
    let Outgoing {
        routes,
        bundles,
        mut deidentified,
        mut uploads,
        began,
    } = out;
    cp.step(Step::Uploading).map_err(DeliverError::Checkpoint)?;
    for b in &bundles {
        let local = LocalFile {
            path: b.local.clone(),
            filename: b.filename.clone(),
        };
        uploads.start(b.key.clone(), local);
    }
    let uploads = uploads.finish().await?;
    deidentified.sent = sent_files(&routes);
    Timings::add(&mut timings.upload, began);
    let (entries, expectations) = values_of(item, value_entries(&routes, &bundles, &uploads));
    let uploads: Vec<UserUpload> = uploads.into_iter().map(|(_, u)| u).collect();

    if !cp.unchanged() {
        return Err(DeliverError::Changed);
    }
    let t = Instant::now();
    cp.step(Step::Patching).map_err(DeliverError::Checkpoint)?;
    if let Err(e) = client.patch_values(target, &item.pk, &entries).await {
        // A PATCH whose answer was lost may have been applied: its retry is then refused because the
        // uploads it names were already consumed by the first one. Only if every upload is gone is that
        // the explanation; verification then decides.
        if !matches!(e, GcError::Rejected { .. })
            || uploads.is_empty()
            || !all_consumed(client, &uploads).await
        {
            return Err(e.into());
        }
        tracing::info!(item = %item.pk, "the values were already set by an earlier attempt whose answer was lost");
    }
    Timings::add(&mut timings.patch, t);
    let files = routes
        .iter()
        .map(|(slug, r)| {
            let paths = r.files().iter().map(|f| f.path.clone()).collect();
            (slug.to_string(), paths)
        })
        .collect();
    let awaiting = AwaitingImport {
        target: target.clone(),
        item_pk: item.pk.clone(),
        created,
        expectations,
        files,
        deidentified,
        timings: *timings,
    };
    cp.awaiting(&awaiting).map_err(DeliverError::Checkpoint)?;
    Ok(awaiting)
}

/// An import failure in the platform's words, with the files it concerns. The platform names no file
/// (gc-protocol.md §6.1: the session's `error_message` only counts them), so the message names every file
/// of the socket's import, which is one file exactly when the socket had one.
fn import_failure(socket: &str, message: &str, files: &[(String, Vec<String>)]) -> String {
    let files: Vec<&str> = files
        .iter()
        .filter(|(slug, _)| slug == socket)
        .flat_map(|(_, fs)| fs)
        .map(String::as_str)
        .collect();
    match files.as_slice() {
        [] => format!("socket {socket}: the import failed: {message}"),
        [one] => format!("{one} (socket {socket}): the platform could not import it: {message}"),
        many => format!(
            "socket {socket}: the platform could not import its {} files ({}): {message}",
            many.len(),
            many.join(", ")
        ),
    }
}

/// What a case the platform refused left behind, read back from the platform, for the receipt.
async fn left_on_platform(
    client: &Client,
    target: &Target,
    item_pk: &str,
    created: bool,
) -> String {
    let what = if created {
        "the item created for it"
    } else {
        "its item"
    };
    let url = client.item_api_url(target, item_pk);
    match client.get_item(target, item_pk).await {
        Ok(now) if now.values.is_empty() => {
            format!("Left on the platform: {what}, {url}, which holds no values")
        }
        Ok(now) => {
            let mut slugs: Vec<&str> = now.values.iter().map(|v| v.interface.slug()).collect();
            slugs.sort_unstable();
            format!(
                "Left on the platform: {what}, {url}, which holds values for {}",
                slugs.join(", ")
            )
        }
        Err(e) => {
            format!("Left on the platform: {what}, {url} (what it holds could not be read: {e})")
        }
    }
}

/// Are all these uploads gone from the platform (consumed by an import, or expired)?
async fn all_consumed(client: &Client, uploads: &[UserUpload]) -> bool {
    for u in uploads {
        match client.get_upload(&u.pk).await {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return false,
        }
    }
    true
}

/// Create the item, after the journal gave this case the title. A title already taken on the platform is
/// adopted only if the journal recorded an earlier create request of this case with this title whose
/// answer was lost, and the item holds no values: anything else is someone else's.
async fn create_or_adopt(
    client: &Client,
    target: &Target,
    title: &str,
    cp: &dyn Checkpoints,
) -> Result<Item, DeliverError> {
    let ours_if_empty = match cp
        .creating(target, title)
        .map_err(DeliverError::Checkpoint)?
    {
        TitleClaim::TakenBy { folder, case } => {
            return Err(quarantine(format!(
                "the title \"{title}\" in {} belongs to another case, {} in {}: two cases never \
                 go into one item. Give them different titles with the folder's title template: \
                 title = \"{{hash}}\" tells the cases of a drop folder apart without showing a folder \
                 name (where several drop folders feed one target, give each its own prefix, e.g. \
                 \"ward-a-{{hash}}\"); nothing was created on the platform",
                target.slug,
                crate::rules::path_text(&case),
                folder.display()
            )));
        }
        TitleClaim::Fresh => false,
        TitleClaim::EarlierCreateInDoubt => true,
    };
    match client.create_item(target, title).await {
        Ok(item) => Ok(item),
        Err(e) if e.is_duplicate_title() => {
            // This request created nothing. When no earlier create of this case is in doubt, the title is
            // free again for other cases at once. When one is, the record of it is what proves the item
            // ours: it is kept until the item is adopted (`item` replaces it) or found not ours, so that a
            // crash or a failed search here leaves the adoption to the next attempt, and no other case
            // can take the title meanwhile.
            if !ours_if_empty {
                cp.create_refused().map_err(DeliverError::Checkpoint)?;
            }
            let found = client.find_item_by_title(target, title).await?;
            if ours_if_empty && !found.as_ref().is_some_and(|i| i.values.is_empty()) {
                cp.create_refused().map_err(DeliverError::Checkpoint)?;
            }
            match found {
                Some(existing) if ours_if_empty && existing.values.is_empty() => {
                    tracing::info!(item = %existing.pk, title, "adopting the item an earlier attempt created");
                    Ok(existing)
                }
                Some(existing) if ours_if_empty => Err(quarantine(format!(
                    "an item titled \"{title}\" already exists in {} and holds values (pk {}); this \
                     case may have created it, but something else has set its values: not changing it",
                    target.slug, existing.pk
                ))),
                Some(existing) => Err(quarantine(format!(
                    "an item titled \"{title}\" already exists in {} (pk {}) that this installation \
                     did not create: not adopting or changing it; nothing was created",
                    target.slug, existing.pk
                ))),
                None => Err(e.into()),
            }
        }
        Err(e) => {
            if matches!(
                e,
                GcError::Rejected { .. } | GcError::NotFound(_) | GcError::Auth { .. }
            ) {
                cp.create_refused().map_err(DeliverError::Checkpoint)?;
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A journal in which an earlier attempt's create request of the title is in doubt.
    #[derive(Default)]
    struct InDoubt {
        refused: Mutex<u32>,
    }
    impl UploadRecord for InDoubt {}
    impl Checkpoints for InDoubt {
        fn creating(&self, _target: &Target, _title: &str) -> Result<TitleClaim, String> {
            Ok(TitleClaim::EarlierCreateInDoubt)
        }
        fn create_refused(&self) -> Result<(), String> {
            *self.refused.lock().unwrap() += 1;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_lost_creation_stays_in_doubt_until_its_item_is_adopted() {
        use gc_client::{ClientConfig, RetryPolicy, TargetKind, Token};
        use gc_sandbox::{DEMO_TOKEN, Fixture, Sandbox, SandboxOptions};
        use std::time::Duration;
        let sb = Sandbox::start(SandboxOptions::new(Fixture::demo()))
            .await
            .unwrap();
        let mut cfg = ClientConfig::new(sb.base_url(), Token::parse(DEMO_TOKEN).unwrap());
        cfg.ca_cert = sb.ca_cert_path().map(Path::to_path_buf);
        cfg.retry = RetryPolicy {
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let client = Client::new(cfg).unwrap();
        let target = client
            .resolve_target(TargetKind::Archive, "demo-archive")
            .await
            .unwrap();
        // The earlier attempt's request created the item; its answer was lost.
        let lost = client.create_item(&target, "lost").await.unwrap();

        // The search for it fails: the record of the lost creation must survive, or the next attempt
        // would take the item for a stranger's (and another case could take the title meanwhile).
        sb.set_faults(vec!["GET /api/v1/archives/items/ 503".parse().unwrap()])
            .unwrap();
        let cp = InDoubt::default();
        let e = create_or_adopt(&client, &target, "lost", &cp)
            .await
            .unwrap_err();
        assert!(matches!(e, DeliverError::Later(_)), "{e}");
        assert_eq!(*cp.refused.lock().unwrap(), 0, "the create stays in doubt");

        // The next attempt finds it and adopts it, still without giving up the record first.
        sb.set_faults(vec![]).unwrap();
        let item = create_or_adopt(&client, &target, "lost", &cp)
            .await
            .unwrap();
        assert_eq!(item.pk, lost.pk);
        assert_eq!(*cp.refused.lock().unwrap(), 0);
    }

    /// The order in which a delivery began its uploads and created its item.
    #[derive(Default)]
    struct Order(Mutex<Vec<String>>);

    impl Order {
        fn events(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl UploadRecord for Order {
        // Asked as an upload begins, before its first request.
        fn earlier_upload(&self, path: &str) -> Option<EarlierUpload> {
            self.0.lock().unwrap().push(format!("upload {path}"));
            None
        }
    }

    impl Checkpoints for Order {
        fn step(&self, step: Step) -> Result<(), String> {
            if step == Step::Creating {
                self.0.lock().unwrap().push("creating".into());
            }
            Ok(())
        }
    }

    /// A case of a three-slice DICOM image set (`series/`) and a PDF report (`report.pdf`), planned for
    /// the demo archive under `title`. Returns the plan and the series' files.
    fn dicom_case(case: &Path, title: &str) -> (Plan, Vec<PathBuf>) {
        use gc_content::samples::{DicomSeriesIds, write_dicom_series, write_pdf};
        std::fs::create_dir_all(case.join("series")).unwrap();
        let series =
            write_dicom_series(&case.join("series"), 3, 16, 16, &DicomSeriesIds::new(5), 5)
                .unwrap();
        write_pdf(&case.join("report.pdf"), "findings").unwrap();
        let planned = |path: &Path| {
            let rel = path.strip_prefix(case).unwrap().to_owned();
            PlannedFile {
                path: rel.to_string_lossy().into_owned(),
                upload_name: rel.file_name().unwrap().to_string_lossy().into_owned(),
                size: std::fs::metadata(path).unwrap().len(),
                rel,
            }
        };
        let plan = Plan {
            case: title.into(),
            case_path: title.into(),
            title: title.into(),
            target: gc_client::TargetKind::Archive,
            target_slug: "demo-archive".into(),
            sockets: vec![
                crate::rules::SocketPlan {
                    slug: "dicom-image-set".into(),
                    source: Source::DicomImageSet {
                        files: series.iter().map(|f| planned(f)).collect(),
                        image_name: "ct".into(),
                    },
                },
                crate::rules::SocketPlan {
                    slug: "report".into(),
                    source: Source::Files(vec![planned(&case.join("report.pdf"))]),
                },
            ],
            unmatched: vec![],
        };
        (plan, series)
    }

    /// Send a planned case with de-identification on, recording the order of its steps in `order`.
    async fn send_private(
        client: &Client,
        case: &Path,
        plan: &Plan,
        order: &Order,
    ) -> Result<Sent, DeliverError> {
        let staging = case.with_extension("staging");
        let privacy = Privacy {
            staging: staging.clone(),
            uids: UidMap::random(),
        };
        let local = Local {
            case_dir: case,
            privacy: Some(&privacy),
            staging: Some(&staging),
            outbox: None,
        };
        let timing = gc_testkit::client::timing();
        let mut timings = Timings::default();
        send(
            client,
            local,
            plan,
            ItemStart::New,
            &timing,
            order,
            &mut timings,
        )
        .await
    }

    #[tokio::test]
    async fn every_file_is_on_its_way_before_the_item_is_created() {
        let (_sb, client) = gc_testkit::client::sandbox_and_client().await;
        let tmp = tempfile::tempdir().unwrap();
        let case = tmp.path().join("case");
        let (plan, series) = dicom_case(&case, "overlap");
        let order = Order::default();
        let Ok(Sent::Awaiting(awaiting)) = send_private(&client, &case, &plan, &order).await else {
            panic!("the case was not sent")
        };
        let events = order.events();
        let creating = events.iter().position(|e| e == "creating").unwrap();
        // The report went at once, each copy as it was made: all before the item, which waited for
        // every copy to be made and judged.
        let mut before = events[..creating].to_vec();
        before.sort_unstable();
        let mut all: Vec<String> = series
            .iter()
            .map(|f| format!("upload {}", f.strip_prefix(&case).unwrap().display()))
            .collect();
        all.push("upload report.pdf".into());
        all.sort_unstable();
        assert_eq!(before, all, "{events:?}");
        assert_eq!(awaiting.deidentified.staged.len(), 3);
        let verifier = Verifier::start(client.clone(), gc_testkit::client::timing());
        let timing = gc_testkit::client::timing();
        let done = verify(
            &client,
            &verifier,
            (*awaiting, Duration::ZERO),
            &timing,
            &order,
            &mut Timings::default(),
        )
        .await
        .unwrap();
        let mut slugs: Vec<&str> = done.sockets.iter().map(|s| s.slug.as_str()).collect();
        slugs.sort_unstable();
        assert_eq!(slugs, ["dicom-image-set", "report"]);
    }

    #[tokio::test]
    async fn a_copy_that_fails_after_the_uploads_began_creates_no_item() {
        let (_sb, client) = gc_testkit::client::sandbox_and_client().await;
        let tmp = tempfile::tempdir().unwrap();
        let case = tmp.path().join("case");
        let (plan, series) = dicom_case(&case, "broken");
        // DICOM by its signature, but nothing after it: no copy can be made of it.
        let mut cut = vec![0u8; 128];
        cut.extend_from_slice(b"DICM\x02\x00");
        std::fs::write(&series[2], cut).unwrap();
        let order = Order::default();
        let Err(DeliverError::Quarantine(reason)) =
            send_private(&client, &case, &plan, &order).await
        else {
            panic!("the case was not refused")
        };
        let broken = series[2].strip_prefix(&case).unwrap().display().to_string();
        assert!(reason.starts_with(&format!("{broken}: ")), "{reason}");
        assert!(
            reason.contains("had started uploading; those uploads are part of nothing"),
            "{reason}"
        );
        assert!(order.events().contains(&"upload report.pdf".to_owned()));
        assert!(!order.events().contains(&"creating".to_owned()));
        let target = client
            .resolve_target(gc_client::TargetKind::Archive, "demo-archive")
            .await
            .unwrap();
        let items = client.list_items(&target).await.unwrap();
        assert!(items.iter().all(|i| i.title != "broken"), "{items:?}");
    }

    #[test]
    fn a_failing_dicom_image_set_is_explained_with_the_case_s_files() {
        use gc_content::imaging::DicomSetFault;
        let paths = ["ct/1.dcm", "ct/2.dcm", "ct/3.dcm", "ct/4.dcm", "ct/5.dcm"];
        let two_series = DicomSetFault::NotShared {
            keyword: "SeriesInstanceUID",
            groups: vec![vec![0, 2], vec![1, 3, 4]],
        };
        assert_eq!(
            dicom_set_problem("ct-set", &paths, &two_series),
            "socket ct-set: a DICOM image set is one series of one study, but its 5 files hold 2 \
             different SeriesInstanceUID values: ct/1.dcm, ct/3.dcm; ct/2.dcm, ct/4.dcm, ct/5.dcm"
        );
        let refused = DicomSetFault::Refused {
            file: 1,
            why: "Unsupported SOP Class (1.2.840.10008.5.1.4.1.1.7)".into(),
        };
        let said = dicom_set_problem("ct-set", &paths, &refused);
        assert!(
            said.starts_with(
                "ct/2.dcm (socket ct-set, a DICOM image set): the platform's de-identification \
                 would refuse it: Unsupported SOP Class (1.2.840.10008.5.1.4.1.1.7) (it takes the \
                 SOP classes 1.2.840.10008.5.1.4.1.1.2, "
            ),
            "{said}"
        );
        let unreadable = DicomSetFault::Unreadable {
            file: 4,
            why: "not a DICOM file".into(),
        };
        assert_eq!(
            dicom_set_problem("ct-set", &paths, &unreadable),
            "ct/5.dcm (socket ct-set, a DICOM image set): not readable as DICOM (not a DICOM file)"
        );
        assert_eq!(few(&paths), "ct/1.dcm, ct/2.dcm, ct/3.dcm and 2 more");
        assert_eq!(few(&paths[..3]), "ct/1.dcm, ct/2.dcm, ct/3.dcm");
    }

    fn socket(kind: &str, super_kind: SuperKind) -> Socket {
        Socket {
            pk: 1,
            slug: "s".into(),
            title: "S".into(),
            kind: kind.into(),
            super_kind,
            relative_path: "x".into(),
        }
    }

    #[test]
    fn which_rule_shapes_fit_which_sockets() {
        use SourceShape::*;
        let image = socket("Image", SuperKind::Image);
        let dicom = socket("DICOM Image Set", SuperKind::Image);
        let file = socket("PDF file", SuperKind::File);
        let value = socket("Integer", SuperKind::Value);
        let table = [
            (Files, &image, true),
            (Files, &dicom, false),
            (Files, &file, true),
            (Files, &value, false),
            (DicomImageSet, &dicom, true),
            (DicomImageSet, &image, false),
            (DicomImageSet, &file, false),
            (ValueFile, &value, true),
            (ValueFile, &file, true),
            (ValueFile, &image, false),
            (Value, &value, true),
            (Value, &file, false),
            (Value, &image, false),
        ];
        for (shape, socket, ok) in table {
            assert_eq!(
                fits(shape, socket).is_ok(),
                ok,
                "{shape:?} into {}",
                socket.kind
            );
        }
        assert!(
            fits(Files, &dicom)
                .unwrap_err()
                .contains("needs an image_name")
        );
    }
}
