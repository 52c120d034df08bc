//! Algorithms as a fixture declares them (`[[algorithm]]`), the demo world's algorithms, and the check
//! that a fixture's algorithms can run: names resolve and the executor can produce every output.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use uuid::Uuid;

use super::fixture::Fixture;
use gc_content::kinds::{Family, SuperKind};

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
