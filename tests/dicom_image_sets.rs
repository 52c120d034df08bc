//! DICOM image sets against the sandbox, with the agent and with `upload`. The platform reports a failed
//! DICOM import to no API, so: what its import would refuse (two series, an SOP class its
//! de-identification does not take) is found on this machine before anything is created; and a set
//! that passes every check but that the platform fails anyway (the sandbox's `import-fails` fault) shows
//! as waiting, with the item's page, in `status`, `status --json`, `/status` and on `upload`'s line, until
//! the folder's `dicom_import_deadline` quarantines it with the likely causes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gc_content::samples::DicomSeriesIds;
use gc_hotfolder::receipt::Outcome;
use gc_sandbox::Sandbox;
use serde_json::Value;

const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const WAITING: &str =
    "waiting for the platform to import socket dicom-image-set (a DICOM image set)";

/// A sandbox whose imports of item values fail whatever their files.
async fn failing_sandbox() -> Sandbox {
    sandbox_with(|o| {
        o.faults.push(
            "PATCH /api/v1/archives/items/* import-fails"
                .parse()
                .unwrap(),
        )
    })
    .await
}

/// Three cases: two series in one set, a file of an unsupported SOP class, and a good series.
fn three_cases(drop: &Path) {
    drop_atomically(drop, "two-series", |d| {
        let ids = DicomSeriesIds::new(1);
        write_series(d, 2, &ids, 1);
        let second = DicomSeriesIds {
            series_instance_uid: "1.2.826.0.1.3680043.99.2".into(),
            series_number: ids.series_number + 1,
            ..ids.clone()
        };
        write_series(d, 2, &second, 2);
    });
    drop_atomically(drop, "secondary-capture", |d| {
        let files = write_series(d, 2, &DicomSeriesIds::new(3), 3);
        set_sop_class(&files[1], SECONDARY_CAPTURE);
    });
    drop_atomically(drop, "never-imported", |d| {
        write_series(d, 3, &DicomSeriesIds::new(4), 4);
    });
}

/// The config of an archive folder whose cases are DICOM image sets, quarantined 8 s into a wait.
fn config(tmp: &Path, sb: &Sandbox, drop: &Path, extra: &str) -> PathBuf {
    let cfg = write_config(
        tmp,
        sb,
        drop,
        None,
        &format!("{extra}{}", dicom_set_rule("8s")),
    );
    image_optional(&cfg);
    cfg
}

