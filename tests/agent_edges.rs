//! The agent's rough edges, as a real subprocess: names that are not UTF-8, a case deleted while it is
//! uploaded, a drop folder that appears only after start, and reloading a broken then a fixed config.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_utf8_are_uploaded_and_reported() {
    let Site { sb, tmp, drop } = site().await;
    drop_atomically(&drop, "latin1", |d| {
        archive_case(d, 3); // a DICOM series in dicom/
        let dicom = d.join("dicom");
        let first = std::fs::read_dir(&dicom)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::rename(&first, dicom.join(OsStr::from_bytes(b"scan-\xe9t\xe9.dcm"))).unwrap();
        std::fs::write(
            d.join(OsStr::from_bytes(b"notes-\xff.txt")),
            b"not for upload",
        )
        .unwrap();
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let r = receipt_for(&tmp.path().join("state"), "latin1").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{r:?}");
    let img = socket_of(&r, "generic-medical-image");
    assert_eq!(img.files.len(), 4);
    assert!(
        img.files
            .iter()
            .any(|f| f.path == "dicom/scan-\\xe9t\\xe9.dcm"),
        "{:?}",
        img.files
    );
    assert_eq!(
        r.unmatched,
        ["notes-\\xff.txt"],
        "each byte kept, not a lossy \u{fffd}"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_deleted_while_it_uploads_is_quarantined_with_the_reason() {
    // Slow part uploads, so that the deletion lands in the middle.
    let sb = sandbox_with(|o| o.faults = vec!["PUT /s3/* latency=400".parse().unwrap()]).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    drop_atomically(&drop, "vanishing", |d| {
        std::fs::create_dir_all(d).unwrap();
        // 40 MiB: eight 5 MiB parts of a (valid) MetaImage.
        gc_content::samples::write_mha(&d.join("image.mha"), [1024, 1024, 40], 5).unwrap();
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("delivering", 1).await;
    eventually(Duration::from_secs(30), "the first part PUT", async || {
        let st = state(&sb).await;
        let puts = st["requests"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("PUT /s3/"))
            .count();
        (puts > 0).then_some(())
    })
    .await;
    std::fs::remove_dir_all(drop.join("vanishing")).unwrap();
    let r = receipt_for(&tmp.path().join("state"), "vanishing").await;
    assert_eq!(r.outcome, Outcome::Quarantined);
    let reason = r.reason.unwrap_or_default();
    // Depending on the instant: a part read fails, or the pre-PATCH check finds the folder gone.
    assert!(
        reason.contains("No such file or directory")
            || reason.contains("removed while it was being delivered"),
        "{reason}"
    );
    // And it says exactly what is left on the platform: the item, empty.
    assert!(reason.contains("holds no values"), "{reason}");
    let st = state(&sb).await;
    let left = all_titled(&st, "demo-archive", "vanishing");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["values"], serde_json::json!([]));
    assert_eq!(
        r.item.as_ref().map(|i| i.pk.as_str()),
        left[0]["pk"].as_str()
    );
    // And the daemon goes on.
    drop_atomically(&drop, "next", |d| archive_case(d, 0));
    assert_eq!(
        receipt_for(&tmp.path().join("state"), "next").await.outcome,
        Outcome::Delivered
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_folder_missing_at_start_is_picked_up_when_it_appears() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("not-yet");
    let cfg = write_config(tmp.path(), &sb, &drop, None, "poll_interval = \"300ms\"");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("does not exist", 1).await;
    std::fs::create_dir_all(&drop).unwrap();
    drop_atomically(&drop, "late", |d| archive_case(d, 1));
    assert_eq!(
        receipt_for(&tmp.path().join("state"), "late").await.outcome,
        Outcome::Delivered
    );
    // From now on it is watched for events, not polled: a case copied in is still seen at once.
    agent.wait_log("the drop folder appeared", 1).await;
    agent.wait_log("watching for changes", 1).await;
    drop_atomically(&drop, "later", |d| archive_case(d, 2));
    assert_eq!(
        receipt_for(&tmp.path().join("state"), "later")
            .await
            .outcome,
        Outcome::Delivered
    );
    let log = agent.log();
    let polls_after = log
        .split("the drop folder appeared")
        .nth(1)
        .unwrap_or_default()
        .matches("why=Poll")
        .count();
    // The poll that found the folder logs its scan just after; every 300 ms after that would be more.
    assert!(
        polls_after <= 1,
        "still polled after it appeared: {polls_after}"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rejects_a_broken_config_and_applies_a_fixed_one() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let cfg = write_config(tmp.path(), &sb, &a, None, "");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("startup scan done", 1).await;

    std::fs::write(
        &cfg,
        good.replace("quiet = \"1s\"", "quiet = \"1s\"\nqiuet = \"2s\""),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_log("reload rejected", 1).await;
    assert!(agent.log().contains("qiuet"), "the rejection names the key");
    // The running config still works.
    drop_atomically(&a, "still-a", |d| archive_case(d, 0));
    assert_eq!(
        receipt_for(&tmp.path().join("state"), "still-a")
            .await
            .outcome,
        Outcome::Delivered
    );

    // A valid config with a second folder: its cases are delivered without a restart.
    let second = format!(
        "\n[[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\nquiet = \"1s\"\ntitle = \"b-{{case}}\"\n{ARCHIVE_RULES}",
        b.display()
    );
    std::fs::write(&cfg, format!("{good}{second}")).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reloaded", 1).await;
    drop_atomically(&b, "from-b", |d| archive_case(d, 2));
    let r = receipt_for(&tmp.path().join("state"), "from-b").await;
    assert_eq!(
        (r.outcome, r.title.as_str()),
        (Outcome::Delivered, "b-from-b")
    );
    agent.stop();
}

fn uploads_created(st: &serde_json::Value) -> u64 {
    st["requests"]["POST /api/v1/uploads/ 201"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_files_update_only_the_changed_socket_of_the_same_item() {
    let Site { sb, tmp, drop } = site().await;
    drop_atomically(&drop, "p1", |d| archive_case(d, 0)); // image, report, count = 0
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let state_dir = tmp.path().join("state");
    let first = receipt_for(&state_dir, "p1").await;
    assert_eq!((first.outcome, first.revision), (Outcome::Delivered, 1));
    let uploads_before = uploads_created(&state(&sb).await);

    std::fs::write(drop.join("p1/count.json"), "5").unwrap();
    let second = wait_receipts_until(&state_dir, Duration::from_secs(60), |r| {
        r.iter().any(|r| r.revision == 2)
    })
    .await
    .remove(0);
    assert_eq!(second.item, first.item, "the same item is updated");
    let value = |r: &gc_hotfolder::receipt::Receipt, slug: &str| {
        r.sockets.iter().find(|s| s.slug == slug).cloned().unwrap()
    };
    assert_eq!(
        value(&second, "lesion-count").value,
        Some(serde_json::json!(5))
    );
    for unchanged in ["generic-medical-image", "report"] {
        assert_eq!(
            value(&second, unchanged).value_pk,
            value(&first, unchanged).value_pk,
            "{unchanged} was not sent again"
        );
    }
    assert_eq!(
        uploads_created(&state(&sb).await),
        uploads_before,
        "no file was uploaded again"
    );
    let latest = gc_hotfolder::receipt::receipt_path(
        &state_dir.join("receipts"),
        "demo-archive",
        gc_hotfolder::receipt::CaseKey {
            folder: &drop,
            case: std::path::Path::new("p1"),
        },
    );
    let history = latest.parent().unwrap().join("history");
    assert!(history.join("p1.r1.json").is_file() && history.join("p1.r2.json").is_file());
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_files_are_ignored_or_quarantined_as_configured() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("ignore"), tmp.path().join("quarantine"));
    drop_atomically(&a, "pa", |d| archive_case(d, 0));
    drop_atomically(&b, "pb", |d| archive_case(d, 2));
    let cfg = write_config(tmp.path(), &sb, &a, None, "on_change = \"ignore\"");
    let second = format!(
        "\n[[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\nquiet = \"1s\"\non_change = \"quarantine\"\n{ARCHIVE_RULES}",
        b.display()
    );
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &second).unwrap();
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let state_dir = tmp.path().join("state");
    wait_delivered(&state_dir, 2, Duration::from_secs(60)).await;

    std::fs::write(a.join("pa/count.json"), "9").unwrap();
    std::fs::write(b.join("pb/count.json"), "9").unwrap();
    // Events are handled in order: once a case dropped afterwards is delivered, both changes were seen.
    drop_atomically(&a, "later", |d| archive_case(d, 4));
    receipt_for(&state_dir, "later").await;
    agent.stop();

    let pa = receipts(&state_dir.join("receipts"))
        .into_iter()
        .find(|r| r.case == "pa")
        .unwrap();
    assert_eq!(pa.revision, 1, "ignored: no second delivery");
    let out = gc("status", &cfg).arg("--json").run();
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let q = &status[1]["quarantined"];
    assert_eq!(q[0]["case"], "pb", "{status}");
    assert!(
        q[0]["reason"]
            .as_str()
            .unwrap()
            .contains("files changed after the case was delivered"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_folder_is_watched_but_not_delivered_until_resumed() {
    let (Site { sb: _sb, tmp, drop }, cfg) = paused_site().await;
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    drop_atomically(&drop, "held", |d| archive_case(d, 1));
    agent
        .wait_log("ready, held while its folder is paused", 1)
        .await;
    let status = gc("status", &cfg).arg("--json").run();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status[0]["paused"], true, "{status}");
    assert!(
        receipts(&tmp.path().join("state/receipts")).is_empty(),
        "nothing delivered while paused"
    );

    gc("resume", &cfg).arg(&drop).run().expect(0);
    assert_eq!(
        receipt_for(&tmp.path().join("state"), "held").await.outcome,
        Outcome::Delivered
    );
    agent.stop();
}
