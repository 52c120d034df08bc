//! Fault injection, the state endpoint and HTTPS, over loopback.

use std::time::{Duration, Instant};

use gc_content::samples;
use gc_sandbox::{FaultRule, Fixture, SandboxOptions};
use gc_testkit::http::*;
use serde_json::{Value, json};

fn rule(spec: &str) -> FaultRule {
    spec.parse().unwrap()
}

#[tokio::test]
async fn status_faults_happen_before_handling() {
    let env = start().await;
    env.sandbox
        .set_faults(vec![rule(
            "POST /api/v1/archives/items/ 503 retry-after=3 times=1",
        )])
        .unwrap();
    let r = env.post_item(DEMO, "a").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert!(
        !r.content_type().starts_with("application/json"),
        "proxies do not answer JSON"
    );
    assert_eq!(
        env.state().await["archives"][0]["items"],
        json!([]),
        "nothing happened"
    );
    // times=1: the next one goes through.
    assert_eq!(env.post_item(DEMO, "a").await.status, 201);

    env.sandbox
        .set_faults(vec![
            rule("GET /api/v1/archives/* 500"),
            rule("GET /api/v1/gcapi/ 429 retry-after=1"),
        ])
        .unwrap();
    let r = env.get("archives/", DEMO).await;
    assert_eq!(
        (r.status, r.content_type()),
        (500, "text/html; charset=utf-8")
    );
    let r = env.get("gcapi/", None).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    let counts = env.state().await["requests"].clone();
    assert_eq!(counts["POST /api/v1/archives/items/ 503"], 1);
    assert_eq!(counts["POST /api/v1/archives/items/ 201"], 1);
    assert_eq!(counts["GET /api/v1/archives/ 500"], 1);
    assert_eq!(counts["GET /api/v1/gcapi/ 429"], 1);
}

#[tokio::test]
async fn after_faults_commit_but_lose_the_answer() {
    let env = start().await;
    let archive = env.url(&format!("archives/{ARCHIVE_PK}/"));
    env.sandbox
        .set_faults(vec![rule("POST /api/v1/archives/items/ 502 after times=1")])
        .unwrap();
    let r = env.post_item(DEMO, "dup").await;
    assert_eq!(r.status, 502);
    let items = env.state().await["archives"][0]["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1, "the server committed");
    // The retry of a non-idempotent POST is what makes duplicates; unique titles catch it.
    let r = env.post_item(DEMO, "dup").await;
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["The fields title, archive must make a unique set."]})
    );

    // Dropped mid-body: the client sees a broken response, the server committed.
    env.sandbox
        .set_faults(vec![rule("POST /api/v1/archives/items/ drop after")])
        .unwrap();
    let resp = env
        .http
        .post(env.url("archives/items/"))
        .header("Authorization", format!("Bearer {}", DEMO.unwrap()))
        .header("Content-Type", "application/json")
        .body(json!({"archive": archive, "title": "cut"}).to_string())
        .send()
        .await;
    let broken = match resp {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(broken, "the response body must break");
    let titles: Vec<String> = env.state().await["archives"][0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, ["dup", "cut"]);
    assert_eq!(
        env.state().await["requests"]["POST /api/v1/archives/items/ dropped"],
        1
    );
}

