//! The top of the program: [`dispatch`] runs the command the command line names, and the subcommands
//! that operate the agent live here (`run`, `check`, `explain`, `status`, `receipts`, `pause`, `resume`,
//! `retry`). Each loads the config, does one thing and maps the outcome to an exit code an operator or a
//! script can rely on.

use std::path::Path;

use crate::agent::{self, AgentOptions};
use crate::cli::{self, CheckArgs, ExplainArgs, RetryArgs, RunArgs, exit};
use crate::config::Config;
use crate::journal::{CaseState, Journal};
use crate::start::{connect, load, platform_error, runtime, shutdown_signal};

/// `gc-hotfolder run`
pub fn run(args: RunArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Held until the agent ends: a second agent on the same journal could deliver a case twice.
    let _lock = match crate::statelock::StateLock::acquire(&config.server.state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async {
        let stop = shutdown_signal();
        let client = match connect(&config, true).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        match agent::run(
            config.clone(),
            client,
            AgentOptions::from_config(&config),
            stop,
        )
        .await
        {
            Ok(()) => exit::OK,
            Err(e @ agent::AgentError::Metrics { .. }) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::PLATFORM
            }
        }
    })
}

/// `gc-hotfolder check`
pub fn check(args: CheckArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "{}: valid, {} folder(s)",
        args.config.display(),
        config.folders.len()
    );
    let mut code = exit::OK;
    for f in &config.folders {
        println!(
            "  folder[{}] {} → {} {}",
            f.index,
            f.path.display(),
            crate::agent::kind_name(f.target),
            f.target_slug
        );
        if let Some(why) = crate::watch::folder_missing(&f.path) {
            println!("  warning: folder[{}].path: {why}", f.index);
            code = exit::CASE_FAILED;
        }
        if !f.deidentify {
            println!(
                "  folder[{}] WARNING: deidentify = false: DICOM files are uploaded as they are, with patient names, IDs and dates: identifiable data will leave this machine",
                f.index
            );
        }
        for (case, warning) in title_warnings_of_present_cases(f) {
            println!("  folder[{}] case {case}: WARNING: {warning}", f.index);
        }
    }
    for w in crate::access::service_warnings(&config) {
        println!("  warning: {w}");
    }
    if !args.online {
        return code;
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async {
        let client = match config.quick_client(crate::metrics::client_observer()) {
            Ok(c) => c,
            Err(e) => {
                println!("  token: {e}");
                return exit::PLATFORM;
            }
        };
        match client.whoami().await {
            Ok(user) => println!("  token: accepted for user {user}"),
            Err(e) => {
                println!("  token: {}", platform_error(&config, &e));
                return exit::PLATFORM;
            }
        }
        for f in &config.folders {
            let checked = crate::preflight::check_folder(&client, f).await;
            for line in &checked.lines {
                println!("  {line}");
            }
            if checked.verdict != crate::preflight::Verdict::Usable {
                code = exit::PLATFORM;
            }
        }
        code
    })
}

/// Title warnings for the cases now in a folder: a folder name or title that repeats the Patient ID or
/// Patient's Name of the case's DICOM files (read from their headers only).
fn title_warnings_of_present_cases(f: &crate::config::Folder) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for case_dir in crate::watch::list_cases(f).unwrap_or_default() {
        let Ok(snap) = crate::settle::snapshot(&case_dir) else {
            continue;
        };
        let Ok(plan) = crate::rules::plan(f, &case_dir, &snap.case_files()) else {
            continue;
        };
        let mut identifiers: Vec<(Option<String>, Option<String>)> = plan
            .sockets
            .iter()
            .flat_map(|s| s.source.files())
            .filter_map(|pf| gc_content::deidentify::patient_identifiers(&case_dir.join(&pf.rel)))
            // One series is one patient: the first DICOM file tells, without reading them all.
            .take(1)
            .collect();
        identifiers.sort();
        identifiers.dedup();
        for w in gc_content::deidentify::title_warnings(&plan.case, &plan.title, &identifiers) {
            out.push((plan.case_path.clone(), w));
        }
    }
    out
}

/// `gc-hotfolder explain`
pub fn explain(args: ExplainArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = std::path::absolute(&args.path).unwrap_or(args.path.clone());
    let files = path
        .is_dir()
        .then(|| crate::settle::snapshot(&path).map(|s| s.case_files()).ok())
        .flatten();
    for line in crate::rules::explain(&config, &path, files.as_deref()) {
        println!("{line}");
    }
    if config.folder_for(&path).is_none() {
        return exit::USAGE;
    }
    exit::OK
}

