//! Algorithms in the sandbox: their fixture form, the jobs started on them, and a deterministic executor
//! that stands in for the platform's container runtime, so that a client can start a job, follow it and
//! download its outputs without an account or a GPU.
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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::App;
use super::fixture::Fixture;
use super::store::{
    Civ, CivContent, Image, Notification, SessionStatus, SessionTarget, StoredFile, Urls, UserId,
    World, concat_files, iso, store_image_files,
};
use super::worker;
use gc_content::imaging::ImportedImage;
use gc_content::kinds::{Family, SuperKind};

// ---- the fixture form ----------------------------------------------------------------------------

/// One `[[algorithm]]` table of a fixture.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlgorithm {
    pk: Option<Uuid>,
    slug: String,
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    editors: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    public: bool,
    /// How long a job stays "Executing", e.g. "2s".
    #[serde(default)]
    duration: Option<String>,
    /// Every job fails with this message.
    #[serde(default)]
    failure: Option<String>,
    #[serde(default)]
    max_active_jobs_per_user: Option<usize>,
    #[serde(default)]
    interface: Vec<RawInterface>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// An interface by socket slugs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AlgorithmSpec {
    pub pk: Uuid,
    /// The pk of its (one, active) algorithm image.
    pub image_pk: Uuid,
    pub slug: String,
    pub title: String,
    pub description: Option<String>,
    pub editors: Vec<String>,
    pub users: Vec<String>,
    pub public: bool,
    pub duration: Duration,
    pub failure: Option<String>,
    pub max_active_jobs_per_user: Option<usize>,
    pub interfaces: Vec<InterfaceSpec>,
}

impl AlgorithmSpec {
    pub fn from_raw(raw: RawAlgorithm) -> anyhow::Result<AlgorithmSpec> {
        let duration = match &raw.duration {
            None => Duration::ZERO,
            Some(t) => humantime::parse_duration(t).with_context(|| {
                format!(
                    "algorithm {:?}: duration = {t:?} is not a duration (e.g. \"2s\")",
                    raw.slug
                )
            })?,
        };
        Ok(AlgorithmSpec {
            pk: raw.pk.unwrap_or_else(Uuid::new_v4),
            image_pk: Uuid::new_v4(),
            slug: raw.slug,
            title: raw.title,
            description: raw.description,
            editors: raw.editors,
            users: raw.users,
            public: raw.public,
            duration,
            failure: raw.failure,
            max_active_jobs_per_user: raw.max_active_jobs_per_user,
            interfaces: raw
                .interface
                .into_iter()
                .map(|i| InterfaceSpec {
                    inputs: i.inputs,
                    outputs: i.outputs,
                })
                .collect(),
        })
    }
}

