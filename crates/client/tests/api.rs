//! The platform client against the sandbox over loopback: token checks, lookups, items and display sets
//! with every kind of socket, verification, import failures, every error class, retries through injected
//! faults, and HTTPS with an extra CA.

use std::time::{Duration, Instant};

use gc_client::models::{Item, Target, TargetKind, ValueEntry, ValueSource};
use gc_client::{Awaiting, Client, ClientConfig, Expectation, GcError, Token, VerifyTiming};
use gc_content::samples;
use gc_sandbox::{DEMO_READER_TOKEN, DEMO_TOKEN};
use gc_testkit::client::*;
use serde_json::json;

fn entry(socket: &str, source: ValueSource) -> ValueEntry {
    ValueEntry {
        socket: socket.into(),
        source,
    }
}

fn expect(socket: &str, awaiting: Awaiting) -> Expectation {
    Expectation {
        socket: socket.into(),
        previous_pk: None,
        awaiting,
    }
}

/// One value set on the item `pk` of `t` by a PATCH of its own.
async fn patch_one(c: &Client, t: &Target, pk: &str, entry: ValueEntry) -> Result<Item, GcError> {
    c.patch_values(t, pk, &[entry]).await
}

/// One value set on the item `pk` of `t` (a PATCH that must succeed), then a wait until the item shows
/// what `expectation` awaits, or `timing` says to stop.
async fn set_and_await(
    c: &Client,
    t: &Target,
    pk: &str,
    (entry, expectation): (ValueEntry, Expectation),
    timing: &VerifyTiming,
) -> Result<Item, GcError> {
    patch_one(c, t, pk, entry).await.unwrap();
    c.await_values(t, pk, &[expectation], timing).await
}

/// A new item titled `title` in `t`, and the URL of a completed upload of `bytes` as the file `name`
/// (not yet a value of the item).
async fn item_and_upload(
    c: &Client,
    t: &Target,
    title: &str,
    name: &str,
    bytes: &[u8],
) -> (Item, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let item = c.create_item(t, title).await.unwrap();
    (item, upload(c, &path).await.api_url)
}

/// The item of `t` titled `title`, which must exist.
async fn titled(c: &Client, t: &Target, title: &str) -> Item {
    c.find_item_by_title(t, title).await.unwrap().unwrap()
}

/// A [`sandbox_and_client`] with the demo target of `kind`.
async fn sandbox_client_target(kind: TargetKind) -> (gc_sandbox::Sandbox, Client, Target) {
    let (sb, c) = sandbox_and_client().await;
    let t = target(&c, kind).await;
    (sb, c, t)
}

async fn target(c: &Client, kind: TargetKind) -> Target {
    let slug = match kind {
        TargetKind::Archive => "demo-archive",
        TargetKind::ReaderStudy => "demo-reader-study",
        TargetKind::Algorithm => "lung-volume-estimator",
    };
    c.resolve_target(kind, slug).await.unwrap()
}

fn bbox() -> serde_json::Value {
    json!({"type": "2D bounding box", "name": "nodule",
           "corners": [[10, 10, 0], [40, 10, 0], [40, 30, 0], [10, 30, 0]],
           "version": {"major": 1, "minor": 0}})
}

#[tokio::test]
async fn whoami_checks_the_token() {
    let sb = sandbox().await;
    assert_eq!(client(&sb).whoami().await.unwrap(), "demo");
    assert_eq!(
        client_as(&sb, DEMO_READER_TOKEN).whoami().await.unwrap(),
        "reader"
    );
    let bad = "f".repeat(64);
    let err = client_as(&sb, &bad).whoami().await.unwrap_err();
    assert!(matches!(err, GcError::Auth { status: 401, .. }), "{err}");
    assert!(err.to_string().contains("Invalid token."), "{err}");
    assert!(!err.to_string().contains(&bad) && !format!("{err:?}").contains(&bad));
    sb.stop().await;
}

