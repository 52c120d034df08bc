//! The sandbox's state: users, sockets, containers, items, socket values, images, uploads and sessions.
//!
//! It lives in memory behind one mutex (requests validate everything first and then mutate while holding
//! it, which gives the platform's per-request atomicity); the bytes of uploads, files and images live on
//! disk under the data directory so memory stays flat whatever the file sizes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::fixture::{Fixture, ItemSpec, OverlaySegment, SocketSpec, ValueSourceSpec};
use gc_content::imaging::{self, ImageType, ImportedImage};
use gc_content::kinds::{Family, Kind, SuperKind};

pub type UserId = i64;

pub struct User {
    pub pk: UserId,
    pub username: String,
    pub token: String,
    pub staff: bool,
    pub verified: bool,
    pub active: bool,
}

pub struct Socket {
    pub pk: i64,
    pub slug: String,
    pub title: String,
    pub description: String,
    pub kind: Kind,
    pub super_kind: SuperKind,
    pub relative_path: String,
    pub overlay_segments: Vec<OverlaySegment>,
}

impl Socket {
    pub fn is_dicom_set(&self) -> bool {
        self.kind.family == Family::DicomImageSet
    }

    /// A JSON kind stored as a file: its uploaded content is parsed and validated like a value.
    pub fn is_json_file(&self) -> bool {
        self.kind.family == Family::Json && self.super_kind == SuperKind::File
    }
}

pub struct Archive {
    pub pk: Uuid,
    pub slug: String,
    pub title: String,
    pub description: Option<String>,
    pub editors: HashSet<UserId>,
    pub uploaders: HashSet<UserId>,
    pub users: HashSet<UserId>,
    pub public: bool,
    pub allowed_sockets: Option<HashSet<i64>>,
}

pub struct ReaderStudy {
    pub pk: Uuid,
    pub slug: String,
    pub title: String,
    pub description: Option<String>,
    pub editors: HashSet<UserId>,
    pub readers: HashSet<UserId>,
    pub public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Archive,
    ReaderStudy,
}

impl ContainerKind {
    /// The model name in "No <Model> matches the given query.".
    pub fn item_model(self) -> &'static str {
        match self {
            ContainerKind::Archive => "ArchiveItem",
            ContainerKind::ReaderStudy => "DisplaySet",
        }
    }
}

/// An archive item or a display set.
pub struct Item {
    pub pk: Uuid,
    pub kind: ContainerKind,
    pub container: Uuid,
    pub title: String,
    pub order: i64,
    pub has_answers: bool,
    /// socket pk → socket value pk: at most one value per socket.
    pub values: BTreeMap<i64, i64>,
    pub seq: u64,
    /// When a value was last set on it, by a request or by an import: what tests measure a client's
    /// delay in seeing an import against. Not part of the platform's API; `GET /_sandbox/state` only.
    pub last_set: Option<OffsetDateTime>,
}

/// A stored file with what the state endpoint reports about it.
#[derive(Clone)]
pub struct StoredFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

pub enum CivContent {
    Value(Json),
    Image(Uuid),
    File(StoredFile),
}

/// A socket value ("component interface value"); integer pk, shared between items.
pub struct Civ {
    pub pk: i64,
    pub socket: i64,
    pub content: CivContent,
}

pub struct ImageFile {
    pub pk: Uuid,
    pub stored: StoredFile,
    pub image_type: ImageType,
}

pub struct Image {
    pub pk: Uuid,
    pub name: String,
    pub meta: ImportedImage,
    pub files: Vec<ImageFile>,
    /// The upload session that created it (`?origin=`).
    pub origin: Option<Uuid>,
    pub creator: Option<UserId>,
    pub dicom_image_set_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    Initialized,
    Completed,
    Aborted,
}

impl UploadStatus {
    pub fn label(self) -> &'static str {
        match self {
            UploadStatus::Initialized => "Initialized",
            UploadStatus::Completed => "Completed",
            UploadStatus::Aborted => "Aborted",
        }
    }
}

#[derive(Clone)]
pub struct Part {
    pub number: u32,
    /// Quoted MD5 hex, as S3 sends it.
    pub etag: String,
    pub size: u64,
    pub path: PathBuf,
    pub last_modified: OffsetDateTime,
}

pub struct Upload {
    pub pk: Uuid,
    pub owner: UserId,
    pub filename: String,
    pub s3_upload_id: String,
    pub status: UploadStatus,
    pub created: OffsetDateTime,
    pub created_at: Instant,
    /// Parts received while `Initialized` (last PUT wins).
    pub parts: BTreeMap<u32, Part>,
    /// The completed object: the parts named in the complete call, in order.
    pub object: Vec<Part>,
    pub seq: u64,
}

