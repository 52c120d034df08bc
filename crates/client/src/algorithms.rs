//! Algorithms as targets: look an algorithm up with its interfaces, start a job on a case's inputs,
//! follow it, and find it again by its inputs after losing track of it.
//!
//! The endpoints and shapes are those gcapi 0.16.1 uses (`algorithms/`, `algorithms/jobs/`), which
//! mirror the platform's OpenAPI schema; see the sandbox's `algorithms` module for what is followed.
//! Inputs are the same `values` entries as an item's ([`ValueEntry`]), uploaded the same way. The job
//! representation carries no error message: a failed job says only "Failed".

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;

use super::client::{Client, check_pk};
use super::error::GcError;
use super::models::{ItemValue, Page, Socket, ValueEntry, ValueSource};
use super::retry::RequestKind;

/// The platform refuses a job because the account is at a limit (jobs at once, credits), not because
/// of the job: the same request succeeds later.
pub fn is_job_limit(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("have not finished yet") || m.contains("credits") || m.contains("too many jobs")
}

/// The platform refuses a job whose existing inputs an earlier job already had: that job is the result.
pub fn is_repeated_job(e: &GcError) -> bool {
    matches!(e, GcError::Rejected { status: 400, message, .. } if message.contains(REPEATED_JOB))
}

/// The platform's words for a job that repeats an earlier one.
pub const REPEATED_JOB: &str =
    "A result for these inputs with the current image and model already exists";

/// One set of sockets an algorithm takes, and the sockets it then produces.
#[derive(Debug, Clone, Deserialize)]
pub struct AlgorithmInterface {
    pub inputs: Vec<Socket>,
    pub outputs: Vec<Socket>,
}

/// An algorithm, as `GET algorithms/?slug=` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Algorithm {
    pub pk: String,
    pub slug: String,
    pub title: String,
    pub api_url: String,
    pub url: String,
    #[serde(default)]
    pub interfaces: Vec<AlgorithmInterface>,
}

