//! The sandbox's seeded world: users and tokens, sockets, archives, reader studies and existing items.
//!
//! A fixture is a TOML file (unknown keys are errors; relative paths are taken against the file's folder)
//! or the built-in demo world of [`Fixture::demo`]. Everything is checked when loading, so a server never
//! starts from a half-valid world.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use uuid::Uuid;

use super::faults::{FaultRule, FaultSpec};
use gc_content::kinds::{self, Family, Kind, SuperKind};

/// User "demo": editor of archive "demo-archive" and of reader study "demo-reader-study".
pub const DEMO_TOKEN: &str = "2cc6e90b9a9d797ef841cabc57970e1aa6f9a0f6f28cbafcdc4eca7d4e1ac825";
/// User "reader": archive *user* and reader-study *reader* (view-only everywhere).
pub const DEMO_READER_TOKEN: &str =
    "3ff536b367559e52f4816af2c4089916eb198751ef3475ca002ddc11f76dabdd";
/// Staff user "admin".
pub const DEMO_ADMIN_TOKEN: &str =
    "47fbd73ae374885cc7a2219109329b7c633275ff491c667c6528d9fa35da42ea";

/// The demo archive's pk.
pub const DEMO_ARCHIVE_PK: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
/// The demo reader study's pk.
pub const DEMO_READER_STUDY_PK: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
/// The pk of the demo display set that has answers (frozen).
pub const DEMO_ANSWERED_DISPLAY_SET_PK: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";

/// A user and their token.
#[derive(Clone)]
pub struct UserSpec {
    pub username: String,
    pub token: String,
    pub staff: bool,
    /// Verified accounts get the large upload byte quota.
    pub verified: bool,
    /// Inactive users are refused with "User inactive or deleted.".
    pub active: bool,
}

impl fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSpec")
            .field("username", &self.username)
            .field("token", &"***")
            .field("staff", &self.staff)
            .field("verified", &self.verified)
            .field("active", &self.active)
            .finish()
    }
}

/// One entry of a segmentation socket's `overlay_segments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySegment {
    pub name: String,
    pub visible: bool,
    pub voxel_value: i64,
}

#[derive(Debug, Clone)]
pub struct SocketSpec {
    pub pk: Option<i64>,
    pub slug: String,
    pub title: String,
    pub description: String,
    pub kind: Kind,
    pub super_kind: SuperKind,
    pub relative_path: String,
    pub overlay_segments: Vec<OverlaySegment>,
}

#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    pub pk: Uuid,
    pub slug: String,
    pub title: String,
    pub description: Option<String>,
    pub editors: Vec<String>,
    pub uploaders: Vec<String>,
    pub users: Vec<String>,
    pub public: bool,
    /// Emulates an archive linked to challenge phases: only these sockets may be set.
    pub allowed_sockets: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ReaderStudySpec {
    pub pk: Uuid,
    pub slug: String,
    pub title: String,
    pub description: Option<String>,
    pub editors: Vec<String>,
    pub readers: Vec<String>,
    pub public: bool,
}

/// Where a seeded socket value comes from.
#[derive(Debug, Clone)]
pub enum ValueSourceSpec {
    /// An image file (or several: e.g. `.mhd` + `.raw`), imported when the sandbox starts.
    Image {
        paths: Vec<PathBuf>,
        pk: Option<Uuid>,
    },
    File(PathBuf),
    Value(serde_json::Value),
}

#[derive(Debug, Clone)]
pub struct ValueSpec {
    pub socket: String,
    pub source: ValueSourceSpec,
}

/// An archive item or a display set.
#[derive(Debug, Clone)]
pub struct ItemSpec {
    pub pk: Uuid,
    /// Slug of the archive / reader study.
    pub container: String,
    pub title: String,
    /// Display sets only.
    pub order: i64,
    /// Display sets only: answers exist, so it is frozen.
    pub has_answers: bool,
    pub values: Vec<ValueSpec>,
}

/// Settings from the optional `[sandbox]` table; command-line flags override them.
#[derive(Debug, Clone, Default)]
pub struct FixtureSettings {
    pub import_delay: Option<Duration>,
    pub min_part_size: Option<u64>,
    pub seed: Option<u64>,
    pub upload_expiry: Option<Duration>,
    pub max_uploads_per_user: Option<usize>,
    pub upload_limit_unverified: Option<u64>,
    pub upload_limit_verified: Option<u64>,
    pub presigned_url_lifetime: Option<Duration>,
}

