//! Conformance of the sandbox's REST API with gc-protocol.md, over loopback HTTP.

use gc_testkit::http::*;
use serde_json::{Value, json};

#[tokio::test]
async fn handshake_json_content_type_and_socket_shape() {
    let env = start().await;
    let r = env.get("gcapi/", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.content_type(),
        "application/json",
        "exactly, without charset"
    );
    has_keys(&r.json(), &["latest_version", "lowest_supported_version"]);

    let r = env
        .get("components/interfaces/?slug=segmentation", DEMO)
        .await;
    assert_eq!(r.content_type(), "application/json");
    let page = r.json();
    assert_eq!(page["count"], 1);
    let s = &page["results"][0];
    assert_eq!(
        keys(s),
        [
            "title",
            "description",
            "slug",
            "kind",
            "pk",
            "default_value",
            "super_kind",
            "relative_path",
            "overlay_segments",
            "look_up_table"
        ]
    );
    assert_eq!(s["kind"], "Segmentation");
    assert_eq!(
        s["overlay_segments"],
        json!([{"name": "lesion", "visible": true, "voxel_value": 1}])
    );
    let detail = env
        .get(&format!("components/interfaces/{}/", s["pk"]), DEMO)
        .await;
    assert_eq!(detail.json(), *s);
    assert_eq!(
        env.get("components/interfaces/99999/", DEMO).await.json()["detail"],
        "No ComponentInterface matches the given query."
    );
    assert_eq!(
        env.get("components/interfaces/?slug=nope", DEMO)
            .await
            .json()["count"],
        0
    );
    let all = env.get("components/interfaces/", DEMO).await.json();
    assert_eq!(all["count"], 13);
    let kinds: Vec<(&str, &str)> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slug"].as_str().unwrap(),
                s["super_kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("results-json", "File")) && kinds.contains(&("dicom-image-set", "Image"))
    );
}

