//! What a hospital admin runs into on a second install walk, each checked as they would see it: a
//! second agent on one state folder, `status | head`, a receipt looked up where the case now is, a
//! `check --online` against a platform that is down, and folders left empty by moves.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use gc_hotfolder::receipt::Outcome;

/// A case at depth 2, as scanners lay them out: `<patient>/<study date>/`.
fn study(drop: &Path, patient: &str, date: &str, n: u64) {
    let parent = drop.join(patient);
    std::fs::create_dir_all(&parent).unwrap();
    drop_atomically(&parent, date, |d| archive_case(d, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_is_refused_and_read_only_commands_keep_working() {
    let site = site().await;
    let cfg = site.config("");
    let agent = site.start_agent(&cfg);
    agent.wait_log("token accepted", 1).await;

    let mut child = gc("run", &cfg).spawn(Stdio::null(), Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("a second agent kept running on the same state folder");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(
        said.contains("another agent")
            && said.contains(&format!("process {}", agent.pid()))
            && said.contains(&site.state_dir().display().to_string()),
        "{said}"
    );
    for command in ["status", "check"] {
        let ran = gc(command, &cfg).run();
        assert_eq!(ran.code, Some(0), "{command}: {ran:?}");
    }
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_leave_no_empty_folders_and_receipts_are_found_where_the_case_went() {
    let site = site().await;
    let drop = &site.drop;
    let (done, quarantine) = (
        site.tmp.path().join("done"),
        site.tmp.path().join("quarantine"),
    );
    study(drop, "P00123", "20240503", 0);
    // No image: quarantined, and moved to the quarantine folder.
    let bad = drop.join("P00777");
    std::fs::create_dir_all(&bad).unwrap();
    drop_atomically(&bad, "20240504", |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("count.json"), "3").unwrap();
    });
    let cfg = site.config(&format!(
        "depth = 2\ntitle = \"{{hash}}\"\nafter = \"move:{}\"\nquarantine = \"{}\"",
        done.display(),
        quarantine.display()
    ));
    let agent = site.start_agent(&cfg);
    let rs = wait_receipts(&site.state_dir(), 2, Duration::from_secs(60)).await;
    let good = rs.iter().find(|r| r.case == "P00123/20240503").unwrap();
    assert_eq!(good.outcome, Outcome::Delivered, "{:?}", good.reason);
    let moved = done.join("P00123/20240503");
    eventually(Duration::from_secs(20), "both cases moved", async || {
        (moved.is_dir() && quarantine.join("P00777/20240504").is_dir()).then_some(())
    })
    .await;
    agent.stop();
    // The patient folders the moves emptied are gone; the drop folder itself stays.
    assert!(drop.is_dir());
    let left: Vec<_> = std::fs::read_dir(drop).unwrap().collect();
    assert!(left.is_empty(), "left in the drop folder: {left:?}");

    // `receipts` takes the path an admin sees under done/.
    let out = gc("receipts", &cfg).arg(&moved).run().expect(0);
    assert!(out.stdout.contains("\"P00123/20240503\""));

    // `retry` of the quarantined case moves it back and leaves no empty patient folder behind.
    gc("retry", &cfg)
        .arg(quarantine.join("P00777/20240504"))
        .run()
        .expect(0);
    assert!(drop.join("P00777/20240504").is_dir());
    let left: Vec<_> = std::fs::read_dir(&quarantine).unwrap().collect();
    assert!(left.is_empty(), "left in the quarantine folder: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_into_a_closed_pipe_end_quietly() {
    let site = site().await;
    for n in 0..3 {
        drop_atomically(&site.drop, &format!("case-{n}"), |d| archive_case(d, n));
    }
    let cfg = site.config("");
    let agent = site.start_agent(&cfg);
    wait_receipts(&site.state_dir(), 3, Duration::from_secs(60)).await;
    agent.stop();
    for command in ["status", "receipts", "check"] {
        // The reading end is closed before the command writes a byte: every write meets EPIPE.
        let mut child = gc(command, &cfg).spawn(Stdio::piped(), Stdio::piped());
        std::mem::drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{command}: {err}");
        assert_ne!(out.status.code(), Some(101), "{command}: {err}");
    }
}

#[test]
fn check_online_answers_within_seconds_when_the_platform_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let drop = tmp.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = tmp.path().join("gc-hotfolder.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nurl = \"https://127.0.0.1:{port}/api/v1/\"\ntoken = \"t\"\nstate_dir = \"{}\"\n\n\
             [[folder]]\npath = \"{}\"\narchive = \"a\"\n  [[folder.socket]]\n  slug = \"s\"\n  files = \"*.mha\"\n",
            tmp.path().join("state").display(),
            drop.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = gc("check", &cfg).arg("--online").run();
    let took = started.elapsed();
    out.expect(3);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// A study as a scanner exports it: `<patient>/<study date>/IM0001…`, DICOM files without an extension
/// whose Patient ID is the patient folder's name.
fn scanner_study(drop: &Path, patient: &str, date: &str, seed: u64) {
    let parent = drop.join(patient);
    std::fs::create_dir_all(&parent).unwrap();
    drop_atomically(&parent, date, |d| {
        std::fs::create_dir_all(d).unwrap();
        let mut ids = gc_content::samples::DicomSeriesIds::new(seed);
        ids.patient_id = patient.into();
        ids.study_date = date.into();
        let written = gc_content::samples::write_dicom_series(d, 3, 8, 8, &ids, seed).unwrap();
        let mut written = written;
        written.sort();
        for (i, f) in written.iter().enumerate() {
            std::fs::rename(f, d.join(format!("IM{:04}", i + 1))).unwrap();
        }
    });
}

/// A config of the site's drop folder for scanner exports at depth 2 (the image rule also takes `IM*`),
/// with `title`.
fn scanner_config(site: &Site, title: &str) -> std::path::PathBuf {
    let cfg = site.config(&format!("depth = 2\ntitle = \"{title}\""));
    edit(&cfg, "\"dicom/*.dcm\"]", "\"dicom/*.dcm\", \"IM*\"]");
    cfg
}

/// What `gc-hotfolder check` printed on stdout.
fn check_output(cfg: &Path) -> String {
    gc("check", cfg).run().stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_that_carries_a_patient_id_from_any_folder_level_is_pointed_out() {
    let site = site().await;
    scanner_study(&site.drop, "P02003", "20240503", 1);
    let cfg = scanner_config(&site, "{path}");

    // `check` says which folder level the template takes the Patient ID from, never the ID itself.
    let said = check_output(&cfg);
    let line = said
        .lines()
        .find(|l| l.contains("case P02003/20240503: WARNING"))
        .unwrap_or_else(|| panic!("no warning about the case:\n{said}"));
    assert!(
        line.contains("folder name at depth 1")
            && line.contains("Patient ID")
            && line.contains("{hash}"),
        "{line}"
    );
    assert!(
        !line.replace("P02003/20240503", "").contains("P02003"),
        "{line}"
    );

    // The delivery says so too, in the log and in the receipt.
    let agent = site.start_agent(&cfg);
    let r = receipt_for(&site.state_dir(), "P02003/20240503").await;
    agent.stop();
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("folder name at depth 1")
                && w.contains("Patient ID")
                && w.contains("{hash}")),
        "{:?}",
        r.warnings
    );
    for w in &r.warnings {
        assert!(
            !w.contains("P02003"),
            "the warning repeats the identifier: {w}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_patients_of_one_day_at_depth_2_are_told_to_use_a_hash_title() {
    let site = site().await;
    scanner_study(&site.drop, "P02003", "20240503", 1);
    scanner_study(&site.drop, "P02004", "20240503", 2);
    let cfg = scanner_config(&site, "{case}");

    // `check` sees the collision coming from the template and the depth alone.
    let said = check_output(&cfg);
    assert!(
        said.contains("title = \"{case}\" at depth = 2") && said.contains("title = \"{hash}\""),
        "{said}"
    );
    // The StudyDate as title repeats no identifier: no warning about one.
    assert!(!said.contains("Patient ID"), "{said}");

    let agent = site.start_agent(&cfg);
    let rs = wait_receipts(&site.state_dir(), 2, Duration::from_secs(60)).await;
    agent.stop();
    let refused: Vec<_> = rs
        .iter()
        .filter(|r| r.outcome == Outcome::Quarantined)
        .collect();
    assert_eq!(refused.len(), 1, "{rs:?}");
    let reason = refused[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains("belongs to another case"), "{reason}");
    // The suggestion must not be one that sends the patient folder's name (the Patient ID) away.
    assert!(
        reason.contains("title = \"{hash}\"") && !reason.contains("{path}"),
        "{reason}"
    );
}

/// A site whose drop folder holds cases at depth 2 titled by hash, its config (with `more` appended), and
/// its agent, done with its startup scan.
async fn depth_2_site(more: &str) -> (Site, PathBuf, Agent) {
    let site = site().await;
    let cfg = site.config("depth = 2\ntitle = \"{hash}\"");
    append(&cfg, more);
    let agent = site.start_agent(&cfg);
    agent.wait_log("startup scan done", 1).await;
    (site, cfg, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_where_case_folders_belong_are_reported_once_in_log_status_metrics_and_explain() {
    let metrics = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let (site, cfg, agent) = depth_2_site(metrics).await;
    let (drop, state_dir) = (&site.drop, site.state_dir());

    // An export straight into the patient folder, while the agent watches: each file is an event.
    let patient = drop.join("P06001");
    std::fs::create_dir_all(&patient).unwrap();
    for i in 1..=6 {
        std::fs::write(patient.join(format!("IM{i:04}")), vec![7u8; 300]).unwrap();
    }
    std::fs::write(drop.join("stray.dcm"), vec![7u8; 300]).unwrap();
    // Two ordinary cases, one after the other: the time the second takes to settle and deliver is
    // several quiet periods, in which a file looked at again and again would be logged again.
    study(drop, "P06002", "20240503", 0);
    wait_delivered(&state_dir, 1, Duration::from_secs(60)).await;
    study(drop, "P06003", "20240504", 2);
    wait_delivered(&state_dir, 2, Duration::from_secs(60)).await;
    agent
        .wait_log("P06001/IM0006 is a file at depth 2", 1)
        .await;

    let log = agent.log();
    assert_eq!(
        log.matches("cannot read the case folder").count(),
        0,
        "{log}"
    );
    for i in 1..=6 {
        let said = format!("P06001/IM{i:04} is a file at depth 2");
        assert_eq!(log.matches(&said).count(), 1, "{said}:\n{log}");
    }

    // status, its JSON and the metrics count the files; explain says what is wrong with one.
    let text = status_of(&cfg, &[]).await;
    assert!(
        text.contains("not delivered: 7 file(s) where case folders are expected"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&status_of(&cfg, &["--json"]).await).unwrap();
    let listed = json[0]["misplaced"].as_array().unwrap();
    assert_eq!(listed.len(), 7, "{json}");
    assert!(listed.iter().any(|p| p == "P06001/IM0001"), "{json}");
    let metrics = metrics_of(&agent).await;
    let line = format!(
        "gc_hotfolder_misplaced_files{{folder=\"{}\"}} 7",
        drop.display()
    );
    assert!(metrics.contains(&line), "{metrics}");
    agent.stop();

    let said = gc("explain", &cfg).arg(patient.join("IM0001")).run().stdout;
    assert!(
        !said.contains("case P06001/IM0001"),
        "a file is no case: {said}"
    );
    assert!(
        said.contains("P06001/IM0001 is a file at depth 2")
            && said.contains("P06001/<case>/IM0001"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_folder_moved_in_whole_at_depth_2_is_delivered_without_waiting_for_a_scan() {
    let (site, _cfg, agent) = depth_2_site("").await;
    // Its study folder already inside: no event ever names it, only the patient folder's arrival.
    let outside = site.tmp.path().join("export/P07001");
    archive_case(&outside.join("20240601"), 0);
    std::fs::rename(&outside, site.drop.join("P07001")).unwrap();
    let r = receipt_for(&site.state_dir(), "P07001/20240601").await;
    agent.stop();
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_as_an_operator_says_who_may_read_the_journal_and_works_for_a_reading_group() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        eprintln!("skipped: running status as another user needs root");
        return;
    }
    const OPERATOR: u32 = 65534;
    const OPERATORS_GROUP: u32 = 4242;
    let site = site().await;
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(site.tmp.path(), 0o755);
    drop_atomically(&site.drop, "case-1", |d| archive_case(d, 0));
    let cfg = site.config("");
    chmod(&cfg, 0o644);
    let state = site.state_dir();
    let agent = site.start_agent(&cfg);
    wait_delivered(&state, 1, Duration::from_secs(60)).await;
    agent.stop();

    // The service's journal as its user leaves it: the file private, the folder open.
    let journal = state.join("journal.sqlite3");
    chmod(&state, 0o755);
    chmod(&journal, 0o600);
    let out = as_user(OPERATOR, OPERATOR, &[])
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for part in [
        journal.display().to_string(),
        "belongs to root (uid 0)".into(),
        "runs as nobody (uid 65534)".into(),
        "/status".into(),
        "group-readable".into(),
    ] {
        assert!(said.contains(&part), "{part:?} in: {said}");
    }

    // A state folder and journal its group may read: status works for the group's members.
    let chgrp = std::process::Command::new("chgrp")
        .args(["-R", &OPERATORS_GROUP.to_string()])
        .arg(&state)
        .status()
        .unwrap();
    assert!(chgrp.success());
    chmod(&state, 0o750);
    chmod(&journal, 0o640);
    let out = as_user(OPERATOR, OPERATOR, &[OPERATORS_GROUP])
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 delivered"), "{said}");
}

/// A case without an image (quarantined), dropped as `drop/<name>`, each time with other content.
fn bad_case(drop: &Path, name: &str, n: u32) {
    drop_atomically(drop, name, |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("count.json"), n.to_string()).unwrap();
    });
}

/// `gc-hotfolder retry` of `case`: its exit code, and both streams.
fn retry(cfg: &Path, case: &Path) -> (Option<i32>, String) {
    let ran = gc("retry", cfg).arg(case).run();
    (ran.code, ran.said())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_takes_the_folder_an_admin_sees_after_merging_a_case_quarantined_twice() {
    let site = site().await;
    let (drop, quarantine) = (&site.drop, site.tmp.path().join("quarantine"));
    let cfg = site.config(&format!("quarantine = \"{}\"", quarantine.display()));
    // A writer that stalled: each case is quarantined, then comes back with the rest of its files and
    // is quarantined again, into a second folder.
    let agent = site.start_agent(&cfg);
    for name in ["x", "y", "z"] {
        bad_case(drop, name, 1);
    }
    eventually(
        Duration::from_secs(60),
        "three cases quarantined",
        async || {
            ["x", "y", "z"]
                .iter()
                .all(|n| quarantine.join(n).is_dir())
                .then_some(())
        },
    )
    .await;
    for name in ["x", "y"] {
        bad_case(drop, name, 2);
    }
    eventually(
        Duration::from_secs(60),
        "two quarantined again",
        async || {
            ["x.2", "y.2"]
                .iter()
                .all(|n| quarantine.join(n).is_dir())
                .then_some(())
        },
    )
    .await;
    agent.stop();
    // The admin merges each case's two folders into the first, and deletes z's.
    for name in ["x", "y"] {
        let second = quarantine.join(format!("{name}.2"));
        for e in std::fs::read_dir(&second).unwrap() {
            let e = e.unwrap();
            std::fs::rename(e.path(), quarantine.join(name).join(e.file_name())).unwrap();
        }
        std::fs::remove_dir(&second).unwrap();
    }
    std::fs::remove_dir_all(quarantine.join("z")).unwrap();

    // By the quarantine path an admin sees.
    let (code, said) = retry(&cfg, &quarantine.join("x"));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("moved back"), "{said}");
    assert!(drop.join("x/count.json").is_file() && !quarantine.join("x").exists());
    // By its place in the drop folder, where it is not: found in the quarantine folder.
    let (code, said) = retry(&cfg, &drop.join("y"));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        drop.join("y/count.json").is_file() && !quarantine.join("y").exists(),
        "{said}"
    );
    // A case that is nowhere any more is not "requeued".
    let (code, said) = retry(&cfg, &drop.join("z"));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        !said.contains("requeued") && said.contains("name the folder where it is now"),
        "{said}"
    );
    assert!(!drop.join("z").exists());
}

/// The sandbox as a command: started with `args`, its banner (up to "Stop with"), and the child.
fn sandbox_command(args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = bin()
        .arg("sandbox")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let end = line.starts_with("Stop with");
        lines.push(line);
        if end {
            break;
        }
    }
    (child, lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_on_a_custom_fixture_names_its_world_and_takes_faults_as_its_help_says() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = tmp.path().join("my-world.toml");
    std::fs::write(
        &fixture,
        r#"
[[user]]
username = "me"
token = "try-it-out"
[[user]]
username = "colleague"
token = "look-only"
[[socket]]
slug = "ct-image"
title = "CT image"
kind = "Image"
super_kind = "Image"
relative_path = "images/ct-image"
[[socket]]
slug = "lung-volume"
title = "Lung volume"
kind = "Float"
super_kind = "Value"
relative_path = "lung-volume.json"
[[archive]]
slug = "lung-ct-archive"
title = "Lung CT"
editors = ["me"]
users = ["colleague"]
[[algorithm]]
slug = "lung-volume-estimator"
title = "Lung volume estimator"
users = ["me"]
  [[algorithm.interface]]
  inputs = ["ct-image"]
  outputs = ["lung-volume"]
"#,
    )
    .unwrap();
    let (mut child, banner) = sandbox_command(&[
        "--listen",
        "127.0.0.1:0",
        "--fixture",
        fixture.to_str().unwrap(),
    ]);
    let stop = |child: &mut std::process::Child| {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
    };
    for part in [
        "lung-ct-archive: Lung CT",
        "lung-volume-estimator: ct-image → lung-volume",
        "me (editor of lung-ct-archive; may run lung-volume-estimator): try-it-out",
        "colleague (user of lung-ct-archive): look-only",
    ] {
        if !banner.contains(part) {
            stop(&mut child);
            panic!("{part:?} is not in the banner:\n{banner}");
        }
    }
    let base = banner
        .lines()
        .find_map(|l| l.strip_prefix("Grand Challenge sandbox: "))
        .unwrap()
        .trim()
        .to_owned();
    let origin = base.trim_end_matches("/api/v1/").to_owned();

    // The JSON body exactly as `sandbox --help` shows it.
    let help = bin().args(["sandbox", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let body = help
        .split("-d '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no example body in:\n{help}"))
        .to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{origin}/_sandbox/faults"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = put.status();
    let answer = put.text().await.unwrap();
    let listed: serde_json::Value = http
        .get(format!("{origin}/_sandbox/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stop(&mut child);
    assert_eq!(status, 200, "{body} → {answer}");
    let rules = listed.as_array().unwrap();
    assert_eq!(rules.len(), 2, "{listed}");
    assert_eq!(rules[0]["status"], 503, "{listed}");
    assert_eq!(rules[1]["action"], "latency", "{listed}");
}
