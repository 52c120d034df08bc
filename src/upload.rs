//! The one-shot `upload` command: the cases named on the command line go through the same plan → deliver
//! → receipt path as the agent's, with progress bars on a terminal and plain lines otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::{UploadArgs, exit};
use crate::config::Config;
use crate::deidentify::UidMap;
use crate::deliver::{Checkpoints, DeliverError, ItemStart, Privacy, deliver};
use crate::gc::Client;
use crate::gc::verify::VerifyTiming;
use crate::receipt::{CaseFacts, Receipt, TargetRef};
use crate::rules::{self, Manifest};

/// One case's result, as the command prints it.
pub struct CaseOutcome {
    pub case_dir: PathBuf,
    pub receipt: Option<PathBuf>,
    pub result: Result<String, String>,
    pub auth_failed: bool,
}

/// Entry point of `gc-hotfolder upload`.
pub fn main(args: UploadArgs) -> u8 {
    let config = match crate::commands::load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::commands::runtime() {
        Ok(rt) => rt.block_on(run(&config, args.receipts, &args.cases)),
        Err(code) => code,
    }
}

async fn run(config: &Config, receipts: Option<PathBuf>, cases: &[PathBuf]) -> u8 {
    let client = match crate::commands::connect(config, false).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let receipts = receipts.unwrap_or_else(|| config.server.state_dir.join("receipts"));
    for f in config.folders.iter().filter(|f| !f.deidentify) {
        eprintln!(
            "WARNING: folder {} has deidentify = false: its DICOM files are uploaded as they are, with patient names, IDs and dates: identifiable data will leave this machine",
            f.path.display()
        );
    }
    let bars = std::io::stderr().is_terminal().then(MultiProgress::new);
    let outcomes: Vec<CaseOutcome> = futures_util::stream::iter(cases.iter().cloned())
        .map(|case| upload_case(config, &client, &receipts, bars.as_ref(), case))
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

/// Progress of one case: bytes sent, on a bar when there is a terminal.
struct Progress(Option<ProgressBar>);

impl Checkpoints for Progress {
    fn progress(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
}

async fn upload_case(
    config: &Config,
    client: &Client,
    receipts: &Path,
    bars: Option<&MultiProgress>,
    case_arg: PathBuf,
) -> CaseOutcome {
    let started = (crate::receipt::now_rfc3339(), Instant::now());
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
    let case_rel = case_dir
        .strip_prefix(&folder.path)
        .unwrap_or(&case_dir)
        .to_string_lossy()
        .into_owned();
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
        attempts: 1,
        revision: 1,
        started: started.clone(),
    };
    let finish = |receipt: Receipt, result: Result<String, String>, auth_failed: bool| {
        let written = crate::receipt::write(receipts, &receipt);
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

    let plan = match rules::plan(folder, &case_dir, &snapshot.case_files()) {
        Ok(p) => p,
        Err(e) => {
            return finish(
                Receipt::quarantined(facts(None, None), e.to_string(), None),
                Err(e.to_string()),
                false,
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
            );
        }
    };
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
    let observer = Arc::new(Progress(bar.clone()));
    let privacy = folder.deidentify.then(|| Privacy {
        staging: config
            .server
            .state_dir
            .join("staging")
            .join(format!("upload-{}", uuid::Uuid::new_v4())),
        uids: UidMap::random(),
    });
    let result = deliver(
        client,
        &case_dir,
        &plan,
        ItemStart::New,
        &VerifyTiming::default(),
        observer.as_ref(),
        privacy.as_ref(),
    )
    .await;
    if let Some(p) = &privacy {
        crate::deliver::remove_staging(&p.staging);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match result {
        Ok(d) => {
            let line = format!("delivered {case_rel} → {} {}", d.item_pk, d.item_api_url);
            finish(
                Receipt::delivered(facts(Some(&plan), Some(&manifest)), &d),
                Ok(line),
                false,
            )
        }
        Err(e) => {
            let auth = matches!(e, DeliverError::Auth(_));
            let msg = e.to_string();
            finish(
                Receipt::quarantined(facts(Some(&plan), Some(&manifest)), msg.clone(), None),
                Err(msg),
                auth,
            )
        }
    }
}