impl Upload {
    pub fn object_size(&self) -> u64 {
        self.object.iter().map(|p| p.size).sum()
    }

    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("uploads").join(self.pk.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Queued,
    ReQueued,
    Failed,
    Succeeded,
}

impl SessionStatus {
    pub fn label(self) -> &'static str {
        match self {
            SessionStatus::Queued => "Queued",
            SessionStatus::ReQueued => "Re-Queued",
            SessionStatus::Failed => "Failed",
            SessionStatus::Succeeded => "Succeeded",
        }
    }
}

/// What an import session attaches its image to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTarget {
    None,
    /// One new archive item per image, holding it under the socket.
    Archive {
        archive: Uuid,
        socket: i64,
    },
    /// Replace the socket's value of an item / display set.
    Item {
        item: Uuid,
        socket: i64,
    },
}

pub struct Session {
    pub pk: Uuid,
    pub creator: UserId,
    pub status: SessionStatus,
    pub error_message: String,
    pub uploads: Vec<Uuid>,
    pub image_set: Vec<Uuid>,
    pub target: SessionTarget,
    pub seq: u64,
}

/// A failure the platform reports only as a web notification (file validation, DICOM image sets).
pub struct Notification {
    pub user: UserId,
    pub message: String,
}

/// The whole state.
pub struct World {
    pub users: Vec<User>,
    pub sockets: Vec<Socket>,
    pub archives: Vec<Archive>,
    pub reader_studies: Vec<ReaderStudy>,
    pub items: HashMap<Uuid, Item>,
    pub civs: HashMap<i64, Civ>,
    pub images: HashMap<Uuid, Image>,
    pub uploads: HashMap<Uuid, Upload>,
    pub sessions: HashMap<Uuid, Session>,
    pub notifications: Vec<Notification>,
    pub algorithms: super::algorithms::Algorithms,
    /// "METHOD /route/pattern/ STATUS" → count.
    pub requests: BTreeMap<String, u64>,
    pub data_dir: PathBuf,
    next_civ: i64,
    seq: u64,
}