/// A parsed fixture file, or the built-in demo world.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    pub users: Vec<UserSpec>,
    pub sockets: Vec<SocketSpec>,
    pub archives: Vec<ArchiveSpec>,
    pub reader_studies: Vec<ReaderStudySpec>,
    pub archive_items: Vec<ItemSpec>,
    pub display_sets: Vec<ItemSpec>,
    pub algorithms: Vec<super::algorithm_specs::AlgorithmSpec>,
    pub settings: FixtureSettings,
    pub faults: Vec<FaultRule>,
}

// ---- the TOML form -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    #[serde(default)]
    user: Vec<RawUser>,
    #[serde(default)]
    socket: Vec<RawSocket>,
    #[serde(default)]
    archive: Vec<RawArchive>,
    #[serde(default)]
    reader_study: Vec<RawReaderStudy>,
    #[serde(default)]
    archive_item: Vec<RawArchiveItem>,
    #[serde(default)]
    display_set: Vec<RawDisplaySet>,
    #[serde(default)]
    algorithm: Vec<super::algorithm_specs::RawAlgorithm>,
    #[serde(default)]
    sandbox: Option<RawSettings>,
    #[serde(default)]
    fault: Vec<FaultSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    token: String,
    #[serde(default)]
    staff: bool,
    #[serde(default = "yes")]
    verified: bool,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    #[serde(default)]
    pk: Option<i64>,
    slug: String,
    title: String,
    #[serde(default)]
    description: String,
    kind: String,
    super_kind: SuperKind,
    relative_path: String,
    #[serde(default)]
    overlay_segments: Vec<OverlaySegment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    /// Optional: a fixture written to try a config needs no made-up UUIDs.
    pk: Option<Uuid>,
    slug: String,
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    editors: Vec<String>,
    #[serde(default)]
    uploaders: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    allowed_sockets: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReaderStudy {
    pk: Option<Uuid>,
    slug: String,
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    editors: Vec<String>,
    #[serde(default)]
    readers: Vec<String>,
    #[serde(default)]
    public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValue {
    socket: String,
    #[serde(default)]
    image: Option<OneOrMany>,
    #[serde(default)]
    image_pk: Option<Uuid>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    value: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchiveItem {
    pk: Option<Uuid>,
    archive: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    value: Vec<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisplaySet {
    pk: Option<Uuid>,
    reader_study: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    order: i64,
    #[serde(default)]
    has_answers: bool,
    #[serde(default)]
    value: Vec<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    import_delay: Option<String>,
    #[serde(default)]
    min_part_size: Option<u64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    upload_expiry: Option<String>,
    #[serde(default)]
    max_uploads_per_user: Option<usize>,
    #[serde(default)]
    upload_limit_unverified: Option<u64>,
    #[serde(default)]
    upload_limit_verified: Option<u64>,
    #[serde(default)]
    presigned_url_lifetime: Option<String>,
}

fn duration(text: &Option<String>, key: &str) -> anyhow::Result<Option<Duration>> {
    text.as_deref()
        .map(|t| {
            humantime::parse_duration(t).with_context(|| {
                format!("[sandbox] {key} = {t:?} is not a duration (e.g. \"500ms\")")
            })
        })
        .transpose()
}

impl RawUser {
    fn into_spec(self) -> UserSpec {
        UserSpec {
            username: self.username,
            token: self.token,
            staff: self.staff,
            verified: self.verified,
            active: self.active,
        }
    }
}

impl RawSocket {
    /// The socket with its kind looked up by the platform's label.
    fn into_spec(self) -> anyhow::Result<SocketSpec> {
        let Some(kind) = kinds::by_label(&self.kind) else {
            bail!(
                "socket {:?}: unknown kind {:?} (use the labels of the platform, e.g. \"Image\", \"Integer\", \"PDF file\")",
                self.slug,
                self.kind
            );
        };
        Ok(SocketSpec {
            pk: self.pk,
            slug: self.slug,
            title: self.title,
            description: self.description,
            kind,
            super_kind: self.super_kind,
            relative_path: self.relative_path,
            overlay_segments: self.overlay_segments,
        })
    }
}

impl RawArchive {
    fn into_spec(self) -> ArchiveSpec {
        ArchiveSpec {
            pk: self.pk.unwrap_or_else(Uuid::new_v4),
            slug: self.slug,
            title: self.title,
            description: self.description,
            editors: self.editors,
            uploaders: self.uploaders,
            users: self.users,
            public: self.public,
            allowed_sockets: self.allowed_sockets,
        }
    }
}

impl RawReaderStudy {
    fn into_spec(self) -> ReaderStudySpec {
        ReaderStudySpec {
            pk: self.pk.unwrap_or_else(Uuid::new_v4),
            slug: self.slug,
            title: self.title,
            description: self.description,
            editors: self.editors,
            readers: self.readers,
            public: self.public,
        }
    }
}

/// The values of an item, their paths taken against `base`.
fn raw_values(raw: Vec<RawValue>, base: &Path) -> anyhow::Result<Vec<ValueSpec>> {
    raw.into_iter().map(|v| raw_value(v, base)).collect()
}

impl RawArchiveItem {
    fn into_spec(self, base: &Path) -> anyhow::Result<ItemSpec> {
        Ok(ItemSpec {
            pk: self.pk.unwrap_or_else(Uuid::new_v4),
            container: self.archive,
            title: self.title,
            order: 0,
            has_answers: false,
            values: raw_values(self.value, base)?,
        })
    }
}

impl RawDisplaySet {
    fn into_spec(self, base: &Path) -> anyhow::Result<ItemSpec> {
        Ok(ItemSpec {
            pk: self.pk.unwrap_or_else(Uuid::new_v4),
            container: self.reader_study,
            title: self.title,
            order: self.order,
            has_answers: self.has_answers,
            values: raw_values(self.value, base)?,
        })
    }
}

impl RawSettings {
    /// The settings with their durations parsed.
    fn into_settings(self) -> anyhow::Result<FixtureSettings> {
        Ok(FixtureSettings {
            import_delay: duration(&self.import_delay, "import_delay")?,
            min_part_size: self.min_part_size,
            seed: self.seed,
            upload_expiry: duration(&self.upload_expiry, "upload_expiry")?,
            max_uploads_per_user: self.max_uploads_per_user,
            upload_limit_unverified: self.upload_limit_unverified,
            upload_limit_verified: self.upload_limit_verified,
            presigned_url_lifetime: duration(
                &self.presigned_url_lifetime,
                "presigned_url_lifetime",
            )?,
        })
    }
}

impl Fixture {
    /// Read and check a fixture file.
    pub fn load(path: &Path) -> anyhow::Result<Fixture> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read fixture {}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Fixture::from_toml_str(&text, base).with_context(|| format!("fixture {}", path.display()))
    }

    /// Parse and check fixture text; relative paths are taken against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> anyhow::Result<Fixture> {
        let raw: RawFixture = toml::from_str(text)?;
        let mut fixture = Fixture {
            users: raw.user.into_iter().map(RawUser::into_spec).collect(),
            sockets: raw
                .socket
                .into_iter()
                .map(RawSocket::into_spec)
                .collect::<anyhow::Result<_>>()?,
            archives: raw.archive.into_iter().map(RawArchive::into_spec).collect(),
            reader_studies: raw
                .reader_study
                .into_iter()
                .map(RawReaderStudy::into_spec)
                .collect(),
            ..Fixture::default()
        };
        for i in raw.archive_item {
            fixture.archive_items.push(i.into_spec(base_dir)?);
        }
        for d in raw.display_set {
            fixture.display_sets.push(d.into_spec(base_dir)?);
        }
        for a in raw.algorithm {
            fixture
                .algorithms
                .push(super::algorithm_specs::AlgorithmSpec::from_raw(a)?);
        }
        if let Some(s) = raw.sandbox {
            fixture.settings = s.into_settings()?;
        }
        for (i, f) in raw.fault.into_iter().enumerate() {
            fixture.faults.push(
                f.into_rule()
                    .map_err(|e| anyhow::anyhow!("[[fault]] #{}: {e}", i + 1))?,
            );
        }
        fixture.check()?;
        Ok(fixture)
    }

    /// Cross-references and uniqueness: every name used is defined, every key unique, every value fits
    /// its socket.
    pub fn check(&self) -> anyhow::Result<()> {
        let names = self.check_users()?;
        let socket_slugs = self.check_sockets()?;
        self.check_containers(&names, &socket_slugs)?;
        self.check_items()?;
        super::algorithm_specs::check(self)
    }

    /// Allowed, unique user names and unique plain tokens; returns the names.
    fn check_users(&self) -> anyhow::Result<HashSet<&str>> {
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        for u in &self.users {
            if u.username.is_empty() || u.username == "AnonymousUser" {
                bail!("user name {:?} is not allowed", u.username);
            }
            if !names.insert(u.username.as_str()) {
                bail!("user {:?} is defined twice", u.username);
            }
            if u.token.is_empty() || u.token.chars().any(|c| c.is_whitespace() || !c.is_ascii()) {
                bail!(
                    "user {:?}: the token must be non-empty ASCII without spaces",
                    u.username
                );
            }
            if !tokens.insert(u.token.as_str()) {
                bail!("user {:?}: the token is used by another user", u.username);
            }
        }
        Ok(names)
    }

    /// Unique slugs, pks and paths, kinds that fit their super kind, and overlay segments for every
    /// segmentation; returns the slugs.
    fn check_sockets(&self) -> anyhow::Result<HashSet<&str>> {
        let mut socket_slugs = HashSet::new();
        let mut socket_pks = HashSet::new();
        let mut paths = HashSet::new();
        for s in &self.sockets {
            if s.slug.is_empty() || !socket_slugs.insert(s.slug.as_str()) {
                bail!("socket slug {:?} is empty or defined twice", s.slug);
            }
            if let Some(pk) = s.pk
                && (pk <= 0 || !socket_pks.insert(pk))
            {
                bail!(
                    "socket {:?}: pk {pk} is not positive or is used twice",
                    s.slug
                );
            }
            if !s.kind.allows(s.super_kind) {
                bail!(
                    "socket {:?}: kind {:?} cannot have super kind {:?}",
                    s.slug,
                    s.kind.label,
                    s.super_kind.label()
                );
            }
            if !paths.insert(s.relative_path.as_str()) {
                bail!(
                    "socket {:?}: relative_path {:?} is used by another socket",
                    s.slug,
                    s.relative_path
                );
            }
            if s.kind.code == "SEG" && s.overlay_segments.is_empty() {
                bail!("segmentation socket {:?} needs overlay_segments", s.slug);
            }
        }
        Ok(socket_slugs)
    }

    /// Archives and reader studies: unique pks and slugs, known users and allowed sockets.
    fn check_containers(
        &self,
        names: &HashSet<&str>,
        socket_slugs: &HashSet<&str>,
    ) -> anyhow::Result<()> {
        let known_user = |who: &str, name: &str| -> anyhow::Result<()> {
            if names.contains(name) {
                Ok(())
            } else {
                bail!("{who}: unknown user {name:?}")
            }
        };
        let mut containers = HashSet::new();
        for a in &self.archives {
            if !containers.insert(a.pk) || a.slug.is_empty() {
                bail!("archive {:?}: empty slug or pk used twice", a.slug);
            }
            for n in a.editors.iter().chain(&a.uploaders).chain(&a.users) {
                known_user(&format!("archive {:?}", a.slug), n)?;
            }
            for s in a.allowed_sockets.iter().flatten() {
                if !socket_slugs.contains(s.as_str()) {
                    bail!("archive {:?}: allowed socket {s:?} is not defined", a.slug);
                }
            }
        }
        if has_duplicate(self.archives.iter().map(|a| a.slug.as_str())) {
            bail!("two archives have the same slug");
        }
        for r in &self.reader_studies {
            if !containers.insert(r.pk) || r.slug.is_empty() {
                bail!("reader study {:?}: empty slug or pk used twice", r.slug);
            }
            for n in r.editors.iter().chain(&r.readers) {
                known_user(&format!("reader study {:?}", r.slug), n)?;
            }
        }
        if has_duplicate(self.reader_studies.iter().map(|r| r.slug.as_str())) {
            bail!("two reader studies have the same slug");
        }
        Ok(())
    }

    /// Archive items and display sets: unique pks, known containers, titles unique per container, no
    /// negative order, and values that fit their sockets.
    fn check_items(&self) -> anyhow::Result<()> {
        let mut item_pks = HashSet::new();
        let mut titles = HashSet::new();
        for (what, items, known) in [
            (
                "archive item",
                &self.archive_items,
                self.archives
                    .iter()
                    .map(|a| a.slug.as_str())
                    .collect::<HashSet<_>>(),
            ),
            (
                "display set",
                &self.display_sets,
                self.reader_studies
                    .iter()
                    .map(|r| r.slug.as_str())
                    .collect(),
            ),
        ] {
            for item in items {
                if !item_pks.insert(item.pk) {
                    bail!("{what} {}: pk used twice", item.pk);
                }
                if !known.contains(item.container.as_str()) {
                    bail!("{what} {}: unknown container {:?}", item.pk, item.container);
                }
                if !item.title.is_empty()
                    && !titles.insert((item.container.as_str(), item.title.as_str()))
                {
                    bail!(
                        "{what} {}: title {:?} is used twice in {:?}",
                        item.pk,
                        item.title,
                        item.container
                    );
                }
                if item.order < 0 {
                    bail!("{what} {}: negative order", item.pk);
                }
                for v in &item.values {
                    self.check_value(what, item, v)?;
                }
            }
        }
        Ok(())
    }

    /// A seeded value: a known socket whose super kind its source fits, a JSON value valid for the
    /// socket's kind, and no DICOM image set.
    fn check_value(&self, what: &str, item: &ItemSpec, v: &ValueSpec) -> anyhow::Result<()> {
        let Some(socket) = self.sockets.iter().find(|s| s.slug == v.socket) else {
            bail!("{what} {}: unknown socket {:?}", item.pk, v.socket);
        };
        let fits = match (&v.source, socket.super_kind) {
            (ValueSourceSpec::Image { .. }, SuperKind::Image) => true,
            (ValueSourceSpec::File(_), SuperKind::File) => true,
            (ValueSourceSpec::Value(value), SuperKind::Value) => !value.is_null(),
            _ => false,
        };
        if !fits {
            bail!(
                "{what} {}: socket {:?} has super kind {} and needs {}",
                item.pk,
                v.socket,
                socket.super_kind.label(),
                match socket.super_kind {
                    SuperKind::Image => "`image`",
                    SuperKind::File => "`file`",
                    SuperKind::Value => "`value`",
                }
            );
        }
        if let ValueSourceSpec::Value(value) = &v.source {
            gc_content::schema::validate_value(socket.kind.label, value)
                .map_err(|e| anyhow::anyhow!("{what} {}: socket {:?}: {e}", item.pk, v.socket))?;
        }
        if socket.kind.family == Family::DicomImageSet {
            bail!(
                "{what} {}: DICOM image set values cannot be seeded from a fixture",
                item.pk
            );
        }
        Ok(())
    }

    /// The built-in demo world: users "demo" (editor), "reader" (view-only) and "admin" (staff), one
    /// archive, one reader study with one answered display set, a socket of every common kind, and the
    /// algorithms of [`super::algorithm_specs::demo`].
    pub fn demo() -> Fixture {
        let user = |username: &str, token: &str, staff: bool| UserSpec {
            username: username.into(),
            token: token.into(),
            staff,
            verified: true,
            active: true,
        };
        let uuid = |s: &str| Uuid::parse_str(s).unwrap_or_else(|_| Uuid::new_v4());
        Fixture {
            users: vec![
                user("demo", DEMO_TOKEN, false),
                user("reader", DEMO_READER_TOKEN, false),
                user("admin", DEMO_ADMIN_TOKEN, true),
            ],
            sockets: demo_sockets(),
            archives: vec![ArchiveSpec {
                pk: uuid(DEMO_ARCHIVE_PK),
                slug: "demo-archive".into(),
                title: "Demo Archive".into(),
                description: Some("Cases delivered by gc-hotfolder".into()),
                editors: vec!["demo".into()],
                uploaders: Vec::new(),
                users: vec!["reader".into()],
                public: false,
                allowed_sockets: None,
            }],
            reader_studies: vec![ReaderStudySpec {
                pk: uuid(DEMO_READER_STUDY_PK),
                slug: "demo-reader-study".into(),
                title: "Demo Reader Study".into(),
                description: Some("Display sets delivered by gc-hotfolder".into()),
                editors: vec!["demo".into()],
                readers: vec!["reader".into()],
                public: false,
            }],
            archive_items: Vec::new(),
            display_sets: vec![ItemSpec {
                pk: uuid(DEMO_ANSWERED_DISPLAY_SET_PK),
                container: "demo-reader-study".into(),
                title: "answered-case".into(),
                order: 10,
                has_answers: true,
                values: vec![ValueSpec {
                    socket: "diagnosis".into(),
                    source: ValueSourceSpec::Value("benign".into()),
                }],
            }],
            algorithms: super::algorithm_specs::demo(),
            settings: FixtureSettings::default(),
            faults: Vec::new(),
        }
    }
}

/// The demo world's sockets: slug, title, kind label, super kind, relative path.
const DEMO_SOCKETS: [(&str, &str, &str, SuperKind, &str); 13] = [
    (
        "generic-medical-image",
        "Generic Medical Image",
        "Image",
        SuperKind::Image,
        "images/generic-medical-image",
    ),
    (
        "ct-image",
        "CT Image",
        "Image",
        SuperKind::Image,
        "images/ct-image",
    ),
    (
        "segmentation",
        "Segmentation",
        "Segmentation",
        SuperKind::Image,
        "images/segmentation",
    ),
    (
        "dicom-image-set",
        "DICOM Image Set",
        "DICOM Image Set",
        SuperKind::Image,
        "images/dicom-image-set",
    ),
    (
        "report",
        "Report",
        "PDF file",
        SuperKind::File,
        "report.pdf",
    ),
    (
        "results-json",
        "Results JSON",
        "Anything",
        SuperKind::File,
        "results.json",
    ),
    ("notes", "Notes", "String", SuperKind::Value, "notes.json"),
    (
        "lesion-count",
        "Lesion Count",
        "Integer",
        SuperKind::Value,
        "lesion-count.json",
    ),
    (
        "lung-volume",
        "Lung Volume",
        "Float",
        SuperKind::Value,
        "lung-volume.json",
    ),
    (
        "is-abnormal",
        "Is Abnormal",
        "Bool",
        SuperKind::Value,
        "is-abnormal.json",
    ),
    (
        "metadata",
        "Metadata",
        "Anything",
        SuperKind::Value,
        "metadata.json",
    ),
    (
        "nodule-box",
        "Nodule Box",
        "2D bounding box",
        SuperKind::Value,
        "nodule-box.json",
    ),
    (
        "diagnosis",
        "Diagnosis",
        "Choice",
        SuperKind::Value,
        "diagnosis.json",
    ),
];

/// The sockets of [`DEMO_SOCKETS`]; the segmentation socket has one overlay segment, "lesion".
fn demo_sockets() -> Vec<SocketSpec> {
    DEMO_SOCKETS
        .iter()
        .map(|&(slug, title, kind, super_kind, path)| SocketSpec {
            pk: None,
            slug: slug.into(),
            title: title.into(),
            description: String::new(),
            kind: kinds::by_label(kind).unwrap_or(kinds::KINDS[0]),
            super_kind,
            relative_path: path.into(),
            overlay_segments: if slug == "segmentation" {
                vec![OverlaySegment {
                    name: "lesion".into(),
                    visible: true,
                    voxel_value: 1,
                }]
            } else {
                Vec::new()
            },
        })
        .collect()
}

fn has_duplicate<'a>(it: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = HashSet::new();
    it.into_iter().any(|s| !seen.insert(s))
}

