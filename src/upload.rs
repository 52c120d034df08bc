//! The one-shot `upload` command: the cases named on the command line go through the same plan → journal
//! → deliver → receipt → post-action path as the agent's, with progress bars on a terminal and plain lines
//! otherwise. It shares the agent's journal, so a case delivered by either is known as delivered by both,
//! and a case this command quarantined is not tried again by the agent until it changes or is retried.
//! As in the agent, a case holds an upload slot only until its values are set: the cases then wait for the
//! platform's import together, while the next ones upload.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::agent::{CaseRun, Recorded};
use crate::cli::{UploadArgs, exit};
use crate::config::Config;
use crate::deliver::{DeliverError, Lanes, Timings};
use crate::journal::{CaseState, Journal};
use crate::receipt::{CaseFacts, CaseKey, Receipt, TargetRef};
use crate::rules::{self, Manifest};
use gc_client::verify::VerifyTiming;
use gc_client::{Client, Verifier};

/// How long a one-shot job waits before asking again when the account has too many jobs running.
const JOB_LIMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One case's result, as the command prints it.
pub struct CaseOutcome {
    pub case_dir: PathBuf,
    pub receipt: Option<PathBuf>,
    pub result: Result<String, String>,
    pub auth_failed: bool,
}

/// Entry point of `gc-hotfolder upload`.
pub fn main(args: UploadArgs) -> u8 {
    let config = match crate::start::load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::start::runtime() {
        Ok(rt) => rt.block_on(run(&config, args.receipts, &args.cases)),
        Err(code) => code,
    }
}

async fn run(config: &Config, receipts: Option<PathBuf>, cases: &[PathBuf]) -> u8 {
    // A path outside every drop folder is a mistake on the command line, found before anything is sent.
    let outside: Vec<&PathBuf> = cases
        .iter()
        .filter(|c| std::fs::canonicalize(c).is_ok_and(|p| config.folder_for(&p).is_none()))
        .collect();
    if !outside.is_empty() {
        for c in outside {
            eprintln!(
                "error: {} is not inside any [[folder]] of {}",
                c.display(),
                config.file.display()
            );
        }
        return exit::USAGE;
    }
    let journal = match Journal::open(&config.server.state_dir) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let client = match crate::start::connect(config, false).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let journal = &journal;
    let receipts = receipts.unwrap_or_else(|| config.server.state_dir.join("receipts"));
    for f in config.folders.iter().filter(|f| !f.deidentify) {
        eprintln!(
            "WARNING: folder {} has deidentify = false: its DICOM files are uploaded as they are, with patient names, IDs and dates: identifiable data will leave this machine",
            f.path.display()
        );
    }
    let bars = std::io::stderr().is_terminal().then(MultiProgress::new);
    let timing = VerifyTiming::default();
    let shared = Shared {
        config,
        verifier: Verifier::start(client.clone(), timing.clone()),
        client: &client,
        journal,
        receipts: &receipts,
        bars: bars.as_ref(),
        lanes: Lanes::new(&config.limits),
        timing,
    };
    // Every case may be under way at once; the lanes bound the uploads and the waiting.
    let outcomes: Vec<CaseOutcome> = futures_util::stream::iter(cases.iter().cloned())
        .map(|case| upload_case(&shared, case))
        .buffer_unordered(config.limits.awaiting_import)
        .collect()
        .await;
    let mut code = exit::OK;
    for o in &outcomes {
        match &o.result {
            Ok(line) => println!("{line}"),
            Err(reason) => {
                println!("FAILED {}: {reason}", o.case_dir.display());
                code = if o.auth_failed {
                    exit::PLATFORM
                } else {
                    code.max(exit::CASE_FAILED)
                };
            }
        }
    }
    code
}

/// What every case of one run shares.
struct Shared<'a> {
    config: &'a Config,
    client: &'a Client,
    journal: &'a Journal,
    receipts: &'a Path,
    bars: Option<&'a MultiProgress>,
    lanes: Lanes,
    verifier: Verifier,
    timing: VerifyTiming,
}

