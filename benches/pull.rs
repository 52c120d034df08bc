//! Download throughput and memory of `pull`, measured, not asserted: `cargo bench --bench pull`.
//!
//! The sandbox runs as its own process on loopback. One case holding a large MetaImage (default 1 GiB of
//! voxels) is delivered with `gc-hotfolder upload`. The baseline is `curl -o` of the stored image file to a
//! file on the same filesystem (one GET, as fast as one TCP stream goes), alone and followed by an fsync of
//! the file, since pull makes every file durable before it counts it; ours is `gc-hotfolder pull` of
//! the archive into a fresh folder, whose peak RSS should stay flat whatever the image size. A second pull
//! into the same folder (nothing to fetch) shows what a re-run costs.
//!
//! Environment: `GC_BENCH_SIZE` (bytes of voxels, rounded down to whole MiB, default 1 GiB), `GC_BENCH_DIR`
//! (where the files go, default a temp dir).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

use gc_sandbox::DEMO_TOKEN;

const MIB: f64 = 1024.0 * 1024.0;
const ARCHIVE: &str = "demo-archive";
const SOCKET: &str = "generic-medical-image";

fn main() {
    // reqwest is built without a default TLS provider; the library installs ring, and so does this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-pull") {
        // This process starts exactly one child, the pull, and waits for it; so RUSAGE_CHILDREN, read
        // afterwards, describes that pull and nothing else (the sandbox, `upload` and curl are children
        // of the parent bench process, not of this one).
        let (config, dest) = (&args[i + 1], &args[i + 2]);
        let t = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
            .args(["pull", "--config", config, "--archive", ARCHIVE, dest])
            .stdout(Stdio::null())
            .status()
            .expect("pull");
        let secs = t.elapsed().as_secs_f64();
        assert!(status.success(), "pull failed: {status}");
        println!("{secs:.6} {}", children_peak_rss_kib());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks benchmarks to name themselves; there is one.
    }

    let size: u64 = common::env_or("GC_BENCH_SIZE", 1 << 30);
    let slices = (size >> 20).max(1) as u32;
    let tmp = common::scratch_dir();
    let data = tmp.path().join("sandbox-data");
    let (mut sandbox, base) = common::start_sandbox(&data);
    println!("sandbox: {base}");

    // One case with one large image, delivered the way a user would.
    let drop = tmp.path().join("drop");
    let case = drop.join("big-case");
    std::fs::create_dir_all(&case).expect("case folder");
    gc_content::samples::write_mha(&case.join("image.mha"), [1024, 1024, slices], 11)
        .expect("image");
    let config = write_config(tmp.path(), &base, &drop);
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .arg("upload")
        .arg("--config")
        .arg(&config)
        .arg(&case)
        .output()
        .expect("upload");
    assert!(
        out.status.success(),
        "upload failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "delivered with upload in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The source is not needed any more; drop it so the disk and the page cache hold one copy less.
    let _ = std::fs::remove_file(case.join("image.mha"));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let media = rt.block_on(stored_image_url(&base));
    let stored_name = media.rsplit('/').next().unwrap_or_default().to_owned();

    // Baseline. The first download is untimed: it warms the sandbox's page cache for both sides.
    let curl_out = tmp.path().join("curl.mha");
    curl_get(&media, &curl_out);
    let _ = std::fs::remove_file(&curl_out);
    let t = Instant::now();
    curl_get(&media, &curl_out);
    let curl = t.elapsed().as_secs_f64();
    let stored = std::fs::metadata(&curl_out).expect("curl's file").len();
    let _ = std::fs::remove_file(&curl_out);
    // curl leaves the file in the page cache; pull makes it durable (fsync) before it counts. The fair
    // baseline for that is curl followed by an fsync of its file.
    let t = Instant::now();
    curl_get(&media, &curl_out);
    std::fs::File::open(&curl_out)
        .and_then(|f| f.sync_all())
        .expect("fsync curl's file");
    let curl_synced = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&curl_out);

    // Ours, from a re-exec of this binary so that the peak RSS read is the pull's (see `--child-pull`).
    let dest = tmp.path().join("pulled");
    let (ours, rss_kib) = child_pull(&config, &dest);
    let pulled = find_file(&dest, &stored_name).expect("the pulled image file");
    let pulled_len = std::fs::metadata(&pulled).expect("pulled file").len();
    if pulled_len != stored {
        println!(
            "WARNING: the pulled {} has {pulled_len} bytes, the stored file {stored}",
            pulled.display()
        );
    }
    let (rerun, _) = child_pull(&config, &dest);

    let mb = stored as f64 / MIB;
    println!("throughput, one {mb:.0} MiB image over loopback:");
    println!(
        "  curl -o (one GET)         {:8.1} MiB/s  ({curl:.2} s)",
        mb / curl
    );
    println!(
        "  curl -o, then fsync       {:8.1} MiB/s  ({curl_synced:.2} s)",
        mb / curl_synced
    );
    println!(
        "  gc-hotfolder pull (fsync) {:8.1} MiB/s  ({ours:.2} s)",
        mb / ours
    );
    println!(
        "  ratio to curl             {:8.2}×  (goal ≥ 0.9×)",
        curl / ours
    );
    println!("  ratio to curl + fsync     {:8.2}×", curl_synced / ours);
    println!("  re-run (nothing changed)  {:8.3} s", rerun);
    println!(
        "memory, pulling it: peak RSS {rss_kib} KiB ({:.1} MiB)",
        rss_kib as f64 / 1024.0
    );
    println!("  goal: flat, ≤ 100 MB peak RSS");
    let _ = sandbox.kill();
    let _ = sandbox.wait();
}