/// The demo world's algorithms, both run by "demo" (editor) and "reader" (user): "lung-volume-estimator"
/// (a CT image → its voxel count as lung volume, a JSON summary file and a copy of the image; or a
/// lesion count → metadata and a flag) and "failing-algorithm" (a CT image → a failure).
pub fn demo() -> Vec<AlgorithmSpec> {
    let spec =
        |pk: &str, slug: &str, title: &str, interfaces: &[(&[&str], &[&str])]| AlgorithmSpec {
            pk: Uuid::parse_str(pk).unwrap_or_else(|_| Uuid::new_v4()),
            image_pk: Uuid::new_v4(),
            slug: slug.into(),
            title: title.into(),
            description: None,
            editors: vec!["demo".into()],
            users: vec!["reader".into()],
            public: false,
            duration: Duration::from_millis(200),
            failure: None,
            max_active_jobs_per_user: None,
            interfaces: interfaces
                .iter()
                .map(|(i, o)| InterfaceSpec {
                    inputs: i.iter().map(|s| s.to_string()).collect(),
                    outputs: o.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        };
    let mut failing = spec(
        "6c1f3a52-8d4e-4b7a-9e21-3f5a7c9d1b20",
        "failing-algorithm",
        "Failing Algorithm",
        &[(&["ct-image"], &["lung-volume"])],
    );
    failing.failure = Some("The algorithm ran out of memory while reading the input image.".into());
    vec![
        spec(
            "1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            "lung-volume-estimator",
            "Lung Volume Estimator",
            &[
                (
                    &["ct-image"],
                    &["lung-volume", "results-json", "generic-medical-image"],
                ),
                (&["lesion-count"], &["metadata", "is-abnormal"]),
            ],
        ),
        failing,
    ]
}

/// The fixture's algorithms: names resolve, and the executor can produce every output from the inputs.
pub fn check(fixture: &Fixture) -> anyhow::Result<()> {
    let mut slugs = HashSet::new();
    for a in &fixture.algorithms {
        let what = format!("algorithm {:?}", a.slug);
        if a.slug.is_empty() || !slugs.insert(a.slug.as_str()) {
            bail!("{what}: empty slug or defined twice");
        }
        for n in a.editors.iter().chain(&a.users) {
            if !fixture.users.iter().any(|u| &u.username == n) {
                bail!("{what}: unknown user {n:?}");
            }
        }
        if a.interfaces.is_empty() {
            bail!("{what}: needs at least one [[algorithm.interface]]");
        }
        let mut seen = Vec::new();
        for (n, i) in a.interfaces.iter().enumerate() {
            let what = format!("{what}, interface {}", n + 1);
            let socket = |slug: &String| {
                fixture
                    .sockets
                    .iter()
                    .find(|s| &s.slug == slug)
                    .ok_or_else(|| anyhow::anyhow!("{what}: unknown socket {slug:?}"))
            };
            let mut set: Vec<&str> = i.inputs.iter().map(String::as_str).collect();
            set.sort_unstable();
            if i.inputs.is_empty() || set.windows(2).any(|w| w[0] == w[1]) {
                bail!("{what}: inputs must be a non-empty list of distinct sockets");
            }
            if seen.contains(&set) {
                bail!("{what}: another interface has the same inputs");
            }
            seen.push(set);
            let inputs = i.inputs.iter().map(socket).collect::<Result<Vec<_>, _>>()?;
            let first_image = inputs
                .iter()
                .find(|s| s.super_kind == SuperKind::Image)
                .map(|s| s.kind);
            for slug in &i.outputs {
                let out = socket(slug)?;
                if i.inputs.contains(slug) {
                    bail!("{what}: socket {slug:?} is both an input and an output");
                }
                let producible = match (out.super_kind, out.kind.family) {
                    (SuperKind::Image, Family::Image) => {
                        out.kind.code != "SEG"
                            && first_image.is_some_and(|k| k.family == Family::Image)
                    }
                    (SuperKind::Image, _) => false,
                    (_, Family::Json) => {
                        matches!(out.kind.code, "STR" | "INT" | "FLT" | "BOOL" | "JSON")
                    }
                    (_, Family::File(_)) => inputs.iter().any(|s| s.kind == out.kind),
                    _ => false,
                };
                if !producible {
                    bail!(
                        "{what}: the sandbox cannot produce output {slug:?} ({}): image outputs copy the first input image (not a segmentation or DICOM set), file outputs copy an input file of the same kind, values must be String, Integer, Float, Bool or Anything",
                        out.kind.label
                    );
                }
            }
        }
    }
    Ok(())
}

// ---- the world's part -----------------------------------------------------------------------------

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

// ---- running a job ----------------------------------------------------------------------------------

fn lock(app: &App) -> std::sync::MutexGuard<'_, World> {
    app.world()
}

fn set_status(app: &App, job: Uuid, status: JobStatus) {
    if let Some(j) = lock(app).algorithms.jobs.get_mut(&job) {
        j.status = status;
    }
}

fn fail(app: &App, job: Uuid, message: String, stderr: String) {
    let mut w = lock(app);
    let Some(j) = w.algorithms.jobs.get_mut(&job) else {
        return;
    };
    j.status = JobStatus::Failed;
    j.error_message = message.clone();
    j.stderr = stderr;
    let (creator, algorithm) = (j.creator, j.algorithm);
    let title = w
        .algorithms
        .get(algorithm)
        .map(|a| a.title.clone())
        .unwrap_or_default();
    w.notifications.push(Notification {
        user: creator,
        message: format!(
            "Unfortunately one of the jobs for algorithm {title} failed with an error: {message}"
        ),
    });
}

/// A job's life after the request that created it: import the uploaded inputs (the item machinery of
/// the worker, with the job as the target), then run the executor for the algorithm's duration.
pub(crate) async fn execute(app: Arc<App>, job: Uuid, inputs: Vec<worker::Job>) {
    let delay = app.config.import_delay;
    if !inputs.is_empty() && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let notes_before = lock(&app).notifications.len();
    for input in inputs {
        let a = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || worker::run(&a, input)).await {
            tracing::warn!(error = %e, "a job input import panicked");
        }
    }
    let missing = missing_inputs(&lock(&app), job, notes_before);
    if let Some(reason) = missing {
        return fail(&app, job, reason, String::new());
    }
    set_status(&app, job, JobStatus::Queued);
    tokio::task::yield_now().await;
    let (duration, failure) = {
        let mut w = lock(&app);
        let Some(j) = w.algorithms.jobs.get_mut(&job) else {
            return;
        };
        j.status = JobStatus::Executing;
        let algorithm = j.algorithm;
        match w.algorithms.get(algorithm) {
            Some(a) => (a.duration, a.failure.clone()),
            None => return,
        }
    };
    let started = Instant::now();
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
    if let Some(msg) = failure {
        return fail(&app, job, msg.clone(), msg);
    }
    let a = app.clone();
    let outcome = tokio::task::spawn_blocking(move || produce_outputs(&a, job)).await;
    match outcome {
        Ok(Ok(stdout)) => {
            let mut w = lock(&app);
            if let Some(j) = w.algorithms.jobs.get_mut(&job) {
                j.status = JobStatus::Succeeded;
                j.stdout = stdout;
                j.exec_duration = Some(started.elapsed());
            }
        }
        Ok(Err(msg)) => fail(&app, job, msg.clone(), msg),
        Err(e) => fail(
            &app,
            job,
            format!("The executor stopped: {e}"),
            String::new(),
        ),
    }
}