#[tokio::test]
async fn lookups_by_slug_are_cached_and_missing_ones_are_clear() {
    let (sb, c) = sandbox_and_client().await;
    let s = c.socket("lesion-count").await.unwrap();
    assert_eq!(
        (s.kind.as_str(), s.super_kind),
        ("Integer", gc_client::SuperKind::Value)
    );
    assert!(
        c.socket("dicom-image-set")
            .await
            .unwrap()
            .is_dicom_image_set()
    );
    c.socket("lesion-count").await.unwrap();
    assert_eq!(
        count(&sb, "GET /api/v1/components/interfaces/ 200"),
        2,
        "the second lookup came from the cache"
    );
    let err = c.socket("no-such-socket").await.unwrap_err();
    assert!(
        matches!(&err, GcError::NotFound(m) if m.contains("'no-such-socket' is not an existing socket")),
        "{err}"
    );

    let a = target(&c, TargetKind::Archive).await;
    assert_eq!(a.kind, TargetKind::Archive);
    assert!(
        a.api_url.ends_with(&format!("/api/v1/archives/{}/", a.pk)),
        "{a:?}"
    );
    let r = target(&c, TargetKind::ReaderStudy).await;
    assert!(r.api_url.contains("/api/v1/reader-studies/"), "{r:?}");
    c.resolve_target(TargetKind::Archive, "demo-archive")
        .await
        .unwrap();
    assert_eq!(count(&sb, "GET /api/v1/archives/ 200"), 1);
    let err = c
        .resolve_target(TargetKind::Archive, "elsewhere")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GcError::NotFound(m) if m.contains("archive 'elsewhere' does not exist")),
        "{err}"
    );
    let err = c
        .resolve_target(TargetKind::ReaderStudy, "elsewhere")
        .await
        .unwrap_err();
    assert!(matches!(err, GcError::NotFound(_)), "{err}");
    sb.stop().await;
}