impl Algorithm {
    /// The interface whose inputs are exactly these socket slugs (the platform runs a job only on a
    /// complete interface, and gcapi refuses anything else before uploading).
    pub fn interface_for<'a>(
        &self,
        slugs: impl IntoIterator<Item = &'a str>,
    ) -> Option<&AlgorithmInterface> {
        let given: Vec<&str> = slugs.into_iter().collect();
        let set: BTreeSet<&str> = given.iter().copied().collect();
        if set.len() != given.len() {
            return None;
        }
        self.interfaces.iter().find(|i| {
            let wanted: BTreeSet<&str> = i.inputs.iter().map(|s| s.slug.as_str()).collect();
            wanted == set
        })
    }

    /// The interfaces' input sets, for messages: `[ct-image] or [lesion-count]`.
    pub fn describe_interfaces(&self) -> String {
        self.interfaces
            .iter()
            .map(|i| {
                let slugs: Vec<&str> = i.inputs.iter().map(|s| s.slug.as_str()).collect();
                format!("[{}]", slugs.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

/// Where a job is in its life, from the platform's status label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Anything before an end: "Validating inputs", "Queued", "Started", "Re-Queued", "Provisioning",
    /// "Provisioned", "Executing", "Executed", "Parsing Outputs", "Executing Algorithm".
    Pending(String),
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn from_label(label: &str) -> JobStatus {
        match label {
            "Succeeded" => JobStatus::Succeeded,
            "Failed" => JobStatus::Failed,
            "Cancelled" => JobStatus::Cancelled,
            other => JobStatus::Pending(other.to_owned()),
        }
    }

    pub fn label(&self) -> &str {
        match self {
            JobStatus::Pending(l) => l,
            JobStatus::Succeeded => "Succeeded",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    pub fn is_final(&self) -> bool {
        !matches!(self, JobStatus::Pending(_))
    }

    /// The integer code the `status` filter of the job list takes.
    pub fn code(&self) -> Option<u8> {
        match self {
            JobStatus::Succeeded => Some(4),
            JobStatus::Failed => Some(3),
            JobStatus::Cancelled => Some(5),
            JobStatus::Pending(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| JobStatus::from_label(&s))
    }
}

/// A job, as `GET algorithms/jobs/{pk}/` returns it (inputs and outputs with their whole sockets).
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub pk: String,
    /// The job's page on the platform.
    #[serde(default)]
    pub url: String,
    pub api_url: String,
    pub algorithm: String,
    pub status: JobStatus,
    #[serde(default)]
    pub inputs: Vec<ItemValue>,
    #[serde(default)]
    pub outputs: Vec<ItemValue>,
    /// ISO-8601, once it ran.
    #[serde(default)]
    pub exec_duration: Option<String>,
}

impl Job {
    /// Whether the job was given exactly these values and existing images. `None` when an input is an
    /// upload: uploaded files and images have no identity on the platform until the job holds them.
    pub fn has_inputs(&self, inputs: &[ValueEntry]) -> Option<bool> {
        let mut same = self.inputs.len() == inputs.len();
        for entry in inputs {
            let given = self.input(&entry.socket);
            same &= match &entry.source {
                ValueSource::Value(v) => given.is_some_and(|g| g.value.as_ref() == Some(v)),
                ValueSource::Image(url) => given.is_some_and(|g| g.image.as_ref() == Some(url)),
                ValueSource::UserUpload(_)
                | ValueSource::UserUploads(_)
                | ValueSource::DicomImageSet { .. } => return None,
            };
        }
        Some(same)
    }

    pub fn input(&self, socket_slug: &str) -> Option<&ItemValue> {
        self.inputs
            .iter()
            .find(|v| v.interface.slug() == socket_slug)
    }

    pub fn output(&self, socket_slug: &str) -> Option<&ItemValue> {
        self.outputs
            .iter()
            .find(|v| v.interface.slug() == socket_slug)
    }
}

/// The answer to starting a job: the inputs that exist at once (values, existing images).
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedJob {
    pub pk: String,
    pub status: JobStatus,
    #[serde(default)]
    pub inputs: Vec<ItemValue>,
}

/// Which jobs to list. Only the caller's own jobs (and those of algorithms it edits) are ever listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// The algorithm's pk.
    pub algorithm: Option<String>,
    /// The pk of an image among the inputs.
    pub input_image: Option<String>,
    /// Only jobs that ended this way.
    pub status: Option<JobStatus>,
}

/// How patiently to follow a job: the first pause between polls doubles up to `max_poll`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPolling {
    pub first_poll: Duration,
    pub max_poll: Duration,
    pub deadline: Duration,
}

impl Default for JobPolling {
    fn default() -> Self {
        JobPolling {
            first_poll: Duration::from_millis(250),
            max_poll: Duration::from_secs(5),
            deadline: Duration::from_secs(24 * 3600),
        }
    }
}

impl JobPolling {
    /// The pause after `polls` polls, jittered down by up to a quarter with `jitter` in `[0, 1)`.
    pub fn pause(&self, polls: u32, jitter: f64) -> Duration {
        let doubled = self
            .first_poll
            .saturating_mul(1u32 << polls.min(20))
            .min(self.max_poll);
        doubled.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0))
    }
}

impl Client {
    /// An algorithm by slug, with its interfaces. Not found means "does not exist or this token may not
    /// see it".
    pub async fn algorithm(&self, slug: &str) -> Result<Algorithm, GcError> {
        let context = format!("looking up algorithm '{slug}'");
        let page: Page<Algorithm> = self
            .page("algorithms/", &[("slug", slug)], 0, &context)
            .await?;
        let found = page
            .results
            .into_iter()
            .find(|a| a.slug == slug)
            .ok_or_else(|| {
                GcError::NotFound(format!(
                    "algorithm '{slug}' does not exist or this token has no access to it"
                ))
            })?;
        check_pk("the algorithm's pk", &found.pk)?;
        Ok(found)
    }

    /// Start a job. The inputs must make up exactly one of the algorithm's interfaces; that is checked
    /// here, before the request, because nothing else about a job can be checked after it started.
    pub async fn start_job(
        &self,
        algorithm: &Algorithm,
        inputs: &[ValueEntry],
    ) -> Result<CreatedJob, GcError> {
        if algorithm
            .interface_for(inputs.iter().map(|e| e.socket.as_str()))
            .is_none()
        {
            let given: Vec<&str> = inputs.iter().map(|e| e.socket.as_str()).collect();
            return Err(GcError::Config(format!(
                "the inputs [{}] match no interface of algorithm '{}', which takes {}",
                given.join(", "),
                algorithm.slug,
                algorithm.describe_interfaces()
            )));
        }
        let body = serde_json::json!({"algorithm": algorithm.api_url, "inputs": inputs});
        let context = format!("starting a job of algorithm '{}'", algorithm.slug);
        self.call(
            Method::POST,
            self.api_url("algorithms/jobs/")?,
            Some(&body),
            // Like creating an item: a repeat could start a second job, so only a request that
            // certainly had no effect is repeated; the caller finds a job whose answer was lost.
            RequestKind::Create,
            &context,
        )
        .await
        .map_err(|e| match e {
            GcError::Rejected {
                status: 400,
                message,
                ..
            } if is_job_limit(&message) => GcError::JobLimit(message),
            e => e,
        })
    }

    pub async fn job(&self, pk: &str) -> Result<Job, GcError> {
        check_pk("job", pk)?;
        let url = self.api_url(&format!("algorithms/jobs/{pk}/"))?;
        self.get_json(url, &format!("reading job {pk}")).await
    }

    /// Every job the filter selects, oldest first.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, GcError> {
        let status = filter
            .status
            .as_ref()
            .and_then(JobStatus::code)
            .map(|c| c.to_string());
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &filter.algorithm {
            params.push(("algorithm_image__algorithm", a));
        }
        if let Some(i) = &filter.input_image {
            params.push(("image", i));
        }
        if let Some(s) = &status {
            params.push(("status", s));
        }
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        self.walk("algorithms/jobs/", &params, "listing jobs", |job: Job| {
            if seen.insert(job.pk.clone()) {
                all.push(job);
            }
            ControlFlow::Continue(())
        })
        .await?;
        Ok(all)
    }

    /// This caller's jobs of `algorithm` that were given exactly these values and existing images: how
    /// a job whose creation answer was lost is found again. Inputs that are uploads cannot be matched
    /// (see [`Job::has_inputs`]) and are refused.
    pub async fn jobs_with_inputs(
        &self,
        algorithm: &Algorithm,
        inputs: &[ValueEntry],
    ) -> Result<Vec<Job>, GcError> {
        let uploaded = inputs
            .iter()
            .any(|e| !matches!(e.source, ValueSource::Value(_) | ValueSource::Image(_)));
        if uploaded {
            return Err(GcError::Config(
                "jobs can be found by their inputs only when these are values or existing images"
                    .into(),
            ));
        }
        let image = inputs.iter().find_map(|e| match &e.source {
            ValueSource::Image(url) => url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .map(str::to_owned),
            _ => None,
        });
        let filter = JobFilter {
            algorithm: Some(algorithm.pk.clone()),
            input_image: image,
            status: None,
        };
        let mut found = self.jobs(&filter).await?;
        found.retain(|job| job.has_inputs(inputs) == Some(true));
        Ok(found)
    }

    /// Poll a job with back-off until it has ended. A job still pending at the deadline is an error
    /// that says how long it was followed and where it stood.
    pub async fn await_job(&self, pk: &str, polling: &JobPolling) -> Result<Job, GcError> {
        let start = Instant::now();
        let mut polls = 0;
        loop {
            let job = self.job(pk).await?;
            if job.status.is_final() {
                return Ok(job);
            }
            if start.elapsed() >= polling.deadline {
                return Err(GcError::VerifyTimeout {
                    socket: format!("job {pk} ({})", job.status.label()),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(polling.pause(polls, self.jitter())).await;
            polls += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(slug: &str) -> Socket {
        Socket {
            pk: 1,
            slug: slug.into(),
            title: slug.into(),
            kind: "Integer".into(),
            super_kind: super::super::models::SuperKind::Value,
            relative_path: format!("{slug}.json"),
        }
    }

    fn algorithm() -> Algorithm {
        let interface = |inputs: &[&str]| AlgorithmInterface {
            inputs: inputs.iter().map(|s| socket(s)).collect(),
            outputs: vec![socket("out")],
        };
        Algorithm {
            pk: "p".into(),
            slug: "a".into(),
            title: "A".into(),
            api_url: "u".into(),
            url: "u".into(),
            interfaces: vec![interface(&["ct"]), interface(&["ct", "notes"])],
        }
    }

    #[test]
    fn inputs_must_match_one_interface_exactly() {
        let a = algorithm();
        let inputs = |i: &[&str]| a.interface_for(i.iter().copied()).map(|f| f.inputs.len());
        assert_eq!(inputs(&["ct"]), Some(1));
        assert_eq!(inputs(&["notes", "ct"]), Some(2));
        assert_eq!(inputs(&["notes"]), None);
        assert_eq!(
            inputs(&["ct", "ct"]),
            None,
            "a socket twice is no interface"
        );
        assert_eq!(inputs(&["ct", "notes", "x"]), None);
        assert_eq!(a.describe_interfaces(), "[ct] or [ct, notes]");
    }

    #[test]
    fn limits_of_the_account_are_told_from_refusals_of_the_job() {
        assert!(is_job_limit(
            "non_field_errors: You have 2 jobs of this algorithm that have not finished yet; please try again once one of them has finished."
        ));
        assert!(is_job_limit("You have run out of algorithm credits"));
        assert!(!is_job_limit(
            "non_field_errors: The set of inputs provided does not match any of the algorithm's interfaces."
        ));
        let repeated = GcError::Rejected {
            status: 400,
            context: "starting a job".into(),
            message: format!("non_field_errors: {REPEATED_JOB}."),
            body: Box::new(serde_json::Value::Null),
        };
        assert!(is_repeated_job(&repeated));
        assert!(!is_repeated_job(&GcError::JobLimit(REPEATED_JOB.into())));
    }

    #[test]
    fn statuses_from_labels() {
        assert!(JobStatus::from_label("Succeeded").is_final());
        assert!(!JobStatus::from_label("Validating inputs").is_final());
        assert_eq!(JobStatus::from_label("Executing").label(), "Executing");
        assert_eq!(JobStatus::Failed.code(), Some(3));
    }

    #[test]
    fn polling_backs_off_to_its_maximum() {
        let p = JobPolling {
            first_poll: Duration::from_millis(100),
            max_poll: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
        };
        assert_eq!(p.pause(0, 0.0), Duration::from_millis(100));
        assert_eq!(p.pause(2, 0.0), Duration::from_millis(400));
        assert_eq!(p.pause(40, 0.0), Duration::from_secs(1));
        assert_eq!(p.pause(40, 1.0), Duration::from_millis(750));
    }
}
