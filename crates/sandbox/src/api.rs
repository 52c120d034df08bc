//! The REST endpoints that read and write the world: sockets, archives, reader studies, archive items,
//! display sets, images and upload sessions. Each handler runs with the world locked, validates the whole
//! request first and only then mutates, so a 4xx never leaves a partial change behind.

use std::collections::HashSet;

use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::ctx::{Ctx, Handled, done};
use super::http::{Resp, py_str};
use super::routes::Route;
use super::store::{ContainerKind, Item, Session, SessionStatus, SessionTarget, UserId, World};
use super::values::{self, Entry, char_field, hyperlink};
use super::worker::{self, Job};

const INVALID_CHOICE: &str =
    "Select a valid choice. That choice is not one of the available choices.";

/// Route an API request to its handler (method already checked).
pub fn handle(w: &mut World, ctx: &Ctx, route: &Route) -> Handled {
    let get = ctx.method == "GET";
    match route {
        Route::ApiRoot => done(api_root(w, ctx)?),
        Route::Gcapi => done(Resp::json(
            200,
            json!({"latest_version": "0.13.2", "lowest_supported_version": "0.13.0"}),
        )),
        Route::ProfileSelf => done(profile(w, ctx)?),
        Route::Interfaces => done(interfaces(w, ctx)?),
        Route::Interface(pk) => done(interface(w, ctx, pk)?),
        Route::Archives => done(archives(w, ctx)),
        Route::Archive(pk) => done(archive(w, ctx, pk)?),
        Route::ReaderStudies => done(reader_studies(w, ctx)),
        Route::ReaderStudy(pk) => done(reader_study(w, ctx, pk)?),
        Route::Items(kind) if get => done(list_items(w, ctx, *kind)?),
        Route::Items(kind) => done(create_item(w, ctx, *kind)?),
        Route::Item(kind, pk) if get => done(item_detail(w, ctx, *kind, pk)?),
        Route::Item(kind, pk) => update_item(w, ctx, *kind, pk, ctx.method == "PATCH"),
        Route::Images => done(images(w, ctx)?),
        Route::Image(pk) => done(image(w, ctx, pk)?),
        Route::Sessions if get => done(sessions(w, ctx)),
        Route::Sessions => create_session(w, ctx),
        Route::Session(pk) => done(session(w, ctx, pk)?),
        Route::Uploads | Route::Upload(_) | Route::UploadAction { .. } => {
            super::uploads::handle(w, ctx, route)
        }
        Route::Algorithms
        | Route::Algorithm(_)
        | Route::AlgorithmImages
        | Route::AlgorithmImage(_)
        | Route::Jobs
        | Route::Job(_) => super::algorithm_api::handle(w, ctx, route),
        _ => done(Resp::html(404)),
    }
}

fn api_root(w: &World, ctx: &Ctx) -> Result<Resp, Resp> {
    let user = ctx.require_user()?;
    if !w.user(user).is_some_and(|u| u.staff) {
        return Err(Resp::forbidden());
    }
    let mut root = Map::new();
    for (name, path) in [
        ("archives", "archives/"),
        ("archive-items", "archives/items/"),
        ("reader-studies", "reader-studies/"),
        ("display-sets", "reader-studies/display-sets/"),
        ("interfaces", "components/interfaces/"),
        ("images", "cases/images/"),
        ("upload-sessions", "cases/upload-sessions/"),
        ("uploads", "uploads/"),
        ("gcapi", "gcapi/"),
    ] {
        root.insert(name.into(), ctx.urls.api(path).into());
    }
    Ok(Resp::json(200, Json::Object(root)))
}

fn profile(w: &World, ctx: &Ctx) -> Result<Resp, Resp> {
    let user = ctx.require_user()?;
    let name = w.user(user).map(|u| u.username.clone()).unwrap_or_default();
    Ok(Resp::json(
        200,
        json!({
            "user": {"username": name},
            "mugshot": format!("{}/static/images/default-mugshot.png", ctx.urls.origin),
            "institution": "",
            "department": "",
            "location": "",
            "website": "",
        }),
    ))
}