#[tokio::test]
async fn drops_latency_and_upload_quota_faults() {
    let env = start().await;
    // Dropped before handling: no answer at all, nothing created, even for an S3 part body.
    let up = env
        .post("uploads/", DEMO, json!({"filename": "x.bin"}))
        .await
        .json();
    let (pk, id) = (
        up["pk"].as_str().unwrap(),
        up["s3_upload_id"].as_str().unwrap(),
    );
    let url = env.presign(DEMO, pk, id, &[1]).await.json()["presigned_urls"]["1"]
        .as_str()
        .unwrap()
        .to_string();
    env.sandbox
        .set_faults(vec![rule("PUT /s3/* drop")])
        .unwrap();
    assert!(
        env.http
            .put(&url)
            .body(vec![1u8; 4096])
            .send()
            .await
            .is_err(),
        "connection closed without an answer"
    );
    let listed = env
        .get(&format!("uploads/{pk}/{id}/list-parts/"), DEMO)
        .await
        .json();
    assert_eq!(listed["parts"], json!([]));
    env.sandbox
        .set_faults(vec![rule("PUT /s3/* 503 retry-after=2")])
        .unwrap();
    let r = env.http.put(&url).body("x").send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["retry-after"].to_str().unwrap()
        ),
        (503, "2")
    );
    assert!(r.text().await.unwrap().contains("<Code>SlowDown</Code>"));

    env.sandbox
        .set_faults(vec![rule("GET /api/v1/gcapi/ latency=300")])
        .unwrap();
    let t = Instant::now();
    assert_eq!(env.get("gcapi/", None).await.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    env.sandbox
        .set_faults(vec![rule("POST /api/v1/uploads/ too-many-uploads=2")])
        .unwrap();
    assert_eq!(
        env.post("uploads/", DEMO, json!({"filename": "b"}))
            .await
            .status,
        201,
        "one owned so far"
    );
    let r = env.post("uploads/", DEMO, json!({"filename": "c"})).await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"non_field_errors": ["You have created too many uploads. Please try again later."]})
        )
    );
    assert_eq!(
        env.post("uploads/", READER, json!({"filename": "c"}))
            .await
            .status,
        201,
        "per user"
    );

    // Probability 0 never fires; the rules can be replaced over HTTP as JSON.
    let r = env
        .http
        .put(format!("{}/_sandbox/faults", env.origin))
        .json(&json!([{"path": "/api/v1/archives/", "action": "status", "status": 504, "probability": 0.0}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..20 {
        assert_eq!(env.get("archives/", DEMO).await.status, 200);
    }
    let r = env
        .http
        .put(format!("{}/_sandbox/faults", env.origin))
        .json(&json!({"rules": [{"method": "GET", "path": "/api/v1/archives/", "action": "status", "status": 504}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(env.get("archives/", DEMO).await.status, 504);
    let listed: serde_json::Value = env
        .json_at(&format!("{}/_sandbox/faults", env.origin))
        .await;
    assert_eq!(listed[0]["status"], 504);
    let r = env
        .http
        .put(format!("{}/_sandbox/faults", env.origin))
        .json(&json!([{"action": "explode"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// Uploads of `files` under their base names; returns their API URLs and pks.
async fn upload_all(env: &Env, files: &[std::path::PathBuf]) -> (Vec<Value>, Vec<String>) {
    let mut urls = Vec::new();
    let mut pks = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let up = env.upload(DEMO, name, &std::fs::read(f).unwrap()).await;
        urls.push(up["api_url"].clone());
        pks.push(up["pk"].as_str().unwrap().to_string());
    }
    (urls, pks)
}

#[tokio::test]
async fn import_faults_fail_the_imports_of_good_files_as_the_platform_records_them() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let series =
        samples::write_dicom_series(dir.path(), 2, 4, 4, &samples::DicomSeriesIds::new(3), 3)
            .unwrap();
    let mha = dir.path().join("ct.mha");
    samples::write_mha(&mha, [4, 4, 2], 1).unwrap();
    let (dicom, dicom_pks) = upload_all(&env, &series).await;
    let (image, _) = upload_all(&env, std::slice::from_ref(&mha)).await;
    let item = env.new_item("fails").await;
    let path = format!("archives/items/{item}/");
    env.sandbox
        .set_faults(vec![rule(
            "PATCH /api/v1/archives/items/* import-fails times=1",
        )])
        .unwrap();
    let r = env
        .patch(
            &path,
            DEMO,
            json!({"values": [
                {"interface": "dicom-image-set", "user_uploads": dicom, "image_name": "s"},
                {"interface": "ct-image", "user_uploads": image},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "the request itself is answered: {}", r.text);

    // The image's session fails with the importer's message for an exception; its upload stays.
    let session = eventually(10, "the image's session to fail", || {
        env.session_with_status(DEMO, "Failed")
    })
    .await;
    assert_eq!(session["error_message"], "An unexpected error occurred");
    // The DICOM image set: its uploads are deleted, the failure is only a notification.
    eventually(10, "the DICOM uploads to be deleted", || async {
        let mut gone = true;
        for pk in &dicom_pks {
            gone &= env.get(&format!("uploads/{pk}/"), DEMO).await.status == 404;
        }
        gone.then_some(())
    })
    .await;
    let notes = env.state().await["notifications"].to_string();
    assert!(
        notes.contains("DICOM image set import failed: An unexpected error occurred"),
        "{notes}"
    );
    assert_eq!(env.get(&path, DEMO).await.json()["values"], json!([]));

    // times=1: the same files import once the fault is spent.
    let (dicom, _) = upload_all(&env, &series).await;
    env.patch(
        &path,
        DEMO,
        json!({"values": [{"interface": "dicom-image-set", "user_uploads": dicom, "image_name": "s"}]}),
    )
    .await;
    eventually(10, "the DICOM image set to be attached", || async {
        let v = env.get(&path, DEMO).await.json();
        (v["values"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn seeded_probabilistic_faults_repeat() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let mut o = SandboxOptions::new(Fixture::demo());
        o.seed = Some(seed);
        o.faults = vec![rule("GET /api/v1/gcapi/ 503 p=0.5")];
        let env = start_with(o).await;
        let mut out = Vec::new();
        for _ in 0..30 {
            out.push(env.get("gcapi/", None).await.status);
        }
        out
    }
    let a = pattern(11).await;
    assert_eq!(a, pattern(11).await);
    let failures = a.iter().filter(|s| **s == 503).count();
    assert!(failures > 3 && failures < 27, "{a:?}");
}

#[tokio::test]
async fn fixture_faults_apply_from_the_start() {
    let fault = r#"
[[fault]]
method = "GET"
path = "/api/v1/gcapi/"
action = "status"
status = 502
times = 1
"#;
    let env = start_on(&[ONE_USER, fault].concat(), std::path::Path::new(".")).await;
    assert_eq!(env.get("gcapi/", None).await.status, 502);
    assert_eq!(env.get("gcapi/", None).await.status, 200);
}

#[tokio::test]
async fn state_lists_items_uploads_sessions_and_counts() {
    let env = start().await;
    let item = env.new_item("stateful").await;
    env.patch(
        &format!("archives/items/{item}/"),
        DEMO,
        json!({"values": [{"interface": "lesion-count", "value": 4}]}),
    )
    .await;
    let up = env.upload(DEMO, "kept.bin", b"12345").await;
    let s = env.state().await;
    has_keys(
        &s,
        &[
            "archives",
            "reader_studies",
            "uploads",
            "upload_sessions",
            "requests",
        ],
    );
    let it = &s["archives"][0]["items"][0];
    assert_eq!(
        (it["pk"].as_str(), it["title"].as_str()),
        (Some(item.as_str()), Some("stateful"))
    );
    assert_eq!(it["values"][0]["socket"], "lesion-count");
    assert_eq!(it["values"][0]["value"], 4);
    assert!(it["values"][0]["pk"].is_i64());
    let ds = &s["reader_studies"][0]["display_sets"][0];
    assert_eq!(
        (ds["order"].clone(), ds["has_answers"].clone()),
        (json!(10), json!(true))
    );
    let u = &s["uploads"][0];
    assert_eq!(
        (
            u["pk"].clone(),
            u["status"].clone(),
            u["owner"].clone(),
            u["size"].clone()
        ),
        (
            up["pk"].clone(),
            json!("Completed"),
            json!("demo"),
            json!(5)
        )
    );
    assert_eq!(s["requests"]["POST /api/v1/archives/items/ 201"], 1);
    assert_eq!(
        s["requests"]["PUT /s3/grand-challenge-uploads/uploads/{user}/{upload} 200"],
        1
    );
    assert_eq!(
        s["requests"]["PATCH /api/v1/uploads/{pk}/{s3_upload_id}/complete-multipart-upload/ 200"],
        1
    );
}

#[tokio::test]
async fn https_with_a_trusted_ca_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = SandboxOptions::new(Fixture::demo());
    o.tls_dir = Some(dir.path().to_path_buf());
    let env = start_with(o).await;
    assert_eq!(env.sandbox.base_url().scheme(), "https");
    let ca_path = env.sandbox.ca_cert_path().unwrap().to_path_buf();
    assert_eq!(ca_path, dir.path().join("ca.pem"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let strict = reqwest::Client::builder()
        .tls_certs_only([ca])
        .https_only(true)
        .build()
        .unwrap();
    let r = strict.get(env.url("gcapi/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let localhost = env.url("gcapi/").replace("127.0.0.1", "localhost");
    assert_eq!(strict.get(localhost).send().await.unwrap().status(), 200);
    // An untrusting client is refused.
    assert!(client().get(env.url("gcapi/")).send().await.is_err());
    let base = env.url("gcapi/");
    env.sandbox.stop().await;
    assert!(strict.get(base).send().await.is_err(), "stopped");
}
