//! Folders whose cases the agent must not deliver, and says so: a config naming a socket the platform does
//! not have (held, not quarantined), a drop folder that is missing (an unmounted share), and a folder an
//! operator paused. Each shows in `status`, `/status`, the metrics, the log (once) and an alert.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::Outcome;
use serde_json::Value;

async fn fetch(url: String) -> String {
    reqwest::get(&url).await.unwrap().text().await.unwrap()
}

fn status_text(cfg: &Path) -> String {
    gc("status", cfg).run().stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_socket_holds_the_folder_until_the_config_is_fixed() {
    let Site { sb, tmp, drop } = site().await;
    let hook = receiver(false).await;
    let done = tmp.path().join("done");
    drop_atomically(&drop, "patient-001", |d| archive_case(d, 0));
    let extra = format!(
        "after = \"move:{}\"\nquarantine = \"{}\"",
        done.display(),
        tmp.path().join("q").display()
    );
    let cfg = write_config(tmp.path(), &sb, &drop, None, &extra);
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace("slug = \"lesion-count\"", "slug = \"lesion-cuont\""),
    )
    .unwrap();
    append(
        &cfg,
        &format!(
            "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[notify]]\nurl = \"{}\"\n",
            hook.url
        ),
    );
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let addr = metrics_addr(&agent).await;

    let held = hook.wait_for("folder_held").await;
    assert_eq!(held["state"], "held");
    says(&held, "reason", "'lesion-cuont' is not an existing socket");
    // The case is ready, and waits: the log says so once, nothing is quarantined or moved.
    agent
        .wait_log("ready, held: the platform does not have what folder[0]", 1)
        .await;
    let text = status_text(&cfg);
    assert!(text.contains("held since"), "{text}");
    assert!(text.contains("lesion-cuont"), "{text}");
    assert!(text.contains("note: patient-001: ready, held"), "{text}");
    let status: Value =
        serde_json::from_str(&fetch(format!("http://{addr}/status")).await).unwrap();
    assert!(
        status["folders"][0]["held"][1]
            .as_str()
            .unwrap()
            .contains("lesion-cuont"),
        "{status}"
    );
    let metrics = fetch(format!("http://{addr}/metrics")).await;
    let gauge = format!(
        "gc_hotfolder_folder_held{{folder=\"{}\"}} 1\n",
        drop.display()
    );
    assert!(metrics.contains(&gauge), "{metrics}");
    assert!(drop.join("patient-001").is_dir());
    assert!(receipts(&tmp.path().join("state/receipts")).is_empty());
    assert!(items_of(&state(&sb).await, "demo-archive").is_empty());

    // Fixed and reloaded: the case goes.
    let fixed = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lesion-cuont", "lesion-count");
    std::fs::write(&cfg, fixed).unwrap();
    agent.signal(libc::SIGHUP);
    let r = receipt_for(&tmp.path().join("state"), "patient-001").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    let text = eventually(Duration::from_secs(10), "the hold lifted", async || {
        let t = status_text(&cfg);
        (!t.contains("held since")).then_some(t)
    })
    .await;
    assert!(text.contains("1 delivered"), "{text}");
    let log = agent.log();
    assert_eq!(
        log.matches("its cases are held until the config is fixed")
            .count(),
        1,
        "{log}"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_drop_folder_is_flagged_once_and_delivered_from_when_it_is_back() {
    let sb = sandbox().await;
    let hook = receiver(false).await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("share/drop");
    let cfg = write_config(tmp.path(), &sb, &drop, None, "poll_interval = \"200ms\"");
    append(
        &cfg,
        &format!(
            "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[notify]]\nurl = \"{}\"\n",
            hook.url
        ),
    );

    let out = gc("check", &cfg).run();
    let said = out.stdout.clone();
    out.expect(1);
    assert!(
        said.contains(
            "warning: folder[0].path: does not exist (a network share that is not mounted?)"
        ),
        "{said}"
    );

    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let addr = metrics_addr(&agent).await;
    let missing = hook.wait_for("folder_missing").await;
    says(&missing, "reason", "does not exist");
    let text = status_text(&cfg);
    assert!(
        text.contains("drop folder missing: it does not exist"),
        "{text}"
    );
    let metrics = fetch(format!("http://{addr}/metrics")).await;
    let gauge = format!(
        "gc_hotfolder_folder_missing{{folder=\"{}\"}} 1\n",
        drop.display()
    );
    assert!(metrics.contains(&gauge), "{metrics}");
    // Many polls later, the error is still said once.
    eventually(Duration::from_secs(20), "ten polls", async || {
        let m = fetch(format!("http://{addr}/metrics")).await;
        m.lines()
            .find_map(|l| l.strip_prefix("gc_hotfolder_watch_scans_total{reason=\"poll\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|n| *n >= 10.0)
    })
    .await;
    let log = agent.log();
    assert_eq!(
        log.matches("nothing is delivered from it until it is back")
            .count(),
        1,
        "{log}"
    );

    // The share is mounted again: its case is delivered.
    drop_atomically(&drop, "patient-001", |d| archive_case(d, 1));
    let r = receipt_for(&tmp.path().join("state"), "patient-001").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    agent.wait_log("the drop folder is back", 1).await;
    assert!(!status_text(&cfg).contains("missing"));
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_folder_shows_its_waiting_cases_and_a_restart_says_it_is_paused() {
    let (Site { sb: _sb, tmp, drop }, cfg) = paused_site().await;

    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent
        .wait_log(
            "this drop folder is paused: its cases are watched but not delivered",
            1,
        )
        .await;
    drop_atomically(&drop, "patient-001", |d| archive_case(d, 2));
    agent
        .wait_log(
            "ready, held while its folder is paused (`gc-hotfolder resume` delivers it)",
            1,
        )
        .await;
    let text = status_text(&cfg);
    assert!(
        text.contains("(paused)") && text.contains("cases: 1 settling"),
        "{text}"
    );
    assert!(
        text.contains("note: patient-001: ready, held while its folder is paused"),
        "{text}"
    );

    gc("resume", &cfg).arg(&drop).run().expect(0);
    let r = receipt_for(&tmp.path().join("state"), "patient-001").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    let log = agent.log();
    assert_eq!(
        log.matches("ready, held while its folder is paused")
            .count(),
        1,
        "{log}"
    );
    agent.stop();
}
