//! Algorithm folders end to end: the agent process turns each case into one job on the sandbox's
//! algorithm, follows it and writes its outputs to the outbox; compared with what the sandbox holds.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gc_content::samples;
use gc_hotfolder::receipt::{Outcome, Receipt};
use gc_sandbox::Sandbox;
use serde_json::Value;
use sha2::Digest;

/// A config with one drop folder for `algorithm`, the CT image of each case going to `ct-image`.
fn algorithm_config(dir: &Path, sb: &Sandbox, drop: &Path, algorithm: &str) -> PathBuf {
    let text = format!(
        "[server]\nurl = \"{}\"\ntoken = \"{}\"\nstate_dir = \"{}\"\n\n[limits]\npart_size = \"5MiB\"\n\n\
         [agent]\nretry_first = \"300ms\"\nretry_max = \"2s\"\nauth_pause = \"2s\"\nshutdown_grace = \"5s\"\n\n\
         [[folder]]\npath = \"{}\"\nalgorithm = \"{algorithm}\"\nquiet = \"1s\"\n\n\
         [[folder.socket]]\nslug = \"ct-image\"\nfiles = \"ct.mha\"\n",
        sb.base_url(),
        gc_sandbox::DEMO_TOKEN,
        dir.join("state").display(),
        drop.display()
    );
    let path = dir.join("gc-hotfolder.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A temporary folder with an empty drop folder for `algorithm` and its config: (dir, drop, config).
fn algorithm_drop(sb: &Sandbox, algorithm: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = algorithm_config(tmp.path(), sb, &drop, algorithm);
    (tmp, drop, cfg)
}

/// A case holding one CT image of `n`-dependent size, so every case's outputs differ.
fn ct_case(drop: &Path, name: &str, n: u64) {
    drop_atomically(drop, name, |dir| {
        std::fs::create_dir_all(dir).unwrap();
        let size = [4 + (n % 5) as u32, 3 + (n % 3) as u32, 2];
        samples::write_mha(&dir.join("ct.mha"), size, n).unwrap();
    });
}

/// Every job of an algorithm in the sandbox's state.
fn jobs_of(state: &Value, slug: &str) -> Vec<Value> {
    state["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["slug"] == slug)
        .flat_map(|a| a["jobs"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The outbox folder holds exactly the job's outputs, byte for byte as the sandbox stores them: the
/// lung volume as JSON, the results file, the image copy under its socket's folder.
fn assert_outbox_matches(folder: &Path, job: &Value) {
    let outputs = job["outputs"].as_array().unwrap();
    let out = |slug: &str| outputs.iter().find(|o| o["socket"] == slug).unwrap();
    let image_file = &out("generic-medical-image")["image"]["files"][0];
    let image_rel = format!(
        "images/generic-medical-image/{}",
        image_file["name"].as_str().unwrap()
    );
    assert_eq!(
        tree(folder).into_keys().collect::<Vec<_>>(),
        [
            image_rel.clone(),
            "lung-volume.json".to_string(),
            "results.json".to_string()
        ],
        "{}",
        folder.display()
    );
    let volume: Value =
        serde_json::from_slice(&std::fs::read(folder.join("lung-volume.json")).unwrap()).unwrap();
    assert_eq!(volume, out("lung-volume")["value"], "{}", folder.display());
    assert_eq!(
        sha256(&folder.join("results.json")),
        out("results-json")["file"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        sha256(&folder.join(image_rel)),
        image_file["sha256"].as_str().unwrap()
    );
}

/// Each delivered receipt names its own job, which the sandbox ran once, and its outbox folder matches
/// that job's outputs. Returns the receipts by case.
fn check_jobs(st: &Value, rs: &[Receipt], outbox: &Path, n: usize) {
    let jobs = jobs_of(st, "lung-volume-estimator");
    assert_eq!(jobs.len(), n, "one job per case, no more: {jobs:#?}");
    let mut pks: Vec<&str> = rs
        .iter()
        .map(|r| r.job.as_ref().expect("a job in the receipt").pk.as_str())
        .collect();
    pks.sort();
    pks.dedup();
    assert_eq!(pks.len(), n, "every case its own job");
    for r in rs {
        assert_eq!(r.outcome, Outcome::Delivered, "{r:?}");
        let done = r.job.as_ref().unwrap();
        assert_eq!(done.status, "Succeeded");
        let job = jobs.iter().find(|j| j["pk"] == done.pk.as_str()).unwrap();
        assert_eq!(job["status"], "Succeeded");
        let folder = outbox.join(&r.case);
        assert_eq!(Path::new(&done.outbox), folder);
        assert_outbox_matches(&folder, job);
        // The job's input is the case's own image, byte for byte: a job is never another case's.
        let input = &job["inputs"][0];
        assert_eq!(input["socket"], "ct-image");
        let sent = r.sockets[0].files[0].sent_sha256.as_str();
        assert_eq!(
            input["image"]["files"][0]["sha256"].as_str(),
            Some(sent),
            "{}: {input}",
            r.case
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_case_becomes_one_job_whose_outputs_land_in_the_outbox() {
    let sb = sandbox().await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    for i in 0..3 {
        ct_case(&drop, &format!("patient-{i}"), i);
    }
    let rs = wait_receipts(&tmp.path().join("state"), 3, Duration::from_secs(60)).await;
    agent.stop();
    let outbox = tmp.path().join("outbox");
    check_jobs(&sb.state(), &rs, &outbox, 3);
    assert!(
        !outbox.join(gc_hotfolder::outbox::STAGING_DIR).exists()
            || std::fs::read_dir(outbox.join(gc_hotfolder::outbox::STAGING_DIR))
                .unwrap()
                .next()
                .is_none(),
        "nothing half-written is left beside the results"
    );

    // A restart starts no job again.
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    ct_case(&drop, "patient-9", 9);
    let rs = wait_receipts(&tmp.path().join("state"), 4, Duration::from_secs(60)).await;
    agent.stop();
    check_jobs(&sb.state(), &rs, &outbox, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_quarantines_its_case_with_what_the_platform_says_and_others_go_on() {
    let sb = sandbox().await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "failing-algorithm");
    // Two folders of the same agent: the failing algorithm's and the good one's.
    let good_drop = tmp.path().join("good");
    std::fs::create_dir_all(&good_drop).unwrap();
    append(
        &cfg,
        &format!(
            "\n[[folder]]\npath = \"{}\"\nalgorithm = \"lung-volume-estimator\"\nquiet = \"1s\"\n\
         outbox = \"{}\"\n\n[[folder.socket]]\nslug = \"ct-image\"\nfiles = \"ct.mha\"\n",
            good_drop.display(),
            tmp.path().join("good-outbox").display()
        ),
    );
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    ct_case(&drop, "bad-case", 1);
    ct_case(&good_drop, "good-case", 2);
    let rs = wait_receipts(&tmp.path().join("state"), 2, Duration::from_secs(60)).await;
    agent.stop();
    let bad = rs.iter().find(|r| r.case == "bad-case").unwrap();
    let good = rs.iter().find(|r| r.case == "good-case").unwrap();
    assert_eq!(bad.outcome, Outcome::Quarantined, "{bad:?}");
    let st = sb.state();
    let jobs = jobs_of(&st, "failing-algorithm");
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let reason = bad.reason.as_deref().unwrap();
    let pk = jobs[0]["pk"].as_str().unwrap();
    assert!(reason.contains(pk), "{reason}");
    assert!(reason.contains("ended Failed"), "{reason}");
    assert!(
        reason.contains(&format!("/algorithms/failing-algorithm/jobs/{pk}/")),
        "the job's page, where the platform shows its error: {reason}"
    );
    assert_eq!(bad.item.as_ref().map(|i| i.pk.as_str()), Some(pk));
    assert!(!tmp.path().join("outbox").join("bad-case").exists());
    assert_eq!(good.outcome, Outcome::Delivered, "{good:?}");
    assert!(
        tmp.path()
            .join("good-outbox/good-case/lung-volume.json")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_whose_inputs_match_no_interface_starts_no_job() {
    let sb = sandbox().await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    // Either socket alone is an interface; both together are none.
    edit(
        &cfg,
        "files = \"ct.mha\"\n",
        "files = \"ct.mha\"\noptional = true\n\n[[folder.socket]]\nslug = \"lesion-count\"\nvalue_file = \"count.json\"\noptional = true\n",
    );
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    drop_atomically(&drop, "both", |dir| {
        std::fs::create_dir_all(dir).unwrap();
        samples::write_mha(&dir.join("ct.mha"), [4, 4, 2], 1).unwrap();
        std::fs::write(dir.join("count.json"), "3").unwrap();
    });
    drop_atomically(&drop, "count-only", |dir| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("count.json"), "3").unwrap();
    });
    let rs = wait_receipts(&tmp.path().join("state"), 2, Duration::from_secs(60)).await;
    agent.stop();
    let both = rs.iter().find(|r| r.case == "both").unwrap();
    assert_eq!(both.outcome, Outcome::Quarantined);
    let reason = both.reason.as_deref().unwrap();
    assert!(
        reason.contains("match no interface") && reason.contains("no job was started"),
        "{reason}"
    );
    let single = rs.iter().find(|r| r.case == "count-only").unwrap();
    assert_eq!(single.outcome, Outcome::Delivered, "{single:?}");
    let jobs = jobs_of(&sb.state(), "lung-volume-estimator");
    assert_eq!(jobs.len(), 1, "only the good case ran: {jobs:#?}");
    assert_eq!(jobs[0]["inputs"][0]["value"], 3);
}

/// Waiting at the limit shows in `status` (the case's note) and in the metrics (postponed deliveries
/// of class `job_limit`), and no case is quarantined for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_of_jobs_at_once_cases_wait_instead_of_failing() {
    let sb = sandbox_with(|o| {
        for a in &mut o.fixture.algorithms {
            a.max_active_jobs_per_user = Some(1);
            a.duration = Duration::from_millis(1500);
        }
    })
    .await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    for i in 0..3 {
        ct_case(&drop, &format!("w{i}"), i);
    }
    append(&cfg, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let waiting = eventually(
        Duration::from_secs(60),
        "a case waiting at the limit in status",
        async || {
            let cfg = cfg.clone();
            let out = tokio::task::spawn_blocking(move || {
                bin()
                    .args(["status", "--config"])
                    .arg(&cfg)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("have not finished yet").then_some(text)
        },
    )
    .await;
    assert!(waiting.contains("note: w"), "{waiting}");
    let rs = wait_receipts(&tmp.path().join("state"), 3, Duration::from_secs(90)).await;
    let metrics = metrics_of(&agent).await;
    agent.stop();
    check_jobs(&sb.state(), &rs, &tmp.path().join("outbox"), 3);
    let retried = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gc_hotfolder_delivery_retries_total{class=\"job_limit\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(retried > 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cases_under_kill_9_and_faults_make_twenty_jobs_and_complete_outboxes() {
    let rules = [
        // Jobs started whose answer is lost: found again, never started twice.
        "POST /api/v1/algorithms/jobs/ 502 after p=0.6",
        // And 10 % of every other request to the API fails one way or another.
        "/api/* 503 p=0.04",
        "/api/* drop p=0.03",
        "/api/* 502 after p=0.03",
        "/s3/* 503 p=0.01",
        "/media/* 500 p=0.01",
    ];
    let sb = sandbox_with(|o| {
        o.faults = rules
            .iter()
            .map(|r| r.parse().expect("a fault rule"))
            .collect();
        o.seed = Some(11);
        for a in &mut o.fixture.algorithms {
            a.duration = Duration::from_millis(300);
        }
    })
    .await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    let n = 20u64;
    for i in 0..n {
        ct_case(&drop, &format!("c{i:02}"), i);
    }
    let log = tmp.path().join("agent.log");
    let state_dir = tmp.path().join("state");
    let kills = kill_9_repeatedly(&cfg, &log, &state_dir, n as usize, 0x9e37_79b9_7f4a_7c15).await;
    let agent = Agent::start(&cfg, &log);
    let rs = wait_delivered(&state_dir, n as usize, Duration::from_secs(180)).await;
    agent.stop();
    assert!(kills >= 3, "the agent was killed only {kills} times");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("found the job an earlier attempt started"),
        "a job whose answer was lost was found again"
    );
    let st = sb.state();
    check_jobs(&st, &rs, &tmp.path().join("outbox"), n as usize);
    let faulted = answered_with(&st, &["502", "503", "500"]);
    assert!(faulted > 0, "the faults fired: {}", st["requests"]);
}

/// `gc-hotfolder upload` on cases of an algorithm folder: one job each, waited for (also at the
/// account's limit of one job at once), outputs in the outbox; asked again, it starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_runs_the_given_cases_as_jobs_once() {
    let sb = sandbox_with(|o| {
        for a in &mut o.fixture.algorithms {
            a.max_active_jobs_per_user = Some(1);
        }
    })
    .await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    ct_case(&drop, "u1", 1);
    ct_case(&drop, "u2", 2);
    let run = {
        let (cfg, drop) = (cfg.clone(), drop.clone());
        move || {
            bin()
                .args(["upload", "-c"])
                .arg(&cfg)
                .arg(drop.join("u1"))
                .arg(drop.join("u2"))
                .output()
                .unwrap()
        }
    };
    let out = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("delivered u1 → job "), "{text}");
    assert!(text.contains("Succeeded, outputs in "), "{text}");
    assert!(
        text.contains("have not finished yet"),
        "the two cases go at once and meet the limit: {text}"
    );
    let rs = receipts(&tmp.path().join("state/receipts"));
    check_jobs(&sb.state(), &rs, &tmp.path().join("outbox"), 2);

    let again = tokio::task::spawn_blocking(run).await.unwrap();
    let text = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success(), "{text}");
    assert!(text.contains("already delivered u1"), "{text}");
    assert_eq!(jobs_of(&sb.state(), "lung-volume-estimator").len(), 2);
}

/// New content in a case whose job ran gets a new job, whose results replace the earlier ones whole; a
/// case whose job failed gets a new job when it is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_case_runs_again_and_its_results_replace_the_earlier_ones() {
    let sb = sandbox().await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    ct_case(&drop, "again", 1);
    let first = wait_delivered(&tmp.path().join("state"), 1, Duration::from_secs(60)).await;
    let first_job = first[0].job.clone().unwrap();
    let outbox = tmp.path().join("outbox");
    let volume = |p: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(p.join("again/lung-volume.json")).unwrap()).unwrap()
    };
    assert_eq!(volume(&outbox), 5.0 * 4.0 * 2.0);

    // The image is replaced by a bigger one (written beside, renamed over, as an exporter would).
    let bigger = tmp.path().join("bigger.mha");
    samples::write_mha(&bigger, [6, 5, 2], 7).unwrap();
    std::fs::rename(&bigger, drop.join("again/ct.mha")).unwrap();
    let second = eventually(
        Duration::from_secs(60),
        "a second job's receipt",
        async || {
            let rs = receipts(&tmp.path().join("state/receipts"));
            rs.into_iter()
                .find(|r| r.job.as_ref().is_some_and(|j| j.pk != first_job.pk))
        },
    )
    .await;
    agent.stop();
    assert_eq!(second.outcome, Outcome::Delivered);
    let jobs = jobs_of(&sb.state(), "lung-volume-estimator");
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    let job = jobs
        .iter()
        .find(|j| j["pk"] == second.job.as_ref().unwrap().pk.as_str())
        .unwrap();
    assert_outbox_matches(&outbox.join("again"), job);
    assert_eq!(volume(&outbox), 6.0 * 5.0 * 2.0);
    let staging = outbox.join(gc_hotfolder::outbox::STAGING_DIR);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_whose_job_failed_gets_a_new_job_when_retried() {
    let sb = sandbox().await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "failing-algorithm");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    ct_case(&drop, "flaky", 1);
    let rs = wait_receipts(&tmp.path().join("state"), 1, Duration::from_secs(60)).await;
    assert_eq!(rs[0].outcome, Outcome::Quarantined);
    // The receipt is written before the journal records the quarantine: retry once the journal has it,
    // as an admin who reads `status` would.
    eventually(
        Duration::from_secs(30),
        "the journal's quarantine",
        async || {
            let out = gc("status", &cfg).arg("--json").run_async().await;
            let status: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let folders = status.as_array()?;
            folders
                .iter()
                .any(|f| f["quarantined"].as_array().is_some_and(|q| !q.is_empty()))
                .then_some(())
        },
    )
    .await;
    gc("retry", &cfg)
        .arg(drop.join("flaky"))
        .run_async()
        .await
        .expect(0);
    eventually(Duration::from_secs(60), "a second job", async || {
        (jobs_of(&sb.state(), "failing-algorithm").len() == 2).then_some(())
    })
    .await;
    let again = eventually(Duration::from_secs(60), "its second receipt", async || {
        receipts(&tmp.path().join("state/receipts"))
            .into_iter()
            .find(|r| r.attempts >= 2 && r.outcome == Outcome::Quarantined)
    })
    .await;
    agent.stop();
    let jobs = jobs_of(&sb.state(), "failing-algorithm");
    assert_eq!(
        jobs.len(),
        2,
        "one new job for the retry, no more: {jobs:#?}"
    );
    let second = jobs[1]["pk"].as_str().unwrap();
    assert!(
        again.reason.as_deref().unwrap().contains(second),
        "{again:?}"
    );
}

/// Cases two levels down (one folder per site) keep their place in the outbox: two sites' cases of one
/// name are two jobs and two result folders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_of_one_name_from_two_sites_get_their_own_result_folders() {
    let sb = sandbox().await;
    let (tmp, drop, cfg) = algorithm_drop(&sb, "lung-volume-estimator");
    edit(&cfg, "quiet = \"1s\"\n", "quiet = \"1s\"\ndepth = 2\n");
    for (i, site) in ["site-a", "site-b"].iter().enumerate() {
        std::fs::create_dir_all(drop.join(site)).unwrap();
        ct_case(&drop.join(site), "p1", i as u64);
    }
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_delivered(&tmp.path().join("state"), 2, Duration::from_secs(60)).await;
    agent.stop();
    let mut cases: Vec<&str> = rs.iter().map(|r| r.case.as_str()).collect();
    cases.sort();
    assert_eq!(cases, ["site-a/p1", "site-b/p1"]);
    check_jobs(&sb.state(), &rs, &tmp.path().join("outbox"), 2);
}

/// `check --online` and the agent's start: an algorithm folder's sockets must make up one of the
/// algorithm's interfaces exactly; optional sockets may be left out of it.
#[tokio::test]
async fn an_algorithm_folder_is_checked_against_the_interfaces() {
    let sb = gc_testkit::client::sandbox().await;
    let c = gc_testkit::client::client(&sb);
    let cfg = |sockets: &str| {
        let text = format!(
            "[server]\nurl = \"{}\"\ntoken = \"x\"\nstate_dir = \"/tmp/state\"\n\n[[folder]]\n\
             path = \"/srv/drop/ct\"\nalgorithm = \"lung-volume-estimator\"\n{sockets}",
            sb.base_url()
        );
        gc_hotfolder::config::Config::parse(std::path::Path::new("/etc/gc/hot.toml"), &text)
            .unwrap()
    };
    let image = "  [[folder.socket]]\n  slug = \"ct-image\"\n  files = \"*.mha\"\n";
    let count = "  [[folder.socket]]\n  slug = \"lesion-count\"\n  value = 3\n";
    let optional_count = format!("{count}  optional = true\n");
    use gc_hotfolder::preflight::{Verdict, check_folder};
    for (sockets, usable) in [
        (image.to_owned(), true),
        (count.to_owned(), true),
        (format!("{image}{optional_count}"), true),
        (format!("{image}{count}"), false),
        (
            "  [[folder.socket]]\n  slug = \"lung-volume\"\n  value = 1.5\n".to_owned(),
            false,
        ),
    ] {
        let config = cfg(&sockets);
        let check = check_folder(&c, &config.folders[0]).await;
        let text = check.lines.join("\n");
        match (&check.verdict, usable) {
            (Verdict::Usable, true) => assert!(text.contains("fit its interface"), "{text}"),
            (Verdict::Unusable(why), false) => assert!(
                why.contains(
                    "make up none of its interfaces, which take [ct-image] or [lesion-count]"
                ),
                "{why}"
            ),
            (other, _) => panic!("{sockets}: {other:?}\n{text}"),
        }
    }
}
