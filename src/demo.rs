//! `demo`: the whole product on one machine with no account and no internet. A sandbox on loopback plays
//! Grand Challenge, the agent watches `./demo-drop/cases` (an archive) and `./demo-drop/lung-ct` (an
//! algorithm, whose results land in `./demo-drop/results`), example cases are dropped in, and receipts
//! are printed as they appear. The user can drop more folders while it runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{self, AgentOptions};
use crate::cli::{DemoArgs, exit};
use crate::config::Config;
use crate::receipt::Outcome;
use gc_content::samples;
use gc_sandbox::DEMO_TOKEN;
use gc_sandbox::{Fixture, Sandbox, SandboxOptions};

/// The demo's folder rules: an image from any common format, an optional report, count and notes.
const RULES: &str = r#"
  [[folder.socket]]
  slug = "generic-medical-image"
  files = ["*.mha", "*.mhd", "*.raw", "*.nii", "*.nii.gz", "*.tif", "*.tiff", "dicom/*.dcm"]
  [[folder.socket]]
  slug = "report"
  files = "*.pdf"
  optional = true
  [[folder.socket]]
  slug = "lesion-count"
  value_file = "lesion-count.json"
  optional = true
  [[folder.socket]]
  slug = "notes"
  value_file = "notes.json"
  optional = true
"#;

/// The demo algorithm folder's rule: a CT image per case, whose lung volume the algorithm estimates.
const ALGORITHM_RULES: &str = r#"
  [[folder.socket]]
  slug = "ct-image"
  files = ["*.mha", "*.nii.gz"]
"#;

pub fn main(args: DemoArgs) -> u8 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::PLATFORM;
        }
    };
    rt.block_on(async {
        match run(&args.dir, args.port).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("error: {e:#}");
                exit::PLATFORM
            }
        }
    })
}

async fn run(dir: &Path, port: u16) -> anyhow::Result<()> {
    // Installed first, so that Ctrl-C during startup stops the demo cleanly instead of killing it.
    let stop = crate::start::shutdown_signal();
    let dir = std::path::absolute(dir)?;
    let cases = dir.join("cases");
    std::fs::create_dir_all(&cases)?;
    let lung = dir.join("lung-ct");
    std::fs::create_dir_all(&lung)?;
    // The sandbox forgets everything when it stops, so the journal of an earlier demo run would describe
    // a server that no longer exists: start from a clean state, and deliver the cases again.
    let state = dir.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    let mut options = SandboxOptions::new(Fixture::demo());
    options.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    options.import_delay = Duration::from_millis(500);
    let sandbox = Sandbox::start(options).await?;

    let config_path = dir.join("gc-hotfolder.toml");
    let config_text = format!(
        "# Written by `gc-hotfolder demo`; the sandbox's port changes with every run.\n\
         [server]\nurl = \"{}\"\ntoken = \"{DEMO_TOKEN}\"\nstate_dir = \"state\"\n\n\
         [[folder]]\npath = \"cases\"\narchive = \"demo-archive\"\nquiet = \"2s\"\n{RULES}\n\
         [[folder]]\npath = \"lung-ct\"\nalgorithm = \"lung-volume-estimator\"\noutbox = \"results\"\n\
         quiet = \"2s\"\n{ALGORITHM_RULES}",
        sandbox.base_url()
    );
    crate::fsutil::write_atomic(&config_path, config_text.as_bytes())?;
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;

    if std::fs::read_dir(&cases)?.next().is_none() {
        write_examples(&dir, &cases)?;
    }
    if std::fs::read_dir(&lung)?.next().is_none() {
        write_algorithm_example(&dir, &lung)?;
    }
    println!("Sandbox (plays Grand Challenge): {}", sandbox.base_url());
    println!("Watching:                        {}", cases.display());
    println!(
        "  and, for an algorithm:          {} (results in {})",
        lung.display(),
        dir.join("results").display()
    );
    println!("Config:                          {}", config_path.display());
    println!(
        "Drop case folders (e.g. one .mha or .nii.gz image, optional report.pdf) into the watched"
    );
    println!("folder; each becomes an archive item. A folder with a CT image (.mha) dropped into");
    println!(
        "lung-ct becomes a job of the lung volume estimator, its results a folder in results."
    );
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "gc-hotfolder".into());
    println!("Receipts appear below. Ctrl-C stops. Meanwhile, in another terminal:");
    println!("  {me} status   --config {}", config_path.display());
    println!("  {me} receipts --config {}", config_path.display());
    println!("  {me} explain  --config {} PATH\n", config_path.display());

    let _lock = crate::statelock::StateLock::acquire(&config.server.state_dir)?;

    let client = config.client(crate::metrics::client_observer())?;
    let receipts = config.server.state_dir.join("receipts");
    let printer = tokio::spawn(print_receipts(receipts));
    let result = agent::run(
        config.clone(),
        client,
        AgentOptions::from_config(&config),
        stop,
    )
    .await;
    printer.abort();
    sandbox.stop().await;
    result.map_err(Into::into)
}

