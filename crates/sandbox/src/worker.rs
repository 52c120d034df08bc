//! The background worker: what the platform does after a PATCH has committed (gc-protocol.md §4.6, §6.1).
//! Each job waits the configured import delay, then copies / imports the uploaded bytes without holding
//! the world lock, and finally attaches a *new* socket value and consumes the uploads — or records the
//! failure where the platform shows it (the session's `error_message`, or a notification).

use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use super::app::App;
use super::store::{
    Civ, CivContent, ContainerKind, Item, Notification, Session, SessionStatus, SessionTarget,
    StoredFile, UploadStatus, UserId, World, base_name, concat_files, store_image_files,
};
use super::values::{Entry, Source, segmentation_error};
use gc_content::imaging::{self, ImportError, ImportedImage};
use gc_content::schema;

/// Work queued by a request, run after the request has answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Copy a completed upload into a File socket (JSON kinds are parsed and validated first).
    File {
        item: Uuid,
        socket: i64,
        upload: Uuid,
        user: UserId,
    },
    /// Import an upload session's files as one image and attach it to the session's target.
    Session { session: Uuid },
    /// Import uploads as a DICOM image set.
    Dicom {
        item: Uuid,
        socket: i64,
        uploads: Vec<Uuid>,
        image_name: String,
        user: UserId,
    },
    /// Import an algorithm job's uploaded inputs (jobs whose target is the job), then execute it.
    Algorithm { job: Uuid, inputs: Vec<Job> },
}

/// Bind one validated entry to `item` (an item, or an algorithm job's inputs): a JSON value or an
/// existing image is bound at once and its socket value returned; uploads become the import that binds
/// them later, pushed to `imports`.
pub fn bind_entry(
    w: &mut World,
    item: Uuid,
    user: UserId,
    entry: Entry,
    imports: &mut Vec<Job>,
) -> Option<i64> {
    match entry.source {
        Source::Value(v) => return Some(w.civ_for_value(entry.socket, v)),
        Source::Image(image) => return Some(w.civ_for_image(entry.socket, image)),
        Source::UserUpload(upload) => imports.push(Job::File {
            item,
            socket: entry.socket,
            upload,
            user,
        }),
        Source::UserUploads(uploads) => {
            let session = Uuid::new_v4();
            let seq = w.next_seq();
            w.sessions.insert(
                session,
                Session {
                    pk: session,
                    creator: user,
                    status: SessionStatus::ReQueued,
                    error_message: String::new(),
                    uploads,
                    image_set: Vec::new(),
                    target: SessionTarget::Item {
                        item,
                        socket: entry.socket,
                    },
                    seq,
                },
            );
            imports.push(Job::Session { session });
        }
        Source::Session(session) => {
            if let Some(s) = w.sessions.get_mut(&session) {
                s.status = SessionStatus::ReQueued;
                s.target = SessionTarget::Item {
                    item,
                    socket: entry.socket,
                };
                imports.push(Job::Session { session });
            }
        }
        Source::DicomImageSet {
            uploads,
            image_name,
        } => imports.push(Job::Dicom {
            item,
            socket: entry.socket,
            uploads,
            image_name,
            user,
        }),
    }
    None
}

/// Run `job` after the import delay, on the blocking pool.
pub fn spawn(app: &Arc<App>, job: Job) {
    spawn_with(app, job, run);
}

/// Like [`spawn`], but the import fails whatever its files (an `import-fails` fault), as the platform's
/// do when its storage or image store fails after the request was answered. Algorithm jobs run as usual.
pub fn spawn_failing(app: &Arc<App>, job: Job) {
    spawn_with(app, job, fail);
}

fn spawn_with(app: &Arc<App>, job: Job, work: fn(&App, Job)) {
    if let Job::Algorithm { job, inputs } = job {
        let handle = tokio::spawn(super::executor::execute(app.clone(), job, inputs));
        app.track(handle.abort_handle());
        return;
    }
    let delay = app.config.import_delay;
    let task_app = app.clone();
    let handle = tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let blocking_app = task_app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || work(&blocking_app, job)).await {
            tracing::warn!(error = %e, "a background job panicked");
        }
    });
    app.track(handle.abort_handle());
}

fn lock(app: &App) -> std::sync::MutexGuard<'_, World> {
    app.world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn run(app: &App, job: Job) {
    match job {
        Job::File {
            item,
            socket,
            upload,
            user,
        } => file_job(app, item, socket, upload, user),
        Job::Session { session } => session_job(app, session),
        Job::Dicom {
            item,
            socket,
            uploads,
            image_name,
            user,
        } => dicom_job(app, item, socket, uploads, image_name, user),
        // Runs as its own task (see `spawn`): it waits for the executor's duration.
        Job::Algorithm { job, .. } => {
            tracing::warn!(%job, "an algorithm job reached the blocking worker");
        }
    }
}