/// Microsecond ISO-8601 in UTC, as the platform prints timestamps.
pub fn iso(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Copy the concatenation of `sources` to `dest`, streaming, and return (size, sha256 hex).
pub fn concat_files(sources: &[PathBuf], dest: &Path) -> std::io::Result<(u64, String)> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    for src in sources {
        let mut f = std::fs::File::open(src)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
    }
    out.flush()?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// The file name part of an upload / fixture path, safe to use as a stored name.
pub fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

/// The fixture's sockets in pk order; those without a pk get the next ones after the largest given.
fn fixture_sockets(specs: &[SocketSpec]) -> Vec<Socket> {
    let mut next_socket = specs.iter().filter_map(|s| s.pk).max().unwrap_or(0) + 1;
    let mut sockets: Vec<Socket> = specs
        .iter()
        .map(|s| {
            let pk = s.pk.unwrap_or_else(|| {
                next_socket += 1;
                next_socket - 1
            });
            Socket {
                pk,
                slug: s.slug.clone(),
                title: s.title.clone(),
                description: s.description.clone(),
                kind: s.kind,
                super_kind: s.super_kind,
                relative_path: s.relative_path.clone(),
                overlay_segments: s.overlay_segments.clone(),
            }
        })
        .collect();
    sockets.sort_by_key(|s| s.pk);
    sockets
}

impl World {
    /// Build the world from a fixture; seeded images are imported and files copied into `data_dir`.
    pub fn from_fixture(fixture: &Fixture, data_dir: &Path) -> anyhow::Result<World> {
        let mut world = World {
            users: Vec::new(),
            sockets: Vec::new(),
            archives: Vec::new(),
            reader_studies: Vec::new(),
            items: HashMap::new(),
            civs: HashMap::new(),
            images: HashMap::new(),
            uploads: HashMap::new(),
            sessions: HashMap::new(),
            notifications: Vec::new(),
            algorithms: Default::default(),
            requests: BTreeMap::new(),
            data_dir: data_dir.to_path_buf(),
            next_civ: 1000,
            seq: 0,
        };
        for (i, u) in fixture.users.iter().enumerate() {
            world.users.push(User {
                pk: i as i64 + 2,
                username: u.username.clone(),
                token: u.token.clone(),
                staff: u.staff,
                verified: u.verified,
                active: u.active,
            });
        }
        world.sockets = fixture_sockets(&fixture.sockets);
        world.algorithms = super::algorithms::Algorithms::from_fixture(&world, fixture);
        world.seed_containers(fixture);
        for spec in &fixture.archive_items {
            world.seed_item(spec, ContainerKind::Archive)?;
        }
        for spec in &fixture.display_sets {
            world.seed_item(spec, ContainerKind::ReaderStudy)?;
        }
        Ok(world)
    }

    /// The fixture's archives and reader studies, with their users' and sockets' pks.
    fn seed_containers(&mut self, fixture: &Fixture) {
        let ids = |names: &[String], w: &World| -> HashSet<UserId> {
            names
                .iter()
                .filter_map(|n| w.users.iter().find(|u| &u.username == n))
                .map(|u| u.pk)
                .collect()
        };
        for a in &fixture.archives {
            let allowed = a.allowed_sockets.as_ref().map(|slugs| {
                slugs
                    .iter()
                    .filter_map(|s| self.socket_by_slug(s))
                    .map(|s| s.pk)
                    .collect::<HashSet<_>>()
            });
            let archive = Archive {
                pk: a.pk,
                slug: a.slug.clone(),
                title: a.title.clone(),
                description: a.description.clone(),
                editors: ids(&a.editors, self),
                uploaders: ids(&a.uploaders, self),
                users: ids(&a.users, self),
                public: a.public,
                allowed_sockets: allowed,
            };
            self.archives.push(archive);
        }
        for r in &fixture.reader_studies {
            let study = ReaderStudy {
                pk: r.pk,
                slug: r.slug.clone(),
                title: r.title.clone(),
                description: r.description.clone(),
                editors: ids(&r.editors, self),
                readers: ids(&r.readers, self),
                public: r.public,
            };
            self.reader_studies.push(study);
        }
    }

    fn seed_item(&mut self, spec: &ItemSpec, kind: ContainerKind) -> anyhow::Result<()> {
        let container = match kind {
            ContainerKind::Archive => self
                .archives
                .iter()
                .find(|a| a.slug == spec.container)
                .map(|a| a.pk),
            ContainerKind::ReaderStudy => self
                .reader_studies
                .iter()
                .find(|r| r.slug == spec.container)
                .map(|r| r.pk),
        };
        let Some(container) = container else {
            bail!("unknown container {:?}", spec.container)
        };
        let mut values = BTreeMap::new();
        for v in &spec.values {
            let Some(socket) = self.socket_by_slug(&v.socket).map(|s| s.pk) else {
                bail!("unknown socket {:?}", v.socket)
            };
            let civ = match &v.source {
                ValueSourceSpec::Value(value) => self.civ_for_value(socket, value.clone()),
                ValueSourceSpec::File(path) => {
                    let pk = self.next_civ_pk();
                    let name = base_name(path);
                    let dest = self.data_dir.join("files").join(pk.to_string()).join(&name);
                    let (size, sha256) = concat_files(std::slice::from_ref(path), &dest)
                        .with_context(|| format!("fixture file {}", path.display()))?;
                    self.civs.insert(
                        pk,
                        Civ {
                            pk,
                            socket,
                            content: CivContent::File(StoredFile {
                                name,
                                path: dest,
                                size,
                                sha256,
                            }),
                        },
                    );
                    pk
                }
                ValueSourceSpec::Image { paths, pk } => {
                    let image = match pk.filter(|pk| self.images.contains_key(pk)) {
                        Some(existing) => existing,
                        None => self.seed_image(paths, *pk)?,
                    };
                    self.civ_for_image(socket, image)
                }
            };
            values.insert(socket, civ);
        }
        let seq = self.next_seq();
        self.items.insert(
            spec.pk,
            Item {
                pk: spec.pk,
                kind,
                container,
                title: spec.title.clone(),
                order: spec.order,
                has_answers: spec.has_answers,
                values,
                seq,
                last_set: None,
            },
        );
        if kind == ContainerKind::ReaderStudy && spec.order == 0 {
            let order = self.next_order(container);
            if let Some(item) = self.items.get_mut(&spec.pk) {
                item.order = order;
            }
        }
        Ok(())
    }

    fn seed_image(&mut self, paths: &[PathBuf], pk: Option<Uuid>) -> anyhow::Result<Uuid> {
        let files: Vec<(String, PathBuf)> =
            paths.iter().map(|p| (base_name(p), p.clone())).collect();
        let imported = imaging::import_image(&files).map_err(|e| {
            let msg = match e {
                imaging::ImportError::Session(m) | imaging::ImportError::Socket(m) => m,
            };
            anyhow::anyhow!(
                "fixture image {} could not be imported: {msg}",
                paths[0].display()
            )
        })?;
        let pk = pk.unwrap_or_else(Uuid::new_v4);
        self.store_image(pk, imported, &files, None, None, None)
            .context("storing a fixture image")?;
        Ok(pk)
    }

    /// Copy the files of an imported image into the data directory and register it.
    pub fn store_image(
        &mut self,
        pk: Uuid,
        meta: ImportedImage,
        sources: &[(String, PathBuf)],
        origin: Option<Uuid>,
        creator: Option<UserId>,
        dicom_image_set_id: Option<String>,
    ) -> std::io::Result<()> {
        let files = store_image_files(&self.data_dir, pk, &meta, sources)?;
        self.images.insert(
            pk,
            Image {
                pk,
                name: meta.name.clone(),
                meta,
                files,
                origin,
                creator,
                dicom_image_set_id,
            },
        );
        Ok(())
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn next_civ_pk(&mut self) -> i64 {
        self.next_civ += 1;
        self.next_civ
    }

    /// Values are shared platform-wide: reuse the socket value with this exact (socket, value) pair.
    pub fn civ_for_value(&mut self, socket: i64, value: Json) -> i64 {
        if let Some(c) = self.civs.values().find(|c| {
            c.socket == socket && matches!(&c.content, CivContent::Value(v) if *v == value)
        }) {
            return c.pk;
        }
        let pk = self.next_civ_pk();
        self.civs.insert(
            pk,
            Civ {
                pk,
                socket,
                content: CivContent::Value(value),
            },
        );
        pk
    }

    pub fn civ_for_image(&mut self, socket: i64, image: Uuid) -> i64 {
        if let Some(c) = self
            .civs
            .values()
            .find(|c| c.socket == socket && matches!(c.content, CivContent::Image(i) if i == image))
        {
            return c.pk;
        }
        let pk = self.next_civ_pk();
        self.civs.insert(
            pk,
            Civ {
                pk,
                socket,
                content: CivContent::Image(image),
            },
        );
        pk
    }

    /// The next multiple of 10 above the highest order in the reader study.
    pub fn next_order(&self, reader_study: Uuid) -> i64 {
        let highest = self
            .items
            .values()
            .filter(|i| i.kind == ContainerKind::ReaderStudy && i.container == reader_study)
            .map(|i| i.order)
            .max()
            .unwrap_or(0);
        (highest / 10 + 1) * 10
    }

    pub fn user(&self, pk: UserId) -> Option<&User> {
        self.users.iter().find(|u| u.pk == pk)
    }

    pub fn socket(&self, pk: i64) -> Option<&Socket> {
        self.sockets.iter().find(|s| s.pk == pk)
    }

    pub fn socket_by_slug(&self, slug: &str) -> Option<&Socket> {
        self.sockets.iter().find(|s| s.slug == slug)
    }

    pub fn archive(&self, pk: Uuid) -> Option<&Archive> {
        self.archives.iter().find(|a| a.pk == pk)
    }

    pub fn reader_study(&self, pk: Uuid) -> Option<&ReaderStudy> {
        self.reader_studies.iter().find(|r| r.pk == pk)
    }

    // ---- permissions (gc-protocol.md §8.1) ----

    pub fn can_view_archive(&self, user: Option<UserId>, a: &Archive) -> bool {
        a.public
            || user.is_some_and(|u| {
                a.editors.contains(&u) || a.uploaders.contains(&u) || a.users.contains(&u)
            })
    }

    pub fn can_upload_to_archive(&self, user: Option<UserId>, a: &Archive) -> bool {
        user.is_some_and(|u| a.editors.contains(&u) || a.uploaders.contains(&u))
    }

    pub fn can_view_reader_study(&self, user: Option<UserId>, r: &ReaderStudy) -> bool {
        r.public || user.is_some_and(|u| r.editors.contains(&u) || r.readers.contains(&u))
    }

    pub fn can_edit_reader_study(&self, user: Option<UserId>, r: &ReaderStudy) -> bool {
        user.is_some_and(|u| r.editors.contains(&u))
    }

    pub fn can_view_item(&self, user: Option<UserId>, item: &Item) -> bool {
        let Some(u) = user else { return false };
        match item.kind {
            ContainerKind::Archive => self.archive(item.container).is_some_and(|a| {
                a.editors.contains(&u) || a.uploaders.contains(&u) || a.users.contains(&u)
            }),
            ContainerKind::ReaderStudy => self
                .reader_study(item.container)
                .is_some_and(|r| r.editors.contains(&u) || r.readers.contains(&u)),
        }
    }

    pub fn can_change_item(&self, user: Option<UserId>, item: &Item) -> bool {
        match item.kind {
            ContainerKind::Archive => self
                .archive(item.container)
                .is_some_and(|a| self.can_upload_to_archive(user, a)),
            ContainerKind::ReaderStudy => self
                .reader_study(item.container)
                .is_some_and(|r| self.can_edit_reader_study(user, r)),
        }
    }

    /// Images are visible to whoever can see an item holding them, and to the creator of their session.
    pub fn can_view_image(&self, user: Option<UserId>, image: &Image) -> bool {
        let Some(u) = user else { return false };
        if image.creator == Some(u) {
            return true;
        }
        let civs: HashSet<i64> = self
            .civs
            .values()
            .filter(|c| matches!(c.content, CivContent::Image(i) if i == image.pk))
            .map(|c| c.pk)
            .collect();
        if civs.is_empty() {
            return false;
        }
        self.items.values().any(|item| {
            item.values.values().any(|c| civs.contains(c)) && self.can_view_item(user, item)
        })
    }

    /// Bytes counted against the upload quota: completed, not yet consumed uploads.
    pub fn completed_bytes(&self, user: UserId) -> u64 {
        self.uploads
            .values()
            .filter(|u| u.owner == user && u.status == UploadStatus::Completed)
            .map(|u| u.object_size())
            .sum()
    }

    /// Remove an upload and its bytes (consumed, expired).
    pub fn delete_upload(&mut self, pk: Uuid) {
        if let Some(upload) = self.uploads.remove(&pk) {
            let _ = std::fs::remove_dir_all(upload.dir(&self.data_dir));
        }
    }

    /// Put `civ` into the item's slot for its socket (replacing any previous value); `item` may also be
    /// an algorithm job whose inputs are being imported.
    pub fn attach(&mut self, item: Uuid, civ: i64) -> bool {
        let Some(socket) = self.civs.get(&civ).map(|c| c.socket) else {
            return false;
        };
        match self.items.get_mut(&item) {
            Some(item) => {
                item.values.insert(socket, civ);
                item.last_set = Some(OffsetDateTime::now_utc());
                true
            }
            None => self.algorithms.attach_input(item, socket, civ),
        }
    }

    /// Whether background imports may still attach values to `pk` (an item, or a job validating inputs).
    pub fn takes_values(&self, pk: Uuid) -> bool {
        self.items.contains_key(&pk)
            || self
                .algorithms
                .jobs
                .get(&pk)
                .is_some_and(|j| j.status == super::algorithms::JobStatus::ValidatingInputs)
    }
}

/// Copy the files that make up an imported image to `images/<pk>/`.
pub fn store_image_files(
    data_dir: &Path,
    pk: Uuid,
    meta: &ImportedImage,
    sources: &[(String, PathBuf)],
) -> std::io::Result<Vec<ImageFile>> {
    let mut files = Vec::new();
    let names: Vec<&String> = if meta.files.is_empty() {
        sources.iter().map(|(n, _)| n).collect()
    } else {
        meta.files.iter().collect()
    };
    for name in names {
        let Some((_, src)) = sources.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let safe = base_name(Path::new(name));
        let dest = data_dir.join("images").join(pk.to_string()).join(&safe);
        let (size, sha256) = concat_files(std::slice::from_ref(src), &dest)?;
        files.push(ImageFile {
            pk: Uuid::new_v4(),
            stored: StoredFile {
                name: safe,
                path: dest,
                size,
                sha256,
            },
            image_type: meta.image_type,
        });
    }
    Ok(files)
}

/// Builders of absolute URLs on the public origin.
#[derive(Clone)]
pub struct Urls {
    /// e.g. `https://127.0.0.1:8443` (no trailing slash).
    pub origin: String,
}

impl Urls {
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.origin)
    }
    pub fn archive(&self, pk: Uuid) -> String {
        self.api(&format!("archives/{pk}/"))
    }
    pub fn reader_study(&self, pk: Uuid) -> String {
        self.api(&format!("reader-studies/{pk}/"))
    }
    pub fn item(&self, kind: ContainerKind, pk: Uuid) -> String {
        match kind {
            ContainerKind::Archive => self.api(&format!("archives/items/{pk}/")),
            ContainerKind::ReaderStudy => self.api(&format!("reader-studies/display-sets/{pk}/")),
        }
    }
    pub fn image(&self, pk: Uuid) -> String {
        self.api(&format!("cases/images/{pk}/"))
    }
    pub fn upload(&self, pk: Uuid) -> String {
        self.api(&format!("uploads/{pk}/"))
    }
    pub fn session(&self, pk: Uuid) -> String {
        self.api(&format!("cases/upload-sessions/{pk}/"))
    }
    pub fn media_file(&self, civ: i64, name: &str) -> String {
        format!(
            "{}/media/components/componentinterfacevalue/{civ}/{}",
            self.origin,
            encode_segment(name)
        )
    }
    pub fn media_image(&self, image: Uuid, file: Uuid, name: &str) -> String {
        format!(
            "{}/media/images/{image}/{file}/{}",
            self.origin,
            encode_segment(name)
        )
    }
}

pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2E", ".")
        .replace("%2D", "-")
        .replace("%5F", "_")
}

// ---- JSON representations ---------------------------------------------------------------------------

impl World {
    pub fn socket_json(&self, s: &Socket) -> Json {
        json!({
            "title": s.title,
            "description": s.description,
            "slug": s.slug,
            "kind": s.kind.label,
            "pk": s.pk,
            "default_value": null,
            "super_kind": s.super_kind.label(),
            "relative_path": s.relative_path,
            "overlay_segments": s.overlay_segments,
            "look_up_table": null,
        })
    }

    pub fn archive_json(&self, a: &Archive, urls: &Urls) -> Json {
        json!({
            "pk": a.pk,
            "title": a.title,
            "logo": format!("{}/static/images/logo.svg", urls.origin),
            "description": a.description,
            "api_url": urls.archive(a.pk),
            "url": format!("{}/archives/{}/", urls.origin, a.slug),
        })
    }

    pub fn reader_study_json(&self, r: &ReaderStudy, urls: &Urls) -> Json {
        json!({
            "api_url": urls.reader_study(r.pk),
            "url": format!("{}/reader-studies/{}/", urls.origin, r.slug),
            "slug": r.slug,
            "logo": format!("{}/static/images/logo.svg", urls.origin),
            "description": r.description,
            "help_text_safe": "",
            "pk": r.pk,
            "questions": [],
            "title_safe": html_escape(&r.title),
            "is_educational": false,
            "instant_verification": false,
            "has_ground_truth": false,
            "allow_answer_modification": false,
            "enable_autosaving": false,
            "allow_case_navigation": false,
            "allow_show_all_annotations": false,
            "roll_over_answers_for_n_cases": 0,
            "end_of_study_text_safe": "",
            "title": r.title,
            "help_text": "",
        })
    }

