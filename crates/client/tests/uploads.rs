//! The client's S3 multipart uploads against the sandbox over loopback: parts, empty files, resume after a
//! crash, fresh URLs after refused parts, dead uploads, quotas, concurrency limits, and the token never
//! reaching the storage endpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gc_client::models::{TargetKind, UserUpload, ValueEntry, ValueSource};
use gc_client::{
    Awaiting, Client, Expectation, GcError, LocalFile, NoObserver, ResumeFrom, UploadObserver,
};
use gc_sandbox::FaultAction;
use gc_testkit::client::*;

/// A scratch folder holding one file `name` of `len` pseudo-random bytes (see [`data_file`]), and the
/// file's path.
fn scratch_file(name: &str, len: usize, seed: u8) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = data_file(dir.path(), name, len, seed);
    (dir, path)
}

/// `path` uploaded, which must fail; the error.
async fn upload_fails(c: &Client, path: &Path, observer: &dyn UploadObserver) -> GcError {
    c.upload_file(&local_file(path), None, observer)
        .await
        .unwrap_err()
}

/// A client that sends one part at a time, so that its observer hears the parts in order.
fn one_part_at_a_time(sb: &gc_sandbox::Sandbox) -> Client {
    client_with(sb, |c| c.parallel_parts = 1)
}

/// Where to resume `upload` from.
fn resume_from(upload: &UserUpload) -> ResumeFrom {
    ResumeFrom {
        upload_pk: upload.pk.clone(),
        s3_upload_id: upload.s3_upload_id.clone(),
    }
}

/// `file` uploaded as the continuation of `from`, which must succeed; the upload and what its observer
/// heard.
async fn resume(c: &Client, file: &LocalFile, from: &UserUpload) -> (UserUpload, Recorder) {
    let rec = Recorder::default();
    let done = c
        .upload_file(file, Some(&resume_from(from)), &rec)
        .await
        .unwrap();
    (done, rec)
}

/// The sandbox answers 500 to `complete-multipart-upload`, the first `times` times (or always).
fn complete_fails(sb: &gc_sandbox::Sandbox, times: Option<u64>) {
    let path = "/api/v1/uploads/*/complete-multipart-upload/";
    sb.set_faults(vec![rule("PATCH", path, status(500), times)])
        .unwrap();
}

