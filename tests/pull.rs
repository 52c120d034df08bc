//! `gc-hotfolder pull` as a user runs it, against the sandbox over loopback: cases delivered with `upload`
//! come back byte for byte (SHA-256) and value for value, a pulled folder uploads again as a drop folder
//! with the same values, a second pull downloads nothing, and a changed value is the only thing fetched
//! again. An algorithm pull writes each succeeded job's outputs as the sandbox holds them and reports the
//! jobs that did not succeed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use gc_client::models::{TargetKind, ValueEntry, ValueSource};
use gc_client::{Client, ClientConfig, JobPolling, JobStatus, Token};
use gc_sandbox::Sandbox;
use gc_sandbox::fixture::ArchiveSpec;
use gc_sandbox::{DEMO_READER_TOKEN, DEMO_TOKEN};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn json_of(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A pull resumed after a kill kept the `at_kill` files recorded before it and fetched the rest, as its
/// `summary` (what it printed) says.
fn assert_resumed(summary: &str, at_kill: usize, total: usize) {
    let fetched = match total - at_kill {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    };
    assert!(
        summary.contains(&format!(
            " {fetched} downloaded, {at_kill} files skipped (already there)"
        )),
        "what was recorded before the kill is kept, everything else is fetched: {summary}"
    );
}

async fn run(args: Vec<std::ffi::OsString>) -> Output {
    tokio::task::spawn_blocking(move || bin().args(args).output())
        .await
        .unwrap()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn upload(cfg: &Path, cases: &[PathBuf]) {
    let mut args: Vec<std::ffi::OsString> = vec!["upload".into(), "--config".into(), cfg.into()];
    args.extend(cases.iter().map(|c| c.clone().into_os_string()));
    let out = run(args).await;
    assert!(out.status.success(), "upload: {}", text(&out));
}

/// The demo world's targets as `pull` names them.
const ARCHIVE: [&str; 2] = ["--archive", "demo-archive"];
const READER_STUDY: [&str; 2] = ["--reader-study", "demo-reader-study"];
const ESTIMATOR: [&str; 2] = ["--algorithm", "lung-volume-estimator"];

/// `gc-hotfolder pull` of `target` (its flag and slug) into `dest`, run to its end.
async fn pull(cfg: &Path, target: [&str; 2], dest: &Path) -> Output {
    let mut args: Vec<std::ffi::OsString> = vec!["pull".into(), "--config".into(), cfg.into()];
    args.extend(target.map(Into::into));
    args.push(dest.into());
    run(args).await
}

/// A [`pull`] that must succeed; what it printed on stdout.
async fn pull_ok(cfg: &Path, target: [&str; 2], dest: &Path) -> String {
    let out = pull(cfg, target, dest).await;
    assert!(out.status.success(), "{}", text(&out));
    stdout(&out)
}

/// A [`pull`] again into `dest`, which must download nothing and say so; what it printed, and the GETs
/// of stored files the sandbox has answered (the same before and after it).
async fn pull_fetching_nothing(
    sb: &Sandbox,
    cfg: &Path,
    target: [&str; 2],
    dest: &Path,
) -> (String, u64) {
    let gets = media_gets(sb).await;
    let again = pull_ok(cfg, target, dest).await;
    assert!(again.contains(" 0 files downloaded, "), "{again}");
    assert!(again.contains("nothing to download"), "{again}");
    assert_eq!(media_gets(sb).await, gets, "no file was fetched again");
    (again, gets)
}

/// A [`pull`] that must exit with `code` and say `says` on stderr.
async fn pull_refused(cfg: &Path, target: [&str; 2], dest: &Path, code: i32, says: &str) {
    let out = pull(cfg, target, dest).await;
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(says),
        "{}",
        text(&out)
    );
}

/// A [`pull`] with its output discarded, killed once its state file records at least 3 downloaded files;
/// how many files it had recorded then.
async fn pull_killed_midway(cfg: &Path, target: [&str; 2], dest: &Path) -> usize {
    let mut child = gc("pull", cfg)
        .args(target)
        .arg(dest)
        .spawn(Stdio::null(), Stdio::null());
    let state_file = dest.join(".gc-pull.json");
    eventually(
        Duration::from_secs(30),
        "some downloads recorded",
        async || {
            let state: Value = serde_json::from_slice(&std::fs::read(&state_file).ok()?).ok()?;
            (recorded_files(&state) >= 3).then_some(())
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    recorded_files(&json_of(&state_file))
}

/// Nothing inside `folder`, if it was made, is hidden: no part of an unfinished download is left there.
fn assert_no_dotfile_inside(folder: &Path) {
    if folder.is_dir() {
        assert!(
            tree(folder)
                .keys()
                .all(|rel| !rel.split('/').any(|c| c.starts_with('.'))),
            "no dotfile inside {}",
            folder.display()
        );
    }
}

/// A pulled `folder` holds exactly `files` (relative path → SHA-256) and `values` (relative path →
/// JSON), as failures name it `what`; its files (relative path → SHA-256).
fn check_folder(
    folder: &Path,
    (files, values): &(BTreeMap<String, String>, BTreeMap<String, Value>),
    what: &str,
) -> BTreeMap<String, String> {
    let got = tree(folder);
    let mut want_paths: Vec<&String> = files.keys().chain(values.keys()).collect();
    want_paths.sort();
    let got_paths: Vec<&String> = got.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: the files of the folder");
    for (rel, sha) in files {
        assert_eq!(&got[rel], sha, "{what}/{rel}: the stored bytes");
    }
    for (rel, v) in values {
        assert_eq!(&json_of(&folder.join(rel)), v, "{what}/{rel}");
    }
    got
}

/// What the algorithm pulls start with: a scratch folder, a config in it against `sb` (its drop folder
/// unused), and a client of the demo user.
fn config_and_client(sb: &Sandbox) -> (tempfile::TempDir, PathBuf, Client) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), sb, &tmp.path().join("drop"), None, "");
    (tmp, cfg, client(sb))
}

