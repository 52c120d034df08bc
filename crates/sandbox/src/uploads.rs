//! User uploads (gc-protocol.md §2): the API side of S3 multipart uploads. Creating an upload opens a
//! multipart upload; presigned URLs point at the sandbox's own S3-like endpoint ([`super::s3`]); complete
//! checks the parts like S3 does, and every "S3 rejected it" or "wrong state" case is the site's HTML 500.

use serde_json::{Map, Value as Json, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::ctx::{Ctx, Handled};
use super::http::{Resp, py_type};
use super::routes::{Route, UploadAction};
use super::store::{Upload, UploadStatus, World};
use super::values::char_field;

const TOO_MANY: &str = "You have created too many uploads. Please try again later.";

pub fn handle(w: &mut World, ctx: &Ctx, route: &Route) -> Handled {
    let r = match route {
        Route::Uploads if ctx.method == "GET" => Ok(list(w, ctx)),
        Route::Uploads => create(w, ctx),
        Route::Upload(pk) => detail(w, ctx, pk),
        Route::UploadAction {
            pk,
            s3_upload_id,
            action,
        } => action_on(w, ctx, pk, s3_upload_id, *action),
        _ => Ok(Resp::html(404)),
    }?;
    Ok((r, Vec::new()))
}

fn list(w: &World, ctx: &Ctx) -> Resp {
    let mut own: Vec<&Upload> = w
        .uploads
        .values()
        .filter(|u| Some(u.owner) == ctx.user)
        .collect();
    own.sort_by_key(|u| u.seq);
    ctx.page(
        own.into_iter()
            .map(|u| w.upload_json(u, ctx.urls))
            .collect(),
    )
}

fn own<'w>(w: &'w World, ctx: &Ctx, pk: &str) -> Result<&'w Upload, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    w.uploads
        .get(&pk)
        .filter(|u| Some(u.owner) == ctx.user)
        .ok_or_else(|| Resp::no_match("UserUpload"))
}

fn detail(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let u = own(w, ctx, pk)?;
    Ok(Resp::json(200, w.upload_json(u, ctx.urls)))
}

/// An opaque upload id that is safe in a path segment.
fn new_s3_upload_id() -> String {
    let a = Uuid::new_v4().simple().to_string();
    let b = Uuid::new_v4().simple().to_string();
    format!("2~{}{}", &a[..20], &b[..12])
}

fn create(w: &mut World, ctx: &Ctx) -> Result<Resp, Resp> {
    let user = ctx.require_user()?;
    let obj = ctx.object()?;
    let filename = match obj.get("filename") {
        None => return Err(Resp::field_error("filename", "This field is required.")),
        Some(Json::Null) => {
            return Err(Resp::field_error("filename", "This field may not be null."));
        }
        Some(v) => char_field(v, 128, false)
            .map_err(|e| Resp::field_error("filename", &e))?
            .unwrap_or_default(),
    };
    let bare = std::path::Path::new(&filename)
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == filename.as_str());
    if !bare {
        return Err(Resp::field_error(
            "filename",
            &format!("{filename} is not a valid filename"),
        ));
    }
    let owned = w.uploads.values().filter(|u| u.owner == user).count();
    if owned > ctx.limits.max_uploads_per_user || ctx.too_many_uploads.is_some_and(|t| owned >= t) {
        return Err(Resp::json(400, json!({"non_field_errors": [TOO_MANY]})));
    }
    let pk = Uuid::new_v4();
    let seq = w.next_seq();
    let upload = Upload {
        pk,
        owner: user,
        filename,
        s3_upload_id: new_s3_upload_id(),
        status: UploadStatus::Initialized,
        created: OffsetDateTime::now_utc(),
        created_at: std::time::Instant::now(),
        parts: Default::default(),
        object: Vec::new(),
        seq,
    };
    let body = w.upload_json(&upload, ctx.urls);
    w.uploads.insert(pk, upload);
    Ok(Resp::json(201, body))
}

