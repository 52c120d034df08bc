//! The S3-like part endpoint: presigned `PUT ?uploadId=&partNumber=&X-Amz-…` URLs signed with a server
//! secret (HMAC-SHA256) and valid for a limited time, bodies streamed to disk while their MD5 is computed
//! (parts can be gigabytes; nothing is buffered), `ETag: "<md5>"` on success and S3's XML errors.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use sha2::Sha256;
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::http::{Resp, query_get};
use super::routes::BUCKET;
use super::store::{Part, Upload, UploadStatus, World};

/// Signs and checks presigned part URLs.
pub struct Signer {
    secret: [u8; 32],
    pub lifetime: Duration,
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    hex::encode(outer.finalize())
}

fn amz_date(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_default()
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(
        s,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()
    .map(|t| t.assume_utc())
}

impl Signer {
    pub fn new(lifetime: Duration) -> Signer {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(Uuid::new_v4().as_bytes());
        Signer { secret, lifetime }
    }

    fn signature(
        &self,
        path: &str,
        upload_id: &str,
        part: &str,
        date: &str,
        expires: &str,
    ) -> String {
        let message = format!(
            "PUT\n{path}\nuploadId={upload_id}&partNumber={part}&X-Amz-Date={date}&X-Amz-Expires={expires}"
        );
        hmac_sha256(&self.secret, message.as_bytes())
    }

    /// The presigned URL of one part.
    pub fn presign(&self, origin: &str, upload: &Upload, part: u32) -> String {
        let path = format!("/s3/{BUCKET}/uploads/{}/{}", upload.owner, upload.pk);
        let date = amz_date(OffsetDateTime::now_utc());
        let expires = self.lifetime.as_secs().to_string();
        let sig = self.signature(
            &path,
            &upload.s3_upload_id,
            &part.to_string(),
            &date,
            &expires,
        );
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("uploadId", &upload.s3_upload_id)
            .append_pair("partNumber", &part.to_string())
            .append_pair("X-Amz-Algorithm", "AWS4-HMAC-SHA256")
            .append_pair("X-Amz-Date", &date)
            .append_pair("X-Amz-Expires", &expires)
            .append_pair("X-Amz-SignedHeaders", "host")
            .append_pair("X-Amz-Signature", &sig)
            .finish();
        format!("{origin}{path}?{query}")
    }

    /// Check a request's query: `Ok((upload id, part number))` or the S3 error.
    pub fn verify(
        &self,
        path: &str,
        query: &[(String, String)],
        now: OffsetDateTime,
    ) -> Result<(String, u32), Resp> {
        let get = |k: &str| query_get(query, k);
        let (Some(upload_id), Some(part), Some(date), Some(expires), Some(sig)) = (
            get("uploadId"),
            get("partNumber"),
            get("X-Amz-Date"),
            get("X-Amz-Expires"),
            get("X-Amz-Signature"),
        ) else {
            return Err(Resp::s3_error(403, "AccessDenied", "Access Denied"));
        };
        if self.signature(path, upload_id, part, date, expires) != sig {
            return Err(Resp::s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            ));
        }
        let (Some(signed_at), Ok(expires)) = (parse_amz_date(date), expires.parse::<i64>()) else {
            return Err(Resp::s3_error(403, "AccessDenied", "Access Denied"));
        };
        if now > signed_at + time::Duration::seconds(expires) {
            return Err(Resp::s3_error(403, "AccessDenied", "Request has expired"));
        }
        let part = part
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=10_000).contains(p))
            .ok_or_else(|| {
                Resp::s3_error(
                    400,
                    "InvalidArgument",
                    "Part number must be an integer between 1 and 10000, inclusive",
                )
            })?;
        Ok((upload_id.to_string(), part))
    }
}

fn no_such_upload() -> Resp {
    Resp::s3_error(
        404,
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
    )
}

/// Where the part may be written, if the upload is open with this id and key.
fn open_upload(w: &World, user: &str, upload: &str, upload_id: &str) -> Result<PathBuf, Resp> {
    let pk = Uuid::parse_str(upload).map_err(|_| no_such_upload())?;
    let u = w.uploads.get(&pk).ok_or_else(no_such_upload)?;
    if u.owner.to_string() != user
        || u.s3_upload_id != upload_id
        || u.status != UploadStatus::Initialized
    {
        return Err(no_such_upload());
    }
    Ok(u.dir(&w.data_dir))
}

