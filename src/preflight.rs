//! Does the platform have what a drop folder names: its archive or reader study, and every socket, of a
//! kind its rule can fill? `check --online` prints the answer; the agent asks the same at start and after
//! a reload, and holds a folder whose answer is no, so that a misspelled slug keeps its cases waiting
//! instead of quarantining (and moving away) every one of them. An algorithm folder's sockets must also
//! be able to make up one of the algorithm's interfaces exactly: the platform runs a job on nothing else.

use crate::config::{Folder, RuleSource};
use crate::deliver::SourceShape;
use gc_client::{Algorithm, Client, GcError};

/// What the platform said about one drop folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderCheck {
    /// One line per thing checked, for `check --online`.
    pub lines: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target and every socket exist and fit.
    Usable,
    /// Something the folder names does not exist or does not fit; no delivery can succeed until the
    /// config (or the platform) changes. The text says what.
    Unusable(String),
    /// The platform could not answer (unreachable, token refused): ask again later.
    Unknown(String),
}

/// Failures that say the thing looked up is not there, as opposed to the platform not answering.
fn is_absent(e: &GcError) -> bool {
    matches!(e, GcError::NotFound(_) | GcError::Rejected { .. })
}

/// Ask the platform about `folder`'s target and sockets.
pub async fn check_folder(client: &Client, folder: &Folder) -> FolderCheck {
    let i = folder.index;
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut unknown = None;
    match client
        .resolve_target(folder.target, &folder.target_slug)
        .await
    {
        Ok(t) => lines.push(format!("folder[{i}] target {} found ({})", t.slug, t.url)),
        Err(e) => {
            lines.push(format!("folder[{i}] target {}: {e}", folder.target_slug));
            if is_absent(&e) {
                problems.push(e.to_string());
            } else {
                unknown.get_or_insert(e.to_string());
            }
        }
    }
    // A failed lookup is already reported by the target's lookup above.
    if folder.target == gc_client::TargetKind::Algorithm
        && let Ok(a) = client.algorithm(&folder.target_slug).await
    {
        match interface_check(&a, folder) {
            Ok(line) => lines.push(format!("folder[{i}] {line}")),
            Err(why) => {
                lines.push(format!("folder[{i}] {why}"));
                problems.push(why);
            }
        }
    }
    for rule in &folder.sockets {
        match client.socket(&rule.slug).await {
            Ok(s) => match crate::deliver::fits(shape(&rule.source), &s) {
                Ok(()) => lines.push(format!(
                    "folder[{i}] socket {}: {} ({:?}) fits",
                    s.slug, s.kind, s.super_kind
                )),
                Err(why) => {
                    lines.push(format!("folder[{i}] socket {}: {why}", s.slug));
                    problems.push(why);
                }
            },
            Err(e) => {
                lines.push(format!("folder[{i}] socket {}: {e}", rule.slug));
                if is_absent(&e) {
                    problems.push(e.to_string());
                } else {
                    unknown.get_or_insert(e.to_string());
                }
            }
        }
    }
    let verdict = match (problems.is_empty(), unknown) {
        (false, _) => Verdict::Unusable(problems.join("; ")),
        (true, Some(e)) => Verdict::Unknown(e),
        (true, None) => Verdict::Usable,
    };
    FolderCheck { lines, verdict }
}

/// Whether the folder's socket rules can make up one of the algorithm's interfaces exactly: some
/// interface takes every required socket, and nothing but the folder's sockets.
pub fn interface_check(algorithm: &Algorithm, folder: &Folder) -> Result<String, String> {
    let required: Vec<&str> = folder
        .sockets
        .iter()
        .filter(|r| !r.optional)
        .map(|r| r.slug.as_str())
        .collect();
    let fits = algorithm.interfaces.iter().find(|interface| {
        let takes = |slug: &str| interface.inputs.iter().any(|s| s.slug == slug);
        required.iter().all(|slug| takes(slug))
            && interface
                .inputs
                .iter()
                .all(|s| folder.sockets.iter().any(|r| r.slug == s.slug))
    });
    let given: Vec<&str> = folder.sockets.iter().map(|r| r.slug.as_str()).collect();
    match fits {
        Some(interface) => {
            let inputs: Vec<&str> = interface.inputs.iter().map(|s| s.slug.as_str()).collect();
            Ok(format!(
                "algorithm {}: the sockets fit its interface [{}]",
                algorithm.slug,
                inputs.join(", ")
            ))
        }
        None => Err(format!(
            "algorithm {}: the sockets [{}] make up none of its interfaces, which take {}",
            algorithm.slug,
            given.join(", "),
            algorithm.describe_interfaces()
        )),
    }
}

/// The shape of a config rule's source, to judge it against a socket before any case exists.
fn shape(source: &RuleSource) -> SourceShape {
    match source {
        RuleSource::Files { .. } => SourceShape::Files,
        RuleSource::DicomImageSet { .. } => SourceShape::DicomImageSet,
        RuleSource::ValueFile(_) => SourceShape::ValueFile,
        RuleSource::Value(_) => SourceShape::Value,
    }
}
