//! Upload throughput and memory, measured, not asserted: `cargo bench --bench upload`.
//!
//! The sandbox runs as its own process on loopback. The baseline is `curl -T` of the same bytes to the same
//! sandbox's S3 endpoint (one PUT, as fast as one TCP stream goes); ours is the client's multipart upload.
//! Then a child process uploads a large file (default 4 GiB) and reports its peak RSS, which should stay
//! flat whatever the file size.
//!
//! Environment: `GC_BENCH_SIZE` (bytes for the throughput run, default 1 GiB), `GC_BENCH_BIG` (bytes for
//! the memory run, default 4 GiB), `GC_BENCH_DIR` (where the files go, default a temp dir).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use gc_hotfolder::gc::uploads::{LocalFile, NoObserver};
use gc_hotfolder::gc::{Client, ClientConfig, Token};
use gc_hotfolder::sandbox::fixture::DEMO_TOKEN;

const MIB: f64 = 1024.0 * 1024.0;

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
    let (mut sandbox, base) = common::start_sandbox(&data);
    println!("sandbox: {base}");

    let file = tmp.path().join("payload.bin");
    gc_hotfolder::samples::write_large_file(&file, size, 7).expect("payload");
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

    let bigfile = tmp.path().join("big.bin");
    gc_hotfolder::samples::write_large_file(&bigfile, big, 8).expect("big payload");
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
