//! The one-shot `upload` command: the cases named on the command line go through the same plan → journal
//! → deliver → receipt → post-action path as the agent's, with progress bars on a terminal and plain lines
//! otherwise. It shares the agent's journal, so a case delivered by either is known as delivered by both,
//! and a case this command quarantined is not tried again by the agent until it changes or is retried.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::{UploadArgs, exit};
use crate::config::Config;
use crate::config::Folder;
use crate::deliver::{DeliverError, Delivered};
use crate::journal::{CaseRecord, CaseState, Journal, JournalError, SentFile};
use crate::receipt::{CaseFacts, CaseKey, Receipt, TargetRef};
use crate::rules::{self, Manifest, Plan};
use crate::settle::Snapshot;
use gc_client::Client;
use gc_client::verify::VerifyTiming;

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
    let outcomes: Vec<CaseOutcome> = futures_util::stream::iter(cases.iter().cloned())
        .map(|case| upload_case(config, &client, journal, &receipts, bars.as_ref(), case))
        .buffer_unordered(config.limits.parallel_cases)
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

/// One case named on the command line, through the agent's path: plan, manifest, the platform, the
/// receipt and the post-action; each step a method of [`OneCase`].
async fn upload_case(
    config: &Config,
    client: &Client,
    journal: &Journal,
    receipts: &Path,
    bars: Option<&MultiProgress>,
    case_arg: PathBuf,
) -> CaseOutcome {
    let c = match OneCase::open(config, client, journal, receipts, case_arg) {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let plan = match rules::plan(c.folder, &c.case_dir, &c.snapshot.case_files()) {
        Ok(p) => p,
        Err(e) => {
            if let Err(j) = c.quarantined(&e.to_string()) {
                return c.fail(j.to_string());
            }
            let receipt = Receipt::quarantined(c.facts(None, None), e.to_string(), None);
            return c.finish(receipt, Err(e.to_string()), false);
        }
    };
    let manifest = match rules::hash_files(&c.case_dir, &plan) {
        Ok(h) => Manifest::new(&plan, &h),
        Err(e) => {
            let msg = format!("cannot read a file of the case: {e}");
            let receipt = Receipt::quarantined(c.facts(Some(&plan), None), msg.clone(), None);
            return c.finish(receipt, Err(msg), false);
        }
    };
    if c.rec.delivered_hash.as_deref() == Some(&manifest.hash) {
        return c.already_delivered(&manifest);
    }
    let bar = c.progress_bar(bars, &manifest);
    let result = c.deliver(&plan, &manifest, bar.as_ref()).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match result {
        Ok((rec, Ok(d))) => c.delivered(&rec, &d, &plan, &manifest),
        Ok((rec, Err(e))) => c.not_delivered(&rec, e, &plan, &manifest),
        Err(e) => c.fail(e),
    }
}

/// A case of the `upload` command, opened: its folder, its snapshot, its journal record and what earlier
/// revisions sent.
struct OneCase<'a> {
    config: &'a Config,
    client: &'a Client,
    journal: &'a Journal,
    receipts: &'a Path,
    folder: &'a Folder,
    case_dir: PathBuf,
    /// The case's path inside its drop folder, and as text.
    rel: PathBuf,
    case_rel: String,
    snapshot: Snapshot,
    rec: CaseRecord,
    earlier: Vec<SentFile>,
    started: (String, Instant),
}

