//! Algorithms in the sandbox: the algorithms and jobs of the world and their JSON representations. Their
//! fixture form is in `algorithm_specs`, the deterministic executor that stands in for the platform's
//! container runtime in `executor`, so that a client can start a job, follow it and download its outputs
//! without an account or a GPU.
//!
//! gc-protocol.md does not cover algorithms. What is followed here was read from gcapi 0.16.1
//! (`client.py`: `AlgorithmsAPI`, `AlgorithmImagesAPI`, `AlgorithmJobsAPI`, `start_algorithm_job`;
//! `create_strategies.py`: `JobInputsCreateStrategy`; `models.py`: `Algorithm`, `AlgorithmInterface`,
//! `AlgorithmImage`, `HyperlinkedJob`, `JobPost`, `ComponentInterfaceValuePost`), whose models were
//! generated from the platform's OpenAPI schema, and from the conventions of the rest of the protocol:
//!
//! - `GET algorithms/?slug=` and `GET algorithms/{pk}/`: the `Algorithm` model, `interfaces` being a list
//!   of `{inputs, outputs}` holding whole sockets. Visible to the algorithm's editors and users, and to
//!   everyone when public; `average_duration` is the mean run time of its succeeded jobs in seconds.
//! - `GET algorithms/images/?algorithm=` and `GET algorithms/images/{pk}/`: the `AlgorithmImage` model,
//!   visible to the algorithm's editors only; the one image of a sandbox algorithm is always the active
//!   one with `import_status` "Completed".
//! - `POST algorithms/jobs/` with `{"algorithm": <api_url>, "inputs": [<values entry>...]}`: the entries
//!   are those of an item's `values` (gc-protocol.md §4.5, validated by the same code); answered 201 with
//!   the `JobPost` model, whose `inputs` hold the values that exist at once (values, existing images), the
//!   uploaded ones being processed in the background as for items (§4.6). Editors and users of the
//!   algorithm may start jobs; for others the `algorithm` link does not resolve.
//! - `GET algorithms/jobs/` (the caller's own jobs and those of algorithms they edit, oldest first) with
//!   the filters `algorithm_image__algorithm`, `algorithm_image`, `image` (an input image, as gcapi's
//!   `by_input_image` sends it) and `status` (the integer code); `GET algorithms/jobs/{pk}/`: the
//!   `HyperlinkedJob` model, `status` as the platform's label and `exec_duration` as ISO-8601.
//!
//! Status labels are the platform's: a job is "Validating inputs" while its uploaded inputs are imported,
//! then "Queued", "Executing" for the algorithm's configured duration, and "Succeeded" or "Failed". The
//! job representation has no error message: the platform shows it, with the logs, on the job's web page
//! and in a notification, so the sandbox keeps `error_message`, `stdout` and `stderr` in
//! `/_sandbox/state` and sends the creator a notification.
//!
//! Request checks whose wording gc-protocol.md does not give are answered in DRF's shapes
//! (`non_field_errors`): inputs that match no interface, a job whose inputs an earlier job already had
//! ("A result for these inputs with the current image and model already exists."), and the per-user
//! limit of unfinished jobs an algorithm may set.
//!
//! The executor derives every output from the inputs, so tests can predict them: a Float or Integer is
//! the number of voxels of the first input image (the sum of numeric input values when there is no
//! image), a Bool whether that number is even, a String describes it, any other JSON kind (as a value or
//! as a file) receives a summary of all inputs, an image output is a copy of the first input image and a
//! non-JSON file output a copy of the input file of the same kind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::fixture::Fixture;
use super::store::{Civ, CivContent, Urls, UserId, World, iso};

pub struct Interface {
    pub inputs: Vec<i64>,
    pub outputs: Vec<i64>,
}