/// One item with a value for every demo socket, delivered in one PATCH and verified.
async fn every_socket_kind_into(kind: TargetKind) {
    let (sb, c, t) = sandbox_client_target(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let mha = d.join("scan.mha");
    samples::write_mha(&mha, [8, 8, 4], 1).unwrap();
    let (mhd, raw) = samples::write_mhd_pair(d, "ct", [8, 8, 3], 2).unwrap();
    let seg = d.join("seg.mha");
    samples::write_segmentation_mha(&seg, [8, 8, 4], &[1], 3).unwrap();
    let dcm_dir = d.join("dicom");
    std::fs::create_dir(&dcm_dir).unwrap();
    let series =
        samples::write_dicom_series(&dcm_dir, 3, 8, 8, &samples::DicomSeriesIds::new(4), 4)
            .unwrap();
    let pdf = d.join("report.pdf");
    samples::write_pdf(&pdf, "findings").unwrap();
    let results = d.join("results.json");
    std::fs::write(&results, br#"{"score": 0.93, "labels": ["a", "b"]}"#).unwrap();

    let item = c.create_item(&t, "every-kind").await.unwrap();
    assert_eq!(item.title, "every-kind");
    assert!(item.values.is_empty());

    let u_mha = upload(&c, &mha).await.api_url;
    let u_ct = vec![
        upload(&c, &mhd).await.api_url,
        upload(&c, &raw).await.api_url,
    ];
    let u_seg = upload(&c, &seg).await.api_url;
    let mut u_dcm = Vec::new();
    for f in &series {
        u_dcm.push(upload(&c, f).await.api_url);
    }
    let u_pdf = upload(&c, &pdf).await.api_url;
    let u_json = upload(&c, &results).await.api_url;

    let values = [
        ("notes", json!("a note about the case")),
        ("lesion-count", json!(3)),
        ("lung-volume", json!(2.75)),
        ("is-abnormal", json!(true)),
        ("metadata", json!({"site": "A", "scanner": {"kvp": 120}})),
        ("nodule-box", bbox()),
        ("diagnosis", json!("benign")),
    ];
    let mut entries = vec![
        entry(
            "generic-medical-image",
            ValueSource::UserUploads(vec![u_mha.clone()]),
        ),
        entry("ct-image", ValueSource::UserUploads(u_ct.clone())),
        entry(
            "segmentation",
            ValueSource::UserUploads(vec![u_seg.clone()]),
        ),
        entry(
            "dicom-image-set",
            ValueSource::DicomImageSet {
                uploads: u_dcm.clone(),
                image_name: "Series 1".into(),
            },
        ),
        entry("report", ValueSource::UserUpload(u_pdf.clone())),
        entry("results-json", ValueSource::UserUpload(u_json.clone())),
    ];
    let mut expectations = vec![
        expect(
            "generic-medical-image",
            Awaiting::Image {
                uploads: vec![u_mha],
            },
        ),
        expect("ct-image", Awaiting::Image { uploads: u_ct }),
        expect(
            "segmentation",
            Awaiting::Image {
                uploads: vec![u_seg],
            },
        ),
        expect(
            "dicom-image-set",
            Awaiting::DicomImageSet { uploads: u_dcm },
        ),
        expect("report", Awaiting::File { upload: u_pdf }),
        expect("results-json", Awaiting::File { upload: u_json }),
    ];
    for (socket, v) in &values {
        entries.push(entry(socket, ValueSource::Value(v.clone())));
        expectations.push(expect(socket, Awaiting::Value(v.clone())));
    }

    let patched = c.patch_values(&t, &item.pk, &entries).await.unwrap();
    // Inline values are set inside the PATCH.
    for (socket, v) in &values {
        assert_eq!(
            patched.value_for(socket).unwrap().value.as_ref(),
            Some(v),
            "{socket}"
        );
    }
    let done = c
        .await_values(&t, &item.pk, &expectations, &timing())
        .await
        .unwrap();
    for socket in [
        "generic-medical-image",
        "ct-image",
        "segmentation",
        "dicom-image-set",
    ] {
        let image = done
            .value_for(socket)
            .unwrap()
            .image
            .clone()
            .unwrap_or_default();
        assert!(image.contains("/api/v1/cases/images/"), "{socket}: {image}");
    }
    for socket in ["report", "results-json"] {
        assert!(done.value_for(socket).unwrap().file.is_some(), "{socket}");
    }
    assert_eq!(done.values.len(), 13);

    // The file values hold exactly our bytes.
    let back = d.join("report-back.pdf");
    let n = c
        .download(
            done.value_for("report").unwrap().file.as_ref().unwrap(),
            &back,
        )
        .await
        .unwrap();
    assert_eq!(n, std::fs::metadata(&pdf).unwrap().len());
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&pdf).unwrap());

    // An existing image can be attached to another item by URL; it is set inside the PATCH.
    let image = done.value_for("ct-image").unwrap().image.clone().unwrap();
    let other = c.create_item(&t, "reuses-an-image").await.unwrap();
    let by_url = (
        entry("ct-image", ValueSource::Image(image.clone())),
        expect("ct-image", Awaiting::ExistingImage(image.clone())),
    );
    let reused = set_and_await(&c, &t, &other.pk, by_url, &timing())
        .await
        .unwrap();
    assert_eq!(
        reused.value_for("ct-image").unwrap().image.as_deref(),
        Some(image.as_str())
    );

    // Replacing an asynchronous value waits for the new one, not the old one still in place.
    let previous = done.value_for("report").unwrap().pk;
    let u2 = upload(&c, &pdf).await.api_url;
    let new_report = Expectation {
        socket: "report".into(),
        previous_pk: Some(previous),
        awaiting: Awaiting::File { upload: u2.clone() },
    };
    let new_report = (entry("report", ValueSource::UserUpload(u2)), new_report);
    let replaced = set_and_await(&c, &t, &item.pk, new_report, &timing())
        .await
        .unwrap();
    assert_ne!(replaced.value_for("report").unwrap().pk, previous);
    sb.stop().await;
}

