//! What an operator sees of cases that are not delivered yet: `status` lists every case the agent knows
//! with why it waits, from its first sight, and the metrics agree with it; a drop folder deleted and
//! made again is watched again without waiting for the next full scan.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::Outcome;
use serde_json::Value;

/// One sample of a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `status --json` note of `case`, once there is one that contains `text`.
async fn status_note(cfg: &Path, case: &str, text: &str) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("a status note on {case} saying {text:?}"),
        async || {
            let out = gc("status", cfg).arg("--json").run_async().await;
            let doc: Value = serde_json::from_str(&out.stdout).ok()?;
            let notes = doc.as_array()?.first()?["notes"].as_array()?.clone();
            notes.iter().find_map(|n| {
                let note = n[1].as_str()?;
                (n[0] == case && note.contains(text)).then(|| note.to_owned())
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_held_back_by_a_part_file_is_in_status_with_why_and_the_metrics_agree() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    append(&cfg, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let addr = metrics_addr(&agent).await;
    agent.wait_log("startup scan done", 1).await;

    // A copy that stopped half-way: the copy tool's temporary file stays.
    archive_case(&drop.join("case-a"), 0);
    std::fs::write(drop.join("case-a/series.dcm.part"), b"half a file").unwrap();
    let note = status_note(&cfg, "case-a", "temporary files remain").await;
    assert!(
        note.starts_with("settling: ") && note.contains("series.dcm.part"),
        "{note}"
    );
    let text = gc("status", &cfg).run_async().await.expect(0).stdout;
    assert!(text.contains("1 settling"), "{text}");
    assert!(
        text.contains("note: case-a: settling: temporary files remain: series.dcm.part"),
        "{text}"
    );
    // The journal's count and the loop's own count say the same.
    let folder = drop.display().to_string();
    let metrics = metrics_text(addr).await;
    let settling = format!("gc_hotfolder_cases{{folder=\"{folder}\",state=\"settling\"}}");
    assert_eq!(sample(&metrics, &settling), Some(1.0), "{metrics}");
    let pending = eventually(Duration::from_secs(10), "cases_pending of 1", async || {
        let m = metrics_text(addr).await;
        (sample(&m, "gc_hotfolder_cases_pending") == Some(1.0)).then_some(m)
    })
    .await;
    assert_eq!(sample(&pending, &settling), Some(1.0), "{pending}");

    // The copy finishes: the note goes with the delivery.
    std::fs::remove_file(drop.join("case-a/series.dcm.part")).unwrap();
    let r = receipt_for(&tmp.path().join("state"), "case-a").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    let text = gc("status", &cfg).run_async().await.expect(0).stdout;
    assert!(!text.contains("note: case-a"), "{text}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_case_is_in_status_from_its_first_sight_with_what_it_waits_for() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    // A long quiet window, so the case is seen settling long before it is ready.
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    edit(&cfg, "quiet = \"1s\"", "quiet = \"1h\"\nmax_wait = \"2h\"");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("startup scan done", 1).await;
    // Dropped whole (written beside, then renamed in), so its first sight already sees every file.
    drop_atomically(&drop, "case-b", |d| archive_case(d, 1));
    let note = status_note(&cfg, "case-b", "settling").await;
    assert_eq!(
        note, "settling: waiting until its files have not changed for 1h",
        "{note}"
    );
    // Looked at again and again while it settles, it is noted once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.stop();
    let journal = rusqlite::Connection::open(tmp.path().join("state/journal.sqlite3")).unwrap();
    let notes: i64 = journal
        .query_row(
            "SELECT COUNT(*) FROM events WHERE event = 'note'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(notes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_folder_deleted_and_made_again_is_watched_again_at_once() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    // A full scan only every ten minutes: only the watch can find the new case in time.
    let cfg = write_config(tmp.path(), &sb, &drop, None, "poll_interval = \"1s\"");
    edit(&cfg, "[agent]\n", "[agent]\nreconcile = \"10m\"\n");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("startup scan done", 1).await;

    std::fs::remove_dir_all(&drop).unwrap();
    agent.wait_log("the drop folder is gone", 1).await;
    std::fs::create_dir_all(&drop).unwrap();
    agent.wait_log("the drop folder appeared", 1).await;
    archive_case(&drop.join("case-c"), 2);
    let r = receipt_for(&tmp.path().join("state"), "case-c").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    agent.stop();
}

/// The failures in a row the journal counts for the post-action of a case (0 when none is recorded).
fn post_action_failures(state_dir: &Path) -> i64 {
    let journal = rusqlite::Connection::open(state_dir.join("journal.sqlite3")).unwrap();
    journal
        .query_row(
            "SELECT COALESCE(MAX(failures), 0) FROM post_actions",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_post_action_is_shown_alerted_retried_with_back_off_and_on_retry() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    let hook = receiver(false).await;
    // Where delivered cases go is blocked by a file of that name: the move fails, whoever runs it.
    let done = tmp.path().join("done");
    std::fs::write(&done, b"in the way").unwrap();
    let after = format!("after = \"move:{}\"", done.display());
    let cfg = write_config(tmp.path(), &sb, &drop, None, &after);
    // Back-off from 2 s, doubling: 4 s, 8 s… (with jitter of at most an eighth).
    edit(&cfg, "retry_first = \"300ms\"", "retry_first = \"2s\"");
    edit(&cfg, "retry_max = \"3s\"", "retry_max = \"1h\"");
    append(&cfg, &format!("\n[[notify]]\nurl = \"{}\"\n", hook.url));
    let state_dir = tmp.path().join("state");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("startup scan done", 1).await;
    archive_case(&drop.join("case-d"), 3);

    let alert = hook.wait_for("post_action_failed").await;
    assert_eq!(alert["state"], "delivered");
    says(&alert, "reason", "post-action (move it to");
    let r = receipt_for(&state_dir, "case-d").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    let error = r.post_action_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("post-action (move it to")
            && error.contains("the case stays where it is"),
        "{error}"
    );
    let text = gc("status", &cfg).run_async().await.expect(0).stdout;
    assert!(
        text.contains("post-action failed: case-d: post-action (move it to"),
        "{text}"
    );
    let json: Value =
        serde_json::from_str(&gc("status", &cfg).arg("--json").run_async().await.stdout).unwrap();
    assert_eq!(json[0]["post_action_failed"][0]["case"], "case-d", "{json}");

    // Tried again after a back-off: a second failure about 4 s later, the next only 8 s after that.
    eventually(Duration::from_secs(20), "a second failure", async || {
        (post_action_failures(&state_dir) >= 2).then_some(())
    })
    .await;
    std::fs::remove_file(&done).unwrap();
    // Fixed: `retry` tries it at once, long before the next back-off ends.
    let out = gc("retry", &cfg)
        .arg(drop.join("case-d"))
        .run_async()
        .await
        .expect(0);
    assert!(
        out.stdout.contains("tries its post-action again now"),
        "{}",
        out.stdout
    );
    let moved = done.join("case-d");
    eventually(Duration::from_secs(20), "the case moved", async || {
        moved.is_dir().then_some(())
    })
    .await;
    // Moved by the retry, not by the back-off's next try.
    agent.wait_log("post-action done", 1).await;
    let log = agent.log();
    let (asked, done_at) = (log.find("retry requested"), log.find("post-action done"));
    assert!(asked.is_some() && asked < done_at, "{log}");
    assert_eq!(post_action_failures(&state_dir), 0);
    let r = receipt_for(&state_dir, "case-d").await;
    assert_eq!(r.post_action_error, None);
    assert_eq!(r.now_at.as_deref(), Some(moved.to_str().unwrap()));
    let text = gc("status", &cfg).run_async().await.expect(0).stdout;
    assert!(!text.contains("post-action failed"), "{text}");
    // One alert, not one per try.
    let alerts = hook.alerts.lock().unwrap().clone();
    let failed = alerts.iter().filter(|a| a["event"] == "post_action_failed");
    assert_eq!(failed.count(), 1, "{alerts:?}");
    agent.stop();
}

/// A case delivered and moved away by `after = "move:…"`, then a late file in a folder of the same
/// name (a scanner node sending a late series recreates the study folder): the late folder is the same
/// case, so it updates the delivered item, whether or not it holds the files of the required sockets.
async fn late_files_update_the_delivered_item(every_socket_optional: bool) {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    let done = tmp.path().join("done");
    let after = format!("after = \"move:{}\"", done.display());
    let cfg = write_config(tmp.path(), &sb, &drop, None, &after);
    if every_socket_optional {
        let files = "files = [\"image.mha\", \"image.mhd\", \"image.raw\", \"image.nii.gz\", \"dicom/*.dcm\"]";
        edit(&cfg, files, &format!("{files}\n  optional = true"));
    }
    let state_dir = tmp.path().join("state");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("startup scan done", 1).await;
    archive_case(&drop.join("case-f"), 0);
    let first = receipt_for(&state_dir, "case-f").await;
    assert_eq!(first.outcome, Outcome::Delivered, "{:?}", first.reason);
    eventually(Duration::from_secs(20), "the case moved away", async || {
        (done.join("case-f").is_dir() && !drop.join("case-f").exists()).then_some(())
    })
    .await;

    // The late file alone, in a folder of the case's name: no image, which the first delivery sent.
    drop_atomically(&drop, "case-f", |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("results.json"), "{\"late\": true}").unwrap();
    });
    let updated = wait_receipts_until(&state_dir, Duration::from_secs(60), |r| {
        r.iter().any(|r| r.case == "case-f" && r.revision == 2)
    })
    .await;
    let second = updated.iter().find(|r| r.case == "case-f").unwrap();
    assert_eq!(second.outcome, Outcome::Delivered, "{:?}", second.reason);
    assert_eq!(second.item, first.item, "the same item, not a second one");
    let state = sb.state();
    let items = items_of(&state, "demo-archive");
    assert_eq!(items.len(), 1, "{items:?}");
    // The item keeps what the first delivery sent and gains the late value.
    let late = value_of(items[0], "results-json");
    assert_eq!(late["file"]["name"], "results.json", "{late}");
    for kept in ["generic-medical-image", "report", "lesion-count"] {
        let _ = value_of(items[0], kept);
    }
    holds_exactly(items[0], second, true);
    // The late folder went where the first did, beside it.
    eventually(
        Duration::from_secs(20),
        "the late folder moved",
        async || {
            done.join("case-f.2")
                .join("results.json")
                .is_file()
                .then_some(())
        },
    )
    .await;
    // Another late file, later still: the receipt of the update names every value of the item, so
    // this one updates it too.
    drop_atomically(&drop, "case-f", |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("count.json"), "9").unwrap();
    });
    let updated = wait_receipts_until(&state_dir, Duration::from_secs(60), |r| {
        r.iter().any(|r| r.case == "case-f" && r.revision == 3)
    })
    .await;
    let third = updated.iter().find(|r| r.case == "case-f").unwrap();
    assert_eq!(third.outcome, Outcome::Delivered, "{:?}", third.reason);
    assert_eq!(third.item, first.item);
    let state = sb.state();
    let items = items_of(&state, "demo-archive");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(value_of(items[0], "lesion-count")["value"], 9);
    holds_exactly(items[0], third, true);
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_files_without_a_required_socket_update_the_moved_case_s_item() {
    late_files_update_the_delivered_item(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_files_of_a_folder_whose_sockets_are_all_optional_update_the_moved_case_s_item() {
    late_files_update_the_delivered_item(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_waiting_for_the_platform_s_import_is_counted_apart_from_uploads() {
    // An import that takes long beside uploading a tiny case.
    let sb = sandbox_with(|o| o.import_delay = Duration::from_secs(30)).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    archive_case(&drop.join("case-g"), 0);
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    append(&cfg, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let addr = metrics_addr(&agent).await;
    let text = eventually(
        Duration::from_secs(30),
        "the case awaiting its import",
        async || {
            let out = gc("status", &cfg).run_async().await;
            out.stdout
                .contains("1 awaiting import")
                .then_some(out.stdout)
        },
    )
    .await;
    assert!(!text.contains("uploading"), "{text}");
    assert!(text.contains("note: case-g: "), "{text}");
    let folder = drop.display().to_string();
    let metrics = metrics_text(addr).await;
    let series =
        |state: &str| format!("gc_hotfolder_cases{{folder=\"{folder}\",state=\"{state}\"}}");
    assert_eq!(
        sample(&metrics, &series("awaiting_import")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &series("uploading")),
        Some(0.0),
        "{metrics}"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_during_a_delivery_that_ends_in_quarantine_is_not_lost() {
    // The first PATCH's imports fail, a few seconds after it: the case is quarantined then. Later
    // PATCHes import fine.
    let fault = "PATCH /api/v1/archives/items/* import-fails times=1";
    let sb = sandbox_with(|o| {
        o.import_delay = Duration::from_secs(3);
        o.faults = vec![fault.parse().unwrap()];
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    archive_case(&drop.join("case-h"), 0);
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    eventually(
        Duration::from_secs(30),
        "the case awaiting its import",
        async || {
            let out = gc("status", &cfg).run_async().await;
            out.stdout.contains("1 awaiting import").then_some(())
        },
    )
    .await;
    // The operator retries while the delivery is still under way; it ends in a quarantine.
    gc("retry", &cfg)
        .arg(drop.join("case-h"))
        .run_async()
        .await
        .expect(0);
    let state_dir = tmp.path().join("state");
    let rs = wait_receipts_until(&state_dir, Duration::from_secs(60), |r| {
        r.iter()
            .any(|r| r.case == "case-h" && r.outcome == Outcome::Delivered)
    })
    .await;
    let r = rs.iter().find(|r| r.case == "case-h").unwrap();
    assert!(r.attempts >= 2, "{r:?}");
    let log = agent.log();
    assert!(
        log.contains("DICOM") || log.contains("quarantined"),
        "{log}"
    );
    agent.stop();
}
