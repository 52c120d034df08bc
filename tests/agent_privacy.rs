//! Privacy end to end: the agent delivers DICOM only as de-identified copies (the sandbox's storage is
//! searched for the patient's identifiers), the receipt names what was sent, and DICOM the procedure
//! cannot take quarantines its case before anything exists on the platform while other cases go on.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use gc_content::samples::{self, DicomSeriesIds};
use gc_hotfolder::receipt::{FileReceipt, Outcome, Receipt};
use sha2::Digest;

const NAME: &str = "DOE^JANE";
const ID: &str = "PID4711";
const BIRTH: &str = "19610203";

/// A CT series of `n` slices of the patient, with a birth date, in `case/dicom/`.
fn patient_series(case: &Path, n: u32, seed: u64) -> Vec<PathBuf> {
    let mut ids = DicomSeriesIds::new(seed);
    ids.patient_name = NAME.into();
    ids.patient_id = ID.into();
    let dir = case.join("dicom");
    std::fs::create_dir_all(&dir).unwrap();
    samples::write_dicom_series(&dir, n, 8, 8, &ids, seed).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let mut obj = dicom_object::open_file(f).unwrap();
        obj.put(DataElement::new(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            PrimitiveValue::from(BIRTH),
        ));
        obj.write_to_file(f).unwrap();
    }
    files
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_leaves_only_de_identified_and_bad_dicom_is_stopped_before_the_platform() {
    let Site { sb, tmp, drop } = site().await;
    let state_dir = tmp.path().join("state");
    std::fs::create_dir_all(&drop).unwrap();

    // Staged outside the drop folder, then moved in whole.
    drop_atomically(&drop, "DOE_JANE", |d| {
        patient_series(d, 4, 1);
    });
    drop_atomically(&drop, "not-dicom", |d| {
        std::fs::create_dir_all(d.join("dicom")).unwrap();
        std::fs::write(
            d.join("dicom/a.dcm"),
            "exported by mistake as text\n".repeat(20),
        )
        .unwrap();
    });
    drop_atomically(&drop, "truncated", |d| {
        let files = patient_series(d, 2, 2);
        let bytes = std::fs::read(&files[1]).unwrap();
        std::fs::write(&files[1], &bytes[..bytes.len() - 30]).unwrap();
    });
    drop_atomically(&drop, "secondary-capture", |d| {
        let files = patient_series(d, 1, 3);
        let mut obj = dicom_object::open_file(&files[0]).unwrap();
        let sc = "1.2.840.10008.5.1.4.1.1.7";
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sc),
        ));
        obj.meta_mut().media_storage_sop_class_uid = sc.into();
        obj.write_to_file(&files[0]).unwrap();
    });
    drop_atomically(&drop, "plain", |d| archive_case(d, 0));

    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    // `check` points out the folder named after its patient among the cases present, and only that one.
    let check = gc("check", &cfg).run();
    let said = check.stdout.clone();
    check.expect(0);
    assert!(
        said.contains(
            "case DOE_JANE: WARNING: the title includes the case's folder name at depth 1, which \
             repeats the Patient's Name"
        ),
        "check says:\n{said}"
    );
    assert_eq!(said.matches("WARNING").count(), 1, "the title: {said}");
    assert!(
        !said.contains(NAME),
        "check does not print the identifier itself"
    );
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_receipts(&state_dir, 5, Duration::from_secs(90)).await;
    let by = |case: &str| rs.iter().find(|r| r.case == case).unwrap();

    // The patient's series went out de-identified, and the receipt says what exactly was sent.
    let jane = by("DOE_JANE");
    assert_eq!(jane.outcome, Outcome::Delivered, "{:?}", jane.reason);
    assert!(
        jane.deidentification
            .as_deref()
            .is_some_and(|d| d.contains("2025.11.0")),
        "{:?}",
        jane.deidentification
    );
    let files = &socket_of(jane, "generic-medical-image").files;
    assert_eq!(files.len(), 4);
    for f in files {
        assert!(f.deidentified, "{f:?}");
        assert_eq!(f.sent_sha256.len(), 64);
        assert_ne!(
            f.sent_sha256, f.sha256,
            "{}: the copy differs from the original",
            f.path
        );
        let original = std::fs::read(drop.join("DOE_JANE").join(&f.path)).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&original)),
            f.sha256,
            "the original is untouched"
        );
    }
    assert!(
        jane.warnings
            .iter()
            .any(|w| w.contains("folder name") && w.contains("{hash}")),
        "a folder named after the patient is pointed out: {:?}",
        jane.warnings
    );
    let st = state(&sb).await;
    let stored = stored_image_shas(item_titled(&st, "demo-archive", "DOE_JANE"));
    let mut sent: Vec<String> = files.iter().map(|f| f.sent_sha256.clone()).collect();
    let mut stored_sorted = stored.clone();
    sent.sort();
    stored_sorted.sort();
    assert_eq!(
        stored_sorted, sent,
        "the platform holds exactly the de-identified copies"
    );

    // Nothing the platform stored carries the patient's identifiers.
    let mut kept = Vec::new();
    all_files(sb.data_dir(), &mut kept);
    let mut dicom_seen = 0;
    for p in &kept {
        let bytes = std::fs::read(p).unwrap();
        if contains(&bytes, "DICM") {
            dicom_seen += 1;
        }
        for secret in [NAME, ID, BIRTH] {
            assert!(
                !contains(&bytes, secret),
                "{secret} found in the sandbox's {}",
                p.display()
            );
        }
    }
    assert!(
        dicom_seen >= 4,
        "the sandbox's storage holds the series ({dicom_seen} DICOM files)"
    );

    // Bad DICOM: quarantined with the file and the cause, and nothing made on the platform.
    for (case, file, cause) in [
        (
            "not-dicom",
            "dicom/a.dcm",
            "the platform would not import it",
        ),
        ("truncated", ".dcm", "cut short"),
        ("secondary-capture", ".dcm", "Unsupported SOP Class"),
    ] {
        let r = by(case);
        assert_eq!(r.outcome, Outcome::Quarantined, "{case}");
        let reason = r.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(file) && reason.contains(cause),
            "{case}: {reason}"
        );
        assert!(r.item.is_none(), "{case}: no item");
        assert!(
            items_of(&st, "demo-archive")
                .iter()
                .all(|i| i["title"] != case),
            "{case}: nothing was created on the platform"
        );
    }
    assert_eq!(by("plain").outcome, Outcome::Delivered, "other cases go on");

    // No copy stays behind.
    let staging = state_dir.join("staging");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "staging folders left in {}", staging.display());
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_opts_out_is_warned_about_and_sends_dicom_as_it_is() {
    let Site { sb, tmp, drop } = site().await;
    let state_dir = tmp.path().join("state");
    drop_atomically(&drop, "case", |d| {
        patient_series(d, 2, 4);
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "deidentify = false");

    let check = gc("check", &cfg).run();
    let said = check.stdout.clone() + &check.stderr.clone();
    assert!(
        said.contains("identifiable data will leave this machine"),
        "check says:\n{said}"
    );

    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let r = receipt_for(&state_dir, "case").await;
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    assert_eq!(r.deidentification, None);
    for f in &r.sockets[0].files {
        assert!(!f.deidentified);
        assert_eq!(f.sent_sha256, f.sha256);
    }
    assert!(
        agent
            .log()
            .contains("identifiable data will leave this machine")
    );
    // The search of the other test would see identifiers that do reach the platform.
    let mut kept = Vec::new();
    all_files(sb.data_dir(), &mut kept);
    assert!(
        kept.iter()
            .any(|p| contains(&std::fs::read(p).unwrap(), ID)),
        "sent as it is, the patient ID is in the sandbox's storage"
    );
    agent.stop();
}

/// `kill -9` in the middle of a de-identified file's multipart upload: the restarted agent makes the copy
/// again from the case's secret in the journal and resumes the upload with it, so the platform ends up
/// with exactly the bytes the receipt names, not a mix of two copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_de_identified_upload_killed_midway_resumes_with_the_same_bytes() {
    use gc_sandbox::faults::{FaultAction, FaultRule};
    let sb = sandbox_with(|o| {
        o.faults.push(FaultRule {
            method: Some("PUT".into()),
            path: "/s3/*".into(),
            probability: 1.0,
            action: FaultAction::Latency { ms: 600 },
            after: false,
            times: None,
        })
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let state_dir = tmp.path().join("state");
    // One slice of 2048 × 2560 × 16 bit: 10 MiB, two 5 MiB parts, sent one part at a time.
    drop_atomically(&drop, "big", |d| {
        let mut ids = DicomSeriesIds::new(9);
        ids.patient_name = NAME.into();
        std::fs::create_dir_all(d.join("dicom")).unwrap();
        samples::write_dicom_series(&d.join("dicom"), 1, 2048, 2560, &ids, 9).unwrap();
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "part_size = \"5MiB\"",
        "part_size = \"5MiB\"\nparallel_parts = 1",
    );
    std::fs::write(&cfg, text).unwrap();
    let log = tmp.path().join("agent.log");

    let agent = Agent::start(&cfg, &log);
    let journal = state_dir.join("journal.sqlite3");
    eventually(
        Duration::from_secs(60),
        "a part done, the upload open",
        async || {
            let parts: i64 = journal_value(&journal, "SELECT COUNT(*) FROM parts")?;
            let open: i64 =
                journal_value(&journal, "SELECT COUNT(*) FROM uploads WHERE completed = 0")?;
            (parts >= 1 && open == 1).then_some(())
        },
    )
    .await;
    agent.kill9();

    let agent = Agent::start(&cfg, &log);
    let r = receipt_for(&state_dir, "big").await;
    agent.stop();
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("resuming=true"),
        "the second agent resumed the delivery"
    );
    let f = &r.sockets[0].files[0];
    assert!(f.deidentified);
    let st = state(&sb).await;
    let stored = stored_image_shas(item_titled(&st, "demo-archive", "big"));
    assert_eq!(
        stored,
        vec![f.sent_sha256.clone()],
        "the platform holds the copy the receipt names"
    );
}

/// `kill -9` after every file of a case went out, de-identified, while its item is being created (the
/// files of a case go before its item exists): the restarted agent creates or adopts one item, and sends
/// no file a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_its_item_is_created_a_case_is_delivered_once_without_sending_again() {
    let sb = sandbox_with(|o| {
        o.faults.push(
            "POST /api/v1/archives/items/ latency=60000"
                .parse()
                .unwrap(),
        )
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let state_dir = tmp.path().join("state");
    drop_atomically(&drop, "early", |d| {
        patient_series(d, 3, 21);
        samples::write_pdf(&d.join("report.pdf"), "findings").unwrap();
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    let log = tmp.path().join("agent.log");

    let agent = Agent::start(&cfg, &log);
    let journal = state_dir.join("journal.sqlite3");
    eventually(
        Duration::from_secs(60),
        "every file uploaded, the item being created",
        async || {
            let step: String = journal_value(&journal, "SELECT step FROM cases")?;
            let done: i64 =
                journal_value(&journal, "SELECT COUNT(*) FROM uploads WHERE completed = 1")?;
            (step == "creating" && done == 4).then_some(())
        },
    )
    .await;
    agent.kill9();
    sb.set_faults(vec![]).unwrap();

    let agent = Agent::start(&cfg, &log);
    let r = receipt_for(&state_dir, "early").await;
    agent.stop();
    assert_eq!(r.outcome, Outcome::Delivered, "{:?}", r.reason);
    let st = state(&sb).await;
    let titled = items_of(&st, "demo-archive")
        .into_iter()
        .filter(|i| i["title"] == "early")
        .count();
    assert_eq!(titled, 1, "one item for the case");
    assert_eq!(
        st["requests"]["POST /api/v1/uploads/ 201"], 4,
        "each file was uploaded once: {}",
        st["requests"]
    );
    assert!(
        files_of(&r, "generic-medical-image")
            .iter()
            .all(|f| f.deidentified)
    );
}

/// The files of one socket in a receipt.
fn files_of(r: &Receipt, socket: &str) -> Vec<FileReceipt> {
    socket_of(r, socket).files.clone()
}

/// SHA-256 of every file the sandbox stored.
fn stored_hashes(sb: &gc_sandbox::Sandbox) -> Vec<String> {
    let mut kept = Vec::new();
    all_files(sb.data_dir(), &mut kept);
    kept.iter()
        .map(|p| hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap())))
        .collect()
}

/// An update sends only the socket whose files changed. Every revision's receipt still says, for the
/// DICOM it did not send again, what the platform holds: the de-identified copies revision 1 sent, the
/// very bytes the sandbox stored. That holds across a restart of the agent with its receipts gone (the
/// journal is the record), and for an update made by `upload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revision_states_what_was_sent_also_for_files_an_update_did_not_send_again() {
    let Site { sb, tmp, drop } = site().await;
    let state_dir = tmp.path().join("state");
    let log = tmp.path().join("agent.log");
    drop_atomically(&drop, "case-1", |d| {
        patient_series(d, 3, 11);
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "on_change = \"update\"");
    const CT: &str = "generic-medical-image";

    let agent = Agent::start(&cfg, &log);
    let r1 = receipt_for(&state_dir, "case-1").await;
    agent.stop();
    assert_eq!(
        (r1.outcome, r1.revision),
        (Outcome::Delivered, 1),
        "{:?}",
        r1.reason
    );
    let ct = files_of(&r1, CT);
    assert_eq!(ct.len(), 3);
    for f in &ct {
        assert!(f.deidentified && f.sent_revision == 1, "{f:?}");
        assert!(f.upload_name.starts_with("dicom-"), "{f:?}");
        assert_ne!(f.sent_sha256, f.sha256, "{f:?}");
    }
    let sent = |files: &[FileReceipt]| {
        let mut v: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.upload_name.clone(), f.sent_sha256.clone()))
            .collect();
        v.sort();
        v
    };
    let st = state(&sb).await;
    let item = item_titled(&st, "demo-archive", "case-1");
    assert_eq!(stored_files(value_of(item, CT)), sent(&ct));
    let ct_value_pk = value_of(item, CT)["pk"].clone();

    // A late report, to another socket, while the agent is down and its receipts are gone: what revision
    // 1 sent can only come from the journal.
    std::fs::remove_dir_all(state_dir.join("receipts")).unwrap();
    samples::write_pdf(&drop.join("case-1/report.pdf"), "late report").unwrap();
    let agent = Agent::start(&cfg, &log);
    let r2 = wait_receipts_until(&state_dir, Duration::from_secs(60), |r| {
        r.iter().any(|r| r.revision == 2)
    })
    .await
    .remove(0);
    agent.stop();
    assert_eq!(r2.outcome, Outcome::Delivered, "{:?}", r2.reason);
    assert_eq!(r2.item, r1.item, "the same item is updated");
    assert_eq!(
        files_of(&r2, CT),
        ct,
        "revision 2 states the CT files as revision 1 sent them"
    );
    let report = files_of(&r2, "report");
    assert_eq!(report.len(), 1);
    assert!(
        !report[0].deidentified
            && report[0].sent_revision == 2
            && report[0].sent_sha256 == report[0].sha256,
        "{report:?}"
    );
    let st = state(&sb).await;
    let item = item_titled(&st, "demo-archive", "case-1");
    assert_eq!(
        value_of(item, CT)["pk"],
        ct_value_pk,
        "the CT was not sent again"
    );
    assert_eq!(stored_files(value_of(item, CT)), sent(&ct));
    assert_eq!(stored_files(value_of(item, "report")), sent(&report));

    // Another late file, delivered by `upload`: revision 3 carries over both earlier revisions.
    std::fs::write(drop.join("case-1/count.json"), "4").unwrap();
    let case = drop.join("case-1");
    gc("upload", &cfg).arg(&case).run_async().await.expect(0);
    let r3 = receipts(&state_dir.join("receipts")).remove(0);
    assert_eq!(
        (r3.outcome, r3.revision),
        (Outcome::Delivered, 3),
        "{:?}",
        r3.reason
    );
    assert_eq!(files_of(&r3, CT), ct);
    assert_eq!(files_of(&r3, "report"), report);
    assert_eq!(
        r3.sockets
            .iter()
            .find(|s| s.slug == "lesion-count")
            .and_then(|s| s.value.clone()),
        Some(serde_json::json!(4))
    );

    // Every hash a receipt names as sent is that of bytes the sandbox stored.
    let hashes = stored_hashes(&sb);
    for f in ct.iter().chain(&report) {
        assert!(
            hashes.contains(&f.sent_sha256),
            "{}: {} is not in the sandbox's storage",
            f.path,
            f.sent_sha256
        );
    }
}

/// Identifiers put into the scanner-style series, each distinctive enough that finding it anywhere
/// can only mean it leaked: patient name, ID, birth date, accession number, institution, referring
/// physician, and a name in a private tag.
const SCANNER_IDENTIFIERS: [(Tag, VR, &str); 7] = [
    (tags::PATIENT_NAME, VR::PN, "SMITHERSON^JANELLE"),
    (tags::PATIENT_ID, VR::LO, "PID4711X"),
    (tags::PATIENT_BIRTH_DATE, VR::DA, "19580317"),
    (tags::ACCESSION_NUMBER, VR::SH, "ACC9182736"),
    (
        tags::INSTITUTION_NAME,
        VR::LO,
        "Elsewhere Memorial Hospital",
    ),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, "HOUSEMAN^GREGORIO"),
    (Tag(0x0009, 0x1001), VR::PN, "PRIVATOVA^MILENA"),
];

