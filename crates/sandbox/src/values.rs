//! Validation of one `values` entry (gc-protocol.md §4.5), with the platform's literal error texts and
//! its order of checks: field errors first, then the "exactly one source" rule, then what the socket's
//! super kind requires, then model validation (`__all__`). Pure over a read-only view of the world, so a
//! request can validate every entry before anything is changed.

use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::http::{py_str, py_type};
use super::routes::{self, Route};
use super::store::{SessionStatus, Socket, UserId, World};
use gc_content::imaging::ImportedImage;
use gc_content::kinds::{Family, SuperKind};
use gc_content::schema;

/// Where a validated entry's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Value(Json),
    Image(Uuid),
    UserUpload(Uuid),
    UserUploads(Vec<Uuid>),
    DicomImageSet {
        uploads: Vec<Uuid>,
        image_name: String,
    },
    Session(Uuid),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub socket: i64,
    pub source: Source,
}

pub const DOES_NOT_EXIST: &str = "Invalid hyperlink - Object does not exist.";
const SOURCES: &str =
    "['image', 'value', 'file', 'user_upload', 'upload_session', ('image_name', 'user_uploads')]";

/// Resolve a hyperlink as DRF's HyperlinkedRelatedField does; `want` extracts the pk from the expected
/// route. `Ok(None)` is a null (or empty-string) link.
pub fn hyperlink(
    v: &Json,
    want: impl Fn(&Route) -> Option<String>,
) -> Result<Option<String>, String> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) if s.is_empty() => Ok(None),
        Json::String(s) => hyperlink_str(s, want).map(Some),
        other => Err(format!(
            "Incorrect type. Expected URL string, received {}.",
            py_type(other)
        )),
    }
}

/// One link of a list field: the empty string is not turned into null here.
pub fn hyperlink_str(s: &str, want: impl Fn(&Route) -> Option<String>) -> Result<String, String> {
    let path = if s.starts_with("http:") || s.starts_with("https:") {
        match url::Url::parse(s) {
            Ok(u) => u.path().to_string(),
            Err(_) => return Err("Invalid hyperlink - No URL match.".into()),
        }
    } else {
        s.to_string()
    };
    let path = percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .into_owned();
    let Some(route) = routes::resolve(&path) else {
        return Err("Invalid hyperlink - No URL match.".into());
    };
    want(&route).ok_or_else(|| "Invalid hyperlink - Incorrect URL match.".into())
}

pub fn upload_route(r: &Route) -> Option<String> {
    match r {
        Route::Upload(pk) => Some(pk.clone()),
        _ => None,
    }
}

fn image_route(r: &Route) -> Option<String> {
    match r {
        Route::Image(pk) => Some(pk.clone()),
        _ => None,
    }
}

fn session_route(r: &Route) -> Option<String> {
    match r {
        Route::Session(pk) => Some(pk.clone()),
        _ => None,
    }
}

/// The caller's own upload behind a link, any status.
pub fn own_upload(w: &World, user: UserId, pk: &str) -> Result<Uuid, String> {
    Uuid::parse_str(pk)
        .ok()
        .filter(|pk| w.uploads.get(pk).is_some_and(|u| u.owner == user))
        .ok_or_else(|| DOES_NOT_EXIST.to_string())
}

/// A list of upload links (`user_uploads`, a session's `uploads`); DRF reports the first bad one.
pub fn upload_list(
    w: &World,
    v: &Json,
    check: impl Fn(&World, &str) -> Result<Uuid, String>,
) -> Result<Option<Vec<Uuid>>, String> {
    match v {
        Json::Null => Ok(None),
        Json::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let pk = match item {
                    Json::String(s) => hyperlink_str(s, upload_route)?,
                    other => {
                        return Err(format!(
                            "Incorrect type. Expected URL string, received {}.",
                            py_type(other)
                        ));
                    }
                };
                out.push(check(w, &pk)?);
            }
            Ok(Some(out))
        }
        other => Err(format!(
            "Expected a list of items but got type \"{}\".",
            py_type(other)
        )),
    }
}