    fn civ_parts(&self, civ: &Civ, urls: &Urls) -> (Json, Json, Json) {
        match &civ.content {
            CivContent::Value(v) => (v.clone(), Json::Null, Json::Null),
            CivContent::File(f) => (
                Json::Null,
                urls.media_file(civ.pk, &f.name).into(),
                Json::Null,
            ),
            CivContent::Image(i) => (Json::Null, Json::Null, urls.image(*i).into()),
        }
    }

    /// `values` of the read representation: full sockets, grouped as the platform's `sort_civs` does
    /// (JSON kinds, thumbnails, charts, other files, images; see `Kind::read_rank`), by slug within
    /// each group.
    pub fn values_read(&self, item: &Item, urls: &Urls) -> Json {
        let mut entries: Vec<(u8, &str, Json)> = Vec::new();
        for civ_pk in item.values.values() {
            let Some(civ) = self.civs.get(civ_pk) else {
                continue;
            };
            let Some(socket) = self.socket(civ.socket) else {
                continue;
            };
            let (value, file, image) = self.civ_parts(civ, urls);
            let s = self.socket_json(socket);
            entries.push((
                socket.kind.read_rank(),
                &socket.slug,
                json!({"socket": s.clone(), "interface": s, "value": value, "file": file, "image": image, "pk": civ.pk}),
            ));
        }
        entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Json::Array(entries.into_iter().map(|e| e.2).collect())
    }

