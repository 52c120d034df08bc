//! Manual pages, one per command, generated from the command-line interface so that they never drift
//! from `--help`, plus what `--help` does not say: exit status, environment and files.

use std::io::Write;
use std::path::Path;

/// What a command's exit codes mean, where they differ from the common meaning.
fn exit_status(command: &str) -> &'static [(u8, &'static str)] {
    match command {
        "run" => &[
            (0, "The agent stopped after SIGTERM or Ctrl-C."),
            (
                2,
                "The config is invalid, or the metrics address cannot be bound.",
            ),
            (
                3,
                "The platform refused the token, or the URL is not the platform's API.",
            ),
        ],
        "check" => &[
            (0, "The config is valid (warnings may still be printed)."),
            (
                1,
                "The config is valid, but a drop folder does not exist or cannot be listed.",
            ),
            (2, "The config is invalid."),
            (
                3,
                "With --online: the token was refused, the platform could not be reached, or a target or socket does not exist or does not fit its rule.",
            ),
        ],
        "upload" => &[
            (0, "Every case was delivered."),
            (1, "Some case was not delivered; its receipt says why."),
            (
                2,
                "Bad usage or an invalid config, or a path that is not a case of a configured drop folder.",
            ),
            (3, "The platform refused the token or could not be reached."),
        ],
        "pull" => &[
            (0, "Everything was pulled."),
            (
                1,
                "Some socket was skipped or failed (printed, with the reason).",
            ),
            (2, "Bad usage or an invalid config."),
            (3, "The platform refused the token or could not be reached."),
        ],
        "explain" => &[
            (0, "The path was explained."),
            (
                2,
                "Bad usage or an invalid config, or the path is outside every drop folder.",
            ),
        ],
        "retry" => &[
            (0, "Every case named was put back in line."),
            (
                1,
                "The journal does not know a case, or could not requeue it.",
            ),
            (2, "Bad usage, an invalid config or an unreadable journal."),
        ],
        _ => &[
            (0, "Done."),
            (2, "Bad usage, an invalid config or an unreadable journal."),
        ],
    }
}

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "GC_HOTFOLDER_CONFIG",
        "The configuration file, when --config is not given.",
    ),
    (
        "GC_HOTFOLDER_LOG",
        "Which log lines to write, e.g. debug, or gc_hotfolder=debug,warn; when unset, RUST_LOG is used (default: info).",
    ),
    (
        "GRAND_CHALLENGE_AUTHORIZATION",
        "The API token, used when the config names no token_file.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd: the token is read from its file gc-token (LoadCredential= in the unit) when neither token_file nor GRAND_CHALLENGE_AUTHORIZATION gives one.",
    ),
    (
        "HTTPS_PROXY, NO_PROXY",
        "A web proxy for reaching the platform, and the hosts reached without it. A service gets them from a drop-in (proxy.conf), not from a login shell.",
    ),
    (
        "JOURNAL_STREAM",
        "Set by systemd: with --log-format auto, logs go to the systemd journal as structured entries.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "/etc/gc-hotfolder/config.toml",
        "The configuration the service unit runs with (mode 0644 in a 0755 folder: the service's user reads it as any other user).",
    ),
    (
        "/etc/gc-hotfolder/token",
        "The API token, readable by root only; the unit passes it to the service as the credential gc-token.",
    ),
    (
        "STATE_DIR/journal.sqlite3",
        "The journal: every case and every delivery step (state_dir in the config; /var/lib/gc-hotfolder for the service).",
    ),
    (
        "STATE_DIR/receipts/TARGET/CASE.json",
        "The latest receipt of each case.",
    ),
    (
        "STATE_DIR/receipts/audit.jsonl",
        "Every receipt ever written, one JSON line each.",
    ),
];

/// Text for a roff paragraph: a line must not start with a control character.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

fn tagged(out: &mut Vec<u8>, title: &str, items: &[(String, &str)]) -> std::io::Result<()> {
    writeln!(out, ".SH \"{title}\"")?;
    for (tag, text) in items {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff_text(tag), roff_text(text))?;
    }
    Ok(())
}

/// The page of one command (`None`: the program itself), with the sections `--help` lacks.
pub fn page(cmd: &clap::Command, command: Option<&str>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    let codes: Vec<(String, &str)> = match command {
        Some(c) => exit_status(c),
        None => &[
            (0, "Success."),
            (1, "Some case was not delivered; its receipt says why."),
            (2, "Bad usage or an invalid config."),
            (3, "The platform refused the token or could not be reached."),
        ][..],
    }
    .iter()
    .map(|(code, text)| (code.to_string(), *text))
    .collect();
    tagged(&mut out, "EXIT STATUS", &codes)?;
    let env: Vec<(String, &str)> = ENVIRONMENT
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    tagged(&mut out, "ENVIRONMENT", &env)?;
    let files: Vec<(String, &str)> = FILES.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    tagged(&mut out, "FILES", &files)?;
    Ok(out)
}

/// `gc-hotfolder man`: one page to stdout (the program's, or one command's), or every page into a folder
/// as `gc-hotfolder.1`, `gc-hotfolder-run.1`, ...
pub fn main(command: Option<&str>, out_dir: Option<&Path>) -> u8 {
    use crate::cli::exit;
    let mut root = <crate::cli::Cli as clap::CommandFactory>::command();
    root.build();
    let mut pages: Vec<(String, Option<String>, clap::Command)> =
        vec![("gc-hotfolder".into(), None, root.clone())];
    for sub in root.get_subcommands() {
        let name = sub.get_name().to_owned();
        pages.push((format!("gc-hotfolder-{name}"), Some(name), sub.clone()));
    }
    if let Some(c) = command {
        pages.retain(|(_, name, _)| name.as_deref() == Some(c));
        if pages.is_empty() {
            eprintln!("error: there is no command '{c}'");
            return exit::USAGE;
        }
    }
    let result = match out_dir {
        None => pages.first().map_or(Ok(()), |(_, name, cmd)| {
            page(cmd, name.as_deref()).and_then(|p| std::io::stdout().write_all(&p))
        }),
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| {
            pages.iter().try_for_each(|(file, name, cmd)| {
                let p = page(cmd, name.as_deref())?;
                crate::fsutil::write_atomic(&dir.join(format!("{file}.1")), &p)
            })
        }),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write the manual: {e}");
            exit::USAGE
        }
    }
}
