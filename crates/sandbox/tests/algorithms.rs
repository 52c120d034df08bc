//! The sandbox's algorithms over loopback HTTP: lookup, jobs with value and uploaded inputs, the
//! executor's outputs, failures, filters, permissions, limits and faults.

use gc_sandbox::Fixture;
use gc_testkit::http::*;
use serde_json::{Value, json};
use sha2::Digest;

const ESTIMATOR_PK: &str = "1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
const FAILING_PK: &str = "6c1f3a52-8d4e-4b7a-9e21-3f5a7c9d1b20";

fn socket_slugs(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["slug"].as_str().unwrap())
        .collect()
}

async fn start_job(env: &Env, token: Option<&str>, algorithm: &str, inputs: Value) -> Value {
    let r = env
        .post(
            "algorithms/jobs/",
            token,
            json!({"algorithm": env.url(&format!("algorithms/{algorithm}/")), "inputs": inputs}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()
}

/// Job inputs: `n` as the `lesion-count`.
fn lesion_count(n: i64) -> Value {
    json!([{"interface": "lesion-count", "value": n}])
}

/// Job inputs: the upload as the `ct-image`.
fn ct_image(upload: &Value) -> Value {
    json!([{"interface": "ct-image", "user_uploads": [upload["api_url"]]}])
}

/// A MetaImage of `dims` (written with `seed`) uploaded as `ct.mha` by the demo user: the upload, and
/// the file's bytes.
async fn upload_ct(env: &Env, dims: [u32; 3], seed: u64) -> (Value, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mha = dir.path().join("ct.mha");
    gc_content::samples::write_mha(&mha, dims, seed).unwrap();
    let bytes = std::fs::read(&mha).unwrap();
    (env.upload(DEMO, "ct.mha", &bytes).await, bytes)
}

/// The jobs the demo user sees with the filter `query`: the page.
async fn jobs_where(env: &Env, query: &str) -> Value {
    env.get(&format!("algorithms/jobs/?{query}"), DEMO)
        .await
        .json()
}

/// Poll the job until it has ended; returns it and every status seen on the way.
async fn until_done(env: &Env, pk: &str) -> (Value, Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let j = env
            .get(&format!("algorithms/jobs/{pk}/"), DEMO)
            .await
            .json();
        let status = j["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if matches!(status.as_str(), "Succeeded" | "Failed") {
            return (j, seen);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job never ended: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn output<'a>(job: &'a Value, slug: &str) -> &'a Value {
    job["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["interface"]["slug"] == slug)
        .unwrap_or_else(|| panic!("no output {slug} in {job}"))
}

#[tokio::test]
async fn algorithms_are_looked_up_by_slug_with_their_interfaces() {
    let env = start().await;
    let page = env
        .get("algorithms/?slug=lung-volume-estimator", READER)
        .await
        .json();
    assert_eq!(page["count"], 1);
    let a = &page["results"][0];
    has_keys(
        a,
        &[
            "api_url",
            "url",
            "description",
            "pk",
            "title",
            "logo",
            "slug",
            "average_duration",
            "interfaces",
        ],
    );
    assert_eq!(a["pk"], ESTIMATOR_PK);
    assert_eq!(
        a["api_url"],
        env.url(&format!("algorithms/{ESTIMATOR_PK}/"))
    );
    assert!(a["average_duration"].is_null(), "no job has run yet");
    let interfaces = a["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2);
    assert_eq!(socket_slugs(&interfaces[0]["inputs"]), ["ct-image"]);
    assert_eq!(
        socket_slugs(&interfaces[0]["outputs"]),
        ["lung-volume", "results-json", "generic-medical-image"]
    );
    has_keys(
        &interfaces[0]["inputs"][0],
        &["title", "slug", "kind", "pk", "super_kind", "relative_path"],
    );
    let detail = env.get(&format!("algorithms/{ESTIMATOR_PK}/"), DEMO).await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.json(), *a);

    // Not a member: nothing listed, 404 on the detail; the admin is neither editor nor user.
    assert_eq!(env.get("algorithms/", None).await.json()["count"], 0);
    let hidden = env.get(&format!("algorithms/{ESTIMATOR_PK}/"), ADMIN).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(
        hidden.json(),
        json!({"detail": "No Algorithm matches the given query."})
    );
    assert_eq!(
        env.get("algorithms/not-a-uuid/", DEMO).await.json(),
        json!({"detail": "Not found."})
    );

    // Algorithm images: editors only.
    let images = env
        .get(
            &format!("algorithms/images/?algorithm={ESTIMATOR_PK}"),
            DEMO,
        )
        .await
        .json();
    assert_eq!(images["count"], 1);
    let image = &images["results"][0];
    has_keys(
        image,
        &[
            "pk",
            "url",
            "api_url",
            "algorithm",
            "created",
            "import_status",
            "image",
        ],
    );
    assert_eq!(image["import_status"], "Completed");
    assert_eq!(image["algorithm"], a["api_url"]);
    assert_eq!(
        env.get(image["api_url"].as_str().unwrap(), DEMO)
            .await
            .json(),
        *image
    );
    assert_eq!(
        env.get("algorithms/images/", READER).await.json()["count"],
        0
    );
    assert_eq!(
        env.get(image["api_url"].as_str().unwrap(), READER)
            .await
            .status,
        404
    );
    assert_eq!(
        env.get("algorithms/images/?algorithm=nope", DEMO)
            .await
            .json(),
        json!({"algorithm": ["Select a valid choice. That choice is not one of the available choices."]})
    );
}

#[tokio::test]
async fn a_job_on_values_runs_through_the_statuses_and_derives_its_outputs() {
    let env = start().await;
    let created = start_job(&env, DEMO, ESTIMATOR_PK, lesion_count(4)).await;
    assert_eq!(keys(&created), ["pk", "inputs", "status"]);
    assert_eq!(created["status"], "Validating inputs");
    assert_eq!(created["inputs"][0]["interface"], "lesion-count");
    assert_eq!(created["inputs"][0]["value"], 4);
    has_keys(
        &created["inputs"][0],
        &["interface", "value", "file", "image", "pk", "image_name"],
    );
    let pk = created["pk"].as_str().unwrap();
    let (job, seen) = until_done(&env, pk).await;
    assert_eq!(job["status"], "Succeeded", "{job}");
    assert!(
        seen.contains(&"Executing".to_string()),
        "the job is seen executing for its duration: {seen:?}"
    );
    has_keys(
        &job,
        &[
            "pk",
            "url",
            "api_url",
            "algorithm_image",
            "inputs",
            "outputs",
            "status",
            "hanging_protocol",
            "optional_hanging_protocols",
            "view_content",
            "exec_duration",
            "invoke_duration",
            "algorithm",
        ],
    );
    assert_eq!(
        job["algorithm"],
        env.url(&format!("algorithms/{ESTIMATOR_PK}/"))
    );
    assert!(
        job["exec_duration"]
            .as_str()
            .unwrap()
            .starts_with("P0DT00H00M00."),
        "{}",
        job["exec_duration"]
    );
    assert_eq!(
        output(&job, "metadata")["value"],
        json!({"inputs": {"lesion-count": 4}})
    );
    assert_eq!(output(&job, "is-abnormal")["value"], true, "4 is even");
    assert_eq!(job["inputs"][0]["interface"]["slug"], "lesion-count");

    // The same inputs again: the platform refuses to compute the same result twice.
    let again = env
        .post(
            "algorithms/jobs/",
            DEMO,
            json!({"algorithm": env.url(&format!("algorithms/{ESTIMATOR_PK}/")), "inputs": [{"interface": "lesion-count", "value": 4}]}),
        )
        .await;
    assert_eq!(again.status, 400);
    assert_eq!(
        again.json(),
        json!({"non_field_errors": ["A result for these inputs with the current image and model already exists."]})
    );

    let state = env.state().await;
    let jobs = &state["algorithms"][0]["jobs"];
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["pk"], pk);
    assert_eq!(jobs[0]["creator"], "demo");
    assert!(
        jobs[0]["stdout"]
            .as_str()
            .unwrap()
            .contains("Writing output metadata")
    );
    let average = env
        .get(&format!("algorithms/{ESTIMATOR_PK}/"), DEMO)
        .await
        .json()["average_duration"]
        .as_f64()
        .unwrap();
    assert!(
        average >= 0.2,
        "the configured duration is 200 ms: {average}"
    );
}

#[tokio::test]
async fn an_uploaded_image_becomes_a_volume_a_summary_file_and_a_copy() {
    let env = start().await;
    let (upload, bytes) = upload_ct(&env, [12, 10, 3], 7).await;
    let created = start_job(&env, DEMO, ESTIMATOR_PK, ct_image(&upload)).await;
    assert_eq!(created["inputs"], json!([]), "the image is imported later");
    let (job, _) = until_done(&env, created["pk"].as_str().unwrap()).await;
    assert_eq!(job["status"], "Succeeded", "{job}");
    assert_eq!(
        output(&job, "lung-volume")["value"],
        360.0,
        "12 × 10 × 3 voxels"
    );

    let summary_url = output(&job, "results-json")["file"].as_str().unwrap();
    let summary: Value = env.json_at(summary_url).await;
    assert_eq!(summary["inputs"]["ct-image"]["voxels"], 360);
    assert_eq!(summary["inputs"]["ct-image"]["name"], "ct.mha");

    let input_image = job["inputs"][0]["image"].as_str().unwrap();
    let copy = output(&job, "generic-medical-image")["image"]
        .as_str()
        .unwrap();
    assert_ne!(input_image, copy, "the output is a new image");
    let copy = env.get(copy, DEMO).await.json();
    let file_url = copy["files"][0]["file"].as_str().unwrap();
    let copied = env.bytes(file_url).await;
    assert_eq!(copied.as_ref(), bytes.as_slice(), "a byte-identical copy");

    // Filters: by algorithm, by input image, by status code.
    let input_pk = input_image
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap();
    for query in [
        format!("algorithm_image__algorithm={ESTIMATOR_PK}"),
        format!("image={input_pk}"),
        "status=4".to_string(),
    ] {
        let page = jobs_where(&env, &query).await;
        assert_eq!(page["count"], 1, "{query}");
        assert_eq!(page["results"][0]["pk"], job["pk"]);
    }
    for query in [
        format!("algorithm_image__algorithm={FAILING_PK}"),
        "status=3".to_string(),
    ] {
        assert_eq!(jobs_where(&env, &query).await["count"], 0, "{query}");
    }
    assert_eq!(
        jobs_where(&env, "status=99").await,
        json!({"status": ["Select a valid choice. 99 is not one of the available choices."]})
    );

    // The state lists the outputs with their checksums.
    let state = env.state().await;
    let file = first_job_output(&state, "generic-medical-image");
    assert_eq!(
        file["image"]["files"][0]["sha256"],
        hex::encode(sha2::Sha256::digest(&bytes))
    );
}

#[tokio::test]
async fn failures_end_the_job_with_the_message_in_the_state_and_a_notification() {
    let env = start().await;
    let (upload, _) = upload_ct(&env, [4, 4, 2], 1).await;
    let created = start_job(&env, DEMO, FAILING_PK, ct_image(&upload)).await;
    let (job, _) = until_done(&env, created["pk"].as_str().unwrap()).await;
    assert_eq!(job["status"], "Failed");
    assert_eq!(job["outputs"], json!([]));
    assert!(
        job.get("error_message").is_none(),
        "the API does not show it"
    );
    let state = env.state().await;
    let failed = &state["algorithms"][1]["jobs"][0];
    let msg = "The algorithm ran out of memory while reading the input image.";
    assert_eq!(failed["error_message"], msg);
    assert_eq!(failed["stderr"], msg);
    let notes = state["notifications"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["user"] == "demo" && n["message"].as_str().unwrap().contains(msg)),
        "{notes:?}"
    );

    // An input that cannot be imported fails the job with the importer's message.
    let junk = env.upload(DEMO, "junk.mha", b"not an image at all").await;
    let created = start_job(&env, DEMO, ESTIMATOR_PK, ct_image(&junk)).await;
    let (job, seen) = until_done(&env, created["pk"].as_str().unwrap()).await;
    assert_eq!(job["status"], "Failed");
    assert!(!seen.contains(&"Executing".to_string()), "{seen:?}");
    let state = env.state().await;
    let session_error =
        state["upload_sessions"].as_array().unwrap().last().unwrap()["error_message"].clone();
    assert!(!session_error.as_str().unwrap().is_empty());
    assert_eq!(
        state["algorithms"][0]["jobs"][0]["error_message"],
        session_error
    );
}

#[tokio::test]
async fn requests_are_checked_before_anything_is_created() {
    let env = start().await;
    let algorithm = env.url(&format!("algorithms/{ESTIMATOR_PK}/"));
    let post = |token, body| env.post("algorithms/jobs/", token, body);
    let r = post(DEMO, json!({})).await;
    assert_eq!(
        r.json(),
        json!({"algorithm": ["This field is required."], "inputs": ["This field is required."]})
    );
    let r = post(
        DEMO,
        json!({"algorithm": algorithm, "inputs": [{"interface": "lung-volume", "value": 1.0}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["The set of inputs provided does not match any of the algorithm's interfaces."]})
    );
    let r = post(
        DEMO,
        json!({"algorithm": algorithm, "inputs": [{"interface": "lesion-count", "value": "many"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["inputs"][0]["__all__"].is_array(), "{}", r.text);
    let r = post(
        ADMIN,
        json!({"algorithm": algorithm, "inputs": [{"interface": "lesion-count", "value": 1}]}),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"algorithm": ["Invalid hyperlink - Object does not exist."]})
    );
    let r = post(
        None,
        json!({"algorithm": algorithm, "inputs": [{"interface": "lesion-count", "value": 1}]}),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(env.state().await["algorithms"][0]["jobs"], json!([]));

    // A user of the algorithm may run it; the editor sees the job, the creator's peers do not.
    let job = start_job(&env, READER, ESTIMATOR_PK, lesion_count(9)).await;
    let path = format!("algorithms/jobs/{}/", job["pk"].as_str().unwrap());
    assert_eq!(env.get(&path, READER).await.status, 200);
    assert_eq!(env.get(&path, DEMO).await.status, 200, "editors see jobs");
    let other = env.get(&path, ADMIN).await;
    assert_eq!(other.status, 404);
    assert_eq!(
        other.json(),
        json!({"detail": "No Job matches the given query."})
    );
    assert_eq!(env.get("algorithms/jobs/", ADMIN).await.json()["count"], 0);
    let r = env.send("DELETE", &path, DEMO, None).await;
    assert_eq!(r.status, 405);
}

/// A fixture's user `username` with `token`, its Integer socket `count` (in `count.json`), and one more
/// value socket: `slug`, its `title` and `kind` (in `<slug>.json`).
fn user_and_sockets(
    username: &str,
    token: &str,
    (slug, title, kind): (&str, &str, &str),
) -> String {
    format!(
        r#"
[[user]]
username = "{username}"
token = "{token}"
[[socket]]
slug = "count"
title = "Count"
kind = "Integer"
super_kind = "Value"
relative_path = "count.json"
[[socket]]
slug = "{slug}"
title = "{title}"
kind = "{kind}"
super_kind = "Value"
relative_path = "{slug}.json"
"#
    )
}

#[tokio::test]
async fn faults_and_the_limit_of_unfinished_jobs() {
    let doubled = ("doubled", "Doubled", "Float");
    let world = user_and_sockets("runner", "runner-token", doubled)
        + r#"
[[algorithm]]
slug = "slow"
title = "Slow"
users = ["runner"]
duration = "1s"
max_active_jobs_per_user = 1
  [[algorithm.interface]]
  inputs = ["count"]
  outputs = ["doubled"]
"#;
    let env = start_on(&world, std::path::Path::new(".")).await;
    let token = Some("runner-token");
    let algorithm =
        env.get("algorithms/?slug=slow", token).await.json()["results"][0]["api_url"].clone();
    let body =
        |n: i64| json!({"algorithm": algorithm, "inputs": [{"interface": "count", "value": n}]});

    gc_testkit::client::set_faults(&env.sandbox, &["POST /api/v1/algorithms/jobs/ 503 times=1"]);
    let r = env.post("algorithms/jobs/", token, body(1)).await;
    assert_eq!(r.status, 503);
    assert_eq!(env.state().await["algorithms"][0]["jobs"], json!([]));

    let first = env.post("algorithms/jobs/", token, body(1)).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let second = env.post("algorithms/jobs/", token, body(2)).await;
    assert_eq!(second.status, 400);
    assert!(
        second.json()["non_field_errors"][0]
            .as_str()
            .unwrap()
            .contains("not finished"),
        "{}",
        second.text
    );
    let pk = first.json()["pk"].as_str().unwrap().to_string();
    eventually(20, "the first job to end", || async {
        let j = env
            .get(&format!("algorithms/jobs/{pk}/"), token)
            .await
            .json();
        (j["status"] == "Succeeded").then_some(())
    })
    .await;
    let third = env.post("algorithms/jobs/", token, body(2)).await;
    assert_eq!(
        third.status, 201,
        "a finished job frees the slot: {}",
        third.text
    );
}

#[test]
fn fixtures_refuse_outputs_the_executor_cannot_make() {
    let base = user_and_sockets("u", "t", ("box", "Box", "2D bounding box"))
        + r#"
[[algorithm]]
slug = "a"
title = "A"
  [[algorithm.interface]]
  inputs = ["count"]
"#;
    let bad = format!("{base}  outputs = [\"box\"]\n");
    let err = Fixture::from_toml_str(&bad, std::path::Path::new(".")).unwrap_err();
    assert!(
        format!("{err:#}").contains("cannot produce output \"box\""),
        "{err:#}"
    );
    let unknown = format!("{base}  outputs = [\"nothing\"]\n");
    let err = Fixture::from_toml_str(&unknown, std::path::Path::new(".")).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown socket \"nothing\""),
        "{err:#}"
    );
    let fine = format!("{base}  outputs = [\"count\"]\n");
    assert!(
        Fixture::from_toml_str(&fine, std::path::Path::new(".")).is_err(),
        "an input cannot also be an output"
    );
}

#[test]
fn the_readme_algorithm_loads_with_the_readme_world() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = |start: &str| -> String {
        let from = &readme[readme.find(start).unwrap()..];
        from[..from.find("```").unwrap()]
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = format!(
        "{}\n{}",
        block("# my-world.toml"),
        block("[[algorithm]]\nslug")
    );
    let f = Fixture::from_toml_str(&text, std::path::Path::new(".")).unwrap();
    assert_eq!(f.algorithms.len(), 1);
    assert_eq!(f.algorithms[0].duration, std::time::Duration::from_secs(5));
}