/// Attach an upload to the `report` file socket of a new archive item and return the stored file's
/// (size, sha256) as the sandbox reports it, after the client saw the value land.
async fn attach_as_report(
    sb: &gc_sandbox::Sandbox,
    c: &Client,
    upload: &UserUpload,
    title: &str,
) -> (u64, String) {
    let target = c
        .resolve_target(TargetKind::Archive, "demo-archive")
        .await
        .unwrap();
    let item = c.create_item(&target, title).await.unwrap();
    let entries = [ValueEntry {
        socket: "report".into(),
        source: ValueSource::UserUpload(upload.api_url.clone()),
    }];
    c.patch_values(&target, &item.pk, &entries).await.unwrap();
    let expect = [Expectation {
        socket: "report".into(),
        previous_pk: None,
        awaiting: Awaiting::File {
            upload: upload.api_url.clone(),
        },
    }];
    let done = c
        .await_values(&target, &item.pk, &expect, &timing())
        .await
        .unwrap();
    assert!(done.value_for("report").unwrap().file.is_some());
    let state = sb.state();
    let items = state["archives"][0]["items"].as_array().unwrap();
    let stored = items.iter().find(|i| i["pk"] == item.pk.as_str()).unwrap();
    let file = &stored["values"][0]["file"];
    (
        file["size"].as_u64().unwrap(),
        file["sha256"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_multipart_file_arrives_intact() {
    let (sb, c) = sandbox_and_client().await;
    let dir = tempfile::tempdir().unwrap();
    let len = 4 * PART as usize + 1000;
    let path = data_file(dir.path(), "scan.bin", len, 7);
    let rec = Recorder::default();

    let upload = c.upload_file(&local_file(&path), None, &rec).await.unwrap();

    assert_eq!(upload.status, "Completed");
    assert_eq!(upload.filename, "scan.bin");
    assert_eq!(count(&sb, &format!("{S3_PUT} 200")), 5, "one PUT per part");
    assert_eq!(count(&sb, &format!("{COMPLETE} 200")), 1);
    let created = rec.created.lock().unwrap().clone();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].pk, upload.pk);
    let mut parts = rec.parts.lock().unwrap().clone();
    parts.sort_by_key(|p| p.1);
    assert_eq!(
        parts.iter().map(|p| p.1).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(
        parts
            .iter()
            .all(|p| p.0 == upload.pk && p.2.starts_with('"') && p.2.ends_with('"')),
        "{parts:?}"
    );
    assert_eq!(
        *rec.bytes.lock().unwrap(),
        len as u64,
        "progress adds up to the file size"
    );
    assert_eq!(upload_state(&sb, &upload.pk).unwrap()["size"], len as u64);

    let (size, sha) = attach_as_report(&sb, &c, &upload, "multipart").await;
    assert_eq!((size, sha), (len as u64, sha256_hex(&path)));

    // And back again through the file URL.
    let target = c
        .resolve_target(TargetKind::Archive, "demo-archive")
        .await
        .unwrap();
    let item = c
        .find_item_by_title(&target, "multipart")
        .await
        .unwrap()
        .unwrap();
    let item = c.get_item(&target, &item.pk).await.unwrap();
    let url = item.value_for("report").unwrap().file.clone().unwrap();
    let back = dir.path().join("back.bin");
    assert_eq!(c.download(&url, &back).await.unwrap(), len as u64);
    assert_eq!(sha256_hex(&back), sha256_hex(&path));

    // A connection cut in the middle of the body: the download starts again and the file is whole, with
    // nothing of the broken attempt left beside it.
    sb.set_faults(vec!["GET /media/* drop after times=1".parse().unwrap()])
        .unwrap();
    let again = dir.path().join("again.bin");
    assert_eq!(c.download(&url, &again).await.unwrap(), len as u64);
    assert_eq!(sha256_hex(&again), sha256_hex(&path));
    let media = "GET /media/components/componentinterfacevalue/{pk}/{name}";
    assert_eq!(
        count(&sb, &format!("{media} dropped")),
        1,
        "the cut happened"
    );
    assert_eq!(
        count(&sb, &format!("{media} 200")),
        2,
        "one plain, one retried"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    sb.stop().await;
}

#[tokio::test]
async fn an_empty_file_is_one_empty_part() {
    let (sb, c) = sandbox_and_client().await;
    let (_dir, path) = scratch_file("empty.pdf", 0, 0);
    let rec = Recorder::default();
    let upload = c.upload_file(&local_file(&path), None, &rec).await.unwrap();
    assert_eq!(upload.status, "Completed");
    assert_eq!(count(&sb, &format!("{S3_PUT} 200")), 1);
    assert_eq!(rec.part_numbers(), [1]);
    let (size, sha) = attach_as_report(&sb, &c, &upload, "empty").await;
    assert_eq!(size, 0);
    assert_eq!(sha, sha256_hex(&path));
    sb.stop().await;
}

/// Signals after a given number of finished parts, like a process that dies right then.
struct CrashAfter {
    parts: AtomicUsize,
    after: usize,
    crash: tokio::sync::Notify,
    created: Mutex<Option<UserUpload>>,
}

impl CrashAfter {
    fn new(after: usize) -> CrashAfter {
        CrashAfter {
            parts: AtomicUsize::new(0),
            after,
            crash: tokio::sync::Notify::new(),
            created: Mutex::new(None),
        }
    }
}

/// Upload `file` until `after` parts are done, then stop, like a process that dies right then; the
/// upload as its creation answered.
async fn cut_short(c: &Client, file: &LocalFile, after: usize) -> UserUpload {
    let crash = CrashAfter::new(after);
    tokio::select! {
        biased;
        _ = crash.crash.notified() => {}
        r = c.upload_file(file, None, &crash) => panic!("the upload should have been cut short: {r:?}"),
    }
    crash.created.lock().unwrap().clone().unwrap()
}

impl UploadObserver for CrashAfter {
    fn created(&self, upload: &UserUpload) {
        *self.created.lock().unwrap() = Some(upload.clone());
    }
    fn part_done(&self, _: &str, _: u32, _: &str) {
        if self.parts.fetch_add(1, Ordering::SeqCst) + 1 == self.after {
            self.crash.notify_one();
        }
    }
}

#[tokio::test]
async fn an_interrupted_upload_resumes_with_only_the_missing_parts() {
    let sb = sandbox().await;
    let c = one_part_at_a_time(&sb);
    let len = 4 * PART as usize + 123;
    let (_dir, path) = scratch_file("big.bin", len, 3);
    let file = local_file(&path);

    let first = cut_short(&c, &file, 2).await;
    assert_eq!(count(&sb, &format!("{S3_PUT} 200")), 2);
    assert_eq!(
        upload_state(&sb, &first.pk).unwrap()["status"],
        "Initialized"
    );

    let (done, rec) = resume(&c, &file, &first).await;

    assert_eq!(done.pk, first.pk, "the same upload was continued");
    assert!(
        rec.created.lock().unwrap().is_empty(),
        "no new upload was created"
    );
    assert_eq!(count(&sb, &format!("{LIST_PARTS} 200")), 1);
    assert_eq!(
        count(&sb, &format!("{S3_PUT} 200")),
        5,
        "parts 3, 4 and 5 only were sent again"
    );
    assert_eq!(rec.part_numbers(), [3, 4, 5]);
    let (size, sha) = attach_as_report(&sb, &c, &done, "resumed").await;
    assert_eq!((size, sha), (len as u64, sha256_hex(&path)));

    // The file socket consumed that upload, so resuming it now starts a new one.
    let (again, _) = resume(&c, &file, &first).await;
    assert_ne!(again.pk, first.pk);
    sb.stop().await;
}

#[tokio::test]
async fn a_part_rewritten_since_the_interruption_is_sent_again() {
    let sb = sandbox().await;
    let c = one_part_at_a_time(&sb);
    let (_dir, path) = scratch_file("edited.bin", 3 * PART as usize, 6);
    let file = local_file(&path);
    let first = cut_short(&c, &file, 2).await;

    // Same size, different bytes in part 1.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let (done, rec) = resume(&c, &file, &first).await;
    assert_eq!(done.pk, first.pk);
    assert_eq!(
        rec.part_numbers(),
        [1, 3],
        "part 1 changed, part 2 did not, part 3 was missing"
    );
    let (size, sha) = attach_as_report(&sb, &c, &done, "edited").await;
    assert_eq!((size, sha), (bytes.len() as u64, sha256_hex(&path)));
    sb.stop().await;
}

#[tokio::test]
async fn resuming_a_completed_upload_returns_it_and_a_vanished_one_starts_over() {
    let (sb, c) = sandbox_and_client().await;
    let (_dir, path) = scratch_file("a.bin", 2 * PART as usize, 1);
    let file = local_file(&path);
    let done = upload(&c, &path).await;
    let puts = count(&sb, &format!("{S3_PUT} 200"));

    let (again, rec) = resume(&c, &file, &done).await;
    assert_eq!(again.pk, done.pk);
    assert_eq!(
        count(&sb, &format!("{S3_PUT} 200")),
        puts,
        "nothing sent again"
    );

    let gone = ResumeFrom {
        upload_pk: uuid::Uuid::new_v4().to_string(),
        s3_upload_id: "x".into(),
    };
    let fresh = c.upload_file(&file, Some(&gone), &rec).await.unwrap();
    assert_ne!(fresh.pk, done.pk);
    assert_eq!(rec.created.lock().unwrap().len(), 1);
    sb.stop().await;
}

#[tokio::test]
async fn the_token_never_reaches_the_storage_endpoint() {
    // The sandbox's S3 endpoint answers 400 InvalidArgument to any request carrying Authorization, as S3
    // does; a client that leaked the token would fail here or be counted.
    let (sb, c) = sandbox_and_client().await;
    let (_dir, path) = scratch_file("t.bin", 3 * PART as usize, 9);
    upload(&c, &path).await;
    assert_eq!(count(&sb, &format!("{S3_PUT} 200")), 3);
    assert_eq!(
        count_any(&sb, S3_PUT),
        3,
        "no S3 request was refused: {}",
        sb.state()["requests"]
    );
    sb.stop().await;
}

#[tokio::test]
async fn refused_and_failed_parts_are_retried_with_fresh_urls() {
    let (sb, c) = sandbox_and_client().await;
    let (_dir, path) = scratch_file("r.bin", 3 * PART as usize, 5);
    // An expired or refused URL (403), S3 slowing down (503), a connection cut mid-request.
    let faults = [
        (status(403), "403"),
        (status(503), "503"),
        (FaultAction::Drop, "dropped"),
    ];
    for (round, (action, label)) in faults.into_iter().enumerate() {
        let presigned_before = count(&sb, &format!("{PRESIGN} 200"));
        sb.set_faults(vec![rule("PUT", "/s3/*", action, Some(1))])
            .unwrap();
        assert_eq!(upload(&c, &path).await.status, "Completed");
        assert_eq!(count(&sb, &format!("{S3_PUT} {label}")), 1, "{label}");
        assert_eq!(
            count(&sb, &format!("{S3_PUT} 200")),
            3 * (round as u64 + 1),
            "{label}"
        );
        // All three URLs in one batch, then one more for the retried part.
        assert_eq!(
            count(&sb, &format!("{PRESIGN} 200")) - presigned_before,
            2,
            "{label}"
        );
    }
    sb.stop().await;
}

#[tokio::test]
async fn a_dead_upload_is_aborted_and_started_again_once() {
    let (sb, c) = sandbox_and_client().await;
    complete_fails(&sb, Some(1));
    let (_dir, path) = scratch_file("d.bin", 2 * PART as usize + 5, 2);
    let rec = Recorder::default();
    let upload = c.upload_file(&local_file(&path), None, &rec).await.unwrap();
    let created = rec.created.lock().unwrap().clone();
    assert_eq!(created.len(), 2, "a second upload was created");
    assert_eq!(upload.pk, created[1].pk);
    assert_eq!(
        upload_state(&sb, &created[0].pk).unwrap()["status"],
        "Aborted"
    );
    assert_eq!(
        upload_state(&sb, &created[1].pk).unwrap()["status"],
        "Completed"
    );
    assert_eq!(
        count(&sb, &format!("{COMPLETE} 500")),
        1,
        "a 500 on complete is not repeated"
    );
    sb.stop().await;
}

#[tokio::test]
async fn an_upload_that_dies_twice_is_aborted_and_reported() {
    let (sb, c) = sandbox_and_client().await;
    complete_fails(&sb, None);
    let (_dir, path) = scratch_file("dd.bin", 10, 2);
    let rec = Recorder::default();
    let err = upload_fails(&c, &path, &rec).await;
    assert!(matches!(err, GcError::UploadDead { .. }), "{err}");
    assert!(!err.to_string().contains("<html"), "{err}");
    for u in rec.created.lock().unwrap().iter() {
        assert_eq!(upload_state(&sb, &u.pk).unwrap()["status"], "Aborted");
    }
    sb.stop().await;
}

/// Appends to the file after the first part, like a writer that is not finished.
struct Grow(std::path::PathBuf);
impl UploadObserver for Grow {
    fn part_done(&self, _: &str, part: u32, _: &str) {
        if part == 1 {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.0)
                .unwrap();
            f.write_all(b"more").unwrap();
        }
    }
}

#[tokio::test]
async fn a_file_that_changes_size_during_the_upload_is_an_error() {
    let sb = sandbox().await;
    let c = one_part_at_a_time(&sb);
    let (_dir, path) = scratch_file("growing.bin", 3 * PART as usize, 4);
    let err = upload_fails(&c, &path, &Grow(path.clone())).await;
    assert!(matches!(err, GcError::Io { .. }), "{err}");
    assert!(err.to_string().contains("changed size"), "{err}");
    let uploads = sb.state()["uploads"].as_array().unwrap().clone();
    assert_eq!(uploads.len(), 1);
    assert_eq!(
        uploads[0]["status"], "Aborted",
        "the useless upload was aborted"
    );
    sb.stop().await;
}

#[tokio::test]
async fn too_many_uploads_is_a_wait_later_error() {
    let (sb, c) = sandbox_and_client().await;
    let too_many = FaultAction::TooManyUploads { threshold: 1 };
    sb.set_faults(vec![rule("POST", "/api/v1/uploads/", too_many, None)])
        .unwrap();
    let (_dir, path) = scratch_file("q.bin", 10, 1);
    upload(&c, &path).await;
    let err = upload_fails(&c, &path, &NoObserver).await;
    assert_eq!(
        count(&sb, "POST /api/v1/uploads/ 400"),
        1,
        "not retried by the client itself"
    );
    assert!(matches!(err, GcError::TooManyUploads(_)), "{err}");
    assert!(err.is_retryable_later());
    assert!(
        err.to_string()
            .contains("You have created too many uploads"),
        "{err}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn the_byte_quota_is_a_wait_later_error() {
    let sb = sandbox_with(|o| o.upload_limit_verified = 3 * PART).await;
    let c = client(&sb);
    let dir = tempfile::tempdir().unwrap();
    upload(
        &c,
        &data_file(dir.path(), "first.bin", 3 * PART as usize, 1),
    )
    .await;
    let second = data_file(dir.path(), "second.bin", PART as usize, 2);
    let rec = Recorder::default();
    let err = upload_fails(&c, &second, &rec).await;
    assert!(matches!(err, GcError::UploadLimit(_)), "{err}");
    assert!(err.is_retryable_later());
    let pk = rec.created.lock().unwrap()[0].pk.clone();
    assert_eq!(upload_state(&sb, &pk).unwrap()["status"], "Aborted");
    sb.stop().await;
}

#[tokio::test]
async fn files_in_flight_are_bounded_client_wide() {
    let sb = sandbox().await;
    let c = client_with(&sb, |cfg| {
        cfg.parallel_files = 2;
        cfg.parallel_parts = 3;
    });
    let dir = tempfile::tempdir().unwrap();

    /// Counts uploads between `created` and the end of `upload_file`.
    struct Active(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl UploadObserver for Active {
        fn created(&self, _: &UserUpload) {
            let now = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            self.1.fetch_max(now, Ordering::SeqCst);
        }
    }
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let files: Vec<LocalFile> = (0..6)
        .map(|i| {
            local_file(&data_file(
                dir.path(),
                &format!("f{i}.bin"),
                2 * PART as usize + 1 + i,
                i as u8,
            ))
        })
        .collect();
    let runs = files.iter().map(|f| {
        let obs = Active(active.clone(), peak.clone());
        let c = c.clone();
        let active = active.clone();
        async move {
            let r = c.upload_file(f, None, &obs).await;
            active.fetch_sub(1, Ordering::SeqCst);
            r
        }
    });
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all(runs).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|u| u.status == "Completed")),
        "{results:?}"
    );
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "at most two files at once, and two did run together"
    );
    assert_eq!(count(&sb, &format!("{S3_PUT} 200")), 18);
    assert!(started.elapsed() < Duration::from_secs(20));
    sb.stop().await;
}

#[tokio::test]
async fn a_stalled_part_times_out_and_is_sent_again() {
    let sb = sandbox().await;
    let stall = FaultAction::Latency { ms: 3000 };
    sb.set_faults(vec![rule("PUT", "/s3/*", stall, Some(1))])
        .unwrap();
    let c = client_with(&sb, |cfg| cfg.timeout = Duration::from_millis(400));
    let (_dir, path) = scratch_file("slow.bin", PART as usize, 1);
    let started = std::time::Instant::now();
    assert_eq!(upload(&c, &path).await.status, "Completed");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "gave up on the stalled PUT instead of waiting it out: {:?}",
        started.elapsed()
    );
    assert_eq!(
        count(&sb, &format!("{PRESIGN} 200")),
        2,
        "the retry used a fresh URL"
    );
    sb.stop().await;
}