/// DRF CharField: numbers are stringified, booleans and containers refused, whitespace trimmed.
pub fn char_field(v: &Json, max: usize, allow_blank: bool) -> Result<Option<String>, String> {
    let s = match v {
        Json::Null => return Ok(None),
        Json::String(s) => s.trim().to_string(),
        Json::Number(n) => n.to_string(),
        _ => return Err("Not a valid string.".into()),
    };
    if s.is_empty() && !allow_blank {
        return Err("This field may not be blank.".into());
    }
    if s.chars().count() > max {
        return Err(format!(
            "Ensure this field has no more than {max} characters."
        ));
    }
    Ok(Some(s))
}

/// Python's repr of a set of integers.
fn py_set(values: &[i64]) -> String {
    if values.is_empty() {
        return "set()".into();
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    format!(
        "{{{}}}",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Segmentation voxel values must be among the socket's overlay values (plus background 0).
pub fn segmentation_error(socket: &Socket, image: &ImportedImage) -> Option<String> {
    if socket.kind.code != "SEG" {
        return None;
    }
    let found = image.voxel_values.as_ref()?;
    let mut valid: Vec<i64> = socket
        .overlay_segments
        .iter()
        .map(|s| s.voxel_value)
        .collect();
    valid.push(0);
    let invalid: Vec<i64> = found
        .iter()
        .copied()
        .filter(|v| !valid.contains(v))
        .collect();
    if invalid.is_empty() {
        return None;
    }
    Some(format!(
        "The valid voxel values for this segmentation are: {}. This segmentation is invalid as it contains the voxel values: {}.",
        py_set(&valid),
        py_set(&invalid)
    ))
}

/// Validate one entry for `user`. `Err` is the error object for this entry's slot.
pub fn validate_entry(w: &World, user: UserId, entry: &Json) -> Result<Entry, Json> {
    let Some(obj) = entry.as_object() else {
        return Err(
            json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {}.", py_type(entry))]}),
        );
    };
    let fields = EntryFields::read(w, user, obj).map_err(Json::Object)?;
    let Some(socket) = fields.socket else {
        return Err(json!({}));
    };
    fields.check_one_source()?;
    let source = fields.into_source(socket)?;
    check_image_source(w, socket, &source)?;
    Ok(Entry {
        socket: socket.pk,
        source,
    })
}

/// The fields of one entry, each read on its own: DRF reports every field's error at once.
struct EntryFields<'w> {
    socket: Option<&'w Socket>,
    value: Option<Json>,
    file: bool,
    image: Option<Uuid>,
    session: Option<Uuid>,
    user_upload: Option<Uuid>,
    user_uploads: Option<Vec<Uuid>>,
    image_name: Option<String>,
}

/// `Ok`'s value, or `None` with the error recorded under `field`.
fn keep<T>(errors: &mut Map<String, Json>, field: &str, read: Result<T, String>) -> Option<T> {
    match read {
        Ok(v) => Some(v),
        Err(msg) => {
            errors.insert(field.to_string(), json!([msg]));
            None
        }
    }
}

impl<'w> EntryFields<'w> {
    /// Read every field; `Err` holds a message list per bad field.
    fn read(
        w: &'w World,
        user: UserId,
        obj: &Map<String, Json>,
    ) -> Result<EntryFields<'w>, Map<String, Json>> {
        let get = |k: &str| obj.get(k).unwrap_or(&Json::Null);
        let mut errors = Map::new();
        let socket = keep(
            &mut errors,
            "interface",
            interface_field(w, obj.get("interface")),
        );
        let value = match get("value") {
            Json::Null => None,
            v => Some(v.clone()),
        };
        let file = keep(&mut errors, "file", file_field(get("file"))).unwrap_or(true);
        let image = keep(&mut errors, "image", image_field(w, user, get("image"))).flatten();
        let session = keep(
            &mut errors,
            "upload_session",
            session_field(w, user, get("upload_session")),
        )
        .flatten();
        let user_upload = keep(
            &mut errors,
            "user_upload",
            user_upload_field(w, user, get("user_upload")),
        )
        .flatten();
        let user_uploads = keep(
            &mut errors,
            "user_uploads",
            upload_list(w, get("user_uploads"), |w, pk| own_upload(w, user, pk)),
        )
        .flatten()
        .filter(|l| !l.is_empty());
        let image_name = keep(
            &mut errors,
            "image_name",
            char_field(get("image_name"), 255, false),
        )
        .flatten();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(EntryFields {
            socket,
            value,
            file,
            image,
            session,
            user_upload,
            user_uploads,
            image_name,
        })
    }

    /// Exactly one of the sources may be given.
    fn check_one_source(&self) -> Result<(), Json> {
        let provided = [
            self.image.is_some(),
            self.value.is_some(),
            self.file,
            self.user_upload.is_some(),
            self.session.is_some(),
            self.user_uploads.is_some() || self.image_name.is_some(),
        ]
        .iter()
        .filter(|p| **p)
        .count();
        if provided == 0 {
            return non_field(format!("You must provide at least one of {SOURCES}."));
        }
        if provided > 1 {
            return non_field(format!(
                "You can only provide one of {SOURCES} for each socket."
            ));
        }
        Ok(())
    }

    /// The source the socket's super kind requires, a JSON value checked against its kind's schema.
    fn into_source(self, socket: &Socket) -> Result<Source, Json> {
        let code = socket.kind.code;
        Ok(match (socket.super_kind, socket.kind.family) {
            (SuperKind::Value, _) => match self.value {
                Some(v) => {
                    if let Err(msg) = schema::validate_value(socket.kind.label, &v) {
                        return Err(json!({"__all__": [msg]}));
                    }
                    Source::Value(v)
                }
                None => return non_field(format!("value is required for interface kind {code}")),
            },
            (SuperKind::File, _) => match self.user_upload {
                Some(u) => Source::UserUpload(u),
                None => {
                    return non_field(format!(
                        "user_upload or file is required for interface kind {code}"
                    ));
                }
            },
            (SuperKind::Image, Family::DicomImageSet) => {
                match (self.image, self.user_uploads, self.image_name) {
                    (Some(i), _, _) => Source::Image(i),
                    (None, Some(uploads), Some(image_name)) => Source::DicomImageSet {
                        uploads,
                        image_name,
                    },
                    _ => {
                        return non_field(format!(
                            "either user_uploads with image_name, or image are required for interface kind {code}"
                        ));
                    }
                }
            }
            (SuperKind::Image, _) => match (self.image, self.user_uploads, self.session) {
                (Some(i), _, _) => Source::Image(i),
                (None, Some(uploads), _) => Source::UserUploads(uploads),
                (None, None, Some(s)) => Source::Session(s),
                _ => {
                    return non_field(format!(
                        "upload_session, user_uploads or image are required for interface kind {code}"
                    ));
                }
            },
        })
    }
}

/// An error of the entry as a whole (`non_field_errors`).
fn non_field<T>(msg: String) -> Result<T, Json> {
    Err(json!({"non_field_errors": [msg]}))
}

/// The socket named by `interface`: a slug (numbers and booleans are stringified, as DRF does).
fn interface_field<'w>(w: &'w World, v: Option<&Json>) -> Result<&'w Socket, String> {
    match v {
        None => Err("This field is required.".into()),
        Some(Json::Null) => Err("This field may not be null.".into()),
        Some(v @ (Json::String(_) | Json::Number(_) | Json::Bool(_))) => {
            let slug = py_str(v);
            w.socket_by_slug(&slug)
                .ok_or_else(|| format!("Object with slug={slug} does not exist."))
        }
        Some(_) => Err("Invalid value.".into()),
    }
}