#[tokio::test]
async fn authentication_table() {
    let env = start().await;
    let call = |auth: &'static [u8]| {
        let http = env.http.clone();
        let url = env.url("archives/");
        async move {
            let resp = http
                .get(url)
                .header(
                    "Authorization",
                    reqwest::header::HeaderValue::from_bytes(auth).unwrap(),
                )
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            (status, www, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let failures: [(&[u8], &str); 5] = [
        (b"Bearer", "Invalid token header. No credentials provided."),
        (
            b"Bearer a b",
            "Invalid token header. Token string should not contain spaces.",
        ),
        (
            b"Bearer \xe4\xf6",
            "Invalid token header. Token string should not contain invalid characters.",
        ),
        (b"Bearer 0123456789abcdef", "Invalid token."),
        (b"bearer nothex!", "Invalid token."),
    ];
    for (header, detail) in failures {
        let (status, www, body) = call(header).await;
        assert_eq!(status, 401, "{header:?}");
        assert_eq!(www.as_deref(), Some("Bearer"));
        assert_eq!(body, json!({"detail": detail}));
    }
    // A bad token fails even on AllowAny endpoints.
    let r = env.send("GET", "gcapi/", Some("wrong"), None).await;
    assert_eq!(r.status, 401);
    // Other schemes are ignored: anonymous.
    let (status, _, body) =
        call(b"Token 2cc6e90b9a9d797ef841cabc57970e1aa6f9a0f6f28cbafcdc4eca7d4e1ac825").await;
    assert_eq!((status, body["count"].clone()), (200, json!(0)));
    // gcapi sends BEARER in capitals.
    let (status, _, body) =
        call(b"BEARER 2cc6e90b9a9d797ef841cabc57970e1aa6f9a0f6f28cbafcdc4eca7d4e1ac825").await;
    assert_eq!((status, body["count"].clone()), (200, json!(1)));

    // Anonymous: filtered 200 on lists, 401 on sockets and on unsafe methods.
    assert_eq!(env.get("archives/items/", None).await.json()["count"], 0);
    assert_eq!(env.get("uploads/", None).await.status, 200);
    let r = env.get("components/interfaces/?limit=1", None).await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    assert_eq!(
        r.json(),
        json!({"detail": "Authentication credentials were not provided."})
    );
    for (path, body) in [
        ("uploads/", json!({"filename": "a"})),
        ("archives/items/", json!({})),
        ("reader-studies/display-sets/", json!({})),
        ("cases/upload-sessions/", json!({})),
    ] {
        assert_eq!(env.post(path, None, body).await.status, 401, "{path}");
    }
    let who = env.get("profiles/users/self/", READER).await.json();
    assert_eq!(who["user"]["username"], "reader");
    has_keys(
        &who,
        &[
            "user",
            "mugshot",
            "institution",
            "department",
            "location",
            "website",
        ],
    );
    assert_eq!(env.get("profiles/users/self/", None).await.status, 401);
}

#[tokio::test]
async fn api_root_is_staff_only() {
    let env = start().await;
    assert_eq!(env.get("", None).await.status, 401);
    assert_eq!(env.get("", DEMO).await.status, 403);
    let r = env.get("", ADMIN).await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["archives"]
            .as_str()
            .unwrap()
            .starts_with(&env.base)
    );
}

#[tokio::test]
async fn archives_and_reader_studies_lookups() {
    let env = start().await;
    let page = env.get("archives/?slug=demo-archive", READER).await.json();
    assert_eq!(page["count"], 1);
    let a = &page["results"][0];
    assert_eq!(
        keys(a),
        ["pk", "title", "logo", "description", "api_url", "url"]
    );
    assert_eq!(a["api_url"], env.url(&format!("archives/{ARCHIVE_PK}/")));
    assert_eq!(
        env.get(&format!("archives/{ARCHIVE_PK}/"), DEMO)
            .await
            .json(),
        *a
    );
    assert_eq!(
        env.get("archives/?slug=demo-archive", ADMIN).await.json()["count"],
        0,
        "not a member"
    );
    assert_eq!(
        env.get(&format!("archives/{ARCHIVE_PK}/"), ADMIN)
            .await
            .json()["detail"],
        "No Archive matches the given query."
    );
    assert_eq!(
        env.get("archives/not-a-uuid/", DEMO).await.json()["detail"],
        "Not found."
    );

    let rs = env
        .get("reader-studies/?slug=demo-reader-study", READER)
        .await
        .json();
    assert_eq!(rs["count"], 1);
    has_keys(
        &rs["results"][0],
        &[
            "api_url",
            "url",
            "slug",
            "pk",
            "title_safe",
            "logo",
            "description",
            "help_text_safe",
            "questions",
            "is_educational",
            "instant_verification",
            "has_ground_truth",
            "allow_answer_modification",
            "enable_autosaving",
            "allow_case_navigation",
            "allow_show_all_annotations",
            "roll_over_answers_for_n_cases",
            "end_of_study_text_safe",
        ],
    );
    assert_eq!(
        env.get(&format!("reader-studies/{READER_STUDY_PK}/"), READER)
            .await
            .status,
        200
    );
}

/// A `PATCH` of the title of the archive item `pk` to `title`, as `token`'s user.
async fn retitle(env: &Env, pk: &str, token: Option<&str>, title: Value) -> Reply {
    env.patch(
        &format!("archives/items/{pk}/"),
        token,
        json!({ "title": title }),
    )
    .await
}

#[tokio::test]
async fn pagination_counts_links_and_clamping() {
    let env = start().await;
    for i in 0..25 {
        env.new_item(&format!("case-{i:02}")).await;
    }
    let q = format!("archives/items/?archive={ARCHIVE_PK}");
    let p = env
        .get(&format!("{q}&limit=10&offset=10"), DEMO)
        .await
        .json();
    assert_eq!(p["count"], 25);
    assert_eq!(p["results"].as_array().unwrap().len(), 10);
    assert_eq!(
        p["next"],
        env.url(&format!(
            "archives/items/?archive={ARCHIVE_PK}&limit=10&offset=20"
        ))
    );
    assert_eq!(
        p["previous"],
        env.url(&format!("archives/items/?archive={ARCHIVE_PK}&limit=10"))
    );
    let last = env
        .get(&format!("{q}&limit=10&offset=20"), DEMO)
        .await
        .json();
    assert_eq!(last["results"].as_array().unwrap().len(), 5);
    assert!(last["next"].is_null());
    let first = env.get(&q, DEMO).await.json();
    assert!(first["next"].is_null() && first["previous"].is_null());
    assert_eq!(first["results"].as_array().unwrap().len(), 25);
    let clamped = env
        .get(&format!("{q}&limit=5000&offset=-4"), DEMO)
        .await
        .json();
    assert_eq!(clamped["results"].as_array().unwrap().len(), 25);
    let fallback = env
        .get(&format!("{q}&limit=0&offset=24"), DEMO)
        .await
        .json();
    assert_eq!(fallback["results"].as_array().unwrap().len(), 1);
    assert_eq!(
        fallback["previous"],
        env.url(&format!("archives/items/?archive={ARCHIVE_PK}&limit=100"))
    );
    let beyond = env.get(&format!("{q}&offset=100"), DEMO).await.json();
    assert_eq!(beyond["results"], json!([]));
    // Filters: the pk of an existing container, else the invalid-choice 400.
    for bad in ["nope", "00000000-0000-4000-8000-000000000000"] {
        let r = env
            .get(&format!("archives/items/?archive={bad}"), DEMO)
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json(),
            json!({"archive": ["Select a valid choice. That choice is not one of the available choices."]})
        );
    }
    let r = env
        .get(
            "reader-studies/display-sets/?reader_study=demo-reader-study",
            DEMO,
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"reader_study": ["Select a valid choice. That choice is not one of the available choices."]})
    );
    assert_eq!(
        env.get(
            &format!("reader-studies/display-sets/?reader_study={READER_STUDY_PK}"),
            READER
        )
        .await
        .json()["count"],
        1
    );
}