#[tokio::test]
async fn every_socket_kind_into_an_archive() {
    every_socket_kind_into(TargetKind::Archive).await;
}

#[tokio::test]
async fn every_socket_kind_into_a_reader_study() {
    every_socket_kind_into(TargetKind::ReaderStudy).await;
}

#[tokio::test]
async fn a_failed_image_import_is_reported_with_the_sessions_message() {
    let (sb, c) = sandbox_and_client().await;
    for kind in [TargetKind::Archive, TargetKind::ReaderStudy] {
        let t = target(&c, kind).await;
        let junk = b"this is not an image";
        let (item, u) = item_and_upload(&c, &t, "broken-image", "junk.mha", junk).await;
        let image = (
            entry("ct-image", ValueSource::UserUploads(vec![u.clone()])),
            expect("ct-image", Awaiting::Image { uploads: vec![u] }),
        );
        let err = set_and_await(&c, &t, &item.pk, image, &timing())
            .await
            .unwrap_err();
        let GcError::ImportFailed { socket, message } = &err else {
            panic!("{err}")
        };
        assert_eq!(socket, "ct-image");
        assert_eq!(message, "1 file could not be imported");
    }
    sb.stop().await;
}

#[tokio::test]
async fn a_file_the_platform_never_accepts_is_reported_at_the_deadline() {
    let (sb, c, t) = sandbox_client_target(TargetKind::Archive).await;
    let bad = b"{not json";
    let (item, u) = item_and_upload(&c, &t, "bad-json-file", "results.json", bad).await;
    let file = (
        entry("results-json", ValueSource::UserUpload(u.clone())),
        expect("results-json", Awaiting::File { upload: u }),
    );
    let quick = VerifyTiming {
        file_deadline: Duration::from_millis(1500),
        ..timing()
    };
    let started = Instant::now();
    let err = set_and_await(&c, &t, &item.pk, file, &quick)
        .await
        .unwrap_err();
    let GcError::ImportFailed { socket, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(socket, "results-json");
    assert!(message.contains("did not accept the file"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(started.elapsed() < Duration::from_secs(10));

    // A value that never shows up at all times out.
    let dicom = VerifyTiming {
        dicom_deadline: Duration::from_millis(300),
        ..timing()
    };
    let set = [expect(
        "dicom-image-set",
        Awaiting::DicomImageSet { uploads: vec![] },
    )];
    let err = c
        .await_values(&t, &item.pk, &set, &dicom)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GcError::VerifyTimeout { socket, .. } if socket == "dicom-image-set"),
        "{err}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn duplicate_titles_are_recognised_and_the_item_is_found_by_paging() {
    let (sb, c) = sandbox_and_client().await;
    for kind in [TargetKind::Archive, TargetKind::ReaderStudy] {
        let t = target(&c, kind).await;
        let first = c.create_item(&t, "case-0000").await.unwrap();
        // More than one page (100) of items before the one we look for next.
        for i in 1..=105 {
            c.create_item(&t, &format!("case-{i:04}")).await.unwrap();
        }
        let err = c.create_item(&t, "case-0000").await.unwrap_err();
        assert!(err.is_duplicate_title(), "{err}");
        assert!(matches!(err, GcError::Rejected { status: 400, .. }));
        assert_eq!(titled(&c, &t, "case-0000").await.pk, first.pk);
        assert_eq!(titled(&c, &t, "case-0105").await.title, "case-0105");
        assert!(
            c.find_item_by_title(&t, "case-9999")
                .await
                .unwrap()
                .is_none()
        );
        let got = c.get_item(&t, &first.pk).await.unwrap();
        assert_eq!(got.title, "case-0000");
        assert_eq!(
            c.item_api_url(&t, &first.pk),
            format!(
                "{}{}{}/",
                sb.base_url(),
                if kind == TargetKind::Archive {
                    "archives/items/"
                } else {
                    "reader-studies/display-sets/"
                },
                first.pk
            )
        );
    }
    sb.stop().await;
}

#[tokio::test]
async fn every_error_class_carries_the_platforms_words() {
    let (sb, c, archive) = sandbox_client_target(TargetKind::Archive).await;
    let study = target(&c, TargetKind::ReaderStudy).await;
    let item = c.create_item(&archive, "errors").await.unwrap();

    // 403: the reader may view the archive but not change it.
    let reader = client_as(&sb, DEMO_READER_TOKEN);
    let ra = target(&reader, TargetKind::Archive).await;
    reader.get_item(&ra, &item.pk).await.unwrap();
    let notes = entry("notes", ValueSource::Value(json!("x")));
    let err = patch_one(&reader, &ra, &item.pk, notes).await.unwrap_err();
    assert!(
        matches!(&err, GcError::Auth { status: 403, detail } if detail.contains("You do not have permission")),
        "{err}"
    );
    // … nor create items in it (a 400 on the hyperlink, as the platform answers).
    let err = reader.create_item(&ra, "not-mine").await.unwrap_err();
    assert!(
        matches!(&err, GcError::Rejected { status: 400, message, .. } if message == "archive: Invalid hyperlink - Object does not exist."),
        "{err}"
    );

    // 404.
    let err = c
        .get_item(&archive, &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GcError::NotFound(m) if m.contains("No ArchiveItem matches the given query.")),
        "{err}"
    );
    assert!(
        c.get_upload(&uuid::Uuid::new_v4().to_string())
            .await
            .unwrap()
            .is_none()
    );

    // 400 with one error object per values entry, flattened with the entry's index; nothing was applied.
    let err = c
        .patch_values(
            &archive,
            &item.pk,
            &[
                entry("notes", ValueSource::Value(json!("fine"))),
                entry("report", ValueSource::Value(json!("not a file"))),
                entry("no-such-socket", ValueSource::Value(json!(1))),
                entry("lesion-count", ValueSource::Value(json!("abc"))),
            ],
        )
        .await
        .unwrap_err();
    let GcError::Rejected {
        status: 400,
        message,
        body,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(
        message.contains(
            "values[1].non_field_errors: user_upload or file is required for interface kind PDF"
        ),
        "{message}"
    );
    assert!(
        message.contains("values[2].interface: Object with slug=no-such-socket does not exist."),
        "{message}"
    );
    assert!(
        message.contains(
            "values[3].__all__: JSON does not fulfill schema: instance 'abc' is not of type 'integer'"
        ),
        "{message}"
    );
    assert_eq!(body["values"][0], json!({}));
    assert!(
        c.get_item(&archive, &item.pk)
            .await
            .unwrap()
            .values
            .is_empty(),
        "the PATCH was rolled back"
    );

    // 400 as a bare array: the answered display set is frozen.
    let answered = titled(&c, &study, "answered-case").await;
    let notes = entry("notes", ValueSource::Value(json!("x")));
    let err = patch_one(&c, &study, &answered.pk, notes)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GcError::Rejected { status: 400, message, .. } if message == "This display set cannot be changed, as answers for it already exist."),
        "{err}"
    );
    assert!(!err.is_duplicate_title() && !err.is_retryable_later());

    // 401 on a write with a token the platform does not know.
    let stranger = client_as(&sb, &"0".repeat(64));
    let err = stranger.create_item(&archive, "x").await.unwrap_err();
    assert!(matches!(err, GcError::Auth { status: 401, .. }), "{err}");
    sb.stop().await;
}