pub struct Algorithm {
    pub pk: Uuid,
    pub image: Uuid,
    pub image_created: OffsetDateTime,
    pub slug: String,
    pub title: String,
    pub description: Option<String>,
    pub editors: HashSet<UserId>,
    pub users: HashSet<UserId>,
    pub public: bool,
    pub duration: Duration,
    pub failure: Option<String>,
    pub max_active_jobs_per_user: Option<usize>,
    pub interfaces: Vec<Interface>,
}

impl Algorithm {
    pub fn can_view(&self, user: Option<UserId>) -> bool {
        self.public || user.is_some_and(|u| self.editors.contains(&u) || self.users.contains(&u))
    }

    pub fn can_execute(&self, user: Option<UserId>) -> bool {
        user.is_some_and(|u| self.editors.contains(&u) || self.users.contains(&u))
    }

    pub fn is_editor(&self, user: Option<UserId>) -> bool {
        user.is_some_and(|u| self.editors.contains(&u))
    }

    /// The interface whose inputs are exactly these sockets.
    pub fn interface_for(&self, sockets: &[i64]) -> Option<usize> {
        let given: HashSet<i64> = sockets.iter().copied().collect();
        if given.len() != sockets.len() {
            return None;
        }
        self.interfaces.iter().position(|i| {
            i.inputs.len() == given.len() && i.inputs.iter().all(|s| given.contains(s))
        })
    }
}

/// A job's status; `code` is the integer the `status` filter takes, `label` what the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Failed,
    Succeeded,
    Executing,
    ValidatingInputs,
}

impl JobStatus {
    pub fn code(self) -> i64 {
        match self {
            JobStatus::Queued => 0,
            JobStatus::Failed => 3,
            JobStatus::Succeeded => 4,
            JobStatus::Executing => 8,
            JobStatus::ValidatingInputs => 12,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Failed => "Failed",
            JobStatus::Succeeded => "Succeeded",
            JobStatus::Executing => "Executing",
            JobStatus::ValidatingInputs => "Validating inputs",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Succeeded)
    }
}

/// Every status code of the platform's jobs, valid in the `status` filter even where the sandbox never
/// uses them (Started, Re-Queued, Cancelled, Provisioning, ...).
pub const STATUS_CODES: std::ops::RangeInclusive<i64> = 0..=12;

pub struct Job {
    pub pk: Uuid,
    pub algorithm: Uuid,
    pub creator: UserId,
    pub interface: usize,
    pub status: JobStatus,
    /// socket pk → socket value pk.
    pub inputs: BTreeMap<i64, i64>,
    pub outputs: BTreeMap<i64, i64>,
    pub error_message: String,
    pub stdout: String,
    pub stderr: String,
    pub created: OffsetDateTime,
    pub exec_duration: Option<Duration>,
    pub seq: u64,
}

#[derive(Default)]
pub struct Algorithms {
    pub list: Vec<Algorithm>,
    pub jobs: HashMap<Uuid, Job>,
}

impl Algorithms {
    /// The fixture's algorithms, with users and sockets of `w` already in place.
    pub fn from_fixture(w: &World, fixture: &Fixture) -> Algorithms {
        let ids = |names: &[String]| -> HashSet<UserId> {
            names
                .iter()
                .filter_map(|n| w.users.iter().find(|u| &u.username == n))
                .map(|u| u.pk)
                .collect()
        };
        let pks = |slugs: &[String]| -> Vec<i64> {
            slugs
                .iter()
                .filter_map(|s| w.socket_by_slug(s))
                .map(|s| s.pk)
                .collect()
        };
        let list = fixture
            .algorithms
            .iter()
            .map(|a| Algorithm {
                pk: a.pk,
                image: a.image_pk,
                image_created: OffsetDateTime::now_utc(),
                slug: a.slug.clone(),
                title: a.title.clone(),
                description: a.description.clone(),
                editors: ids(&a.editors),
                users: ids(&a.users),
                public: a.public,
                duration: a.duration,
                failure: a.failure.clone(),
                max_active_jobs_per_user: a.max_active_jobs_per_user,
                interfaces: a
                    .interfaces
                    .iter()
                    .map(|i| Interface {
                        inputs: pks(&i.inputs),
                        outputs: pks(&i.outputs),
                    })
                    .collect(),
            })
            .collect();
        Algorithms {
            list,
            jobs: HashMap::new(),
        }
    }

