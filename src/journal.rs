//! The journal: the only source of truth about cases after a restart.
//!
//! Every step of a delivery is written here (SQLite, WAL, synchronous commits) before it starts and after it
//! ends, so a `kill -9` at any instant leaves enough behind to finish the case exactly once: which item
//! was (maybe) created, which uploads exist and which of their parts are done, whether the PATCH went out,
//! and, once it was answered, what the case waits for, so that a restart waits on.
//!
//! It is also where the other processes meet the agent, since they cannot reach its memory: `pause`,
//! `resume` and `retry` leave requests here that the agent reads every few seconds, and `status` reads
//! the targets the agent paused. And alerts wait here until a webhook took them, so a crash loses none.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use gc_client::TargetKind;

/// Where a case is in its life. Each state carries only what is meaningful in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseState {
    /// Seen, still changing (or waiting for its marker).
    Settling,
    /// Stable and planned; waiting for a delivery slot.
    Ready,
    /// Being delivered; `step` says how far it got.
    Uploading { step: Step },
    /// Verified on the server.
    Delivered,
    /// Could not be delivered; the reason is in the receipt and in [`CaseRecord::reason`].
    Quarantined,
}

/// The steps of one delivery, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Files are being uploaded: from the start, while the case is de-identified and checked, and
    /// again once the item exists (its pk recorded) until the last file is sent.
    Uploading,
    /// Every check passed; about to create (or adopt) the item while the uploads go on. A crash here may
    /// have left an item without a recorded pk.
    Creating,
    /// The PATCH may have been sent.
    Patching,
    /// The PATCH was answered; waiting for the server to attach every value.
    Verifying,
    /// An algorithm's job was started (pk recorded); following it until it ends.
    Running,
}

impl CaseState {
    fn to_db(&self) -> (&'static str, Option<&'static str>) {
        match self {
            CaseState::Settling => ("settling", None),
            CaseState::Ready => ("ready", None),
            CaseState::Uploading { step } => (
                "uploading",
                Some(match step {
                    Step::Creating => "creating",
                    Step::Uploading => "uploading",
                    Step::Patching => "patching",
                    Step::Verifying => "verifying",
                    Step::Running => "running",
                }),
            ),
            CaseState::Delivered => ("delivered", None),
            CaseState::Quarantined => ("quarantined", None),
        }
    }

    fn from_db(state: &str, step: Option<&str>) -> Result<CaseState, JournalError> {
        Ok(match (state, step) {
            ("settling", _) => CaseState::Settling,
            ("ready", _) => CaseState::Ready,
            ("uploading", Some(s)) => CaseState::Uploading {
                step: match s {
                    "creating" => Step::Creating,
                    "uploading" => Step::Uploading,
                    "patching" => Step::Patching,
                    "verifying" => Step::Verifying,
                    "running" => Step::Running,
                    other => return Err(JournalError::Corrupt(format!("unknown step {other:?}"))),
                },
            },
            ("delivered", _) => CaseState::Delivered,
            ("quarantined", _) => CaseState::Quarantined,
            (other, _) => return Err(JournalError::Corrupt(format!("unknown state {other:?}"))),
        })
    }

    /// The short name used in status output and metrics.
    pub fn name(&self) -> &'static str {
        self.to_db().0
    }

    /// The name a case is counted under in `status`, the metrics and the systemd status line: its
    /// state's, except that a case whose values are set and that waits for the platform's import is
    /// counted apart from those still uploading (it holds no upload slot).
    pub fn count_name(&self) -> &'static str {
        match self {
            CaseState::Uploading {
                step: Step::Verifying,
            } => "awaiting_import",
            s => s.name(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal is corrupt: {0}")]
    Corrupt(String),
}

/// May a case start a job now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStart {
    /// Yes; no earlier start of it is unconfirmed.
    Fresh,
    /// Yes, but an earlier start of this case may have started a job: look for it first.
    InDoubt,
    /// Not yet: the start of another case's job (this case folder, relative to its drop folder) is
    /// not confirmed.
    AfterOther(PathBuf),
}

/// One case as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseRecord {
    pub id: i64,
    /// The drop folder.
    pub folder: PathBuf,
    /// The case folder relative to the drop folder, byte for byte as the filesystem names it.
    pub case: PathBuf,
    pub state: CaseState,
    pub target_kind: Option<TargetKind>,
    pub target_slug: Option<String>,
    pub title: Option<String>,
    /// The manifest of the delivery in progress (or of the last attempt).
    pub manifest_hash: Option<String>,
    /// The manifest that was last verified on the server.
    pub delivered_hash: Option<String>,
    /// Stat fingerprint of the case folder when it was last planned: tells cheaply whether anything changed.
    pub fingerprint: Option<String>,
    /// The manifest last verified on the server (JSON), to tell which sockets later changes touch.
    pub delivered_manifest: Option<String>,
    pub item_pk: Option<String>,
    /// The title of an item this case may have asked the platform to create (recorded before sending the
    /// request) while no pk is recorded: an empty item of that title in the target may be this case's own.
    pub create_sent: Option<String>,
    /// For an algorithm: the manifest hash the recorded job (`item_pk`) was started on, while that job
    /// may still give this content its result (cleared when its case is quarantined).
    pub job_manifest: Option<String>,
    /// Where the case folder was moved when it was quarantined (the folder's `quarantine`), so that
    /// `retry` can bring it back.
    pub moved_to: Option<PathBuf>,
    /// Verified deliveries of this case into its item (1 after the first, +1 per update).
    pub revision: i64,
    pub attempts: i64,
    pub reason: Option<String>,
    pub updated: String,
}

impl CaseRecord {
    /// The case's path inside its drop folder as text, for people (see [`crate::rules::path_text`]).
    pub fn case_text(&self) -> String {
        crate::rules::path_text(&self.case)
    }
}

/// A target the agent paused because the platform refused the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedTarget {
    pub kind: TargetKind,
    pub slug: String,
    pub until_unix: i64,
    pub reason: String,
}

/// An alert waiting to be sent to a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedAlert {
    pub id: i64,
    pub payload: String,
    /// When it was queued, in seconds since the Unix epoch.
    pub created_unix: i64,
    pub attempts: i64,
}

/// An upload the journal remembers for a file of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub path: String,
    pub upload_pk: String,
    pub s3_upload_id: String,
    pub api_url: String,
    pub completed: bool,
    /// Parts already PUT: (part number, ETag verbatim).
    pub parts: Vec<(u32, String)>,
}

/// What the platform holds for one file of a delivered case: what was sent for it, by the delivery of
/// which revision. Kept for every file of the delivered revision, so that an update, which sends only
/// the sockets that changed, can still say in its receipt what the unchanged files went out as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFile {
    pub socket: String,
    /// Relative to the case, as in the plan.
    pub path: String,
    /// SHA-256 of the file in the case folder when it was sent: carried over only while it is the same.
    pub sha256: String,
    /// SHA-256 of the bytes sent (the de-identified copy for DICOM).
    pub sent_sha256: String,
    /// The name it was uploaded under.
    pub upload_name: String,
    pub deidentified: bool,
    /// The revision whose delivery sent it.
    pub revision: u32,
}

