//! A case of an algorithm folder as one job: its inputs uploaded, one job started with them, the job
//! followed until it ends, and its outputs written to the outbox as a case folder.
//!
//! Exactly once: the journal records that a request to start a job is about to be sent, and the job's
//! pk as soon as the answer names it. A request whose answer was lost (a crash, a cut connection) leaves
//! the first record without the second; the next attempt then looks for that job among this account's
//! jobs of the algorithm before starting one: a job no case of the journal holds, whose inputs are the
//! case's (values equal, the same sockets). Uploaded images have no identity to compare until the job
//! holds them, so no other start goes out while one is unconfirmed (the journal refuses it, across
//! processes too): there is never more than one job of ours that no case holds. When every input already
//! exists on the platform, the platform itself refuses a second job with the same inputs, and that
//! earlier job is the result.
//!
//! Limits of the account (unfinished jobs at once, credits) make the case wait, not fail.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Checkpoints, Deidentified, DeliverError, Delivered, ItemStart, Privacy, Route, SocketResult,
    prepare, quarantine, route, sent_files, upload_all, value_entries,
};
use crate::journal::{JobStart, Step};
use crate::outbox::Written;
use crate::rules::Plan;
use gc_client::algorithms::{Algorithm, Job, JobFilter, JobStatus, is_repeated_job};
use gc_client::models::ValueSource;
use gc_client::verify::{VerifyTiming, session_for};
use gc_client::{Client, GcError, Target, ValueEntry};

/// Requests to start jobs go out one at a time, so that after a crash at most one job of this process
/// can be without its case.
static JOB_STARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest pause between two looks at a running job: a job's results reach the outbox at most this
/// long after it ended, plus the download. Half a second below the 2 s goal for that whole delay
/// (`cargo bench --bench algorithm`), which a job ending just after a look would miss with a 2 s pause.
pub const MAX_JOB_POLL: Duration = Duration::from_millis(1500);

/// How long a job is followed before the case is given up on.
pub const JOB_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// What the receipt says of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDone {
    pub pk: String,
    /// The job's page on the platform, where its logs are shown.
    pub url: String,
    /// The platform's status label when it ended ("Succeeded", "Failed", ...).
    pub status: String,
    /// How long the algorithm ran (ISO-8601), as the platform says.
    #[serde(default)]
    pub exec_duration: Option<String>,
    /// The case's folder in the outbox.
    pub outbox: String,
    /// The files written there, relative to that folder (empty when the folder was already complete).
    #[serde(default)]
    pub files: Vec<String>,
    /// The job's outputs as the platform holds them.
    #[serde(default)]
    pub outputs: Vec<OutputReceipt>,
}

/// One output of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputReceipt {
    pub slug: String,
    pub value_pk: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl From<&gc_client::ItemValue> for OutputReceipt {
    fn from(v: &gc_client::ItemValue) -> Self {
        let SocketResult {
            slug,
            value_pk,
            value,
            image,
            file,
        } = SocketResult::from(v);
        OutputReceipt {
            slug,
            value_pk,
            value,
            image,
            file,
        }
    }
}

/// One case going to an algorithm.
pub(super) struct Run<'a> {
    pub case_dir: &'a Path,
    pub plan: &'a Plan,
    pub target: Target,
    pub timing: &'a VerifyTiming,
    pub cp: &'a dyn Checkpoints,
    pub privacy: Option<&'a Privacy>,
    pub outbox: crate::outbox::Outbox<'a>,
}

