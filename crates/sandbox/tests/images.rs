//! Image values end to end: real sample images uploaded, imported in the background, attached, served.
//! These depend on the sandbox's importer (`sandbox::imaging`) and the sample writers (`samples`).

use gc_content::samples;
use gc_sandbox::{Fixture, SandboxOptions};
use gc_testkit::http::*;
use serde_json::{Value, json};
use sha2::Digest;

async fn upload_file(env: &Env, path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    env.upload(DEMO, path.file_name().unwrap().to_str().unwrap(), &bytes)
        .await
}

/// PATCH one image entry and wait for the socket to get a value; returns (item read JSON, session).
async fn attach(env: &Env, item: &str, entry: Value) -> Value {
    let path = format!("archives/items/{item}/");
    let slug = entry["interface"].as_str().unwrap().to_string();
    let r = env.patch(&path, DEMO, json!({"values": [entry]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(20, "the image to be attached", || async {
        let v = env.get(&path, DEMO).await.json();
        let found = api_value(&v, &slug).cloned();
        if found.is_none() {
            let sessions = env.get("cases/upload-sessions/", DEMO).await.json();
            if let Some(f) = sessions["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["status"] == "Failed")
            {
                panic!("import failed: {f}");
            }
        }
        found
    })
    .await
}

#[tokio::test]
async fn a_metaimage_becomes_an_image_value() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let mha = dir.path().join("ct.mha");
    samples::write_mha(&mha, [16, 12, 4], 1).unwrap();
    let up = upload_file(&env, &mha).await;
    let item = env.new_item("mha").await;
    let value = attach(
        &env,
        &item,
        json!({"interface": "ct-image", "user_uploads": [up["api_url"]]}),
    )
    .await;
    let image_url = value["image"].as_str().unwrap();
    let image = env.get(image_url, DEMO).await.json();
    has_keys(
        &image,
        &[
            "pk",
            "name",
            "files",
            "dicom_image_set",
            "width",
            "height",
            "depth",
            "color_space",
            "modality",
            "eye_choice",
            "stereoscopic_choice",
            "field_of_view",
            "shape_without_color",
            "shape",
            "voxel_width_mm",
            "voxel_height_mm",
            "voxel_depth_mm",
            "api_url",
            "window_center",
            "window_width",
            "segments",
        ],
    );
    assert_eq!(
        (
            image["width"].clone(),
            image["height"].clone(),
            image["depth"].clone()
        ),
        (json!(16), json!(12), json!(4))
    );
    let file = &image["files"][0];
    assert_eq!(keys(file), ["pk", "image", "file", "image_type"]);
    assert_eq!(file["image_type"], "MHD");
    let bytes = env.bytes(file["file"].as_str().unwrap()).await;
    assert_eq!(bytes.as_ref(), std::fs::read(&mha).unwrap().as_slice());
    // The upload was consumed; the session succeeded and lists the image.
    assert_eq!(
        env.get(&format!("uploads/{}/", up["pk"].as_str().unwrap()), DEMO)
            .await
            .status,
        404
    );
    let sessions = env.get("cases/upload-sessions/", DEMO).await.json();
    let s = &sessions["results"][0];
    assert_eq!(
        (
            s["status"].clone(),
            s["image_set"].clone(),
            s["uploads"].clone()
        ),
        (json!("Succeeded"), json!([image_url]), json!([]))
    );
    let origin = env
        .get(
            &format!("cases/images/?origin={}", s["pk"].as_str().unwrap()),
            DEMO,
        )
        .await
        .json();
    assert_eq!(origin["count"], 1);
    let state = env.state().await;
    let img = &state["archives"][0]["items"][0]["values"][0]["image"];
    assert_eq!(
        img["files"][0]["sha256"],
        hex::encode(sha2::Sha256::digest(std::fs::read(&mha).unwrap()))
    );

    // Reusing the image in another item is synchronous and shares it.
    let other = env.new_item("reuse").await;
    let r = env
        .patch(
            &format!("archives/items/{other}/"),
            DEMO,
            json!({"values": [{"interface": "generic-medical-image", "image": image_url}]}),
        )
        .await;
    assert_eq!(r.json()["values"][0]["image"], image_url);
    // Readers of the archive can see it; others cannot.
    assert_eq!(env.get(image_url, READER).await.status, 200);
    assert_eq!(env.get(image_url, ADMIN).await.status, 404);
}

#[tokio::test]
async fn mhd_with_its_data_file() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mhd, raw) = samples::write_mhd_pair(dir.path(), "scan", [8, 8, 2], 2).unwrap();
    let (a, b) = (upload_file(&env, &mhd).await, upload_file(&env, &raw).await);
    let item = env.new_item("mhd").await;
    let value = attach(
        &env,
        &item,
        json!({"interface": "ct-image", "user_uploads": [a["api_url"], b["api_url"]]}),
    )
    .await;
    let image = env.get(value["image"].as_str().unwrap(), DEMO).await.json();
    assert!(!image["files"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn segmentations_are_checked_against_overlay_segments() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mha");
    samples::write_segmentation_mha(&good, [8, 8, 2], &[0, 1], 3).unwrap();
    let up = upload_file(&env, &good).await;
    let item = env.new_item("seg").await;
    attach(
        &env,
        &item,
        json!({"interface": "segmentation", "user_uploads": [up["api_url"]]}),
    )
    .await;

    let bad = dir.path().join("bad.mha");
    samples::write_segmentation_mha(&bad, [8, 8, 2], &[0, 2], 4).unwrap();
    let up = upload_file(&env, &bad).await;
    let item2 = env.new_item("bad seg").await;
    env.patch(
        &format!("archives/items/{item2}/"),
        DEMO,
        json!({"values": [{"interface": "segmentation", "user_uploads": [up["api_url"]]}]}),
    )
    .await;
    let failed = eventually(20, "the segmentation to be rejected", || {
        env.session_with_status(DEMO, "Failed")
    })
    .await;
    let msg = failed["error_message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "Image validation for socket Segmentation failed with error: The valid voxel values"
        ),
        "{msg}"
    );
    assert_eq!(
        env.get(&format!("archives/items/{item2}/"), DEMO)
            .await
            .json()["values"],
        json!([])
    );
}

#[tokio::test]
async fn dicom_image_sets() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = samples::DicomSeriesIds::new(5);
    let files = samples::write_dicom_series(dir.path(), 3, 8, 8, &ids, 5).unwrap();
    let mut urls = Vec::new();
    let mut pks = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let up = env
            .upload(
                DEMO,
                &format!("dicom_image_{i}.dcm"),
                &std::fs::read(f).unwrap(),
            )
            .await;
        urls.push(up["api_url"].clone());
        pks.push(up["pk"].as_str().unwrap().to_string());
    }
    let item = env.new_item("dicom").await;
    let value = attach(
        &env,
        &item,
        json!({"interface": "dicom-image-set", "user_uploads": urls, "image_name": "Series 3"}),
    )
    .await;
    let image_url = value["image"].as_str().unwrap().to_string();
    let image = env.get(&image_url, DEMO).await.json();
    assert_eq!(image["name"], "Series 3");
    assert!(image["dicom_image_set"]["image_set_id"].is_string());
    for pk in pks {
        assert_eq!(env.get(&format!("uploads/{pk}/"), DEMO).await.status, 404);
    }
    // An SOP class the platform's de-identification procedure does not list fails the import, seen
    // only as a notification: the socket keeps its value, the uploads are gone.
    let sc = tempfile::tempdir().unwrap();
    let sc_files = samples::write_dicom_series(sc.path(), 2, 8, 8, &ids, 6).unwrap();
    let ct = samples::CT_IMAGE_STORAGE.as_bytes();
    let mut bytes = std::fs::read(&sc_files[1]).unwrap();
    while let Some(i) = bytes.windows(ct.len()).position(|w| w == ct) {
        bytes[i..i + ct.len()].copy_from_slice(b"1.2.840.10008.5.1.4.1.1.7");
    }
    let mut sc_urls = Vec::new();
    for (i, f) in sc_files.iter().enumerate() {
        let data = if i == 1 {
            bytes.clone()
        } else {
            std::fs::read(f).unwrap()
        };
        let up = env.upload(DEMO, &format!("sc_{i}.dcm"), &data).await;
        sc_urls.push(up["api_url"].clone());
    }
    let r = env
        .patch(
            &format!("archives/items/{item}/"),
            DEMO,
            json!({"values": [{"interface": "dicom-image-set", "user_uploads": sc_urls, "image_name": "SC"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let note = eventually(10, "a notification of the failed import", || async {
        let notes = env.state().await["notifications"].to_string();
        notes.contains("Unsupported SOP Class").then_some(notes)
    })
    .await;
    assert!(
        note.contains("sc_1.dcm was refused by the de-identification: Unsupported SOP Class (1.2.840.10008.5.1.4.1.1.7)"),
        "{note}"
    );
    let now = env
        .get(&format!("archives/items/{item}/"), DEMO)
        .await
        .json();
    assert_eq!(now["values"][0]["image"], image_url.as_str(), "unchanged");

    // A DICOM image set may not go to a panimg socket.
    let r = env
        .patch(
            &format!("archives/items/{item}/"),
            DEMO,
            json!({"values": [{"interface": "ct-image", "image": image_url}]}),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"values": [{"__all__": ["Image may not be DICOM"]}]})
    );
}

#[tokio::test]
async fn fixtures_seed_images_and_explicit_archive_sessions_create_items() {
    let dir = tempfile::tempdir().unwrap();
    samples::write_mha(&dir.path().join("seed.mha"), [4, 4, 1], 6).unwrap();
    let fixture = format!(
        r#"
[[user]]
username = "demo"
token = "{token}"
[[socket]]
slug = "generic-medical-image"
title = "Generic Medical Image"
kind = "Image"
super_kind = "Image"
relative_path = "images/generic-medical-image"
[[archive]]
pk = "{ARCHIVE_PK}"
slug = "demo-archive"
title = "A"
editors = ["demo"]
[[archive_item]]
archive = "demo-archive"
title = "seeded"
  [[archive_item.value]]
  socket = "generic-medical-image"
  image = "seed.mha"
  image_pk = "7d0f0a52-2f7e-4b6b-9a53-2b8d8c4a1e10"
"#,
        token = DEMO.unwrap()
    );
    std::fs::write(dir.path().join("fixture.toml"), fixture).unwrap();
    let env = start_with(SandboxOptions::new(
        Fixture::load(&dir.path().join("fixture.toml")).unwrap(),
    ))
    .await;
    let image = env
        .get("cases/images/7d0f0a52-2f7e-4b6b-9a53-2b8d8c4a1e10/", DEMO)
        .await;
    assert_eq!(image.status, 200, "{}", image.text);

    let mha = dir.path().join("new.mha");
    samples::write_mha(&mha, [4, 4, 2], 7).unwrap();
    let up = upload_file(&env, &mha).await;
    let r = env
        .post(
            "cases/upload-sessions/",
            DEMO,
            json!({"uploads": [up["api_url"]], "archive": "demo-archive"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let spath = r.json()["api_url"].as_str().unwrap().to_string();
    eventually(20, "the session", || async {
        (env.get(&spath, DEMO).await.json()["status"] == "Succeeded").then_some(())
    })
    .await;
    let items = env
        .get(&format!("archives/items/?archive={ARCHIVE_PK}"), DEMO)
        .await
        .json();
    assert_eq!(items["count"], 2, "one new item per imported image");
}

#[tokio::test]
async fn a_zip_upload_is_unpacked_before_import() {
    use std::io::Write;
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = samples::DicomSeriesIds::new(31);
    let slices = samples::write_dicom_series(dir.path(), 3, 6, 5, &ids, 31).unwrap();
    // The series in a folder of the archive, as a scanner export usually comes.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, slice) in slices.iter().enumerate() {
        zip.start_file(
            format!("export/slice-{i}.dcm"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&std::fs::read(slice).unwrap()).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let up = env.upload(DEMO, "series.zip", &bytes).await;
    let item = env.new_item("zipped series").await;
    let value = attach(
        &env,
        &item,
        json!({"interface": "ct-image", "user_uploads": [up["api_url"]]}),
    )
    .await;
    let image = env.get(value["image"].as_str().unwrap(), DEMO).await.json();
    assert_eq!(
        (
            image["width"].clone(),
            image["height"].clone(),
            image["depth"].clone()
        ),
        (json!(5), json!(6), json!(3)),
        "one image of all three slices: {image}"
    );
    assert_eq!(image["name"], format!("{}-0", ids.study_instance_uid));

    // A ZIP holding two images is two images, which one value cannot take.
    let mha = dir.path().join("a.mha");
    samples::write_mha(&mha, [4, 4, 2], 5).unwrap();
    let mha_bytes = std::fs::read(&mha).unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for name in ["a.mha", "b.mha"] {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&mha_bytes).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let up = env.upload(DEMO, "two.zip", &bytes).await;
    let item = env.new_item("two in one zip").await;
    let r = env
        .patch(
            &format!("archives/items/{item}/"),
            DEMO,
            json!({"values": [{"interface": "ct-image", "user_uploads": [up["api_url"]]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let failed = eventually(20, "the import to fail", || {
        env.session_with_status(DEMO, "Failed")
    })
    .await;
    assert_eq!(
        failed["error_message"],
        "Image validation for socket CT Image failed with error: Image imports should result in a single image."
    );
}