/// A value entry of `socket` set to `v`.
fn value(socket: &str, v: Value) -> ValueEntry {
    ValueEntry {
        socket: socket.into(),
        source: ValueSource::Value(v),
    }
}

/// How these tests follow a job: quick polls, and 30 s for it to end.
fn polling() -> JobPolling {
    JobPolling {
        deadline: Duration::from_secs(30),
        ..gc_testkit::client::job_polling()
    }
}

/// GETs of stored files (media) the sandbox has answered so far.
async fn media_gets(sb: &Sandbox) -> u64 {
    let st = state(sb).await;
    st["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("GET /media/"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

fn client(sb: &Sandbox) -> Client {
    Client::new(ClientConfig::new(
        sb.base_url(),
        Token::parse(DEMO_TOKEN).unwrap(),
    ))
    .unwrap()
}

/// What an archive case written by `archive_case` must become in a pulled folder: relative path → SHA-256
/// for files, and relative path → JSON for values.
/// A DICOM file comes back as it was sent, de-identified, under the neutral name it was uploaded as: its
/// expected name and SHA-256 are the ones its receipt gives for what was sent. The case's receipts are in
/// the `state` folder beside its drop folder.
fn expected_archive_item(case: &Path) -> (BTreeMap<String, String>, BTreeMap<String, Value>) {
    let state = case.parent().unwrap().parent().unwrap().join("state");
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let sent: BTreeMap<String, (String, String)> = receipts(&state.join("receipts"))
        .into_iter()
        .filter(|r| r.case == name)
        .flat_map(|r| r.sockets)
        .flat_map(|s| s.files)
        .map(|f| (f.path, (f.upload_name, f.sent_sha256)))
        .collect();
    let mut files = BTreeMap::new();
    let mut values = BTreeMap::new();
    let image_dir = "images/generic-medical-image";
    for name in ["image.mha", "image.mhd", "image.raw", "image.nii.gz"] {
        if case.join(name).is_file() {
            files.insert(format!("{image_dir}/{name}"), sha256(&case.join(name)));
        }
    }
    if case.join("dicom").is_dir() {
        for e in std::fs::read_dir(case.join("dicom")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let (upload_name, sha) = &sent[&format!("dicom/{name}")];
            assert_ne!(sha, &sha256(&p), "dicom/{name} was sent de-identified");
            assert_ne!(
                upload_name, &name,
                "dicom/{name} was sent under a neutral name"
            );
            files.insert(format!("{image_dir}/{upload_name}"), sha.clone());
        }
    }
    if case.join("report.pdf").is_file() {
        files.insert("report.pdf".into(), sha256(&case.join("report.pdf")));
    }
    // A File socket fed from a JSON file keeps the very bytes.
    if case.join("results.json").is_file() {
        files.insert("results.json".into(), sha256(&case.join("results.json")));
    }
    if case.join("count.json").is_file() {
        values.insert(
            "lesion-count.json".into(),
            json_of(&case.join("count.json")),
        );
    }
    values.insert("notes.json".into(), json!("delivered by gc-hotfolder"));
    (files, values)
}

fn check_archive_item(case: &Path, pulled: &Path) {
    let expected = expected_archive_item(case);
    check_folder(pulled, &expected, &pulled.display().to_string());
}

async fn five_delivered_cases(sb: &Sandbox, tmp: &Path) -> (PathBuf, Vec<PathBuf>) {
    let drop = tmp.join("drop");
    let cases = cases(&drop, 0..5, |i| format!("case-{i:02}"), archive_case);
    let cfg = write_config(tmp, sb, &drop, None, "");
    upload(&cfg, &cases).await;
    (cfg, cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_brings_back_the_uploaded_bytes_and_values_and_resumes_with_only_what_changed() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, cases) = five_delivered_cases(&sb, tmp.path()).await;
    let dest = tmp.path().join("pulled");

    let first = pull_ok(&cfg, ARCHIVE, &dest).await;
    assert!(first.contains(": 5 items, "), "{first}");
    assert!(first.contains(" 0 sockets skipped"), "{first}");
    for case in &cases {
        let name = case.file_name().unwrap();
        check_archive_item(case, &dest.join(name));
        assert!(
            first.contains(&format!("pulled {}: ", name.to_string_lossy())),
            "{first}"
        );
    }
    let mut top: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            ".gc-pull.json",
            ".gc-pull.lock",
            "case-00",
            "case-01",
            "case-02",
            "case-03",
            "case-04"
        ],
        "one folder per item, the state file, and no staging left"
    );
    let recorded = json_of(&dest.join(".gc-pull.json"));
    assert_eq!(recorded["target"]["slug"], "demo-archive");
    assert_eq!(recorded["items"].as_object().unwrap().len(), 5);

    // Again: nothing is downloaded, and the output says so.
    let image = dest.join("case-00/images/generic-medical-image/image.mha");
    let inode = std::fs::metadata(&image).unwrap().ino();
    let (_, gets) = pull_fetching_nothing(&sb, &cfg, ARCHIVE, &dest).await;

    // Two values change on the platform: a value, and an image (case-01's MetaImage pair becomes
    // case-00's single file). Only those two sockets are fetched again; the old image's files go.
    let c = client(&sb);
    let target = c
        .resolve_target(TargetKind::Archive, "demo-archive")
        .await
        .unwrap();
    let st = state(&sb).await;
    let by_title = |t: &str| item_titled(&st, "demo-archive", t).clone();
    let (item0, item1) = (by_title("case-00"), by_title("case-01"));
    let image0 = item0["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["socket"] == "generic-medical-image")
        .unwrap()["image"]["pk"]
        .as_str()
        .unwrap()
        .to_owned();
    let changes = [
        (&item0, "lesion-count", ValueSource::Value(json!(42))),
        (
            &item1,
            "generic-medical-image",
            ValueSource::Image(format!("{}cases/images/{image0}/", sb.base_url())),
        ),
    ];
    for (item, socket, source) in changes {
        c.patch_values(
            &target,
            item["pk"].as_str().unwrap(),
            &[ValueEntry {
                socket: socket.into(),
                source,
            }],
        )
        .await
        .unwrap();
    }
    eventually(
        std::time::Duration::from_secs(10),
        "the new values on the items",
        async || {
            let st = state(&sb).await;
            let items = items_of(&st, "demo-archive");
            let value = |title: &str, socket: &str| {
                items.iter().find(|i| i["title"] == title)?["values"]
                    .as_array()?
                    .iter()
                    .find(|v| v["socket"] == socket)
                    .cloned()
            };
            let count = value("case-00", "lesion-count")?;
            let image = value("case-01", "generic-medical-image")?;
            (count["value"] == 42 && image["image"]["pk"] == image0.as_str()).then_some(())
        },
    )
    .await;
    let third = pull_ok(&cfg, ARCHIVE, &dest).await;
    assert!(third.contains(" 2 files downloaded, "), "{third}");
    assert!(third.contains("pulled case-00: 1 downloaded, "), "{third}");
    assert!(third.contains("pulled case-01: 1 downloaded, "), "{third}");
    assert_eq!(json_of(&dest.join("case-00/lesion-count.json")), json!(42));
    assert_eq!(
        tree(&dest.join("case-01/images")),
        tree(&dest.join("case-00/images")),
        "the new image replaced the old one's files"
    );
    assert_eq!(
        media_gets(&sb).await,
        gets + 1,
        "one image file was fetched"
    );
    assert_eq!(
        std::fs::metadata(&image).unwrap().ino(),
        inode,
        "the image of the item whose count changed was left alone"
    );
    for case in &cases[2..] {
        check_archive_item(case, &dest.join(case.file_name().unwrap()));
    }
}

/// A socket value in the sandbox's state, reduced to what must survive a round trip: the value, or the
/// names and SHA-256 of the stored files.
fn essence(v: &Value) -> Value {
    if v["image"].is_object() {
        json!({"image": stored_files(v)})
    } else if v["file"].is_object() {
        json!({"file": v["file"]["sha256"]})
    } else {
        json!({"value": v["value"]})
    }
}

fn values_by_title(st: &Value, archive: &str) -> BTreeMap<String, BTreeMap<String, Value>> {
    items_of(st, archive)
        .into_iter()
        .map(|i| {
            let values = i["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v["socket"].as_str().unwrap().to_owned(), essence(v)))
                .collect();
            (i["title"].as_str().unwrap().to_owned(), values)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_folder_uploads_again_as_a_drop_folder_with_the_same_values() {
    let sb = sandbox_with(|o| {
        o.fixture.archives.push(ArchiveSpec {
            pk: uuid::Uuid::new_v4(),
            slug: "mirror-archive".into(),
            title: "Mirror Archive".into(),
            description: None,
            editors: vec!["demo".into()],
            uploaders: Vec::new(),
            users: Vec::new(),
            public: false,
            allowed_sockets: None,
        })
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, cases) = five_delivered_cases(&sb, tmp.path()).await;
    let dest = tmp.path().join("pulled");
    pull_ok(&cfg, ARCHIVE, &dest).await;

    // The pulled folder as a drop folder: one rule per socket, at the socket's relative path. Its DICOM
    // files are what the platform holds, de-identified already: sent again as they are, they stay equal.
    let back = tmp.path().join("back");
    std::fs::create_dir_all(&back).unwrap();
    let rules = format!(
        "[server]\nurl = \"{}\"\ntoken = \"{DEMO_TOKEN}\"\nstate_dir = \"{}\"\n\n\
         [[folder]]\npath = \"{}\"\narchive = \"mirror-archive\"\nquiet = \"1s\"\n\
         deidentify = false\n\
         [[folder.socket]]\nslug = \"generic-medical-image\"\nfiles = \"images/generic-medical-image/*\"\n\
         [[folder.socket]]\nslug = \"report\"\nfiles = \"report.pdf\"\noptional = true\n\
         [[folder.socket]]\nslug = \"lesion-count\"\nvalue_file = \"lesion-count.json\"\noptional = true\n\
         [[folder.socket]]\nslug = \"results-json\"\nvalue_file = \"results.json\"\noptional = true\n\
         [[folder.socket]]\nslug = \"notes\"\nvalue_file = \"notes.json\"\n",
        sb.base_url(),
        back.join("state").display(),
        dest.display()
    );
    let cfg2 = back.join("gc-hotfolder.toml");
    std::fs::write(&cfg2, rules).unwrap();
    // The agent on DEST: the item folders are its cases, and the pull's own files and a hidden folder
    // (as a file server's snapshots would be) are not.
    let snapshot = dest.join(".snapshot/hourly");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join("notes.json"), "\"an old copy\"").unwrap();
    let agent = Agent::start(&cfg2, &back.join("agent.log"));
    let receipts = wait_delivered(&back.join("state"), cases.len(), Duration::from_secs(60)).await;
    agent.stop();
    let mut delivered: Vec<&str> = receipts.iter().map(|r| r.case.as_str()).collect();
    delivered.sort();
    let mut expected: Vec<String> = cases
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    assert_eq!(delivered, expected);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .args(["status", "--json", "--config"])
        .arg(&cfg2)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status[0]["counts"],
        json!({"delivered": cases.len()}),
        "only the item folders are cases: {status}"
    );

    let st = state(&sb).await;
    let original = values_by_title(&st, "demo-archive");
    let mirrored = values_by_title(&st, "mirror-archive");
    assert_eq!(original.len(), 5);
    assert_eq!(
        mirrored, original,
        "every item, socket, value and stored file is the same after the round trip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_study_pull_writes_one_folder_per_display_set() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let (archive_drop, reader_drop) = (tmp.path().join("archive"), tmp.path().join("reader"));
    let cases = cases(&reader_drop, 0..4, |i| format!("read-{i:02}"), reader_case);
    let cfg = write_config(tmp.path(), &sb, &archive_drop, Some(&reader_drop), "");
    upload(&cfg, &cases).await;

    let dest = tmp.path().join("pulled");
    let s = pull_ok(&cfg, READER_STUDY, &dest).await;
    assert!(s.contains(": 5 items, "), "{s}");
    // The fixture's own display set comes along.
    assert_eq!(
        tree(&dest.join("answered-case")).keys().collect::<Vec<_>>(),
        ["diagnosis.json"]
    );
    assert_eq!(
        json_of(&dest.join("answered-case/diagnosis.json")),
        "benign"
    );
    for (i, case) in cases.iter().enumerate() {
        let pulled = dest.join(case.file_name().unwrap());
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        want.insert(
            "images/generic-medical-image/image.mha".into(),
            sha256(&case.join("image.mha")),
        );
        if case.join("seg.mha").is_file() {
            want.insert(
                "images/segmentation/seg.mha".into(),
                sha256(&case.join("seg.mha")),
            );
        }
        let got = tree(&pulled);
        for (rel, sha) in &want {
            assert_eq!(got.get(rel), Some(sha), "read-{i:02}/{rel}");
        }
        assert_eq!(
            json_of(&pulled.join("is-abnormal.json")),
            json_of(&case.join("abnormal.json"))
        );
        let values = if case.join("box.json").is_file() {
            assert_eq!(
                json_of(&pulled.join("nodule-box.json")),
                json_of(&case.join("box.json"))
            );
            2
        } else {
            1
        };
        assert_eq!(got.len(), want.len() + values, "read-{i:02}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_image_set_is_skipped_with_its_reason_and_unusable_titles_fall_back_to_the_pk() {
    let Site { sb, tmp, drop } = site().await;
    let case = drop.join("case-00");
    archive_case(&case, 0);
    write_series(&case, 3, &gc_content::samples::DicomSeriesIds::new(7), 7);
    let extra = "[[folder.socket]]\nslug = \"dicom-image-set\"\nfiles = \"series/*.dcm\"\nimage_name = \"series\"\n";
    let cfg = write_config(tmp.path(), &sb, &drop, None, extra);
    upload(&cfg, std::slice::from_ref(&case)).await;

    // Items whose titles cannot be folder names.
    let c = client(&sb);
    let target = c
        .resolve_target(TargetKind::Archive, "demo-archive")
        .await
        .unwrap();
    let mut fallback = Vec::new();
    for title in ["", "../up", "a/b"] {
        let item = c.create_item(&target, title).await.unwrap();
        let volume = value("lung-volume", json!(1.5));
        c.patch_values(&target, &item.pk, &[volume]).await.unwrap();
        fallback.push(item.pk);
    }

    let dest = tmp.path().join("pulled");
    for round in 0..2 {
        let out = pull(&cfg, ARCHIVE, &dest).await;
        assert_eq!(out.status.code(), Some(1), "round {round}: {}", text(&out));
        let s = stdout(&out);
        assert!(
            s.contains("skipped case-00 socket dicom-image-set: ")
                && s.contains("is a DICOM image set"),
            "round {round}: {s}"
        );
        assert!(s.contains(", 1 socket skipped"), "round {round}: {s}");
    }
    let item = dest.join("case-00");
    assert!(!item.join("images/dicom-image-set").exists());
    assert!(
        item.join("images/generic-medical-image/image.mha")
            .is_file()
    );
    assert_eq!(
        json_of(&item.join("notes.json")),
        "delivered by gc-hotfolder"
    );
    for pk in &fallback {
        assert_eq!(json_of(&dest.join(pk).join("lung-volume.json")), json!(1.5));
    }
    assert!(!tmp.path().join("up").exists() && !dest.join("a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_refuses_bad_usage_an_unknown_target_and_a_folder_of_another_target() {
    let help = run(vec!["pull".into(), "--help".into()]).await;
    assert!(help.status.success(), "{}", text(&help));
    let h = stdout(&help);
    for needle in [
        "--archive",
        "--reader-study",
        "--algorithm",
        "DEST/<job pk>",
        "DEST",
        ".gc-pull.json",
        "DICOM",
        "Exit status",
    ] {
        assert!(h.contains(needle), "{needle} in:\n{h}");
    }

    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &sb, &tmp.path().join("drop"), None, "");
    let dest = tmp.path().join("pulled");
    // Exactly one target: two, or none, is a usage error.
    for targets in [
        &[
            "--archive",
            "demo-archive",
            "--reader-study",
            "demo-reader-study",
        ][..],
        &[
            "--archive",
            "demo-archive",
            "--algorithm",
            "lung-volume-estimator",
        ],
        &[],
    ] {
        let mut args: Vec<std::ffi::OsString> =
            vec!["pull".into(), "--config".into(), cfg.clone().into()];
        args.extend(targets.iter().map(|a| a.into()));
        args.push(dest.clone().into());
        let out = run(args).await;
        assert_eq!(out.status.code(), Some(2), "{targets:?}: {}", text(&out));
    }

    let unknown = ["--archive", "no-such-archive"];
    pull_refused(&cfg, unknown, &dest, 2, "does not exist").await;

    pull_ok(&cfg, READER_STUDY, &dest).await;
    pull_refused(&cfg, ARCHIVE, &dest, 2, "holds a pull of reader study").await;

    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(DEMO_TOKEN, &"0".repeat(64));
    std::fs::write(&cfg, text_cfg).unwrap();
    let refused = pull(&cfg, READER_STUDY, &dest).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_midway_leaves_no_partial_files_and_the_next_one_fetches_only_the_rest() {
    let sb = sandbox_with(|o| o.faults = vec!["GET /media/* latency=300".parse().unwrap()]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, cases) = five_delivered_cases(&sb, tmp.path()).await;
    let dest = tmp.path().join("pulled");

    let at_kill = pull_killed_midway(&cfg, ARCHIVE, &dest).await;
    for case in &cases {
        assert_no_dotfile_inside(&dest.join(case.file_name().unwrap()));
    }

    let summary = pull_ok(&cfg, ARCHIVE, &dest).await;
    for case in &cases {
        check_archive_item(case, &dest.join(case.file_name().unwrap()));
    }
    assert!(
        !dest.join(".gc-pull.tmp").exists(),
        "the staging folder is gone"
    );
    let total: usize = cases
        .iter()
        .map(|c| tree(&dest.join(c.file_name().unwrap())).len())
        .sum();
    assert!(
        at_kill < total,
        "the kill came midway: {at_kill} of {total}"
    );
    assert_resumed(&summary, at_kill, total);
}

/// Upload `path` and start a job of `algorithm` on it as its `ct-image`; the job's pk.
async fn job_on_upload(c: &Client, algorithm: &str, path: &Path) -> String {
    gc_testkit::client::job_on_upload(c, algorithm, path)
        .await
        .pk
}

/// What a job's folder must hold, from the sandbox's own record of its outputs: relative path → SHA-256
/// for stored files, and relative path → JSON for values.
async fn expected_job_folder(
    c: &Client,
    st: &Value,
    job_pk: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, Value>) {
    let job = st["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["jobs"].as_array().unwrap())
        .find(|j| j["pk"] == job_pk)
        .unwrap_or_else(|| panic!("job {job_pk} in the sandbox's state"));
    let (mut files, mut values) = (BTreeMap::new(), BTreeMap::new());
    for out in job["outputs"].as_array().unwrap() {
        let socket = c.socket(out["socket"].as_str().unwrap()).await.unwrap();
        let rel = socket.relative_path;
        if out["image"].is_object() {
            for f in out["image"]["files"].as_array().unwrap() {
                let name = f["name"].as_str().unwrap();
                files.insert(
                    format!("{rel}/{name}"),
                    f["sha256"].as_str().unwrap().into(),
                );
            }
        } else if out["file"].is_object() {
            files.insert(rel, out["file"]["sha256"].as_str().unwrap().into());
        } else {
            values.insert(rel, out["value"].clone());
        }
    }
    assert!(
        !files.is_empty() || !values.is_empty(),
        "job {job_pk} has outputs"
    );
    (files, values)
}

/// Entries directly in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_pull_writes_each_succeeded_jobs_outputs_and_reports_the_other_jobs() {
    let sb = sandbox().await;
    let (tmp, cfg, c) = config_and_client(&sb);

    // Three jobs that succeed (two CT images of different sizes and a lesion count), one whose input
    // upload is no image (it fails), and one of an algorithm that always fails.
    let mut succeeded = Vec::new();
    let mut images = Vec::new();
    for (seed, dims) in [[6, 5, 4], [3, 3, 2]].into_iter().enumerate() {
        let mha = tmp.path().join(format!("ct-{seed}.mha"));
        gc_content::samples::write_mha(&mha, dims, seed as u64).unwrap();
        succeeded.push(job_on_upload(&c, "lung-volume-estimator", &mha).await);
        images.push(mha);
    }
    let estimator = c.algorithm("lung-volume-estimator").await.unwrap();
    let count = [value("lesion-count", json!(3))];
    let counted = c.start_job(&estimator, &count).await.unwrap();
    succeeded.push(counted.pk);
    let junk = tmp.path().join("junk.mha");
    std::fs::write(&junk, b"not an image at all").unwrap();
    let broken = job_on_upload(&c, "lung-volume-estimator", &junk).await;
    let failing = job_on_upload(&c, "failing-algorithm", &images[0]).await;

    for pk in &succeeded {
        let job = c.await_job(pk, &polling()).await.unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "job {pk}");
    }
    for pk in [&broken, &failing] {
        let job = c.await_job(pk, &polling()).await.unwrap();
        assert_eq!(job.status, JobStatus::Failed, "job {pk}");
    }

    let dest = tmp.path().join("results");
    let first = pull_ok(&cfg, ESTIMATOR, &dest).await;
    assert!(first.contains(": 3 jobs, "), "{first}");
    assert!(first.contains(" 0 sockets skipped"), "{first}");
    assert!(
        first.contains(&format!("not pulled: job {broken} is Failed")),
        "{first}"
    );
    assert!(
        first.contains(", 1 job not pulled (not succeeded)"),
        "{first}"
    );
    let mut want_top = vec![".gc-pull.json".to_owned(), ".gc-pull.lock".to_owned()];
    want_top.extend(succeeded.iter().cloned());
    want_top.sort();
    assert_eq!(
        listing(&dest),
        want_top,
        "one folder per succeeded job, named by its pk; none for the failed one"
    );
    let recorded = json_of(&dest.join(".gc-pull.json"));
    assert_eq!(recorded["target"]["kind"], "algorithm");
    assert_eq!(recorded["target"]["slug"], "lung-volume-estimator");

    let st = state(&sb).await;
    let outbox = tmp.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    for pk in &succeeded {
        let expected = expected_job_folder(&c, &st, pk).await;
        let got = check_folder(&dest.join(pk), &expected, &format!("job {pk}"));
        // The agent's outbox writes a job's outputs; pull writes them the same way.
        let job = c.job(pk).await.unwrap();
        gc_hotfolder::outbox::write_case(
            &c,
            (&outbox, gc_hotfolder::share::Sharing::of(&outbox, None)),
            pk,
            &job.outputs,
            gc_hotfolder::outbox::Existing::Keep,
        )
        .await
        .unwrap();
        assert_eq!(
            tree(&outbox.join(pk)),
            got,
            "job {pk}: as the outbox has it"
        );
    }
    // The image output is a copy of the input image: the very bytes come back.
    for (pk, mha) in succeeded.iter().zip(&images) {
        let dir = dest.join(pk).join("images/generic-medical-image");
        let names = listing(&dir);
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(sha256(&dir.join(&names[0])), sha256(mha), "job {pk}");
    }
    assert_eq!(
        json_of(&dest.join(&succeeded[0]).join("lung-volume.json")),
        json!(120.0),
        "6 × 5 × 4 voxels"
    );

    // Again: nothing is downloaded; the failed job is reported again.
    let (second, _) = pull_fetching_nothing(&sb, &cfg, ESTIMATOR, &dest).await;
    assert!(
        second.contains(&format!("not pulled: job {broken} is Failed")),
        "{second}"
    );

    // An algorithm whose only job failed: reported, no folder, and no failure of the pull.
    let dest_failing = tmp.path().join("failing");
    let s = pull_ok(&cfg, ["--algorithm", "failing-algorithm"], &dest_failing).await;
    assert!(
        s.contains(&format!("not pulled: job {failing} is Failed")),
        "{s}"
    );
    assert!(s.contains(": 0 jobs, "), "{s}");
    assert_eq!(listing(&dest_failing), [".gc-pull.json", ".gc-pull.lock"]);

    // Another user of the algorithm (no editor) sees only their own jobs: none.
    let reader_cfg = tmp.path().join("reader.toml");
    std::fs::write(
        &reader_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(DEMO_TOKEN, DEMO_READER_TOKEN),
    )
    .unwrap();
    let dest_reader = tmp.path().join("reader");
    let s = pull_ok(&reader_cfg, ESTIMATOR, &dest_reader).await;
    assert!(s.contains(": 0 jobs, ") && !s.contains("not pulled"), "{s}");
    assert_eq!(listing(&dest_reader), [".gc-pull.json", ".gc-pull.lock"]);

    // A misspelled slug: a usage error that names the algorithm, and no folder.
    let nowhere = tmp.path().join("nowhere");
    let misspelled = ["--algorithm", "no-such-algorithm"];
    let says = "algorithm 'no-such-algorithm' does not exist";
    pull_refused(&cfg, misspelled, &nowhere, 2, says).await;
    assert!(!nowhere.exists());

    // A folder holding another target's pull is not mixed with an algorithm's, either way round.
    let archive_dest = tmp.path().join("archive");
    pull_ok(&cfg, ARCHIVE, &archive_dest).await;
    let before = std::fs::read(archive_dest.join(".gc-pull.json")).unwrap();
    let says = "holds a pull of archive 'demo-archive'";
    pull_refused(&cfg, ESTIMATOR, &archive_dest, 2, says).await;
    assert_eq!(
        std::fs::read(archive_dest.join(".gc-pull.json")).unwrap(),
        before,
        "the archive's state file is left as it was"
    );
    assert!(succeeded.iter().all(|pk| !archive_dest.join(pk).exists()));
    let says = "holds a pull of algorithm 'lung-volume-estimator'";
    pull_refused(&cfg, ARCHIVE, &dest, 2, says).await;
}

/// Files recorded in a state file, over all items (jobs) and sockets.
fn recorded_files(state: &Value) -> usize {
    state["items"]
        .as_object()
        .into_iter()
        .flat_map(|items| items.values())
        .flat_map(|i| {
            i["sockets"]
                .as_object()
                .into_iter()
                .flat_map(|s| s.values())
        })
        .map(|s| s["files"].as_array().map_or(0, |f| f.len()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_pull_killed_midway_resumes_with_only_the_rest() {
    let sb = sandbox().await;
    let (tmp, cfg, c) = config_and_client(&sb);
    let mut jobs = Vec::new();
    for seed in 0..5u64 {
        let mha = tmp.path().join(format!("ct-{seed}.mha"));
        gc_content::samples::write_mha(&mha, [4, 4, 2 + seed as u32], seed).unwrap();
        jobs.push(job_on_upload(&c, "lung-volume-estimator", &mha).await);
    }
    for pk in &jobs {
        assert_eq!(
            c.await_job(pk, &polling()).await.unwrap().status,
            JobStatus::Succeeded
        );
    }
    // Slow downloads, so that the kill comes while files are still being fetched.
    sb.set_faults(vec!["GET /media/* latency=500".parse().unwrap()])
        .unwrap();

    let dest = tmp.path().join("results");
    let at_kill = pull_killed_midway(&cfg, ESTIMATOR, &dest).await;
    for pk in &jobs {
        assert_no_dotfile_inside(&dest.join(pk));
    }

    sb.set_faults(Vec::new()).unwrap();
    let summary = pull_ok(&cfg, ESTIMATOR, &dest).await;
    let st = state(&sb).await;
    let mut total = 0;
    for pk in &jobs {
        let expected = expected_job_folder(&c, &st, pk).await;
        total += check_folder(&dest.join(pk), &expected, &format!("job {pk}")).len();
    }
    assert!(!dest.join(".gc-pull.tmp").exists(), "no staging left");
    assert!(
        at_kill < total,
        "the kill came midway: {at_kill} of {total}"
    );
    assert_resumed(&summary, at_kill, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_running_is_reported_and_pulled_by_a_later_run_once_it_succeeded() {
    const RUNS_FOR: Duration = Duration::from_secs(5);
    let sb = sandbox_with(|o| {
        for a in &mut o.fixture.algorithms {
            a.duration = RUNS_FOR;
        }
    })
    .await;
    let (tmp, cfg, c) = config_and_client(&sb);
    let estimator = c.algorithm("lung-volume-estimator").await.unwrap();
    let dest = tmp.path().join("results");

    let started = std::time::Instant::now();
    let count = [value("lesion-count", json!(4))];
    let job = c.start_job(&estimator, &count).await.unwrap().pk;
    let s = pull_ok(&cfg, ESTIMATOR, &dest).await;
    // A job cannot succeed sooner than its run time after it was started: a pull that ended within
    // that time saw it unfinished.
    if started.elapsed() < RUNS_FOR {
        assert!(
            s.contains(&format!("not pulled: job {job} is "))
                && s.contains("a later pull fetches it once it has succeeded"),
            "{s}"
        );
        assert!(s.contains(": 0 jobs, "), "{s}");
        assert!(!dest.join(&job).exists());
    }

    let polling = JobPolling {
        first_poll: Duration::from_millis(50),
        max_poll: Duration::from_millis(500),
        deadline: Duration::from_secs(60),
    };
    assert_eq!(
        c.await_job(&job, &polling).await.unwrap().status,
        JobStatus::Succeeded
    );
    let s = pull_ok(&cfg, ESTIMATOR, &dest).await;
    assert!(s.contains(": 1 job, "), "{s}");
    assert!(!s.contains("not pulled"), "{s}");
    let expected = expected_job_folder(&c, &state(&sb).await, &job).await;
    assert!(expected.0.is_empty(), "a lesion count gives values only");
    check_folder(&dest.join(&job), &expected, &format!("job {job}"));
    assert_eq!(
        json_of(&dest.join(&job).join("is-abnormal.json")),
        json!(true),
        "4 is even"
    );
}
