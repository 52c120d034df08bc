//! Interoperability with the official Python client: gcapi 0.16 talks to the sandbox over HTTPS and its
//! results are checked against `/_sandbox/state`.
//!
//! The Python comes from `GC_HOTFOLDER_GCAPI_PYTHON` (a python with gcapi 0.16 installed) or from a venv
//! with `gcapi==0.16.1` that the test makes once and keeps in `target/` (see `python_support`). If
//! neither works the test fails with an explanation: it is never skipped.

use std::path::PathBuf;

use gc_sandbox::{DEMO_TOKEN, Fixture, SandboxOptions};
use gc_testkit::http::*;
use sha2::Digest;

const GCAPI: &str = "gcapi==0.16.1";

fn python_with_gcapi() -> PathBuf {
    gc_testkit::python::python_with(
        &gc_testkit::venvs!(),
        "gcapi-0.16.1",
        &[GCAPI],
        "gcapi",
        "GC_HOTFOLDER_GCAPI_PYTHON",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A finished run of a gcapi script against the sandbox.
struct GcapiRun {
    /// The sandbox, on HTTPS as gcapi talks to the platform.
    env: Env,
    /// The script's `GC_WORKDIR`.
    work: PathBuf,
    /// The MetaImage it was given as `GC_IMAGE_FILES`.
    image: PathBuf,
    /// The JSON it printed on its last line.
    summary: serde_json::Value,
    _scratch: tempfile::TempDir,
}

/// The gcapi script `script` (of `interop/`) run as `token` against a sandbox on HTTPS (its certificate
/// made in a scratch folder) with a quick import, given a 12 × 10 × 3 MetaImage written with `seed`;
/// the script must succeed.
async fn run_gcapi(script: &str, token: &str, seed: u64) -> GcapiRun {
    let scratch = tempfile::tempdir().unwrap();
    let python = tokio::task::spawn_blocking(python_with_gcapi)
        .await
        .unwrap();
    let mut options = SandboxOptions::new(Fixture::demo());
    options.tls_dir = Some(scratch.path().join("tls"));
    options.import_delay = std::time::Duration::from_millis(50);
    let env = start_with(options).await;
    let work = scratch.path().join("work");
    let image = scratch.path().join("ct.mha");
    gc_content::samples::write_mha(&image, [12, 10, 3], seed).unwrap();
    let output = tokio::process::Command::new(python)
        .arg(gc_testkit::python::script(script))
        .env("GC_BASE_URL", &env.base)
        .env("GC_TOKEN", token)
        .env("GC_WORKDIR", &work)
        .env("GC_IMAGE_FILES", &image)
        .env_remove("GRAND_CHALLENGE_AUTHORIZATION")
        // The scripts import `gcapi_support.py` beside them: no `__pycache__` in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "gcapi script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let summary = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    GcapiRun {
        env,
        work,
        image,
        summary,
        _scratch: scratch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcapi_round_trip() {
    let run = run_gcapi("gcapi_roundtrip.py", DEMO_TOKEN, 9).await;
    let (summary, work, image) = (&run.summary, &run.work, &run.image);
    let state = run.env.state().await;
    let items = state["archives"][0]["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "exactly one item; the unknown-socket call created nothing: {items:?}"
    );
    let item = &items[0];
    assert_eq!(item["pk"], summary["archive_item"]);
    assert_eq!(item["title"], "gcapi-case-1-updated");
    let value = |slug: &str| {
        let found = find_by(&item["values"], &["socket"], slug);
        found.cloned().unwrap_or_default()
    };
    assert_eq!(value("lung-volume")["value"], 1.9);
    assert_eq!(value("lesion-count")["value"], 3);
    assert_eq!(value("notes")["value"], "first read");
    let report = std::fs::read(work.join("report.pdf")).unwrap();
    assert_eq!(value("report")["file"]["size"], report.len());
    assert_eq!(
        value("report")["file"]["sha256"],
        hex::encode(sha2::Sha256::digest(&report))
    );
    assert_eq!(value("results-json")["file"]["name"], "results.json");
    let ct = value("ct-image");
    assert_eq!(
        ct["image"]["pk"], summary["image"],
        "the image gcapi saw is the one attached"
    );
    let stored = &ct["image"]["files"][0];
    assert_eq!(
        stored["sha256"],
        hex::encode(sha2::Sha256::digest(std::fs::read(image).unwrap()))
    );

    let sets = state["reader_studies"][0]["display_sets"]
        .as_array()
        .unwrap();
    let ds = sets
        .iter()
        .find(|d| d["pk"] == summary["display_set"])
        .unwrap();
    assert_eq!(
        (ds["title"].clone(), ds["order"].clone()),
        (
            serde_json::json!("gcapi-ds-1-updated"),
            serde_json::json!(55)
        )
    );
    assert_eq!(
        summary["display_set_order"], 20,
        "auto order after the answered display set at 10"
    );
    // Every upload was consumed; gcapi called the endpoints the protocol describes.
    assert_eq!(state["uploads"], serde_json::json!([]));
    let requests = &state["requests"];
    assert_eq!(requests["GET /api/v1/gcapi/ 200"], 1);
    assert_eq!(requests["POST /api/v1/archives/items/ 201"], 1);
    assert_eq!(requests["POST /api/v1/reader-studies/display-sets/ 201"], 1);
    assert_eq!(
        requests["PUT /s3/grand-challenge-uploads/uploads/{user}/{upload} 200"],
        4
    );
    let sessions = state["upload_sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["status"], "Succeeded");
}

/// gcapi starts a job with `start_algorithm_job`, follows it until it succeeds and downloads its
/// outputs with its own downloader; the sandbox's state must show the same job and outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcapi_runs_an_algorithm() {
    let run = run_gcapi("gcapi_algorithm.py", gc_sandbox::DEMO_READER_TOKEN, 4).await;
    let (summary, work, image) = (&run.summary, &run.work, &run.image);
    let state = run.env.state().await;
    let jobs = state["algorithms"][0]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "the refused inputs created no job: {jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["pk"], summary["job"]);
    assert_eq!(job["creator"], "reader");
    assert_eq!(job["status"], "Succeeded");
    let statuses = summary["statuses"].as_array().unwrap();
    assert_eq!(statuses.last().unwrap(), "Succeeded", "{statuses:?}");
    let out = |slug: &str| {
        let found = find_by(&job["outputs"], &["socket"], slug);
        found
            .cloned()
            .unwrap_or_else(|| panic!("no output {slug}: {job}"))
    };
    assert_eq!(out("lung-volume")["value"], summary["lung_volume"]);
    assert_eq!(summary["lung_volume"], 360.0, "12 × 10 × 3 voxels");
    let results = std::fs::read(work.join("outputs/results.json")).unwrap();
    assert_eq!(
        out("results-json")["file"]["sha256"],
        hex::encode(sha2::Sha256::digest(&results))
    );
    assert_eq!(summary["summary"]["inputs"]["ct-image"]["voxels"], 360);
    let copy = out("generic-medical-image");
    let input_sha = hex::encode(sha2::Sha256::digest(std::fs::read(image).unwrap()));
    assert_eq!(copy["image"]["files"][0]["sha256"], input_sha.as_str());
    let downloaded: Vec<&serde_json::Value> = summary["image_files"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    assert_eq!(downloaded, [&serde_json::json!(input_sha)]);
    assert!(
        summary["image_output"]
            .as_str()
            .unwrap()
            .contains(copy["image"]["pk"].as_str().unwrap())
    );
    assert_eq!(jobs[1]["pk"], summary["second_job"]);
    assert_eq!(
        summary["second_outputs"],
        serde_json::json!({"metadata": {"inputs": {"lesion-count": 7}}, "is-abnormal": false})
    );
    let requests = &state["requests"];
    assert_eq!(requests["POST /api/v1/algorithms/jobs/ 201"], 2);
    assert_eq!(
        requests["GET /api/v1/algorithms/ 200"], 2,
        "one lookup of the script, one of start_algorithm_job, which caches it"
    );
}
