//! Which endpoint a path names. Pure, so the same table serves request dispatch, hyperlink resolution
//! in request bodies ("Invalid hyperlink - Incorrect URL match.") and the route patterns that request
//! counts are keyed by.

use super::store::ContainerKind;

/// Extra actions on an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadAction {
    GeneratePresignedUrls,
    Complete,
    Abort,
    ListParts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ApiRoot,
    Gcapi,
    ProfileSelf,
    Interfaces,
    Interface(String),
    Archives,
    Archive(String),
    ReaderStudies,
    ReaderStudy(String),
    Items(ContainerKind),
    Item(ContainerKind, String),
    Images,
    Image(String),
    Sessions,
    Session(String),
    Algorithms,
    Algorithm(String),
    AlgorithmImages,
    AlgorithmImage(String),
    Jobs,
    Job(String),
    Uploads,
    Upload(String),
    UploadAction {
        pk: String,
        s3_upload_id: String,
        action: UploadAction,
    },
    /// The S3-like part PUT endpoint (not part of the API).
    S3Object {
        user: String,
        upload: String,
    },
    MediaFile {
        civ: String,
        name: String,
    },
    MediaImage {
        image: String,
        file: String,
        name: String,
    },
    SandboxState,
    SandboxFaults,
}

/// The bucket name in S3 paths.
pub const BUCKET: &str = "grand-challenge-uploads";

impl Route {
    /// Served by the REST framework (JSON errors, authentication, content negotiation).
    pub fn is_api(&self) -> bool {
        !matches!(
            self,
            Route::S3Object { .. }
                | Route::MediaFile { .. }
                | Route::MediaImage { .. }
                | Route::SandboxState
                | Route::SandboxFaults
        )
    }

    /// The route pattern, for request counts and fault matching reports.
    pub fn pattern(&self) -> &'static str {
        match self {
            Route::ApiRoot => "/api/v1/",
            Route::Gcapi => "/api/v1/gcapi/",
            Route::ProfileSelf => "/api/v1/profiles/users/self/",
            Route::Interfaces => "/api/v1/components/interfaces/",
            Route::Interface(_) => "/api/v1/components/interfaces/{pk}/",
            Route::Archives => "/api/v1/archives/",
            Route::Archive(_) => "/api/v1/archives/{pk}/",
            Route::ReaderStudies => "/api/v1/reader-studies/",
            Route::ReaderStudy(_) => "/api/v1/reader-studies/{pk}/",
            Route::Items(ContainerKind::Archive) => "/api/v1/archives/items/",
            Route::Item(ContainerKind::Archive, _) => "/api/v1/archives/items/{pk}/",
            Route::Items(ContainerKind::ReaderStudy) => "/api/v1/reader-studies/display-sets/",
            Route::Item(ContainerKind::ReaderStudy, _) => {
                "/api/v1/reader-studies/display-sets/{pk}/"
            }
            Route::Images => "/api/v1/cases/images/",
            Route::Image(_) => "/api/v1/cases/images/{pk}/",
            Route::Sessions => "/api/v1/cases/upload-sessions/",
            Route::Session(_) => "/api/v1/cases/upload-sessions/{pk}/",
            Route::Algorithms => "/api/v1/algorithms/",
            Route::Algorithm(_) => "/api/v1/algorithms/{pk}/",
            Route::AlgorithmImages => "/api/v1/algorithms/images/",
            Route::AlgorithmImage(_) => "/api/v1/algorithms/images/{pk}/",
            Route::Jobs => "/api/v1/algorithms/jobs/",
            Route::Job(_) => "/api/v1/algorithms/jobs/{pk}/",
            Route::Uploads => "/api/v1/uploads/",
            Route::Upload(_) => "/api/v1/uploads/{pk}/",
            Route::UploadAction {
                action: UploadAction::GeneratePresignedUrls,
                ..
            } => "/api/v1/uploads/{pk}/{s3_upload_id}/generate-presigned-urls/",
            Route::UploadAction {
                action: UploadAction::Complete,
                ..
            } => "/api/v1/uploads/{pk}/{s3_upload_id}/complete-multipart-upload/",
            Route::UploadAction {
                action: UploadAction::Abort,
                ..
            } => "/api/v1/uploads/{pk}/{s3_upload_id}/abort-multipart-upload/",
            Route::UploadAction {
                action: UploadAction::ListParts,
                ..
            } => "/api/v1/uploads/{pk}/{s3_upload_id}/list-parts/",
            Route::S3Object { .. } => "/s3/grand-challenge-uploads/uploads/{user}/{upload}",
            Route::MediaFile { .. } => "/media/components/componentinterfacevalue/{pk}/{name}",
            Route::MediaImage { .. } => "/media/images/{pk}/{file}/{name}",
            Route::SandboxState => "/_sandbox/state",
            Route::SandboxFaults => "/_sandbox/faults",
        }
    }

    /// The methods the endpoint offers (HEAD and OPTIONS are implied for API routes).
    pub fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Items(_) | Route::Sessions | Route::Uploads | Route::Jobs => &["GET", "POST"],
            Route::Item(..) => &["GET", "PUT", "PATCH"],
            Route::UploadAction {
                action: UploadAction::ListParts,
                ..
            } => &["GET"],
            Route::UploadAction { .. } => &["PATCH"],
            Route::S3Object { .. } => &["PUT"],
            Route::SandboxFaults => &["GET", "PUT"],
            _ => &["GET"],
        }
    }
}

