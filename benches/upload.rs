//! Upload throughput and memory, measured, not asserted: `cargo bench --bench upload`.
//!
//! The sandbox runs as its own process on loopback. The baseline is `curl -T` of the same bytes to the same
//! sandbox's S3 endpoint (one PUT, as fast as one TCP stream goes); ours is the client's multipart upload.
//! Then a child process uploads a large file (default 4 GiB) and reports its peak RSS, which should stay
//! flat whatever the file size.
//!
//! Then DICOM de-identification: its own throughput on a 100-slice 512×512 CT series, and the rate of
//! de-identifying and uploading that series against uploading it as it is (what de-identification costs
//! a delivery; the goal is that it does not halve the rate), both as two passes (all copies, then the
//! uploads) and as a delivery makes them (the series sent as a DICOM image set, each copy uploaded while
//! the next are made). Each of these is the best of a few runs:
//! they take tenths of a second, so one run mostly measures whatever else the machine was doing.
//!
//! Environment: `GC_BENCH_SIZE` (bytes for the throughput run, default 1 GiB), `GC_BENCH_BIG` (bytes for
//! the memory run, default 4 GiB), `GC_BENCH_SLICES` (of the DICOM series, default 100),
//! `GC_BENCH_LATENCY_MS` (the sandbox waits this long before answering each request, as a platform farther
//! away than loopback would; default 0), `GC_BENCH_DIR`
//! (where the files go, default a temp dir).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use gc_client::uploads::{LocalFile, NoObserver};
use gc_client::{Client, ClientConfig, Token};
use gc_sandbox::DEMO_TOKEN;

const MIB: f64 = 1024.0 * 1024.0;
/// Runs of each DICOM measurement; the best is reported.
const RUNS: usize = 5;

fn main() {
    // reqwest is built without a default TLS provider; the library installs ring, and so does this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-upload") {
        // The memory run: this process does nothing but one upload, then reports its peak RSS.
        let (url, file) = (&args[i + 1], PathBuf::from(&args[i + 2]));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let secs = rt.block_on(upload(url, &file));
        println!("child: {secs:.3} s, peak RSS {} KiB", peak_rss_kib());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks benchmarks to name themselves; there is one.
    }

    let size: u64 = common::env_or("GC_BENCH_SIZE", 1 << 30);
    let big: u64 = common::env_or("GC_BENCH_BIG", 4 << 30);
    let tmp = common::scratch_dir();
    let data = tmp.path().join("sandbox-data");
    // A platform farther away than loopback: every request waits this long first.
    let latency: u64 = common::env_or("GC_BENCH_LATENCY_MS", 0);
    let fault = format!("* latency={latency}");
    let args: Vec<&std::ffi::OsStr> = match latency {
        0 => vec![],
        _ => vec!["--fault".as_ref(), fault.as_ref()],
    };
    let (mut sandbox, base) = common::start_sandbox_with(&data, &args);
    println!("sandbox: {base}");

    let file = tmp.path().join("payload.bin");
    gc_content::samples::write_large_file(&file, size, 7).expect("payload");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // Warm the page cache so neither side pays for the first read.
    let _ = std::fs::read(&file).map(|b| b.len());
    let curl = rt.block_on(curl_put(&base, &file));
    let ours = rt.block_on(upload(&base, &file));
    let mb = size as f64 / MIB;
    println!("throughput, {mb:.0} MiB over loopback:");
    println!(
        "  curl -T (one PUT)         {:8.1} MiB/s  ({curl:.2} s)",
        mb / curl
    );
    println!(
        "  gc-hotfolder (multipart)  {:8.1} MiB/s  ({ours:.2} s)",
        mb / ours
    );
    println!(
        "  ratio                     {:8.2}×  (goal ≥ 0.9×)",
        curl / ours
    );
    let _ = std::fs::remove_file(&file);

    dicom_series(&rt, &base, tmp.path());

    let bigfile = tmp.path().join("big.bin");
    gc_content::samples::write_large_file(&bigfile, big, 8).expect("big payload");
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(["--child-upload", &base])
        .arg(&bigfile)
        .output()
        .expect("child");
    let line = String::from_utf8_lossy(&out.stdout);
    println!(
        "memory, uploading {:.1} GiB in a child process: {}",
        big as f64 / 1024.0 / MIB,
        line.trim()
    );
    println!("  goal: flat, ≤ 100 MiB peak RSS");
    let _ = sandbox.kill();
    let _ = sandbox.wait();
}

