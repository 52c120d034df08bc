//! The command-line interface. Each subcommand has `--help`; exit codes are documented in [`exit`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit codes, stable for scripts.
pub mod exit {
    /// Everything asked for was done.
    pub const OK: u8 = 0;
    /// At least one case was not delivered (its receipt says why).
    pub const CASE_FAILED: u8 = 1;
    /// Bad usage or an invalid config file.
    pub const USAGE: u8 = 2;
    /// The platform refused the token or could not be reached: nothing could be delivered.
    pub const PLATFORM: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "gc-hotfolder",
    version,
    about = "Turn drop folders into Grand Challenge uploads",
    after_help = "Logging: GC_HOTFOLDER_LOG sets the log filter (e.g. `debug`, or \
                  `gc_hotfolder=debug,warn`); if it is unset, RUST_LOG is used; the default is `info`."
)]
pub struct Cli {
    /// Log format. `auto`: the systemd journal when run by systemd, human-readable lines otherwise.
    #[arg(long, global = true, default_value = "auto")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
    Journald,
}

impl LogFormat {
    /// What `auto` means here: systemd connects a service's stderr to the journal and says so in
    /// `JOURNAL_STREAM` (device:inode of that stream); then structured journal entries beat text lines.
    pub fn resolve(
        self,
        journal_stream: Option<&str>,
        stderr_dev_ino: Option<(u64, u64)>,
    ) -> LogFormat {
        match self {
            LogFormat::Auto => {
                let to_journal = journal_stream
                    .and_then(|v| v.split_once(':'))
                    .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
                    .is_some_and(|ids| Some(ids) == stderr_dev_ino);
                if to_journal {
                    LogFormat::Journald
                } else {
                    LogFormat::Human
                }
            }
            other => other,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch every configured drop folder and deliver each case once it has stopped changing.
    ///
    /// Runs until SIGTERM or Ctrl-C; in-flight deliveries reach a checkpoint first. Exit status: 0 after a
    /// clean stop, 2 config error, 3 the platform refused the token.
    Run(RunArgs),
    /// Validate a config file; with --online also the token, the targets and every socket.
    ///
    /// Also warns about files the service's own user could not read (a 0700 folder, a root-only
    /// token_file). Exit status: 0 valid, 1 valid but a drop folder does not exist or cannot be listed,
    /// 2 invalid config, 3 the platform disagrees (token, target or socket).
    Check(CheckArgs),
    /// Per folder: cases by state, the oldest waiting, the last delivery, quarantined cases with reasons.
    Status(StatusArgs),
    /// List the latest receipt of every case, or print one case's receipt (JSON).
    Receipts(ReceiptsArgs),
    /// Say which folder, case, rule and socket a path maps to, or why none.
    Explain(ExplainArgs),
    /// Try it: a sandbox on loopback plus the agent on ./demo-drop, with example cases. Ctrl-C stops.
    Demo(DemoArgs),
    /// Stop delivering a drop folder's cases (they are still watched); a running agent notices within seconds.
    Pause(PauseArgs),
    /// Deliver a paused drop folder's cases again.
    Resume(PauseArgs),
    /// Put quarantined cases back in line; a running agent takes them up within seconds.
    Retry(RetryArgs),
    /// Upload case folders once: plan each with its folder's socket rules, upload, verify, write receipts.
    ///
    /// Exit status: 0 all delivered, 1 some case failed (see its receipt), 2 usage or config error,
    /// 3 the platform refused the token or was unreachable.
    Upload(UploadArgs),
    /// Download an archive's items, a reader study's display sets or an algorithm's job outputs into
    /// DEST, one folder per item or job.
    ///
    /// Exit status: 0 everything pulled, 1 some socket was skipped or failed (printed, with the reason),
    /// 2 usage or config error, 3 the platform refused the token or was unreachable.
    Pull(PullArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Print a manual page (roff): the program's, or one command's; with --out-dir write them all.
    ///
    /// Every command has its page (`gc-hotfolder-run.1`, ...), with its options, exit status,
    /// environment and files, e.g. `gc-hotfolder man --out-dir /usr/local/share/man/man1`.
    Man(ManArgs),
    /// Run a Grand Challenge-compatible sandbox server on loopback.
    Sandbox(SandboxArgs),
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The command whose page to print (default: the program's page).
    pub command: Option<String>,
    /// Write every page into this folder as gc-hotfolder.1, gc-hotfolder-run.1, ...
    #[arg(long, conflicts_with = "command")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The configuration file (its [[folder]] rules decide how each case maps to sockets).
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// Where to write receipts (default: <state_dir>/receipts).
    #[arg(long)]
    pub receipts: Option<PathBuf>,
    /// Case folders, each inside one of the configured drop folders.
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = PULL_HELP)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["archive", "reader_study", "algorithm"])
))]
pub struct PullArgs {
    /// The configuration file (only its [server] table is used: URL, token, CA).
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// Slug of the archive whose items to download.
    #[arg(long)]
    pub archive: Option<String>,
    /// Slug of the reader study whose display sets to download.
    #[arg(long)]
    pub reader_study: Option<String>,
    /// Slug of the algorithm whose jobs' outputs to download (the jobs that succeeded).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Where the item (or job) folders go (created if missing).
    pub dest: PathBuf,
}