fn part_numbers(v: Option<&Json>) -> Result<Vec<u32>, Resp> {
    let Some(v) = v else {
        return Err(Resp::json(
            400,
            json!({"non_field_errors": ["The `part_numbers` field is required"]}),
        ));
    };
    let Json::Array(items) = v else {
        return Err(Resp::field_error(
            "part_numbers",
            &format!("Expected a list of items but got type \"{}\".", py_type(v)),
        ));
    };
    let mut errors = Map::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match integer(item) {
            Some(n) if n < 1 => {
                errors.insert(
                    i.to_string(),
                    json!(["Ensure this value is greater than or equal to 1."]),
                );
            }
            Some(n) if n > 10_000 => {
                errors.insert(
                    i.to_string(),
                    json!(["Ensure this value is less than or equal to 10000."]),
                );
            }
            Some(n) => out.push(n as u32),
            None => {
                errors.insert(i.to_string(), json!(["A valid integer is required."]));
            }
        }
    }
    if !errors.is_empty() {
        return Err(Resp::json(400, json!({"part_numbers": errors})));
    }
    Ok(out)
}

/// DRF IntegerField: integers, integral floats and numeric strings.
fn integer(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `parts` of a complete call: (part number, ETag) in the order given.
fn complete_parts(v: Option<&Json>) -> Result<Vec<(u32, String)>, Resp> {
    let Some(v) = v else {
        return Err(Resp::json(
            400,
            json!({"non_field_errors": ["The `parts` field is required"]}),
        ));
    };
    let Json::Array(items) = v else {
        return Err(Resp::field_error(
            "parts",
            &format!("Expected a list of items but got type \"{}\".", py_type(v)),
        ));
    };
    let mut errors = Vec::new();
    let mut failed = false;
    let mut out = Vec::new();
    for item in items {
        let mut e = Map::new();
        let Some(obj) = item.as_object() else {
            failed = true;
            errors.push(json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {}.", py_type(item))]}));
            continue;
        };
        let number = match obj.get("PartNumber") {
            None => None,
            Some(v) => match integer(v) {
                Some(n) if (1..=10_000).contains(&n) => Some(n as u32),
                Some(n) if n < 1 => {
                    e.insert(
                        "PartNumber".into(),
                        json!(["Ensure this value is greater than or equal to 1."]),
                    );
                    None
                }
                Some(_) => {
                    e.insert(
                        "PartNumber".into(),
                        json!(["Ensure this value is less than or equal to 10000."]),
                    );
                    None
                }
                None => {
                    e.insert("PartNumber".into(), json!(["A valid integer is required."]));
                    None
                }
            },
        };
        let etag = match obj.get("ETag") {
            None => None,
            Some(v) => match char_field(v, 1024, false) {
                Ok(s) => s,
                Err(msg) => {
                    e.insert("ETag".into(), json!([msg]));
                    None
                }
            },
        };
        if !e.is_empty() {
            failed = true;
            errors.push(Json::Object(e));
            continue;
        }
        errors.push(json!({}));
        // Partial validation: entries without both keys are passed on and rejected by "S3" below.
        out.push((number.unwrap_or(0), etag.unwrap_or_default()));
    }
    if failed {
        return Err(Resp::json(400, json!({"parts": errors})));
    }
    Ok(out)
}

fn unquote(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// What S3's CompleteMultipartUpload accepts: a non-empty list of existing parts with matching ETags, in
/// strictly ascending order, every part but the last at least `min_part_size` bytes.
pub fn check_complete(
    upload: &Upload,
    listed: &[(u32, String)],
    min_part_size: u64,
) -> Result<Vec<super::store::Part>, String> {
    if listed.is_empty() {
        return Err("MalformedXML: no parts".into());
    }
    let mut parts = Vec::with_capacity(listed.len());
    let mut previous = 0;
    for (i, (number, etag)) in listed.iter().enumerate() {
        if *number <= previous {
            return Err("InvalidPartOrder".into());
        }
        previous = *number;
        let Some(part) = upload.parts.get(number) else {
            return Err(format!("InvalidPart: part {number} was not uploaded"));
        };
        if unquote(&part.etag) != unquote(etag) {
            return Err(format!("InvalidPart: ETag of part {number} does not match"));
        }
        if i + 1 < listed.len() && part.size < min_part_size {
            return Err(format!(
                "EntityTooSmall: part {number} has {} bytes",
                part.size
            ));
        }
        parts.push(part.clone());
    }
    Ok(parts)
}

fn action_on(
    w: &mut World,
    ctx: &Ctx,
    pk: &str,
    s3_upload_id: &str,
    action: UploadAction,
) -> Result<Resp, Resp> {
    if action != UploadAction::ListParts {
        ctx.require_user()?;
    }
    let upload = own(w, ctx, pk)?;
    if upload.s3_upload_id != s3_upload_id || upload.s3_upload_id.is_empty() {
        return Err(Resp::not_found());
    }
    let upload_pk = upload.pk;
    match action {
        UploadAction::GeneratePresignedUrls => presigned_urls(w, ctx, upload),
        UploadAction::ListParts => list_parts(w, ctx, upload),
        UploadAction::Complete => complete(w, ctx, upload_pk),
        UploadAction::Abort => abort(w, ctx, upload_pk),
    }
}

/// Part URLs for the numbers asked, while the upload is open and the owner's byte quota not used up.
fn presigned_urls(w: &World, ctx: &Ctx, upload: &Upload) -> Result<Resp, Resp> {
    let owner = w.user(upload.owner);
    let limit = if owner.is_some_and(|u| u.verified) {
        ctx.limits.upload_limit_verified
    } else {
        ctx.limits.upload_limit_unverified
    };
    let in_flight: u64 =
        upload.parts.values().map(|p| p.size).sum::<u64>() + w.completed_bytes(upload.owner);
    if upload.status != UploadStatus::Initialized || in_flight >= limit {
        return Err(Resp::detail(403, "Upload limit reached"));
    }
    let obj = ctx.object()?;
    let numbers = part_numbers(obj.get("part_numbers"))?;
    let mut urls = Map::new();
    for n in numbers {
        urls.insert(
            n.to_string(),
            ctx.signer.presign(&ctx.urls.origin, upload, n).into(),
        );
    }
    let mut body = w.upload_json(upload, ctx.urls);
    body["presigned_urls"] = Json::Object(urls);
    Ok(Resp::json(200, body))
}

/// The parts stored so far, as S3 lists them; a closed upload is a 500, as on the platform.
fn list_parts(w: &World, ctx: &Ctx, upload: &Upload) -> Result<Resp, Resp> {
    if upload.status != UploadStatus::Initialized {
        return Err(Resp::html(500));
    }
    let parts: Vec<Json> = upload
        .parts
        .values()
        .map(|p| {
            json!({
                "ETag": p.etag,
                "PartNumber": p.number,
                "LastModified": p.last_modified.replace_nanosecond(0).map(super::store::iso).unwrap_or_default().replace(".000000Z", "Z"),
                "Size": p.size,
            })
        })
        .collect();
    let mut body = w.upload_json(upload, ctx.urls);
    body["parts"] = Json::Array(parts);
    Ok(Resp::json(200, body))
}

/// Complete the upload from the parts listed (see [`check_complete`]); parts not listed are discarded.
fn complete(w: &mut World, ctx: &Ctx, upload_pk: Uuid) -> Result<Resp, Resp> {
    let obj = ctx.object()?;
    let listed = complete_parts(obj.get("parts"))?;
    let Some(upload) = w.uploads.get(&upload_pk) else {
        return Err(Resp::html(500));
    };
    if upload.status != UploadStatus::Initialized {
        return Err(Resp::html(500));
    }
    let object = check_complete(upload, &listed, ctx.limits.min_part_size).map_err(|reason| {
        tracing::debug!(upload = %upload_pk, %reason, "complete rejected");
        Resp::html(500)
    })?;
    let Some(upload) = w.uploads.get_mut(&upload_pk) else {
        return Err(Resp::html(500));
    };
    // Parts not named in the complete call are discarded, as S3 does.
    for (number, part) in &upload.parts {
        if !listed.iter().any(|(n, _)| n == number) {
            let _ = std::fs::remove_file(&part.path);
        }
    }
    upload.object = object;
    upload.parts.clear();
    upload.status = UploadStatus::Completed;
    let body = w.upload_json(&w.uploads[&upload_pk], ctx.urls);
    Ok(Resp::json(200, body))
}

/// Abort an open upload: its parts are deleted and its S3 upload id forgotten.
fn abort(w: &mut World, ctx: &Ctx, upload_pk: Uuid) -> Result<Resp, Resp> {
    let Some(upload) = w.uploads.get(&upload_pk) else {
        return Err(Resp::html(500));
    };
    if upload.status != UploadStatus::Initialized {
        return Err(Resp::html(500));
    }
    let dir = upload.dir(&w.data_dir);
    let _ = std::fs::remove_dir_all(dir);
    let Some(upload) = w.uploads.get_mut(&upload_pk) else {
        return Err(Resp::html(500));
    };
    upload.parts.clear();
    upload.status = UploadStatus::Aborted;
    upload.s3_upload_id = String::new();
    let body = w.upload_json(&w.uploads[&upload_pk], ctx.urls);
    Ok(Resp::json(200, body))
}
