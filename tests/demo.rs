//! The README's first command, `gc-hotfolder demo`, as a new user runs it: its example cases are
//! delivered to the embedded sandbox (archive items, and one algorithm job whose results land in the
//! demo's results folder), and it stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::bin;

#[test]
fn the_demo_delivers_its_examples_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-drop");
    let mut child = bin()
        .args(["demo", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut said = Vec::new();
    while said.iter().filter(|l: &&String| l.starts_with('✔')).count() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                assert!(!line.starts_with('✘'), "{line}\n{}", said.join("\n"));
                said.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the demo did not deliver its 4 examples:\n{}",
                    said.join("\n")
                );
            }
        }
    }
    let text = said.join("\n");
    for case in ["case-001-metaimage", "case-002-nifti", "case-003-dicom"] {
        assert!(
            text.contains(&format!("✔ {case} → archive item ")),
            "{text}"
        );
    }
    assert!(text.contains("✔ patient-001 → algorithm job "), "{text}");
    let results = dir.join("results/patient-001");
    let volume: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("lung-volume.json")).unwrap()).unwrap();
    assert_eq!(volume, 24.0 * 24.0 * 8.0, "the voxels of the example CT");

    // SIGTERM, as systemd or Ctrl-C would stop it: a clean exit.
    let pid = child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