#[tokio::test]
async fn http_conventions() {
    let env = start().await;
    let r = env.get(&format!("{}archives?slug=x", env.base), DEMO).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/api/v1/archives/?slug=x"));
    let r = env.post("archives/items", DEMO, json!({})).await;
    assert_eq!(
        r.status, 301,
        "POST without the slash is redirected too (the body is lost)"
    );
    let r = env.get("no-such-endpoint/", DEMO).await;
    assert_eq!(
        (r.status, r.content_type()),
        (404, "text/html; charset=utf-8")
    );
    let r = env
        .get(&format!("{}/definitely/not/here", env.origin), None)
        .await;
    assert_eq!(r.status, 404);
    let r = env.send("DELETE", "archives/", DEMO, None).await;
    assert_eq!(r.status, 405);
    assert_eq!(
        r.json(),
        json!({"detail": "Method \"DELETE\" not allowed."})
    );
    let item = env.new_item("to-delete").await;
    assert_eq!(
        env.send("DELETE", &format!("archives/items/{item}/"), DEMO, None)
            .await
            .status,
        403,
        "permission before 405"
    );

    let r = env
        .http
        .get(env.url("archives/"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"detail": "Could not satisfy the request Accept header."})
    );
    let r = env
        .http
        .get(env.url("archives/?format=json"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let send_raw = |ct: &'static str, body: &'static str| {
        let req = env
            .http
            .post(env.url("archives/items/"))
            .header("Authorization", format!("Bearer {}", DEMO.unwrap()))
            .header("Content-Type", ct)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = send_raw("text/plain", "hello").await;
    assert_eq!(
        (status, body),
        (
            415,
            json!({"detail": "Unsupported media type \"text/plain\" in request."})
        )
    );
    let (status, body) = send_raw("application/json", "{\"archive\": ").await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error - "),
        "{body}"
    );
    let (status, body) = send_raw("application/json", "[1]").await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})
        )
    );
}