/// A few cases of different shapes, each written aside and renamed into place whole.
fn write_examples(dir: &Path, cases: &Path) -> std::io::Result<()> {
    let staging = dir.join(".staging");
    let make = |name: &str, write: &dyn Fn(&Path) -> std::io::Result<()>| -> std::io::Result<()> {
        let tmp = staging.join(name);
        std::fs::create_dir_all(&tmp)?;
        write(&tmp)?;
        std::fs::rename(&tmp, cases.join(name))
    };
    make("case-001-metaimage", &|d| {
        samples::write_mha(&d.join("ct.mha"), [32, 32, 8], 1)?;
        samples::write_pdf(&d.join("report.pdf"), "Example report for case 001")?;
        std::fs::write(d.join("lesion-count.json"), "2")
    })?;
    make("case-002-nifti", &|d| {
        samples::write_nifti(&d.join("t1.nii.gz"), [24, 24, 12], true, 2)?;
        std::fs::write(d.join("notes.json"), "\"no findings\"")
    })?;
    make("case-003-dicom", &|d| {
        std::fs::create_dir_all(d.join("dicom"))?;
        samples::write_dicom_series(
            &d.join("dicom"),
            6,
            32,
            32,
            &samples::DicomSeriesIds::new(3),
            3,
        )
        .map(|_| ())
    })?;
    let _ = std::fs::remove_dir(&staging);
    Ok(())
}

/// One CT case for the algorithm folder.
fn write_algorithm_example(dir: &Path, lung: &Path) -> std::io::Result<()> {
    let tmp = dir.join(".staging").join("patient-001");
    std::fs::create_dir_all(&tmp)?;
    samples::write_mha(&tmp.join("ct.mha"), [24, 24, 8], 4)?;
    std::fs::rename(&tmp, lung.join("patient-001"))?;
    let _ = std::fs::remove_dir(dir.join(".staging"));
    Ok(())
}

/// Print every receipt once, and again when it changes (a new revision).
async fn print_receipts(dir: PathBuf) {
    let mut seen: HashMap<PathBuf, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for (path, r) in crate::receipt::all(&dir) {
            if seen.get(&path) == Some(&r.finished) {
                continue;
            }
            seen.insert(path.clone(), r.finished.clone());
            match (r.outcome, &r.item) {
                (Outcome::Delivered, _) if r.job.is_some() => {
                    let job = r.job.as_ref().map(|j| (j.pk.as_str(), j.outbox.as_str()));
                    let (pk, outbox) = job.unwrap_or_default();
                    println!("✔ {} → algorithm job {pk} ({:.1} s)", r.case, r.seconds);
                    println!("  results: {outbox}");
                    println!("  receipt: {}", path.display());
                }
                (Outcome::Delivered, Some(item)) => {
                    println!(
                        "✔ {} → archive item {} ({} socket(s), {:.1} s)",
                        r.case,
                        item.pk,
                        r.sockets.len(),
                        r.seconds
                    );
                    println!("  receipt: {}", path.display());
                }
                _ => {
                    println!(
                        "✘ {} quarantined: {}",
                        r.case,
                        r.reason.as_deref().unwrap_or("no reason recorded")
                    );
                    println!("  receipt: {}", path.display());
                }
            }
        }
    }
}