/// Fail a job's import as the platform records a failure of its own: the reason is not the files, so
/// the message is the one its importers give for an exception ("An unexpected error occurred").
fn fail(app: &App, job: Job) {
    let unexpected = imaging::UNEXPECTED_ERROR_MESSAGE;
    match job {
        Job::File { upload, user, .. } => notify(
            app,
            user,
            format!("The file of upload {upload} could not be stored: {unexpected}"),
        ),
        Job::Session { session } => fail_session(app, session, unexpected.into()),
        Job::Dicom { uploads, user, .. } => {
            let message = format!("DICOM image set import failed: {unexpected}");
            tracing::info!(%message, "import failed");
            // One change of the world: whoever sees the uploads gone sees the notification too. DICOM
            // uploads are deleted after de-identification, whatever the outcome.
            let mut w = lock(app);
            for u in &uploads {
                if w.uploads.get(u).is_some_and(|x| x.owner == user) {
                    w.delete_upload(*u);
                }
            }
            w.notifications.push(Notification { user, message });
        }
        Job::Algorithm { .. } => run(app, job),
    }
}

fn notify(app: &App, user: UserId, message: String) {
    tracing::info!(%message, "import failed");
    lock(app).notifications.push(Notification { user, message });
}

fn file_job(app: &App, item: Uuid, socket: i64, upload: Uuid, user: UserId) {
    let prepared = FileUpload::take(&mut lock(app), upload, user, socket);
    let FileUpload {
        sources,
        filename,
        json_kind,
        civ,
    } = match prepared {
        Ok(p) => p,
        Err(msg) => return notify(app, user, msg),
    };
    let dest = app
        .data_dir
        .join("files")
        .join(civ.to_string())
        .join(base_name(std::path::Path::new(&filename)));
    let (size, sha256) = match concat_files(&sources, &dest) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dest.parent().unwrap_or(&dest));
            return notify(
                app,
                user,
                format!("The file {filename} could not be stored: {e}"),
            );
        }
    };
    if let Some(kind) = json_kind
        && let Err(msg) = check_json_file(&dest, &filename, kind)
    {
        let _ = std::fs::remove_dir_all(dest.parent().unwrap_or(&dest));
        return notify(
            app,
            user,
            format!("File for socket validation failed: {msg}"),
        );
    }
    let mut w = lock(app);
    if !w.takes_values(item) || !w.uploads.contains_key(&upload) {
        drop(w);
        let _ = std::fs::remove_dir_all(dest.parent().unwrap_or(&dest));
        return;
    }
    w.civs.insert(
        civ,
        Civ {
            pk: civ,
            socket,
            content: CivContent::File(StoredFile {
                name: filename,
                path: dest,
                size,
                sha256,
            }),
        },
    );
    w.attach(item, civ);
    w.delete_upload(upload);
}

/// The completed upload a file socket value is copied from, and the socket value's pk to be.
struct FileUpload {
    sources: Vec<PathBuf>,
    filename: String,
    /// The socket's kind label when its files hold JSON, which is validated like a value.
    json_kind: Option<&'static str>,
    civ: i64,
}

impl FileUpload {
    /// The user's completed upload; `Err` is the notification telling why there is none.
    fn take(w: &mut World, upload: Uuid, user: UserId, socket: i64) -> Result<FileUpload, String> {
        let Some(u) = w.uploads.get(&upload).filter(|u| u.owner == user) else {
            return Err(format!(
                "The upload {upload} for a file socket no longer exists."
            ));
        };
        if u.status != UploadStatus::Completed {
            return Err(format!(
                "The upload {} ({}) is not completed, so it cannot be used.",
                u.pk, u.filename
            ));
        }
        let sources: Vec<PathBuf> = u.object.iter().map(|p| p.path.clone()).collect();
        let filename = u.filename.clone();
        let json_kind = w
            .socket(socket)
            .filter(|s| s.is_json_file())
            .map(|s| s.kind.label);
        Ok(FileUpload {
            sources,
            filename,
            json_kind,
            civ: w.next_civ_pk(),
        })
    }
}

/// A stored JSON file must parse and be valid for its socket's kind.
fn check_json_file(path: &std::path::Path, filename: &str, kind: &str) -> Result<(), String> {
    let parsed = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            serde_json::from_reader::<_, serde_json::Value>(std::io::BufReader::new(f))
                .map_err(|e| e.to_string())
        });
    match parsed {
        Ok(value) => schema::validate_value(kind, &value),
        Err(e) => Err(format!("The file {filename} is not valid JSON: {e}")),
    }
}

