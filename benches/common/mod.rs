//! Shared by the benchmarks: the sandbox binary as its own process on a free loopback port, and the agent
//! as another, with JSON logs to read its timings from.
#![allow(dead_code)] // not every benchmark uses every helper

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Start `gc-hotfolder sandbox` storing into `data`; returns it and its API base URL (the first URL it prints).
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

/// The agent on `config`, its JSON logs written to `log`.
pub fn agent(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("agent")
}

/// JSON log lines with this message: (timestamp, fields).
pub fn log_events(log: &Path, message: &str) -> Vec<(SystemTime, serde_json::Value)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .filter_map(|v| {
            let ts = time::OffsetDateTime::parse(
                v["timestamp"].as_str()?,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            Some((SystemTime::from(ts), v["fields"].clone()))
        })
        .collect()
}

/// Poll `f` until it holds; panics after `limit` naming `what`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Numbers from the environment variable `name`, separated by commas, or from `default` when it is
/// unset; what does not read as a number is left out.
pub fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
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