#[tokio::test]
async fn items_create_read_write_shapes_and_permissions() {
    let env = start().await;
    let archive_url = env.url(&format!("archives/{ARCHIVE_PK}/"));
    let r = env.post_item(DEMO, "case-1").await;
    assert_eq!(r.status, 201);
    let created = r.json();
    assert_eq!(
        keys(&created),
        [
            "pk",
            "title",
            "archive",
            "values",
            "hanging_protocol",
            "optional_hanging_protocols",
            "view_content"
        ]
    );
    assert_eq!(created["archive"], archive_url);
    assert_eq!(created["values"], json!([]));
    let pk = created["pk"].as_str().unwrap();

    // A path-only hyperlink works too; the host is ignored.
    let r = env
        .post(
            "archives/items/",
            DEMO,
            json!({"archive": format!("https://elsewhere/api/v1/archives/{ARCHIVE_PK}/")}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["title"], "");

    let errors = [
        (json!({}), json!({"archive": ["This field is required."]})),
        (
            json!({"archive": env.url("archives/00000000-0000-4000-8000-000000000000/")}),
            json!({"archive": ["Invalid hyperlink - Object does not exist."]}),
        ),
        (
            json!({"archive": env.url("uploads/x/")}),
            json!({"archive": ["Invalid hyperlink - Incorrect URL match."]}),
        ),
        (
            json!({"archive": "https://h/elsewhere/"}),
            json!({"archive": ["Invalid hyperlink - No URL match."]}),
        ),
        (
            json!({"archive": 5}),
            json!({"archive": ["Incorrect type. Expected URL string, received int."]}),
        ),
    ];
    for (body, expected) in errors {
        let r = env.post("archives/items/", DEMO, body.clone()).await;
        assert_eq!((r.status, r.json()), (400, expected), "{body}");
    }
    // View-only users cannot create, cannot change, but can read.
    let r = env
        .post("archives/items/", READER, json!({"archive": archive_url}))
        .await;
    assert_eq!(
        r.json(),
        json!({"archive": ["Invalid hyperlink - Object does not exist."]})
    );
    let r = retitle(&env, pk, READER, json!("x")).await;
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"detail": "You do not have permission to perform this action."})
        )
    );
    assert_eq!(
        env.get(&format!("archives/items/{pk}/"), READER)
            .await
            .status,
        200
    );
    let r = retitle(&env, pk, ADMIN, json!("x")).await;
    assert_eq!(
        (r.status, r.json()),
        (
            404,
            json!({"detail": "No ArchiveItem matches the given query."})
        )
    );
    assert_eq!(
        env.get("archives/items/not-a-uuid/", DEMO).await.json(),
        json!({"detail": "Not found."})
    );
    assert_eq!(
        env.patch(&format!("archives/items/{pk}/"), None, json!({}))
            .await
            .status,
        401
    );

    // Values can only be added via update.
    let r = env
        .post(
            "archives/items/",
            DEMO,
            json!({"archive": archive_url, "values": [{"interface": "lesion-count", "value": 1}]}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!(["Values can only be added via update"]))
    );

    // PATCH: synchronous value, write representation; GET: read representation.
    let r = env
        .patch(
            &format!("archives/items/{pk}/"),
            DEMO,
            json!({"values": [
                {"interface": "lesion-count", "value": 3, "file": null, "image": null, "upload_session": null, "user_upload": null, "user_uploads": null, "image_name": null},
                {"interface": "notes", "value": "seen"},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let written = r.json();
    assert_eq!(written["title"], "case-1", "title kept when omitted");
    let v = &written["values"][0];
    assert_eq!(
        keys(v),
        ["interface", "value", "file", "image", "pk", "image_name"]
    );
    assert_eq!(
        (v["interface"].clone(), v["value"].clone()),
        (json!("lesion-count"), json!(3))
    );
    assert!(
        written["values"][0]["pk"].as_i64() < written["values"][1]["pk"].as_i64(),
        "socket-value pk order"
    );
    let read = env.get(&format!("archives/items/{pk}/"), DEMO).await.json();
    let rv = &read["values"][0];
    has_keys(rv, &["interface", "value", "file", "image", "pk"]);
    assert_eq!(
        rv["interface"]["slug"], "lesion-count",
        "values are sorted by slug, with full sockets"
    );
    assert_eq!(read["values"][1]["interface"]["slug"], "notes");
    // Same value again: the same shared socket value.
    let again = env
        .patch(
            &format!("archives/items/{pk}/"),
            DEMO,
            json!({"values": [{"interface": "lesion-count", "value": 3}]}),
        )
        .await
        .json();
    assert_eq!(again["values"][0]["pk"], v["pk"]);
    // PUT removes the sockets that are not listed.
    let put = env
        .send(
            "PUT",
            &format!("archives/items/{pk}/"),
            DEMO,
            Some(json!({"values": [{"interface": "notes", "value": "only"}]})),
        )
        .await;
    assert_eq!(put.status, 200);
    let slugs: Vec<String> = put.json()["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["interface"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(slugs, ["notes"]);
}

#[tokio::test]
async fn titles_are_unique_per_container() {
    let env = start().await;
    let first = env.new_item("same").await;
    let r = env
        .post(
            "archives/items/",
            DEMO,
            json!({"archive": env.url(&format!("archives/{ARCHIVE_PK}/")), "title": "same"}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"non_field_errors": ["The fields title, archive must make a unique set."]})
        )
    );
    // Empty titles are never unique-checked.
    env.new_item("").await;
    env.new_item("").await;
    let other = env.new_item("other").await;
    let r = retitle(&env, &other, DEMO, json!("same")).await;
    assert_eq!(r.status, 400);
    let r = retitle(&env, &first, DEMO, json!("same")).await;
    assert_eq!(r.status, 200, "its own title is not a duplicate");
    let r = retitle(&env, &first, DEMO, json!("x".repeat(256))).await;
    assert_eq!(
        r.json(),
        json!({"title": ["Ensure this field has no more than 255 characters."]})
    );

    let ds = env
        .new_display_set(json!({"reader_study": "demo-reader-study", "title": "ds"}))
        .await;
    assert_eq!(
        ds["reader_study"], "demo-reader-study",
        "the write representation names the study by slug"
    );
    let r = env
        .post(
            "reader-studies/display-sets/",
            DEMO,
            json!({"reader_study": "demo-reader-study", "title": "ds"}),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["The fields title, reader_study must make a unique set."]})
    );
}