/// Why some input never arrived: the failed import session's message, else the notification the
/// failed import left, else a generic text. `None` when every input of the interface is there.
fn missing_inputs(w: &World, job: Uuid, notes_before: usize) -> Option<String> {
    let j = w.algorithms.jobs.get(&job)?;
    let interface = w.algorithms.get(j.algorithm)?.interfaces.get(j.interface)?;
    let missing: Vec<String> = interface
        .inputs
        .iter()
        .filter(|s| !j.inputs.contains_key(s))
        .filter_map(|s| w.socket(*s).map(|s| s.slug.clone()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let session_error = w
        .sessions
        .values()
        .filter(|s| {
            s.status == SessionStatus::Failed
                && matches!(s.target, SessionTarget::Item { item, .. } if item == job)
        })
        .map(|s| s.error_message.clone())
        .next();
    let notification = w
        .notifications
        .get(notes_before..)
        .unwrap_or_default()
        .iter()
        .rev()
        .find(|n| n.user == j.creator)
        .map(|n| n.message.clone());
    Some(session_error.or(notification).unwrap_or_else(|| {
        format!(
            "The inputs for {} could not be processed.",
            missing.join(", ")
        )
    }))
}

/// An input as the executor sees it.
enum Input {
    Value(Json),
    Image {
        meta: Box<ImportedImage>,
        files: Vec<(String, PathBuf)>,
    },
    File(StoredFile),
}

/// What the executor makes for one output socket.
enum Output {
    Value(Json),
    Image {
        meta: Box<ImportedImage>,
        files: Vec<(String, PathBuf)>,
    },
    /// Bytes to write (JSON kinds) or a file to copy.
    Bytes {
        name: String,
        bytes: Vec<u8>,
    },
    Copy(StoredFile),
}

fn voxels(meta: &ImportedImage) -> u64 {
    meta.width * meta.height * meta.depth.unwrap_or(1)
}

/// The executor's pure part: outputs from inputs.
fn derive(
    inputs: &[(String, &'static str, Input)],
    outputs: &[(i64, String, &'static str, SuperKind, String)],
) -> Result<Vec<(i64, Output)>, String> {
    let first_image = inputs.iter().find_map(|(_, _, i)| match i {
        Input::Image { meta, files } => Some((meta, files)),
        _ => None,
    });
    let numeric: f64 = inputs
        .iter()
        .filter_map(|(_, _, i)| match i {
            Input::Value(v) => v.as_f64(),
            _ => None,
        })
        .sum();
    let count = match first_image {
        Some((meta, _)) => voxels(meta) as f64,
        None => numeric,
    };
    let summary = Json::Object(
        inputs
            .iter()
            .map(|(slug, _, i)| {
                let v = match i {
                    Input::Value(v) => v.clone(),
                    Input::Image { meta, .. } => {
                        json!({"name": meta.name, "shape": meta.shape, "voxels": voxels(meta)})
                    }
                    Input::File(f) => json!({"name": f.name, "size": f.size, "sha256": f.sha256}),
                };
                (slug.clone(), v)
            })
            .collect(),
    );
    let mut made = Vec::new();
    for (socket, slug, code, super_kind, relative_path) in outputs {
        let value = match *code {
            "FLT" => json!(count),
            "INT" => json!(count.round() as i64),
            "BOOL" => json!((count.round() as i64) % 2 == 0),
            "STR" => json!(format!("{} voxels", count.round() as i64)),
            _ => json!({"inputs": summary}),
        };
        let out = match super_kind {
            SuperKind::Value => Output::Value(value),
            SuperKind::Image => match first_image {
                Some((meta, files)) => Output::Image {
                    meta: meta.clone(),
                    files: files.clone(),
                },
                None => return Err(format!("No input image to produce {slug} from")),
            },
            SuperKind::File => match inputs.iter().find(|(_, c, _)| c == code) {
                Some((_, _, Input::File(f))) => Output::Copy(f.clone()),
                _ => Output::Bytes {
                    name: relative_path
                        .rsplit('/')
                        .next()
                        .unwrap_or("output.json")
                        .to_string(),
                    bytes: serde_json::to_vec_pretty(&value).unwrap_or_default(),
                },
            },
        };
        made.push((*socket, out));
    }
    Ok(made)
}

/// Gather the inputs, derive the outputs, store their bytes and attach them to the job; returns the
/// job's stdout.
fn produce_outputs(app: &App, job: Uuid) -> Result<String, String> {
    let (inputs, outputs, creator) = {
        let w = lock(app);
        let j = w
            .algorithms
            .jobs
            .get(&job)
            .ok_or("The job no longer exists")?;
        let interface = w
            .algorithms
            .get(j.algorithm)
            .and_then(|a| a.interfaces.get(j.interface))
            .ok_or("The algorithm has no such interface")?;
        let mut inputs = Vec::new();
        for civ in j.inputs.values().filter_map(|pk| w.civs.get(pk)) {
            let Some(socket) = w.socket(civ.socket) else {
                continue;
            };
            let input = match &civ.content {
                CivContent::Value(v) => Input::Value(v.clone()),
                CivContent::File(f) => Input::File(f.clone()),
                CivContent::Image(pk) => {
                    let img = w.images.get(pk).ok_or("An input image no longer exists")?;
                    Input::Image {
                        meta: Box::new(img.meta.clone()),
                        files: img
                            .files
                            .iter()
                            .map(|f| (f.stored.name.clone(), f.stored.path.clone()))
                            .collect(),
                    }
                }
            };
            inputs.push((socket.slug.clone(), socket.kind.code, input));
        }
        let outputs: Vec<_> = interface
            .outputs
            .iter()
            .filter_map(|pk| w.socket(*pk))
            .map(|s| {
                (
                    s.pk,
                    s.slug.clone(),
                    s.kind.code,
                    s.super_kind,
                    s.relative_path.clone(),
                )
            })
            .collect();
        (inputs, outputs, j.creator)
    };
    let mut stdout: String = inputs
        .iter()
        .map(|(slug, _, _)| format!("Reading input {slug}\n"))
        .collect();
    let made = derive(&inputs, &outputs)?;
    let data_dir = app.data_dir.clone();
    let mut attach = Vec::new();
    for (socket, out) in made {
        let slug = outputs
            .iter()
            .find(|o| o.0 == socket)
            .map(|o| o.1.clone())
            .unwrap_or_default();
        stdout.push_str(&format!("Writing output {slug}\n"));
        let stored_err = |e: std::io::Error| {
            tracing::warn!(error = %e, "cannot store a job output");
            format!("Output {slug} could not be stored")
        };
        match out {
            Output::Value(v) => attach.push((socket, Produced::Value(v))),
            Output::Image { meta, files } => {
                let pk = Uuid::new_v4();
                let stored = store_image_files(&data_dir, pk, &meta, &files).map_err(stored_err)?;
                attach.push((
                    socket,
                    Produced::Image(Box::new(Image {
                        pk,
                        name: meta.name.clone(),
                        meta: *meta,
                        files: stored,
                        origin: None,
                        creator: Some(creator),
                        dicom_image_set_id: None,
                    })),
                ));
            }
            Output::Bytes { name, bytes } => {
                let civ = lock(app).next_civ_pk();
                let dest = data_dir.join("files").join(civ.to_string()).join(&name);
                let scratch = dest.with_extension("partial");
                let written = std::fs::create_dir_all(dest.parent().unwrap_or(&data_dir))
                    .and_then(|_| std::fs::write(&scratch, &bytes))
                    .and_then(|_| concat_files(std::slice::from_ref(&scratch), &dest));
                let _ = std::fs::remove_file(&scratch);
                let (size, sha256) = written.map_err(stored_err)?;
                attach.push((
                    socket,
                    Produced::File(
                        civ,
                        StoredFile {
                            name,
                            path: dest,
                            size,
                            sha256,
                        },
                    ),
                ));
            }
            Output::Copy(f) => {
                let civ = lock(app).next_civ_pk();
                let dest = data_dir.join("files").join(civ.to_string()).join(&f.name);
                let (size, sha256) =
                    concat_files(std::slice::from_ref(&f.path), &dest).map_err(stored_err)?;
                attach.push((
                    socket,
                    Produced::File(
                        civ,
                        StoredFile {
                            name: f.name,
                            path: dest,
                            size,
                            sha256,
                        },
                    ),
                ));
            }
        }
    }
    let mut w = lock(app);
    for (socket, produced) in attach {
        let civ = match produced {
            Produced::Value(v) => w.civ_for_value(socket, v),
            Produced::Image(image) => {
                let pk = image.pk;
                w.images.insert(pk, *image);
                w.civ_for_image(socket, pk)
            }
            Produced::File(pk, file) => {
                w.civs.insert(
                    pk,
                    Civ {
                        pk,
                        socket,
                        content: CivContent::File(file),
                    },
                );
                pk
            }
        };
        if let Some(j) = w.algorithms.jobs.get_mut(&job) {
            j.outputs.insert(socket, civ);
        }
    }
    Ok(stdout)
}

enum Produced {
    Value(Json),
    Image(Box<Image>),
    File(i64, StoredFile),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_django_prints_them() {
        assert_eq!(
            iso_duration(Duration::from_millis(200)),
            "P0DT00H00M00.200000S"
        );
        assert_eq!(iso_duration(Duration::from_secs(90_061)), "P1DT01H01M01S");
    }

    #[test]
    fn values_derive_from_the_inputs() {
        let inputs = vec![
            ("count".to_string(), "INT", Input::Value(json!(4))),
            ("weight".to_string(), "FLT", Input::Value(json!(1.5))),
        ];
        let outputs = vec![
            (
                1,
                "total".to_string(),
                "FLT",
                SuperKind::Value,
                "total.json".to_string(),
            ),
            (
                2,
                "even".to_string(),
                "BOOL",
                SuperKind::Value,
                "even.json".to_string(),
            ),
            (
                3,
                "report".to_string(),
                "JSON",
                SuperKind::File,
                "out/report.json".to_string(),
            ),
        ];
        let made = derive(&inputs, &outputs).unwrap();
        assert!(matches!(&made[0].1, Output::Value(v) if *v == json!(5.5)));
        assert!(
            matches!(&made[1].1, Output::Value(v) if *v == json!(true)),
            "5.5 rounds to 6"
        );
        match &made[2].1 {
            Output::Bytes { name, bytes } => {
                assert_eq!(name, "report.json");
                let v: Json = serde_json::from_slice(bytes).unwrap();
                assert_eq!(v["inputs"]["count"], 4);
            }
            _ => panic!("a JSON file output is written"),
        }
        let image_out = vec![(
            4,
            "copy".to_string(),
            "IMG",
            SuperKind::Image,
            "images/copy".to_string(),
        )];
        assert!(derive(&inputs, &image_out).is_err(), "no image to copy");
    }
}