fn interfaces(w: &World, ctx: &Ctx) -> Result<Resp, Resp> {
    ctx.require_user()?;
    let slug = ctx.param("slug");
    let items = w
        .sockets
        .iter()
        .filter(|s| slug.is_none_or(|slug| s.slug == slug))
        .map(|s| w.socket_json(s))
        .collect();
    Ok(ctx.page(items))
}

fn interface(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    ctx.require_user()?;
    let pk: i64 = pk.parse().map_err(|_| Resp::not_found())?;
    let s = w
        .socket(pk)
        .ok_or_else(|| Resp::no_match("ComponentInterface"))?;
    Ok(Resp::json(200, w.socket_json(s)))
}

fn archives(w: &World, ctx: &Ctx) -> Resp {
    let slug = ctx.param("slug");
    let items = w
        .archives
        .iter()
        .filter(|a| w.can_view_archive(ctx.user, a) && slug.is_none_or(|s| a.slug == s))
        .map(|a| w.archive_json(a, ctx.urls))
        .collect();
    ctx.page(items)
}

fn archive(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let a = w
        .archive(pk)
        .filter(|a| w.can_view_archive(ctx.user, a))
        .ok_or_else(|| Resp::no_match("Archive"))?;
    Ok(Resp::json(200, w.archive_json(a, ctx.urls)))
}

fn reader_studies(w: &World, ctx: &Ctx) -> Resp {
    let slug = ctx.param("slug");
    let items = w
        .reader_studies
        .iter()
        .filter(|r| w.can_view_reader_study(ctx.user, r) && slug.is_none_or(|s| r.slug == s))
        .map(|r| w.reader_study_json(r, ctx.urls))
        .collect();
    ctx.page(items)
}

fn reader_study(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let r = w
        .reader_study(pk)
        .filter(|r| w.can_view_reader_study(ctx.user, r))
        .ok_or_else(|| Resp::no_match("ReaderStudy"))?;
    Ok(Resp::json(200, w.reader_study_json(r, ctx.urls)))
}

/// A container filter (`?archive=`, `?reader_study=`): a pk of an existing container, else the 400.
fn container_filter(w: &World, ctx: &Ctx, kind: ContainerKind) -> Result<Option<Uuid>, Resp> {
    let key = match kind {
        ContainerKind::Archive => "archive",
        ContainerKind::ReaderStudy => "reader_study",
    };
    let Some(v) = ctx.param(key) else {
        return Ok(None);
    };
    let pk = Uuid::parse_str(v).ok().filter(|pk| match kind {
        ContainerKind::Archive => w.archive(*pk).is_some(),
        ContainerKind::ReaderStudy => w.reader_study(*pk).is_some(),
    });
    pk.map(Some)
        .ok_or_else(|| Resp::field_error(key, INVALID_CHOICE))
}

fn list_items(w: &World, ctx: &Ctx, kind: ContainerKind) -> Result<Resp, Resp> {
    let container = container_filter(w, ctx, kind)?;
    let unanswered = kind == ContainerKind::ReaderStudy
        && ctx
            .param("unanswered_by_user")
            .is_some_and(|v| v == "true" || v == "True");
    let mut items: Vec<&Item> = w
        .items
        .values()
        .filter(|i| {
            i.kind == kind
                && container.is_none_or(|c| i.container == c)
                && w.can_view_item(ctx.user, i)
        })
        .filter(|i| !(unanswered && i.has_answers))
        .collect();
    match kind {
        ContainerKind::Archive => items.sort_by_key(|i| i.seq),
        ContainerKind::ReaderStudy => items.sort_by_key(|i| (i.order, i.seq)),
    }
    Ok(ctx.page(
        items
            .into_iter()
            .map(|i| w.item_json(i, ctx.urls, false))
            .collect(),
    ))
}