#[tokio::test]
async fn display_sets_order_and_frozen_rule() {
    let env = start().await;
    // The demo study already holds the answered display set at order 10.
    let a = env
        .new_display_set(json!({"reader_study": "demo-reader-study"}))
        .await;
    assert_eq!(a["order"], 20);
    has_keys(
        &a,
        &[
            "pk",
            "title",
            "title_safe",
            "reader_study",
            "values",
            "order",
            "api_url",
            "hanging_protocol",
            "optional_hanging_protocols",
            "view_content",
            "description",
            "index",
        ],
    );
    let b = env
        .new_display_set(json!({"reader_study": "demo-reader-study", "order": 42}))
        .await;
    assert_eq!(b["order"], 42);
    let c = env
        .new_display_set(json!({"reader_study": "demo-reader-study", "order": 0, "title": "c"}))
        .await;
    assert_eq!(c["order"], 50, "next multiple of 10 above the highest");
    let r = env
        .patch(
            &format!("reader-studies/display-sets/{}/", a["pk"].as_str().unwrap()),
            DEMO,
            json!({"order": 0}),
        )
        .await;
    assert_eq!(r.json()["order"], 60);
    for (order, msg) in [
        (
            json!(-1),
            "Ensure this value is greater than or equal to 0.",
        ),
        (json!(null), "This field may not be null."),
        (json!("x"), "A valid integer is required."),
    ] {
        let r = env
            .post(
                "reader-studies/display-sets/",
                DEMO,
                json!({"reader_study": "demo-reader-study", "order": order}),
            )
            .await;
        assert_eq!(r.json(), json!({"order": [msg]}));
    }
    // Readers and unknown slugs.
    let r = env
        .post(
            "reader-studies/display-sets/",
            READER,
            json!({"reader_study": "demo-reader-study"}),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"reader_study": ["Object with slug=demo-reader-study does not exist."]})
    );
    let r = env
        .post("reader-studies/display-sets/", DEMO, json!({}))
        .await;
    assert_eq!(
        r.json(),
        json!({"reader_study": ["This field is required."]})
    );
    let ds = a["pk"].as_str().unwrap();
    assert_eq!(
        env.patch(
            &format!("reader-studies/display-sets/{ds}/"),
            READER,
            json!({"title": "t"})
        )
        .await
        .status,
        403
    );
    let read = env
        .get(&format!("reader-studies/display-sets/{ds}/"), READER)
        .await
        .json();
    assert_eq!(
        read["reader_study"],
        env.url(&format!("reader-studies/{READER_STUDY_PK}/"))
    );
    has_keys(
        &read,
        &["title_safe", "index", "api_url", "descriptions_map_safe"],
    );

    // Answered display sets are frozen, even for title/order only.
    let path = format!("reader-studies/display-sets/{ANSWERED_PK}/");
    for body in [
        json!({"title": "new"}),
        json!({"order": 99}),
        json!({"values": [{"interface": "notes", "value": "x"}]}),
    ] {
        let r = env.patch(&path, DEMO, body).await;
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!(["This display set cannot be changed, as answers for it already exist."])
            )
        );
    }
    assert_eq!(env.get(&path, DEMO).await.json()["title"], "answered-case");
}

