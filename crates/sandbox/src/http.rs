//! The platform's HTTP conventions in one place: JSON with the exact `Content-Type`, DRF's error shapes,
//! the site's HTML error pages, S3's XML errors, content negotiation, request body parsing and
//! limit/offset pagination with absolute links (gc-protocol.md §1.4–1.7).

use std::path::PathBuf;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value as Json, json};

/// A response before it is turned into bytes (faults may still replace or cut it).
pub struct Resp {
    pub status: StatusCode,
    pub headers: Vec<(header::HeaderName, String)>,
    pub body: RespBody,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resp")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

pub enum RespBody {
    Empty,
    Json(Json),
    Html(String),
    Xml(String),
    /// Streamed from disk.
    File {
        path: PathBuf,
        size: u64,
    },
}

pub const NOT_AUTHENTICATED: &str = "Authentication credentials were not provided.";
pub const NO_PERMISSION: &str = "You do not have permission to perform this action.";

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Resp {
    pub fn json(code: u16, body: Json) -> Resp {
        Resp {
            status: status(code),
            headers: vec![(header::VARY, "Accept".into())],
            body: RespBody::Json(body),
        }
    }

    pub fn detail(code: u16, msg: &str) -> Resp {
        Resp::json(code, json!({ "detail": msg }))
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(msg: &str) -> Resp {
        Resp::detail(401, msg).with_header(header::WWW_AUTHENTICATE, "Bearer")
    }

    pub fn not_authenticated() -> Resp {
        Resp::unauthorized(NOT_AUTHENTICATED)
    }

    pub fn forbidden() -> Resp {
        Resp::detail(403, NO_PERMISSION)
    }

    /// 404 for an object that does not exist or is not visible to the caller.
    pub fn no_match(model: &str) -> Resp {
        Resp::detail(404, &format!("No {model} matches the given query."))
    }

    pub fn not_found() -> Resp {
        Resp::detail(404, "Not found.")
    }

    /// A field error: `{"<field>": ["msg"]}`.
    pub fn field_error(field: &str, msg: &str) -> Resp {
        Resp::json(400, json!({ field: [msg] }))
    }

    /// An error raised while saving: a bare JSON array.
    pub fn bare_error(msg: &str) -> Resp {
        Resp::json(400, json!([msg]))
    }

    pub fn method_not_allowed(method: &str, allowed: &[&str]) -> Resp {
        Resp::detail(405, &format!("Method \"{method}\" not allowed."))
            .with_header(header::ALLOW, &allowed.join(", "))
    }

    /// The site's HTML error pages (unknown routes, unhandled exceptions).
    pub fn html(code: u16) -> Resp {
        let title = match code {
            403 => "Permission denied",
            404 => "Page not found",
            500 => "Server error",
            _ => status(code).canonical_reason().unwrap_or("Error"),
        };
        let body = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{title} - Grand Challenge</title></head>\n<body><h1>{title}</h1><p>Error {code}.</p></body>\n</html>\n"
        );
        Resp {
            status: status(code),
            headers: Vec::new(),
            body: RespBody::Html(body),
        }
    }

    /// What a load balancer or proxy answers: an HTML page, never JSON.
    pub fn proxy(code: u16, retry_after: Option<u64>) -> Resp {
        let reason = status(code).canonical_reason().unwrap_or("Error");
        let body = format!(
            "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
        );
        let mut r = Resp {
            status: status(code),
            headers: Vec::new(),
            body: RespBody::Html(body),
        };
        if let Some(s) = retry_after {
            r = r.with_header(header::RETRY_AFTER, &s.to_string());
        }
        r
    }

    /// An S3 error document.
    pub fn s3_error(code: u16, s3_code: &str, message: &str) -> Resp {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code><Message>{message}</Message><RequestId>{}</RequestId></Error>",
            uuid::Uuid::new_v4().simple()
        );
        Resp {
            status: status(code),
            headers: Vec::new(),
            body: RespBody::Xml(body),
        }
    }