/// Start (or find again) the case's job, follow it and write its outputs to the outbox.
pub(super) async fn deliver_job(
    client: &Client,
    run: Run<'_>,
    start: ItemStart,
) -> Result<Delivered, DeliverError> {
    let Run {
        case_dir,
        plan,
        target,
        timing,
        cp,
        privacy,
        outbox,
    } = run;
    let algorithm = client
        .algorithm(&plan.target_slug)
        .await
        .map_err(|e| match e {
            GcError::NotFound(m) => quarantine(m),
            e => e.into(),
        })?;
    let (routes, outputs) = checked_inputs(case_dir, plan, &algorithm)?;
    let mut deidentified = prepare(
        case_dir,
        plan,
        &routes,
        privacy,
        None,
        &mut super::Timings::default(),
    )
    .await?;

    // A new job's results replace what an earlier job of the case left in the outbox; a job followed
    // again may have written its own results before a crash.
    let existing = match start {
        ItemStart::New => crate::outbox::Existing::Replace,
        ItemStart::Existing(_) => crate::outbox::Existing::Keep,
    };
    let (pk, entries) = match start {
        ItemStart::Existing(pk) => {
            // The attempt that started the job sent every file.
            deidentified.sent = sent_files(&routes);
            (pk, vec![])
        }
        ItemStart::New => {
            let started = Started {
                client,
                algorithm: &algorithm,
                case_dir,
                routes: &routes,
                cp,
            };
            started.start_or_find(&mut deidentified).await?
        }
    };

    cp.step(Step::Running).map_err(DeliverError::Checkpoint)?;
    let job = follow(client, &pk, timing, cp).await?;
    succeeded(client, &job, &algorithm, &outputs, &entries).await?;
    let (box_dir, files) = write_outputs(client, &job, plan, outbox, existing).await?;
    Ok(Delivered {
        item_api_url: job.api_url.clone(),
        item_pk: job.pk.clone(),
        target,
        sockets: job.inputs.iter().map(SocketResult::from).collect(),
        deidentified,
        job: Some(JobDone {
            url: job.url.clone(),
            status: job.status.label().to_owned(),
            exec_duration: job.exec_duration.clone(),
            outbox: crate::rules::path_text(&box_dir),
            files,
            outputs: job.outputs.iter().map(OutputReceipt::from).collect(),
            pk: job.pk,
        }),
    })
}

/// Each input socket's slug with what it sends.
type Routes<'a> = Vec<(&'a str, Route<'a>)>;

/// Everything checkable, checked before a job exists: the sockets are the algorithm's inputs, the
/// case's inputs make up one of its interfaces, the values and images are what those sockets take.
/// The routes of the inputs, and the outputs the interface promises.
fn checked_inputs<'a>(
    case_dir: &Path,
    plan: &'a Plan,
    algorithm: &'a Algorithm,
) -> Result<(Routes<'a>, Vec<String>), DeliverError> {
    let mut routes = Vec::with_capacity(plan.sockets.len());
    for sp in &plan.sockets {
        let socket = algorithm
            .interfaces
            .iter()
            .flat_map(|i| &i.inputs)
            .find(|s| s.slug == sp.slug)
            .ok_or_else(|| {
                quarantine(format!(
                    "socket {} is not an input of algorithm {}, which takes {}; no job was started",
                    sp.slug,
                    algorithm.slug,
                    algorithm.describe_interfaces()
                ))
            })?;
        routes.push((sp.slug.as_str(), route(case_dir, socket, &sp.source)?));
    }
    let Some(interface) = algorithm.interface_for(plan.sockets.iter().map(|s| s.slug.as_str()))
    else {
        let given: Vec<&str> = plan.sockets.iter().map(|s| s.slug.as_str()).collect();
        return Err(quarantine(format!(
            "the case's inputs [{}] match no interface of algorithm {}, which takes {}; no job was \
             started",
            given.join(", "),
            algorithm.slug,
            algorithm.describe_interfaces()
        )));
    };
    let outputs = interface.outputs.iter().map(|s| s.slug.clone()).collect();
    Ok((routes, outputs))
}