#[tokio::test]
async fn per_entry_value_errors_with_literal_texts() {
    let env = start().await;
    let item = env.new_item("errors").await;
    let foreign = env.upload(READER, "foreign.pdf", b"%PDF").await;
    let mine = env.upload(DEMO, "mine.pdf", b"%PDF").await;
    let path = format!("archives/items/{item}/");
    let at_least = "You must provide at least one of ['image', 'value', 'file', 'user_upload', 'upload_session', ('image_name', 'user_uploads')].";
    let cases = vec![
        (
            json!({"interface": "nope", "value": 1}),
            json!({"interface": ["Object with slug=nope does not exist."]}),
        ),
        (
            json!({"interface": "lesion-count"}),
            json!({"non_field_errors": [at_least]}),
        ),
        (
            json!({"interface": "lesion-count", "value": 1, "user_upload": mine["api_url"]}),
            json!({"non_field_errors": ["You can only provide one of ['image', 'value', 'file', 'user_upload', 'upload_session', ('image_name', 'user_uploads')] for each socket."]}),
        ),
        (
            json!({"interface": "lesion-count", "user_upload": mine["api_url"]}),
            json!({"non_field_errors": ["value is required for interface kind INT"]}),
        ),
        (
            json!({"interface": "report", "value": "x"}),
            json!({"non_field_errors": ["user_upload or file is required for interface kind PDF"]}),
        ),
        (
            json!({"interface": "ct-image", "user_upload": mine["api_url"]}),
            json!({"non_field_errors": ["upload_session, user_uploads or image are required for interface kind IMG"]}),
        ),
        (
            json!({"interface": "dicom-image-set", "user_uploads": [mine["api_url"]]}),
            json!({"non_field_errors": ["either user_uploads with image_name, or image are required for interface kind DCMIS"]}),
        ),
        (
            json!({"interface": "report", "user_upload": foreign["api_url"]}),
            json!({"user_upload": ["Invalid hyperlink - Object does not exist."]}),
        ),
        (
            json!({"interface": "ct-image", "user_uploads": [foreign["api_url"]]}),
            json!({"user_uploads": ["Invalid hyperlink - Object does not exist."]}),
        ),
        (
            json!({"interface": "ct-image", "image": env.url("cases/images/00000000-0000-4000-8000-000000000000/")}),
            json!({"image": ["Invalid hyperlink - Object does not exist."]}),
        ),
        (
            json!({"interface": "ct-image", "image": env.url("uploads/x/")}),
            json!({"image": ["Invalid hyperlink - Incorrect URL match."]}),
        ),
        (
            json!({"interface": "report", "user_upload": "https://h/nowhere/"}),
            json!({"user_upload": ["Invalid hyperlink - No URL match."]}),
        ),
        (
            json!({"interface": "dicom-image-set", "user_uploads": [mine["api_url"]], "image_name": " "}),
            json!({"image_name": ["This field may not be blank."]}),
        ),
        (
            json!({"interface": "ct-image", "upload_session": env.url("cases/upload-sessions/00000000-0000-4000-8000-000000000000/")}),
            json!({"upload_session": ["Invalid hyperlink - Object does not exist."]}),
        ),
    ];
    let entries: Vec<serde_json::Value> =
        std::iter::once(json!({"interface": "notes", "value": "valid"}))
            .chain(cases.iter().map(|c| c.0.clone()))
            .collect();
    let r = env.patch(&path, DEMO, json!({"values": entries})).await;
    assert_eq!(r.status, 400);
    let body = r.json();
    let got = body["values"].as_array().unwrap();
    assert_eq!(got[0], json!({}), "valid entries get an empty object");
    for (i, (entry, expected)) in cases.iter().enumerate() {
        assert_eq!(&got[i + 1], expected, "entry {entry}");
    }
    // Nothing was applied.
    assert_eq!(env.get(&path, DEMO).await.json()["values"], json!([]));
    let r = env
        .patch(&path, DEMO, json!({"values": {"interface": "notes"}}))
        .await;
    assert_eq!(
        r.json(),
        json!({"values": ["Expected a list of items but got type \"dict\"."]})
    );
}