    pub fn redirect(location: &str) -> Resp {
        Resp {
            status: StatusCode::MOVED_PERMANENTLY,
            headers: vec![(header::LOCATION, location.into())],
            body: RespBody::Html(String::new()),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> Resp {
        self.headers.push((name, value.into()));
        self
    }

    /// Into an axum response; files are streamed from disk.
    pub async fn into_response(self) -> Response {
        let (content_type, body): (Option<&str>, Body) = match self.body {
            RespBody::Empty => (None, Body::empty()),
            RespBody::Json(v) => (
                Some("application/json"),
                Body::from(serde_json::to_vec(&v).unwrap_or_default()),
            ),
            RespBody::Html(s) => (Some("text/html; charset=utf-8"), Body::from(s)),
            RespBody::Xml(s) => (Some("application/xml"), Body::from(s)),
            RespBody::File { path, size } => match tokio::fs::File::open(&path).await {
                Ok(f) => {
                    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                    let mut r = Response::new(Body::from_stream(stream));
                    *r.status_mut() = self.status;
                    set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
                    set(&mut r, header::CONTENT_LENGTH, &size.to_string());
                    for (k, v) in self.headers {
                        set(&mut r, k, &v);
                    }
                    return r;
                }
                Err(_) => return Box::pin(Resp::html(404).into_response()).await,
            },
        };
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        if let Some(ct) = content_type {
            set(&mut r, header::CONTENT_TYPE, ct);
        }
        for (k, v) in self.headers {
            set(&mut r, k, &v);
        }
        r
    }
}

fn set(r: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Python's name of a JSON value's type, for DRF's "Incorrect type" messages.
pub fn py_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "NoneType",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_f64() => "float",
        Json::Number(_) => "int",
        Json::String(_) => "str",
        Json::Array(_) => "list",
        Json::Object(_) => "dict",
    }
}

/// Python's `str()` of a JSON value, for "Object with slug=<value> does not exist.".
pub fn py_str(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::Null => "None".into(),
        other => other.to_string(),
    }
}

/// Whether the `Accept` header (and `?format=`) can be satisfied by the JSON renderer.
pub fn accepts_json(accept: Option<&str>, format: Option<&str>) -> Result<(), Resp> {
    if let Some(f) = format {
        return if f == "json" {
            Ok(())
        } else {
            Err(Resp::not_found())
        };
    }
    let Some(accept) = accept else { return Ok(()) };
    if accept.trim().is_empty() {
        return Ok(());
    }
    let ok = accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f64>().is_ok_and(|q| q <= 0.0))
        });
        !refused && matches!(media.as_str(), "*/*" | "application/*" | "application/json")
    });
    if ok {
        Ok(())
    } else {
        Err(Resp::detail(
            406,
            "Could not satisfy the request Accept header.",
        ))
    }
}

/// Parse a request body as DRF would: JSON or a form; an empty body is empty data.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<Json, Resp> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    let ct = content_type.unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => serde_json::from_slice(body)
            .map_err(|e| Resp::detail(400, &format!("JSON parse error - {e}"))),
        "application/x-www-form-urlencoded" => {
            let mut map = serde_json::Map::new();
            for (k, v) in url::form_urlencoded::parse(body) {
                match map.get_mut(k.as_ref()) {
                    Some(Json::Array(list)) => list.push(v.into_owned().into()),
                    Some(existing) => {
                        let first = existing.take();
                        *existing = Json::Array(vec![first, v.into_owned().into()]);
                    }
                    None => {
                        map.insert(k.into_owned(), v.into_owned().into());
                    }
                }
            }
            Ok(Json::Object(map))
        }
        _ => Err(Resp::detail(
            415,
            &format!("Unsupported media type \"{ct}\" in request."),
        )),
    }
}

/// The query string as (key, value) pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The last value of a query parameter (Django's `QueryDict.__getitem__`).
pub fn query_get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// `limit` and `offset` as DRF's LimitOffsetPagination reads them.
pub fn limit_offset(query: &[(String, String)]) -> (usize, usize) {
    let limit = query_get(query, "limit")
        .and_then(|l| l.trim().parse::<i64>().ok())
        .filter(|l| *l > 0)
        .map(|l| (l as usize).min(MAX_LIMIT))
        .unwrap_or(DEFAULT_LIMIT);
    let offset = query_get(query, "offset")
        .and_then(|o| o.trim().parse::<i64>().ok())
        .filter(|o| *o >= 0)
        .unwrap_or(0) as usize;
    (limit, offset)
}

