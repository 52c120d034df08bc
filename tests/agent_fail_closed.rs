//! Fail closed, end to end: with de-identification on, a file bound for an image socket leaves only as
//! a de-identified copy or as a recognised non-DICOM format. DICOM a scanner exported without the
//! preamble, in files without an extension, is found by its content and de-identified; a ZIP archive
//! with DICOM inside and a file of a format nobody here recognises quarantine their case before anything
//! exists on the platform, while the other cases are delivered.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gc_content::samples::{self, DicomSeriesIds};
use gc_hotfolder::receipt::Outcome;

const NAME: &str = "ROE^RICHARD";
const ID: &str = "PID8812";

/// A series of the patient, as Part 10 files in `dir`.
fn series(dir: &Path, n: u32, seed: u64) -> Vec<PathBuf> {
    let mut ids = DicomSeriesIds::new(seed);
    ids.patient_name = NAME.into();
    ids.patient_id = ID.into();
    std::fs::create_dir_all(dir).unwrap();
    let mut files = samples::write_dicom_series(dir, n, 8, 8, &ids, seed).unwrap();
    files.sort();
    files
}

/// The data set of a Part 10 file without the preamble and the file meta group: what older scanners
/// and some export tools write.
fn bare(part10: &[u8]) -> Vec<u8> {
    assert_eq!(&part10[128..132], b"DICM");
    let group = u32::from_le_bytes(part10[140..144].try_into().unwrap()) as usize;
    part10[144 + group..].to_vec()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_is_found_by_content_and_the_unrecognised_never_leaves() {
    let Site { sb, tmp, drop } = site().await;
    let state_dir = tmp.path().join("state");

    // A scanner's export: bare data sets named IM0001, IM0002, … in scans/.
    drop_atomically(&drop, "export-0001", |d| {
        let parts = tmp.path().join("part10");
        for (i, f) in series(&parts, 3, 7).iter().enumerate() {
            let bytes = std::fs::read(f).unwrap();
            std::fs::create_dir_all(d.join("scans")).unwrap();
            std::fs::write(d.join(format!("scans/IM{:04}", i + 1)), bare(&bytes)).unwrap();
        }
    });
    // The same kind of series, zipped: the platform would unpack it and import it unchanged.
    drop_atomically(&drop, "zipped", |d| {
        let parts = tmp.path().join("zipped-part10");
        let files = series(&parts, 2, 8);
        std::fs::create_dir_all(d).unwrap();
        let mut zip = zip::ZipWriter::new(std::fs::File::create(d.join("image.zip")).unwrap());
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            zip.start_file(
                format!("series/{name}"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            zip.write_all(&std::fs::read(f).unwrap()).unwrap();
        }
        zip.finish().unwrap();
    });
    // A vendor format nobody here reads (an OCT scan carries the patient in its own header).
    drop_atomically(&drop, "oct", |d| {
        std::fs::create_dir_all(d).unwrap();
        let mut bytes = b"FOCT\0\0\0\0".to_vec();
        bytes.extend_from_slice(format!("patient {NAME} {ID}").as_bytes());
        bytes.extend(std::iter::repeat_n(7u8, 512));
        std::fs::write(d.join("scan.fds"), bytes).unwrap();
    });
    drop_atomically(&drop, "plain", |d| archive_case(d, 0));

    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    edit(
        &cfg,
        "\"dicom/*.dcm\"]",
        "\"dicom/*.dcm\", \"scans/*\", \"image.zip\", \"scan.fds\"]",
    );
    let _agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_receipts(&state_dir, 4, Duration::from_secs(90)).await;
    let by = |case: &str| rs.iter().find(|r| r.case == case).unwrap();

    let export = by("export-0001");
    assert_eq!(export.outcome, Outcome::Delivered, "{:?}", export.reason);
    let files = &socket_of(export, "generic-medical-image").files;
    assert_eq!(files.len(), 3);
    for f in files {
        assert!(f.deidentified, "{f:?}");
        assert!(
            f.upload_name.starts_with("dicom-") && f.upload_name.ends_with(".dcm"),
            "a neutral name: {f:?}"
        );
    }
    assert_eq!(by("plain").outcome, Outcome::Delivered);

    let st = state(&sb).await;
    for (case, cause) in [
        ("zipped", "the ZIP archive holds DICOM (series/"),
        ("oct", "scan.fds: not a format this program recognises"),
    ] {
        let r = by(case);
        assert_eq!(r.outcome, Outcome::Quarantined, "{case}");
        let reason = r.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(cause), "{case}: {reason}");
        assert!(
            reason.contains("nothing was created on the platform"),
            "{reason}"
        );
        assert!(
            items_of(&st, "demo-archive")
                .iter()
                .all(|i| i["title"] != case),
            "{case}: no item"
        );
    }

    // Nothing the platform stored carries the patient's identifiers.
    let stored = files_below(sb.data_dir());
    let mut dicom = 0;
    for p in &stored {
        let bytes = std::fs::read(p).unwrap();
        dicom += usize::from(contains(&bytes, "DICM"));
        for secret in [NAME, ID] {
            assert!(!contains(&bytes, secret), "{secret} in {}", p.display());
        }
    }
    assert!(
        dicom >= 3,
        "the export's series is stored ({dicom} DICOM files)"
    );
}

/// Every way of storing DICOM, each file one case, plus a damaged file of each kind: every byte the
/// sandbox received (request lines, headers, bodies, part uploads) is searched for every identifier,
/// every original UID and every original file name. None is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_carries_an_identifier_whatever_way_dicom_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let requests = tmp.path().join("requests");
    let sb = sandbox_with(|o| o.record = Some(requests.clone())).await;
    let corpus = tmp.path().join("corpus");
    let stored = gc_testkit::python::write_encodings(&gc_testkit::venvs!(), &corpus);
    let drop = tmp.path().join("drop");
    for (n, name) in stored.keys().enumerate() {
        let bytes = std::fs::read(corpus.join(name)).unwrap();
        drop_atomically(&drop, &format!("case-{n}"), |d| {
            std::fs::create_dir_all(d.join("scans")).unwrap();
            std::fs::write(d.join("scans").join(name), &bytes).unwrap();
        });
        drop_atomically(&drop, &format!("damaged-{n}"), |d| {
            std::fs::create_dir_all(d.join("scans")).unwrap();
            std::fs::write(d.join("scans").join(name), &bytes[..bytes.len() * 2 / 3]).unwrap();
        });
    }
    let cfg = write_config(tmp.path(), &sb, &drop, None, "");
    edit(&cfg, "\"dicom/*.dcm\"]", "\"dicom/*.dcm\", \"scans/*\"]");
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    let rs = wait_receipts(
        &tmp.path().join("state"),
        2 * stored.len(),
        Duration::from_secs(120),
    )
    .await;
    agent.stop();
    for (n, (name, how)) in stored.iter().enumerate() {
        let r = rs.iter().find(|r| r.case == format!("case-{n}")).unwrap();
        assert_eq!(
            r.outcome,
            Outcome::Delivered,
            "{name} ({how}): {:?}",
            r.reason
        );
        let d = rs
            .iter()
            .find(|r| r.case == format!("damaged-{n}"))
            .unwrap();
        assert_eq!(d.outcome, Outcome::Quarantined, "{name} ({how}) damaged");
        assert!(d.item.is_none(), "{name} ({how}) damaged: nothing created");
    }

    let records = gc_sandbox::recorder::read(&requests).unwrap();
    let mut part_bytes = 0;
    for r in &records {
        let line = r.request_line();
        let body = std::fs::read(&r.body).unwrap();
        if line.starts_with("PUT /s3/") {
            part_bytes += body.len();
        }
        let head: Vec<u8> = percent_encoding::percent_decode(&r.head).collect();
        for hay in [&r.head, &head, &body] {
            for secret in gc_testkit::python::ENCODINGS_SECRETS
                .iter()
                .copied()
                .chain(stored.keys().map(String::as_str))
            {
                assert!(!contains(hay, secret), "{secret} in {line}");
            }
        }
    }
    assert!(part_bytes > 0, "the copies' bytes were recorded");
}
