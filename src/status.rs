//! What each drop folder holds, from the config and the journal: cases by state, the oldest waiting, the
//! last delivery, quarantined cases with their reasons, pauses and holds. `status` prints it and the
//! metrics endpoint serves it; it only reads.

use crate::config::Config;
use crate::journal::{CaseRecord, CaseState, Journal, Step};

/// What `status` reports for one drop folder.
#[derive(Debug, serde::Serialize)]
pub struct FolderStatus {
    pub folder: String,
    pub target: String,
    pub counts: std::collections::BTreeMap<String, i64>,
    /// The case waiting longest (not delivered, not quarantined), with the time of its last change.
    pub oldest_waiting: Option<(String, String)>,
    pub last_delivery: Option<(String, String)>,
    pub quarantined: Vec<QuarantinedCase>,
    /// Every case not delivered yet, with why it waits: still settling (and for what), held, a job's
    /// status, a wait for the platform's import (with the item's page).
    pub notes: Vec<(String, String)>,
    /// Paused with `gc-hotfolder pause`: cases are watched but not delivered.
    pub paused: bool,
    /// The folder's target is paused because the platform refused the token: until when, and why.
    pub target_paused: Option<(String, String)>,
    /// The running agent holds this folder's cases because its target or a socket is not on the platform
    /// (or could not be checked yet): since when, and why.
    pub held: Option<(String, String)>,
    /// Why the drop folder cannot be listed (it does not exist: an unmounted share?), if it cannot.
    pub missing: Option<String>,
    /// Files lying where the folder expects case folders (relative to the drop folder): never
    /// delivered.
    pub misplaced: Vec<String>,
    /// Delivered cases whose post-action (move, delete) fails: they stay in the drop folder.
    pub post_action_failed: Vec<PostActionFailure>,
}

/// A delivered case whose post-action fails, in `status`.
#[derive(Debug, serde::Serialize)]
pub struct PostActionFailure {
    pub case: String,
    pub reason: String,
    /// Failures in a row, and since when.
    pub failures: u32,
    pub since: String,
}

/// A quarantined case in `status`.
#[derive(Debug, serde::Serialize)]
pub struct QuarantinedCase {
    pub case: String,
    /// The pseudonym webhook alerts use for this case, to find the case an alert was about.
    pub case_id: String,
    pub reason: String,
}

/// Per folder: cases by state, the oldest waiting, the last delivery, quarantined cases with reasons.
pub fn folder_status(
    config: &Config,
    journal: &Journal,
) -> Result<Vec<FolderStatus>, crate::journal::JournalError> {
    let all = journal.all()?;
    let paused = journal.paused()?;
    let paused_targets = journal.paused_targets()?;
    let held = journal.held()?;
    let post_actions = journal.post_action_failures()?;
    Ok(config
        .folders
        .iter()
        .map(|f| {
            let cases: Vec<_> = all.iter().filter(|c| c.folder == f.path).collect();
            let mut counts = std::collections::BTreeMap::new();
            for c in &cases {
                *counts.entry(c.state.count_name().to_owned()).or_insert(0) += 1;
            }
            let waiting = cases
                .iter()
                .filter(|c| !matches!(c.state, CaseState::Delivered | CaseState::Quarantined));
            FolderStatus {
                folder: f.path.display().to_string(),
                target: format!("{:?} {}", f.target, f.target_slug),
                counts,
                oldest_waiting: waiting
                    .clone()
                    .min_by(|a, b| a.updated.cmp(&b.updated))
                    .map(|c| (c.case_text(), c.updated.clone())),
                last_delivery: cases
                    .iter()
                    .filter(|c| c.state == CaseState::Delivered)
                    .max_by(|a, b| a.updated.cmp(&b.updated))
                    .map(|c| (c.case_text(), c.updated.clone())),
                quarantined: cases
                    .iter()
                    .filter(|c| c.state == CaseState::Quarantined)
                    .map(|c| QuarantinedCase {
                        case: c.case_text(),
                        case_id: crate::rules::case_id(&f.path, &c.case_text()),
                        reason: c.reason.clone().unwrap_or_default(),
                    })
                    .collect(),
                notes: waiting.map(|c| (c.case_text(), why_waiting(c))).collect(),
                paused: paused.contains(&f.path),
                target_paused: paused_targets
                    .iter()
                    .find(|t| t.kind == f.target && t.slug == f.target_slug)
                    .map(|t| {
                        (
                            crate::clock::rfc3339_of_unix(t.until_unix),
                            t.reason.clone(),
                        )
                    }),
                held: held.get(&f.path).cloned(),
                missing: crate::watch::folder_missing(&f.path),
                misplaced: misplaced_files(f),
                post_action_failed: cases
                    .iter()
                    .filter_map(|c| {
                        let (reason, failures, since) = post_actions.get(&c.id)?.clone();
                        Some(PostActionFailure {
                            case: c.case_text(),
                            reason,
                            failures,
                            since,
                        })
                    })
                    .collect(),
            }
        })
        .collect())
}

/// The files lying where a drop folder expects case folders, relative to it (none when it cannot be
/// listed: `missing` says why).
fn misplaced_files(f: &crate::config::Folder) -> Vec<String> {
    crate::watch::list(f)
        .map(|l| l.misplaced)
        .unwrap_or_default()
        .iter()
        .map(|p| crate::rules::path_text(p.strip_prefix(&f.path).unwrap_or(p)))
        .collect()
}

/// The status of every folder, from the journal as the agent's user opens it, or else read-only (an
/// operator whose group may read the state folder); when neither works for lack of permission, the
/// error says who may read it and how to let an operator group read status.
pub fn status_report(config: &Config) -> Result<Vec<FolderStatus>, String> {
    let state = &config.server.state_dir;
    let first = match Journal::open(state).and_then(|j| folder_status(config, &j)) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    match Journal::open_read_only(state).and_then(|j| folder_status(config, &j)) {
        Ok(f) => Ok(f),
        Err(e) => {
            let listen = config.metrics.as_ref().map(|m| m.listen);
            Err(match crate::access::journal_denied(state, listen) {
                Some(d) => crate::access::journal_denied_text(&d),
                None => format!("{first}; read-only: {e}"),
            })
        }
    }
}

/// Why a case not delivered yet waits: the agent's note, or else what its state says.
fn why_waiting(c: &CaseRecord) -> String {
    if let Some(reason) = &c.reason {
        return reason.clone();
    }
    match &c.state {
        CaseState::Settling => "settling: not looked at since the agent last started".into(),
        CaseState::Ready => "ready: waiting for an upload slot".into(),
        CaseState::Uploading { step } => match step {
            Step::Creating => "being delivered: creating its item".into(),
            Step::Uploading => "being delivered: uploading its files".into(),
            Step::Patching => "being delivered: setting its values".into(),
            Step::Verifying => "delivered, waiting for the platform to show every value".into(),
            Step::Running => "its job is running".into(),
        },
        CaseState::Delivered | CaseState::Quarantined => c.state.name().into(),
    }
}
