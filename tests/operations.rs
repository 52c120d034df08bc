//! Operating a running agent: Prometheus metrics and `/status`, webhook alerts to a local receiver, and
//! `retry` taken up by the running agent without any change to the case.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::Outcome;
use serde_json::Value;

async fn get(url: String) -> reqwest::Response {
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r
}

/// The value of one sample line `series value` in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_alerts_and_a_retry_of_a_running_agent() {
    // The first PATCH of values is refused with a 400: that case is quarantined in the server's words.
    // One part PUT meets a busy storage (503) and is retried.
    let sb = sandbox_with(|o| {
        o.faults = vec![
            "PATCH /api/v1/archives/items/* 400 times=1"
                .parse()
                .unwrap(),
            "PUT /s3/* 503 times=1".parse().unwrap(),
        ]
    })
    .await;
    // Down at first: the alert must be retried to arrive.
    let hook = receiver(true).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    for (i, name) in ["Jane_Doe_1962", "John_Roe_1970", "Max_Mustermann_1955"]
        .iter()
        .enumerate()
    {
        drop_atomically(&drop, name, |d| archive_case(d, i as u64 * 5));
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    append(
        &cfg,
        &format!(
            "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[notify]]\nurl = \"{}\"\n",
            hook.url
        ),
    );
    let state_dir = tmp.path().join("state");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let addr = metrics_addr(&agent).await;

    let receipts = wait_receipts(&state_dir, 3, Duration::from_secs(60)).await;
    let quarantined: Vec<_> = receipts
        .iter()
        .filter(|r| r.outcome == Outcome::Quarantined)
        .collect();
    assert_eq!(quarantined.len(), 1, "{receipts:?}");
    let bad = quarantined[0].case.clone();

    // The alert: retried past the receiver's 503, about the right case, without its name.
    hook.wait_posts(1).await;
    hook.down.store(false, Ordering::SeqCst);
    let alert = hook.wait_for("quarantined").await;
    assert!(hook.posts.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        alert["case_id"],
        gc_hotfolder::rules::case_id(&drop, &bad).as_str()
    );
    assert_eq!(alert["state"], "quarantined");
    assert_eq!(alert["folder"], drop.display().to_string().as_str());
    assert_eq!(alert["target"]["slug"], "demo-archive");
    says(&alert, "reason", "400");
    let text = alert.to_string();
    for name in ["Jane", "John", "Max"] {
        assert!(!text.contains(name), "patient data in the alert: {text}");
    }

    // `/status` names the case of the alert by the same id.
    let status: Value = get(format!("http://{addr}/status"))
        .await
        .json()
        .await
        .unwrap();
    let q = &status["folders"][0]["quarantined"][0];
    assert_eq!(
        (&q["case"], &q["case_id"]),
        (&Value::from(bad.as_str()), &alert["case_id"])
    );

    // Prometheus text: the journal's counts, and what was uploaded.
    let metrics = get(format!("http://{addr}/metrics")).await;
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = metrics.text().await.unwrap();
    let folder = drop.display().to_string();
    let cases = |state: &str| {
        sample(
            &text,
            &format!("gc_hotfolder_cases{{folder=\"{folder}\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(cases("delivered"), Some(2.0), "{text}");
    assert_eq!(cases("quarantined"), Some(1.0), "{text}");
    assert!(sample(&text, "gc_hotfolder_uploaded_files_total").unwrap() >= 2.0);
    assert!(sample(&text, "gc_hotfolder_uploaded_bytes_total").unwrap() > 0.0);
    assert_eq!(
        sample(
            &text,
            "gc_hotfolder_request_retries_total{cause=\"http_503\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gc_hotfolder_deliveries_total{outcome=\"quarantined\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "gc_hotfolder_watch_scans_total{reason=\"startup\"}"),
        Some(1.0)
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {line}"
        );
    }

    // retry: the case did not change, so only the request through the journal brings it back, long
    // before the next reconciliation scan (10 minutes away).
    gc("retry", &cfg).arg("--quarantined").run().expect(0);
    let receipts = wait_receipts_until(&state_dir, Duration::from_secs(20), |r| {
        r.iter().all(|r| r.outcome == Outcome::Delivered) && r.len() == 3
    })
    .await;
    assert_eq!(receipts.iter().find(|r| r.case == bad).unwrap().attempts, 2);
    agent.wait_log("retry requested", 1).await;

    // The receipts and status commands, from another process, while the agent runs.
    let out = gc("receipts", &cfg).run();
    let listing = out.stdout.clone();
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(
        listing.lines().all(|l| l.contains("Delivered")),
        "{listing}"
    );
    let out = gc("receipts", &cfg).arg(drop.join(&bad)).run();
    let receipt: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (receipt["case"].as_str(), receipt["attempts"].as_u64()),
        (Some(bad.as_str()), Some(2))
    );
    let out = gc("status", &cfg).run();
    let text = out.stdout.clone();
    assert!(text.contains("cases: 3 delivered"), "{text}");
    assert!(text.contains(&format!("last delivery: {bad}")), "{text}");

    // /status: the same report as `status --json`, plus the agent's own view.
    let status = eventually(Duration::from_secs(10), "nothing pending", async || {
        let v: Value = get(format!("http://{addr}/status"))
            .await
            .json()
            .await
            .unwrap();
        (v["agent"]["pending"] == 0 && v["folders"][0]["counts"]["delivered"] == 3).then_some(v)
    })
    .await;
    assert_eq!(status["folders"][0]["folder"], folder.as_str());
    assert_eq!(status["agent"]["in_flight"], 0);
    assert!(status["uptime_seconds"].is_u64());
    assert_eq!(status["folders"][0]["quarantined"], serde_json::json!([]));
    agent.stop();
    let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    assert!(log.contains("cannot send an alert"), "the 503 was logged");
    assert!(
        !log.contains("s3cr3t-hook-key"),
        "the webhook's key is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_cases_and_a_refused_token_raise_alerts() {
    // The platform refuses the token once, while creating the first item.
    let sb = sandbox_with(|o| {
        o.faults = vec!["POST /api/v1/archives/items/ 401 times=1".parse().unwrap()]
    })
    .await;
    let hook = receiver(false).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    drop_atomically(&drop, "complete", |d| {
        archive_case(d, 0);
        std::fs::write(d.join("DONE"), "").unwrap();
    });
    drop_atomically(&drop, "never-finished", |d| archive_case(d, 2));
    let cfg = write_config(
        tmp.path(),
        &sb,
        &drop,
        None,
        "marker = \"DONE\"\nmax_wait = \"2s\"",
    );
    // A pause long enough for `status` to see it.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("auth_pause = \"2s\"", "auth_pause = \"6s\""),
    )
    .unwrap();
    append(&cfg, &format!("\n[[notify]]\nurl = \"{}\"\n", hook.url));
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));

    let stuck = hook.wait_for("stuck").await;
    assert_eq!(
        stuck["case_id"],
        gc_hotfolder::rules::case_id(&drop, "never-finished").as_str()
    );
    assert_eq!(stuck["state"], "settling");
    says(&stuck, "reason", "completion marker is missing");

    let auth = hook.wait_for("auth_failed").await;
    assert_eq!(auth["case_id"], Value::Null);
    assert_eq!(auth["state"], "paused");
    assert_eq!(auth["target"]["kind"], "archive");
    let out = gc("status", &cfg).arg("--json").run();
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    let paused = &status[0]["target_paused"];
    assert!(
        paused[1].as_str().unwrap().contains("refused the token"),
        "{status}"
    );
    // After the pause the target is tried again, and the case arrives.
    let r = receipt_for(&tmp.path().join("state"), "complete").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{r:?}");
    let alerts = hook.alerts.lock().unwrap().clone();
    assert_eq!(
        alerts.iter().filter(|a| a["event"] == "stuck").count(),
        1,
        "a stuck case is reported once: {alerts:?}"
    );
    agent.stop();
}