/// Concatenate each upload into `dir/<filename>`; `Err` is the session error message.
fn assemble(
    app: &App,
    uploads: &[(String, Vec<PathBuf>)],
    dir: &std::path::Path,
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut files = Vec::new();
    for (name, parts) in uploads {
        let path = dir.join(base_name(std::path::Path::new(name)));
        if let Err(e) = concat_files(parts, &path) {
            tracing::warn!(error = %e, dir = %app.data_dir.display(), "cannot assemble an upload");
            return Err("An unexpected error occurred".into());
        }
        files.push((name.clone(), path));
    }
    Ok(files)
}

/// The uploads of an import, each as (filename, part paths): all must exist, belong to `user` and be
/// completed; filenames must be unique.
fn collect_uploads(
    w: &World,
    user: UserId,
    uploads: &[Uuid],
) -> Result<Vec<(String, Vec<PathBuf>)>, String> {
    let mut out: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for pk in uploads {
        let Some(u) = w
            .uploads
            .get(pk)
            .filter(|u| u.owner == user && u.status == UploadStatus::Completed)
        else {
            return Err("An unexpected error occurred".into());
        };
        if out.iter().any(|(n, _)| *n == u.filename) {
            return Err(
                "Duplicate files uploaded, please try again with a unique set of files".into(),
            );
        }
        out.push((
            u.filename.clone(),
            u.object.iter().map(|p| p.path.clone()).collect(),
        ));
    }
    Ok(out)
}

fn wrap_socket_error(w: &World, socket: i64, msg: &str) -> String {
    let title = w
        .socket(socket)
        .map(|s| s.title.clone())
        .unwrap_or_default();
    format!("Image validation for socket {title} failed with error: {msg}.")
}

fn session_job(app: &App, session: Uuid) {
    let Some(prepared) = QueuedSession::take(&lock(app), session) else {
        return;
    };
    let queued = match prepared {
        Ok(q) => q,
        Err(msg) => return fail_session(app, session, msg),
    };
    let (image_pk, meta, stored) = match import_session(app, session, &queued) {
        Ok(v) => v,
        Err(msg) => return fail_session(app, session, msg),
    };
    let mut w = lock(app);
    let socket = queued.socket;
    let socket_error = socket.and_then(|s| {
        w.socket(s)
            .and_then(|sock| segmentation_error(sock, &meta))
            .map(|m| wrap_socket_error(&w, s, &m))
    });
    let dicom_for_panimg = socket
        .and_then(|s| w.socket(s))
        .is_some_and(|s| s.is_dicom_set());
    w.images.insert(
        image_pk,
        super::store::Image {
            pk: image_pk,
            name: meta.name.clone(),
            meta,
            files: stored,
            origin: Some(session),
            creator: Some(queued.creator),
            dicom_image_set_id: None,
        },
    );
    // The import produced an image: the uploads are consumed and the session succeeded …
    let upload_pks: Vec<Uuid> = w
        .sessions
        .get(&session)
        .map(|s| s.uploads.clone())
        .unwrap_or_default();
    for u in upload_pks {
        w.delete_upload(u);
    }
    if let Some(s) = w.sessions.get_mut(&session) {
        s.status = SessionStatus::Succeeded;
        s.image_set = vec![image_pk];
    }
    // … and then the socket may still reject it.
    let rejection = if dicom_for_panimg {
        socket.map(|s| wrap_socket_error(&w, s, "Image must be DICOM"))
    } else {
        socket_error
    };
    if let Some(msg) = rejection {
        if let Some(s) = w.sessions.get_mut(&session) {
            s.status = SessionStatus::Failed;
            s.error_message = msg;
        }
        return;
    }
    bind_session_image(&mut w, queued.target, image_pk);
}

/// A session waiting for its import, with its uploads checked.
struct QueuedSession {
    uploads: Vec<(String, Vec<PathBuf>)>,
    creator: UserId,
    target: SessionTarget,
    /// The target's socket, if any.
    socket: Option<i64>,
}

impl QueuedSession {
    /// `None` when the session is not waiting for its import; `Err` is the session's error message.
    fn take(w: &World, session: Uuid) -> Option<Result<QueuedSession, String>> {
        let s = w
            .sessions
            .get(&session)
            .filter(|s| s.status == SessionStatus::ReQueued)?;
        let socket = match s.target {
            SessionTarget::Item { socket, .. } | SessionTarget::Archive { socket, .. } => {
                Some(socket)
            }
            SessionTarget::None => None,
        };
        Some(
            collect_uploads(w, s.creator, &s.uploads).map(|uploads| QueuedSession {
                uploads,
                creator: s.creator,
                target: s.target,
                socket,
            }),
        )
    }
}

