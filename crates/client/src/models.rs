//! The JSON shapes of gc-protocol.md that the client reads and writes.
//!
//! Reads are lenient (unknown keys ignored, as gcapi does); writes are exact, because the server's
//! validation depends on which keys are present.

use serde::{Deserialize, Serialize, Serializer};

/// A socket's super kind decides how its value travels (gc-protocol.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SuperKind {
    Image,
    File,
    Value,
}

/// A component interface ("socket"), as `GET components/interfaces/?slug=` returns it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Socket {
    pub pk: i64,
    pub slug: String,
    pub title: String,
    /// The human-readable kind label, e.g. `"Image"`, `"DICOM Image Set"`, `"Integer"`.
    pub kind: String,
    pub super_kind: SuperKind,
    pub relative_path: String,
}

impl Socket {
    /// DICOM image sets take `user_uploads` plus an `image_name` (gc-protocol.md §4.5).
    pub fn is_dicom_image_set(&self) -> bool {
        self.kind.eq_ignore_ascii_case("DICOM Image Set")
    }
}

/// Where a folder's cases go: into an archive or a reader study (containers), or to an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Archive,
    ReaderStudy,
    /// Not a container: each case becomes a job of the algorithm, whose outputs land in an outbox.
    Algorithm,
}

/// A resolved container: looked up by slug once, then addressed by pk and URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    pub slug: String,
    pub pk: String,
    pub api_url: String,
    /// The human-facing page of the archive / reader study.
    pub url: String,
}

impl Target {
    /// The web page of one of this archive's items or this reader study's display sets. The API gives no
    /// such URL (gc-protocol.md §4.2): it is derived from the target's page as the platform routes it,
    /// `<archive page>items/<pk>/` and `<reader study page>display-sets/<pk>/`. `None` for an algorithm,
    /// or a target whose page is not known.
    pub fn item_page(&self, pk: &str) -> Option<String> {
        let below = match self.kind {
            TargetKind::Archive => "items",
            TargetKind::ReaderStudy => "display-sets",
            TargetKind::Algorithm => return None,
        };
        let page = url::Url::parse(&self.url).ok()?;
        let base = if page.path().ends_with('/') {
            page
        } else {
            url::Url::parse(&format!("{page}/")).ok()?
        };
        base.join(&format!("{below}/{pk}/")).ok().map(String::from)
    }

    /// The platform's page of the user's notifications, where it reports failures that its API does not
    /// show (gc-protocol.md §4.6): on the origin of the target's page.
    pub fn notifications_page(&self) -> Option<String> {
        let page = url::Url::parse(&self.url).ok()?;
        page.join("/notifications/").ok().map(String::from)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Archive {
    pub pk: String,
    pub title: String,
    pub api_url: String,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReaderStudy {
    pub pk: String,
    pub slug: String,
    pub api_url: String,
    pub url: String,
}

/// An archive item or a display set, in either the read or the write representation.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Item {
    pub pk: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub values: Vec<ItemValue>,
    /// Display sets only.
    #[serde(default)]
    pub order: Option<i64>,
}

impl Item {
    pub fn value_for(&self, socket_slug: &str) -> Option<&ItemValue> {
        self.values
            .iter()
            .find(|v| v.interface.slug() == socket_slug)
    }
}

/// One socket value of an item. `interface` is a slug in write responses and a full socket in reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ItemValue {
    pub pk: i64,
    pub interface: InterfaceRef,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum InterfaceRef {
    Slug(String),
    Full(Box<Socket>),
}

impl InterfaceRef {
    pub fn slug(&self) -> &str {
        match self {
            InterfaceRef::Slug(s) => s,
            InterfaceRef::Full(s) => &s.slug,
        }
    }
}

/// A user upload (gc-protocol.md §2.1).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UserUpload {
    pub pk: String,
    pub filename: String,
    pub s3_upload_id: String,
    pub status: String,
    pub api_url: String,
}

/// A raw image upload session (gc-protocol.md §6.1), the side channel for image import failures.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UploadSession {
    pub pk: String,
    pub status: String,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub image_set: Vec<String>,
    #[serde(default)]
    pub uploads: Vec<String>,
    pub api_url: String,
}

/// Where a socket's new value comes from, already uploaded where needed.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSource {
    /// Inline JSON for a Value socket.
    Value(serde_json::Value),
    /// One upload's API URL for a File socket.
    UserUpload(String),
    /// Upload API URLs of one image (one or many files) for a panimg Image socket.
    UserUploads(Vec<String>),
    /// Upload API URLs plus the image name for a DICOM image set socket.
    DicomImageSet {
        uploads: Vec<String>,
        image_name: String,
    },
    /// An existing image's API URL.
    Image(String),
}

/// One entry of a `values` PATCH. Serialised with all eight keys, `null` for the unused ones, as gcapi does.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueEntry {
    pub socket: String,
    pub source: ValueSource,
}