/// `PUT` one part: verify, stream to disk with MD5, then record it (last PUT of a number wins).
pub async fn put_part(
    world: &std::sync::Mutex<World>,
    signer: &Signer,
    user: &str,
    upload: &str,
    query: &[(String, String)],
    has_authorization: bool,
    body: Body,
) -> Resp {
    if has_authorization {
        return Resp::s3_error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        );
    }
    let path = format!("/s3/{BUCKET}/uploads/{user}/{upload}");
    let (upload_id, number) = match signer.verify(&path, query, OffsetDateTime::now_utc()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let dir = match world.lock() {
        Ok(w) => match open_upload(&w, user, upload, &upload_id) {
            Ok(d) => d,
            Err(r) => return r,
        },
        Err(_) => return internal_error(),
    };
    let tmp = dir.join(format!("part-{number}.{}.tmp", Uuid::new_v4().simple()));
    let (size, md5) = match stream_to_file(body, &tmp).await {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            tracing::debug!(error = %e, "part upload interrupted");
            return Resp::s3_error(
                400,
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header",
            );
        }
    };
    let received = Received {
        number,
        etag: format!("\"{md5}\""),
        size,
        path: dir.join(format!("part-{number}")),
        tmp,
    };
    if let Err(r) = record_part(world, user, upload, &upload_id, &received) {
        return r;
    }
    Resp {
        status: http::StatusCode::OK,
        headers: vec![(http::header::ETAG, received.etag)],
        body: super::http::RespBody::Empty,
    }
}

fn internal_error() -> Resp {
    Resp::s3_error(
        500,
        "InternalError",
        "We encountered an internal error. Please try again.",
    )
}

/// A part's bytes, streamed into a scratch file next to where the part goes.
struct Received {
    number: u32,
    /// Quoted, as S3 answers it.
    etag: String,
    size: u64,
    /// The part's place once recorded.
    path: PathBuf,
    tmp: PathBuf,
}

/// Move a received part into place and record it, provided the upload is still open (it may have been
/// completed or aborted while the bytes came in); the scratch file is removed otherwise.
fn record_part(
    world: &std::sync::Mutex<World>,
    user: &str,
    upload: &str,
    upload_id: &str,
    received: &Received,
) -> Result<(), Resp> {
    let mut w = world.lock().map_err(|_| internal_error())?;
    if let Err(r) = open_upload(&w, user, upload, upload_id) {
        let _ = std::fs::remove_file(&received.tmp);
        return Err(r);
    }
    if let Err(e) = std::fs::rename(&received.tmp, &received.path) {
        let _ = std::fs::remove_file(&received.tmp);
        tracing::warn!(error = %e, "cannot store a part");
        return Err(internal_error());
    }
    if let Some(u) = Uuid::parse_str(upload)
        .ok()
        .and_then(|pk| w.uploads.get_mut(&pk))
    {
        u.parts.insert(
            received.number,
            Part {
                number: received.number,
                etag: received.etag.clone(),
                size: received.size,
                path: received.path.clone(),
                last_modified: OffsetDateTime::now_utc(),
            },
        );
    }
    Ok(())
}

async fn stream_to_file(body: Body, path: &std::path::Path) -> std::io::Result<(u64, String)> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let file = tokio::fs::File::create(path).await?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Md5::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    out.into_inner().sync_data().await?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_and_expiry() {
        let signer = Signer::new(Duration::from_secs(3600));
        let sig = |date: &str| signer.signature("/s3/b/uploads/1/u", "id", "3", date, "3600");
        let now = OffsetDateTime::now_utc();
        let date = amz_date(now);
        let q = |date: &str, sig: &str| -> Vec<(String, String)> {
            [
                ("uploadId", "id"),
                ("partNumber", "3"),
                ("X-Amz-Date", date),
                ("X-Amz-Expires", "3600"),
                ("X-Amz-Signature", sig),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
        };
        assert_eq!(
            signer
                .verify("/s3/b/uploads/1/u", &q(&date, &sig(&date)), now)
                .ok(),
            Some(("id".into(), 3))
        );
        assert_eq!(
            signer
                .verify("/s3/b/uploads/1/other", &q(&date, &sig(&date)), now)
                .err()
                .unwrap()
                .status,
            403
        );
        assert_eq!(
            signer
                .verify("/s3/b/uploads/1/u", &q(&date, "00"), now)
                .err()
                .unwrap()
                .status,
            403
        );
        let later = now + time::Duration::seconds(3601);
        assert_eq!(
            signer
                .verify("/s3/b/uploads/1/u", &q(&date, &sig(&date)), later)
                .err()
                .unwrap()
                .status,
            403
        );
    }
}
