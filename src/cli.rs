//! The command-line interface. Each subcommand has `--help`; exit codes are documented in [`exit`].

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gc-hotfolder",
    version,
    about = "Turn drop folders into Grand Challenge uploads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Grand Challenge-compatible sandbox server on loopback.
    Sandbox(SandboxArgs),
}

/// Run a Grand Challenge-compatible server: the REST API of gc-protocol.md plus an S3-like part endpoint,
/// background imports, fault injection, and `GET /_sandbox/state` to inspect what it holds.
///
/// Prints the API base URL (and the CA file with --tls, and the demo tokens with the built-in fixture),
/// then serves until Ctrl-C or SIGTERM and exits 0.
#[derive(Debug, clap::Args)]
#[command(after_long_help = crate::sandbox::command::FAULT_HELP)]
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
    pub faults: Vec<crate::sandbox::FaultRule>,
}

pub fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Sandbox(args) => std::process::ExitCode::from(crate::sandbox::command::main(args)),
    }
}