/// DRF's default lookup pattern `[^/.]+`.
fn pk(s: &str) -> Option<String> {
    (!s.is_empty() && !s.contains('.')).then(|| s.to_string())
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Resolve a path (without query) to a route.
pub fn resolve(path: &str) -> Option<Route> {
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        return resolve_api(rest);
    }
    if let Some(rest) = path.strip_prefix("/s3/") {
        let segs: Vec<&str> = rest.split('/').collect();
        return match segs.as_slice() {
            [bucket, "uploads", user, upload]
                if *bucket == BUCKET && !user.is_empty() && !upload.is_empty() =>
            {
                Some(Route::S3Object {
                    user: user.to_string(),
                    upload: upload.to_string(),
                })
            }
            _ => None,
        };
    }
    if let Some(rest) = path.strip_prefix("/media/") {
        let segs: Vec<&str> = rest.split('/').collect();
        return match segs.as_slice() {
            ["components", "componentinterfacevalue", civ, name] if !name.is_empty() => {
                Some(Route::MediaFile {
                    civ: civ.to_string(),
                    name: decode(name),
                })
            }
            ["images", image, file, name] if !name.is_empty() => Some(Route::MediaImage {
                image: image.to_string(),
                file: file.to_string(),
                name: decode(name),
            }),
            _ => None,
        };
    }
    match path {
        "/_sandbox/state" => Some(Route::SandboxState),
        "/_sandbox/faults" => Some(Route::SandboxFaults),
        _ => None,
    }
}

fn resolve_api(rest: &str) -> Option<Route> {
    if rest.is_empty() {
        return Some(Route::ApiRoot);
    }
    let inner = rest.strip_suffix('/')?;
    let segs: Vec<&str> = inner.split('/').collect();
    use ContainerKind::*;
    let r = match segs.as_slice() {
        ["gcapi"] => Route::Gcapi,
        ["profiles", "users", "self"] => Route::ProfileSelf,
        ["components", "interfaces"] => Route::Interfaces,
        ["components", "interfaces", p] => Route::Interface(pk(p)?),
        ["archives"] => Route::Archives,
        ["archives", "items"] => Route::Items(Archive),
        ["archives", "items", p] => Route::Item(Archive, pk(p)?),
        ["archives", p] => Route::Archive(pk(p)?),
        ["reader-studies"] => Route::ReaderStudies,
        ["reader-studies", "display-sets"] => Route::Items(ReaderStudy),
        ["reader-studies", "display-sets", p] => Route::Item(ReaderStudy, pk(p)?),
        ["reader-studies", p] => Route::ReaderStudy(pk(p)?),
        ["cases", "images"] => Route::Images,
        ["cases", "images", p] => Route::Image(pk(p)?),
        ["cases", "upload-sessions"] => Route::Sessions,
        ["cases", "upload-sessions", p] => Route::Session(pk(p)?),
        ["algorithms"] => Route::Algorithms,
        ["algorithms", "images"] => Route::AlgorithmImages,
        ["algorithms", "images", p] => Route::AlgorithmImage(pk(p)?),
        ["algorithms", "jobs"] => Route::Jobs,
        ["algorithms", "jobs", p] => Route::Job(pk(p)?),
        ["algorithms", p] => Route::Algorithm(pk(p)?),
        ["uploads"] => Route::Uploads,
        ["uploads", p] => Route::Upload(pk(p)?),
        ["uploads", p, id, action] if !id.is_empty() => {
            let action = match *action {
                "generate-presigned-urls" => UploadAction::GeneratePresignedUrls,
                "complete-multipart-upload" => UploadAction::Complete,
                "abort-multipart-upload" => UploadAction::Abort,
                "list-parts" => UploadAction::ListParts,
                _ => return None,
            };
            Route::UploadAction {
                pk: pk(p)?,
                s3_upload_id: decode(id),
                action,
            }
        }
        _ => return None,
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_api() {
        assert_eq!(resolve("/api/v1/"), Some(Route::ApiRoot));
        assert_eq!(
            resolve("/api/v1/archives/items/"),
            Some(Route::Items(ContainerKind::Archive))
        );
        assert_eq!(
            resolve("/api/v1/archives/abc/"),
            Some(Route::Archive("abc".into()))
        );
        assert_eq!(
            resolve("/api/v1/reader-studies/display-sets/x/"),
            Some(Route::Item(ContainerKind::ReaderStudy, "x".into()))
        );
        assert!(matches!(
            resolve("/api/v1/uploads/p/2~abc/complete-multipart-upload/"),
            Some(Route::UploadAction {
                action: UploadAction::Complete,
                ..
            })
        ));
        assert_eq!(resolve("/api/v1/archives"), None);
        assert_eq!(resolve("/api/v1/archives/a.b/"), None);
        assert_eq!(resolve("/api/v1/nothing/"), None);
        assert_eq!(
            resolve("/s3/grand-challenge-uploads/uploads/3/u"),
            Some(Route::S3Object {
                user: "3".into(),
                upload: "u".into()
            })
        );
        assert_eq!(resolve("/s3/other/uploads/3/u"), None);
    }
}
