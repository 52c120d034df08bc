//! `gc-hotfolder upload` as a user runs it: many mixed cases into an archive and a reader study, then every
//! receipt is checked against what the sandbox really holds, byte for byte (SHA-256) and value for value.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::{Outcome, Receipt};
use gc_sandbox::DEMO_TOKEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_delivers_twenty_mixed_cases_and_its_receipts_match_the_server() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let (archive_drop, reader_drop) = (tmp.path().join("archive"), tmp.path().join("reader"));
    let mut cases = common::cases(
        &archive_drop,
        0..14,
        |i| format!("case-{i:02}"),
        archive_case,
    );
    cases.extend(common::cases(
        &reader_drop,
        0..6,
        |i| format!("read-{i:02}"),
        reader_case,
    ));
    let cfg = write_config(tmp.path(), &sb, &archive_drop, Some(&reader_drop), "");

    let out = gc("upload", &cfg).args(&cases).run_async().await;
    let stdout = out.stdout.clone();
    let stderr = out.stderr.clone();
    out.expect(0);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("delivered "))
            .count(),
        20,
        "{stdout}"
    );
    assert!(
        !stdout.contains(DEMO_TOKEN) && !stderr.contains(DEMO_TOKEN),
        "the token leaked into the output"
    );

    let rs = receipts(&tmp.path().join("state/receipts"));
    assert_eq!(rs.len(), 20);
    let st = state(&sb).await;
    let items = items_of(&st, "demo-archive");
    let sets = display_sets_of(&st, "demo-reader-study");
    let mut titles: BTreeMap<String, usize> = BTreeMap::new();
    for i in items.iter().chain(sets.iter()) {
        *titles
            .entry(i["title"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for r in &rs {
        assert_eq!(r.outcome, Outcome::Delivered, "{r:?}");
        assert_eq!(titles.get(&r.title), Some(&1), "{} exactly once", r.title);
        let pk = &r.item.as_ref().unwrap().pk;
        let item = items
            .iter()
            .chain(sets.iter())
            .find(|i| i["pk"] == pk.as_str())
            .expect("the receipt's item exists");
        holds_exactly(item, r, true);
        let folder = Path::new(&r.case_path).parent().unwrap();
        let key = gc_hotfolder::receipt::CaseKey {
            folder,
            case: Path::new(&r.case),
        };
        let receipt_text = std::fs::read_to_string(gc_hotfolder::receipt::receipt_path(
            &tmp.path().join("state/receipts"),
            &r.target.slug,
            key,
        ))
        .unwrap();
        assert!(!receipt_text.contains(DEMO_TOKEN));
    }

    // `receipts` lists every case, and prints one on request.
    let cfg = tmp.path().join("gc-hotfolder.toml");
    let list = gc("receipts", &cfg).run();
    let list = list.stdout;
    assert_eq!(
        list.lines().filter(|l| l.contains("Delivered")).count(),
        20,
        "{list}"
    );
    let one = gc("receipts", &cfg).arg(archive_drop.join("case-03")).run();
    let one: Receipt = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one.case, "case-03");

    // Uploading the same cases again sends nothing: the journal knows them as delivered.
    let again = gc("upload", &cfg)
        .arg(archive_drop.join("case-00"))
        .run()
        .expect(0);
    assert!(
        again.stdout.contains("already delivered case-00"),
        "{}",
        again.stdout.clone()
    );
    let st = state(&sb).await;
    assert_eq!(all_titled(&st, "demo-archive", "case-00").len(), 1);
}

#[test]
fn upload_reports_config_errors_with_file_line_and_key_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    let server = "[server]\nurl = \"http://127.0.0.1:1/api/v1/\"\n";
    for (text, said) in [
        // An unknown key is named where it is.
        (
            "state_dirr = \"x\"\n",
            "bad.toml:3:1: state_dirr: unknown field",
        ),
        // A value of the wrong type names its key, not the value.
        (
            "\n[limits]\nparallel_cases = \"two\"\n",
            "bad.toml:5:18: limits.parallel_cases: ",
        ),
    ] {
        std::fs::write(&cfg, format!("{server}{text}")).unwrap();
        let err = gc("upload", &cfg).arg(tmp.path()).run().expect(2).stderr;
        assert!(err.contains(said), "{err}");
    }
}

