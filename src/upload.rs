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
use crate::config::Folder;
use crate::deliver::Delivered;
use crate::deliver::{DeliverError, Lanes, Timings};
use crate::journal::{CaseRecord, CaseState, Journal, JournalError, SentFile};
use crate::receipt::{CaseFacts, CaseKey, Receipt, SocketReceipt, TargetRef};
use crate::rules::{self, Manifest, Plan};
use crate::settle::Snapshot;
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

/// One case named on the command line, through the agent's path: plan, manifest, the platform (sent under
/// an upload slot, then verified without one), the receipt and the post-action.
async fn upload_case(sh: &Shared<'_>, case_arg: PathBuf) -> CaseOutcome {
    let queued = Instant::now();
    let slot = sh.lanes.upload().await;
    let mut timings = Timings {
        queued: queued.elapsed().as_secs_f64(),
        ..Timings::default()
    };
    let c = match OneCase::open(sh, case_arg) {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let on_item: Vec<String> = c.on_item.iter().map(|s| s.slug.clone()).collect();
    let files = c.snapshot.case_files();
    let plan = match rules::plan_update(c.folder, &c.case_dir, &files, &on_item) {
        Ok(p) => p,
        Err(e) => {
            if let Err(j) = c.quarantined(&e.to_string()) {
                return c.fail(j.to_string());
            }
            let receipt = Receipt::quarantined(c.facts(None, None), e.to_string(), None);
            return c.finish(receipt, Err(e.to_string()), false, timings);
        }
    };
    let manifest = match rules::hash_files(&c.case_dir, &plan) {
        Ok(h) => Manifest::new(&plan, &h),
        Err(e) => {
            let msg = format!("cannot read a file of the case: {e}");
            let receipt = Receipt::quarantined(c.facts(Some(&plan), None), msg.clone(), None);
            return c.finish(receipt, Err(msg), false, timings);
        }
    };
    if c.rec.delivered_hash.as_deref() == Some(&manifest.hash) {
        return c.already_delivered(&manifest);
    }
    timings.prechecks = c.started.1.elapsed().as_secs_f64();
    let _records = sh
        .lanes
        .records(crate::deliver::bundle::uploads(&plan))
        .await;
    let bar = c.progress_bar(&manifest);
    let delivery = c
        .deliver(&plan, &manifest, bar.as_ref(), slot, &mut timings)
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (result, rec) = match delivery {
        Ok(d) => d,
        Err(journal) => return c.fail(journal),
    };
    match result {
        Ok(d) => c.delivered(&plan, &manifest, &d, timings),
        Err(e) => c.not_delivered(&plan, &manifest, rec.id, e, timings),
    }
}

/// A case of the command line, opened: where it is, its folder, what the journal and earlier receipts say.
struct OneCase<'a> {
    sh: &'a Shared<'a>,
    case_dir: PathBuf,
    folder: &'a Folder,
    snapshot: Snapshot,
    /// The case's path inside its drop folder, and as text for people.
    rel: PathBuf,
    case_rel: String,
    rec: CaseRecord,
    earlier: Vec<SentFile>,
    /// What the case's item holds from an earlier delivery (an update may leave it out).
    on_item: Vec<SocketReceipt>,
    started: (String, Instant),
}