/// A CT series as a scanner pipeline through DCMTK's `storescp` leaves it: `ct/CT.<SOP Instance UID>`,
/// no extension, with every identifier of [`SCANNER_IDENTIFIERS`]. Returns every string of it that
/// must not leave the machine: the identifiers (names word by word, as a URL or JSON could split
/// them), the original Study, Series, Frame of Reference and SOP Instance UIDs, and the file names.
fn scanner_series(case: &Path, seed: u64) -> Vec<String> {
    let ids = DicomSeriesIds::new(seed);
    let written = case.join("written");
    std::fs::create_dir_all(&written).unwrap();
    std::fs::create_dir_all(case.join("ct")).unwrap();
    let mut secrets = vec![
        ids.study_instance_uid.clone(),
        ids.series_instance_uid.clone(),
        ids.frame_of_reference_uid.clone(),
    ];
    for (_, _, value) in SCANNER_IDENTIFIERS {
        secrets.push(value.into());
        secrets.extend(value.split('^').map(str::to_owned));
    }
    for f in samples::write_dicom_series(&written, 3, 8, 8, &ids, seed).unwrap() {
        let mut obj = dicom_object::open_file(&f).unwrap();
        obj.put(DataElement::new(
            Tag(0x0009, 0x0010),
            VR::LO,
            PrimitiveValue::from("SCANNER PRIVATE 1.0"),
        ));
        for (tag, vr, value) in SCANNER_IDENTIFIERS {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
        }
        let sop = obj
            .element(tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap();
        let sop = sop.trim_end_matches(['\0', ' ']).to_owned();
        let name = format!("CT.{sop}");
        obj.write_to_file(case.join("ct").join(&name)).unwrap();
        secrets.extend([sop, name]);
    }
    std::fs::remove_dir_all(&written).unwrap();
    secrets
}

/// Which of `secrets` occur in `hay`, as they are or in any case.
fn found_in(hay: &[u8], secrets: &[String]) -> Vec<String> {
    let lower = hay.to_ascii_lowercase();
    secrets
        .iter()
        .filter(|s| contains(hay, s) || contains(&lower, &s.to_ascii_lowercase()))
        .cloned()
        .collect()
}

/// A scanner's series, named by its SOP Instance UIDs, delivered by the agent and by `upload` into a
/// sandbox that records every request: no original UID, identifier or file name is in any request
/// (request line, headers, body, part PUTs) or in anything the sandbox stored; the names it stored are
/// the neutral ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_or_original_uid_leaves_in_any_request() {
    let tmp = tempfile::tempdir().unwrap();
    let requests = tmp.path().join("requests");
    let sb = sandbox_with(|o| o.record = Some(requests.clone())).await;
    let drop = tmp.path().join("drop");
    let state_dir = tmp.path().join("state");
    let mut secrets = Vec::new();
    drop_atomically(&drop, "scan-0001", |d| {
        secrets.extend(scanner_series(d, 21));
    });
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    edit(&cfg, r#""dicom/*.dcm""#, r#""dicom/*.dcm", "ct/CT.*""#);

    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let by_agent = receipt_for(&state_dir, "scan-0001").await;
    agent.stop();
    drop_atomically(&drop, "scan-0002", |d| {
        secrets.extend(scanner_series(d, 22));
    });
    let case = drop.join("scan-0002");
    gc("upload", &cfg).arg(&case).run_async().await.expect(0);
    let by_upload = receipt_for(&state_dir, "scan-0002").await;

    // Delivered, as de-identified copies under neutral names; the platform holds those names.
    let st = state(&sb).await;
    for r in [&by_agent, &by_upload] {
        assert_eq!(r.outcome, Outcome::Delivered, "{}: {:?}", r.case, r.reason);
        let ct = files_of(r, "generic-medical-image");
        assert_eq!(ct.len(), 3);
        assert!(ct.iter().all(|f| f.deidentified), "{ct:?}");
        let mut names: Vec<(String, String)> = ct
            .iter()
            .map(|f| (f.upload_name.clone(), f.sent_sha256.clone()))
            .collect();
        names.sort();
        let item = item_titled(&st, "demo-archive", &r.case);
        assert_eq!(stored_files(value_of(item, "generic-medical-image")), names);
        let stored: Vec<String> = names.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            stored,
            ["dicom-0001.dcm", "dicom-0002.dcm", "dicom-0003.dcm"],
            "{}: the names the platform stored tell nothing of the originals",
            r.case
        );
    }

    // Every request, whole: none carries a secret, and the search does see the series that was sent.
    let records = gc_sandbox::recorder::read(&requests).unwrap();
    let (mut part_puts, mut new_uids) = (0, 0);
    for r in &records {
        let line = r.request_line();
        assert_eq!(r.complete(), Some(true), "{line}: recorded whole");
        let body = std::fs::read(&r.body).unwrap();
        let decoded: Vec<u8> = percent_encoding::percent_decode(&r.head).collect();
        for hay in [&r.head, &decoded, &body] {
            let found = found_in(hay, &secrets);
            assert!(found.is_empty(), "{line}: {found:?} left the machine");
        }
        part_puts += usize::from(line.starts_with("PUT /s3/"));
        new_uids += usize::from(contains(&body, gc_content::deidentify::ROOT_UID));
    }
    assert!(
        part_puts >= 6 && new_uids >= 6,
        "the recorded bodies hold the six copies ({part_puts} part PUTs, {new_uids} with new UIDs)"
    );

    // Nor anything the sandbox stored, by name or by content.
    let mut kept = Vec::new();
    all_files(sb.data_dir(), &mut kept);
    for p in &kept {
        let name = p.strip_prefix(sb.data_dir()).unwrap().to_string_lossy();
        let found = found_in(name.as_bytes(), &secrets);
        assert!(found.is_empty(), "{name}: {found:?} in the stored name");
        let found = found_in(&std::fs::read(p).unwrap(), &secrets);
        assert!(found.is_empty(), "{name}: {found:?} in the stored file");
    }
}