/// De-identification alone, then the series uploaded as it is and de-identified + uploaded, as a delivery
/// does it (all copies first, then the uploads, files in parallel).
fn dicom_series(rt: &tokio::runtime::Runtime, base: &str, dir: &Path) {
    use gc_content::deidentify::UidMap;
    use gc_hotfolder::deliver::{Privacy, stage};
    let series = dir.join("series");
    std::fs::create_dir_all(&series).expect("series dir");
    let ids = gc_content::samples::DicomSeriesIds::new(11);
    let slices: u32 = common::env_or("GC_BENCH_SLICES", 100);
    let files = gc_content::samples::write_dicom_series(&series, slices, 512, 512, &ids, 11)
        .expect("series");
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let mb = bytes as f64 / MIB;
    let staging = dir.join("staging");
    let planned: Vec<gc_hotfolder::rules::PlannedFile> = files
        .iter()
        .map(|f| {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            gc_hotfolder::rules::PlannedFile {
                path: name.clone(),
                rel: PathBuf::from(&name),
                upload_name: name,
                size: std::fs::metadata(f).map_or(0, |m| m.len()),
            }
        })
        .collect();
    // As a delivery makes its copies (one worker per core), before anything is uploaded.
    let deidentify = || {
        let privacy = Privacy {
            staging: staging.clone(),
            uids: UidMap::random(),
        };
        let t = Instant::now();
        let done = stage(&series, &planned, &privacy).expect("de-identified");
        let out: Vec<PathBuf> = done.staged.into_iter().map(|s| s.local).collect();
        (out, t.elapsed().as_secs_f64())
    };
    // Warm the page cache for both sides.
    for f in &files {
        let _ = std::fs::read(f).map(|b| b.len());
    }
    // CPU time as well as wall time: on a busy machine the CPU seconds a run costs vary far less.
    let (deid_only, deid_cpu) = (0..RUNS)
        .map(|_| {
            let cpu = cpu_seconds();
            let wall = deidentify().1;
            (wall, cpu_seconds() - cpu)
        })
        .fold((f64::INFINITY, f64::INFINITY), |(w, c), (wall, cpu)| {
            (w.min(wall), c.min(cpu))
        });
    let plain = (0..RUNS)
        .map(|_| rt.block_on(upload_all(base, &files)))
        .fold(f64::INFINITY, f64::min);
    let (deid, sent) = (0..RUNS)
        .map(|_| {
            let (copies, deid) = deidentify();
            (deid, rt.block_on(upload_all(base, &copies)))
        })
        .fold((f64::INFINITY, 0.0), |best, run| {
            if run.0 + run.1 < best.0 + best.1 {
                run
            } else {
                best
            }
        });
    let with = deid + sent;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "DICOM series, {slices} slices of 512×512 (16 bit), {mb:.1} MiB in {slices} files, {workers} cores, best of {RUNS}:"
    );
    println!(
        "  de-identification alone   {:8.1} MiB/s  ({deid_only:.2} s)",
        mb / deid_only
    );
    println!(
        "    per CPU-second          {:8.1} MiB/s  ({deid_cpu:.3} s of CPU time, all threads)",
        mb / deid_cpu
    );
    println!(
        "  upload as it is           {:8.1} MiB/s  ({plain:.2} s)",
        mb / plain
    );
    println!(
        "  de-identify + upload      {:8.1} MiB/s  ({deid:.2} s + {sent:.2} s)",
        mb / with
    );
    println!(
        "  rate with / without       {:8.2}×  (goal ≥ 0.5×)",
        plain / with
    );
    // The same series delivered as a DICOM image set, each copy sent while the next are made.
    let c = client(base);
    let (as_is, private) = (0..RUNS)
        .map(|run| {
            let as_is = rt.block_on(deliver(
                &c,
                &series,
                &planned,
                None,
                &format!("as-is-{run}"),
            ));
            let privacy = Privacy {
                staging: staging.clone(),
                uids: UidMap::random(),
            };
            let private = rt.block_on(deliver(
                &c,
                &series,
                &planned,
                Some(&privacy),
                &format!("private-{run}"),
            ));
            (as_is, private)
        })
        .fold((f64::INFINITY, f64::INFINITY), |(a, p), (x, y)| {
            (a.min(x), p.min(y))
        });
    println!("  delivered as a DICOM image set (item, uploads, PATCH; best of {RUNS}):");
    println!(
        "    as it is                {:8.1} MiB/s  ({as_is:.2} s)",
        mb / as_is
    );
    println!(
        "    de-identified           {:8.1} MiB/s  ({private:.2} s: copies sent while the rest are made)",
        mb / private
    );
    println!(
        "    rate with / without     {:8.2}×  (de-identifying first, then sending: {:.2}×)",
        as_is / private,
        plain / with
    );
    let _ = std::fs::remove_dir_all(&series);
    let _ = std::fs::remove_dir_all(&staging);
}