#[tokio::test]
async fn html_500_is_retried_for_reads_but_not_for_writes() {
    let (sb, c, t) = sandbox_client_target(TargetKind::Archive).await;
    let item = c.create_item(&t, "five-hundred").await.unwrap();

    set_faults(&sb, &["GET /api/v1/archives/items/* 500 times=2"]);
    assert_eq!(c.get_item(&t, &item.pk).await.unwrap().pk, item.pk);
    assert_eq!(count(&sb, "GET /api/v1/archives/items/{pk}/ 500"), 2);

    set_faults(&sb, &["POST /api/v1/archives/items/ 500 times=1"]);
    let err = c.create_item(&t, "not-repeated").await.unwrap_err();
    let GcError::Unavailable { message, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains(
            "HTTP 500 Internal Server Error (HTML page \"Server error - Grand Challenge\")"
        ),
        "{message}"
    );
    assert!(
        !message.contains("<html") && !message.contains("<h1>"),
        "{message}"
    );
    assert!(err.is_retryable_later());
    assert_eq!(
        count(&sb, "POST /api/v1/archives/items/ 500"),
        1,
        "a write that failed with 500 is not repeated"
    );
    sb.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_then_the_request_succeeds() {
    let sb = sandbox().await;
    let c = client_with(&sb, |cfg| cfg.retry.max_delay = Duration::from_secs(5));
    set_faults(&sb, &["GET /api/v1/archives/ 429 retry-after=1 times=1"]);
    let started = Instant::now();
    let t = target(&c, TargetKind::Archive).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as told: {:?}",
        started.elapsed()
    );
    assert_eq!(count(&sb, "GET /api/v1/archives/ 429"), 1);

    set_faults(
        &sb,
        &["POST /api/v1/archives/items/ 503 retry-after=1 times=1"],
    );
    let started = Instant::now();
    c.create_item(&t, "after-503").await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(count(&sb, "POST /api/v1/archives/items/ 503"), 1);
    assert_eq!(count(&sb, "POST /api/v1/archives/items/ 201"), 1);

    // A budget spent on 502s ends as Unavailable, retryable later.
    set_faults(&sb, &["GET /api/v1/archives/items/* 502"]);
    let err = c.find_item_by_title(&t, "after-503").await.unwrap_err();
    assert!(
        matches!(&err, GcError::Unavailable { message, .. } if message.contains("502 Bad Gateway") && message.contains("after 5 attempts")),
        "{err}"
    );
    assert_eq!(count(&sb, "GET /api/v1/archives/items/ 502"), 5);
    sb.stop().await;
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let (sb, c, t) = sandbox_client_target(TargetKind::Archive).await;
    let item = c.create_item(&t, "dropped").await.unwrap();

    // Before the server handles the request, and in the middle of its answer.
    set_faults(
        &sb,
        &[
            "GET /api/v1/archives/items/* drop times=2",
            "PATCH /api/v1/archives/items/* drop after times=1",
        ],
    );
    c.get_item(&t, &item.pk).await.unwrap();
    assert_eq!(count(&sb, "GET /api/v1/archives/items/{pk}/ dropped"), 2);
    let entries = [entry("lesion-count", ValueSource::Value(json!(4)))];
    let patched = c.patch_values(&t, &item.pk, &entries).await.unwrap();
    assert_eq!(
        patched.value_for("lesion-count").unwrap().value,
        Some(json!(4))
    );
    assert_eq!(count(&sb, "PATCH /api/v1/archives/items/{pk}/ dropped"), 1);
    assert_eq!(count(&sb, "PATCH /api/v1/archives/items/{pk}/ 200"), 1);
    sb.stop().await;
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_not_repeated_and_a_second_meets_the_unique_title() {
    // The server creates the item but the answer is cut. The client does not repeat it (a repeat could
    // not tell its own item from another's): the caller, which recorded the request, tries again and
    // meets the unique title, and looks the item up instead of creating a second one.
    let (sb, c, t) = sandbox_client_target(TargetKind::ReaderStudy).await;
    set_faults(
        &sb,
        &["POST /api/v1/reader-studies/display-sets/ drop after times=1"],
    );
    let err = c.create_item(&t, "once-only").await.unwrap_err();
    assert!(
        matches!(err, GcError::Unavailable { .. })
            && err.to_string().contains("may have been created"),
        "{err}"
    );
    let err = c.create_item(&t, "once-only").await.unwrap_err();
    assert!(err.is_duplicate_title(), "{err}");
    assert_eq!(titled(&c, &t, "once-only").await.title, "once-only");
    let sets = &sb.state()["reader_studies"][0]["display_sets"];
    assert_eq!(
        sets.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["title"] == "once-only")
            .count(),
        1
    );
    sb.stop().await;
}