// One line per paragraph: clap wraps them to the terminal.
const PULL_HELP: &str = "\
LAYOUT
Each item becomes DEST/<title>, or DEST/<pk> when the title is empty, already taken, or not usable as a folder name. Inside, every socket has its entry at the socket's relative path: a value as its JSON (e.g. lesion-count.json), a file as downloaded (e.g. report.pdf), an image as a folder of its files (e.g. images/ct-image/ct.mha).

RESUMING
DEST/.gc-pull.json records, per item, its folder and the value of each socket that was completely written. Running the same pull again skips a socket whose value is unchanged and whose files are present, downloads again a socket whose value changed on the platform (replacing the old files) or whose relative path changed (removing the files at the old path), and removes the files of a socket that no longer has a value. Folders of items that left the platform are kept.

AS A DROP FOLDER
Downloads go to DEST/.gc-pull.tmp first and are moved into place when complete, so an item folder never holds a partial file or a dotfile. With socket rules matching the relative paths (e.g. files = \"images/ct-image/*\", value_file = \"lesion-count.json\"), DEST is a drop folder whose item folders upload again as they are.

ALGORITHMS
With --algorithm, each job of that algorithm that succeeded becomes DEST/<job pk>: every job the token may see, which is its own jobs, and for an editor of the algorithm its users' jobs too. The folder holds one entry per output socket at the socket's relative path, written as above. Jobs that have not succeeded are listed with their status and skipped, which is not an error: a later pull fetches those that have succeeded since.

DICOM image sets cannot be downloaded through the API; such sockets are reported as skipped.";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// Also check the token, that each target exists and is writable, and every socket and its kind.
    #[arg(long)]
    pub online: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReceiptsArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// A case folder (or its path below the drop folder): print its receipt.
    pub case: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// A drop folder of the config.
    pub folder: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// A drop folder, a case folder or a file inside a case.
    pub path: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the drop folder, config, journal and receipts of the demo go.
    #[arg(long, default_value = "demo-drop")]
    pub dir: PathBuf,
    /// The sandbox's port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    #[arg(long, short, env = "GC_HOTFOLDER_CONFIG")]
    pub config: PathBuf,
    /// Case folders to retry.
    #[arg(
        required_unless_present = "quarantined",
        conflicts_with = "quarantined"
    )]
    pub cases: Vec<PathBuf>,
    /// Retry every quarantined case.
    #[arg(long)]
    pub quarantined: bool,
}