    /// `values` of the write representation: socket slugs, in socket-value pk order.
    pub fn values_write(&self, item: &Item, urls: &Urls) -> Json {
        let mut civs: Vec<&Civ> = item
            .values
            .values()
            .filter_map(|pk| self.civs.get(pk))
            .collect();
        civs.sort_by_key(|c| c.pk);
        Json::Array(
            civs.into_iter()
                .filter_map(|civ| {
                    let socket = self.socket(civ.socket)?;
                    let (value, file, image) = self.civ_parts(civ, urls);
                    Some(json!({"interface": socket.slug, "value": value, "file": file, "image": image, "pk": civ.pk, "image_name": null}))
                })
                .collect(),
        )
    }

    /// Position of a display set in its reader study, ordered by (order, creation).
    fn display_set_index(&self, item: &Item) -> usize {
        self.items
            .values()
            .filter(|i| {
                i.kind == ContainerKind::ReaderStudy
                    && i.container == item.container
                    && (i.order, i.seq) < (item.order, item.seq)
            })
            .count()
    }

    pub fn item_json(&self, item: &Item, urls: &Urls, write: bool) -> Json {
        let values = if write {
            self.values_write(item, urls)
        } else {
            self.values_read(item, urls)
        };
        match item.kind {
            ContainerKind::Archive => json!({
                "pk": item.pk,
                "title": item.title,
                "archive": urls.archive(item.container),
                "values": values,
                "hanging_protocol": null,
                "optional_hanging_protocols": [],
                "view_content": {},
            }),
            ContainerKind::ReaderStudy => {
                let rs = if write {
                    self.reader_study(item.container)
                        .map(|r| Json::from(r.slug.clone()))
                        .unwrap_or(Json::Null)
                } else {
                    urls.reader_study(item.container).into()
                };
                json!({
                    "pk": item.pk,
                    "title": item.title,
                    "title_safe": html_escape(&item.title),
                    "reader_study": rs,
                    "values": values,
                    "order": item.order,
                    "api_url": urls.item(item.kind, item.pk),
                    "hanging_protocol": null,
                    "optional_hanging_protocols": [],
                    "view_content": {},
                    "description": "",
                    "descriptions_map_safe": {},
                    "index": self.display_set_index(item),
                })
            }
        }
    }

