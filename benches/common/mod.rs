//! Shared by the benchmarks: the sandbox binary as its own process on a free loopback port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Start `gc-hotfolder sandbox` storing into `data`; returns it and its API base URL (the first URL it prints).
#[allow(dead_code)] // not every benchmark uses every helper
pub fn start_sandbox(data: &Path) -> (Child, String) {
    start_sandbox_with(data, &[])
}

/// [`start_sandbox`] with more `gc-hotfolder sandbox` arguments, e.g. `--fixture world.toml`.
pub fn start_sandbox_with(data: &Path, args: &[&std::ffi::OsStr]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .args(["sandbox", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sandbox");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the sandbox prints its URL")
            .expect("utf-8");
        if let Some(i) = line.find("http") {
            break line[i..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

/// A number from the environment, or `default` when it is unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A scratch folder for one benchmark run, below `GC_BENCH_DIR` if set (large files need room).
pub fn scratch_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("GC_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("gc-bench")
        .tempdir_in(parent)
        .expect("tempdir")
}