/// Run a Grand Challenge-compatible server: the REST API of gc-protocol.md plus an S3-like part endpoint,
/// background imports, fault injection, and `GET /_sandbox/state` to inspect what it holds.
///
/// Prints the API base URL (and the CA file with --tls, and the demo tokens with the built-in fixture),
/// then serves until Ctrl-C or SIGTERM and exits 0.
#[derive(Debug, clap::Args)]
#[command(after_long_help = SANDBOX_HELP)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    /// Origin used in every absolute URL the server returns (default: from the listen address).
    #[arg(long)]
    pub public_url: Option<url::Url>,
    /// Serve HTTPS with a throw-away CA (gcapi insists on https); the CA is written to <tls-dir>/ca.pem.
    #[arg(long)]
    pub tls: bool,
    /// Where to write the CA certificate with --tls (default: <data-dir>/tls or a temporary folder).
    #[arg(long)]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Fixture TOML with users/tokens, sockets, archives, reader studies and items (default: the demo world).
    #[arg(long)]
    pub fixture: Option<std::path::PathBuf>,
    /// Where uploaded bytes and stored files live (default: a temporary folder removed on exit).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Delay before each background import, e.g. 500ms, 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub import_delay: Option<std::time::Duration>,
    /// Smallest non-final S3 part in bytes (5242880 on the platform).
    #[arg(long)]
    pub min_part_size: Option<u64>,
    /// Seed for the fault RNG, to make a run reproducible.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A fault rule (repeatable), e.g. "PUT /s3/* 503 retry-after=1 p=0.2"; see below.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<gc_sandbox::FaultRule>,
    /// Write every request received (request line, headers, whole body, S3 part PUTs included) into
    /// this folder, two files per request; see below.
    #[arg(long, value_name = "DIR")]
    pub record: Option<std::path::PathBuf>,
}

/// Commands whose output is meant to be read, piped into `head` or `grep`: they neither serve nor
/// deliver, so a closed pipe may simply end them. Not `check --online`: it talks to the platform, and a
/// connection the server closes during the TLS handshake would raise SIGPIPE and kill it instead of
/// letting it say what went wrong.
pub fn prints_for_a_pipe(command: &Command) -> bool {
    matches!(
        command,
        Command::Check(CheckArgs { online: false, .. })
            | Command::Explain(_)
            | Command::Status(_)
            | Command::Receipts(_)
            | Command::Completions { .. }
            | Command::Man(_)
    )
}

/// Which log filter applies, and the variable it came from (for a warning if it does not parse).
#[derive(Debug, PartialEq, Eq)]
pub struct LogFilter {
    pub from: &'static str,
    pub directives: String,
}

/// `GC_HOTFOLDER_LOG` if set, else `RUST_LOG` (the convention most people try first), else `info`.
/// Either takes `tracing` filter directives: `debug`, `gc_hotfolder=debug,reqwest=warn`, ...
pub fn log_filter(gc_hotfolder_log: Option<String>, rust_log: Option<String>) -> LogFilter {
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    match (set(gc_hotfolder_log), set(rust_log)) {
        (Some(d), _) => LogFilter {
            from: "GC_HOTFOLDER_LOG",
            directives: d,
        },
        (None, Some(d)) => LogFilter {
            from: "RUST_LOG",
            directives: d,
        },
        (None, None) => LogFilter {
            from: "the default",
            directives: "info".into(),
        },
    }
}

pub fn init_logging(format: LogFormat) {
    use std::os::unix::fs::MetadataExt;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = log_filter(
        std::env::var("GC_HOTFOLDER_LOG").ok(),
        std::env::var("RUST_LOG").ok(),
    );
    let filter = || {
        EnvFilter::try_new(&spec.directives).unwrap_or_else(|e| {
            eprintln!(
                "warning: {}={:?} is not a log filter ({e}); logging at info",
                spec.from, spec.directives
            );
            EnvFilter::new("info")
        })
    };
    let stderr_ids = std::fs::metadata("/proc/self/fd/2")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let format = format.resolve(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_ids);
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("cannot log to the journal ({e}); logging to stderr"),
        }
    }
    // Colours only for a person at a terminal; a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.with_target(false).try_init(),
    };
}