/// Deliver the series as the DICOM image set of a new item titled `title` (with `privacy`, as
/// de-identified copies) and return the seconds until its values were set; then wait, untimed, until the
/// platform has imported it, so that its import does not run beside the next measurement.
async fn deliver(
    c: &Client,
    case_dir: &Path,
    files: &[gc_hotfolder::rules::PlannedFile],
    privacy: Option<&gc_hotfolder::deliver::Privacy>,
    title: &str,
) -> f64 {
    use gc_hotfolder::deliver::{self, ItemStart, Local, NoCheckpoints, Sent, Timings};
    use gc_hotfolder::rules::{Plan, SocketPlan, Source};
    let plan = Plan {
        case: title.into(),
        case_path: title.into(),
        title: title.into(),
        target: gc_client::TargetKind::Archive,
        target_slug: "demo-archive".into(),
        sockets: vec![SocketPlan {
            slug: "dicom-image-set".into(),
            source: Source::DicomImageSet {
                files: files.to_vec(),
                image_name: title.into(),
            },
        }],
        unmatched: vec![],
    };
    let local = Local {
        case_dir,
        privacy,
        staging: None,
        outbox: None,
    };
    let timing = gc_client::VerifyTiming::default();
    let t = Instant::now();
    let sent = deliver::send(
        c,
        local,
        &plan,
        ItemStart::New,
        &timing,
        &NoCheckpoints,
        &mut Timings::default(),
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let Ok(Sent::Awaiting(awaiting)) = sent else {
        panic!("the series was not delivered: {:?}", sent.err())
    };
    let verifier = gc_client::Verifier::start(c.clone(), timing.clone());
    let waited = (*awaiting, Duration::ZERO);
    deliver::verify(
        c,
        &verifier,
        waited,
        &timing,
        &NoCheckpoints,
        &mut Timings::default(),
    )
    .await
    .expect("imported");
    if let Some(p) = privacy {
        gc_hotfolder::deliver::remove_staging(&p.staging);
    }
    secs
}

/// Upload the files as a delivery does: all at once, the client bounding files and parts in flight.
async fn upload_all(base: &str, files: &[PathBuf]) -> f64 {
    let c = client(base);
    let t = Instant::now();
    let uploads = files.iter().map(|f| {
        let local = LocalFile {
            path: f.clone(),
            filename: f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let c = &c;
        async move { c.upload_file(&local, None, &NoObserver).await }
    });
    futures_util::future::try_join_all(uploads)
        .await
        .expect("uploads");
    t.elapsed().as_secs_f64()
}

/// User and system CPU time of this process so far, all threads.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn client(base: &str) -> Client {
    Client::new(ClientConfig {
        base_url: url::Url::parse(base).expect("url"),
        token: Token::parse(DEMO_TOKEN).expect("token"),
        ca_cert: None,
        part_size: 32 << 20,
        parallel_parts: 8,
        parallel_files: 4,
        retry: Default::default(),
        timeout: Duration::from_secs(60),
        observer: std::sync::Arc::new(gc_client::Unobserved),
    })
    .expect("client")
}

async fn upload(base: &str, file: &Path) -> f64 {
    let c = client(base);
    let local = LocalFile {
        path: file.to_owned(),
        filename: "payload.bin".into(),
    };
    let t = Instant::now();
    c.upload_file(&local, None, &NoObserver)
        .await
        .expect("upload");
    t.elapsed().as_secs_f64()
}

/// One presigned part URL from the API, then `curl -T` of the whole file to it.
async fn curl_put(base: &str, file: &Path) -> f64 {
    let http = reqwest::Client::new();
    let auth = format!("Bearer {DEMO_TOKEN}");
    let up: serde_json::Value = http
        .post(format!("{base}uploads/"))
        .header("Authorization", &auth)
        .json(&serde_json::json!({"filename": "curl.bin"}))
        .send()
        .await
        .expect("create upload")
        .json()
        .await
        .expect("json");
    let (pk, s3) = (
        up["pk"].as_str().unwrap_or_default(),
        up["s3_upload_id"].as_str().unwrap_or_default(),
    );
    let urls: serde_json::Value = http
        .patch(format!("{base}uploads/{pk}/{s3}/generate-presigned-urls/"))
        .header("Authorization", &auth)
        .json(&serde_json::json!({"part_numbers": [1]}))
        .send()
        .await
        .expect("presign")
        .json()
        .await
        .expect("json");
    let url = urls["presigned_urls"]["1"]
        .as_str()
        .expect("a part URL")
        .to_owned();
    let t = Instant::now();
    let status = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-T"])
        .arg(file)
        .arg(&url)
        .status()
        .expect("curl");
    assert!(status.success(), "curl failed");
    t.elapsed().as_secs_f64()
}