/// Files cannot come in a JSON body: anything but nothing is refused.
fn file_field(v: &Json) -> Result<bool, String> {
    match v {
        Json::Null => Ok(false),
        Json::String(s) if s.is_empty() => Ok(false),
        _ => Err("The submitted data was not a file. Check the encoding type on the form.".into()),
    }
}

/// An image the user may view.
fn image_field(w: &World, user: UserId, v: &Json) -> Result<Option<Uuid>, String> {
    let Some(pk) = hyperlink(v, image_route)? else {
        return Ok(None);
    };
    Uuid::parse_str(&pk)
        .ok()
        .filter(|pk| {
            w.images
                .get(pk)
                .is_some_and(|i| w.can_view_image(Some(user), i))
        })
        .map(Some)
        .ok_or_else(|| DOES_NOT_EXIST.into())
}

/// The user's own upload session, still queued.
fn session_field(w: &World, user: UserId, v: &Json) -> Result<Option<Uuid>, String> {
    let Some(pk) = hyperlink(v, session_route)? else {
        return Ok(None);
    };
    Uuid::parse_str(&pk)
        .ok()
        .filter(|pk| {
            w.sessions
                .get(pk)
                .is_some_and(|s| s.creator == user && s.status == SessionStatus::Queued)
        })
        .map(Some)
        .ok_or_else(|| DOES_NOT_EXIST.into())
}