fn find_item<'w>(w: &'w World, ctx: &Ctx, kind: ContainerKind, pk: &str) -> Result<&'w Item, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    w.items
        .get(&pk)
        .filter(|i| i.kind == kind && w.can_view_item(ctx.user, i))
        .ok_or_else(|| Resp::no_match(kind.item_model()))
}

fn item_detail(w: &World, ctx: &Ctx, kind: ContainerKind, pk: &str) -> Result<Resp, Resp> {
    let item = find_item(w, ctx, kind, pk)?;
    Ok(Resp::json(200, w.item_json(item, ctx.urls, false)))
}

fn archive_route(r: &Route) -> Option<String> {
    match r {
        Route::Archive(pk) => Some(pk.clone()),
        _ => None,
    }
}

/// The container field of a write: the archive hyperlink, or the reader study slug (editors only).
fn container_field(w: &World, user: UserId, kind: ContainerKind, v: &Json) -> Result<Uuid, String> {
    match kind {
        ContainerKind::Archive => {
            if v.is_null() {
                return Err("This field may not be null.".into());
            }
            let pk = hyperlink(v, archive_route)?.ok_or("This field may not be null.")?;
            Uuid::parse_str(&pk)
                .ok()
                .filter(|pk| {
                    w.archive(*pk)
                        .is_some_and(|a| w.can_upload_to_archive(Some(user), a))
                })
                .ok_or_else(|| values::DOES_NOT_EXIST.into())
        }
        ContainerKind::ReaderStudy => match v {
            Json::Null => Err("This field may not be null.".into()),
            Json::String(_) | Json::Number(_) | Json::Bool(_) => {
                let slug = py_str(v);
                w.reader_studies
                    .iter()
                    .find(|r| r.slug == slug && w.can_edit_reader_study(Some(user), r))
                    .map(|r| r.pk)
                    .ok_or_else(|| format!("Object with slug={slug} does not exist."))
            }
            _ => Err("Invalid value.".into()),
        },
    }
}

fn order_field(v: &Json) -> Result<i64, String> {
    let n = match v {
        Json::Null => return Err("This field may not be null.".into()),
        Json::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Json::String(s) => {
            let t = s.trim();
            t.parse::<i64>()
                .ok()
                .or_else(|| t.strip_suffix(".0").and_then(|t| t.parse().ok()))
        }
        _ => None,
    };
    let n = n.ok_or("A valid integer is required.")?;
    if n < 0 {
        return Err("Ensure this value is greater than or equal to 0.".into());
    }
    if n > 2_147_483_647 {
        return Err("Ensure this value is less than or equal to 2147483647.".into());
    }
    Ok(n)
}

/// The validated fields of an item write.
struct ItemWrite {
    container: Option<Uuid>,
    title: Option<String>,
    order: Option<i64>,
    values: Option<Vec<Entry>>,
}

