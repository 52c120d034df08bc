//! The sandbox's request recorder: every request written down whole (request line, headers, body, S3
//! part PUTs included) as the sandbox reads it, without changing a single answer, and never the token.

use std::path::Path;
use std::time::Duration;

use gc_client::{LocalFile, NoObserver};
use gc_sandbox::DEMO_TOKEN;
use gc_sandbox::recorder::{self, Recorded};
use gc_sandbox::{FaultAction, Sandbox};
use gc_testkit::client::*;
use sha2::Digest;

/// One request's body as recorded.
fn body(r: &Recorded) -> Vec<u8> {
    std::fs::read(&r.body).unwrap()
}

/// An upload of a file of four parts, with a create request dropped unread and a part answered 503
/// unread, each once: the client rides both out.
async fn upload_with_faults(sb: &Sandbox, file: &Path) -> String {
    sb.set_faults(vec![
        rule("POST", "/api/v1/uploads/", FaultAction::Drop, Some(1)),
        rule(
            "PUT",
            "/s3/*",
            FaultAction::Status {
                status: 503,
                retry_after: None,
            },
            Some(1),
        ),
    ])
    .unwrap();
    let local = LocalFile {
        path: file.to_owned(),
        filename: "scan.bin".into(),
    };
    let upload = client(sb)
        .upload_file(&local, None, &NoObserver)
        .await
        .unwrap();
    upload.pk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_recorded_whole_and_no_answer_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("requests");
    let file = data_file(tmp.path(), "scan.bin", 3 * PART as usize + 1000, 7);

    let plain = sandbox().await;
    let recorded = sandbox_with(|o| o.record = Some(dir.clone())).await;
    let pk_plain = upload_with_faults(&plain, &file).await;
    let pk = upload_with_faults(&recorded, &file).await;

    // The same requests got the same answers, and the same bytes were stored.
    assert_eq!(
        recorded.state()["requests"],
        plain.state()["requests"],
        "recording changes no answer"
    );
    let stored = |sb: &Sandbox, pk: &str| {
        let u = upload_state(sb, pk).unwrap();
        (u["status"].clone(), u["size"].clone())
    };
    assert_eq!(stored(&recorded, &pk), stored(&plain, &pk_plain));

    let records = recorder::read(&dir).unwrap();
    let answered: u64 = recorded.state()["requests"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert_eq!(records.len() as u64, answered, "one record per request");

    // The S3 part PUTs the sandbox read hold the file, byte for byte; the one refused unread says so.
    let mut parts: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut unread = Vec::new();
    for r in &records {
        let line = r.request_line();
        match r.complete() {
            Some(true) => {}
            Some(false) => {
                unread.push(line.split(' ').take(2).collect::<Vec<_>>().join(" "));
                continue;
            }
            None => panic!("{line}: the record has no end"),
        }
        if line.starts_with("PUT /s3/") {
            let number = line
                .split(['?', '&', ' '])
                .find_map(|kv| kv.strip_prefix("partNumber="))
                .unwrap()
                .parse()
                .unwrap();
            parts.push((number, body(r)));
        }
    }
    unread.sort();
    assert_eq!(unread.len(), 2, "{unread:?}");
    assert!(unread[0].starts_with("POST /api/v1/uploads/"), "{unread:?}");
    assert!(unread[1].starts_with("PUT /s3/"), "{unread:?}");
    parts.sort_by_key(|(n, _)| *n);
    let sent: Vec<u8> = parts.into_iter().flat_map(|(_, b)| b).collect();
    assert_eq!(sent, std::fs::read(&file).unwrap());

    // Headers are all there, the token is not: only its digest, to tell which one was used.
    let digest = hex::encode(sha2::Sha256::digest(DEMO_TOKEN.as_bytes()));
    let mut authorized = 0;
    for r in &records {
        let head = String::from_utf8_lossy(&r.head);
        assert!(head.contains("\nhost: 127.0.0.1:"), "{head}");
        assert!(!head.contains(DEMO_TOKEN), "{head}");
        if head.contains("\nauthorization: ") {
            assert!(
                head.contains(&format!(
                    "authorization: Bearer [redacted, sha256 {}]",
                    &digest[..16]
                )),
                "{head}"
            );
            authorized += 1;
        }
    }
    assert!(
        authorized > 0 && authorized < records.len(),
        "API calls carry the token, part PUTs do not"
    );
    let create = records
        .iter()
        .find(|r| {
            r.request_line().starts_with("POST /api/v1/uploads/") && r.complete() == Some(true)
        })
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body(create)).unwrap();
    assert_eq!(json["filename"], "scan.bin", "the body as sent");
}

/// A body goes to disk as the sandbox reads it, not when the request ends: a client that sends half and
/// waits finds the half in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_written_out_as_it_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("requests");
    let sb = sandbox_with(|o| o.record = Some(dir.clone())).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let url = sb.base_url().join("uploads/").unwrap();
    let request = reqwest::Client::new()
        .post(url)
        .header("Authorization", format!("Bearer {DEMO_TOKEN}"))
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let answer = tokio::spawn(request);

    let first = bytes::Bytes::from(vec![b' '; 256 * 1024]);
    tx.send(first.clone()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = recorder::read(&dir).unwrap();
        let written = records.first().map_or(0, |r| body(r).len());
        if written == first.len() {
            assert_eq!(records[0].complete(), None, "the request is not over");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{written} bytes of the first {} recorded",
            first.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rest = bytes::Bytes::from_static(br#"{"filename": "late.bin"}"#);
    tx.send(rest.clone()).await.unwrap();
    drop(tx);
    let answer = answer.await.unwrap().unwrap();
    assert_eq!(answer.status(), 201, "{:?}", answer.text().await);

    let records = recorder::read(&dir).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].complete(), Some(true));
    assert_eq!(body(&records[0]), [first, rest].concat());
    assert!(
        records[0]
            .request_line()
            .starts_with("POST /api/v1/uploads/ HTTP/1.1")
    );
}
