use clap::Parser;

fn main() -> std::process::ExitCode {
    gc_hotfolder::commands::dispatch(gc_hotfolder::cli::Cli::parse())
}
