//! An algorithm job's outputs written into the outbox as one case folder, as `pull` writes an item:
//! against the sandbox over loopback, compared byte for byte with what the sandbox holds.

use gc_client::JobStatus;
use gc_hotfolder::outbox::{self, Existing, Written};
use gc_testkit::client::*;
use sha2::Digest;

#[tokio::test]
async fn a_jobs_outputs_become_one_complete_case_folder() {
    let (sb, c) = sandbox_and_client().await;
    let dir = tempfile::tempdir().unwrap();
    let created = job_on_an_uploaded_mha(&c, dir.path(), [6, 5, 4], 2).await;
    let job = c.await_job(&created.pk, &job_polling()).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);

    let box_dir = dir.path().join("outbox");
    std::fs::create_dir(&box_dir).unwrap();

    // The platform's files are out of reach: nothing appears, nothing is left behind.
    set_faults(&sb, &["GET /media/* 500"]);
    // The job's outputs written as the case `name` of the outbox.
    let write = |name: &'static str, existing: Existing| {
        let sharing = gc_hotfolder::share::Sharing::of(&box_dir, None);
        outbox::write_case(&c, (&box_dir, sharing), name, &job.outputs, existing)
    };
    let err = write("patient-1", Existing::Keep).await.unwrap_err();
    assert!(err.starts_with("output "), "{err}");
    assert!(!box_dir.join("patient-1").exists());
    sb.set_faults(Vec::new()).unwrap();

    let written = write("patient-1", Existing::Keep).await.unwrap();
    let Written::New(mut files) = written else {
        panic!("{written:?}")
    };
    files.sort();
    let case = box_dir.join("patient-1");
    let state = sb.state();
    let out = |slug: &str| gc_testkit::http::first_job_output(&state, slug).clone();
    let image_name = out("generic-medical-image")["image"]["files"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        files,
        [
            format!("images/generic-medical-image/{image_name}"),
            "lung-volume.json".to_string(),
            "results.json".to_string(),
        ]
    );
    let volume: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("lung-volume.json")).unwrap()).unwrap();
    assert_eq!(volume, out("lung-volume")["value"]);
    assert_eq!(volume, 120.0, "6 × 5 × 4 voxels");
    let sha = |p: &std::path::Path| hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()));
    assert_eq!(
        out("results-json")["file"]["sha256"],
        sha(&case.join("results.json"))
    );
    assert_eq!(
        sha(&case.join("images/generic-medical-image").join(&image_name)),
        sha(&dir.path().join("ct.mha")),
        "the image output is byte-identical"
    );
    let staging = box_dir.join(outbox::STAGING_DIR);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

    // Again (as after a crash before the journal noted it): the complete folder stays as it is.
    const DOWNLOAD: &str = "GET /media/components/componentinterfacevalue/{pk}/{name} 200";
    let downloads = count(&sb, DOWNLOAD);
    assert_eq!(
        write("patient-1", Existing::Keep).await.unwrap(),
        Written::AlreadyThere
    );
    assert_eq!(count(&sb, DOWNLOAD), downloads);

    // A later job's results replace the folder whole: nothing of the earlier one stays.
    std::fs::write(case.join("stale.txt"), "from an earlier job").unwrap();
    let replaced = write("patient-1", Existing::Replace).await.unwrap();
    assert!(matches!(replaced, Written::New(_)), "{replaced:?}");
    assert!(!case.join("stale.txt").exists());
    assert!(case.join("lung-volume.json").exists());
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert!(write("../escape", Existing::Keep).await.is_err());
}