/// What planning a ready case decided, as the journal keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Planned<'a> {
    pub manifest_hash: &'a str,
    pub fingerprint: &'a str,
    pub title: &'a str,
    pub target_kind: TargetKind,
    pub target_slug: &'a str,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY,
    folder TEXT NOT NULL,
    case_path TEXT NOT NULL,
    state TEXT NOT NULL,
    step TEXT,
    target_kind TEXT,
    target_slug TEXT,
    title TEXT,
    manifest_hash TEXT,
    delivered_hash TEXT,
    fingerprint TEXT,
    delivered_manifest TEXT,
    item_pk TEXT,
    revision INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    updated TEXT NOT NULL,
    deid_secret TEXT,
    UNIQUE (folder, case_path)
);
CREATE TABLE IF NOT EXISTS uploads (
    case_id INTEGER NOT NULL REFERENCES cases(id),
    manifest_hash TEXT NOT NULL,
    path TEXT NOT NULL,
    upload_pk TEXT NOT NULL,
    s3_upload_id TEXT NOT NULL,
    api_url TEXT NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (case_id, manifest_hash, path)
);
CREATE TABLE IF NOT EXISTS sent_files (
    case_id INTEGER NOT NULL,
    socket TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sent_sha256 TEXT NOT NULL,
    upload_name TEXT NOT NULL,
    deidentified INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (case_id, socket, path)
);
CREATE TABLE IF NOT EXISTS parts (
    upload_pk TEXT NOT NULL,
    part INTEGER NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (upload_pk, part)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_case ON events (case_id);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    hook TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS wakeups (
    case_id INTEGER PRIMARY KEY,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS post_actions (
    case_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    failures INTEGER NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS paused_targets (
    kind TEXT NOT NULL,
    slug TEXT NOT NULL,
    until_unix INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (kind, slug)
);
CREATE TABLE IF NOT EXISTS paused_folders (
    folder TEXT PRIMARY KEY,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS held_folders (
    folder TEXT PRIMARY KEY,
    since TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS awaiting (
    case_id INTEGER PRIMARY KEY,
    manifest_hash TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    awaiting TEXT NOT NULL
);
";

/// Changes to the schema of existing databases, applied in order, each once (`PRAGMA user_version`
/// counts the ones applied). A running installation upgrades in place when the new version starts.
const MIGRATIONS: &[&str] = &[
    // 1: folders and cases are keyed by their raw path bytes (BLOB values), not by lossy text, so two
    // folders whose names differ only in bytes that are not UTF-8 stay two cases; and the journal
    // records that a create request is about to be sent, so that only an item this journal tried to
    // create is ever adopted.
    "UPDATE cases SET folder = CAST(folder AS BLOB), case_path = CAST(case_path AS BLOB);
     UPDATE paused_folders SET folder = CAST(folder AS BLOB);
     ALTER TABLE cases ADD COLUMN create_sent TEXT;
     ALTER TABLE cases ADD COLUMN moved_to BLOB;
     CREATE INDEX IF NOT EXISTS cases_title ON cases (target_kind, target_slug, title);",
    // 2: an algorithm's job has no title to claim: the journal records when a request to start a job
    // was about to be sent, so that a job whose answer was lost is looked for (and not started twice).
    // The manifest a recorded job was started on: a job is followed again only for that same content.
    "ALTER TABLE cases ADD COLUMN job_sent TEXT;
     ALTER TABLE cases ADD COLUMN job_manifest TEXT;",
];

/// The raw bytes of a path, the journal's key for folders and cases.
fn key(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn path_from(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// A path column: BLOB since migration 1; TEXT is still read, in case an older version wrote a row.
fn path_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<PathBuf> {
    use rusqlite::types::ValueRef;
    match r.get_ref(i)? {
        ValueRef::Blob(b) => Ok(path_from(b.to_vec())),
        ValueRef::Text(t) => Ok(path_from(t.to_vec())),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            "path".into(),
            other.data_type(),
        )),
    }
}

/// Who holds a title in a target, when another case asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TitleClaim {
    /// The title is this case's; no earlier create request of it is in doubt.
    Fresh,
    /// An earlier attempt of this case sent a create request whose answer was never recorded: an empty
    /// item with this title is that attempt's and may be adopted.
    EarlierCreateInDoubt,
    /// Another case holds this title (it has an item, or its create may have been sent).
    TakenBy { folder: PathBuf, case: PathBuf },
}

/// The journal of one agent. Cheap to share behind an `Arc`; every call is one short transaction.
pub struct Journal {
    conn: Mutex<Connection>,
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    // One writer at a time: two processes opening an old journal at once migrate it once.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (n, m) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", n as i64 + 1)?;
    }
    // Journals made before cases had a de-identification secret get the column.
    let has_secret: bool = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('cases') WHERE name = 'deid_secret'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    if !has_secret {
        tx.execute_batch("ALTER TABLE cases ADD COLUMN deid_secret TEXT")?;
    }
    tx.commit()
}

/// How long a statement waits for another process's lock on the journal before it fails.
const BUSY: std::time::Duration = std::time::Duration::from_secs(10);

/// Put the journal in WAL mode: a lasting property of the file, set by whichever process opens a new
/// journal first. Converting needs the file to itself, and SQLite does not wait for that lock (its busy
/// handler is not asked), so a process that meets another one converting or creating the journal tries
/// again until the mode is WAL or [`BUSY`] is spent.
fn wal(conn: &Connection) -> rusqlite::Result<()> {
    let is_wal = |mode: &str| mode.eq_ignore_ascii_case("wal");
    let deadline = std::time::Instant::now() + BUSY;
    loop {
        if is_wal(&conn.query_row::<String, _, _>("PRAGMA journal_mode", [], |r| r.get(0))?) {
            return Ok(());
        }
        let tried: rusqlite::Result<String> =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0));
        match tried {
            Ok(mode) if is_wal(&mode) => return Ok(()),
            // Another process has the file: it may be converting it right now.
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() >= deadline {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some(
                    "another process kept the journal locked: it could not be put in WAL mode"
                        .into(),
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn now() -> String {
    crate::clock::now_rfc3339()
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn kind_to_db(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Archive => "archive",
        TargetKind::ReaderStudy => "reader_study",
        TargetKind::Algorithm => "algorithm",
    }
}

fn kind_from_db(k: &str) -> Result<TargetKind, JournalError> {
    match k {
        "archive" => Ok(TargetKind::Archive),
        "reader_study" => Ok(TargetKind::ReaderStudy),
        "algorithm" => Ok(TargetKind::Algorithm),
        other => Err(JournalError::Corrupt(format!(
            "unknown target kind {other:?}"
        ))),
    }
}

/// A `file:` URI for SQLite that opens `path` as immutable (characters with a meaning in URIs escaped).
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.push_str(&format!("%{b:02X}")),
            _ if b.is_ascii() => uri.push(b as char),
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

impl Journal {
    /// Open (or create) `<state_dir>/journal.sqlite3`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join("journal.sqlite3");
        let err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let mut conn = Connection::open(&path).map_err(err)?;
        // First of all: the agent, `status` and `upload` may open the journal at the same instant, and
        // any statement below may meet another one's lock.
        conn.busy_timeout(BUSY).map_err(err)?;
        // WAL with synchronous=FULL: a commit is on disk when it returns, and readers never block writers.
        wal(&conn).map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&mut conn).map_err(err)?;
        Ok(Journal {
            conn: Mutex::new(conn),
        })
    }

    /// Open an existing journal for reading only: `status` run by an operator whom a group lets read
    /// the state folder but not write it. While the agent runs, its `-wal` and `-shm` files exist and
    /// SQLite reads through them. With no agent running they are gone, and a reader cannot create them
    /// in a folder it may not write; the journal is then opened as immutable, which only means that
    /// nothing is writing it now (a writer starting meanwhile could make this one report fail, never
    /// the journal).
    pub fn open_read_only(state_dir: &Path) -> Result<Journal, JournalError> {
        use rusqlite::OpenFlags;
        let path = state_dir.join("journal.sqlite3");
        let err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let readable = |conn: &Connection| {
            conn.query_row("SELECT COUNT(*) FROM cases", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
        };
        let conn = Connection::open_with_flags(&path, flags).map_err(err)?;
        let conn = match readable(&conn) {
            Ok(()) => conn,
            Err(e) if path.with_extension("sqlite3-wal").exists() => return Err(err(e)),
            Err(_) => {
                let conn = Connection::open_with_flags(immutable_uri(&path), flags).map_err(err)?;
                readable(&conn).map_err(err)?;
                conn
            }
        };
        Ok(Journal {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each call is one transaction),
        // so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(
        conn: &Connection,
        case_id: i64,
        event: &str,
        detail: Option<&str>,
    ) -> Result<(), JournalError> {
        conn.execute(
            "INSERT INTO events (case_id, at, event, detail) VALUES (?1, ?2, ?3, ?4)",
            params![case_id, now(), event, detail],
        )?;
        Ok(())
    }

    /// The case's record, created in `Settling` if the journal has never seen it.
    pub fn discover(&self, folder: &Path, case: &Path) -> Result<CaseRecord, JournalError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO cases (folder, case_path, state, updated) VALUES (?1, ?2, 'settling', ?3)",
                params![key(folder), key(case), now()],
            )?;
            if inserted == 1 {
                let id = tx.last_insert_rowid();
                Journal::event(&tx, id, "discovered", None)?;
            }
            tx.commit()?;
        }
        self.get(folder, case)?
            .ok_or_else(|| JournalError::Corrupt("a case vanished right after insert".into()))
    }

    pub fn get(&self, folder: &Path, case: &Path) -> Result<Option<CaseRecord>, JournalError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("{SELECT} WHERE folder = ?1 AND case_path = ?2"))?;
        let row = stmt
            .query_row(params![key(folder), key(case)], raw_row)
            .optional()?;
        row.map(RawRow::into_record).transpose()
    }

    pub fn by_id(&self, id: i64) -> Result<Option<CaseRecord>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?;
        let row = stmt.query_row(params![id], raw_row).optional()?;
        row.map(RawRow::into_record).transpose()
    }

    /// All cases, oldest first.
    pub fn all(&self) -> Result<Vec<CaseRecord>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY id"))?;
        let rows = stmt
            .query_map([], raw_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(RawRow::into_record).collect()
    }

    fn set(
        &self,
        id: i64,
        state: CaseState,
        event: &str,
        detail: Option<&str>,
    ) -> Result<(), JournalError> {
        let (s, step) = state.to_db();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = ?2, step = ?3, updated = ?4 WHERE id = ?1",
            params![id, s, step, now()],
        )?;
        Journal::event(&tx, id, event, detail)?;
        tx.commit()?;
        Ok(())
    }

    /// The case is stable and planned with this manifest.
    pub fn ready(&self, id: i64, planned: &Planned<'_>) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = 'ready', step = NULL, manifest_hash = ?2, title = ?3, target_kind = ?4,
             target_slug = ?5, fingerprint = ?6, reason = NULL, updated = ?7 WHERE id = ?1",
            params![
                id,
                planned.manifest_hash,
                planned.title,
                kind_to_db(planned.target_kind),
                planned.target_slug,
                planned.fingerprint,
                now()
            ],
        )?;
        let manifest_hash = planned.manifest_hash;
        Journal::event(&tx, id, "ready", Some(manifest_hash))?;
        tx.commit()?;
        Ok(())
    }

    /// Remember the folder's current stat fingerprint (its content is known to be unchanged or ignored).
    pub fn set_fingerprint(&self, id: i64, fingerprint: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE cases SET fingerprint = ?2 WHERE id = ?1",
            params![id, fingerprint],
        )?;
        Ok(())
    }

    /// A note on a case that is not ready (e.g. still changing after max_wait), shown by `status`.
    pub fn note(&self, id: i64, note: &str) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET reason = ?2, updated = ?3 WHERE id = ?1",
            params![id, note, now()],
        )?;
        Journal::event(&tx, id, "note", Some(note))?;
        tx.commit()?;
        Ok(())
    }

    /// Replace a note by a newer form of itself (how long a wait has lasted so far): no event, and the
    /// case's time of last change stays, so that it still counts as waiting since then.
    pub fn renote(&self, id: i64, note: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE cases SET reason = ?2 WHERE id = ?1",
            params![id, note],
        )?;
        Ok(())
    }

    /// Back to `Ready` after an attempt that can be repeated later (platform unavailable, target paused).
    pub fn postpone(&self, id: i64, why: &str) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = 'ready', step = NULL, reason = ?2, updated = ?3 WHERE id = ?1",
            params![id, why, now()],
        )?;
        Journal::event(&tx, id, "postponed", Some(why))?;
        tx.commit()?;
        Ok(())
    }

    /// The secret that keys the case's new DICOM UIDs (hex), made on first use and kept for the life of
    /// the case: every attempt and every later update of the case maps a UID to the same new UID, so a
    /// resumed upload sends the very bytes it had started with.
    pub fn deid_secret(&self, id: i64) -> Result<String, JournalError> {
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let conn = self.conn();
        conn.execute(
            "UPDATE cases SET deid_secret = ?2 WHERE id = ?1 AND deid_secret IS NULL",
            params![id, fresh],
        )?;
        Ok(conn.query_row(
            "SELECT deid_secret FROM cases WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?)
    }

    /// Before the first platform call of an attempt.
    pub fn begin_attempt(&self, id: i64) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = 'uploading', step = 'creating', attempts = attempts + 1, updated = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Journal::event(&tx, id, "creating", None)?;
        tx.commit()?;
        Ok(())
    }

    /// The item exists (created or adopted); from here on every attempt updates this item.
    pub fn item_created(&self, id: i64, item_pk: &str) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET item_pk = ?2, create_sent = NULL, job_sent = NULL, job_manifest = manifest_hash,
             step = 'uploading', updated = ?3 WHERE id = ?1",
            params![id, item_pk, now()],
        )?;
        Journal::event(&tx, id, "item", Some(item_pk))?;
        tx.commit()?;
        Ok(())
    }

    /// Right before a request to create the item titled `title` in a target is sent: take the title for
    /// this case, unless another case holds it, and record that a create may be under way. One
    /// transaction that other processes (`upload`, a second agent on the same journal) wait for, so two
    /// cases never both take a title.
    pub fn claim_title(
        &self,
        id: i64,
        kind: TargetKind,
        slug: &str,
        title: &str,
    ) -> Result<TitleClaim, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // A holder is a case with an item in the target, or one whose create request may have been sent.
        let holder = tx
            .query_row(
                "SELECT folder, case_path FROM cases WHERE id != ?1 AND target_kind = ?2 AND target_slug = ?3
                 AND ((title = ?4 AND item_pk IS NOT NULL) OR create_sent = ?4) ORDER BY id LIMIT 1",
                params![id, kind_to_db(kind), slug, title],
                |r| Ok((path_col(r, 0)?, path_col(r, 1)?)),
            )
            .optional()?;
        if let Some((folder, case)) = holder {
            return Ok(TitleClaim::TakenBy { folder, case });
        }
        let in_doubt: bool = tx.query_row(
            "SELECT create_sent IS ?2 AND item_pk IS NULL FROM cases WHERE id = ?1",
            params![id, title],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE cases SET create_sent = ?4, target_kind = ?2, target_slug = ?3, title = ?4, updated = ?5
             WHERE id = ?1",
            params![id, kind_to_db(kind), slug, title, now()],
        )?;
        Journal::event(&tx, id, "create sent", Some(title))?;
        tx.commit()?;
        Ok(if in_doubt {
            TitleClaim::EarlierCreateInDoubt
        } else {
            TitleClaim::Fresh
        })
    }

    /// The platform answered the create request with a refusal: no item was created by it, so the title
    /// is free again for other cases.
    pub fn create_refused(&self, id: i64) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE cases SET create_sent = NULL WHERE id = ?1 AND item_pk IS NULL",
            params![id],
        )?;
        Ok(())
    }

    /// Right before a request to start a job on `slug` is sent: record it, and say whether an earlier
    /// request of this case may have started a job whose answer was lost (then that job is looked for
    /// before another is started). While another case's start is unconfirmed (in flight, or its answer
    /// lost), no other start may go out: an unconfirmed job is recognised as the only job of the
    /// algorithm that no case holds, which two unconfirmed starts would make ambiguous. A quarantined
    /// case does not hold the others up.
    pub fn job_starting(&self, id: i64, slug: &str) -> Result<JobStart, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let other = tx
            .query_row(
                "SELECT case_path FROM cases WHERE id != ?1 AND target_kind = 'algorithm'
                 AND target_slug = ?2 AND job_sent IS NOT NULL AND state != 'quarantined'
                 ORDER BY id LIMIT 1",
                params![id, slug],
                |r| path_col(r, 0),
            )
            .optional()?;
        if let Some(case) = other {
            return Ok(JobStart::AfterOther(case));
        }
        let in_doubt: bool = tx.query_row(
            "SELECT job_sent IS NOT NULL FROM cases WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE cases SET job_sent = ?3, target_kind = 'algorithm', target_slug = ?2, updated = ?3
             WHERE id = ?1",
            params![id, slug, now()],
        )?;
        Journal::event(&tx, id, "job sent", Some(slug))?;
        tx.commit()?;
        Ok(if in_doubt {
            JobStart::InDoubt
        } else {
            JobStart::Fresh
        })
    }

    /// The platform refused to start the job: no job was started by that request.
    pub fn job_refused(&self, id: i64) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE cases SET job_sent = NULL WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// The jobs of algorithm `slug` that cases of this journal hold: a lost job is never one of these.
    pub fn claimed_jobs(&self, slug: &str) -> Result<Vec<String>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT item_pk FROM cases WHERE target_kind = 'algorithm' AND target_slug = ?1
             AND item_pk IS NOT NULL",
        )?;
        let pks = stmt
            .query_map(params![slug], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(pks)
    }

    /// The PATCH of the delivery of this manifest was answered: the case waits for the platform's imports.
    /// What verifying needs (`awaiting`, JSON) is kept until the case is delivered or quarantined, so
    /// that a restart, or a retry after a failure that passes, waits on instead of sending it again.
    pub fn awaiting_import(
        &self,
        id: i64,
        manifest_hash: &str,
        awaiting: &str,
    ) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO awaiting (case_id, manifest_hash, since_ms, awaiting)
             VALUES (?1, ?2, ?3, ?4)",
            params![id, manifest_hash, unix_now_ms(), awaiting],
        )?;
        tx.execute(
            "UPDATE cases SET state = 'uploading', step = 'verifying', updated = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Journal::event(&tx, id, "verifying", Some(manifest_hash))?;
        tx.commit()?;
        Ok(())
    }

    /// What the case's delivery of this manifest waits for (JSON) and how long it has waited, if its
    /// values are set and it is not verified yet.
    pub fn awaited(
        &self,
        id: i64,
        manifest_hash: &str,
    ) -> Result<Option<(String, std::time::Duration)>, JournalError> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT awaiting, since_ms FROM awaiting WHERE case_id = ?1 AND manifest_hash = ?2",
                params![id, manifest_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(json, since)| {
            let waited = u64::try_from(unix_now_ms() - since).unwrap_or(0);
            (json, std::time::Duration::from_millis(waited))
        }))
    }

    /// A wait resumed (after a restart): the case is verifying again.
    pub fn resume_waiting(&self, id: i64) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = 'uploading', step = 'verifying', attempts = attempts + 1,
             reason = NULL, updated = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Journal::event(&tx, id, "waiting again", None)?;
        tx.commit()?;
        Ok(())
    }

    pub fn step(&self, id: i64, step: Step) -> Result<(), JournalError> {
        let state = CaseState::Uploading { step };
        let name = state.to_db().1.unwrap_or("uploading");
        self.set(id, state, name, None)
    }

    /// Verified on the server: this manifest is delivered and is never uploaded again. What was sent for
    /// each file is left as an earlier delivery recorded it (the content is the one delivered before).
    pub fn delivered(
        &self,
        id: i64,
        manifest: &crate::rules::Manifest,
    ) -> Result<i64, JournalError> {
        self.delivered_as(id, manifest, None)
    }

    /// Verified on the server, and `sent` is what the platform now holds for the case's files (what this
    /// delivery sent and what it carried over): recorded together, so that the next revision's receipt
    /// never misses it, whenever the process stops.
    pub fn delivered_sent(
        &self,
        id: i64,
        manifest: &crate::rules::Manifest,
        sent: &[SentFile],
    ) -> Result<i64, JournalError> {
        self.delivered_as(id, manifest, Some(sent))
    }

    fn delivered_as(
        &self,
        id: i64,
        manifest: &crate::rules::Manifest,
        sent: Option<&[SentFile]>,
    ) -> Result<i64, JournalError> {
        let manifest_hash = manifest.hash.as_str();
        let json =
            serde_json::to_string(manifest).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(sent) = sent {
            tx.execute("DELETE FROM sent_files WHERE case_id = ?1", params![id])?;
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO sent_files
                 (case_id, socket, path, sha256, sent_sha256, upload_name, deidentified, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for f in sent {
                insert.execute(params![
                    id,
                    f.socket,
                    f.path,
                    f.sha256,
                    f.sent_sha256,
                    f.upload_name,
                    f.deidentified,
                    f.revision
                ])?;
            }
        }
        tx.execute(
            "UPDATE cases SET state = 'delivered', step = NULL, delivered_hash = ?2, delivered_manifest = ?3,
             revision = revision + 1, reason = NULL, updated = ?4 WHERE id = ?1",
            params![id, manifest_hash, json, now()],
        )?;
        // Parts of finished uploads are no longer needed to resume anything.
        tx.execute(
            "DELETE FROM parts WHERE upload_pk IN (SELECT upload_pk FROM uploads WHERE case_id = ?1)",
            params![id],
        )?;
        tx.execute("DELETE FROM uploads WHERE case_id = ?1", params![id])?;
        tx.execute("DELETE FROM awaiting WHERE case_id = ?1", params![id])?;
        Journal::event(&tx, id, "delivered", Some(manifest_hash))?;
        let revision = tx.query_row(
            "SELECT revision FROM cases WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(revision)
    }

    pub fn quarantined(&self, id: i64, reason: &str) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = 'quarantined', step = NULL, reason = ?2, updated = ?3,
             job_manifest = NULL WHERE id = ?1",
            params![id, reason, now()],
        )?;
        // A retried case is sent again: what it waited for is over.
        tx.execute("DELETE FROM awaiting WHERE case_id = ?1", params![id])?;
        Journal::event(&tx, id, "quarantined", Some(reason))?;
        tx.commit()?;
        Ok(())
    }

    /// The case folder now lives at `to` (moved to quarantine), or is back in its drop folder (`None`).
    pub fn moved_to(&self, id: i64, to: Option<&Path>) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET moved_to = ?2 WHERE id = ?1",
            params![id, to.map(key)],
        )?;
        let detail = to.map(crate::rules::path_text);
        Journal::event(&tx, id, "moved", detail.as_deref())?;
        tx.commit()?;
        Ok(())
    }

    /// Put a quarantined case back in line (the `retry` command).
    pub fn requeue(&self, id: i64) -> Result<(), JournalError> {
        self.set(id, CaseState::Settling, "requeued", None)
    }

    /// The `retry` command: requeue a case and ask a running agent to look at it now (see
    /// [`Journal::take_wakeups`]); another process cannot reach the agent's memory, but it can reach this.
    pub fn retry(&self, id: i64) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cases SET state = 'settling', step = NULL, updated = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO wakeups (case_id, at) VALUES (?1, ?2)",
            params![id, now()],
        )?;
        Journal::event(&tx, id, "requeued", Some("by the retry command"))?;
        tx.commit()?;
        Ok(())
    }

    /// The case folders (drop folder, case) that `retry` asked about since the last call; each is
    /// returned once.
    pub fn take_wakeups(&self) -> Result<Vec<(PathBuf, PathBuf)>, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let cases = {
            let mut stmt = tx.prepare_cached(
                "SELECT c.folder, c.case_path FROM wakeups w JOIN cases c ON c.id = w.case_id",
            )?;
            stmt.query_map([], |r| Ok((path_col(r, 0)?, path_col(r, 1)?)))?
                .collect::<Result<Vec<_>, _>>()?
        };
        tx.execute("DELETE FROM wakeups", [])?;
        tx.commit()?;
        Ok(cases)
    }

    /// Queue an alert (JSON) for a webhook; it stays queued until [`Journal::alert_done`], across restarts.
    pub fn queue_alert(&self, hook: &str, payload: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT INTO alerts (hook, payload, created_unix) VALUES (?1, ?2, ?3)",
            params![hook, payload, unix_now()],
        )?;
        Ok(())
    }

    /// The oldest alert queued for a webhook.
    pub fn next_alert(&self, hook: &str) -> Result<Option<QueuedAlert>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, payload, created_unix, attempts FROM alerts WHERE hook = ?1 ORDER BY id LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![hook], |r| {
                Ok(QueuedAlert {
                    id: r.get(0)?,
                    payload: r.get(1)?,
                    created_unix: r.get(2)?,
                    attempts: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// An attempt to send an alert failed.
    pub fn alert_failed(&self, id: i64) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE alerts SET attempts = attempts + 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// The alert was sent, or given up on.
    pub fn alert_done(&self, id: i64) -> Result<(), JournalError> {
        self.conn()
            .execute("DELETE FROM alerts WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Drop the alerts queued for webhooks that are no longer configured; returns how many.
    pub fn drop_alerts_except(&self, hooks: &[String]) -> Result<usize, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT hook FROM alerts")?;
        let queued: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for hook in queued.iter().filter(|h| !hooks.contains(h)) {
            n += conn.execute("DELETE FROM alerts WHERE hook = ?1", params![hook])?;
        }
        Ok(n)
    }

    /// What the platform holds for the files of the case's last delivered revision, as recorded by
    /// [`Journal::delivered_sent`]; empty before the first delivery (and for cases delivered by a
    /// version that did not record it).
    pub fn sent_files(&self, id: i64) -> Result<Vec<SentFile>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT socket, path, sha256, sent_sha256, upload_name, deidentified, revision
             FROM sent_files WHERE case_id = ?1 ORDER BY socket, path",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok(SentFile {
                socket: r.get(0)?,
                path: r.get(1)?,
                sha256: r.get(2)?,
                sent_sha256: r.get(3)?,
                upload_name: r.get(4)?,
                deidentified: r.get(5)?,
                revision: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Forget a case entirely (its folder is gone and it was never delivered).
    pub fn forget(&self, id: i64) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM parts WHERE upload_pk IN (SELECT upload_pk FROM uploads WHERE case_id = ?1)",
            params![id],
        )?;
        tx.execute("DELETE FROM uploads WHERE case_id = ?1", params![id])?;
        tx.execute("DELETE FROM wakeups WHERE case_id = ?1", params![id])?;
        tx.execute("DELETE FROM sent_files WHERE case_id = ?1", params![id])?;
        tx.execute("DELETE FROM awaiting WHERE case_id = ?1", params![id])?;
        tx.execute("DELETE FROM cases WHERE id = ?1", params![id])?;
        Journal::event(&tx, id, "forgotten", None)?;
        tx.commit()?;
        Ok(())
    }

    /// Record an upload right after the platform created it, before any part is sent.
    pub fn upload_created(
        &self,
        id: i64,
        manifest_hash: &str,
        path: &str,
        upload_pk: &str,
        s3_upload_id: &str,
        api_url: &str,
    ) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO uploads (case_id, manifest_hash, path, upload_pk, s3_upload_id, api_url, completed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            params![id, manifest_hash, path, upload_pk, s3_upload_id, api_url],
        )?;
        Ok(())
    }

    pub fn part_done(&self, upload_pk: &str, part: u32, etag: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO parts (upload_pk, part, etag) VALUES (?1, ?2, ?3)",
            params![upload_pk, part, etag],
        )?;
        Ok(())
    }

    pub fn upload_completed(&self, upload_pk: &str) -> Result<(), JournalError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE uploads SET completed = 1 WHERE upload_pk = ?1",
            params![upload_pk],
        )?;
        conn.execute("DELETE FROM parts WHERE upload_pk = ?1", params![upload_pk])?;
        Ok(())
    }

    /// Forget an upload that turned out to be dead (expired, aborted, consumed).
    pub fn upload_dropped(&self, upload_pk: &str) -> Result<(), JournalError> {
        let conn = self.conn();
        conn.execute("DELETE FROM parts WHERE upload_pk = ?1", params![upload_pk])?;
        conn.execute(
            "DELETE FROM uploads WHERE upload_pk = ?1",
            params![upload_pk],
        )?;
        Ok(())
    }

    /// The uploads recorded for a case's delivery of this manifest, with their parts.
    pub fn uploads(&self, id: i64, manifest_hash: &str) -> Result<Vec<UploadRecord>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT path, upload_pk, s3_upload_id, api_url, completed FROM uploads
             WHERE case_id = ?1 AND manifest_hash = ?2 ORDER BY path",
        )?;
        let mut uploads = stmt
            .query_map(params![id, manifest_hash], |r| {
                Ok(UploadRecord {
                    path: r.get(0)?,
                    upload_pk: r.get(1)?,
                    s3_upload_id: r.get(2)?,
                    api_url: r.get(3)?,
                    completed: r.get::<_, i64>(4)? != 0,
                    parts: vec![],
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut parts =
            conn.prepare_cached("SELECT part, etag FROM parts WHERE upload_pk = ?1 ORDER BY part")?;
        for u in &mut uploads {
            u.parts = parts
                .query_map(params![u.upload_pk], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(uploads)
    }

    /// The agent paused a target after the platform refused the token, until `until_unix`. Recorded so
    /// that `status`, another process, can show it.
    pub fn target_paused(
        &self,
        kind: TargetKind,
        slug: &str,
        until_unix: i64,
        reason: &str,
    ) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO paused_targets (kind, slug, until_unix, reason) VALUES (?1, ?2, ?3, ?4)",
            params![kind_to_db(kind), slug, until_unix, reason],
        )?;
        Ok(())
    }

    /// Targets paused now: (kind, slug, paused until in seconds since the epoch, the platform's words).
    pub fn paused_targets(&self) -> Result<Vec<PausedTarget>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, slug, until_unix, reason FROM paused_targets WHERE until_unix > ?1 ORDER BY slug",
        )?;
        let rows = stmt
            .query_map(params![unix_now()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(kind, slug, until_unix, reason)| {
                Ok(PausedTarget {
                    kind: kind_from_db(&kind)?,
                    slug,
                    until_unix,
                    reason,
                })
            })
            .collect()
    }

    /// Stop (or restart) delivering the cases of a drop folder; they are still watched and settled.
    pub fn set_paused(&self, folder: &Path, paused: bool) -> Result<(), JournalError> {
        let conn = self.conn();
        if paused {
            conn.execute(
                "INSERT OR IGNORE INTO paused_folders (folder, since) VALUES (?1, ?2)",
                params![key(folder), now()],
            )?;
        } else {
            conn.execute(
                "DELETE FROM paused_folders WHERE folder = ?1",
                params![key(folder)],
            )?;
        }
        Ok(())
    }

    /// The agent holds a drop folder (`Some(reason)`: its target or a socket is not on the platform, or
    /// could not be checked) or lets it go (`None`). Recorded so that `status`, another process, shows it.
    pub fn set_held(&self, folder: &Path, reason: Option<&str>) -> Result<(), JournalError> {
        let conn = self.conn();
        match reason {
            Some(r) => conn.execute(
                "INSERT INTO held_folders (folder, since, reason) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (folder) DO UPDATE SET reason = excluded.reason",
                params![folder.to_string_lossy(), now(), r],
            )?,
            None => conn.execute(
                "DELETE FROM held_folders WHERE folder = ?1",
                params![folder.to_string_lossy()],
            )?,
        };
        Ok(())
    }

    /// Forget every hold: an agent starting checks every folder afresh.
    pub fn clear_held(&self) -> Result<(), JournalError> {
        self.conn().execute("DELETE FROM held_folders", [])?;
        Ok(())
    }

    /// The held drop folders: since when, and why.
    pub fn held(
        &self,
    ) -> Result<std::collections::BTreeMap<PathBuf, (String, String)>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT folder, since, reason FROM held_folders")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                PathBuf::from(r.get::<_, String>(0)?),
                (r.get::<_, String>(1)?, r.get::<_, String>(2)?),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A delivered case's post-action failed (again): recorded with why; how often it has failed in a
    /// row, this time included.
    pub fn post_action_failed(&self, id: i64, reason: &str) -> Result<u32, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO post_actions (case_id, reason, failures, since) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT (case_id) DO UPDATE SET reason = ?2, failures = failures + 1",
            params![id, reason, now()],
        )?;
        let failures: i64 = tx.query_row(
            "SELECT failures FROM post_actions WHERE case_id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        if failures == 1 {
            Journal::event(&tx, id, "post-action failed", Some(reason))?;
        }
        tx.commit()?;
        Ok(failures as u32)
    }

    /// A case's post-action was done (or is no longer due): whether it had failed before.
    pub fn post_action_done(&self, id: i64) -> Result<bool, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = tx.execute("DELETE FROM post_actions WHERE case_id = ?1", params![id])?;
        if removed > 0 {
            Journal::event(&tx, id, "post-action done", None)?;
        }
        tx.commit()?;
        Ok(removed > 0)
    }

    /// The cases whose post-action fails: by case id, why, how often in a row, and since when.
    pub fn post_action_failures(
        &self,
    ) -> Result<std::collections::BTreeMap<i64, (String, u32, String)>, JournalError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT case_id, reason, failures, since FROM post_actions")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (r.get(1)?, r.get::<_, i64>(2)? as u32, r.get(3)?),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ask the running agent to look at a case again now (as `retry` does), without changing its state.
    pub fn wake(&self, id: i64) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO wakeups (case_id, at) VALUES (?1, ?2)",
            params![id, now()],
        )?;
        Ok(())
    }

    /// The paused drop folders.
    pub fn paused(&self) -> Result<std::collections::BTreeSet<PathBuf>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT folder FROM paused_folders")?;
        let rows = stmt.query_map([], |r| path_col(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many cases are in each state, by [`CaseState::name`].
    pub fn counts(&self) -> Result<std::collections::BTreeMap<String, i64>, JournalError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT state, step, COUNT(*) FROM cases GROUP BY state, step")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut counts = std::collections::BTreeMap::new();
        for row in rows {
            let (state, step, n) = row?;
            let name = CaseState::from_db(&state, step.as_deref())?.count_name();
            *counts.entry(name.to_owned()).or_insert(0) += n;
        }
        Ok(counts)
    }

    /// The events of a case, oldest first: (time, event, detail).
    pub fn events(&self, id: i64) -> Result<Vec<(String, String, Option<String>)>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at, event, detail FROM events WHERE case_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

const SELECT: &str =
    "SELECT id, folder, case_path, state, step, target_kind, target_slug, title, manifest_hash,
    delivered_hash, fingerprint, delivered_manifest, item_pk, revision, attempts, reason, updated, create_sent,
    moved_to, job_manifest FROM cases";

struct RawRow {
    id: i64,
    folder: PathBuf,
    case: PathBuf,
    state: String,
    step: Option<String>,
    target_kind: Option<String>,
    target_slug: Option<String>,
    title: Option<String>,
    manifest_hash: Option<String>,
    delivered_hash: Option<String>,
    fingerprint: Option<String>,
    delivered_manifest: Option<String>,
    item_pk: Option<String>,
    revision: i64,
    attempts: i64,
    reason: Option<String>,
    updated: String,
    create_sent: Option<String>,
    moved_to: Option<PathBuf>,
    job_manifest: Option<String>,
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        folder: path_col(r, 1)?,
        case: path_col(r, 2)?,
        state: r.get(3)?,
        step: r.get(4)?,
        target_kind: r.get(5)?,
        target_slug: r.get(6)?,
        title: r.get(7)?,
        manifest_hash: r.get(8)?,
        delivered_hash: r.get(9)?,
        fingerprint: r.get(10)?,
        delivered_manifest: r.get(11)?,
        item_pk: r.get(12)?,
        revision: r.get(13)?,
        attempts: r.get(14)?,
        reason: r.get(15)?,
        updated: r.get(16)?,
        create_sent: r.get(17)?,
        moved_to: match r.get_ref(18)? {
            rusqlite::types::ValueRef::Null => None,
            _ => Some(path_col(r, 18)?),
        },
        job_manifest: r.get(19)?,
    })
}

