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

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {}

pub fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Sandbox(_) => std::process::ExitCode::SUCCESS,
    }
}