    pub fn get(&self, pk: Uuid) -> Option<&Algorithm> {
        self.list.iter().find(|a| a.pk == pk)
    }

    /// A background import finished for a job that is still validating its inputs.
    pub fn attach_input(&mut self, job: Uuid, socket: i64, civ: i64) -> bool {
        match self.jobs.get_mut(&job) {
            Some(j) if j.status == JobStatus::ValidatingInputs => {
                j.inputs.insert(socket, civ);
                true
            }
            _ => false,
        }
    }

    pub fn can_view_job(&self, user: Option<UserId>, job: &Job) -> bool {
        user == Some(job.creator) || self.get(job.algorithm).is_some_and(|a| a.is_editor(user))
    }

    /// Jobs of `user` on this algorithm that have not ended.
    pub fn active_jobs(&self, algorithm: Uuid, user: UserId) -> usize {
        self.jobs
            .values()
            .filter(|j| j.algorithm == algorithm && j.creator == user && !j.status.is_final())
            .count()
    }
}

// ---- URLs and JSON --------------------------------------------------------------------------------

pub fn algorithm_url(urls: &Urls, pk: Uuid) -> String {
    urls.api(&format!("algorithms/{pk}/"))
}

pub fn image_url(urls: &Urls, pk: Uuid) -> String {
    urls.api(&format!("algorithms/images/{pk}/"))
}

pub fn job_url(urls: &Urls, pk: Uuid) -> String {
    urls.api(&format!("algorithms/jobs/{pk}/"))
}

/// Django's `duration_iso_string`.
pub fn iso_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (days, rest) = (total / 86_400, total % 86_400);
    let (hours, minutes, seconds) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let micros = d.subsec_micros();
    let fraction = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    format!("P{days}DT{hours:02}H{minutes:02}M{seconds:02}{fraction}S")
}

fn mean_duration(w: &World, algorithm: Uuid) -> Option<f64> {
    let done: Vec<f64> = w
        .algorithms
        .jobs
        .values()
        .filter(|j| j.algorithm == algorithm && j.status == JobStatus::Succeeded)
        .filter_map(|j| j.exec_duration)
        .map(|d| d.as_secs_f64())
        .collect();
    (!done.is_empty()).then(|| done.iter().sum::<f64>() / done.len() as f64)
}

pub fn algorithm_json(w: &World, a: &Algorithm, urls: &Urls) -> Json {
    let sockets = |pks: &[i64]| -> Vec<Json> {
        pks.iter()
            .filter_map(|pk| w.socket(*pk))
            .map(|s| w.socket_json(s))
            .collect()
    };
    json!({
        "api_url": algorithm_url(urls, a.pk),
        "url": format!("{}/algorithms/{}/", urls.origin, a.slug),
        "description": a.description,
        "pk": a.pk,
        "title": a.title,
        "logo": format!("{}/static/images/logo.svg", urls.origin),
        "slug": a.slug,
        "average_duration": mean_duration(w, a.pk),
        "interfaces": a.interfaces.iter().map(|i| json!({
            "inputs": sockets(&i.inputs),
            "outputs": sockets(&i.outputs),
        })).collect::<Vec<_>>(),
    })
}

pub fn algorithm_image_json(a: &Algorithm, urls: &Urls) -> Json {
    json!({
        "pk": a.image,
        "url": format!("{}/algorithms/{}/container-images/{}/", urls.origin, a.slug, a.image),
        "api_url": image_url(urls, a.image),
        "algorithm": algorithm_url(urls, a.pk),
        "created": iso(a.image_created),
        "import_status": "Completed",
        "image": null,
    })
}