async fn upload_case(sh: &Shared<'_>, case_arg: PathBuf) -> CaseOutcome {
    let (config, client, journal, receipts, bars) =
        (sh.config, sh.client, sh.journal, sh.receipts, sh.bars);
    let queued = Instant::now();
    let slot = sh.lanes.upload().await;
    let mut timings = Timings {
        queued: queued.elapsed().as_secs_f64(),
        ..Timings::default()
    };
    let started = (crate::clock::now_rfc3339(), Instant::now());
    let fail = |case_dir: &Path, msg: String| CaseOutcome {
        case_dir: case_dir.to_owned(),
        receipt: None,
        result: Err(msg),
        auth_failed: false,
    };
    let case_dir = match std::fs::canonicalize(&case_arg) {
        Ok(p) if p.is_dir() => p,
        Ok(_) => return fail(&case_arg, "not a folder".into()),
        Err(e) => return fail(&case_arg, format!("cannot open: {e}")),
    };
    let Some(folder) = config.folder_for(&case_dir) else {
        return fail(
            &case_dir,
            "is not inside any [[folder]] of the config".into(),
        );
    };
    let snapshot = match crate::settle::snapshot(&case_dir) {
        Ok(s) => s,
        Err(e) => return fail(&case_dir, format!("cannot read the case folder: {e}")),
    };
    let rel = case_dir
        .strip_prefix(&folder.path)
        .unwrap_or(&case_dir)
        .to_owned();
    let case_rel = rules::path_text(&rel);
    let key = CaseKey {
        folder: &folder.path,
        case: &rel,
    };
    let rec = match journal.discover(&folder.path, &rel) {
        Ok(r) => r,
        Err(e) => return fail(&case_dir, e.to_string()),
    };
    let earlier =
        match crate::receipt::earlier_sent(journal, receipts, &folder.target_slug, key, &rec) {
            Ok(e) => e,
            Err(e) => return fail(&case_dir, e.to_string()),
        };
    let facts = |plan, manifest| CaseFacts {
        case_dir: &case_dir,
        plan,
        manifest,
        target: TargetRef {
            kind: folder.target,
            slug: folder.target_slug.clone(),
            pk: None,
            url: None,
        },
        case: case_rel.clone(),
        skipped: snapshot
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.rel.display(), s.why))
            .collect(),
        readiness: "one-shot upload".into(),
        attempts: rec.attempts as u32 + 1,
        revision: rec.revision as u32 + 1,
        started: started.clone(),
        earlier: &earlier,
    };
    let finish = |mut receipt: Receipt,
                  result: Result<String, String>,
                  auth_failed: bool,
                  timings: Timings| {
        receipt.timings = Some(timings);
        let written = crate::receipt::write(receipts, key, &receipt);
        let result = match (&written, result) {
            (Err(e), Ok(_)) => Err(format!(
                "delivered, but the receipt could not be written: {e}"
            )),
            (_, r) => r,
        };
        CaseOutcome {
            case_dir: case_dir.clone(),
            receipt: written.ok(),
            result,
            auth_failed,
        }
    };

    let quarantined = |reason: &str| {
        journal
            .set_fingerprint(rec.id, &snapshot.fingerprint())
            .and_then(|()| journal.quarantined(rec.id, reason))
    };
    let plan = match rules::plan(folder, &case_dir, &snapshot.case_files()) {
        Ok(p) => p,
        Err(e) => {
            if let Err(j) = quarantined(&e.to_string()) {
                return fail(&case_dir, j.to_string());
            }
            return finish(
                Receipt::quarantined(facts(None, None), e.to_string(), None),
                Err(e.to_string()),
                false,
                timings,
            );
        }
    };
    let manifest = match rules::hash_files(&case_dir, &plan) {
        Ok(h) => Manifest::new(&plan, &h),
        Err(e) => {
            let msg = format!("cannot read a file of the case: {e}");
            return finish(
                Receipt::quarantined(facts(Some(&plan), None), msg.clone(), None),
                Err(msg),
                false,
                timings,
            );
        }
    };
    if rec.delivered_hash.as_deref() == Some(&manifest.hash) {
        // Delivered before (by this command or the agent): never upload the same content twice.
        if rec.state != CaseState::Delivered
            && let Err(e) = journal.delivered(rec.id, &manifest)
        {
            return fail(&case_dir, e.to_string());
        }
        let item = rec.item_pk.as_deref().unwrap_or("?");
        crate::agent::apply_after(folder, &case_dir, &rel, receipts);
        return CaseOutcome {
            case_dir: case_dir.clone(),
            receipt: Some(crate::receipt::receipt_path(
                receipts,
                &folder.target_slug,
                key,
            )),
            result: Ok(format!(
                "already delivered {case_rel} → {item} (unchanged since; nothing sent)"
            )),
            auth_failed: false,
        };
    }
    timings.prechecks = started.1.elapsed().as_secs_f64();
    let _records = sh
        .lanes
        .records(crate::deliver::bundle::uploads(&plan))
        .await;
    let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
    let bar = bars.map(|m| {
        let b = m.add(ProgressBar::new(total));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:20!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(case_rel.clone());
        b
    });
    if bar.is_none() {
        tracing::info!(case = %case_rel, files = manifest.entries.len(), bytes = total, "uploading");
    }
    let progress_bar = bar.clone();
    let progress = move |bytes: u64| {
        if let Some(b) = &progress_bar {
            b.inc(bytes);
        }
    };
    // A wait for the platform's import is shown on the case's line, or as a line of its own.
    let note_bar = bar.clone();
    let note_case = case_rel.clone();
    let note = move |text: &str| match &note_bar {
        Some(b) => b.set_message(text.to_owned()),
        None => tracing::info!(case = %note_case, "{text}"),
    };
    // A one-shot job waits out the account's limit of jobs at once, as the agent does.
    let mut rec = rec.clone();
    let first = rec.clone();
    let fingerprint = snapshot.fingerprint();
    let template = CaseRun {
        client,
        journal,
        folder,
        state_dir: &config.server.state_dir,
        rec: &first,
        case_dir: &case_dir,
        plan: &plan,
        manifest: &manifest,
        fingerprint: &fingerprint,
        verify: &sh.timing,
        progress: crate::agent::Progress {
            bytes: Some(&progress),
            note: Some(&note),
        },
    };
    let result = loop {
        let run = CaseRun {
            rec: &rec,
            ..template
        };
        let result = crate::agent::send_recorded(&run, &mut timings).await;
        let Ok(Err(DeliverError::Later(e))) = &result else {
            break result;
        };
        if !matches!(**e, gc_client::GcError::JobLimit(_)) {
            break result;
        }
        tracing::warn!(case = %case_rel, "waiting {JOB_LIMIT_WAIT:?}: {e}");
        tokio::time::sleep(JOB_LIMIT_WAIT).await;
        match journal.by_id(rec.id) {
            Ok(Some(now)) => rec = now,
            Ok(None) => break result,
            Err(e) => return fail(&case_dir, e.to_string()),
        }
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => return fail(&case_dir, e.to_string()),
    };
    // Waiting for the platform's import is not work: the next case may upload meanwhile.
    drop(slot);
    let result = match result {
        Ok(sent) => {
            if let (Some(b), Recorded::Awaiting(..)) = (&bar, &sent) {
                b.set_message("waiting for the platform's import");
            }
            let run = CaseRun {
                rec: &rec,
                ..template
            };
            crate::agent::verified(&run, &sh.verifier, sent, &mut timings).await
        }
        Err(e) => Err(e),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match result {
        Ok(d) => {
            let line = match &d.job {
                Some(job) => format!(
                    "delivered {case_rel} → job {} {}, outputs in {}",
                    job.pk, job.status, job.outbox
                ),
                None => format!("delivered {case_rel} → {} {}", d.item_pk, d.item_api_url),
            };
            let receipt = Receipt::delivered(facts(Some(&plan), Some(&manifest)), &d);
            let sent = receipt.sent_files();
            // The receipt first, as the agent does: a crash before the journal says "delivered" only
            // repeats the delivery into the same item.
            let outcome = finish(receipt, Ok(line), false, timings);
            if outcome.result.is_ok() {
                if let Err(e) = journal.delivered_sent(rec.id, &manifest, &sent) {
                    return fail(&case_dir, e.to_string());
                }
                crate::agent::apply_after(folder, &case_dir, &rel, receipts);
            }
            outcome
        }
        Err(e) => {
            let auth = matches!(e, DeliverError::Auth(_));
            let msg = e.to_string();
            let recorded = match &e {
                DeliverError::Quarantine(_) => quarantined(&msg),
                // Not the case's fault: the agent (or the next upload) tries it again.
                _ => journal.postpone(rec.id, &msg),
            };
            if let Err(j) = recorded {
                return fail(&case_dir, j.to_string());
            }
            let item = journal
                .by_id(rec.id)
                .ok()
                .flatten()
                .and_then(|r| r.item_pk)
                .map(|pk| crate::receipt::ItemRef {
                    api_url: crate::agent::item_url(client, folder, &pk),
                    pk,
                });
            finish(
                Receipt::quarantined(facts(Some(&plan), Some(&manifest)), msg.clone(), item),
                Err(msg),
                auth,
                timings,
            )
        }
    }
}
