//! The algorithm endpoints: algorithms, algorithm images and jobs (what gcapi 0.16.1 calls; see
//! [`super::algorithms`] for the sources followed). Like every handler, a request is validated whole
//! before anything changes.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::algorithms::{
    Algorithm, Job, JobStatus, STATUS_CODES, algorithm_image_json, algorithm_json, civs_write,
    job_json,
};
use super::ctx::{Ctx, Handled};
use super::http::Resp;
use super::routes::Route;
use super::store::{UserId, World};
use super::values::{self, Entry, Source, hyperlink};
use super::worker;

const INVALID_CHOICE: &str =
    "Select a valid choice. That choice is not one of the available choices.";

/// Route an algorithm request to its handler (method already checked).
pub fn handle(w: &mut World, ctx: &Ctx, route: &Route) -> Handled {
    let r = match route {
        Route::Algorithms => algorithms(w, ctx),
        Route::Algorithm(pk) => algorithm(w, ctx, pk)?,
        Route::AlgorithmImages => images(w, ctx)?,
        Route::AlgorithmImage(pk) => image(w, ctx, pk)?,
        Route::Jobs if ctx.method == "GET" => jobs(w, ctx)?,
        Route::Jobs => return create_job(w, ctx),
        Route::Job(pk) => job(w, ctx, pk)?,
        _ => Resp::html(404),
    };
    Ok((r, Vec::new()))
}

fn algorithms(w: &World, ctx: &Ctx) -> Resp {
    let slug = ctx.param("slug");
    let items = w
        .algorithms
        .list
        .iter()
        .filter(|a| a.can_view(ctx.user) && slug.is_none_or(|s| a.slug == s))
        .map(|a| algorithm_json(w, a, ctx.urls))
        .collect();
    ctx.page(items)
}

fn algorithm(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let a = w
        .algorithms
        .get(pk)
        .filter(|a| a.can_view(ctx.user))
        .ok_or_else(|| Resp::no_match("Algorithm"))?;
    Ok(Resp::json(200, algorithm_json(w, a, ctx.urls)))
}

/// A filter naming an object by pk: unknown → the "valid choice" 400.
fn pk_filter(ctx: &Ctx, key: &str, exists: impl Fn(Uuid) -> bool) -> Result<Option<Uuid>, Resp> {
    match ctx.param(key) {
        None => Ok(None),
        Some(v) => Uuid::parse_str(v)
            .ok()
            .filter(|pk| exists(*pk))
            .map(Some)
            .ok_or_else(|| Resp::field_error(key, INVALID_CHOICE)),
    }
}

fn images(w: &World, ctx: &Ctx) -> Result<Resp, Resp> {
    let algorithm = pk_filter(ctx, "algorithm", |pk| w.algorithms.get(pk).is_some())?;
    let items = w
        .algorithms
        .list
        .iter()
        .filter(|a| a.is_editor(ctx.user) && algorithm.is_none_or(|pk| a.pk == pk))
        .map(|a| algorithm_image_json(a, ctx.urls))
        .collect();
    Ok(ctx.page(items))
}

fn image(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let a = w
        .algorithms
        .list
        .iter()
        .find(|a| a.image == pk && a.is_editor(ctx.user))
        .ok_or_else(|| Resp::no_match("AlgorithmImage"))?;
    Ok(Resp::json(200, algorithm_image_json(a, ctx.urls)))
}

fn jobs(w: &World, ctx: &Ctx) -> Result<Resp, Resp> {
    let algorithm = pk_filter(ctx, "algorithm_image__algorithm", |pk| {
        w.algorithms.get(pk).is_some()
    })?;
    let image = pk_filter(ctx, "algorithm_image", |pk| {
        w.algorithms.list.iter().any(|a| a.image == pk)
    })?;
    let input_image = pk_filter(ctx, "image", |pk| w.images.contains_key(&pk))?;
    let status = match ctx.param("status") {
        None => None,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(code) if STATUS_CODES.contains(&code) => Some(code),
            _ => {
                return Err(Resp::field_error(
                    "status",
                    &format!("Select a valid choice. {v} is not one of the available choices."),
                ));
            }
        },
    };
    let has_image = |j: &Job, image: Uuid| {
        j.inputs.values().any(|c| {
            w.civs.get(c).is_some_and(
                |c| matches!(c.content, super::store::CivContent::Image(i) if i == image),
            )
        })
    };
    let mut found: Vec<&Job> = w
        .algorithms
        .jobs
        .values()
        .filter(|j| w.algorithms.can_view_job(ctx.user, j))
        .filter(|j| algorithm.is_none_or(|a| j.algorithm == a))
        .filter(|j| {
            image.is_none_or(|i| w.algorithms.get(j.algorithm).is_some_and(|a| a.image == i))
        })
        .filter(|j| input_image.is_none_or(|i| has_image(j, i)))
        .filter(|j| status.is_none_or(|s| j.status.code() == s))
        .collect();
    found.sort_by_key(|j| j.seq);
    Ok(ctx.page(
        found
            .into_iter()
            .map(|j| job_json(w, j, ctx.urls))
            .collect(),
    ))
}

fn job(w: &World, ctx: &Ctx, pk: &str) -> Result<Resp, Resp> {
    let pk = Uuid::parse_str(pk).map_err(|_| Resp::not_found())?;
    let j = w
        .algorithms
        .jobs
        .get(&pk)
        .filter(|j| w.algorithms.can_view_job(ctx.user, j))
        .ok_or_else(|| Resp::no_match("Job"))?;
    Ok(Resp::json(200, job_json(w, j, ctx.urls)))
}

