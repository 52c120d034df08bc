//! Waiting for the platform's import is not work: a case whose values are set gives its upload slot back,
//! waits with the others (their items read together), is seen done promptly once its import finishes,
//! and after a `kill -9` waits on instead of being sent again.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use gc_hotfolder::journal::{CaseState, Journal, Step};
use gc_hotfolder::receipt::{Outcome, Receipt};
use serde_json::Value;

/// The sandbox's import delay in these tests: long beside uploading a tiny case, short for a test.
const IMPORT_DELAY: Duration = Duration::from_secs(3);

fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    SystemTime::from(t)
}

/// When each case waited for its import: [finished − import_wait, finished].
fn waits(rs: &[Receipt]) -> Vec<(SystemTime, SystemTime)> {
    rs.iter()
        .map(|r| {
            let t = r.timings.expect("the receipt has its timings");
            let end = at(&r.finished);
            (end - Duration::from_secs_f64(t.import_wait), end)
        })
        .collect()
}

/// The most cases that were waiting at one instant.
fn most_at_once(waits: &[(SystemTime, SystemTime)]) -> usize {
    waits
        .iter()
        .map(|(start, _)| {
            waits
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Requests the sandbox answered whose "METHOD pattern status" key starts with `prefix`.
fn requests(st: &Value, prefix: &str) -> u64 {
    st["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_cases_hold_no_upload_slot_are_read_together_and_are_seen_done_within_a_second() {
    let sb = sandbox_with(|o| o.import_delay = IMPORT_DELAY).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let n = 20u64;
    let cases = cases(&drop, 0..n, |i| format!("w{i:02}"), archive_case);
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    // One upload slot: were it held while waiting, no two cases could wait at once.
    edit(&cfg, "[limits]\n", "[limits]\nparallel_cases = 1\n");
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .arg("upload")
            .arg("--config")
            .arg(&cfg)
            .args(&cases)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rs = receipts(&tmp.path().join("state/receipts"));
    assert_eq!(rs.len(), n as usize);
    assert!(rs.iter().all(|r| r.outcome == Outcome::Delivered), "{rs:?}");

    let waits = waits(&rs);
    assert!(
        most_at_once(&waits) >= n as usize / 2,
        "cases waited one after another: {waits:?}"
    );
    // Seen done no later than a second after the platform set the case's last value (a fifth of the
    // wait would be less). That instant is the sandbox's own record: its imports of twenty cases at once
    // on a busy machine may take a while after the import delay ends, which is no client's doing.
    let st = state(&sb).await;
    for r in &rs {
        let waited = Duration::from_secs_f64(r.timings.unwrap().import_wait);
        assert!(
            waited >= IMPORT_DELAY - Duration::from_millis(200),
            "{}: waited {waited:?} for an import of {IMPORT_DELAY:?}",
            r.case
        );
        let item = item_titled(&st, "demo-archive", &r.title);
        let set = at(item["last_set"].as_str().expect("the sandbox says when"));
        let seen = at(&r.finished);
        let late = seen.duration_since(set).unwrap_or_default();
        assert!(
            late <= Duration::from_secs(1),
            "{}: seen {late:?} after its import ended (waited {waited:?})",
            r.case
        );
    }
    // Looked at together: far fewer reads than looking at each item (and its image's session) on each
    // case's own schedule, a dozen times per case for a 3 s import.
    let reads = requests(&st, "GET /api/v1/archives/items/")
        + requests(&st, "GET /api/v1/cases/upload-sessions/");
    assert!(
        reads <= 2 * n,
        "{reads} reads of items and sessions for {n} cases: {}",
        st["requests"]
    );
}

/// The cases of the journal, once every one of them waits for its import.
async fn all_waiting(state_dir: &std::path::Path, n: usize) {
    eventually(
        Duration::from_secs(60),
        "every case waiting for its import",
        async || {
            let cases = Journal::open(state_dir).ok()?.all().ok()?;
            let waiting = cases
                .iter()
                .filter(|c| {
                    c.state
                        == CaseState::Uploading {
                            step: Step::Verifying,
                        }
                })
                .count();
            (waiting == n).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_killed_while_it_waits_for_its_import_waits_on_and_is_never_sent_again() {
    // Long enough that the imports are still running when the agent is back.
    let delay = Duration::from_secs(8);
    let sb = sandbox_with(|o| o.import_delay = delay).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let n = 4u64;
    for i in 0..n {
        archive_case(&drop.join(format!("k{i}")), i);
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let log = tmp.path().join("agent.log");
    let state_dir = tmp.path().join("state");

    let agent = Agent::start(&cfg, &log);
    all_waiting(&state_dir, n as usize).await;
    agent.kill9();
    let before = state(&sb).await;
    let sent = requests(&before, "POST /api/v1/uploads/ 201");
    assert!(sent >= n, "{}", before["requests"]);

    let agent = Agent::start(&cfg, &log);
    let rs = wait_delivered(&state_dir, n as usize, Duration::from_secs(60)).await;
    agent.stop();
    let after = state(&sb).await;
    assert_eq!(
        requests(&after, "POST /api/v1/uploads/ 201"),
        sent,
        "nothing was uploaded again: {}",
        after["requests"]
    );
    assert_eq!(
        requests(&after, "PATCH /api/v1/archives/items/{pk}/ 200"),
        n,
        "one PATCH per case: {}",
        after["requests"]
    );
    let items = items_of(&after, "demo-archive");
    assert_eq!(items.len(), n as usize);
    for r in &rs {
        let item = items
            .iter()
            .find(|i| i["pk"] == r.item.as_ref().unwrap().pk.as_str())
            .expect("the receipt's item");
        assert_eq!(
            item["values"].as_array().unwrap().len(),
            r.sockets.len(),
            "{}: {item}",
            r.case
        );
        // The wait counts from the PATCH, across the restart.
        let waited = Duration::from_secs_f64(r.timings.unwrap().import_wait);
        assert!(
            waited >= delay - Duration::from_millis(200),
            "{}: {waited:?}",
            r.case
        );
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.matches("its values were set already: waiting for the platform's import")
            .count()
            >= n as usize,
        "the restart said each case waits on"
    );
}
