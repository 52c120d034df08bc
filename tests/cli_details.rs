//! The small things a new operator meets first: manual pages per command, exit codes for paths outside
//! every drop folder, a pull of a misspelled target that leaves nothing behind, the sandbox naming its
//! sockets, receipts and log lines that say what the case held and where it went.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::Outcome;

#[test]
fn every_command_has_a_manual_page_with_exit_status_environment_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["man", "--out-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for name in [
        "gc-hotfolder",
        "gc-hotfolder-run",
        "gc-hotfolder-check",
        "gc-hotfolder-upload",
        "gc-hotfolder-pull",
        "gc-hotfolder-status",
    ] {
        let page = std::fs::read_to_string(tmp.path().join(format!("{name}.1"))).unwrap();
        for section in [
            ".SH \"EXIT STATUS\"",
            ".SH \"ENVIRONMENT\"",
            ".SH \"FILES\"",
            "GC_HOTFOLDER_CONFIG",
            "/etc/gc-hotfolder/config.toml",
        ] {
            assert!(page.contains(section), "{name}: no {section}:\n{page}");
        }
    }
    let check = std::fs::read_to_string(tmp.path().join("gc-hotfolder-check.1")).unwrap();
    assert!(check.contains("a drop folder does not exist"), "{check}");
    assert!(check.contains("\\-\\-online"), "{check}");

    // One page to stdout.
    let out = bin().args(["man", "run"]).output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && page.contains(".SH \"EXIT STATUS\""),
        "{page}"
    );
    let out = bin().args(["man", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_every_drop_folder_and_unknown_targets_are_usage_errors() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let elsewhere = tmp.path().join("elsewhere/case-1");
    archive_case(&elsewhere, 0);

    let out = gc("explain", &cfg).arg(&elsewhere).run();
    let said = out.stdout.clone();
    out.expect(2);
    assert!(said.contains("not inside any drop folder"), "{said}");

    let out = gc("upload", &cfg).arg(&elsewhere).run();
    let said = out.stderr.clone();
    out.expect(2);
    assert!(said.contains("is not inside any [[folder]]"), "{said}");
    assert!(items_of(&state(&sb).await, "demo-archive").is_empty());

    let dest = tmp.path().join("pulled");
    let out = gc("pull", &cfg)
        .arg("--archive")
        .arg("demo-archvie")
        .arg(&dest)
        .run();
    let said = out.stderr.clone();
    out.expect(2);
    assert!(said.contains("demo-archvie"), "{said}");
    assert!(
        !dest.exists(),
        "pull of an unknown archive created {}",
        dest.display()
    );
}

#[test]
fn the_sandbox_names_its_sockets_at_start() {
    let mut child = bin()
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let end = line.starts_with("Stop with");
        lines.push(line);
        if end {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = lines.join("\n");
    assert!(text.contains("Sockets (slug: kind):"), "{text}");
    assert!(text.contains("  lesion-count: Integer"), "{text}");
    assert!(text.contains("  report: PDF file"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_list_what_a_case_held_and_logs_say_where_a_case_went() {
    let Site { sb, tmp, drop } = site().await;
    let done = tmp.path().join("done");
    // No image at all: the receipt lists what the case held instead.
    drop_atomically(&drop, "no-image", |d| {
        std::fs::create_dir_all(d.join("scans")).unwrap();
        std::fs::write(d.join("scans/ct.nrrd"), b"not what the rule wants").unwrap();
        std::fs::write(d.join("count.json"), "3").unwrap();
    });
    // Delivered, with one file no rule takes.
    drop_atomically(&drop, "extra", |d| {
        archive_case(d, 0);
        std::fs::write(d.join("notes.docx"), b"left behind").unwrap();
    });
    let extra = format!(
        "after = \"move:{}\"\nquarantine = \"{}\"",
        done.display(),
        tmp.path().join("quarantine").display()
    );
    let cfg = write_config(tmp.path(), &sb, &drop, None, &extra);
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let state_dir = tmp.path().join("state");
    let rs = wait_receipts(&state_dir, 2, Duration::from_secs(60)).await;
    let bad = rs.iter().find(|r| r.case == "no-image").unwrap();
    assert_eq!(bad.outcome, Outcome::Quarantined);
    let reason = bad.reason.as_deref().unwrap();
    assert!(
        reason.contains("no file matches")
            && reason.contains("the case holds: count.json, scans/ct.nrrd"),
        "{reason}"
    );
    let good = rs.iter().find(|r| r.case == "extra").unwrap();
    assert_eq!(good.outcome, Outcome::Delivered, "{:?}", good.reason);
    agent
        .wait_log(
            "1 file(s) of the case matched no socket rule and were not sent: notes.docx",
            1,
        )
        .await;
    agent
        .wait_log(
            &format!(
                "post-action done: moved to {}",
                done.join("extra").display()
            ),
            1,
        )
        .await;
    assert!(!agent.log().contains("Move(\""), "{}", agent.log());
    // Both receipts name where their case is now.
    let now_at = |case: &'static str| {
        let dir = state_dir.join("receipts");
        async move {
            receipts(&dir)
                .into_iter()
                .find(|r| r.case == case)
                .and_then(|r| r.now_at)
        }
    };
    let at = eventually(Duration::from_secs(10), "the moved receipt", async || {
        now_at("extra").await
    })
    .await;
    assert_eq!(at, done.join("extra").display().to_string());
    let at = eventually(
        Duration::from_secs(10),
        "the quarantined receipt",
        async || now_at("no-image").await,
    )
    .await;
    assert_eq!(
        at,
        tmp.path().join("quarantine/no-image").display().to_string()
    );
    agent.stop();
}

/// `gc-hotfolder sandbox`: its help documents faults and recording, the flags apply, SIGTERM stops it.
#[test]
fn the_sandbox_command_serves_until_sigterm() {
    let bin = env!("CARGO_BIN_EXE_gc-hotfolder");
    let help = std::process::Command::new(bin)
        .args(["sandbox", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        help.contains("--fault")
            && help.contains("retry-after=SECONDS")
            && help.contains("--import-delay")
            && help.contains("--record <DIR>")
            && help.contains("REQUEST RECORDING"),
        "{help}"
    );
    let requests = tempfile::tempdir().unwrap();

    let mut child = std::process::Command::new(bin)
        .args([
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--import-delay",
            "10ms",
            "--fault",
            "GET /api/v1/gcapi/ 503 times=1",
            "--record",
        ])
        .arg(requests.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut base = None;
    let mut saw_token = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("Grand Challenge sandbox: ") {
            base = Some(url.trim().to_string());
        }
        saw_token |= line.contains(gc_sandbox::DEMO_TOKEN);
        if line.starts_with("Stop with") {
            break;
        }
    }
    let base = base.expect("the base URL is printed");
    assert!(
        saw_token,
        "the demo tokens are printed for the demo fixture"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = gc_testkit::http::client();
        let gcapi = async || http.get(format!("{base}gcapi/")).send().await.unwrap();
        assert_eq!(gcapi().await.status(), 503, "--fault applies");
        assert_eq!(gcapi().await.status(), 200);
    });
    let recorded: Vec<String> = gc_sandbox::recorder::read(requests.path())
        .unwrap()
        .iter()
        .map(|r| r.request_line())
        .collect();
    assert_eq!(
        recorded,
        ["GET /api/v1/gcapi/ HTTP/1.1", "GET /api/v1/gcapi/ HTTP/1.1"],
        "--record writes every request"
    );
    // SIGTERM → graceful stop, exit 0.
    let pid = child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
