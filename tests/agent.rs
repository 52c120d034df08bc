//! The agent as a real subprocess against the sandbox over loopback: cases dropped in every way a user or
//! an exporter drops them are delivered exactly once and never partially, including across restarts.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::{Outcome, Receipt};
use gc_sandbox::DEMO_TOKEN;
use sha2::Digest;

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn titles_once(items: &[&serde_json::Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i["title"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_rename_and_slow_writers_are_each_delivered_once_and_whole() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));

    // By copy: files appear one after the other in place.
    archive_case(&drop.join("copied"), 0);
    // By atomic rename of a finished folder.
    drop_atomically(&drop, "renamed", |d| archive_case(d, 2));
    // A slow writer: an image written in chunks with pauses shorter than the quiet window.
    let slow = drop.join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    let full = tmp.path().join("full.mha");
    gc_content::samples::write_mha(&full, [64, 64, 16], 9).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    {
        let mut f = std::fs::File::create(slow.join("image.mha")).unwrap();
        for chunk in bytes.chunks(bytes.len() / 6 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }

    let rs = wait_receipts(
        tmp.path().join("state").as_path(),
        3,
        Duration::from_secs(60),
    )
    .await;
    for r in &rs {
        assert_eq!(r.outcome, Outcome::Delivered, "{r:?}");
    }
    let slow_r = rs.iter().find(|r| r.case == "slow").unwrap();
    let img = socket_of(slow_r, "generic-medical-image");
    assert_eq!(
        img.files[0].sha256,
        sha256(&full),
        "the whole file, not a prefix, was delivered"
    );

    let st = state(&sb).await;
    let items = items_of(&st, "demo-archive");
    let counts = titles_once(&items);
    for t in ["copied", "renamed", "slow"] {
        assert_eq!(counts.get(t), Some(&1), "{t} exactly once: {counts:?}");
    }
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_dropped_while_the_agent_is_down_are_delivered_at_start() {
    let Site { sb, tmp, drop } = site().await;
    for i in 0..4 {
        archive_case(&drop.join(format!("p{i}")), i);
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_receipts(&tmp.path().join("state"), 4, Duration::from_secs(60)).await;
    assert!(rs.iter().all(|r| r.outcome == Outcome::Delivered), "{rs:?}");
    agent.stop();

    // A restart delivers nothing again.
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    archive_case(&drop.join("p9"), 9);
    wait_receipts(&tmp.path().join("state"), 5, Duration::from_secs(60)).await;
    agent.stop();
    let st = state(&sb).await;
    let counts = titles_once(&items_of(&st, "demo-archive"));
    for t in ["p0", "p1", "p2", "p3", "p9"] {
        assert_eq!(counts.get(t), Some(&1), "{t}: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_still_delivers_every_case_exactly_once() {
    let Site { sb, tmp, drop } = site().await;
    let n = 12u64;
    for i in 0..n {
        archive_case(&drop.join(format!("k{i:02}")), i);
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let log = tmp.path().join("agent.log");
    let state_dir = tmp.path().join("state");
    let kills = kill_9_repeatedly(&cfg, &log, &state_dir, n as usize, 0x2545_f491_4f6c_dd1d).await;
    // Then let it finish in peace.
    let agent = Agent::start(&cfg, &log);
    let rs = wait_receipts(&state_dir, n as usize, Duration::from_secs(120)).await;
    agent.stop();
    assert!(kills >= 3, "the test killed the agent only {kills} times");
    assert!(rs.iter().all(|r| r.outcome == Outcome::Delivered), "{rs:?}");

    let st = state(&sb).await;
    let items = items_of(&st, "demo-archive");
    let counts = titles_once(&items);
    for i in 0..n {
        assert_eq!(
            counts.get(&format!("k{i:02}")),
            Some(&1),
            "k{i:02}: {counts:?}"
        );
    }
    for r in &rs {
        let item = items
            .iter()
            .find(|i| i["pk"] == r.item.as_ref().unwrap().pk.as_str())
            .expect("the receipt's item exists");
        one_value_per_socket(r, item);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cases_are_quarantined_with_a_reason_and_the_daemon_keeps_going() {
    let Site { sb, tmp, drop } = site().await;
    std::fs::create_dir_all(&drop).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.mha"), b"not yours").unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));

    let case = |name: &str, f: &dyn Fn(&Path)| {
        drop_atomically(&drop, name, |d| {
            std::fs::create_dir_all(d).unwrap();
            f(d)
        })
    };
    case("bad-json", &|d| {
        gc_content::samples::write_mha(&d.join("image.mha"), [4, 4, 1], 1).unwrap();
        std::fs::write(d.join("count.json"), "{not json").unwrap();
    });
    case("not-an-image", &|d| {
        std::fs::write(d.join("image.mha"), b"hello, I am text").unwrap()
    });
    case("truncated-image", &|d| {
        let image = d.join("image.mha");
        gc_content::samples::write_mha(&image, [8, 8, 4], 2).unwrap();
        let len = std::fs::metadata(&image).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
    });
    case("two-series", &|d| {
        let s = &d.join("dicom");
        std::fs::create_dir_all(s).unwrap();
        gc_content::samples::write_dicom_series(
            s,
            2,
            4,
            4,
            &gc_content::samples::DicomSeriesIds::new(1),
            1,
        )
        .unwrap();
        let other = tempfile::tempdir().unwrap();
        let files = gc_content::samples::write_dicom_series(
            other.path(),
            2,
            4,
            4,
            &gc_content::samples::DicomSeriesIds::new(2),
            2,
        )
        .unwrap();
        for (i, f) in files.iter().enumerate() {
            std::fs::copy(f, s.join(format!("other-{i}.dcm"))).unwrap();
        }
    });
    case("empty-file", &|d| {
        std::fs::write(d.join("image.mha"), b"").unwrap()
    });
    case("wrong-kind", &|d| {
        gc_content::samples::write_mha(&d.join("image.mha"), [4, 4, 1], 3).unwrap();
        std::fs::write(d.join("count.json"), "\"three\"").unwrap();
    });
    case("symlink-out", &|d| {
        std::os::unix::fs::symlink(outside.join("secret.mha"), d.join("image.mha")).unwrap()
    });
    case("spaces and ü \u{2603}", &|d| archive_case(d, 4));
    // A good case after all the bad ones: the daemon is still working.
    case("good", &|d| archive_case(d, 0));

    let rs = wait_receipts(&tmp.path().join("state"), 9, Duration::from_secs(90)).await;
    let by: BTreeMap<&str, &Receipt> = rs.iter().map(|r| (r.case.as_str(), r)).collect();
    let reason = |c: &str| by[c].reason.clone().unwrap_or_default();
    assert_eq!(by["good"].outcome, Outcome::Delivered);
    assert_eq!(by["spaces and ü \u{2603}"].outcome, Outcome::Delivered);
    for (case, because) in [
        ("bad-json", "count.json is not valid JSON"),
        ("not-an-image", "1 file could not be imported"),
        ("truncated-image", "1 file could not be imported"),
        (
            "two-series",
            "Image imports should result in a single image",
        ),
        ("empty-file", "is empty"),
        ("wrong-kind", "JSON does not fulfill schema"),
        ("symlink-out", "no file matches"),
    ] {
        assert!(reason(case).contains(because), "{case}: {}", reason(case));
    }
    assert!(
        by["symlink-out"]
            .skipped
            .iter()
            .any(|s| s.contains("symbolic link")),
        "{:?}",
        by["symlink-out"].skipped
    );
    // Images the platform is certain to refuse are judged on this machine, before anything exists.
    for c in ["not-an-image", "truncated-image", "two-series"] {
        assert!(
            reason(c).contains("the platform would not import")
                && reason(c).contains("nothing was created on the platform")
                && !reason(c).contains("Left on the platform"),
            "{c}: {}",
            reason(c)
        );
    }
    for c in ["not-an-image", "truncated-image"] {
        assert!(
            reason(c).contains("image.mha (socket generic-medical-image)"),
            "the file is named: {}",
            reason(c)
        );
    }
    assert!(
        reason("wrong-kind").contains("nothing was created"),
        "{}",
        reason("wrong-kind")
    );
    let st = state(&sb).await;
    assert!(
        !items_of(&st, "demo-archive")
            .iter()
            .any(|i| i["title"] == "wrong-kind" || i["title"] == "bad-json"),
        "a value of the wrong type is refused before an item exists"
    );
    let refused_images = ["not-an-image", "truncated-image", "two-series"];
    assert!(
        !items_of(&st, "demo-archive")
            .iter()
            .any(|i| refused_images.contains(&i["title"].as_str().unwrap_or_default())),
        "an image the platform would refuse creates no item: {st}"
    );
    // Nor does it reach the platform's importer: no import of this run failed there.
    let sessions = st["upload_sessions"].as_array().expect("sessions in state");
    assert!(
        sessions.iter().all(|s| s["status"] != "Failed"),
        "{sessions:?}"
    );
    for c in [
        "bad-json",
        "not-an-image",
        "truncated-image",
        "two-series",
        "empty-file",
        "wrong-kind",
        "symlink-out",
    ] {
        assert_eq!(by[c].outcome, Outcome::Quarantined, "{c}");
    }
    agent.stop();

    // `retry` requeues quarantined cases; fixed ones are then delivered.
    std::fs::write(drop.join("bad-json/count.json"), "5").unwrap();
    gc("retry", &cfg).arg("--quarantined").run().expect(0);
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let dir = tmp.path().join("state/receipts");
    eventually(
        Duration::from_secs(60),
        "bad-json delivered after the fix",
        async || {
            receipts(&dir)
                .into_iter()
                .find(|r| r.case == "bad-json" && r.outcome == Outcome::Delivered)
        },
    )
    .await;
    agent.stop();

    // The token appears nowhere the agent writes.
    let mut haystack = std::fs::read(tmp.path().join("agent.log")).unwrap();
    for entry in walk(&tmp.path().join("state")) {
        haystack.extend(std::fs::read(entry).unwrap_or_default());
    }
    let needle = DEMO_TOKEN.as_bytes();
    assert!(
        !haystack.windows(needle.len()).any(|w| w == needle),
        "the token leaked into the log, the journal or a receipt"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ten_percent_faults_on_every_endpoint_every_case_is_delivered_once() {
    let rules = [
        "/api/* 503 retry-after=1 p=0.02",
        "/api/* 502 p=0.02",
        "/api/* 429 p=0.01",
        "/api/* drop p=0.02",
        "/api/* 502 after p=0.02",
        "/s3/* 503 p=0.04",
        "/s3/* drop p=0.03",
        "/s3/* 500 after p=0.03",
    ];
    let faults = rules
        .iter()
        .map(|r| r.parse().expect("a fault rule"))
        .collect();
    let sb = sandbox_with(|o| {
        o.faults = faults;
        o.seed = Some(1);
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let n = 10u64;
    for i in 0..n {
        archive_case(&drop.join(format!("f{i:02}")), i);
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_delivered(
        &tmp.path().join("state"),
        n as usize,
        Duration::from_secs(180),
    )
    .await;
    agent.stop();
    let st = state(&sb).await;
    let items = items_of(&st, "demo-archive");
    let counts = titles_once(&items);
    for r in &rs {
        assert_eq!(
            counts.get(&r.title),
            Some(&1),
            "{} exactly once: {counts:?}",
            r.title
        );
        let item = items
            .iter()
            .find(|i| i["pk"] == r.item.as_ref().unwrap().pk.as_str())
            .unwrap();
        assert_eq!(
            item["values"].as_array().unwrap().len(),
            r.sockets.len(),
            "{}: {item}",
            r.case
        );
    }
    let faulted = answered_with(&st, &["502", "503", "429"]);
    assert!(faulted > 0, "the faults fired: {}", st["requests"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_with_equal_titles_from_two_sites_are_never_merged_under_faults_and_kill_9() {
    // Item creations whose answer is lost, cut connections and a busy platform everywhere.
    let sb = sandbox_with(|o| {
        o.faults = [
            "POST /api/v1/archives/items/ drop after times=3",
            "POST /api/v1/archives/items/ 503 p=0.1",
            "PATCH /api/v1/archives/items/* drop after p=0.15",
            "* drop p=0.03",
        ]
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    // Two sites in one drop folder (cases at depth 2), and a second drop folder on the same archive:
    // every case below is titled after its folder name, `p-00N`.
    let sites = tmp.path().join("sites");
    let other = tmp.path().join("other");
    let n = 3u64;
    let mut cases = Vec::new();
    for i in 0..n {
        let name = format!("p-00{i}");
        for (k, dir) in [
            sites.join("site-a").join(&name),
            sites.join("site-b").join(&name),
            other.join(&name),
        ]
        .into_iter()
        .enumerate()
        {
            // Different content per case, so a merge shows.
            archive_case(&dir, i * 3 + k as u64 * 11 + 1);
            cases.push(dir);
        }
    }
    let cfg = write_config(tmp.path(), &sb, &sites, None, "depth = 2");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\nquiet = \"1s\"\n{ARCHIVE_RULES}\n",
        other.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let log = tmp.path().join("agent.log");
    let state_dir = tmp.path().join("state");
    let receipts_dir = state_dir.join("receipts");
    let kills = kill_9_until(&cfg, &log, 12, 0x9e37_79b9_7f4a_7c15, || {
        receipts(&receipts_dir).len() == cases.len()
    })
    .await;
    let agent = Agent::start(&cfg, &log);
    let rs = wait_receipts(&state_dir, cases.len(), Duration::from_secs(180)).await;
    agent.stop();
    assert!(kills >= 2, "the test killed the agent only {kills} times");
    assert_eq!(rs.len(), cases.len(), "one receipt per case: {rs:?}");

    let st = state(&sb).await;
    let items = items_of(&st, "demo-archive");
    let mut delivered_items = std::collections::BTreeSet::new();
    for i in 0..n {
        let title = format!("p-00{i}");
        let of_title: Vec<&Receipt> = rs.iter().filter(|r| r.title == title).collect();
        assert_eq!(of_title.len(), 3, "{title}: {of_title:?}");
        let delivered: Vec<&&Receipt> = of_title
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered)
            .collect();
        assert_eq!(
            delivered.len(),
            1,
            "{title}: exactly one case has the item: {of_title:?}"
        );
        for r in of_title
            .iter()
            .filter(|r| r.outcome == Outcome::Quarantined)
        {
            let reason = r.reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains("belongs to another case"),
                "{}: {reason}",
                r.case_path
            );
            assert!(r.item.is_none(), "{}: {:?}", r.case_path, r.item);
        }
        let r = delivered[0];
        let pk = r.item.as_ref().unwrap().pk.as_str();
        assert!(
            delivered_items.insert(pk.to_owned()),
            "two receipts claim {pk}"
        );
        let on_server: Vec<&&serde_json::Value> = items
            .iter()
            .filter(|it| it["title"] == title.as_str())
            .collect();
        assert_eq!(on_server.len(), 1, "{title}: {on_server:?}");
        assert_eq!(on_server[0]["pk"], pk);
        holds_exactly(on_server[0], r, false);
    }
    assert_eq!(
        items.len(),
        n as usize,
        "no other item was left behind: {items:?}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("adopting the item an earlier attempt created"),
        "creations whose answer was lost were taken up by their own case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_named_alike_but_for_bytes_that_are_not_utf8_are_two_cases() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let Site { sb, tmp, drop } = site().await;
    // Latin-1 "Müller" and "Möller" from an old exporter: equal once decoded lossily.
    let names: [&[u8]; 2] = [b"M\xfcller", b"M\xf6ller"];
    for (i, name) in names.iter().enumerate() {
        drop_atomically(&drop, "x", |d| archive_case(d, i as u64 * 2));
        std::fs::rename(drop.join("x"), drop.join(OsStr::from_bytes(name))).unwrap();
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let state_dir = tmp.path().join("state");
    let rs = wait_delivered(&state_dir, 2, Duration::from_secs(60)).await;
    agent.stop();
    assert_eq!(rs.len(), 2, "a receipt each: {rs:?}");
    let cases: Vec<&str> = rs.iter().map(|r| r.case.as_str()).collect();
    assert_eq!(cases, ["M\\xf6ller", "M\\xfcller"]);
    // `receipts CASE` finds each by its real path.
    let out = gc("receipts", &cfg)
        .arg(drop.join(OsStr::from_bytes(names[0])))
        .run();
    let one: Receipt = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(one.case, "M\\xfcller");
    let st = state(&sb).await;
    let items = items_of(&st, "demo-archive");
    assert_eq!(items.len(), 2, "{items:?}");
    for r in &rs {
        assert_eq!(r.title, r.case);
        let item = items
            .iter()
            .find(|i| i["title"] == r.title.as_str())
            .unwrap_or_else(|| panic!("no item titled {}", r.title));
        assert_eq!(item["pk"], r.item.as_ref().unwrap().pk.as_str());
        holds_exactly(item, r, false);
    }
}