/// The user's own upload, whatever its status.
fn user_upload_field(w: &World, user: UserId, v: &Json) -> Result<Option<Uuid>, String> {
    match hyperlink(v, upload_route)? {
        None => Ok(None),
        Some(pk) => own_upload(w, user, &pk).map(Some),
    }
}

/// An existing image given for a socket: DICOM only for a DICOM image set socket, and a
/// segmentation's voxel values among the socket's.
fn check_image_source(w: &World, socket: &Socket, source: &Source) -> Result<(), Json> {
    if let Source::Image(pk) = source
        && let Some(img) = w.images.get(pk)
    {
        let is_dicom = img.dicom_image_set_id.is_some();
        if socket.is_dicom_set() && !is_dicom {
            return Err(json!({"__all__": ["Image must be DICOM"]}));
        }
        if !socket.is_dicom_set() && is_dicom {
            return Err(json!({"__all__": ["Image may not be DICOM"]}));
        }
        if let Some(msg) = segmentation_error(socket, &img.meta) {
            return Err(json!({"__all__": [msg]}));
        }
    }
    Ok(())
}

/// Validate a whole `values` list: `Err` is the field's error value (a message list or one object per
/// entry, `{}` for the valid ones).
pub fn validate_values(w: &World, user: UserId, v: &Json) -> Result<Vec<Entry>, Json> {
    let items = match v {
        Json::Array(items) => items,
        Json::Null => return Err(json!(["This field may not be null."])),
        other => {
            return Err(json!([format!(
                "Expected a list of items but got type \"{}\".",
                py_type(other)
            )]));
        }
    };
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut failed = false;
    for item in items {
        match validate_entry(w, user, item) {
            Ok(e) => {
                entries.push(e);
                errors.push(json!({}));
            }
            Err(e) => {
                failed = true;
                errors.push(e);
            }
        }
    }
    if failed {
        Err(Json::Array(errors))
    } else {
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperlinks_resolve_by_path() {
        let up = |s: &str| hyperlink(&Json::from(s), upload_route);
        assert_eq!(
            up("https://elsewhere/api/v1/uploads/abc/"),
            Ok(Some("abc".into()))
        );
        assert_eq!(up("/api/v1/uploads/abc/"), Ok(Some("abc".into())));
        assert_eq!(up(""), Ok(None));
        assert_eq!(
            up("https://h/api/v1/cases/images/abc/"),
            Err("Invalid hyperlink - Incorrect URL match.".into())
        );
        assert_eq!(
            up("https://h/nothing/"),
            Err("Invalid hyperlink - No URL match.".into())
        );
        assert_eq!(
            hyperlink(&json!(5), upload_route),
            Err("Incorrect type. Expected URL string, received int.".into())
        );
        assert_eq!(
            hyperlink_str("", upload_route),
            Err("Invalid hyperlink - No URL match.".into())
        );
    }

    #[test]
    fn char_fields() {
        assert_eq!(char_field(&json!("  x "), 5, true), Ok(Some("x".into())));
        assert_eq!(char_field(&json!(12), 5, true), Ok(Some("12".into())));
        assert_eq!(
            char_field(&json!(true), 5, true),
            Err("Not a valid string.".into())
        );
        assert_eq!(
            char_field(&json!(" "), 5, false),
            Err("This field may not be blank.".into())
        );
        assert!(char_field(&json!("toolong"), 5, true).is_err());
    }

    #[test]
    fn python_sets() {
        assert_eq!(py_set(&[1, 0, 1]), "{0, 1}");
        assert_eq!(py_set(&[]), "set()");
    }
}