/// A job that ended: quarantined unless it succeeded with every output its interface names.
async fn succeeded(
    client: &Client,
    job: &Job,
    algorithm: &Algorithm,
    outputs: &[String],
    entries: &[ValueEntry],
) -> Result<(), DeliverError> {
    if job.status != JobStatus::Succeeded {
        let why = failure(client, job, entries).await;
        return Err(quarantine(format!(
            "job {} of algorithm {} ended {}{why}. The platform shows the job, its error and its \
             logs on {}",
            job.pk,
            algorithm.slug,
            job.status.label(),
            job.url
        )));
    }
    let missing: Vec<&str> = outputs
        .iter()
        .map(String::as_str)
        .filter(|slug| job.output(slug).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(quarantine(format!(
            "job {} of algorithm {} succeeded without the output(s) {} its interface names; nothing \
             was written to the outbox",
            job.pk,
            algorithm.slug,
            missing.join(", ")
        )));
    }
    Ok(())
}

/// The job's outputs written to the case's folder in the outbox: that folder, and the files written
/// (none when an earlier attempt wrote them).
async fn write_outputs(
    client: &Client,
    job: &Job,
    plan: &Plan,
    outbox: crate::outbox::Outbox<'_>,
    existing: crate::outbox::Existing,
) -> Result<(std::path::PathBuf, Vec<String>), DeliverError> {
    // A case deeper in the drop folder (site-a/p1) keeps its place in the outbox, so that two cases of
    // one name in different sites never share a folder.
    let (box_dir, name) = match plan.case_path.rsplit_once('/') {
        Some((parent, name)) => (outbox.dir.join(parent), name),
        None => (outbox.dir.to_path_buf(), plan.case_path.as_str()),
    };
    let written = crate::outbox::write_case(
        client,
        (&box_dir, outbox.sharing),
        name,
        &job.outputs,
        existing,
    )
    .await
    .map_err(|e| DeliverError::Local(format!("job {} succeeded, but {e}", job.pk)))?;
    let files = match written {
        Written::New(files) => files,
        Written::AlreadyThere => vec![],
    };
    Ok((box_dir.join(name), files))
}

/// Starting a case's job.
struct Started<'a> {
    client: &'a Client,
    algorithm: &'a Algorithm,
    case_dir: &'a Path,
    routes: &'a [(&'a str, Route<'a>)],
    cp: &'a dyn Checkpoints,
}

