//! The platform client's algorithm calls against the sandbox over loopback: lookup with interfaces,
//! jobs on values and on uploaded images, following them to the end, finding them again by algorithm,
//! input image and status, downloading outputs, refusals and faults.

use std::time::Duration;

use gc_client::models::{ValueEntry, ValueSource};
use gc_client::{GcError, JobFilter, JobPolling, JobStatus};
use gc_sandbox::DEMO_ADMIN_TOKEN;
use gc_testkit::client::*;
use serde_json::json;
use sha2::Digest;

fn value(socket: &str, v: serde_json::Value) -> ValueEntry {
    ValueEntry {
        socket: socket.into(),
        source: ValueSource::Value(v),
    }
}

#[tokio::test]
async fn algorithms_are_found_with_their_interfaces() {
    let sb = sandbox().await;
    let c = client(&sb);
    let a = c.algorithm("lung-volume-estimator").await.unwrap();
    assert_eq!(a.title, "Lung Volume Estimator");
    let interface = a.interface_for(["ct-image"]).unwrap();
    let outputs: Vec<&str> = interface.outputs.iter().map(|s| s.slug.as_str()).collect();
    assert_eq!(
        outputs,
        ["lung-volume", "results-json", "generic-medical-image"]
    );
    assert_eq!(interface.outputs[0].relative_path, "lung-volume.json");
    assert!(a.interface_for(["ct-image", "lesion-count"]).is_none());

    for (client, slug) in [
        (client_as(&sb, DEMO_ADMIN_TOKEN), "lung-volume-estimator"),
        (c, "no-such-algorithm"),
    ] {
        match client.algorithm(slug).await {
            Err(GcError::NotFound(msg)) => assert!(msg.contains(slug), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_job_on_an_uploaded_image_is_followed_and_its_outputs_downloaded() {
    let (sb, c) = sandbox_and_client().await;
    let dir = tempfile::tempdir().unwrap();
    let created = job_on_an_uploaded_mha(&c, dir.path(), [12, 10, 3], 3).await;
    let a = c.algorithm("lung-volume-estimator").await.unwrap();
    assert_eq!(
        created.status,
        JobStatus::Pending("Validating inputs".into())
    );
    assert!(created.inputs.is_empty(), "the image is imported later");
    let job = c.await_job(&created.pk, &job_polling()).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.algorithm, a.api_url);
    assert!(job.exec_duration.is_some());
    assert_eq!(job.output("lung-volume").unwrap().value, Some(json!(360.0)));

    let state = sb.state();
    let out = |slug: &str| gc_testkit::http::first_job_output(&state, slug).clone();
    let results = dir.path().join("results.json");
    let url = job.output("results-json").unwrap().file.clone().unwrap();
    let size = c.download(&url, &results).await.unwrap();
    let bytes = std::fs::read(&results).unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(
        out("results-json")["file"]["sha256"],
        hex::encode(sha2::Sha256::digest(&bytes))
    );
    let image_url = job
        .output("generic-medical-image")
        .unwrap()
        .image
        .clone()
        .unwrap();
    let image = c.get_image(&image_url).await.unwrap();
    let copy = dir.path().join("copy.mha");
    c.download(&image.files[0].file, &copy).await.unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(dir.path().join("ct.mha")).unwrap(),
        "the output image is a copy of the input"
    );

    // Found again by its input image, as after a crash between the request and the journal.
    let input_image = job.input("ct-image").unwrap().image.clone().unwrap();
    let input_pk = input_image
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap();
    let found = c
        .jobs(&JobFilter {
            input_image: Some(input_pk.into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].pk, job.pk);
}

#[tokio::test]
async fn jobs_are_listed_by_algorithm_and_by_how_they_ended() {
    let (_sb, c) = sandbox_and_client().await;
    let estimator = c.algorithm("lung-volume-estimator").await.unwrap();
    let failing = c.algorithm("failing-algorithm").await.unwrap();
    let mut pks = Vec::new();
    for n in [3, 8] {
        let created = c
            .start_job(&estimator, &[value("lesion-count", json!(n))])
            .await
            .unwrap();
        assert_eq!(created.inputs[0].value, Some(json!(n)));
        pks.push(created.pk);
    }
    let dir = tempfile::tempdir().unwrap();
    let mha = dir.path().join("small.mha");
    gc_content::samples::write_mha(&mha, [4, 4, 2], 1).unwrap();
    let bad = job_on_upload(&c, "failing-algorithm", &mha).await;
    for pk in &pks {
        let job = c.await_job(pk, &job_polling()).await.unwrap();
        assert_eq!(job.status, JobStatus::Succeeded);
    }
    let ended = c.await_job(&bad.pk, &job_polling()).await.unwrap();
    assert_eq!(ended.status, JobStatus::Failed);
    assert!(ended.outputs.is_empty());
    assert_eq!(
        c.job(&pks[1])
            .await
            .unwrap()
            .output("is-abnormal")
            .unwrap()
            .value,
        Some(json!(true)),
        "8 is even"
    );

    let list = |filter: JobFilter| {
        let c = &c;
        async move {
            c.jobs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.pk)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(JobFilter {
            algorithm: Some(estimator.pk.clone()),
            ..JobFilter::default()
        })
        .await,
        pks,
        "oldest first"
    );
    assert_eq!(
        list(JobFilter {
            status: Some(JobStatus::Failed),
            ..JobFilter::default()
        })
        .await,
        std::slice::from_ref(&bad.pk)
    );
    assert_eq!(
        list(JobFilter {
            algorithm: Some(failing.pk.clone()),
            status: Some(JobStatus::Succeeded),
            ..JobFilter::default()
        })
        .await,
        Vec::<String>::new()
    );
    assert_eq!(list(JobFilter::default()).await.len(), 3);
}

#[tokio::test]
async fn refusals_and_faults() {
    let (sb, c) = sandbox_and_client().await;
    let a = c.algorithm("lung-volume-estimator").await.unwrap();
    const POST_JOB: &str = "POST /api/v1/algorithms/jobs/";

    // Inputs that are no interface: refused before any request.
    match c.start_job(&a, &[value("notes", json!("x"))]).await {
        Err(GcError::Config(msg)) => assert!(
            msg.contains("[notes]") && msg.contains("[ct-image] or [lesion-count]"),
            "{msg}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&sb, &format!("{POST_JOB} 400")), 0);

    // The platform's own refusal, in its words.
    let first = c
        .start_job(&a, &[value("lesion-count", json!(5))])
        .await
        .unwrap();
    match c.start_job(&a, &[value("lesion-count", json!(5))]).await {
        Err(e @ GcError::Rejected { status: 400, .. }) => assert!(
            e.to_string().contains(
                "A result for these inputs with the current image and model already exists."
            ),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }

    // Reads ride out a proxy's 503 and a dropped connection.
    set_faults(
        &sb,
        &[
            "GET /api/v1/algorithms/jobs/* 503 times=2",
            "GET /api/v1/algorithms/jobs/* drop times=1",
        ],
    );
    let job = c.await_job(&first.pk, &job_polling()).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(count(&sb, "GET /api/v1/algorithms/jobs/{pk}/ 503"), 2);

    // A job that does not end in time is reported with where it stood.
    let slow = c
        .start_job(&a, &[value("lesion-count", json!(6))])
        .await
        .unwrap();
    let impatient = JobPolling {
        deadline: Duration::ZERO,
        ..job_polling()
    };
    match c.await_job(&slow.pk, &impatient).await {
        Err(e @ GcError::VerifyTimeout { .. }) => assert!(e.to_string().contains(&slow.pk), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(c.job("../x").await.is_err(), "pks are checked before use");
}

#[tokio::test]
async fn jobs_are_found_again_by_their_values_and_existing_images() {
    let sb = sandbox().await;
    let c = client(&sb);
    let a = c.algorithm("lung-volume-estimator").await.unwrap();
    let by_value = c
        .start_job(&a, &[value("lesion-count", json!(11))])
        .await
        .unwrap();
    let found = c
        .jobs_with_inputs(&a, &[value("lesion-count", json!(11))])
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|j| j.pk.as_str()).collect::<Vec<_>>(),
        [by_value.pk.as_str()]
    );
    assert!(
        c.jobs_with_inputs(&a, &[value("lesion-count", json!(12))])
            .await
            .unwrap()
            .is_empty()
    );

    // An image already on the platform: the image output of a first job feeds a second one.
    let dir = tempfile::tempdir().unwrap();
    let mha = dir.path().join("ct.mha");
    gc_content::samples::write_mha(&mha, [3, 3, 3], 5).unwrap();
    let upload = upload(&c, &mha).await;
    let uploaded = vec![ValueEntry {
        socket: "ct-image".into(),
        source: ValueSource::UserUploads(vec![upload.api_url]),
    }];
    let first = c.start_job(&a, &uploaded).await.unwrap();
    let first = c.await_job(&first.pk, &job_polling()).await.unwrap();
    let image = first
        .output("generic-medical-image")
        .unwrap()
        .image
        .clone()
        .unwrap();
    let existing = vec![ValueEntry {
        socket: "ct-image".into(),
        source: ValueSource::Image(image),
    }];
    let second = c.start_job(&a, &existing).await.unwrap();
    let found = c.jobs_with_inputs(&a, &existing).await.unwrap();
    assert_eq!(
        found.iter().map(|j| j.pk.as_str()).collect::<Vec<_>>(),
        [second.pk.as_str()]
    );
    match c.jobs_with_inputs(&a, &uploaded).await {
        Err(GcError::Config(_)) => {}
        other => panic!("uploads have no identity to match: {other:?}"),
    }
}