#[test]
fn rust_log_sets_the_log_level_unless_gc_hotfolder_log_does() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = rt.block_on(site());
    let (cfg, drop) = (site.config(""), &site.drop);
    let upload = |case: &str, env: &[(&str, &str)]| {
        archive_case(&drop.join(case), 2);
        let mut cmd = bin();
        cmd.arg("upload")
            .arg("--config")
            .arg(&cfg)
            .arg(drop.join(case));
        cmd.env_remove("GC_HOTFOLDER_LOG").env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // "token accepted" is an info line.
    assert!(upload("p1", &[]).contains("token accepted"));
    let quiet = upload("p2", &[("RUST_LOG", "warn")]);
    assert!(!quiet.contains("token accepted"), "{quiet}");
    let first = upload("p3", &[("RUST_LOG", "warn"), ("GC_HOTFOLDER_LOG", "info")]);
    assert!(first.contains("token accepted"), "{first}");
}

#[test]
fn upload_with_a_refused_token_exits_3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = rt.block_on(site());
    archive_case(&site.drop.join("p1"), 0);
    let cfg = site.config("");
    edit(&cfg, DEMO_TOKEN, &"0".repeat(64));
    let out = gc("upload", &cfg).arg(site.drop.join("p1")).run().expect(3);
    assert!(
        out.stderr.contains("Invalid token."),
        "{}",
        out.stderr.clone()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_socket_fails_the_case_before_anything_is_created() {
    let Site { sb, tmp, drop } = site().await;
    archive_case(&drop.join("p1"), 0);
    let extra = "[[folder.socket]]\nslug = \"no-such-socket\"\nvalue = 1\n";
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    append(&cfg, extra);
    let before = items_of(&state(&sb).await, "demo-archive").len();
    let out = gc("upload", &cfg)
        .arg(drop.join("p1"))
        .run_async()
        .await
        .expect(1);
    let stdout = out.stdout.clone();
    assert!(
        stdout.contains("socket no-such-socket does not exist on the platform"),
        "{stdout}"
    );
    let r = &receipts(&tmp.path().join("state/receipts"))[0];
    assert_eq!(r.outcome, Outcome::Quarantined);
    assert_eq!(
        items_of(&state(&sb).await, "demo-archive").len(),
        before,
        "no item was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_platform_would_refuse_is_quarantined_before_anything_is_created() {
    let Site { sb, tmp, drop } = site().await;
    let text = drop.join("text-as-image");
    std::fs::create_dir_all(&text).unwrap();
    std::fs::write(text.join("image.mha"), b"hello, I am text").unwrap();
    let truncated = drop.join("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    gc_content::samples::write_mha(&truncated.join("image.mha"), [8, 8, 4], 1).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("image.mha"))
        .unwrap()
        .set_len(200)
        .unwrap();
    // Valid images in every format the demo and the examples use still go through.
    let good = cases(&drop, 0..4, |i| format!("good-{i}"), archive_case);
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let before = state(&sb).await;
    let cases: Vec<_> = [text, truncated].into_iter().chain(good).collect();
    gc("upload", &cfg).args(&cases).run_async().await.expect(1);

    let rs = receipts(&tmp.path().join("state/receipts"));
    assert_eq!(rs.len(), 6, "{rs:?}");
    for r in &rs {
        let reason = r.reason.clone().unwrap_or_default();
        if r.case.starts_with("good-") {
            assert_eq!(r.outcome, Outcome::Delivered, "{}: {reason}", r.case);
            continue;
        }
        assert_eq!(r.outcome, Outcome::Quarantined, "{}", r.case);
        assert!(
            reason.starts_with("image.mha (socket generic-medical-image): the platform would not import it: 1 file could not be imported")
                && reason.ends_with("nothing was created on the platform"),
            "{}: {reason}",
            r.case
        );
    }
    let st = state(&sb).await;
    let titles: Vec<&str> = items_of(&st, "demo-archive")
        .iter()
        .filter_map(|i| i["title"].as_str())
        .collect();
    assert!(
        !titles.contains(&"text-as-image") && !titles.contains(&"truncated"),
        "{titles:?}"
    );
    assert_eq!(
        items_of(&st, "demo-archive").len(),
        items_of(&before, "demo-archive").len() + 4,
        "only the good cases made items"
    );
    let sessions = st["upload_sessions"].as_array().expect("sessions in state");
    assert!(
        sessions.iter().all(|s| s["status"] != "Failed"),
        "no import reached the platform to fail there: {sessions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_the_agent_share_one_journal_and_upload_honours_after() {
    let Site { sb, tmp, drop } = site().await;
    let done = tmp.path().join("done");
    archive_case(&drop.join("sent-by-upload"), 2);
    archive_case(&drop.join("left-alone"), 0);
    let extra = format!("after = \"move:{}\"", done.display());
    let cfg = write_config(tmp.path(), &sb, &drop, None, &extra);
    let upload = |case: &Path| {
        let out = gc("upload", &cfg).arg(case).run().expect(0);
        out.stdout.clone()
    };
    let case = drop.join("sent-by-upload");
    let out = tokio::task::block_in_place(|| upload(&case));
    assert!(out.contains("delivered sent-by-upload"), "{out}");
    assert!(
        !case.exists() && done.join("sent-by-upload/count.json").is_file(),
        "upload moved the delivered case as `after` says"
    );

    // Dropped again unchanged (an exporter that copies twice): the agent knows it is delivered.
    std::fs::rename(done.join("sent-by-upload"), &case).unwrap();
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let state_dir = tmp.path().join("state");
    receipt_for(&state_dir, "left-alone").await;
    eventually(
        Duration::from_secs(30),
        "the agent moves both cases",
        async || (!case.exists() && !drop.join("left-alone").exists()).then_some(()),
    )
    .await;
    agent.stop();
    let rs = receipts(&state_dir.join("receipts"));
    assert!(
        rs.iter().all(|r| r.outcome == Outcome::Delivered),
        "nothing quarantined: {rs:?}"
    );
    let st = state(&sb).await;
    assert_eq!(all_titled(&st, "demo-archive", "sent-by-upload").len(), 1);
    let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    assert!(
        !log.contains("already exists"),
        "the agent did not try to deliver it again:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_series_goes_as_one_zip_and_the_platform_holds_its_de_identified_slices() {
    let Site { sb, tmp, drop } = site().await;
    let case = drop.join("series");
    let ids = gc_content::samples::DicomSeriesIds::new(41);
    std::fs::create_dir_all(case.join("dicom")).unwrap();
    gc_content::samples::write_dicom_series(&case.join("dicom"), 40, 16, 16, &ids, 41).unwrap();
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    gc("upload", &cfg).arg(&case).run_async().await.expect(0);
    let st = state(&sb).await;
    // One upload for the forty slices, not forty: four requests, and one of the platform's 2000 upload
    // records while the import is pending.
    assert_eq!(
        st["requests"]["POST /api/v1/uploads/ 201"], 1,
        "{}",
        st["requests"]
    );
    let rs = receipts(&tmp.path().join("state/receipts"));
    let r = &rs[0];
    assert_eq!(r.outcome, Outcome::Delivered);
    let image = r
        .sockets
        .iter()
        .find(|s| s.slug == "generic-medical-image")
        .unwrap();
    assert_eq!(image.files.len(), 40);
    assert!(image.files.iter().all(|f| f.deidentified));
    // The image holds every slice under its own name, the de-identified bytes the receipt names.
    let items = items_of(&st, "demo-archive");
    holds_exactly(items[0], r, true);
}
