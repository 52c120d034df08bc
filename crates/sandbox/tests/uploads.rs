//! Uploads, the S3-like part endpoint, background file imports, sessions and quotas, over loopback HTTP.

use std::time::Duration;

use gc_sandbox::{Fixture, SandboxOptions};
use gc_testkit::http::*;
use md5::{Digest, Md5};
use serde_json::{Value, json};

fn md5_etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(bytes)))
}

async fn create(env: &Env, filename: &str) -> (String, String) {
    let r = env
        .post("uploads/", DEMO, json!({"filename": filename}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let u = r.json();
    assert_eq!(
        keys(&u),
        [
            "pk",
            "created",
            "filename",
            "key",
            "s3_upload_id",
            "status",
            "api_url"
        ]
    );
    assert_eq!(u["status"], "Initialized");
    (
        u["pk"].as_str().unwrap().into(),
        u["s3_upload_id"].as_str().unwrap().into(),
    )
}

async fn presign(env: &Env, pk: &str, id: &str, parts: Value) -> Value {
    let r = env
        .patch(
            &format!("uploads/{pk}/{id}/generate-presigned-urls/"),
            DEMO,
            json!({"part_numbers": parts}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["presigned_urls"].clone()
}

async fn put(env: &Env, url: &str, bytes: &[u8]) -> reqwest::Response {
    env.http.put(url).body(bytes.to_vec()).send().await.unwrap()
}

async fn complete(env: &Env, pk: &str, id: &str, parts: Value) -> Reply {
    env.complete(DEMO, pk, id, json!({"parts": parts})).await
}

/// `POST cases/upload-sessions/` of `body`, as `token`'s user.
async fn new_session(env: &Env, token: Option<&str>, body: Value) -> Reply {
    env.post("cases/upload-sessions/", token, body).await
}

/// The `parts` of a completion: each part's bytes (for its ETag) and its number.
fn etags(list: &[(&[u8], u32)]) -> Value {
    let parts: Vec<Value> = list
        .iter()
        .map(|(bytes, n)| json!({"ETag": md5_etag(bytes), "PartNumber": n}))
        .collect();
    Value::from(parts)
}

#[tokio::test]
async fn multipart_lifecycle_and_s3_checks() {
    let env = start().await; // min part size 8 bytes
    let (pk, id) = create(&env, "scan.mha").await;
    let urls = presign(&env, &pk, &id, json!([1, 2, 3, 4, 5])).await;
    assert_eq!(keys(&urls), ["1", "2", "3", "4", "5"]);
    let u1 = urls["1"].as_str().unwrap();
    assert!(
        u1.starts_with(&format!("{}/s3/", env.origin))
            && u1.contains("uploadId=")
            && u1.contains("X-Amz-Signature=")
    );

    let (a, b) = (b"0123456789abcdef".to_vec(), b"tail".to_vec());
    let r = put(&env, u1, &a).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), md5_etag(&a));
    let r = put(&env, urls["2"].as_str().unwrap(), &b).await;
    assert_eq!(r.headers()["etag"].to_str().unwrap(), md5_etag(&b));

    let listed = env
        .get(&format!("uploads/{pk}/{id}/list-parts/"), DEMO)
        .await
        .json();
    let parts = listed["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        keys(&parts[0]),
        ["ETag", "PartNumber", "LastModified", "Size"]
    );
    assert_eq!(
        (parts[0]["Size"].clone(), parts[1]["Size"].clone()),
        (json!(16), json!(4))
    );

    // S3 refusals: bad ETag, wrong order, unknown part → the site's HTML 500, upload stays open.
    for bad in [
        json!([{"ETag": md5_etag(b"other"), "PartNumber": 1}, {"ETag": md5_etag(&b), "PartNumber": 2}]),
        json!([{"ETag": md5_etag(&b), "PartNumber": 2}, {"ETag": md5_etag(&a), "PartNumber": 1}]),
        json!([{"ETag": md5_etag(&a), "PartNumber": 1}, {"ETag": md5_etag(&b), "PartNumber": 3}]),
        json!([]),
    ] {
        let r = complete(&env, &pk, &id, bad.clone()).await;
        assert_eq!(
            (r.status, r.content_type()),
            (500, "text/html; charset=utf-8"),
            "{bad}"
        );
    }
    let r = env.complete(DEMO, &pk, &id, json!({})).await;
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["The `parts` field is required"]})
    );
    let r = env
        .patch(
            &format!("uploads/{pk}/wrong-id/complete-multipart-upload/"),
            DEMO,
            json!({"parts": []}),
        )
        .await;
    assert_eq!((r.status, r.json()), (404, json!({"detail": "Not found."})));

    let r = complete(&env, &pk, &id, etags(&[(&a, 1), (&b, 2)])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["status"], "Completed");
    assert!(r.json().get("parts").is_none(), "parts are write-only");
    // Wrong state now.
    let again = complete(&env, &pk, &id, etags(&[(&a, 1)])).await;
    assert_eq!(again.status, 500);
    assert_eq!(
        env.get(&format!("uploads/{pk}/{id}/list-parts/"), DEMO)
            .await
            .status,
        500
    );
    assert_eq!(env.abort(DEMO, &pk, &id).await.status, 500);
    let r = env.presign(DEMO, &pk, &id, &[1]).await;
    assert_eq!(
        (r.status, r.json()),
        (403, json!({"detail": "Upload limit reached"}))
    );
    let r = put(&env, u1, b"late").await;
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<Code>NoSuchUpload</Code>")
    );
    let state = env.state().await;
    assert_eq!(state["uploads"][0]["size"], 20);

    // Non-final parts below the minimum are refused.
    let (pk, id) = create(&env, "small.bin").await;
    let urls = presign(&env, &pk, &id, json!([1, 2])).await;
    put(&env, urls["1"].as_str().unwrap(), b"tiny").await;
    put(&env, urls["2"].as_str().unwrap(), b"end").await;
    let r = complete(&env, &pk, &id, etags(&[(b"tiny", 1), (b"end", 2)])).await;
    assert_eq!(r.status, 500);
    // Abort: status Aborted, id emptied, the old id is gone.
    let r = env.abort(DEMO, &pk, &id).await;
    assert_eq!(
        (r.json()["status"].clone(), r.json()["s3_upload_id"].clone()),
        (json!("Aborted"), json!(""))
    );
    assert_eq!(env.abort(DEMO, &pk, &id).await.status, 404);

    // A zero-byte file: one empty part 1 completes.
    let (pk, id) = create(&env, "empty.txt").await;
    let urls = presign(&env, &pk, &id, json!([1])).await;
    let r = put(&env, urls["1"].as_str().unwrap(), b"").await;
    assert_eq!(r.headers()["etag"].to_str().unwrap(), md5_etag(b""));
    let r = complete(&env, &pk, &id, etags(&[(b"", 1)])).await;
    assert_eq!(r.json()["status"], "Completed");

    // Validation of part numbers and filenames.
    let (pk, id) = create(&env, "v.bin").await;
    let r = env.presign(DEMO, &pk, &id, &[0, 1, 10001]).await;
    assert_eq!(
        r.json(),
        json!({"part_numbers": {"0": ["Ensure this value is greater than or equal to 1."], "2": ["Ensure this value is less than or equal to 10000."]}})
    );
    let r = env
        .patch(
            &format!("uploads/{pk}/{id}/generate-presigned-urls/"),
            DEMO,
            json!({}),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["The `part_numbers` field is required"]})
    );
    let r = env
        .post("uploads/", DEMO, json!({"filename": "../../foo.bat"}))
        .await;
    assert_eq!(
        r.json(),
        json!({"filename": ["../../foo.bat is not a valid filename"]})
    );
    let r = env
        .post("uploads/", DEMO, json!({"filename": "a".repeat(129)}))
        .await;
    assert_eq!(
        r.json(),
        json!({"filename": ["Ensure this field has no more than 128 characters."]})
    );
    let r = env.post("uploads/", DEMO, json!({})).await;
    assert_eq!(r.json(), json!({"filename": ["This field is required."]}));
    // Uploads are private.
    assert_eq!(
        env.get(&format!("uploads/{pk}/"), READER).await.json(),
        json!({"detail": "No UserUpload matches the given query."})
    );
    assert_eq!(env.get("uploads/", READER).await.json()["count"], 0);
    assert_eq!(env.get("uploads/", DEMO).await.json()["count"], 4);
}