    pub fn image_json(&self, image: &Image, urls: &Urls) -> Json {
        let m = &image.meta;
        let spacing = m.voxel_spacing_mm;
        let colour = matches!(m.color_space.as_str(), "RGB" | "RGBA" | "YCBCR");
        let mut shape_without_color = m.shape.clone();
        if colour
            && shape_without_color.len() > 2
            && matches!(shape_without_color.last(), Some(3 | 4))
        {
            shape_without_color.pop();
        }
        let files: Vec<Json> = if image.dicom_image_set_id.is_some() {
            Vec::new()
        } else {
            image
                .files
                .iter()
                .map(|f| {
                    json!({
                        "pk": f.pk,
                        "image": urls.image(image.pk),
                        "file": urls.media_image(image.pk, f.pk, &f.stored.name),
                        "image_type": match f.image_type { ImageType::Mhd => "MHD", ImageType::Tiff => "TIFF" },
                    })
                })
                .collect()
        };
        json!({
            "pk": image.pk,
            "name": image.name,
            "files": files,
            "dicom_image_set": image.dicom_image_set_id.as_ref().map(|id| json!({"image_set_id": id})),
            "width": m.width,
            "height": m.height,
            "depth": m.depth,
            "color_space": m.color_space,
            "modality": m.modality.as_ref().map(|mo| json!({"modality": mo})),
            "eye_choice": "NA",
            "stereoscopic_choice": null,
            "field_of_view": null,
            "shape_without_color": shape_without_color,
            "shape": m.shape,
            "voxel_width_mm": spacing.map(|s| s[0]),
            "voxel_height_mm": spacing.map(|s| s[1]),
            "voxel_depth_mm": if m.depth.is_some() { spacing.map(|s| s[2]) } else { None },
            "api_url": urls.image(image.pk),
            "window_center": null,
            "window_width": null,
            "segments": m.voxel_values,
            "patient_id": "",
            "patient_name": "",
            "patient_birth_date": null,
            "patient_age": "",
            "patient_sex": "",
            "study_date": null,
            "study_instance_uid": "",
            "series_instance_uid": "",
            "study_description": "",
            "series_description": "",
        })
    }

    pub fn upload_json(&self, u: &Upload, urls: &Urls) -> Json {
        json!({
            "pk": u.pk,
            "created": iso(u.created),
            "filename": u.filename,
            "key": format!("uploads/{}/{}", u.owner, u.pk),
            "s3_upload_id": u.s3_upload_id,
            "status": u.status.label(),
            "api_url": urls.upload(u.pk),
        })
    }