impl RawRow {
    fn into_record(self) -> Result<CaseRecord, JournalError> {
        let target_kind = self.target_kind.as_deref().map(kind_from_db).transpose()?;
        Ok(CaseRecord {
            id: self.id,
            folder: self.folder,
            case: self.case,
            state: CaseState::from_db(&self.state, self.step.as_deref())?,
            target_kind,
            target_slug: self.target_slug,
            title: self.title,
            manifest_hash: self.manifest_hash,
            delivered_hash: self.delivered_hash,
            fingerprint: self.fingerprint,
            delivered_manifest: self.delivered_manifest,
            item_pk: self.item_pk,
            revision: self.revision,
            attempts: self.attempts,
            reason: self.reason,
            updated: self.updated,
            create_sent: self.create_sent,
            moved_to: self.moved_to,
            job_manifest: self.job_manifest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn what_a_case_waits_for_is_kept_for_its_content_until_it_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let id = j.discover(Path::new("/drop"), Path::new("p1")).unwrap().id;
        assert!(j.awaited(id, "m1").unwrap().is_none());
        j.awaiting_import(id, "m1", "{\"item_pk\": \"i\"}").unwrap();
        let c = j.by_id(id).unwrap().unwrap();
        assert_eq!(
            c.state,
            CaseState::Uploading {
                step: Step::Verifying
            }
        );
        // After a crash (a fresh connection), and after a failure that passes, it still waits.
        let j = Journal::open(dir.path()).unwrap();
        j.postpone(id, "the platform is unavailable").unwrap();
        let (json, waited) = j.awaited(id, "m1").unwrap().unwrap();
        assert_eq!(json, "{\"item_pk\": \"i\"}");
        assert!(waited < std::time::Duration::from_secs(60));
        // Other content of the case is sent anew.
        assert!(j.awaited(id, "m2").unwrap().is_none());
        j.resume_waiting(id).unwrap();
        assert_eq!(j.by_id(id).unwrap().unwrap().attempts, 1);
        // Verified or quarantined, nothing is awaited any more.
        j.quarantined(id, "the import failed").unwrap();
        assert!(j.awaited(id, "m1").unwrap().is_none());
        j.awaiting_import(id, "m1", "{}").unwrap();
        let manifest = crate::rules::Manifest {
            hash: "m1".into(),
            entries: vec![],
        };
        j.delivered(id, &manifest).unwrap();
        assert!(j.awaited(id, "m1").unwrap().is_none());
    }

    #[test]
    fn cases_waiting_for_their_import_are_counted_apart_from_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let folder = Path::new("/drop");
        for (case, step) in [
            ("a", Step::Uploading),
            ("b", Step::Verifying),
            ("c", Step::Verifying),
        ] {
            let c = j.discover(folder, Path::new(case)).unwrap();
            j.step(c.id, step).unwrap();
        }
        j.discover(folder, Path::new("d")).unwrap();
        let counts = j.counts().unwrap();
        let expected: std::collections::BTreeMap<String, i64> =
            [("settling", 1), ("uploading", 1), ("awaiting_import", 2)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn a_delivery_walks_the_states_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Path::new("/drop");
        let id = {
            let j = Journal::open(dir.path()).unwrap();
            let c = j.discover(folder, Path::new("p1")).unwrap();
            assert_eq!(c.state, CaseState::Settling);
            assert_eq!(
                j.discover(folder, Path::new("p1")).unwrap().id,
                c.id,
                "discovering twice is one case"
            );
            let planned = Planned {
                manifest_hash: "m1",
                fingerprint: "f1",
                title: "p1",
                target_kind: TargetKind::Archive,
                target_slug: "a",
            };
            j.ready(c.id, &planned).unwrap();
            j.begin_attempt(c.id).unwrap();
            j.item_created(c.id, "item-1").unwrap();
            j.upload_created(c.id, "m1", "ct/a.dcm", "u1", "s3-1", "http://x/uploads/u1/")
                .unwrap();
            j.part_done("u1", 1, "\"etag-1\"").unwrap();
            j.part_done("u1", 2, "\"etag-2\"").unwrap();
            c.id
        };
        // As after a kill -9: a fresh connection sees every committed step.
        let j = Journal::open(dir.path()).unwrap();
        let c = j.by_id(id).unwrap().unwrap();
        assert_eq!(
            c.state,
            CaseState::Uploading {
                step: Step::Uploading
            }
        );
        assert_eq!(c.item_pk.as_deref(), Some("item-1"));
        assert_eq!(c.attempts, 1);
        let ups = j.uploads(id, "m1").unwrap();
        assert_eq!(ups.len(), 1);
        assert_eq!(
            ups[0].parts,
            vec![(1, "\"etag-1\"".to_owned()), (2, "\"etag-2\"".to_owned())]
        );
        assert!(j.uploads(id, "other-manifest").unwrap().is_empty());

        j.upload_completed("u1").unwrap();
        assert!(j.uploads(id, "m1").unwrap()[0].completed);
        j.step(id, Step::Patching).unwrap();
        j.step(id, Step::Verifying).unwrap();
        let m = crate::rules::Manifest {
            entries: vec![],
            hash: "m1".into(),
        };
        assert_eq!(j.delivered(id, &m).unwrap(), 1);
        let c = j.by_id(id).unwrap().unwrap();
        assert_eq!(
            (c.state, c.delivered_hash.as_deref(), c.revision),
            (CaseState::Delivered, Some("m1"), 1)
        );
        assert_eq!(
            c.delivered_manifest.as_deref(),
            Some(r#"{"entries":[],"hash":"m1"}"#)
        );
        assert!(
            j.uploads(id, "m1").unwrap().is_empty(),
            "nothing to resume after delivery"
        );
        let events: Vec<String> = j.events(id).unwrap().into_iter().map(|e| e.1).collect();
        assert_eq!(
            events,
            [
                "discovered",
                "ready",
                "creating",
                "item",
                "patching",
                "verifying",
                "delivered"
            ]
        );
    }

    #[test]
    fn what_was_sent_survives_reopening_until_the_next_delivery_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = |hash: &str| crate::rules::Manifest {
            entries: vec![],
            hash: hash.into(),
        };
        let sent = |path: &str, revision: u32| SentFile {
            socket: "ct".into(),
            path: path.into(),
            sha256: format!("{path}-original"),
            sent_sha256: format!("{path}-copy"),
            upload_name: "dicom-0001.dcm".into(),
            deidentified: true,
            revision,
        };
        let id = {
            let j = Journal::open(dir.path()).unwrap();
            let id = j.discover(Path::new("/drop"), Path::new("p1")).unwrap().id;
            assert!(j.sent_files(id).unwrap().is_empty(), "nothing sent yet");
            j.delivered_sent(id, &m("m1"), &[sent("a.dcm", 1), sent("b.dcm", 1)])
                .unwrap();
            id
        };
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.sent_files(id).unwrap(),
            [sent("a.dcm", 1), sent("b.dcm", 1)]
        );
        // Content delivered before, delivered again without sending: the record stays.
        j.delivered(id, &m("m1")).unwrap();
        assert_eq!(j.sent_files(id).unwrap().len(), 2);
        // The next revision's record replaces the whole set: a file gone from the case is gone from it.
        j.delivered_sent(id, &m("m2"), &[sent("a.dcm", 1)]).unwrap();
        assert_eq!(j.sent_files(id).unwrap(), [sent("a.dcm", 1)]);
        j.forget(id).unwrap();
        assert!(j.sent_files(id).unwrap().is_empty());
    }

    #[test]
    fn a_job_start_stays_in_doubt_until_its_pk_or_refusal_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = j.discover(Path::new("/drop"), Path::new("a")).unwrap();
        let b = j.discover(Path::new("/drop"), Path::new("b")).unwrap();
        let planned = |m| Planned {
            manifest_hash: m,
            fingerprint: "f",
            title: "a",
            target_kind: TargetKind::Algorithm,
            target_slug: "algo",
        };
        j.ready(a.id, &planned("m1")).unwrap();
        assert_eq!(j.job_starting(a.id, "algo").unwrap(), JobStart::Fresh);
        // Unconfirmed: no other case starts a job meanwhile.
        assert_eq!(
            j.job_starting(b.id, "algo").unwrap(),
            JobStart::AfterOther("a".into())
        );
        // The answer was lost (a crash): the next start of the case is in doubt, until a pk is recorded.
        assert_eq!(j.job_starting(a.id, "algo").unwrap(), JobStart::InDoubt);
        j.item_created(a.id, "job-1").unwrap();
        assert_eq!(j.job_starting(a.id, "algo").unwrap(), JobStart::Fresh);
        j.job_refused(a.id).unwrap();
        assert_eq!(
            j.job_starting(a.id, "algo").unwrap(),
            JobStart::Fresh,
            "a refusal started nothing"
        );
        j.job_refused(a.id).unwrap();
        let rec = j.by_id(a.id).unwrap().unwrap();
        assert_eq!(
            rec.job_manifest.as_deref(),
            Some("m1"),
            "the content it ran on"
        );
        j.ready(b.id, &planned("m2")).unwrap();
        j.item_created(b.id, "job-2").unwrap();
        let mut claimed = j.claimed_jobs("algo").unwrap();
        claimed.sort();
        assert_eq!(claimed, ["job-1", "job-2"]);
        assert!(j.claimed_jobs("other").unwrap().is_empty());
        // A failed job's case, quarantined, gets a new job on its next attempt; the job stays claimed.
        j.quarantined(a.id, "job-1 ended Failed").unwrap();
        let rec = j.by_id(a.id).unwrap().unwrap();
        assert_eq!(rec.job_manifest, None);
        assert_eq!(rec.item_pk.as_deref(), Some("job-1"));
    }