/// The `--fault` syntax and the `--record` layout, shown by `gc-hotfolder sandbox --help`.
pub const SANDBOX_HELP: &str = "\
FAULT RULES (--fault, repeatable; also [[fault]] in the fixture and PUT /_sandbox/faults at run time)
  Words separated by spaces, in any order:
    [METHOD] PATH ACTION [p=PROBABILITY] [after] [times=N]
  PATH     a glob on the request path; * also matches '/', e.g. /api/v1/uploads/*  /s3/*  *
  ACTION   one of:
    STATUS [retry-after=SECONDS]   answer 500 (HTML page), 502/503/504/429 (proxy page, no JSON;
                                   S3-style XML under /s3/) instead of handling the request
    latency=MS                     wait MS milliseconds first
    drop                           close the connection without an answer (the request body is not read)
    too-many-uploads=N             POST /api/v1/uploads/ answers the \"too many uploads\" 400 once the
                                   caller owns N uploads
    import-fails                   answer as usual, but the background imports the request schedules
                                   (values of a PATCH set from uploads) fail: a DICOM image set or a
                                   file with a notification only, an image's session as \"Failed\"
  p=0.25   the chance per matching request (default 1)
  after    handle the request first (it is committed), then lose the answer: STATUS replaces it,
           drop cuts the connection in the middle of the response body
  times=N  fire at most N times
  Draws come from a seeded RNG (--seed) so a run can be reproduced.
EXAMPLES
  --fault 'PUT /s3/* 503 retry-after=1 p=0.2'
  --fault 'POST /api/v1/archives/items/ 502 after times=1'
  --fault '* latency=200'
  --fault '/s3/* drop p=0.05'
  --fault 'PATCH /api/v1/archives/items/* import-fails'
AT RUN TIME (PUT /_sandbox/faults replaces every rule; GET lists them as objects)
  The body is a JSON list (or {\"rules\": [...]}) of rules, each the words above as a string or an
  object with the fields of a fixture's [[fault]] table: action (status, latency, drop,
  too_many_uploads, import_fails) with status and retry_after, ms, or threshold; method, path,
  probability, after, times. [] removes every rule. An invalid rule is answered 400, changing nothing.
  curl -X PUT http://127.0.0.1:8000/_sandbox/faults -H 'Content-Type: application/json' \\
    -d '[\"PUT /s3/* 503 p=0.2\", {\"path\": \"/api/v1/uploads/*\", \"action\": \"latency\", \"ms\": 200}]'

REQUEST RECORDING (--record DIR)
  Every request received is written to DIR as it arrives, two files per request, numbered in
  order of arrival (after the records already in DIR):
    000001.head  the request line (METHOD /path?query HTTP/1.1) and every header as received,
                 one per line; once the body is over, an empty line and
                 'body: N bytes, complete' or 'body: N bytes, not read to its end'
    000001.body  the body, written chunk by chunk as the server reads it (part PUTs of any
                 size go to disk as they arrive, never held in memory)
  Recording changes nothing the server does: a body it does not read to its end (an error
  answered early, a fault that drops the connection) is recorded as far as it was read.
  The credentials of an Authorization header are not written, only the scheme and the first
  16 hex digits of their SHA-256: 'authorization: Bearer [redacted, sha256 3b1f0c...]'.";

#[cfg(test)]
mod tests {
    use super::{LogFilter, LogFormat, log_filter};

    #[test]
    fn the_log_filter_comes_from_gc_hotfolder_log_then_rust_log() {
        let f = |a: Option<&str>, b: Option<&str>| {
            log_filter(a.map(str::to_owned), b.map(str::to_owned))
        };
        let filter = |from, d: &str| LogFilter {
            from,
            directives: d.into(),
        };
        assert_eq!(
            f(Some("debug"), Some("warn")),
            filter("GC_HOTFOLDER_LOG", "debug")
        );
        assert_eq!(f(None, Some("warn")), filter("RUST_LOG", "warn"));
        assert_eq!(f(Some(" "), Some("warn")), filter("RUST_LOG", "warn"));
        assert_eq!(f(None, None), filter("the default", "info"));
    }

    #[test]
    fn auto_logs_to_the_journal_only_when_stderr_is_the_journal_stream() {
        assert_eq!(
            LogFormat::Auto.resolve(Some("8:1234"), Some((8, 1234))),
            LogFormat::Journald
        );
        assert_eq!(
            LogFormat::Auto.resolve(Some("8:1234"), Some((8, 99))),
            LogFormat::Human,
            "stderr redirected"
        );
        assert_eq!(
            LogFormat::Auto.resolve(None, Some((8, 1234))),
            LogFormat::Human
        );
        assert_eq!(
            LogFormat::Auto.resolve(Some("garbage"), Some((8, 1234))),
            LogFormat::Human
        );
        assert_eq!(
            LogFormat::Json.resolve(Some("8:1234"), Some((8, 1234))),
            LogFormat::Json
        );
    }
}