/// `gc-hotfolder retry`
pub fn retry(args: RetryArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let journal = match Journal::open(&config.server.state_dir) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let all = match journal.all() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut code = exit::OK;
    let wanted: Vec<_> = if args.quarantined {
        all.iter()
            .filter(|c| c.state == CaseState::Quarantined)
            .collect()
    } else {
        let mut v = Vec::new();
        for case in &args.cases {
            let abs = std::path::absolute(case).unwrap_or(case.clone());
            // The case's place in its drop folder, or where quarantine moved it.
            let found = all.iter().find(|c| {
                c.folder.join(&c.case) == abs || quarantined_at(&config, c).as_deref() == Some(&abs)
            });
            match found {
                Some(c) => v.push(c),
                None => {
                    eprintln!("{}: the journal does not know this case", case.display());
                    code = exit::CASE_FAILED;
                }
            }
        }
        v
    };
    for c in wanted {
        let home = c.folder.join(&c.case);
        // A case moved to the quarantine folder goes back into its drop folder, where the agent watches.
        let moved_back = match quarantined_at(&config, c) {
            Some(q) if !home.exists() => {
                let quarantine = config
                    .folders
                    .iter()
                    .find(|f| f.path == c.folder)
                    .and_then(|f| f.quarantine.as_deref());
                if let Err(e) = move_back(&q, &home, quarantine) {
                    eprintln!(
                        "{}: cannot move it back into its drop folder as {}: {e}",
                        q.display(),
                        home.display()
                    );
                    code = exit::CASE_FAILED;
                    continue;
                }
                if let Err(e) = journal.moved_to(c.id, None) {
                    eprintln!("{}: {e}", home.display());
                }
                Some(q)
            }
            Some(q) => {
                eprintln!(
                    "{}: not retried: {} exists, so it cannot be moved back into its drop folder; move one \
                     of them away and retry again",
                    q.display(),
                    home.display()
                );
                code = exit::CASE_FAILED;
                continue;
            }
            None => None,
        };
        match journal.retry(c.id) {
            Ok(()) => match moved_back {
                Some(q) => println!(
                    "requeued {} (moved back from {} into its drop folder)",
                    home.display(),
                    q.display()
                ),
                None => println!("requeued {} (delivered from where it is)", home.display()),
            },
            Err(e) => {
                eprintln!("{}: {e}", c.case.display());
                code = exit::CASE_FAILED;
            }
        }
    }
    code
}

/// Where a quarantined case now is, if quarantine moved it out of its drop folder (and it is still there).
fn quarantined_at(config: &Config, c: &crate::journal::CaseRecord) -> Option<std::path::PathBuf> {
    let recorded = c.moved_to.clone().or_else(|| {
        // Cases quarantined before the journal recorded moves: where the move puts them.
        let folder = config.folders.iter().find(|f| f.path == c.folder)?;
        Some(folder.quarantine.as_ref()?.join(&c.case))
    })?;
    recorded.is_dir().then_some(recorded)
}

/// Move a case folder back to `home`, creating its parents (a case at depth 2); folders of the
/// quarantine that this leaves empty go too.
fn move_back(from: &Path, home: &Path, quarantine: Option<&Path>) -> std::io::Result<()> {
    if let Some(parent) = home.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(from, home)?;
    if let Some(q) = quarantine {
        crate::fsutil::remove_empty_parents(from, q);
    }
    Ok(())
}

/// `gc-hotfolder status`
pub fn status(args: crate::cli::StatusArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = Journal::open(&config.server.state_dir)
        .and_then(|j| crate::status::folder_status(&config, &j));
    let folders = match report {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&folders) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        }
        return exit::OK;
    }
    for f in &folders {
        println!(
            "{} → {}{}",
            f.folder,
            f.target,
            if f.paused { " (paused)" } else { "" }
        );
        let counts: Vec<String> = f.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "  cases: {}",
            if counts.is_empty() {
                "none yet".into()
            } else {
                counts.join(", ")
            }
        );
        if let Some(why) = &f.missing {
            println!("  drop folder missing: it {why}; nothing is delivered from it");
        }
        if f.paused {
            println!(
                "  paused: its cases are watched but not delivered; `gc-hotfolder resume` delivers them"
            );
        }
        if let Some((since, why)) = &f.held {
            println!(
                "  held since {since}: {why}; its cases wait here until the config names what exists \
                 (then reload the service)"
            );
        }
        if let Some((until, why)) = &f.target_paused {
            println!("  target paused until {until}: {why}");
        }
        if let Some((case, since)) = &f.oldest_waiting {
            println!("  oldest waiting: {case} (last change {since})");
        }
        if let Some((case, at)) = &f.last_delivery {
            println!("  last delivery: {case} at {at}");
        }
        for (case, note) in &f.notes {
            println!("  note: {case}: {note}");
        }
        for q in &f.quarantined {
            println!("  quarantined: {} ({}): {}", q.case, q.case_id, q.reason);
        }
    }
    exit::OK
}