impl Serialize for ValueEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let none = serde_json::Value::Null;
        let (mut value, mut image, mut user_upload, mut user_uploads, mut image_name) = (
            none.clone(),
            none.clone(),
            none.clone(),
            none.clone(),
            none.clone(),
        );
        match &self.source {
            ValueSource::Value(v) => value = v.clone(),
            ValueSource::UserUpload(u) => user_upload = u.clone().into(),
            ValueSource::UserUploads(us) => user_uploads = us.clone().into(),
            ValueSource::DicomImageSet {
                uploads,
                image_name: name,
            } => {
                user_uploads = uploads.clone().into();
                image_name = name.clone().into();
            }
            ValueSource::Image(i) => image = i.clone().into(),
        }
        let mut m = serializer.serialize_map(Some(8))?;
        m.serialize_entry("interface", &self.socket)?;
        m.serialize_entry("value", &value)?;
        m.serialize_entry("file", &none)?;
        m.serialize_entry("image", &image)?;
        m.serialize_entry("upload_session", &none)?;
        m.serialize_entry("user_upload", &user_upload)?;
        m.serialize_entry("user_uploads", &user_uploads)?;
        m.serialize_entry("image_name", &image_name)?;
        m.end()
    }
}

/// An image as `GET cases/images/{pk}/` returns it (HyperlinkedImage, gc-protocol.md appendix A). Only what
/// a download needs is read.
#[derive(Debug, Clone, Deserialize)]
pub struct HyperlinkedImage {
    pub pk: String,
    #[serde(default)]
    pub name: String,
    /// Empty for a DICOM image set, whose files are not served this way.
    #[serde(default)]
    pub files: Vec<ImageFile>,
    #[serde(default)]
    pub dicom_image_set: Option<DicomImageSetRef>,
}

/// One stored file of an image (`image_type` MHD, TIFF or DZI).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageFile {
    pub pk: String,
    /// Absolute media URL; its last path segment is the file name.
    pub file: String,
    #[serde(default)]
    pub image_type: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DicomImageSetRef {
    pub image_set_id: String,
}

/// A paginated list (gc-protocol.md §1.7).
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub count: u64,
    pub next: Option<String>,
    pub results: Vec<T>,
}

#[cfg(test)]
mod pages {
    use super::*;

    fn target(kind: TargetKind, url: &str) -> Target {
        Target {
            kind,
            slug: "s".into(),
            pk: "p".into(),
            api_url: String::new(),
            url: url.into(),
        }
    }

    #[test]
    fn item_pages_are_derived_from_the_target_s_page() {
        let archive = target(
            TargetKind::Archive,
            "https://grand-challenge.org/archives/lung-ct/",
        );
        assert_eq!(
            archive.item_page("1d2c").as_deref(),
            Some("https://grand-challenge.org/archives/lung-ct/items/1d2c/")
        );
        assert_eq!(
            archive.notifications_page().as_deref(),
            Some("https://grand-challenge.org/notifications/")
        );
        let study = target(
            TargetKind::ReaderStudy,
            "http://127.0.0.1:8000/reader-studies/corads",
        );
        assert_eq!(
            study.item_page("9f").as_deref(),
            Some("http://127.0.0.1:8000/reader-studies/corads/display-sets/9f/")
        );
        assert_eq!(
            target(TargetKind::Algorithm, "https://x/algorithms/a/").item_page("j"),
            None
        );
        assert_eq!(target(TargetKind::Archive, "").item_page("j"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_entry_serialises_all_eight_keys_like_gcapi() {
        let e = ValueEntry {
            socket: "report".into(),
            source: ValueSource::UserUpload("https://x/api/v1/uploads/1/".into()),
        };
        let v = serde_json::to_value(&e).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "interface",
                "value",
                "file",
                "image",
                "upload_session",
                "user_upload",
                "user_uploads",
                "image_name"
            ]
        );
        assert_eq!(v["user_upload"], "https://x/api/v1/uploads/1/");
        assert!(v["value"].is_null() && v["user_uploads"].is_null());
    }

    #[test]
    fn images_read_files_or_a_dicom_image_set() {
        let mha: HyperlinkedImage = serde_json::from_str(r#"{"pk":"i","name":"ct.mha","files":[{"pk":"f","image":"https://x/api/v1/cases/images/i/","file":"https://x/media/images/i/f/ct.mha","image_type":"MHD"}],"dicom_image_set":null,"width":8}"#).unwrap();
        assert_eq!(mha.files[0].file, "https://x/media/images/i/f/ct.mha");
        assert!(mha.dicom_image_set.is_none());
        let set: HyperlinkedImage = serde_json::from_str(
            r#"{"pk":"i","name":"s","files":[],"dicom_image_set":{"image_set_id":"abc"}}"#,
        )
        .unwrap();
        assert_eq!(set.dicom_image_set.unwrap().image_set_id, "abc");
    }

    #[test]
    fn item_values_accept_slug_or_full_interface() {
        let write: Item = serde_json::from_str(r#"{"pk":"a","title":"t","values":[{"interface":"s","value":1,"file":null,"image":null,"pk":5,"image_name":null}]}"#).unwrap();
        assert_eq!(write.value_for("s").unwrap().pk, 5);
        let read: Item = serde_json::from_str(r#"{"pk":"a","title":"","values":[{"interface":{"title":"S","description":"","slug":"s","kind":"Integer","pk":1,"default_value":null,"super_kind":"Value","relative_path":"s.json","overlay_segments":[],"look_up_table":null},"value":1,"file":null,"image":null,"pk":6}]}"#).unwrap();
        assert_eq!(read.value_for("s").unwrap().pk, 6);
    }
}
