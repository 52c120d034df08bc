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
use super::values::{self, Entry, Source, char_field, hyperlink};
use super::worker::Job;

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
        match entry.source {
            Source::Value(v) => {
                let civ = w.civ_for_value(entry.socket, v);
                w.attach(item_pk, civ);
            }
            Source::Image(image) => {
                let civ = w.civ_for_image(entry.socket, image);
                w.attach(item_pk, civ);
            }
            Source::UserUpload(upload) => jobs.push(Job::File {
                item: item_pk,
                socket: entry.socket,
                upload,
                user,
            }),
            Source::UserUploads(uploads) => {
                let pk = Uuid::new_v4();
                let seq = w.next_seq();
                w.sessions.insert(
                    pk,
                    Session {
                        pk,
                        creator: user,
                        status: SessionStatus::ReQueued,
                        error_message: String::new(),
                        uploads,
                        image_set: Vec::new(),
                        target: SessionTarget::Item {
                            item: item_pk,
                            socket: entry.socket,
                        },
                        seq,
                    },
                );
                jobs.push(Job::Session { session: pk });
            }
            Source::Session(session) => {
                if let Some(s) = w.sessions.get_mut(&session) {
                    s.status = SessionStatus::ReQueued;
                    s.target = SessionTarget::Item {
                        item: item_pk,
                        socket: entry.socket,
                    };
                    jobs.push(Job::Session { session });
                }
            }
            Source::DicomImageSet {
                uploads,
                image_name,
            } => jobs.push(Job::Dicom {
                item: item_pk,
                socket: entry.socket,
                uploads,
                image_name,
                user,
            }),
        }
    }
    if !partial && let Some(item) = w.items.get_mut(&item_pk) {
        item.values.retain(|socket, _| listed.contains(socket));
    }
    let item = &w.items[&item_pk];
    Ok((Resp::json(200, w.item_json(item, ctx.urls, true)), jobs))
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
    let mut errors = Map::new();
    let null = Json::Null;
    let get = |k: &str| obj.get(k).unwrap_or(&null);
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
    let uploads = match obj.get("uploads") {
        None => {
            errors.insert("uploads".into(), json!(["This field is required."]));
            Vec::new()
        }
        Some(v) => match values::upload_list(w, v, completed_own) {
            Ok(Some(list)) if !list.is_empty() => list,
            Ok(Some(_)) => {
                errors.insert("uploads".into(), json!(["This list may not be empty."]));
                Vec::new()
            }
            Ok(None) => {
                errors.insert("uploads".into(), json!(["This field may not be null."]));
                Vec::new()
            }
            Err(e) => {
                errors.insert("uploads".into(), json!([e]));
                Vec::new()
            }
        },
    };
    let archive = match obj.get("archive") {
        None => None,
        Some(Json::Null) => {
            errors.insert("archive".into(), json!(["This field may not be null."]));
            None
        }
        Some(v) => {
            let slug = py_str(v);
            let found = w
                .archives
                .iter()
                .find(|a| a.slug == slug && w.can_upload_to_archive(Some(user), a))
                .map(|a| a.pk);
            if found.is_none() {
                errors.insert(
                    "archive".into(),
                    json!([format!("Object with slug={slug} does not exist.")]),
                );
            }
            found
        }
    };
    let mut pk_target = |key: &str, kind: Option<ContainerKind>| -> Option<Uuid> {
        let v = get(key);
        if v.is_null() {
            return None;
        }
        let text = py_str(v);
        let found = kind.and_then(|kind| {
            Uuid::parse_str(&text).ok().filter(|pk| {
                w.items
                    .get(pk)
                    .is_some_and(|i| i.kind == kind && w.can_change_item(Some(user), i))
            })
        });
        if found.is_none() {
            errors.insert(
                key.into(),
                json!([format!("Invalid pk \"{text}\" - object does not exist.")]),
            );
        }
        found
    };
    let archive_item = pk_target("archive_item", Some(ContainerKind::Archive));
    let display_set = pk_target("display_set", Some(ContainerKind::ReaderStudy));
    let answer = pk_target("answer", None);
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
    let answer_given = !get("answer").is_null();
    if !errors.is_empty() {
        return Err(Resp::json(400, Json::Object(errors)));
    }
    let non_field = |msg: &str| Err(Resp::json(400, json!({"non_field_errors": [msg]})));
    if uploads.len() > ctx.limits.max_files_per_session {
        return non_field(&format!(
            "Too many files uploaded. A maximum of {} files may be uploaded per session.",
            ctx.limits.max_files_per_session
        ));
    }
    let mut names = HashSet::new();
    if !uploads
        .iter()
        .all(|u| names.insert(w.uploads[u].filename.as_str()))
    {
        return non_field("Filenames must be unique");
    }
    let targets = [
        archive.is_some(),
        archive_item.is_some(),
        display_set.is_some(),
        answer_given || answer.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() > 1 {
        return non_field("Only one of archive, archive item, answer or reader study can be set");
    }
    if interface.is_some() && archive.is_none() && archive_item.is_none() && display_set.is_none() {
        return non_field(
            "An interface can only be defined for archive, archive item or display set uploads.",
        );
    }
    if archive_item.is_some() && interface.is_none() {
        return non_field("An interface needs to be defined to upload to an archive item.");
    }
    if display_set.is_some() && interface.is_none() {
        return non_field("An interface needs to be defined to upload to a display set.");
    }
    let target = if let Some(archive) = archive {
        let socket = interface.or_else(|| w.socket_by_slug("generic-medical-image").map(|s| s.pk));
        match socket {
            Some(socket) => SessionTarget::Archive { archive, socket },
            None => return Err(Resp::html(500)),
        }
    } else if let (Some(item), Some(socket)) = (archive_item.or(display_set), interface) {
        SessionTarget::Item { item, socket }
    } else {
        SessionTarget::None
    };
    let pk = Uuid::new_v4();
    let seq = w.next_seq();
    let session = Session {
        pk,
        creator: user,
        status: SessionStatus::Queued,
        error_message: String::new(),
        uploads,
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
