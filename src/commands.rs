//! The top of the program: [`dispatch`] runs the command the command line names, and the subcommands
//! that operate the agent live here (`run`, `check`, `explain`, `status`, `receipts`, `pause`, `resume`,
//! `retry`). Each loads the config, does one thing and maps the outcome to an exit code an operator or a
//! script can rely on.

use std::path::{Path, PathBuf};

use crate::agent::{self, AgentOptions};
use crate::cli::{self, CheckArgs, ExplainArgs, RetryArgs, RunArgs, exit};
use crate::config::Config;
use crate::journal::{CaseRecord, CaseState, Journal};
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
        for warning in crate::rules::template_warnings(f) {
            println!("  folder[{}] WARNING: {warning}", f.index);
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

/// Title warnings for the cases now in a folder: a title (or DICOM image set name) that repeats the
/// Patient ID, Patient's Name or Accession Number of the case's DICOM files, taken from a folder name
/// at any depth or not (read from their headers only).
fn title_warnings_of_present_cases(f: &crate::config::Folder) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for case_dir in crate::watch::list_cases(f).unwrap_or_default() {
        let Ok(snap) = crate::settle::snapshot(&case_dir) else {
            continue;
        };
        let Ok(plan) = crate::rules::plan(f, &case_dir, &snap.case_files()) else {
            continue;
        };
        let identifiers: Vec<gc_content::deidentify::PatientIdentifiers> = plan
            .sockets
            .iter()
            .flat_map(|s| s.source.files())
            .filter_map(|pf| gc_content::deidentify::patient_identifiers(&case_dir.join(&pf.rel)))
            // One series is one patient: the first DICOM file tells, without reading them all.
            .take(1)
            .collect();
        for w in crate::deliver::identifier_warnings(&plan, &identifiers) {
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
    let misplaced = config
        .folder_for(&path)
        .and_then(|f| crate::watch::misplaced_file(f, &path));
    for line in crate::rules::explain(&config, &path, files.as_deref(), misplaced.as_deref()) {
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
    // Each case with the folder the admin named, if it is not the case's place in its drop folder.
    let wanted: Vec<(&CaseRecord, Option<PathBuf>)> = if args.quarantined {
        all.iter()
            .filter(|c| c.state == CaseState::Quarantined)
            .map(|c| (c, None))
            .collect()
    } else {
        let mut v = Vec::new();
        for case in &args.cases {
            let abs = std::path::absolute(case).unwrap_or(case.clone());
            match named_case(&config, &all, &abs) {
                Some(found) => v.push(found),
                None => {
                    eprintln!(
                        "{}: the journal does not know this case (name its folder in a drop folder, \
                         or where quarantine moved it)",
                        case.display()
                    );
                    code = exit::CASE_FAILED;
                }
            }
        }
        v
    };
    for (c, named) in wanted {
        if let Err(e) = retry_one(&config, &journal, c, named) {
            eprintln!("{e}");
            code = exit::CASE_FAILED;
        }
    }
    code
}

/// Put one case back in line: moved back into its drop folder from where it is now, if it is not there.
fn retry_one(
    config: &Config,
    journal: &Journal,
    c: &CaseRecord,
    named: Option<PathBuf>,
) -> Result<(), String> {
    let home = c.folder.join(&c.case);
    if c.state == CaseState::Delivered
        && let Some((why, _, _)) = journal
            .post_action_failures()
            .map_err(|e| format!("{}: {e}", home.display()))?
            .get(&c.id)
    {
        journal
            .wake(c.id)
            .map_err(|e| format!("{}: {e}", home.display()))?;
        println!(
            "{}: delivered; the running agent tries its post-action again now (it failed: {why})",
            home.display()
        );
        return Ok(());
    }
    let place = match named {
        Some(at) if at.is_dir() => Place::Elsewhere(at),
        Some(at) => {
            return Err(format!(
                "{}: not retried: there is no such folder",
                at.display()
            ));
        }
        None => locate(config, c)?,
    };
    let moved_back = match place {
        Place::Home => None,
        Place::Elsewhere(q) if home.exists() => {
            return Err(format!(
                "{}: not retried: {} exists, so it cannot be moved back into its drop folder; move one \
                 of them away and retry again",
                q.display(),
                home.display()
            ));
        }
        Place::Elsewhere(q) => {
            move_back(&q, &home, folder_of(config, c)).map_err(|e| {
                format!(
                    "{}: cannot move it back into its drop folder as {}: {e}",
                    q.display(),
                    home.display()
                )
            })?;
            if let Err(e) = journal.moved_to(c.id, None) {
                eprintln!("{}: {e}", home.display());
            }
            Some(q)
        }
    };
    journal
        .retry(c.id)
        .map_err(|e| format!("{}: {e}", c.case.display()))?;
    match moved_back {
        Some(q) => println!(
            "requeued {} (moved back from {} into its drop folder)",
            home.display(),
            q.display()
        ),
        None => println!("requeued {} (delivered from where it is)", home.display()),
    }
    Ok(())
}

/// Where a case's folder is now.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// In its drop folder.
    Home,
    /// Somewhere else (its quarantine folder), to be moved back.
    Elsewhere(PathBuf),
}

/// The case a path names, and the folder to take it from when that is not its drop folder: its place
/// in its drop folder, where the journal says quarantine moved it, or any folder in a quarantine folder
/// by its path there, with or without the number a move adds to a name already taken (`case.2`). An
/// admin who merged the two folders of a case quarantined twice names the one that is left.
fn named_case<'a>(
    config: &Config,
    all: &'a [CaseRecord],
    abs: &Path,
) -> Option<(&'a CaseRecord, Option<PathBuf>)> {
    if let Some(c) = all.iter().find(|c| c.folder.join(&c.case) == abs) {
        return Some((c, None));
    }
    if let Some(c) = all.iter().find(|c| c.moved_to.as_deref() == Some(abs)) {
        return Some((c, Some(abs.to_owned())));
    }
    for f in &config.folders {
        let Some(rel) = f
            .quarantine
            .as_deref()
            .and_then(|q| abs.strip_prefix(q).ok())
        else {
            continue;
        };
        let bare = numbered(rel).map(|(bare, _)| bare);
        let found = all
            .iter()
            .filter(|c| c.folder == f.path)
            .find(|c| c.case == rel)
            .or_else(|| {
                all.iter()
                    .filter(|c| c.folder == f.path)
                    .find(|c| Some(c.case.as_path()) == bare.as_deref())
            });
        if let Some(c) = found {
            return Some((c, Some(abs.to_owned())));
        }
    }
    None
}

/// `case.2` → (`case`, 2): the name a move gives a case whose name was taken in the destination.
fn numbered(rel: &Path) -> Option<(PathBuf, u32)> {
    let name = rel.file_name()?.to_str()?;
    let (bare, n) = name.rsplit_once('.')?;
    let n: u32 = n.parse().ok().filter(|n| *n >= 2)?;
    (!bare.is_empty()).then(|| (rel.with_file_name(bare), n))
}

/// Where a case is now, when the admin named it by its place in the drop folder (or by `--quarantined`):
/// there, where the journal says it was moved, or the one folder of its name in its quarantine folder.
fn locate(config: &Config, c: &CaseRecord) -> Result<Place, String> {
    let home = c.folder.join(&c.case);
    let recorded = c
        .moved_to
        .clone()
        .or_else(|| Some(quarantine_of(config, c)?.join(&c.case)));
    match &recorded {
        Some(q) if q.is_dir() => return Ok(Place::Elsewhere(q.clone())),
        _ if home.is_dir() => return Ok(Place::Home),
        _ => {}
    }
    let found: Vec<PathBuf> = quarantine_of(config, c)
        .map(|q| quarantine_copies(&q.join(&c.case)))
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(Place::Elsewhere(one.clone())),
        [] => Err(format!(
            "{}: not retried: the case is neither in its drop folder nor {}; name the folder where \
             it is now",
            home.display(),
            recorded.map_or_else(
                || "anywhere in the quarantine folder".to_owned(),
                |q| format!("where it was moved ({})", q.display())
            )
        )),
        many => Err(format!(
            "{}: not retried: it is in several folders of the quarantine folder ({}); merge them \
             into one, or name the one to retry",
            home.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The folders a case quarantined at `at` may be in: `at` itself and `at.2`, `at.3`, ….
fn quarantine_copies(at: &Path) -> Vec<PathBuf> {
    let Some(parent) = at.parent() else {
        return vec![];
    };
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            if p == at {
                return Some((1, p));
            }
            let rel = p.strip_prefix(parent).ok()?;
            let (bare, n) = numbered(rel)?;
            (parent.join(bare) == at).then_some((n, p))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

/// The quarantine folder of a case's drop folder, if it has one.
fn folder_of<'a>(config: &'a Config, c: &CaseRecord) -> Option<&'a crate::config::Folder> {
    config.folders.iter().find(|f| f.path == c.folder)
}

fn quarantine_of<'a>(config: &'a Config, c: &CaseRecord) -> Option<&'a Path> {
    folder_of(config, c).and_then(|f| f.quarantine.as_deref())
}

/// Move a case folder back to `home` in its drop folder, creating its parents (a case at depth 2) shared
/// with the drop folder's people; folders of the quarantine that this leaves empty go.
fn move_back(
    from: &Path,
    home: &Path,
    folder: Option<&crate::config::Folder>,
) -> std::io::Result<()> {
    if let Some(parent) = home.parent() {
        match folder {
            Some(f) => f.sharing().create_dir_all(parent)?,
            None => std::fs::create_dir_all(parent)?,
        }
    }
    std::fs::rename(from, home)?;
    if let Some(q) = folder.and_then(|f| f.quarantine.as_deref()) {
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
    let folders = match crate::status::status_report(&config) {
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
        print_folder_status(f);
    }
    exit::OK
}

/// One drop folder's part of `status`, as text for people.
fn print_folder_status(f: &crate::status::FolderStatus) {
    println!(
        "{} → {}{}",
        f.folder,
        f.target,
        if f.paused { " (paused)" } else { "" }
    );
    let counts: Vec<String> = f
        .counts
        .iter()
        .map(|(k, v)| format!("{v} {}", k.replace('_', " ")))
        .collect();
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
    if let Some(line) = misplaced_line(&f.misplaced) {
        println!("  {line}");
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
    for p in &f.post_action_failed {
        println!(
            "  post-action failed: {}: {} ({} time(s) since {}; tried again with back-off, and at once \
             with `gc-hotfolder retry`)",
            p.case, p.reason, p.failures, p.since
        );
    }
}

/// The `status` line about files where case folders are expected: how many, the first few, the fix.
fn misplaced_line(files: &[String]) -> Option<String> {
    let (first, rest) = match files {
        [] => return None,
        [a, b, c, rest @ ..] => (format!("{a}, {b}, {c}"), rest.len()),
        few => (few.join(", "), 0),
    };
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    Some(format!(
        "not delivered: {} file(s) where case folders are expected, so in no case: {first}{more}; \
         move them into case folders (`gc-hotfolder explain` on one says where)",
        files.len()
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbered_quarantine_name_leads_back_to_its_case() {
        assert_eq!(
            numbered(Path::new("P1/20240503.2")),
            Some((PathBuf::from("P1/20240503"), 2))
        );
        assert_eq!(numbered(Path::new("case.10")), Some(("case".into(), 10)));
        // Not a number a move adds: a name of its own.
        for own in ["case.1", "case.x", ".2", "case"] {
            assert_eq!(numbered(Path::new(own)), None, "{own}");
        }
    }

    #[test]
    fn the_misplaced_line_lists_a_few_and_counts_the_rest() {
        assert_eq!(misplaced_line(&[]), None);
        let files: Vec<String> = (1..=5).map(|i| format!("P1/IM{i}")).collect();
        let line = misplaced_line(&files).unwrap();
        assert!(
            line.starts_with("not delivered: 5 file(s) where case folders are expected")
                && line.contains("P1/IM1, P1/IM2, P1/IM3 and 2 more"),
            "{line}"
        );
    }
}