/// `(value, file, image)` of a socket value, as the API links them.
fn civ_parts(civ: &Civ, urls: &Urls) -> (Json, Json, Json) {
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

/// `HyperlinkedComponentInterfaceValue` entries, ordered as item values are read.
fn civs_read(w: &World, civs: &BTreeMap<i64, i64>, urls: &Urls) -> Json {
    let mut entries: Vec<(u8, String, Json)> = civs
        .values()
        .filter_map(|pk| w.civs.get(pk))
        .filter_map(|civ| {
            let socket = w.socket(civ.socket)?;
            let (value, file, image) = civ_parts(civ, urls);
            let s = w.socket_json(socket);
            Some((
                socket.kind.read_rank(),
                socket.slug.clone(),
                json!({"socket": s.clone(), "interface": s, "value": value, "file": file, "image": image, "pk": civ.pk}),
            ))
        })
        .collect();
    entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Json::Array(entries.into_iter().map(|e| e.2).collect())
}

/// `ComponentInterfaceValuePost` entries, in socket-value pk order.
pub fn civs_write(w: &World, civs: &BTreeMap<i64, i64>, urls: &Urls) -> Json {
    let mut list: Vec<&Civ> = civs.values().filter_map(|pk| w.civs.get(pk)).collect();
    list.sort_by_key(|c| c.pk);
    Json::Array(
        list.into_iter()
            .filter_map(|civ| {
                let socket = w.socket(civ.socket)?;
                let (value, file, image) = civ_parts(civ, urls);
                Some(json!({"interface": socket.slug, "value": value, "file": file, "image": image, "pk": civ.pk, "image_name": null}))
            })
            .collect(),
    )
}

pub fn job_json(w: &World, job: &Job, urls: &Urls) -> Json {
    let slug = w
        .algorithms
        .get(job.algorithm)
        .map(|a| a.slug.clone())
        .unwrap_or_default();
    let image = w
        .algorithms
        .get(job.algorithm)
        .map(|a| image_url(urls, a.image));
    json!({
        "pk": job.pk,
        "url": format!("{}/algorithms/{slug}/jobs/{}/", urls.origin, job.pk),
        "api_url": job_url(urls, job.pk),
        "algorithm_image": image,
        "inputs": civs_read(w, &job.inputs, urls),
        "outputs": civs_read(w, &job.outputs, urls),
        "status": job.status.label(),
        "hanging_protocol": null,
        "optional_hanging_protocols": [],
        "view_content": {},
        "exec_duration": job.exec_duration.map(iso_duration),
        "invoke_duration": null,
        "algorithm": algorithm_url(urls, job.algorithm),
    })
}

/// The `algorithms` part of `/_sandbox/state`: every job with its error and logs.
pub fn state_json(w: &World) -> Json {
    let mut jobs: Vec<&Job> = w.algorithms.jobs.values().collect();
    jobs.sort_by_key(|j| j.seq);
    let user_name = |pk: UserId| w.user(pk).map(|u| u.username.clone()).unwrap_or_default();
    let civs = |m: &BTreeMap<i64, i64>| -> Vec<Json> {
        m.values().filter_map(|pk| w.civ_state_json(*pk)).collect()
    };
    Json::Array(
        w.algorithms
            .list
            .iter()
            .map(|a| {
                json!({
                    "pk": a.pk,
                    "slug": a.slug,
                    "image": a.image,
                    "jobs": jobs.iter().filter(|j| j.algorithm == a.pk).map(|j| json!({
                        "pk": j.pk,
                        "creator": user_name(j.creator),
                        "status": j.status.label(),
                        "created": iso(j.created),
                        "inputs": civs(&j.inputs),
                        "outputs": civs(&j.outputs),
                        "error_message": j.error_message,
                        "stdout": j.stdout,
                        "stderr": j.stderr,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}