/// One page of `items` with absolute `next`/`previous` links that keep the other query parameters
/// (sorted by key, as Django's `urlencode` of a parsed query does).
pub fn paginate(origin: &str, path: &str, query: &[(String, String)], items: Vec<Json>) -> Json {
    let (limit, offset) = limit_offset(query);
    let count = items.len();
    let results: Vec<Json> = items.into_iter().skip(offset).take(limit).collect();
    let link = |offset: Option<usize>| {
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k != "limit" && k != "offset")
            .cloned()
            .collect();
        pairs.push(("limit".into(), limit.to_string()));
        if let Some(o) = offset {
            pairs.push(("offset".into(), o.to_string()));
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("{origin}{path}?{q}")
    };
    let next = if offset + limit >= count {
        Json::Null
    } else {
        link(Some(offset + limit)).into()
    };
    let previous = if offset == 0 {
        Json::Null
    } else if offset <= limit {
        link(None).into()
    } else {
        link(Some(offset - limit)).into()
    };
    json!({"count": count, "next": next, "previous": previous, "results": results})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        query_pairs(Some(s))
    }

    #[test]
    fn limit_offset_rules() {
        assert_eq!(limit_offset(&q("")), (100, 0));
        assert_eq!(limit_offset(&q("limit=5000&offset=-3")), (1000, 0));
        assert_eq!(limit_offset(&q("limit=0&offset=x")), (100, 0));
        assert_eq!(limit_offset(&q("limit=-1&offset=7")), (100, 7));
        assert_eq!(limit_offset(&q("limit=10&offset=20")), (10, 20));
    }

    #[test]
    fn links() {
        let items: Vec<Json> = (0..25).map(Json::from).collect();
        let p = paginate(
            "https://h",
            "/api/v1/x/",
            &q("zeta=1&archive=a&limit=10&offset=10"),
            items.clone(),
        );
        assert_eq!(p["count"], 25);
        assert_eq!(p["results"].as_array().unwrap().len(), 10);
        assert_eq!(
            p["next"],
            "https://h/api/v1/x/?archive=a&limit=10&offset=20&zeta=1"
        );
        assert_eq!(
            p["previous"],
            "https://h/api/v1/x/?archive=a&limit=10&zeta=1"
        );
        let last = paginate(
            "https://h",
            "/api/v1/x/",
            &q("limit=10&offset=20"),
            items.clone(),
        );
        assert!(last["next"].is_null());
        assert_eq!(last["previous"], "https://h/api/v1/x/?limit=10&offset=10");
        let first = paginate("https://h", "/api/v1/x/", &q(""), items);
        assert!(first["next"].is_null() && first["previous"].is_null());
    }

    #[test]
    fn negotiation() {
        assert!(accepts_json(None, None).is_ok());
        assert!(accepts_json(Some("application/json"), None).is_ok());
        assert!(accepts_json(Some("text/html, */*;q=0.8"), None).is_ok());
        assert!(accepts_json(Some("text/html"), None).is_err());
        assert!(accepts_json(Some("application/json;q=0"), None).is_err());
        assert!(accepts_json(Some("text/html"), Some("json")).is_ok());
    }

    #[test]
    fn bodies() {
        assert_eq!(parse_body(None, b"").unwrap(), json!({}));
        assert_eq!(
            parse_body(Some("application/json; charset=utf-8"), b"{\"a\":1}").unwrap(),
            json!({"a":1})
        );
        assert_eq!(
            parse_body(Some("application/x-www-form-urlencoded"), b"a=1&b=2&b=3").unwrap(),
            json!({"a":"1","b":["2","3"]})
        );
        assert_eq!(
            parse_body(Some("application/json"), b"{")
                .err()
                .unwrap()
                .status,
            400
        );
        assert_eq!(
            parse_body(Some("text/plain"), b"x").err().unwrap().status,
            415
        );
        assert_eq!(parse_body(None, b"x").err().unwrap().status, 415);
    }
}
