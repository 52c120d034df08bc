//! One API request as every endpoint module sees it (after authentication), and what a handler
//! answers: a response plus the background jobs it started.

use serde_json::{Map, Value as Json, json};

use crate::app::Limits;
use crate::http::{Resp, paginate, parse_body, py_type, query_get};
use crate::s3::Signer;
use crate::store::{Urls, UserId};
use crate::worker::Job;

/// One API request, after authentication.
pub struct Ctx<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
    pub user: Option<UserId>,
    pub urls: &'a Urls,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
    pub limits: &'a Limits,
    pub signer: &'a Signer,
    /// From a "too many uploads" fault: refuse new uploads from this many owned uploads on.
    pub too_many_uploads: Option<usize>,
}

impl Ctx<'_> {
    pub fn data(&self) -> Result<Json, Resp> {
        parse_body(self.content_type.as_deref(), &self.body)
    }

    /// The body as an object, or DRF's "Invalid data" error.
    pub fn object(&self) -> Result<Map<String, Json>, Resp> {
        match self.data()? {
            Json::Object(m) => Ok(m),
            other => Err(Resp::json(
                400,
                json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {}.", py_type(&other))]}),
            )),
        }
    }

    pub fn require_user(&self) -> Result<UserId, Resp> {
        self.user.ok_or_else(Resp::not_authenticated)
    }

    pub fn page(&self, items: Vec<Json>) -> Resp {
        Resp::json(
            200,
            paginate(&self.urls.origin, self.path, &self.query, items),
        )
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        query_get(&self.query, key).filter(|v| !v.is_empty())
    }
}

pub type Handled = Result<(Resp, Vec<Job>), Resp>;

pub fn done(r: Resp) -> Handled {
    Ok((r, Vec::new()))
}