/// Assemble the session's uploads in a work folder, unpack ZIP uploads (as on the platform), import
/// the image and store its files; the work folders are removed whatever the outcome.
fn import_session(
    app: &App,
    session: Uuid,
    queued: &QueuedSession,
) -> Result<(Uuid, ImportedImage, Vec<super::store::ImageFile>), String> {
    let work = app.data_dir.join("work").join(session.to_string());
    let unpacked = app
        .data_dir
        .join("work")
        .join(format!("{session}.unpacked"));
    let result = assemble(app, &queued.uploads, &work).and_then(|uploaded| {
        let (imported, files) =
            imaging::import_uploads(&uploaded, &unpacked).map_err(|e| match e {
                ImportError::Session(m) => m,
                ImportError::Socket(m) => match queued.socket {
                    Some(s) => wrap_socket_error(&lock(app), s, &m),
                    None => m,
                },
            })?;
        let pk = Uuid::new_v4();
        let stored = store_image_files(&app.data_dir, pk, &imported, &files).map_err(|e| {
            tracing::warn!(error = %e, "cannot store an imported image");
            "An unexpected error occurred".to_string()
        })?;
        Ok((pk, imported, stored))
    });
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&unpacked);
    result
}

/// Give an accepted session image to its target: a value of an item, or a new archive item.
fn bind_session_image(w: &mut World, target: SessionTarget, image_pk: Uuid) {
    match target {
        SessionTarget::Item { item, socket } => {
            let civ = w.civ_for_image(socket, image_pk);
            w.attach(item, civ);
        }
        SessionTarget::Archive { archive, socket } => {
            let civ = w.civ_for_image(socket, image_pk);
            let pk = Uuid::new_v4();
            let seq = w.next_seq();
            let mut values = std::collections::BTreeMap::new();
            values.insert(socket, civ);
            w.items.insert(
                pk,
                Item {
                    pk,
                    kind: ContainerKind::Archive,
                    container: archive,
                    title: String::new(),
                    order: 0,
                    has_answers: false,
                    values,
                    seq,
                    last_set: Some(time::OffsetDateTime::now_utc()),
                },
            );
        }
        SessionTarget::None => {}
    }
}

fn fail_session(app: &App, session: Uuid, msg: String) {
    let mut w = lock(app);
    if let Some(s) = w.sessions.get_mut(&session) {
        s.status = SessionStatus::Failed;
        s.error_message = msg;
    }
}

fn dicom_job(
    app: &App,
    item: Uuid,
    socket: i64,
    uploads: Vec<Uuid>,
    image_name: String,
    user: UserId,
) {
    let collected = collect_uploads(&lock(app), user, &uploads);
    let work = app
        .data_dir
        .join("work")
        .join(format!("dicom-{}", Uuid::new_v4().simple()));
    let result: Result<(Uuid, ImportedImage, Vec<super::store::ImageFile>), String> = collected
        .and_then(|list| {
            let files = assemble(app, &list, &work)?;
            let imported = imaging::import_dicom_image_set(&files).map_err(|e| match e {
                ImportError::Session(m) => m,
                ImportError::Socket(m) => wrap_socket_error(&lock(app), socket, &m),
            })?;
            let pk = Uuid::new_v4();
            let stored = store_image_files(&app.data_dir, pk, &imported, &files)
                .map_err(|e| e.to_string())?;
            Ok((pk, imported, stored))
        });
    let _ = std::fs::remove_dir_all(&work);
    let mut w = lock(app);
    // DICOM uploads are deleted after de-identification, whatever the outcome.
    for u in &uploads {
        if w.uploads.get(u).is_some_and(|x| x.owner == user) {
            w.delete_upload(*u);
        }
    }
    match result {
        Ok((pk, mut meta, stored)) => {
            meta.name = image_name.clone();
            let set_id = Uuid::new_v4().simple().to_string();
            w.images.insert(
                pk,
                super::store::Image {
                    pk,
                    name: image_name,
                    meta,
                    files: stored,
                    origin: None,
                    creator: Some(user),
                    dicom_image_set_id: Some(set_id),
                },
            );
            let civ = w.civ_for_image(socket, pk);
            w.attach(item, civ);
        }
        Err(msg) => {
            tracing::info!(%msg, "DICOM image set import failed");
            w.notifications.push(Notification {
                user,
                message: format!("DICOM image set import failed: {msg}"),
            });
        }
    }
}
