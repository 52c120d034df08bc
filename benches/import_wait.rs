//! Cases against a platform that takes its time to import, beside gcapi: `cargo bench --bench import_wait`.
//!
//! Two shapes of case, each sent by `gc-hotfolder upload` with default settings and by gcapi 0.16.1's
//! `add_case_to_archive` loop (`benches/gcapi_cases.py`), each into a fresh sandbox of its own (HTTPS, as
//! the platform) whose imports take 0, 5 and 30 s, each timed until the sandbox shows every value of every
//! case. Printed per row: both times, the ratio, our peak RSS, and the sums of our receipts' phase timings.
//!
//! - small: a 100-slice 64×64 DICOM series, a PDF and a value (101 uploads a case);
//! - large: a 60-slice 512×512 DICOM series, a 30 MB MetaImage, a PDF and a value (62 uploads, 61 MB).
//!
//! Our DICOM goes de-identified (the default); gcapi sends the files as they are.
//!
//! Environment: `GC_BENCH_DELAYS` (seconds, default `0,5,30`), `GC_BENCH_SMALL` (cases, default 40),
//! `GC_BENCH_LARGE` (cases, default 10; 0 leaves a shape out), `GC_BENCH_LIMITS` (lines for our
//! config's `[limits]`, e.g. `parallel_cases = 8`, instead of the defaults), `GC_BENCH_DIR` (where the
//! files go), and `GC_HOTFOLDER_GCAPI_PYTHON` (a python with gcapi 0.16; else a venv is made in
//! `target/`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

use gc_content::samples;
use gc_hotfolder::deliver::Timings;
use gc_sandbox::DEMO_TOKEN;

/// Cases of one shape, written once, sent by both.
struct Shape {
    name: &'static str,
    drop: PathBuf,
    cases: Vec<PathBuf>,
    /// Our socket rules for it.
    rules: &'static str,
    /// The same cases as gcapi specs (see `gcapi_cases.py`).
    gcapi_cases: PathBuf,
}

/// A `[[folder.socket]]` rule: the socket's slug, and the key and value that find its file or value.
macro_rules! socket_rule {
    ($slug:literal, $key:literal, $value:literal) => {
        concat!(
            "  [[folder.socket]]\n  slug = \"",
            $slug,
            "\"\n  ",
            $key,
            " = \"",
            $value,
            "\"\n"
        )
    };
}

const SMALL_RULES: &str = concat!(
    "\n",
    socket_rule!("ct-image", "files", "dicom/*.dcm"),
    socket_rule!("report", "files", "report.pdf"),
    socket_rule!("lesion-count", "value_file", "count.json"),
);