/// `gc-hotfolder receipts`
pub fn receipts(args: crate::cli::ReceiptsArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = config.server.state_dir.join("receipts");
    let all = crate::receipt::all(&dir);
    match &args.case {
        None => {
            for (_, r) in &all {
                let item = r.item.as_ref().map_or("-", |i| i.pk.as_str());
                let why = r
                    .reason
                    .as_deref()
                    .map(|w| format!("  {w}"))
                    .unwrap_or_default();
                println!(
                    "{}  {:?}  {}  r{}  {}{why}",
                    r.finished, r.outcome, r.case, r.revision, item
                );
            }
            exit::OK
        }
        Some(case) => {
            let abs = std::path::absolute(case).unwrap_or(case.clone());
            let found = all.iter().rev().find(|(_, r)| {
                // Receipts write names that are not UTF-8 with \xNN escapes: compare in that form too.
                // A case moved by its post-action is found where it is now, too.
                let here = |at: &str| Path::new(at) == abs || at == crate::rules::path_text(&abs);
                here(&r.case_path)
                    || r.now_at.as_deref().is_some_and(here)
                    || Path::new(&r.case) == case.as_path()
                    || r.case == crate::rules::path_text(case)
            });
            match found.map(|(p, _)| std::fs::read_to_string(p)) {
                Some(Ok(text)) => {
                    print!("{text}");
                    exit::OK
                }
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    exit::CASE_FAILED
                }
                None => {
                    eprintln!("{}: no receipt for this case", case.display());
                    exit::CASE_FAILED
                }
            }
        }
    }
}

/// `gc-hotfolder pause` / `resume`
pub fn pause(args: crate::cli::PauseArgs, paused: bool) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let wanted = std::path::absolute(&args.folder).unwrap_or(args.folder.clone());
    let Some(folder) = config.folders.iter().find(|f| f.path == wanted) else {
        eprintln!(
            "{}: not a drop folder of {}",
            args.folder.display(),
            args.config.display()
        );
        return exit::USAGE;
    };
    match Journal::open(&config.server.state_dir).and_then(|j| j.set_paused(&folder.path, paused)) {
        Ok(()) => {
            println!(
                "{} {}",
                if paused { "paused" } else { "resumed" },
                folder.path.display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

/// Run the command the command line names, with logging set up as it asks; its exit code.
pub fn dispatch(cli: cli::Cli) -> std::process::ExitCode {
    crate::cli::init_logging(cli.log_format);
    if cli::prints_for_a_pipe(&cli.command) {
        // `status | head` ends quietly, as other Unix tools do, instead of panicking on EPIPE. Only for
        // commands that print and exit: the agent and the servers keep SIGPIPE ignored, as Rust sets it.
        // SAFETY: called before any thread is started; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let code = match cli.command {
        cli::Command::Upload(args) => crate::upload::main(args),
        cli::Command::Pull(args) => crate::pull::main(args),
        cli::Command::Run(args) => run(args),
        cli::Command::Check(args) => check(args),
        cli::Command::Explain(args) => explain(args),
        cli::Command::Status(args) => status(args),
        cli::Command::Receipts(args) => receipts(args),
        cli::Command::Pause(args) => pause(args, true),
        cli::Command::Resume(args) => pause(args, false),
        cli::Command::Retry(args) => retry(args),
        cli::Command::Demo(args) => crate::demo::main(args),
        cli::Command::Completions { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "gc-hotfolder", &mut std::io::stdout());
            exit::OK
        }
        cli::Command::Man(args) => {
            crate::manual::main(args.command.as_deref(), args.out_dir.as_deref())
        }
        cli::Command::Sandbox(args) => crate::sandbox_command::main(args),
    };
    std::process::ExitCode::from(code)
}