#[tokio::test]
async fn https_with_an_extra_ca_works_and_without_it_fails() {
    let tls = tempfile::tempdir().unwrap();
    let sb = sandbox_with(|o| o.tls_dir = Some(tls.path().to_path_buf())).await;
    assert_eq!(sb.base_url().scheme(), "https");
    let c = client(&sb);
    assert_eq!(c.whoami().await.unwrap(), "demo");
    let dir = tempfile::tempdir().unwrap();
    let path = data_file(dir.path(), "secure.bin", 2 * PART as usize + 3, 8);
    let up = upload(&c, &path).await;
    assert_eq!(up.status, "Completed");
    assert_eq!(count(&sb, &format!("{S3_PUT} 200")), 3);

    let mut untrusted = config(&sb, DEMO_TOKEN);
    untrusted.ca_cert = None;
    let err = Client::new(untrusted).unwrap().whoami().await.unwrap_err();
    assert!(matches!(err, GcError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn plain_http_is_refused_unless_on_loopback() {
    let token = Token::parse(DEMO_TOKEN).unwrap();
    for url in [
        "http://grand-challenge.org/api/v1/",
        "http://192.168.1.10:8000/api/v1/",
    ] {
        let err = Client::new(ClientConfig::new(url.parse().unwrap(), token.clone())).unwrap_err();
        assert!(
            matches!(&err, GcError::Config(m) if m.contains("https")),
            "{url}: {err}"
        );
    }
    let sb = sandbox().await;
    assert_eq!(sb.base_url().scheme(), "http");
    assert_eq!(client(&sb).whoami().await.unwrap(), "demo");
    sb.stop().await;
}

#[tokio::test]
async fn a_stalled_answer_times_out_and_is_retried() {
    let sb = sandbox().await;
    set_faults(
        &sb,
        &["GET /api/v1/profiles/users/self/ latency=3000 times=1"],
    );
    let c = client_with(&sb, |cfg| cfg.timeout = Duration::from_millis(400));
    let started = Instant::now();
    assert_eq!(c.whoami().await.unwrap(), "demo");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    sb.stop().await;
}

/// The pipeline runs these on spawned tasks: they must stay `Send` (a compile-time check).
#[allow(dead_code)]
fn futures_are_send(c: &Client, t: &Target, f: &gc_client::LocalFile, p: &std::path::Path) {
    fn send<T: Send>(_: T) {}
    send(c.whoami());
    send(c.socket("s"));
    send(c.resolve_target(gc_client::TargetKind::Archive, "a"));
    send(c.create_item(t, "x"));
    send(c.find_item_by_title(t, "x"));
    send(c.get_item(t, "x"));
    send(c.list_items(t));
    send(c.get_image("https://x/"));
    send(c.patch_values(t, "x", &[]));
    send(c.get_upload("x"));
    send(c.upload_sessions());
    send(c.download("https://x/", p));
    send(c.upload_file(f, None, &gc_client::NoObserver));
    send(c.await_values(t, "x", &[], &gc_client::VerifyTiming::default()));
    fn sync<T: Send + Sync + Clone>(_: &T) {}
    sync(c);
}