impl Started<'_> {
    /// Upload the files, then start the job, unless the journal says an earlier request may have started
    /// it and that job is found. Returns the job's pk and the inputs it was given.
    async fn start_or_find(
        &self,
        deidentified: &mut Deidentified,
    ) -> Result<(String, Vec<ValueEntry>), DeliverError> {
        let (client, algorithm, cp) = (self.client, self.algorithm, self.cp);
        cp.step(Step::Uploading).map_err(DeliverError::Checkpoint)?;
        let uploads = upload_all(client, self.case_dir, self.routes, deidentified, cp).await?;
        let entries: Vec<ValueEntry> = value_entries(self.routes, &[], &uploads)
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        if !cp.unchanged() {
            return Err(DeliverError::Changed);
        }
        let _one_at_a_time = JOB_STARTS.lock().await;
        let in_doubt = match cp
            .job_starting(&algorithm.slug)
            .map_err(DeliverError::Checkpoint)?
        {
            JobStart::Fresh => false,
            JobStart::InDoubt => true,
            JobStart::AfterOther(case) => {
                return Err(DeliverError::Local(format!(
                    "waiting until the start of the job of case {} is confirmed: jobs of an \
                     algorithm are started one at a time until then",
                    crate::rules::path_text(&case)
                )));
            }
        };
        if in_doubt && let Some(job) = self.find_lost(&entries).await? {
            tracing::info!(job = %job.pk, "found the job an earlier attempt started, whose answer was lost");
            cp.item(&job.pk).map_err(DeliverError::Checkpoint)?;
            return Ok((job.pk, entries));
        }
        match client.start_job(algorithm, &entries).await {
            Ok(created) => {
                cp.item(&created.pk).map_err(DeliverError::Checkpoint)?;
                tracing::info!(job = %created.pk, status = created.status.label(), "job started");
                Ok((created.pk, entries))
            }
            Err(e) if is_repeated_job(&e) => {
                // Every input already existed and a job had them: that job is this case's result.
                let claimed = cp
                    .claimed_jobs(&algorithm.slug)
                    .map_err(DeliverError::Checkpoint)?;
                let mut found = client.jobs_with_inputs(algorithm, &entries).await?;
                found.sort_by_key(|j| claimed.contains(&j.pk));
                let Some(job) = found.into_iter().next() else {
                    cp.job_refused().map_err(DeliverError::Checkpoint)?;
                    return Err(quarantine(format!("{e}; no job was started")));
                };
                tracing::info!(job = %job.pk, "the platform already ran the algorithm on these inputs");
                cp.item(&job.pk).map_err(DeliverError::Checkpoint)?;
                Ok((job.pk, entries))
            }
            Err(e @ GcError::JobLimit(_)) => {
                cp.job_refused().map_err(DeliverError::Checkpoint)?;
                Err(DeliverError::Later(Box::new(e)))
            }
            Err(e @ GcError::Rejected { .. }) => {
                cp.job_refused().map_err(DeliverError::Checkpoint)?;
                Err(quarantine(format!("{e}; no job was started")))
            }
            // The request may have reached the platform: the journal keeps it in doubt.
            Err(e) => Err(e.into()),
        }
    }

    /// The job an earlier request of this case started, if the platform has it: the newest job of the
    /// algorithm that no other case holds and whose inputs fit the case's. Inputs still being imported
    /// (or whose import failed) are not shown yet, so a job may show fewer inputs than it was given,
    /// never others.
    async fn find_lost(&self, entries: &[ValueEntry]) -> Result<Option<Job>, DeliverError> {
        let claimed = self
            .cp
            .claimed_jobs(&self.algorithm.slug)
            .map_err(DeliverError::Checkpoint)?;
        let filter = JobFilter {
            algorithm: Some(self.algorithm.pk.clone()),
            ..JobFilter::default()
        };
        let jobs = self.client.jobs(&filter).await?;
        Ok(jobs
            .into_iter()
            .rev()
            .filter(|j| !claimed.contains(&j.pk))
            .find(|j| fits(j, entries)))
    }
}

/// Could `job` have been started with `entries`? Every input it shows is one of theirs, with the same
/// value where the entry is a value or an existing image.
pub fn fits(job: &Job, entries: &[ValueEntry]) -> bool {
    job.inputs.iter().all(|input| {
        let Some(entry) = entries.iter().find(|e| e.socket == input.interface.slug()) else {
            return false;
        };
        match &entry.source {
            ValueSource::Value(v) => input.value.as_ref() == Some(v),
            ValueSource::Image(url) => input.image.as_ref() == Some(url),
            ValueSource::UserUpload(_)
            | ValueSource::UserUploads(_)
            | ValueSource::DicomImageSet { .. } => true,
        }
    }) && (job.status != JobStatus::Succeeded || job.inputs.len() == entries.len())
}

/// Poll the job until it has ended: often at first, then less often, but never more than
/// [`MAX_JOB_POLL`] apart, so that its results follow its end closely.
async fn follow(
    client: &Client,
    pk: &str,
    timing: &VerifyTiming,
    cp: &dyn Checkpoints,
) -> Result<Job, DeliverError> {
    let start = Instant::now();
    let mut last = None;
    loop {
        let job = client.job(pk).await?;
        if last.as_ref() != Some(&job.status) {
            tracing::info!(job = %pk, status = job.status.label(), "job");
            cp.job_status(pk, job.status.label());
            last = Some(job.status.clone());
        }
        if job.status.is_final() {
            return Ok(job);
        }
        if start.elapsed() >= JOB_DEADLINE {
            return Err(quarantine(format!(
                "job {pk} was still {} after {}; it was given up on (it may still end on the platform: \
                 retry the case to follow it again)",
                job.status.label(),
                humantime::format_duration(JOB_DEADLINE)
            )));
        }
        tokio::time::sleep(job_pause(start.elapsed(), timing)).await;
    }
}