fn validate_item_write(
    w: &World,
    user: UserId,
    kind: ContainerKind,
    obj: &Map<String, Json>,
    creating: bool,
) -> Result<ItemWrite, Resp> {
    let mut errors = Map::new();
    let container_key = match kind {
        ContainerKind::Archive => "archive",
        ContainerKind::ReaderStudy => "reader_study",
    };
    let container = match obj.get(container_key) {
        None if creating => {
            errors.insert(container_key.into(), json!(["This field is required."]));
            None
        }
        None => None,
        Some(v) => match container_field(w, user, kind, v) {
            Ok(pk) => Some(pk),
            Err(e) => {
                errors.insert(container_key.into(), json!([e]));
                None
            }
        },
    };
    let title = match obj.get("title") {
        None => None,
        Some(Json::Null) => {
            errors.insert("title".into(), json!(["This field may not be null."]));
            None
        }
        Some(v) => match char_field(v, 255, true) {
            Ok(t) => t,
            Err(e) => {
                errors.insert("title".into(), json!([e]));
                None
            }
        },
    };
    let order = match (kind, obj.get("order")) {
        (ContainerKind::ReaderStudy, Some(v)) => match order_field(v) {
            Ok(o) => Some(o),
            Err(e) => {
                errors.insert("order".into(), json!([e]));
                None
            }
        },
        _ => None,
    };
    let values = match obj.get("values") {
        None => None,
        Some(v) => match values::validate_values(w, user, v) {
            Ok(entries) => Some(entries),
            Err(e) => {
                errors.insert("values".into(), e);
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Resp::json(400, Json::Object(errors)));
    }
    Ok(ItemWrite {
        container,
        title,
        order,
        values,
    })
}

/// Non-empty titles are unique per container.
fn title_taken(
    w: &World,
    kind: ContainerKind,
    container: Uuid,
    title: &str,
    except: Option<Uuid>,
) -> bool {
    !title.is_empty()
        && w.items.values().any(|i| {
            i.kind == kind && i.container == container && i.title == title && Some(i.pk) != except
        })
}

fn unique_error(kind: ContainerKind) -> Resp {
    let msg = match kind {
        ContainerKind::Archive => "The fields title, archive must make a unique set.",
        ContainerKind::ReaderStudy => "The fields title, reader_study must make a unique set.",
    };
    Resp::json(400, json!({"non_field_errors": [msg]}))
}

fn create_item(w: &mut World, ctx: &Ctx, kind: ContainerKind) -> Result<Resp, Resp> {
    let user = ctx.require_user()?;
    let obj = ctx.object()?;
    let write = validate_item_write(w, user, kind, &obj, true)?;
    let Some(container) = write.container else {
        return Err(Resp::html(500));
    };
    let title = write.title.unwrap_or_default();
    if title_taken(w, kind, container, &title, None) {
        return Err(unique_error(kind));
    }
    if write.values.is_some_and(|v| !v.is_empty()) {
        return Err(Resp::bare_error("Values can only be added via update"));
    }
    let pk = Uuid::new_v4();
    let seq = w.next_seq();
    let order = match write.order.unwrap_or(0) {
        0 if kind == ContainerKind::ReaderStudy => w.next_order(container),
        o => o,
    };
    w.items.insert(
        pk,
        Item {
            pk,
            kind,
            container,
            title,
            order,
            has_answers: false,
            values: Default::default(),
            seq,
            last_set: None,
        },
    );
    let item = &w.items[&pk];
    Ok(Resp::json(201, w.item_json(item, ctx.urls, true)))
}

fn update_item(w: &mut World, ctx: &Ctx, kind: ContainerKind, pk: &str, partial: bool) -> Handled {
    let user = ctx.require_user()?;
    let item = find_item(w, ctx, kind, pk)?;
    if !w.can_change_item(Some(user), item) {
        return Err(Resp::forbidden());
    }
    let (item_pk, mut container) = (item.pk, item.container);
    let obj = ctx.object()?;
    let write = validate_item_write(w, user, kind, &obj, false)?;
    if let Some(c) = write.container {
        container = c;
    }
    if let Some(title) = &write.title
        && title_taken(w, kind, container, title, Some(item_pk))
    {
        return Err(unique_error(kind));
    }
    // Errors raised while saving: bare arrays.
    if w.items[&item_pk].has_answers {
        return Err(Resp::bare_error(
            "This display set cannot be changed, as answers for it already exist.",
        ));
    }
    let entries = write.values.unwrap_or_default();
    check_archive_sockets(w, kind, container, &entries)?;

    // Everything is valid: apply.
    let order = match write.order {
        Some(0) => Some(w.next_order(container)),
        other => other,
    };
    if let Some(item) = w.items.get_mut(&item_pk) {
        item.container = container;
        if let Some(t) = write.title {
            item.title = t;
        }
        if let Some(o) = order {
            item.order = o;
        }
    }
    let mut jobs = Vec::new();
    let listed: HashSet<i64> = entries.iter().map(|e| e.socket).collect();
    for entry in entries {
        if let Some(civ) = worker::bind_entry(w, item_pk, user, entry, &mut jobs) {
            w.attach(item_pk, civ);
        }
    }
    if !partial && let Some(item) = w.items.get_mut(&item_pk) {
        item.values.retain(|socket, _| listed.contains(socket));
    }
    let item = &w.items[&item_pk];
    Ok((Resp::json(200, w.item_json(item, ctx.urls, true)), jobs))
}

/// An archive that limits its sockets takes values for those only.
fn check_archive_sockets(
    w: &World,
    kind: ContainerKind,
    container: Uuid,
    entries: &[Entry],
) -> Result<(), Resp> {
    if kind == ContainerKind::Archive
        && let Some(allowed) = w
            .archive(container)
            .and_then(|a| a.allowed_sockets.as_ref())
        && let Some(bad) = entries.iter().find(|e| !allowed.contains(&e.socket))
    {
        let slug = w
            .socket(bad.socket)
            .map(|s| s.slug.clone())
            .unwrap_or_default();
        return Err(Resp::bare_error(&format!(
            "Socket '{slug}' is not allowed for this archive."
        )));
    }
    Ok(())
}

fn images(w: &World, ctx: &Ctx) -> Result<Resp, Resp> {
    let uuid_filter = |key: &str, exists: &dyn Fn(Uuid) -> bool| -> Result<Option<Uuid>, Resp> {
        match ctx.param(key) {
            None => Ok(None),
            Some(v) => Uuid::parse_str(v)
                .ok()
                .filter(|pk| exists(*pk))
                .map(Some)
                .ok_or_else(|| Resp::field_error(key, INVALID_CHOICE)),
        }
    };
    let origin = uuid_filter("origin", &|pk| w.sessions.contains_key(&pk))?;
    let archive = uuid_filter("archive", &|pk| w.archive(pk).is_some())?;
    let reader_study = uuid_filter("reader_study", &|pk| w.reader_study(pk).is_some())?;
    let name = ctx.param("name");
    let in_container = |image: Uuid, kind: ContainerKind, container: Uuid| {
        w.items.values().any(|i| {
            i.kind == kind
                && i.container == container
                && i.values.values().any(|c| {
                    w.civs.get(c).is_some_and(
                        |c| matches!(c.content, super::store::CivContent::Image(x) if x == image),
                    )
                })
        })
    };
    let mut found: Vec<&super::store::Image> = w
        .images
        .values()
        .filter(|i| origin.is_none_or(|o| i.origin == Some(o)))
        .filter(|i| name.is_none_or(|n| i.name == n))
        .filter(|i| archive.is_none_or(|a| in_container(i.pk, ContainerKind::Archive, a)))
        .filter(|i| reader_study.is_none_or(|r| in_container(i.pk, ContainerKind::ReaderStudy, r)))
        .filter(|i| w.can_view_image(ctx.user, i))
        .collect();
    found.sort_by_key(|i| i.pk);
    Ok(ctx.page(
        found
            .into_iter()
            .map(|i| w.image_json(i, ctx.urls))
            .collect(),
    ))
}

fn image(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let img = w
        .images
        .get(&pk)
        .filter(|i| w.can_view_image(ctx.user, i))
        .ok_or_else(|| Resp::no_match("Image"))?;
    Ok(Resp::json(200, w.image_json(img, ctx.urls)))
}

fn sessions(w: &World, ctx: &Ctx) -> Resp {
    let mut own: Vec<&Session> = w
        .sessions
        .values()
        .filter(|s| Some(s.creator) == ctx.user)
        .collect();
    own.sort_by_key(|s| s.seq);
    ctx.page(
        own.into_iter()
            .map(|s| w.session_json(s, ctx.urls))
            .collect(),
    )
}

fn session(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let s = w
        .sessions
        .get(&pk)
        .filter(|s| Some(s.creator) == ctx.user)
        .ok_or_else(|| Resp::no_match("RawImageUploadSession"))?;
    Ok(Resp::json(200, w.session_json(s, ctx.urls)))
}

/// `POST cases/upload-sessions/` (gc-protocol.md §6.2).
fn create_session(w: &mut World, ctx: &Ctx) -> Handled {
    let user = ctx.require_user()?;
    let obj = ctx.object()?;
    let request = SessionRequest::read(w, user, &obj)?;
    request.check(w, ctx.limits.max_files_per_session)?;
    let target = request.target(w)?;
    let pk = Uuid::new_v4();
    let seq = w.next_seq();
    let session = Session {
        pk,
        creator: user,
        status: SessionStatus::Queued,
        error_message: String::new(),
        uploads: request.uploads,
        image_set: Vec::new(),
        target,
        seq,
    };
    // The response shows "Queued" even when a target started the import.
    let body = w.session_json(&session, ctx.urls);
    let mut jobs = Vec::new();
    let mut session = session;
    if target != SessionTarget::None {
        session.status = SessionStatus::ReQueued;
        jobs.push(Job::Session { session: pk });
    }
    w.sessions.insert(pk, session);
    Ok((Resp::json(201, body), jobs))
}

/// The fields of a new upload session.
struct SessionRequest {
    uploads: Vec<Uuid>,
    archive: Option<Uuid>,
    archive_item: Option<Uuid>,
    display_set: Option<Uuid>,
    answer: Option<Uuid>,
    /// Any non-null `answer`, valid or not (answers are not modelled, so none is found).
    answer_given: bool,
    /// The socket.
    interface: Option<i64>,
}

impl SessionRequest {
    /// Read every field; `Err` is the 400 with every field's error.
    fn read(w: &World, user: UserId, obj: &Map<String, Json>) -> Result<SessionRequest, Resp> {
        let mut errors = Map::new();
        let null = Json::Null;
        let get = |k: &str| obj.get(k).unwrap_or(&null);
        let uploads = match session_uploads(w, user, obj.get("uploads")) {
            Ok(list) => list,
            Err(e) => {
                errors.insert("uploads".into(), json!([e]));
                Vec::new()
            }
        };
        let mut field = |key: &str, read: Result<Option<Uuid>, String>| match read {
            Ok(found) => found,
            Err(e) => {
                errors.insert(key.into(), json!([e]));
                None
            }
        };
        let archive = field("archive", session_archive(w, user, obj.get("archive")));
        let archive_item = field(
            "archive_item",
            session_item(w, user, get("archive_item"), Some(ContainerKind::Archive)),
        );
        let display_set = field(
            "display_set",
            session_item(
                w,
                user,
                get("display_set"),
                Some(ContainerKind::ReaderStudy),
            ),
        );
        let answer = field("answer", session_item(w, user, get("answer"), None));
        let interface = match get("interface") {
            Json::Null => None,
            v => {
                let slug = py_str(v);
                let found = w.socket_by_slug(&slug).map(|s| s.pk);
                if found.is_none() {
                    errors.insert(
                        "interface".into(),
                        json!([format!("Object with slug={slug} does not exist.")]),
                    );
                }
                found
            }
        };
        if !errors.is_empty() {
            return Err(Resp::json(400, Json::Object(errors)));
        }
        Ok(SessionRequest {
            uploads,
            archive,
            archive_item,
            display_set,
            answer,
            answer_given: !get("answer").is_null(),
            interface,
        })
    }

    /// The rules across fields: the file count and names, one target at most, and a socket exactly
    /// where the target needs one.
    fn check(&self, w: &World, max_files: usize) -> Result<(), Resp> {
        let non_field = |msg: &str| Err(Resp::json(400, json!({"non_field_errors": [msg]})));
        if self.uploads.len() > max_files {
            return non_field(&format!(
                "Too many files uploaded. A maximum of {max_files} files may be uploaded per session."
            ));
        }
        let mut names = HashSet::new();
        if !self
            .uploads
            .iter()
            .all(|u| names.insert(w.uploads[u].filename.as_str()))
        {
            return non_field("Filenames must be unique");
        }
        let targets = [
            self.archive.is_some(),
            self.archive_item.is_some(),
            self.display_set.is_some(),
            self.answer_given || self.answer.is_some(),
        ];
        if targets.iter().filter(|t| **t).count() > 1 {
            return non_field(
                "Only one of archive, archive item, answer or reader study can be set",
            );
        }
        let item = self.archive_item.is_some() || self.display_set.is_some();
        if self.interface.is_some() && self.archive.is_none() && !item {
            return non_field(
                "An interface can only be defined for archive, archive item or display set uploads.",
            );
        }
        if self.archive_item.is_some() && self.interface.is_none() {
            return non_field("An interface needs to be defined to upload to an archive item.");
        }
        if self.display_set.is_some() && self.interface.is_none() {
            return non_field("An interface needs to be defined to upload to a display set.");
        }
        Ok(())
    }

    /// Where the imported image goes; an archive without a socket takes the generic medical image.
    fn target(&self, w: &World) -> Result<SessionTarget, Resp> {
        Ok(if let Some(archive) = self.archive {
            let socket = self
                .interface
                .or_else(|| w.socket_by_slug("generic-medical-image").map(|s| s.pk));
            match socket {
                Some(socket) => SessionTarget::Archive { archive, socket },
                None => return Err(Resp::html(500)),
            }
        } else if let (Some(item), Some(socket)) =
            (self.archive_item.or(self.display_set), self.interface)
        {
            SessionTarget::Item { item, socket }
        } else {
            SessionTarget::None
        })
    }
}

/// The session's uploads: a non-empty list of the user's own completed uploads.
fn session_uploads(w: &World, user: UserId, v: Option<&Json>) -> Result<Vec<Uuid>, String> {
    let completed_own = |w: &World, pk: &str| {
        Uuid::parse_str(pk)
            .ok()
            .filter(|pk| {
                w.uploads.get(pk).is_some_and(|u| {
                    u.owner == user && u.status == super::store::UploadStatus::Completed
                })
            })
            .ok_or_else(|| values::DOES_NOT_EXIST.to_string())
    };
    match v {
        None => Err("This field is required.".into()),
        Some(v) => match values::upload_list(w, v, completed_own)? {
            Some(list) if !list.is_empty() => Ok(list),
            Some(_) => Err("This list may not be empty.".into()),
            None => Err("This field may not be null.".into()),
        },
    }
}

/// An archive (by slug) the user may upload to.
fn session_archive(w: &World, user: UserId, v: Option<&Json>) -> Result<Option<Uuid>, String> {
    match v {
        None => Ok(None),
        Some(Json::Null) => Err("This field may not be null.".into()),
        Some(v) => {
            let slug = py_str(v);
            w.archives
                .iter()
                .find(|a| a.slug == slug && w.can_upload_to_archive(Some(user), a))
                .map(|a| Some(a.pk))
                .ok_or_else(|| format!("Object with slug={slug} does not exist."))
        }
    }
}

/// An item of `kind` (by pk) the user may change; with no kind (answers), nothing is found.
fn session_item(
    w: &World,
    user: UserId,
    v: &Json,
    kind: Option<ContainerKind>,
) -> Result<Option<Uuid>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let text = py_str(v);
    kind.and_then(|kind| {
        Uuid::parse_str(&text).ok().filter(|pk| {
            w.items
                .get(pk)
                .is_some_and(|i| i.kind == kind && w.can_change_item(Some(user), i))
        })
    })
    .map(Some)
    .ok_or_else(|| format!("Invalid pk \"{text}\" - object does not exist."))
}
