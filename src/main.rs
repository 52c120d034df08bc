use clap::Parser;

fn main() -> std::process::ExitCode {
    gc_hotfolder::cli::run(gc_hotfolder::cli::Cli::parse())
}