    #[test]
    fn quarantine_keeps_the_reason_and_retry_requeues() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let c = j.discover(Path::new("/drop"), Path::new("p2")).unwrap();
        j.quarantined(c.id, "score.json is not valid JSON").unwrap();
        let q = j.by_id(c.id).unwrap().unwrap();
        assert_eq!(
            (q.state, q.reason.as_deref()),
            (CaseState::Quarantined, Some("score.json is not valid JSON"))
        );
        j.requeue(c.id).unwrap();
        assert_eq!(j.by_id(c.id).unwrap().unwrap().state, CaseState::Settling);
        assert!(
            j.take_wakeups().unwrap().is_empty(),
            "the agent's own requeue needs no wakeup"
        );
        j.quarantined(c.id, "again").unwrap();
        j.retry(c.id).unwrap();
        j.retry(c.id).unwrap();
        assert_eq!(j.by_id(c.id).unwrap().unwrap().state, CaseState::Settling);
        // Another connection, as the agent's would be, sees the request once.
        let agent = Journal::open(dir.path()).unwrap();
        assert_eq!(
            agent.take_wakeups().unwrap(),
            vec![(PathBuf::from("/drop"), PathBuf::from("p2"))]
        );
        assert!(agent.take_wakeups().unwrap().is_empty());
        j.forget(c.id).unwrap();
        assert!(j.by_id(c.id).unwrap().is_none());
    }

    #[test]
    fn cases_are_keyed_by_their_raw_path_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        // Latin-1 "Müller" and "Möller": not UTF-8, and equal once decoded lossily.
        let folder = Path::new(OsStr::from_bytes(b"/drop/\xe9t\xe9"));
        let mueller = Path::new(OsStr::from_bytes(b"M\xfcller"));
        let moeller = Path::new(OsStr::from_bytes(b"M\xf6ller"));
        let a = j.discover(folder, mueller).unwrap();
        let b = j.discover(folder, moeller).unwrap();
        assert_ne!(a.id, b.id, "two folders are two cases");
        assert_eq!((a.folder.as_path(), a.case.as_path()), (folder, mueller));
        assert_eq!(j.get(folder, moeller).unwrap().unwrap().id, b.id);
        j.retry(b.id).unwrap();
        assert_eq!(
            j.take_wakeups().unwrap(),
            vec![(folder.to_owned(), moeller.to_owned())]
        );
        j.set_paused(folder, true).unwrap();
        assert!(j.paused().unwrap().contains(folder));
    }

    #[test]
    fn a_journal_of_the_text_keyed_schema_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an installation of the previous version has on disk.
            let conn = Connection::open(dir.path().join("journal.sqlite3")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO cases (folder, case_path, state, title, target_kind, target_slug, item_pk,
                 delivered_hash, revision, updated) VALUES ('/drop', 'site-a/p-001', 'delivered', 'p-001',
                 'archive', 'a', 'item-1', 'm1', 1, 'then')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO paused_folders (folder, since) VALUES ('/drop', 'then')",
                [],
            )
            .unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let old = j
            .get(Path::new("/drop"), Path::new("site-a/p-001"))
            .unwrap()
            .expect("the delivered case is still known after the upgrade");
        assert_eq!(
            (old.state, old.item_pk.as_deref(), old.revision),
            (CaseState::Delivered, Some("item-1"), 1)
        );
        assert!(j.paused().unwrap().contains(Path::new("/drop")));
        assert_eq!(
            j.discover(Path::new("/drop"), Path::new("site-a/p-001"))
                .unwrap()
                .id,
            old.id,
            "no second record for the same case"
        );
        // Its title is still held against other cases.
        let other = j
            .discover(Path::new("/drop"), Path::new("site-b/p-001"))
            .unwrap();
        assert!(matches!(
            j.claim_title(other.id, TargetKind::Archive, "a", "p-001")
                .unwrap(),
            TitleClaim::TakenBy { .. }
        ));
        drop(j);
        // Opening again applies nothing twice.
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.all().unwrap().len(), 2);
    }

    #[test]
    fn a_title_is_taken_by_one_case_and_an_unanswered_create_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = j
            .discover(Path::new("/site-a"), Path::new("p-001"))
            .unwrap();
        let b = j
            .discover(Path::new("/site-b"), Path::new("p-001"))
            .unwrap();
        let claim = |id| {
            j.claim_title(id, TargetKind::Archive, "arch", "p-001")
                .unwrap()
        };
        assert_eq!(claim(a.id), TitleClaim::Fresh);
        assert_eq!(
            claim(b.id),
            TitleClaim::TakenBy {
                folder: "/site-a".into(),
                case: "p-001".into()
            }
        );
        // A's create was sent and its answer lost: its next attempt may adopt what it made.
        assert_eq!(claim(a.id), TitleClaim::EarlierCreateInDoubt);
        assert_eq!(
            j.claim_title(b.id, TargetKind::Archive, "other-archive", "p-001")
                .unwrap(),
            TitleClaim::Fresh,
            "titles are per target"
        );
        j.item_created(a.id, "item-a").unwrap();
        assert_eq!(j.by_id(a.id).unwrap().unwrap().create_sent, None);
        assert!(
            matches!(claim(b.id), TitleClaim::TakenBy { .. }),
            "A has the item"
        );

        // A refused create frees the title.
        let c = j
            .discover(Path::new("/site-c"), Path::new("p-002"))
            .unwrap();
        let d = j
            .discover(Path::new("/site-d"), Path::new("p-002"))
            .unwrap();
        let claim2 = |id| {
            j.claim_title(id, TargetKind::Archive, "arch", "p-002")
                .unwrap()
        };
        assert_eq!(claim2(c.id), TitleClaim::Fresh);
        j.create_refused(c.id).unwrap();
        assert_eq!(claim2(d.id), TitleClaim::Fresh);
    }

    #[test]
    fn alerts_wait_in_order_per_webhook_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.queue_alert("https://a/", "{\"n\":1}").unwrap();
        j.queue_alert("https://b/", "{\"n\":2}").unwrap();
        j.queue_alert("https://a/", "{\"n\":3}").unwrap();
        let first = j.next_alert("https://a/").unwrap().unwrap();
        assert_eq!((first.payload.as_str(), first.attempts), ("{\"n\":1}", 0));
        j.alert_failed(first.id).unwrap();
        // After a restart the same alert is next, its failure remembered.
        let j = Journal::open(dir.path()).unwrap();
        let again = j.next_alert("https://a/").unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (first.id, 1));
        j.alert_done(again.id).unwrap();
        assert_eq!(
            j.next_alert("https://a/").unwrap().unwrap().payload,
            "{\"n\":3}"
        );
        assert_eq!(j.drop_alerts_except(&["https://a/".into()]).unwrap(), 1);
        assert!(j.next_alert("https://b/").unwrap().is_none());
    }

    #[test]
    fn a_case_keeps_its_de_identification_secret_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = j.discover(Path::new("/drop"), Path::new("p1")).unwrap();
        let b = j.discover(Path::new("/drop"), Path::new("p2")).unwrap();
        let secret = j.deid_secret(a.id).unwrap();
        assert_eq!(secret.len(), 64);
        assert_eq!(j.deid_secret(a.id).unwrap(), secret);
        assert_ne!(j.deid_secret(b.id).unwrap(), secret);
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.deid_secret(a.id).unwrap(), secret);
    }

    #[test]
    fn the_database_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mode: String = j
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// The agent, `status` and `upload` opening a journal that does not exist yet, all at once.
    #[test]
    fn many_opening_a_new_journal_at_once_all_open_it() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(8);
            let failures: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Journal::open(dir.path()).err().map(|e| e.to_string())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| h.join().unwrap())
                    .collect()
            });
            assert!(failures.is_empty(), "round {round}: {failures:?}");
        }
    }
}