/// The pause before the next look at a job that has been followed for `elapsed`: an eighth of that,
/// between the first poll and [`MAX_JOB_POLL`], so a job is seen ended at most an eighth of its run
/// time (and never more than 1.5 s) late.
pub fn job_pause(elapsed: Duration, timing: &VerifyTiming) -> Duration {
    (elapsed / 8).clamp(timing.first_poll, MAX_JOB_POLL.max(timing.first_poll))
}

/// What the platform says of a job that did not succeed, as far as its API tells: an input whose import
/// failed is reported by that import's session. The job's own error and logs are shown on its page only.
async fn failure(client: &Client, job: &Job, entries: &[ValueEntry]) -> String {
    let missing: Vec<&ValueEntry> = entries
        .iter()
        .filter(|e| job.input(&e.socket).is_none())
        .collect();
    if missing.is_empty() {
        return String::new();
    }
    let sessions = match client.upload_sessions().await {
        Ok(s) => s,
        Err(e) => return format!(" (the import sessions could not be read: {e})"),
    };
    for e in &missing {
        let ValueSource::UserUploads(uploads) = &e.source else {
            continue;
        };
        if let Some(s) = session_for(&sessions, uploads)
            && s.status == "Failed"
        {
            let message = s.error_message.clone().unwrap_or_default();
            return format!(": its input {} could not be imported: {message}", e.socket);
        }
    }
    let slugs: Vec<&str> = missing.iter().map(|e| e.socket.as_str()).collect();
    format!(": its input(s) {} never arrived", slugs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gc_client::ItemValue;
    use gc_client::models::InterfaceRef;

    fn job(status: JobStatus, inputs: &[(&str, serde_json::Value)]) -> Job {
        Job {
            pk: "j".into(),
            url: String::new(),
            api_url: String::new(),
            algorithm: String::new(),
            status,
            inputs: inputs
                .iter()
                .enumerate()
                .map(|(i, (slug, v))| ItemValue {
                    pk: i as i64,
                    interface: InterfaceRef::Slug(slug.to_string()),
                    value: Some(v.clone()),
                    file: None,
                    image: None,
                })
                .collect(),
            outputs: vec![],
            exec_duration: None,
        }
    }

    fn value(socket: &str, v: serde_json::Value) -> ValueEntry {
        ValueEntry {
            socket: socket.into(),
            source: ValueSource::Value(v),
        }
    }

    fn upload(socket: &str) -> ValueEntry {
        ValueEntry {
            socket: socket.into(),
            source: ValueSource::UserUploads(vec!["u".into()]),
        }
    }

    #[test]
    fn a_lost_job_is_recognised_by_its_inputs() {
        let entries = [upload("ct"), value("age", serde_json::json!(61))];
        // Still importing the image: only the value shows, and it is the case's.
        let pending = job(
            JobStatus::Pending("Queued".into()),
            &[("age", serde_json::json!(61))],
        );
        assert!(fits(&pending, &entries));
        // Another value: another case's job.
        let other = job(
            JobStatus::Pending("Queued".into()),
            &[("age", serde_json::json!(62))],
        );
        assert!(!fits(&other, &entries));
        // A socket the case does not give.
        let foreign = job(
            JobStatus::Pending("Queued".into()),
            &[("notes", serde_json::json!("x"))],
        );
        assert!(!fits(&foreign, &entries));
        // A job that succeeded shows all its inputs: fewer means it was given fewer.
        let partial = job(JobStatus::Succeeded, &[("age", serde_json::json!(61))]);
        assert!(!fits(&partial, &entries));
    }

    #[test]
    fn a_job_is_looked_at_more_rarely_as_it_runs_but_at_least_every_one_and_a_half_seconds() {
        let t = VerifyTiming::default();
        assert_eq!(job_pause(Duration::ZERO, &t), t.first_poll);
        assert_eq!(
            job_pause(Duration::from_secs(8), &t),
            Duration::from_secs(1)
        );
        assert_eq!(
            job_pause(Duration::from_secs(3600), &t),
            Duration::from_millis(1500)
        );
    }
}