#[tokio::test]
async fn a_failing_patch_changes_nothing() {
    let env = start().await;
    let item = env.new_item("before").await;
    let path = format!("archives/items/{item}/");
    env.patch(
        &path,
        DEMO,
        json!({"values": [{"interface": "lesion-count", "value": 1}]}),
    )
    .await;
    let before = env.get(&path, DEMO).await.json();
    let r = env
        .patch(
            &path,
            DEMO,
            json!({"title": "after", "values": [{"interface": "lesion-count", "value": 2}, {"interface": "no-such-socket", "value": 1}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        env.get(&path, DEMO).await.json(),
        before,
        "title and values unchanged"
    );
}

#[tokio::test]
async fn phase_linked_archives_allow_only_their_sockets() {
    let sockets = r#"
[[socket]]
slug = "score"
title = "Score"
kind = "Integer"
super_kind = "Value"
relative_path = "score.json"
[[socket]]
slug = "other"
title = "Other"
kind = "Integer"
super_kind = "Value"
relative_path = "other.json"
[[archive]]
pk = "3b1f2a6e-7c1d-4d5e-9f00-112233445566"
slug = "phase"
title = "Phase"
uploaders = ["u"]
allowed_sockets = ["score"]
"#;
    let env = start_on(&[ONE_USER, sockets].concat(), std::path::Path::new(".")).await;
    let r = env.post("archives/items/", U, json!({"archive": env.url("archives/3b1f2a6e-7c1d-4d5e-9f00-112233445566/"), "title": "t"})).await;
    assert_eq!(r.status, 201, "uploaders may create items");
    let path = format!("archives/items/{}/", r.json()["pk"].as_str().unwrap());
    let r = env.patch(&path, U, json!({"title": "t2", "values": [{"interface": "score", "value": 1}, {"interface": "other", "value": 2}]})).await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!(["Socket 'other' is not allowed for this archive."])
        )
    );
    let now = env.get(&path, U).await.json();
    assert_eq!(
        (now["title"].clone(), now["values"].clone()),
        (json!("t"), json!([]))
    );
    let score = json!([{"interface": "score", "value": 1}]);
    assert_eq!(env.set_values(&path, U, score).await.status, 200);
}

#[tokio::test]
async fn read_values_are_grouped_as_the_platform_sorts_them() {
    // Slugs are chosen so that sorting by slug alone would give a different order than the groups.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("extra.json"), br#"{"k": [1, 2]}"#).unwrap();
    std::fs::write(dir.path().join("thumb.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    std::fs::write(dir.path().join("report.pdf"), b"%PDF-1.4\n%%EOF\n").unwrap();
    gc_content::samples::write_mha(&dir.path().join("ct.mha"), [4, 3, 2], 1).unwrap();
    let socket = |slug: &str, kind: &str, super_kind: &str, path: &str| {
        format!(
            "[[socket]]\nslug = \"{slug}\"\ntitle = \"{slug}\"\nkind = \"{kind}\"\nsuper_kind = \"{super_kind}\"\nrelative_path = \"{path}\"\n"
        )
    };
    let fixture = [
        ONE_USER.to_string(),
        socket("a-image", "Image", "Image", "images/a"),
        socket("b-report", "PDF file", "File", "b.pdf"),
        socket("c-chart", "Chart", "Value", "c.json"),
        socket("d-thumb", "Thumbnail png", "File", "d.png"),
        socket("e-extra", "Anything", "File", "e.json"),
        socket("f-count", "Integer", "Value", "f.json"),
        "[[archive]]\npk = \"3b1f2a6e-7c1d-4d5e-9f00-112233445566\"\nslug = \"a\"\ntitle = \"A\"\neditors = [\"u\"]\n".to_string(),
        "[[archive_item]]\narchive = \"a\"\ntitle = \"one\"\n".to_string(),
        "  [[archive_item.value]]\n  socket = \"a-image\"\n  image = \"ct.mha\"\n".to_string(),
        "  [[archive_item.value]]\n  socket = \"b-report\"\n  file = \"report.pdf\"\n".to_string(),
        "  [[archive_item.value]]\n  socket = \"c-chart\"\n  value = { mark = \"bar\" }\n".to_string(),
        "  [[archive_item.value]]\n  socket = \"d-thumb\"\n  file = \"thumb.png\"\n".to_string(),
        "  [[archive_item.value]]\n  socket = \"e-extra\"\n  file = \"extra.json\"\n".to_string(),
        "  [[archive_item.value]]\n  socket = \"f-count\"\n  value = 7\n".to_string(),
    ]
    .concat();
    let env = start_on(&fixture, dir.path()).await;
    let items = env.get("archives/items/", U).await.json();
    let pk = items["results"][0]["pk"].as_str().unwrap().to_string();
    let read = env.get(&format!("archives/items/{pk}/"), U).await.json();
    let slugs: Vec<&str> = read["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["interface"]["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        [
            "e-extra", "f-count", "d-thumb", "c-chart", "b-report", "a-image"
        ],
        "JSON kinds (a file-stored one included) by slug, thumbnails, charts, other files, images"
    );
    // The list shows the same order.
    let listed: Vec<&str> = items["results"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["interface"]["slug"].as_str().unwrap())
        .collect();
    assert_eq!(listed, slugs);
}