fn algorithm_route(r: &Route) -> Option<String> {
    match r {
        Route::Algorithm(pk) => Some(pk.clone()),
        _ => None,
    }
}

/// `POST algorithms/jobs/`.
fn create_job(w: &mut World, ctx: &Ctx) -> Handled {
    let user = ctx.require_user()?;
    let obj = ctx.object()?;
    let (algorithm, entries) = read_job_request(w, user, &obj)?;
    let Some(a) = algorithm.and_then(|pk| w.algorithms.get(pk)) else {
        return Err(Resp::html(500));
    };
    let interface = check_job_inputs(w, a, user, &entries)?;

    // Everything is valid: create.
    let algorithm = a.pk;
    let pk = Uuid::new_v4();
    let seq = w.next_seq();
    let mut inputs = BTreeMap::new();
    let mut imports = Vec::new();
    for entry in entries {
        let socket = entry.socket;
        if let Some(civ) = worker::bind_entry(w, pk, user, entry, &mut imports) {
            inputs.insert(socket, civ);
        }
    }
    let job = Job {
        pk,
        algorithm,
        creator: user,
        interface,
        status: JobStatus::ValidatingInputs,
        inputs,
        outputs: BTreeMap::new(),
        error_message: String::new(),
        stdout: String::new(),
        stderr: String::new(),
        created: OffsetDateTime::now_utc(),
        exec_duration: None,
        seq,
    };
    let body = json!({
        "pk": pk,
        "inputs": civs_write(w, &job.inputs, ctx.urls),
        "status": job.status.label(),
    });
    w.algorithms.jobs.insert(pk, job);
    Ok((
        Resp::json(201, body),
        vec![worker::Job::Algorithm {
            job: pk,
            inputs: imports,
        }],
    ))
}

/// The request's fields: an algorithm the user may execute and valid inputs, or every field's error.
fn read_job_request(
    w: &World,
    user: UserId,
    obj: &Map<String, Json>,
) -> Result<(Option<Uuid>, Vec<Entry>), Resp> {
    let mut errors = Map::new();
    let algorithm = match obj.get("algorithm") {
        None => Err("This field is required.".to_string()),
        Some(v) => job_algorithm(w, user, v),
    };
    let algorithm = match algorithm {
        Ok(pk) => Some(pk),
        Err(e) => {
            errors.insert("algorithm".into(), json!([e]));
            None
        }
    };
    let entries = match obj.get("inputs") {
        None => {
            errors.insert("inputs".into(), json!(["This field is required."]));
            Vec::new()
        }
        Some(v) => match values::validate_values(w, user, v) {
            Ok(e) => e,
            Err(e) => {
                errors.insert("inputs".into(), e);
                Vec::new()
            }
        },
    };
    if !errors.is_empty() {
        return Err(Resp::json(400, Json::Object(errors)));
    }
    Ok((algorithm, entries))
}

/// The `algorithm` link: an algorithm the user may execute.
fn job_algorithm(w: &World, user: UserId, v: &Json) -> Result<Uuid, String> {
    let Some(pk) = hyperlink(v, algorithm_route)? else {
        return Err("This field may not be null.".into());
    };
    Uuid::parse_str(&pk)
        .ok()
        .filter(|pk| {
            w.algorithms
                .get(*pk)
                .is_some_and(|a| a.can_execute(Some(user)))
        })
        .ok_or_else(|| values::DOES_NOT_EXIST.into())
}

/// The inputs must match one of the algorithm's interfaces (returned), the user must have a job slot
/// left, and no earlier job may have had exactly these inputs.
fn check_job_inputs(
    w: &World,
    a: &Algorithm,
    user: UserId,
    entries: &[Entry],
) -> Result<usize, Resp> {
    let non_field = |msg: &str| Resp::json(400, json!({"non_field_errors": [msg]}));
    let sockets: Vec<i64> = entries.iter().map(|e| e.socket).collect();
    let Some(interface) = a.interface_for(&sockets) else {
        return Err(non_field(
            "The set of inputs provided does not match any of the algorithm's interfaces.",
        ));
    };
    if let Some(max) = a.max_active_jobs_per_user
        && w.algorithms.active_jobs(a.pk, user) >= max
    {
        return Err(non_field(&format!(
            "You have {max} jobs of this algorithm that have not finished yet; please try again once one of them has finished."
        )));
    }
    if let Some(inputs) = existing_inputs(w, entries)
        && w.algorithms
            .jobs
            .values()
            .any(|j| j.algorithm == a.pk && j.inputs == inputs)
    {
        return Err(non_field(
            "A result for these inputs with the current image and model already exists.",
        ));
    }
    Ok(interface)
}

/// The socket values of the inputs when all of them are existing values or images: such a job can
/// repeat an earlier job exactly.
fn existing_inputs(w: &World, entries: &[Entry]) -> Option<BTreeMap<i64, i64>> {
    entries
        .iter()
        .map(|e| {
            let civ = match &e.source {
                Source::Value(v) => w.civs.values().find(|c| {
                    c.socket == e.socket
                        && matches!(&c.content, super::store::CivContent::Value(x) if x == v)
                }),
                Source::Image(i) => w.civs.values().find(|c| {
                    c.socket == e.socket
                        && matches!(c.content, super::store::CivContent::Image(x) if x == *i)
                }),
                _ => None,
            }?;
            Some((e.socket, civ.pk))
        })
        .collect()
}