const LARGE_RULES: &str = concat!(
    "\n",
    socket_rule!("ct-image", "files", "dicom/*.dcm"),
    socket_rule!("generic-medical-image", "files", "image.mha"),
    socket_rule!("report", "files", "report.pdf"),
    socket_rule!("lesion-count", "value_file", "count.json"),
);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let delays: Vec<u64> = common::env_list("GC_BENCH_DELAYS", "0,5,30");
    let n_small: usize = common::env_or("GC_BENCH_SMALL", 40);
    let n_large: usize = common::env_or("GC_BENCH_LARGE", 10);
    let python = gc_testkit::python::python_with(
        &gc_testkit::venvs!(),
        "gcapi-0.16.1",
        &["gcapi==0.16.1"],
        "gcapi",
        "GC_HOTFOLDER_GCAPI_PYTHON",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tmp = common::scratch_dir();
    let shapes: Vec<Shape> = [
        ("small", n_small, SMALL_RULES),
        ("large", n_large, LARGE_RULES),
    ]
    .into_iter()
    .filter(|(_, n, _)| *n > 0)
    .map(|(name, n, rules)| write_shape(tmp.path(), name, n, rules))
    .collect();
    let limits = std::env::var("GC_BENCH_LIMITS").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = if limits.is_empty() {
        "default settings".to_owned()
    } else {
        format!("[limits] {limits}")
    };
    println!("gc-hotfolder upload ({settings}) vs gcapi 0.16.1, sandbox over HTTPS, {cores} cores");
    println!("each timed until the sandbox shows every value of every case");
    println!(
        "{:<6} {:>6} {:>6} {:>9} {:>9} {:>7} {:>9} {:>8}   phase sums over the receipts (s)",
        "shape", "cases", "import", "ours", "gcapi", "ratio", "peak RSS", "our CPU"
    );
    let mut run = 0;
    for delay in &delays {
        for shape in &shapes {
            run += 1;
            let dir = tmp.path().join(format!("run-{run}"));
            let ours = run_ours(shape, *delay, &dir.join("ours"), &limits);
            let theirs = run_gcapi(&python, shape, *delay, &dir.join("gcapi"));
            let t = &ours.sums;
            println!(
                "{:<6} {:>6} {:>5}s {:>8.2}s {:>8.2}s {:>6.2}× {:>6} MiB {:>7.1}s   queued {:.1}, checks {:.1}, deid {:.1}, upload {:.1}, patch {:.1}, import wait {:.1}",
                shape.name,
                shape.cases.len(),
                delay,
                ours.seconds,
                theirs,
                theirs / ours.seconds,
                ours.peak_rss_kib / 1024,
                ours.cpu_seconds,
                t.queued,
                t.prechecks,
                t.deidentify,
                t.upload,
                t.patch,
                t.import_wait
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!(
        "goals: ≥ 3× gcapi at 5 s and 30 s import delay; ≥ 15× for the small cases and ≥ 4× for the large \
         ones without delay; memory flat"
    );
}

/// Write `n` cases of a shape below `root/<name>`, and their gcapi specs.
fn write_shape(root: &Path, name: &'static str, n: usize, rules: &'static str) -> Shape {
    let drop = root.join(name);
    let mut cases = Vec::new();
    let mut specs = Vec::new();
    for i in 0..n {
        let case = drop.join(format!("{name}-{i:03}"));
        let dicom = case.join("dicom");
        std::fs::create_dir_all(&dicom).expect("case folder");
        let ids = samples::DicomSeriesIds::new(i as u64);
        let (slices, side) = if name == "large" {
            (60, 512)
        } else {
            (100, 64)
        };
        let mut series = samples::write_dicom_series(&dicom, slices, side, side, &ids, i as u64)
            .expect("series");
        series.sort();
        samples::write_pdf(&case.join("report.pdf"), &format!("report {i}")).expect("pdf");
        std::fs::write(case.join("count.json"), i.to_string()).expect("value");
        let mut values = vec![
            serde_json::json!({"socket": "ct-image", "files": series}),
            serde_json::json!({"socket": "report", "file": case.join("report.pdf")}),
            serde_json::json!({"socket": "lesion-count", "value": i}),
        ];
        if name == "large" {
            let mha = case.join("image.mha");
            samples::write_mha(&mha, [512, 512, 115], i as u64).expect("mha");
            values.push(serde_json::json!({"socket": "generic-medical-image", "files": [mha]}));
        }
        specs.push(serde_json::json!({"title": format!("gcapi-{name}-{i:03}"), "values": values}));
        cases.push(case);
    }
    let gcapi_cases = root.join(format!("{name}-gcapi.json"));
    std::fs::write(&gcapi_cases, serde_json::to_vec(&specs).expect("json")).expect("specs");
    Shape {
        name,
        drop,
        cases,
        rules,
        gcapi_cases,
    }
}

/// A fresh sandbox over HTTPS whose imports take `delay` seconds: the process, its API URL, its CA.
fn sandbox(dir: &Path, delay: u64) -> (std::process::Child, String, PathBuf) {
    let data = dir.join("sandbox");
    let delay = format!("{delay}s");
    let args: [&OsStr; 3] = ["--tls".as_ref(), "--import-delay".as_ref(), delay.as_ref()];
    let (child, base) = common::start_sandbox_with(&data, &args);
    (child, base, data.join("tls/ca.pem"))
}

struct Ours {
    seconds: f64,
    peak_rss_kib: u64,
    /// User and system CPU time of our process.
    cpu_seconds: f64,
    sums: Timings,
}

fn run_ours(shape: &Shape, delay: u64, dir: &Path, limits: &str) -> Ours {
    let (mut sb, base, ca) = sandbox(dir, delay);
    let config = dir.join("config.toml");
    let text = format!(
        "[server]\nurl = \"{base}\"\ntoken = \"{DEMO_TOKEN}\"\nca_cert = \"{}\"\nstate_dir = \"{}\"\n\n\
         [limits]\n{limits}\n\n[[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\n{}",
        ca.display(),
        dir.join("state").display(),
        shape.drop.display(),
        shape.rules
    );
    std::fs::write(&config, text).expect("config");
    let log = std::fs::File::create(dir.join("upload.log")).expect("log");
    let t = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .args(["upload", "--config"])
        .arg(&config)
        .args(&shape.cases)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("gc-hotfolder upload");
    let (ok, peak_rss_kib, cpu_seconds) = wait_measured(child);
    let seconds = t.elapsed().as_secs_f64();
    let _ = sb.kill();
    let _ = sb.wait();
    assert!(
        ok,
        "gc-hotfolder upload failed: see {}",
        dir.join("upload.log").display()
    );
    let mut sums = Timings::default();
    for (_, r) in gc_hotfolder::receipt::all(&dir.join("state/receipts")) {
        let t = r.timings.unwrap_or_default();
        sums.queued += t.queued;
        sums.prechecks += t.prechecks;
        sums.deidentify += t.deidentify;
        sums.upload += t.upload;
        sums.patch += t.patch;
        sums.import_wait += t.import_wait;
    }
    Ours {
        seconds,
        peak_rss_kib,
        cpu_seconds,
        sums,
    }
}

/// Wait for a child: whether it succeeded, its peak RSS in KiB and the CPU time it used.
fn wait_measured(child: std::process::Child) -> (bool, u64, f64) {
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 on our own child's pid fills `status` and `usage`, both ours.
    let usage = unsafe {
        libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr());
        usage.assume_init()
    };
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
    (ok, usage.ru_maxrss as u64, cpu)
}

/// gcapi's loop over the same cases; its own measure from the first call (Python's start-up excluded).
fn run_gcapi(python: &Path, shape: &Shape, delay: u64, dir: &Path) -> f64 {
    let (mut sb, base, _) = sandbox(dir, delay);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/gcapi_cases.py");
    let out = Command::new(python)
        .arg(&script)
        .env("GC_BASE_URL", &base)
        .env("GC_TOKEN", DEMO_TOKEN)
        .env("GC_ARCHIVE", "demo-archive")
        .env("GC_CASES", &shape.gcapi_cases)
        .env_remove("GRAND_CHALLENGE_AUTHORIZATION")
        .output()
        .expect("python");
    let _ = sb.kill();
    let _ = sb.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gcapi failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a summary line");
    summary["seconds"].as_f64().expect("seconds")
}