fn raw_value(v: RawValue, base: &Path) -> anyhow::Result<ValueSpec> {
    let sources = v.image.is_some() as u8 + v.file.is_some() as u8 + v.value.is_some() as u8;
    if sources != 1 {
        bail!(
            "value for socket {:?}: give exactly one of image, file, value",
            v.socket
        );
    }
    if v.image_pk.is_some() && v.image.is_none() {
        bail!("value for socket {:?}: image_pk without image", v.socket);
    }
    let source = if let Some(image) = v.image {
        let paths = match image {
            OneOrMany::One(p) => vec![base.join(p)],
            OneOrMany::Many(ps) => ps.into_iter().map(|p| base.join(p)).collect(),
        };
        if paths.is_empty() {
            bail!("value for socket {:?}: empty image file list", v.socket);
        }
        ValueSourceSpec::Image {
            paths,
            pk: v.image_pk,
        }
    } else if let Some(file) = v.file {
        ValueSourceSpec::File(base.join(file))
    } else {
        let value = serde_json::to_value(v.value).context("value cannot be expressed as JSON")?;
        ValueSourceSpec::Value(value)
    };
    Ok(ValueSpec {
        socket: v.socket,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[user]]
username = "archive"
token = "0d28aa"
[[user]]
username = "viewer"
token = "ffee"
verified = false
[[socket]]
slug = "generic-medical-image"
title = "Generic Medical Image"
kind = "Image"
super_kind = "Image"
relative_path = "images/generic-medical-image"
[[socket]]
slug = "score"
title = "Score"
kind = "integer"
super_kind = "Value"
relative_path = "score.json"
[[archive]]
pk = "3b1f2a6e-7c1d-4d5e-9f00-112233445566"
slug = "archive"
title = "Archive"
editors = ["archive"]
users = ["viewer"]
[[reader_study]]
pk = "4b1f2a6e-7c1d-4d5e-9f00-112233445566"
slug = "rs"
title = "RS"
editors = ["archive"]
[[archive_item]]
archive = "archive"
title = "one"
  [[archive_item.value]]
  socket = "score"
  value = 3
  [[archive_item.value]]
  socket = "generic-medical-image"
  image = "images/test.mha"
[[display_set]]
reader_study = "rs"
order = 20
has_answers = true
[sandbox]
import_delay = "250ms"
min_part_size = 1024
[[fault]]
path = "/s3/*"
action = "status"
status = 503
retry_after = 1
"#;

    #[test]
    fn the_readme_fixture_loads_without_pks() {
        let readme =
            // The fixture format is documented for users in the workspace's README.
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
                .unwrap();
        let block = &readme[readme.find("# my-world.toml").unwrap()..];
        let text: Vec<&str> = block[..block.find("```").unwrap()]
            .lines()
            .map(str::trim_start)
            .collect();
        let f = Fixture::from_toml_str(&text.join("\n"), Path::new("/tmp")).unwrap();
        assert_eq!(f.archives[0].slug, "lung-ct-archive");
        assert_eq!(f.sockets.len(), 2);
    }

    #[test]
    fn parses_a_full_fixture() {
        let f = Fixture::from_toml_str(SAMPLE, Path::new("/data/fx")).unwrap();
        assert_eq!(f.users.len(), 2);
        assert!(!f.users[1].verified);
        assert_eq!(f.sockets[1].kind.code, "INT");
        assert_eq!(f.archive_items[0].values.len(), 2);
        match &f.archive_items[0].values[1].source {
            ValueSourceSpec::Image { paths, .. } => {
                assert_eq!(paths[0], Path::new("/data/fx/images/test.mha"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.display_sets[0].order, 20);
        assert_eq!(f.settings.import_delay, Some(Duration::from_millis(250)));
        assert_eq!(f.faults.len(), 1);
        assert!(
            !format!("{f:?}").contains("0d28aa"),
            "tokens never appear in Debug output"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_references() {
        let bad_key = SAMPLE.replace(
            "super_kind = \"Value\"",
            "super_kind = \"Value\"\ncolour = 1",
        );
        assert!(Fixture::from_toml_str(&bad_key, Path::new(".")).is_err());
        let bad_user = SAMPLE.replace("users = [\"viewer\"]", "users = [\"nobody\"]");
        let err = Fixture::from_toml_str(&bad_user, Path::new(".")).unwrap_err();
        assert!(format!("{err:#}").contains("nobody"));
        let bad_kind = SAMPLE.replace("kind = \"integer\"", "kind = \"Integr\"");
        assert!(Fixture::from_toml_str(&bad_kind, Path::new(".")).is_err());
        let wrong_source = SAMPLE.replace("value = 3", "file = \"x.json\"");
        assert!(Fixture::from_toml_str(&wrong_source, Path::new(".")).is_err());
    }

    #[test]
    fn demo_is_consistent() {
        let demo = Fixture::demo();
        demo.check().unwrap();
        assert_eq!(demo.sockets.len(), 13);
        for t in [DEMO_TOKEN, DEMO_READER_TOKEN, DEMO_ADMIN_TOKEN] {
            assert_eq!(t.len(), 64);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }
}
