//! What a hospital admin runs into on a second install walk, each checked as they would see it: a
//! second agent on one state folder, `status | head`, a receipt looked up where the case now is, a
//! `check --online` against a platform that is down, and folders left empty by moves.

mod common;

use std::path::Path;
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
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log("token accepted", 1).await;

    let mut child = bin()
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
            && said.contains(&tmp.path().join("state").display().to_string()),
        "{said}"
    );
    for command in ["status", "check"] {
        let out = bin()
            .arg(command)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
    }
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_leave_no_empty_folders_and_receipts_are_found_where_the_case_went() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let (drop, done, quarantine) = (
        tmp.path().join("drop"),
        tmp.path().join("done"),
        tmp.path().join("quarantine"),
    );
    study(&drop, "P00123", "20240503", 0);
    // No image: quarantined, and moved to the quarantine folder.
    let bad = drop.join("P00777");
    std::fs::create_dir_all(&bad).unwrap();
    drop_atomically(&bad, "20240504", |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("count.json"), "3").unwrap();
    });
    let cfg = write_config(
        tmp.path(),
        &sb,
        &drop,
        None,
        &format!(
            "depth = 2\ntitle = \"{{hash}}\"\nafter = \"move:{}\"\nquarantine = \"{}\"",
            done.display(),
            quarantine.display()
        ),
    );
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_receipts(&tmp.path().join("state"), 2, Duration::from_secs(60)).await;
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
    let left: Vec<_> = std::fs::read_dir(&drop).unwrap().collect();
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
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    for n in 0..3 {
        drop_atomically(&drop, &format!("case-{n}"), |d| archive_case(d, n));
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    wait_receipts(&tmp.path().join("state"), 3, Duration::from_secs(60)).await;
    agent.stop();
    for command in ["status", "receipts", "check"] {
        // The reading end is closed before the command writes a byte: every write meets EPIPE.
        let mut child = bin()
            .arg(command)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
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