    pub fn session_json(&self, s: &Session, urls: &Urls) -> Json {
        // Consumed uploads disappear from the session, as their records are deleted.
        let uploads: Vec<Uuid> = s
            .uploads
            .iter()
            .copied()
            .filter(|u| self.uploads.contains_key(u))
            .collect();
        json!({
            "pk": s.pk,
            "creator": s.creator,
            "status": s.status.label(),
            "error_message": s.error_message,
            "image_set": s.image_set.iter().map(|i| urls.image(*i)).collect::<Vec<_>>(),
            "api_url": urls.session(s.pk),
            "user_uploads": uploads,
            "uploads": uploads.iter().map(|u| urls.upload(*u)).collect::<Vec<_>>(),
        })
    }

    /// A socket value as `/_sandbox/state` shows it, for items, display sets and jobs alike.
    pub fn civ_state_json(&self, pk: i64) -> Option<Json> {
        let civ = self.civs.get(&pk)?;
        let slug = self
            .socket(civ.socket)
            .map(|s| s.slug.clone())
            .unwrap_or_default();
        let file_json =
            |f: &StoredFile| json!({"name": f.name, "size": f.size, "sha256": f.sha256});
        let mut v = json!({"socket": slug, "pk": civ.pk});
        match &civ.content {
            CivContent::Value(value) => v["value"] = value.clone(),
            CivContent::File(f) => v["file"] = file_json(f),
            CivContent::Image(i) => {
                v["image"] = match self.images.get(i) {
                    Some(img) => json!({
                        "pk": img.pk,
                        "name": img.name,
                        "files": img.files.iter().map(|f| file_json(&f.stored)).collect::<Vec<_>>(),
                    }),
                    None => json!({"pk": i}),
                }
            }
        }
        Some(v)
    }

    /// `GET /_sandbox/state`: everything tests and benchmarks compare receipts against.
    pub fn state_json(&self, urls: &Urls) -> Json {
        let user_name = |pk: UserId| {
            self.user(pk)
                .map(|u| u.username.clone())
                .unwrap_or_default()
        };
        let item_state = |item: &Item| {
            let values: Vec<Json> = item
                .values
                .values()
                .filter_map(|pk| self.civ_state_json(*pk))
                .collect();
            let last_set = item.last_set.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
            let mut j =
                json!({"pk": item.pk, "title": item.title, "values": values, "last_set": last_set});
            if item.kind == ContainerKind::ReaderStudy {
                j["order"] = item.order.into();
                j["has_answers"] = item.has_answers.into();
            }
            j
        };
        let mut items: Vec<&Item> = self.items.values().collect();
        items.sort_by_key(|i| i.seq);
        let archives: Vec<Json> = self
            .archives
            .iter()
            .map(|a| {
                json!({
                    "pk": a.pk, "slug": a.slug, "title": a.title,
                    "items": items.iter().filter(|i| i.kind == ContainerKind::Archive && i.container == a.pk).map(|i| item_state(i)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let reader_studies: Vec<Json> = self
            .reader_studies
            .iter()
            .map(|r| {
                let mut sets: Vec<&&Item> =
                    items.iter().filter(|i| i.kind == ContainerKind::ReaderStudy && i.container == r.pk).collect();
                sets.sort_by_key(|i| (i.order, i.seq));
                json!({"pk": r.pk, "slug": r.slug, "title": r.title, "display_sets": sets.iter().map(|i| item_state(i)).collect::<Vec<_>>()})
            })
            .collect();
        let mut uploads: Vec<&Upload> = self.uploads.values().collect();
        uploads.sort_by_key(|u| u.seq);
        let mut sessions: Vec<&Session> = self.sessions.values().collect();
        sessions.sort_by_key(|s| s.seq);
        json!({
            "origin": urls.origin,
            "archives": archives,
            "reader_studies": reader_studies,
            "uploads": uploads.iter().map(|u| json!({
                "pk": u.pk, "filename": u.filename, "status": u.status.label(), "owner": user_name(u.owner),
                "size": if u.status == UploadStatus::Completed { u.object_size() } else { u.parts.values().map(|p| p.size).sum() },
                "parts": u.parts.len(),
            })).collect::<Vec<_>>(),
            "upload_sessions": sessions.iter().map(|s| json!({
                "pk": s.pk, "status": s.status.label(), "error_message": s.error_message, "creator": user_name(s.creator),
                "image_set": s.image_set,
            })).collect::<Vec<_>>(),
            "images": self.images.len(),
            "algorithms": super::algorithms::state_json(self),
            "notifications": self.notifications.iter().map(|n| json!({"user": user_name(n.user), "message": n.message})).collect::<Vec<_>>(),
            "requests": self.requests,
        })
    }
}

/// What the platform's `*_safe` fields do to text.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
}