#[tokio::test]
async fn presigned_urls_are_signed_and_expire() {
    let env = start().await;
    let (pk, id) = create(&env, "a.bin").await;
    let url = presign(&env, &pk, &id, json!([1])).await["1"]
        .as_str()
        .unwrap()
        .to_string();
    let tampered = url.replace("partNumber=1", "partNumber=2");
    let r = put(&env, &tampered, b"x").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/xml");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<Code>SignatureDoesNotMatch</Code>")
    );
    let r = env
        .http
        .put(&url)
        .header("Authorization", "Bearer x")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the API token must never go to S3");
    let unsigned = url.split('?').next().unwrap().to_string();
    assert_eq!(put(&env, &unsigned, b"x").await.status(), 403);

    let mut o = SandboxOptions::new(Fixture::demo());
    o.presigned_url_lifetime = Duration::ZERO;
    let short = start_with(o).await;
    let (pk, id) = create(&short, "b.bin").await;
    let url = presign(&short, &pk, &id, json!([1])).await["1"]
        .as_str()
        .unwrap()
        .to_string();
    let body = eventually(5, "the URL to expire", || async {
        let r = put(&short, &url, b"x").await;
        (r.status() == 403).then_some(())?;
        Some(r.text().await.unwrap())
    })
    .await;
    assert!(body.contains("Request has expired"), "{body}");
}