/// The largest peak RSS among the waited-for children of this process, in KiB.
fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    usage.ru_maxrss
}

/// A config with the sandbox as server and one archive drop folder whose cases hold `image.mha`.
fn write_config(dir: &Path, base: &str, drop: &Path) -> PathBuf {
    let text = format!(
        "[server]\nurl = \"{base}\"\ntoken = \"{DEMO_TOKEN}\"\nstate_dir = \"{}\"\n\n\
         [limits]\npart_size = \"32MiB\"\n\n\
         [[folder]]\npath = \"{}\"\narchive = \"{ARCHIVE}\"\n\n\
         [[folder.socket]]\nslug = \"{SOCKET}\"\nfiles = \"image.mha\"\n",
        dir.join("state").display(),
        drop.display()
    );
    let path = dir.join("gc-hotfolder.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// `--child-pull CFG DEST`: (seconds, peak RSS in KiB) of one `gc-hotfolder pull`.
fn child_pull(config: &Path, dest: &Path) -> (f64, i64) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .arg("--child-pull")
        .arg(config)
        .arg(dest)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "the pull child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let mut fields = line.split_whitespace();
    let secs = fields.next().and_then(|s| s.parse().ok()).expect("seconds");
    let rss = fields.next().and_then(|s| s.parse().ok()).expect("RSS");
    (secs, rss)
}

fn curl_get(url: &str, out: &Path) {
    let status = Command::new("curl")
        .args(["-s", "-f", "-H"])
        .arg(format!("Authorization: Bearer {DEMO_TOKEN}"))
        .arg("-o")
        .arg(out)
        .arg(url)
        .status()
        .expect("curl");
    assert!(status.success(), "curl failed: {status}");
}

/// A file named `name` anywhere below `dir`, outside the pull's own dot-entries.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name().to_str() == Some(name) {
            return Some(path);
        }
    }
    None
}

/// The media URL of the stored image file: archive by slug → its items → the socket's image → its file.
async fn stored_image_url(base: &str) -> String {
    let http = reqwest::Client::new();
    let get = async |url: String| -> serde_json::Value {
        http.get(&url)
            .header("Authorization", format!("Bearer {DEMO_TOKEN}"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    };
    let archives = get(format!("{base}archives/?slug={ARCHIVE}")).await;
    let pk = archives["results"][0]["pk"]
        .as_str()
        .expect("the archive's pk")
        .to_owned();
    let items = get(format!("{base}archives/items/?archive={pk}")).await;
    let image = items["results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|item| item["values"].as_array().into_iter().flatten())
        .find(|v| v["interface"]["slug"] == SOCKET || v["socket"]["slug"] == SOCKET)
        .and_then(|v| v["image"].as_str())
        .expect("an image value for the socket")
        .to_owned();
    let image = get(image).await;
    image["files"][0]["file"]
        .as_str()
        .expect("the image's file URL")
        .to_owned()
}