impl<'a> OneCase<'a> {
    /// The case folder found in a drop folder of the config, read, and known to the journal.
    fn open(sh: &'a Shared<'a>, case_arg: PathBuf) -> Result<OneCase<'a>, CaseOutcome> {
        let started = (crate::clock::now_rfc3339(), Instant::now());
        let case_dir = match std::fs::canonicalize(&case_arg) {
            Ok(p) if p.is_dir() => p,
            Ok(_) => return Err(failed(&case_arg, "not a folder".into())),
            Err(e) => return Err(failed(&case_arg, format!("cannot open: {e}"))),
        };
        let Some(folder) = sh.config.folder_for(&case_dir) else {
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
        let rec = sh
            .journal
            .discover(&folder.path, &rel)
            .map_err(|e| failed(&case_dir, e.to_string()))?;
        let earlier =
            crate::receipt::earlier_sent(sh.journal, sh.receipts, &folder.target_slug, key, &rec)
                .map_err(|e| failed(&case_dir, e.to_string()))?;
        let on_item = crate::receipt::on_item(sh.receipts, &folder.target_slug, key, &rec);
        Ok(OneCase {
            sh,
            folder,
            case_rel: rules::path_text(&rel),
            rel,
            case_dir,
            snapshot,
            rec,
            earlier,
            on_item,
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
            target: TargetRef::named(self.folder.target, &self.folder.target_slug),
            case: self.case_rel.clone(),
            skipped: self.snapshot.skipped_lines(),
            readiness: "one-shot upload".into(),
            attempts: self.rec.attempts as u32 + 1,
            revision: self.rec.revision as u32 + 1,
            started: self.started.clone(),
            earlier: &self.earlier,
            on_item: &self.on_item,
        }
    }

    /// The receipt written with the case's timings, and the case's line: a receipt that cannot be
    /// written fails a delivery.
    fn finish(
        &self,
        mut receipt: Receipt,
        result: Result<String, String>,
        auth_failed: bool,
        timings: Timings,
    ) -> CaseOutcome {
        receipt.timings = Some(timings);
        let written = crate::receipt::write(self.sh.receipts, self.key(), &receipt);
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
        let journal = self.sh.journal;
        journal
            .set_fingerprint(self.rec.id, &self.snapshot.fingerprint())
            .and_then(|()| journal.quarantined(self.rec.id, reason))
    }

    /// Delivered before (by this command or the agent): the same content is never uploaded twice.
    fn already_delivered(&self, manifest: &Manifest) -> CaseOutcome {
        if self.rec.state != CaseState::Delivered
            && let Err(e) = self.sh.journal.delivered(self.rec.id, manifest)
        {
            return self.fail(e.to_string());
        }
        let item = self.rec.item_pk.as_deref().unwrap_or("?");
        if let Err(e) = self.post_action() {
            return self.fail(e.to_string());
        }
        let receipt =
            crate::receipt::receipt_path(self.sh.receipts, &self.folder.target_slug, self.key());
        CaseOutcome {
            case_dir: self.case_dir.clone(),
            receipt: Some(receipt),
            result: Ok(format!(
                "already delivered {} → {item} (unchanged since; nothing sent)",
                self.case_rel
            )),
            auth_failed: false,
        }
    }

    /// The folder's post-action, as the agent applies it; a failure is in the receipt and `status`, and
    /// the agent tries it again.
    fn post_action(&self) -> Result<crate::after::PostAction, JournalError> {
        let c = crate::after::Delivered {
            folder: self.folder,
            case_dir: &self.case_dir,
            case: &self.rel,
            id: self.rec.id,
        };
        crate::after::apply(&c, self.sh.journal, self.sh.receipts)
    }

    /// The case's progress bar on a terminal; elsewhere a log line says that it is being uploaded.
    fn progress_bar(&self, manifest: &Manifest) -> Option<ProgressBar> {
        let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
        let Some(m) = self.sh.bars else {
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

    /// The delivery, recorded in the journal as the agent records it: sent under the upload `slot` (a
    /// job waits out the account's limit of jobs at once, as the agent does), then verified without it.
    /// The outcome and the record as it ends; `Err` when the journal could not record a step.
    async fn deliver(
        &self,
        plan: &Plan,
        manifest: &Manifest,
        bar: Option<&ProgressBar>,
        slot: impl Sized,
        timings: &mut Timings,
    ) -> Result<(Result<Delivered, DeliverError>, CaseRecord), String> {
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
        let fingerprint = self.snapshot.fingerprint();
        let template = CaseRun {
            client: self.sh.client,
            journal: self.sh.journal,
            folder: self.folder,
            state_dir: &self.sh.config.server.state_dir,
            rec: &self.rec,
            case_dir: &self.case_dir,
            plan,
            manifest,
            fingerprint: &fingerprint,
            verify: &self.sh.timing,
            progress: crate::agent::Progress {
                bytes: Some(&progress),
                note: Some(&note),
            },
        };
        let (sent, rec) = self.send(&template, timings).await?;
        // Waiting for the platform's import is not work: the next case may upload meanwhile.
        drop(slot);
        let result = match sent {
            Ok(sent) => {
                if let (Some(b), Recorded::Awaiting(..)) = (bar, &sent) {
                    b.set_message("waiting for the platform's import");
                }
                let run = CaseRun {
                    rec: &rec,
                    ..template
                };
                crate::agent::verified(&run, &self.sh.verifier, sent, timings).await
            }
            Err(e) => Err(e),
        };
        Ok((result, rec))
    }

    /// The case sent, again after a pause while the account runs as many jobs as it may. The outcome
    /// with the record it ended with; `Err` when the journal could not record a step.
    async fn send(
        &self,
        template: &CaseRun<'_>,
        timings: &mut Timings,
    ) -> Result<(Result<Recorded, DeliverError>, CaseRecord), String> {
        let mut rec = self.rec.clone();
        loop {
            let run = CaseRun {
                rec: &rec,
                ..*template
            };
            let result = crate::agent::send_recorded(&run, timings)
                .await
                .map_err(|e| e.to_string())?;
            let Err(DeliverError::Later(e)) = &result else {
                return Ok((result, rec));
            };
            if !matches!(**e, gc_client::GcError::JobLimit(_)) {
                return Ok((result, rec));
            }
            tracing::warn!(case = %self.case_rel, "waiting {JOB_LIMIT_WAIT:?}: {e}");
            tokio::time::sleep(JOB_LIMIT_WAIT).await;
            match self.sh.journal.by_id(rec.id) {
                Ok(Some(now)) => rec = now,
                Ok(None) => return Ok((result, rec)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Delivered: the receipt first, as the agent does (a crash before the journal says "delivered"
    /// only repeats the delivery into the same item), then the journal and the post-action.
    fn delivered(
        &self,
        plan: &Plan,
        manifest: &Manifest,
        d: &Delivered,
        timings: Timings,
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
        let outcome = self.finish(receipt, Ok(line), false, timings);
        if outcome.result.is_ok() {
            if let Err(e) = self.sh.journal.delivered_sent(self.rec.id, manifest, &sent) {
                return self.fail(e.to_string());
            }
            if let Err(e) = self.post_action() {
                return self.fail(e.to_string());
            }
        }
        outcome
    }

    /// Not delivered: quarantined for a fault of the case, else postponed for the agent (or the next
    /// upload) to try again; the receipt names the item if one was made.
    fn not_delivered(
        &self,
        plan: &Plan,
        manifest: &Manifest,
        id: i64,
        e: DeliverError,
        timings: Timings,
    ) -> CaseOutcome {
        let auth = matches!(e, DeliverError::Auth(_));
        let msg = e.to_string();
        let recorded = match &e {
            DeliverError::Quarantine(_) => self.quarantined(&msg),
            _ => self.sh.journal.postpone(id, &msg),
        };
        if let Err(j) = recorded {
            return self.fail(j.to_string());
        }
        let item = self
            .sh
            .journal
            .by_id(id)
            .ok()
            .flatten()
            .and_then(|r| r.item_pk)
            .map(|pk| crate::receipt::ItemRef {
                api_url: crate::agent::item_url(self.sh.client, self.folder, &pk),
                pk,
            });
        let receipt =
            Receipt::quarantined(self.facts(Some(plan), Some(manifest)), msg.clone(), item);
        self.finish(receipt, Err(msg), auth, timings)
    }
}

fn failed(case_dir: &Path, msg: String) -> CaseOutcome {
    CaseOutcome {
        case_dir: case_dir.to_owned(),
        receipt: None,
        result: Err(msg),
        auth_failed: false,
    }
}