#[test]
fn a_metrics_address_in_use_stops_the_start_with_the_config_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sb = rt.block_on(sandbox());
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    append(&cfg, &format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    let out = gc("run", &cfg).run();
    let stderr = out.stderr.clone();
    out.expect(2);
    assert!(
        stderr.contains(&format!("metrics.listen: cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains(&cfg.display().to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_survives_a_crash_of_the_agent() {
    let Site { sb, tmp, drop } = site().await;
    let hook = receiver(true).await;
    drop_atomically(&drop, "broken", |d| {
        archive_case(d, 0);
        std::fs::write(d.join("count.json"), "{not json").unwrap();
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    append(&cfg, &format!("\n[[notify]]\nurl = \"{}\"\n", hook.url));
    let log = tmp.path().join("agent.log");
    let agent = Agent::start(&cfg, &log);
    let r = receipt_for(&tmp.path().join("state"), "broken").await;
    assert_eq!(r.outcome, Outcome::Quarantined);
    // The receiver refused it once: the alert is queued, and then the agent dies.
    hook.wait_posts(1).await;
    agent.kill9();
    hook.down.store(false, Ordering::SeqCst);
    let agent = Agent::start(&cfg, &log);
    let alert = hook.wait_for("quarantined").await;
    assert_eq!(
        alert["case_id"],
        gc_hotfolder::rules::case_id(&drop, "broken").as_str()
    );
    agent.stop();
    let alerts = hook.alerts.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "sent once: {alerts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_brings_a_case_back_from_the_quarantine_folder() {
    // The first PATCH is refused: the case is quarantined and moved to the quarantine folder.
    let sb = sandbox_with(|o| {
        o.faults = vec![
            "PATCH /api/v1/archives/items/* 400 times=1"
                .parse()
                .unwrap(),
        ]
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let quarantine = tmp.path().join("quarantine");
    drop_atomically(&drop, "p1", |d| archive_case(d, 2));
    let extra = format!("quarantine = \"{}\"", quarantine.display());
    let cfg = write_config(tmp.path(), &sb, &drop, None, &extra);
    let state_dir = tmp.path().join("state");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let first = receipt_for(&state_dir, "p1").await;
    assert_eq!(first.outcome, Outcome::Quarantined, "{first:?}");
    // Refused after the item existed: the receipt says what is left there.
    let reason = first.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("Left on the platform: the item created for it")
            && reason.contains("which holds no values"),
        "{reason}"
    );
    assert!(first.item.is_some());
    eventually(
        Duration::from_secs(10),
        "the move to quarantine",
        async || quarantine.join("p1").is_dir().then_some(()),
    )
    .await;

    // Named by where it is now: it goes back into its drop folder, and the agent delivers it.
    let out = gc("retry", &cfg).arg(quarantine.join("p1")).run();
    let stdout = out.stdout.clone();
    out.expect(0);
    assert!(
        stdout.contains(&format!(
            "requeued {} (moved back from {} into its drop folder)",
            drop.join("p1").display(),
            quarantine.join("p1").display()
        )),
        "{stdout}"
    );
    assert!(drop.join("p1/count.json").is_file() && !quarantine.join("p1").exists());
    let rs = wait_receipts_until(&state_dir, Duration::from_secs(30), |r| {
        r.iter().any(|r| r.outcome == Outcome::Delivered)
    })
    .await;
    assert_eq!((rs.len(), rs[0].attempts), (1, 2), "{rs:?}");
    agent.stop();
}