#[tokio::test]
async fn file_sockets_are_attached_in_the_background() {
    let mut o = SandboxOptions::new(Fixture::demo());
    o.import_delay = Duration::from_millis(100);
    let env = start_with(o).await;
    let item = env.new_item("files").await;
    let path = format!("archives/items/{item}/");
    let pdf = b"%PDF-1.4 a tiny report".to_vec();
    let up = env.upload(DEMO, "report.pdf", &pdf).await;
    let json_ok = env.upload(DEMO, "results.json", br#"{"a": 1}"#).await;
    let r = env
        .set_values(
            &path,
            DEMO,
            json!([
                {"interface": "report", "user_upload": up["api_url"]},
                {"interface": "results-json", "user_upload": json_ok["api_url"]},
            ]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["values"],
        json!([]),
        "asynchronous values are not in the PATCH response"
    );
    let values = eventually(10, "both files", || async {
        let v = env.get(&path, DEMO).await.json()["values"].clone();
        (v.as_array().unwrap().len() == 2).then_some(v)
    })
    .await;
    let report = values
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["interface"]["slug"] == "report")
        .unwrap();
    let file_url = report["file"].as_str().unwrap();
    assert!(file_url.starts_with(&env.origin));
    let downloaded = env.bytes(file_url).await;
    assert_eq!(downloaded.as_ref(), pdf.as_slice());
    // Consumed uploads are gone.
    assert_eq!(
        env.get(&format!("uploads/{}/", up["pk"].as_str().unwrap()), DEMO)
            .await
            .status,
        404
    );
    let state = env.state().await;
    let stored = &state["archives"][0]["items"][0]["values"];
    let report_state = find_by(stored, &["socket"], "report").unwrap();
    assert_eq!(report_state["file"]["size"], pdf.len());
    assert_eq!(
        report_state["file"]["sha256"],
        hex::encode(sha2::Sha256::digest(&pdf))
    );

    // A new upload for the same socket: a new socket value with a new pk.
    let old_pk = report["pk"].clone();
    let up2 = env.upload(DEMO, "report.pdf", b"%PDF second").await;
    let report = json!([{"interface": "report", "user_upload": up2["api_url"]}]);
    env.set_values(&path, DEMO, report).await;
    eventually(10, "the replacement", || async {
        let v = env.get(&path, DEMO).await.json();
        let r = api_value(&v, "report")?;
        (r["pk"] != old_pk).then_some(())
    })
    .await;

    // Invalid JSON for a JSON-as-file socket, and an upload that was never completed: not attached,
    // uploads kept, the failure is a notification.
    let bad = env.upload(DEMO, "results.json", b"{not json").await;
    let open = env
        .post("uploads/", DEMO, json!({"filename": "open.pdf"}))
        .await
        .json();
    let item2 = env.new_item("bad files").await;
    let path2 = format!("archives/items/{item2}/");
    let r = env
        .set_values(
            &path2,
            DEMO,
            json!([{"interface": "results-json", "user_upload": bad["api_url"]}, {"interface": "report", "user_upload": open["api_url"]}]),
        )
        .await;
    assert_eq!(r.status, 200);
    let notes = eventually(10, "two notifications", || async {
        let n = env.state().await["notifications"].clone();
        (n.as_array().unwrap().len() == 2).then_some(n)
    })
    .await;
    assert!(notes.to_string().contains("not valid JSON"), "{notes}");
    assert_eq!(env.get(&path2, DEMO).await.json()["values"], json!([]));
    assert_eq!(
        env.get(&format!("uploads/{}/", bad["pk"].as_str().unwrap()), DEMO)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn image_imports_report_through_upload_sessions() {
    // Bytes that no importer accepts: the session fails, whatever the importer's exact message.
    let env = start().await;
    let item = env.new_item("image").await;
    let path = format!("archives/items/{item}/");
    let junk = env.upload(DEMO, "junk.mha", b"this is not an image").await;
    let image = json!([{"interface": "ct-image", "user_uploads": [junk["api_url"]]}]);
    let r = env.set_values(&path, DEMO, image).await;
    assert_eq!(r.status, 200);
    let sessions = env.get("cases/upload-sessions/", DEMO).await.json();
    assert_eq!(
        sessions["count"], 1,
        "an implicit session owned by the caller"
    );
    let s = &sessions["results"][0];
    assert_eq!(
        keys(s),
        [
            "pk",
            "creator",
            "status",
            "error_message",
            "image_set",
            "api_url",
            "user_uploads",
            "uploads"
        ]
    );
    let spath = s["api_url"].as_str().unwrap().to_string();
    let failed = eventually(10, "the session to fail", || async {
        let s = env.get(&spath, DEMO).await.json();
        (s["status"] == "Failed").then_some(s)
    })
    .await;
    assert!(!failed["error_message"].as_str().unwrap().is_empty());
    assert_eq!(
        failed["uploads"],
        json!([junk["api_url"]]),
        "failed imports keep their uploads"
    );
    assert_eq!(env.get(&path, DEMO).await.json()["values"], json!([]));
    assert_eq!(
        env.get(&spath, READER).await.status,
        404,
        "sessions are private"
    );
    assert_eq!(
        env.get(
            &format!("cases/images/?origin={}", failed["pk"].as_str().unwrap()),
            DEMO
        )
        .await
        .json()["count"],
        0
    );

    // Duplicate filenames in one image value.
    let a = env.upload(DEMO, "same.dcm", b"a").await;
    let b = env.upload(DEMO, "same.dcm", b"b").await;
    let image = json!([{"interface": "ct-image", "user_uploads": [a["api_url"], b["api_url"]]}]);
    env.set_values(&path, DEMO, image).await;
    eventually(10, "the duplicate failure", || async {
        let list = env.get("cases/upload-sessions/", DEMO).await.json();
        list["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| {
                s["error_message"]
                    == "Duplicate files uploaded, please try again with a unique set of files"
            })
            .then_some(())
    })
    .await;

    // An explicit session without target stays Queued until a values entry references it.
    let c = env.upload(DEMO, "c.mha", b"junk").await;
    let r = new_session(&env, DEMO, json!({"uploads": [c["api_url"]]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let explicit = r.json();
    assert_eq!(explicit["status"], "Queued");
    let epath = explicit["api_url"].as_str().unwrap().to_string();
    assert_eq!(env.get(&epath, DEMO).await.json()["status"], "Queued");
    let from_session = json!([{"interface": "ct-image", "upload_session": epath}]);
    let r = env.set_values(&path, DEMO, from_session.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(10, "the referenced session to run", || async {
        (env.get(&epath, DEMO).await.json()["status"] == "Failed").then_some(())
    })
    .await;
    // No longer Queued: cannot be referenced again.
    let r = env.set_values(&path, DEMO, from_session).await;
    assert_eq!(
        r.json()["values"][0],
        json!({"upload_session": ["Invalid hyperlink - Object does not exist."]})
    );

    // DICOM image sets: uploads are deleted even when the import fails; the failure is a notification.
    let d = env.upload(DEMO, "d.dcm", b"not dicom").await;
    let set = json!([{"interface": "dicom-image-set", "user_uploads": [d["api_url"]], "image_name": "Series 3"}]);
    let r = env.set_values(&path, DEMO, set).await;
    assert_eq!(r.status, 200);
    eventually(10, "the DICOM upload to be deleted", || async {
        (env.get(&format!("uploads/{}/", d["pk"].as_str().unwrap()), DEMO)
            .await
            .status
            == 404)
            .then_some(())
    })
    .await;
    assert!(
        env.state().await["notifications"]
            .to_string()
            .contains("DICOM image set import failed")
    );
}

#[tokio::test]
async fn explicit_session_validation() {
    let env = start().await;
    let item = env.new_item("target").await;
    let a = env.upload(DEMO, "a.mha", b"a").await;
    let a2 = env.upload(DEMO, "a.mha", b"b").await;
    let open = env
        .post("uploads/", DEMO, json!({"filename": "open.mha"}))
        .await
        .json();
    let cases = [
        (json!({}), json!({"uploads": ["This field is required."]})),
        (
            json!({"uploads": [open["api_url"]]}),
            json!({"uploads": ["Invalid hyperlink - Object does not exist."]}),
        ),
        (
            json!({"uploads": [a["api_url"]], "archive": "nope"}),
            json!({"archive": ["Object with slug=nope does not exist."]}),
        ),
        (
            json!({"uploads": [a["api_url"]], "archive": null}),
            json!({"archive": ["This field may not be null."]}),
        ),
        (
            json!({"uploads": [a["api_url"]], "archive_item": "x"}),
            json!({"archive_item": ["Invalid pk \"x\" - object does not exist."]}),
        ),
        (
            json!({"uploads": [a["api_url"], a2["api_url"]]}),
            json!({"non_field_errors": ["Filenames must be unique"]}),
        ),
        (
            json!({"uploads": [a["api_url"]], "interface": "ct-image"}),
            json!({"non_field_errors": ["An interface can only be defined for archive, archive item or display set uploads."]}),
        ),
        (
            json!({"uploads": [a["api_url"]], "archive_item": item}),
            json!({"non_field_errors": ["An interface needs to be defined to upload to an archive item."]}),
        ),
        (
            json!({"uploads": [a["api_url"]], "archive_item": item, "archive": "demo-archive", "interface": "ct-image"}),
            json!({"non_field_errors": ["Only one of archive, archive item, answer or reader study can be set"]}),
        ),
    ];
    for (body, expected) in cases {
        let r = new_session(&env, DEMO, body.clone()).await;
        assert_eq!((r.status, r.json()), (400, expected), "{body}");
    }
    let r = new_session(&env, READER, json!({"uploads": [a["api_url"]]})).await;
    assert_eq!(
        r.json(),
        json!({"uploads": ["Invalid hyperlink - Object does not exist."]}),
        "other users' uploads"
    );
    // With a target the response still says Queued, the import starts at once.
    let body = json!({"uploads": [a["api_url"]], "archive_item": item, "interface": "ct-image"});
    let r = new_session(&env, DEMO, body).await;
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (201, json!("Queued"))
    );
}

#[tokio::test]
async fn quotas_and_expiry() {
    let fixture = r#"
[[user]]
username = "new"
token = "2222"
verified = false
[[user]]
username = "old"
token = "3333"
"#;
    let mut o =
        SandboxOptions::new(Fixture::from_toml_str(fixture, std::path::Path::new(".")).unwrap());
    o.max_uploads_per_user = 3;
    o.upload_limit_unverified = 10;
    o.upload_limit_verified = 1000;
    o.min_part_size = 1;
    o.upload_expiry = Duration::from_millis(1500);
    let env = start_with(o).await;
    let new = Some("2222");
    // Bytes: completed-but-unconsumed uploads count against the quota, unverified 10 B, verified 1000 B.
    let old = Some("3333");
    env.upload(old, "big.bin", &[7u8; 12]).await;
    let up = env
        .post("uploads/", old, json!({"filename": "next.bin"}))
        .await
        .json();
    let presign_path = |up: &Value| {
        format!(
            "uploads/{}/{}/generate-presigned-urls/",
            up["pk"].as_str().unwrap(),
            up["s3_upload_id"].as_str().unwrap()
        )
    };
    assert_eq!(
        env.patch(&presign_path(&up), old, json!({"part_numbers": [1]}))
            .await
            .status,
        200
    );
    env.upload(new, "big.bin", &[7u8; 12]).await;
    let up = env
        .post("uploads/", new, json!({"filename": "next.bin"}))
        .await
        .json();
    let r = env
        .patch(&presign_path(&up), new, json!({"part_numbers": [1]}))
        .await;
    assert_eq!(
        (r.status, r.json()),
        (403, json!({"detail": "Upload limit reached"}))
    );

    // "More than N existing" is refused: N + 1 upload records can exist.
    for _ in 0..2 {
        assert_eq!(
            env.post("uploads/", old, json!({"filename": "f"}))
                .await
                .status,
            201
        );
    }
    let r = env.post("uploads/", old, json!({"filename": "f"})).await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"non_field_errors": ["You have created too many uploads. Please try again later."]})
        )
    );

    // Everything expires after the configured age, whatever its state.
    let pk = up["pk"].as_str().unwrap().to_string();
    eventually(10, "the upload to expire", || async {
        (env.get(&format!("uploads/{pk}/"), new).await.status == 404).then_some(())
    })
    .await;
    eventually(10, "all uploads to expire", || async {
        (env.state().await["uploads"] == json!([])).then_some(())
    })
    .await;
}