impl<'a> OneCase<'a> {
    /// The case folder `case_arg` as a case of the config's folders, recorded in the journal; or why not.
    fn open(
        config: &'a Config,
        client: &'a Client,
        journal: &'a Journal,
        receipts: &'a Path,
        case_arg: PathBuf,
    ) -> Result<OneCase<'a>, CaseOutcome> {
        let started = (crate::clock::now_rfc3339(), Instant::now());
        let case_dir = match std::fs::canonicalize(&case_arg) {
            Ok(p) if p.is_dir() => p,
            Ok(_) => return Err(failed(&case_arg, "not a folder".into())),
            Err(e) => return Err(failed(&case_arg, format!("cannot open: {e}"))),
        };
        let Some(folder) = config.folder_for(&case_dir) else {
            let why = "is not inside any [[folder]] of the config";
            return Err(failed(&case_dir, why.into()));
        };
        let snapshot = crate::settle::snapshot(&case_dir)
            .map_err(|e| failed(&case_dir, format!("cannot read the case folder: {e}")))?;
        let rel = case_dir
            .strip_prefix(&folder.path)
            .unwrap_or(&case_dir)
            .to_owned();
        let key = CaseKey {
            folder: &folder.path,
            case: &rel,
        };
        let rec = journal
            .discover(&folder.path, &rel)
            .map_err(|e| failed(&case_dir, e.to_string()))?;
        let earlier =
            crate::receipt::earlier_sent(journal, receipts, &folder.target_slug, key, &rec)
                .map_err(|e| failed(&case_dir, e.to_string()))?;
        Ok(OneCase {
            config,
            client,
            journal,
            receipts,
            folder,
            case_rel: rules::path_text(&rel),
            rel,
            case_dir,
            snapshot,
            rec,
            earlier,
            started,
        })
    }

    fn key(&self) -> CaseKey<'_> {
        CaseKey {
            folder: &self.folder.path,
            case: &self.rel,
        }
    }

    fn fail(&self, msg: String) -> CaseOutcome {
        failed(&self.case_dir, msg)
    }

    /// What the receipt says of the case, whatever the outcome.
    fn facts<'b>(
        &'b self,
        plan: Option<&'b Plan>,
        manifest: Option<&'b Manifest>,
    ) -> CaseFacts<'b> {
        CaseFacts {
            case_dir: &self.case_dir,
            plan,
            manifest,
            target: TargetRef {
                kind: self.folder.target,
                slug: self.folder.target_slug.clone(),
                pk: None,
                url: None,
            },
            case: self.case_rel.clone(),
            skipped: self
                .snapshot
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.rel.display(), s.why))
                .collect(),
            readiness: "one-shot upload".into(),
            attempts: self.rec.attempts as u32 + 1,
            revision: self.rec.revision as u32 + 1,
            started: self.started.clone(),
            earlier: &self.earlier,
        }
    }

    /// The receipt written, and the case's line: a receipt that cannot be written fails a delivery.
    fn finish(
        &self,
        receipt: Receipt,
        result: Result<String, String>,
        auth_failed: bool,
    ) -> CaseOutcome {
        let written = crate::receipt::write(self.receipts, self.key(), &receipt);
        let result = match (&written, result) {
            (Err(e), Ok(_)) => Err(format!(
                "delivered, but the receipt could not be written: {e}"
            )),
            (_, r) => r,
        };
        CaseOutcome {
            case_dir: self.case_dir.clone(),
            receipt: written.ok(),
            result,
            auth_failed,
        }
    }

    fn quarantined(&self, reason: &str) -> Result<(), JournalError> {
        self.journal
            .set_fingerprint(self.rec.id, &self.snapshot.fingerprint())
            .and_then(|()| self.journal.quarantined(self.rec.id, reason))
    }

    /// Delivered before (by this command or the agent): the same content is never uploaded twice.
    fn already_delivered(&self, manifest: &Manifest) -> CaseOutcome {
        if self.rec.state != CaseState::Delivered
            && let Err(e) = self.journal.delivered(self.rec.id, manifest)
        {
            return self.fail(e.to_string());
        }
        let item = self.rec.item_pk.as_deref().unwrap_or("?");
        crate::agent::apply_after(self.folder, &self.case_dir, &self.rel, self.receipts);
        let slug = &self.folder.target_slug;
        CaseOutcome {
            case_dir: self.case_dir.clone(),
            receipt: Some(crate::receipt::receipt_path(
                self.receipts,
                slug,
                self.key(),
            )),
            result: Ok(format!(
                "already delivered {} → {item} (unchanged since; nothing sent)",
                self.case_rel
            )),
            auth_failed: false,
        }
    }

    /// The case's progress bar on a terminal; elsewhere a log line says that it is being uploaded.
    fn progress_bar(
        &self,
        bars: Option<&MultiProgress>,
        manifest: &Manifest,
    ) -> Option<ProgressBar> {
        let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
        let Some(m) = bars else {
            let files = manifest.entries.len();
            tracing::info!(case = %self.case_rel, files, bytes = total, "uploading");
            return None;
        };
        let b = m.add(ProgressBar::new(total));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:20!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(self.case_rel.clone());
        Some(b)
    }

    /// The delivery, recorded in the journal as the agent records it; a job waits out the account's limit
    /// of jobs at once, as the agent does. The record as it ends, with the outcome.
    async fn deliver(
        &self,
        plan: &Plan,
        manifest: &Manifest,
        bar: Option<&ProgressBar>,
    ) -> Result<(CaseRecord, Result<Delivered, DeliverError>), String> {
        let progress = |bytes: u64| {
            if let Some(b) = bar {
                b.inc(bytes);
            }
        };
        // A wait for the platform's import is shown on the case's line, or as a line of its own.
        let note = |text: &str| match bar {
            Some(b) => b.set_message(text.to_owned()),
            None => tracing::info!(case = %self.case_rel, "{text}"),
        };
        let mut rec = self.rec.clone();
        loop {
            let result = crate::agent::attempt_recorded(
                self.client,
                self.journal,
                self.folder,
                &self.config.server.state_dir,
                &rec,
                &self.case_dir,
                plan,
                manifest,
                &self.snapshot.fingerprint(),
                &VerifyTiming::default(),
                crate::agent::Progress {
                    bytes: Some(&progress),
                    note: Some(&note),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let Err(DeliverError::Later(e)) = &result else {
                return Ok((rec, result));
            };
            if !matches!(**e, gc_client::GcError::JobLimit(_)) {
                return Ok((rec, result));
            }
            tracing::warn!(case = %self.case_rel, "waiting {JOB_LIMIT_WAIT:?}: {e}");
            tokio::time::sleep(JOB_LIMIT_WAIT).await;
            match self.journal.by_id(rec.id) {
                Ok(Some(now)) => rec = now,
                Ok(None) => return Ok((rec, result)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Delivered: the receipt first, as the agent does (a crash before the journal says "delivered" only
    /// repeats the delivery into the same item), then the journal and the post-action.
    fn delivered(
        &self,
        rec: &CaseRecord,
        d: &Delivered,
        plan: &Plan,
        manifest: &Manifest,
    ) -> CaseOutcome {
        let case_rel = &self.case_rel;
        let line = match &d.job {
            Some(job) => format!(
                "delivered {case_rel} → job {} {}, outputs in {}",
                job.pk, job.status, job.outbox
            ),
            None => format!("delivered {case_rel} → {} {}", d.item_pk, d.item_api_url),
        };
        let receipt = Receipt::delivered(self.facts(Some(plan), Some(manifest)), d);
        let sent = receipt.sent_files();
        let outcome = self.finish(receipt, Ok(line), false);
        if outcome.result.is_ok() {
            if let Err(e) = self.journal.delivered_sent(rec.id, manifest, &sent) {
                return self.fail(e.to_string());
            }
            crate::agent::apply_after(self.folder, &self.case_dir, &self.rel, self.receipts);
        }
        outcome
    }

    /// Not delivered: quarantined when the case is at fault, else postponed for the agent or the next
    /// upload; a receipt either way.
    fn not_delivered(
        &self,
        rec: &CaseRecord,
        e: DeliverError,
        plan: &Plan,
        manifest: &Manifest,
    ) -> CaseOutcome {
        let auth = matches!(e, DeliverError::Auth(_));
        let msg = e.to_string();
        let recorded = match &e {
            DeliverError::Quarantine(_) => self.quarantined(&msg),
            _ => self.journal.postpone(rec.id, &msg),
        };
        if let Err(j) = recorded {
            return self.fail(j.to_string());
        }
        let item = self
            .journal
            .by_id(rec.id)
            .ok()
            .flatten()
            .and_then(|r| r.item_pk)
            .map(|pk| crate::receipt::ItemRef {
                api_url: crate::agent::item_url(self.client, self.folder, &pk),
                pk,
            });
        let facts = self.facts(Some(plan), Some(manifest));
        self.finish(
            Receipt::quarantined(facts, msg.clone(), item),
            Err(msg),
            auth,
        )
    }
}

/// A case that could not be looked at: no receipt, the reason on its line.
fn failed(case_dir: &Path, msg: String) -> CaseOutcome {
    CaseOutcome {
        case_dir: case_dir.to_owned(),
        receipt: None,
        result: Err(msg),
        auth_failed: false,
    }
}