fn titles(st: &Value) -> Vec<String> {
    items_of(st, "demo-archive")
        .iter()
        .map(|i| i["title"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The note of a waiting case shows the wait, its deadline and the pages where the platform tells more.
fn assert_waiting_note(text: &str, sb: &Sandbox) {
    let origin = origin(sb);
    for needed in [
        WAITING,
        " since 20",
        "so far (deadline 8s)",
        &format!("the item's page: {origin}/archives/demo-archive/items/"),
        &format!("{origin}/notifications/"),
    ] {
        assert!(text.contains(needed), "{needed:?} in:\n{text}");
    }
}

/// The reasons of the three cases: two stopped here naming files and cause, one at the deadline.
fn assert_reasons(rs: &[gc_hotfolder::receipt::Receipt], sb: &Sandbox, sop_cause: &str) {
    let by = |case: &str| rs.iter().find(|r| r.case == case).unwrap();
    let two = by("two-series");
    let reason = two.reason.as_deref().unwrap_or_default();
    assert_eq!(two.outcome, Outcome::Quarantined);
    assert!(
        reason.contains("socket dicom-image-set: a DICOM image set is one series of one study, but its 4 files hold 2 different SeriesInstanceUID values: series/")
            && reason.contains("nothing was created on the platform"),
        "{reason}"
    );
    assert!(two.item.is_none());
    let sc = by("secondary-capture");
    let reason = sc.reason.as_deref().unwrap_or_default();
    assert_eq!(sc.outcome, Outcome::Quarantined);
    assert!(
        reason.contains("series/")
            && reason.contains(sop_cause)
            && reason.contains(&format!("Unsupported SOP Class ({SECONDARY_CAPTURE})")),
        "{reason}"
    );
    assert!(sc.item.is_none());
    let never = by("never-imported");
    let reason = never.reason.as_deref().unwrap_or_default();
    assert_eq!(never.outcome, Outcome::Quarantined);
    for needed in [
        "the platform did not finish importing the DICOM image set of socket dicom-image-set (3 files) within the deadline of 8s",
        "de-identification refused a file",
        "more than one series",
        "unreadable or of an unsupported kind",
        "the platform is busy",
        &format!("{}/notifications/", origin(sb)),
        &format!(
            "the item's page: {}/archives/demo-archive/items/",
            origin(sb)
        ),
        "Left on the platform: the item created for it",
    ] {
        assert!(reason.contains(needed), "{needed:?} in {reason}");
    }
}

/// Only the case that passed the checks has an item, and it holds no image set.
async fn assert_platform_state(sb: &Sandbox) {
    let st = state(sb).await;
    assert_eq!(
        titles(&st),
        ["never-imported"],
        "nothing made for the others"
    );
    let item = items_of(&st, "demo-archive")[0];
    assert!(
        !item["values"].to_string().contains("dicom-image-set"),
        "{item}"
    );
    assert!(
        st["notifications"]
            .to_string()
            .contains("DICOM image set import failed"),
        "the platform's own notification: {}",
        st["notifications"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stops_bad_sets_before_the_platform_and_shows_a_set_that_is_never_imported() {
    let sb = failing_sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    three_cases(&drop);
    // Sent as they are, the originals are judged: the unsupported SOP class is found by the check of the
    // DICOM image set, not by de-identification.
    let cfg = config(tmp.path(), &sb, &drop, "deidentify = false\n");
    append(&cfg, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));

    let status = eventually(Duration::from_secs(30), "the wait in status", async || {
        let s = status_of(&cfg, &[]).await;
        s.contains(WAITING).then_some(s)
    })
    .await;
    assert!(status.contains("note: never-imported: waiting"), "{status}");
    assert_waiting_note(&status, &sb);
    let addr = metrics_addr(&agent).await;
    let doc: Value = reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let notes = &doc["folders"][0]["notes"];
    assert_eq!(notes[0][0], "never-imported", "{notes}");
    assert_waiting_note(notes[0][1].as_str().unwrap_or_default(), &sb);

    let rs = wait_receipts(&tmp.path().join("state"), 3, Duration::from_secs(60)).await;
    agent.stop();
    assert_reasons(&rs, &sb, "the platform's de-identification would refuse it");
    assert_platform_state(&sb).await;
    let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    assert!(
        log.contains(WAITING),
        "the agent logs the wait once it begins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_stops_bad_sets_before_the_platform_and_shows_a_set_that_is_never_imported() {
    let sb = failing_sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    three_cases(&drop);
    // De-identified copies are what is judged: their series stay apart, and de-identification itself
    // refuses the unsupported SOP class.
    let cfg = config(tmp.path(), &sb, &drop, "");
    let stderr = tmp.path().join("upload.err");
    let child = bin()
        .arg("upload")
        .arg("--config")
        .arg(&cfg)
        .args(["two-series", "secondary-capture", "never-imported"].map(|c| drop.join(c)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();

    let json = eventually(
        Duration::from_secs(30),
        "the wait in status --json",
        async || {
            let s = status_of(&cfg, &["--json"]).await;
            s.contains(WAITING).then_some(s)
        },
    )
    .await;
    let folders: Value = serde_json::from_str(&json).unwrap();
    let notes = &folders[0]["notes"];
    assert_eq!(notes[0][0], "never-imported", "{notes}");
    assert_waiting_note(notes[0][1].as_str().unwrap_or_default(), &sb);

    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .contains("never-imported: the platform did not finish importing the DICOM image set"),
        "{stdout}"
    );
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        said.contains("never-imported") && said.contains(WAITING),
        "upload shows the wait on the case's line:\n{said}"
    );
    let rs = receipts(&tmp.path().join("state").join("receipts"));
    assert_eq!(rs.len(), 3, "{rs:?}");
    assert_reasons(&rs, &sb, "refused by the de-identification procedure");
    assert_platform_state(&sb).await;
}
