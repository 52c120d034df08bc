//! Shared by the end-to-end tests: a sandbox on loopback, example cases made of real (tiny) images, a
//! config pointing at both, and queries of the sandbox's state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gc_content::samples;
use gc_hotfolder::receipt::{Outcome, Receipt};
use gc_sandbox::DEMO_TOKEN;
use gc_sandbox::{Fixture, Sandbox, SandboxOptions};
pub use gc_testkit::eventually;
use serde_json::Value;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gc-hotfolder"))
}

/// A finished run of the binary: its exit code and what it printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Both streams, as the operator sees them.
    pub fn said(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The run, asserted to have ended with `code` (both streams shown if not).
    #[track_caller]
    pub fn expect(self, code: i32) -> Ran {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// `gc-hotfolder <command> --config <config>`, more arguments to add, then run to its end.
pub fn gc(command: &str, config: &Path) -> GcCommand {
    GcCommand {
        args: vec![command.into(), "--config".into(), config.into()],
    }
}

/// A command line of the binary being put together; see [`gc`].
pub struct GcCommand {
    args: Vec<std::ffi::OsString>,
}

impl GcCommand {
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> GcCommand {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(self, args: impl IntoIterator<Item = S>) -> GcCommand {
        args.into_iter().fold(self, GcCommand::arg)
    }

    /// Run it to its end.
    pub fn run(self) -> Ran {
        let out = bin().args(&self.args).output().unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start it with its standard output and error going to `stdout` and `stderr`.
    pub fn spawn(self, stdout: Stdio, stderr: Stdio) -> Child {
        bin()
            .args(&self.args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// [`GcCommand::run`] off the async runtime, for tests whose sandbox runs on it.
    pub async fn run_async(self) -> Ran {
        tokio::task::spawn_blocking(move || self.run())
            .await
            .unwrap()
    }
}

/// What nearly every end-to-end test starts with: a sandbox, a scratch folder, and the path of the drop
/// folder in it (`drop`, not created).
pub struct Site {
    pub sb: Sandbox,
    pub tmp: tempfile::TempDir,
    pub drop: PathBuf,
}

pub async fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    Site {
        sb: sandbox().await,
        tmp,
        drop,
    }
}

impl Site {
    /// A config of the drop folder (created if missing) against the sandbox, with `extra` in its
    /// `[[folder]]` (see [`write_config`]).
    pub fn config(&self, extra: &str) -> PathBuf {
        std::fs::create_dir_all(&self.drop).unwrap();
        write_config(self.tmp.path(), &self.sb, &self.drop, None, extra)
    }

    /// The state folder [`Site::config`] names.
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// The agent on `config`, logging to `agent.log` in the scratch folder.
    pub fn start_agent(&self, config: &Path) -> Agent {
        Agent::start(config, &self.tmp.path().join("agent.log"))
    }
}

/// A [`site`] whose drop folder exists and is paused (`gc-hotfolder pause`), with its config.
pub async fn paused_site() -> (Site, PathBuf) {
    let site = site().await;
    std::fs::create_dir_all(&site.drop).unwrap();
    let cfg = write_config(site.tmp.path(), &site.sb, &site.drop, None, "");
    gc("pause", &cfg).arg(&site.drop).run().expect(0);
    (site, cfg)
}

pub async fn sandbox() -> Sandbox {
    sandbox_with(|_| {}).await
}

pub async fn sandbox_with(tweak: impl FnOnce(&mut SandboxOptions)) -> Sandbox {
    let mut o = SandboxOptions::new(Fixture::demo());
    o.import_delay = Duration::from_millis(50);
    tweak(&mut o);
    Sandbox::start(o).await.expect("the sandbox starts")
}

/// The origin (scheme, host, port) of the sandbox, for its `/_sandbox/` endpoints.
pub fn origin(sb: &Sandbox) -> String {
    let u = sb.base_url();
    format!("{}://{}", u.scheme(), u.authority())
}

pub async fn state(sb: &Sandbox) -> Value {
    reqwest::get(format!("{}/_sandbox/state", origin(sb)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every archive item of an archive in the sandbox's state.
pub fn items_of<'a>(state: &'a Value, archive_slug: &str) -> Vec<&'a Value> {
    let archives = state["archives"].as_array().expect("archives in state");
    archives
        .iter()
        .filter(|a| a["slug"] == archive_slug)
        .flat_map(|a| a["items"].as_array().into_iter().flatten())
        .collect()
}

/// The archive item titled `title`, which must exist.
pub fn item_titled<'a>(state: &'a Value, archive_slug: &str, title: &str) -> &'a Value {
    items_of(state, archive_slug)
        .into_iter()
        .find(|i| i["title"] == title)
        .unwrap_or_else(|| panic!("no item titled {title} in {archive_slug}"))
}

/// How many requests the sandbox's state says it answered with one of `statuses` (e.g. `["503"]`).
pub fn answered_with(state: &Value, statuses: &[&str]) -> u64 {
    let requests = state["requests"].as_object().into_iter().flatten();
    requests
        .filter(|(k, _)| statuses.iter().any(|s| k.ends_with(&format!(" {s}"))))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

/// Every archive item of an archive in the sandbox's state titled `title`.
pub fn all_titled<'a>(state: &'a Value, archive_slug: &str, title: &str) -> Vec<&'a Value> {
    let mut items = items_of(state, archive_slug);
    items.retain(|i| i["title"] == title);
    items
}

/// The value of `socket` of an item or display set in the sandbox's state, which must exist.
pub fn value_of<'a>(item: &'a Value, socket: &str) -> &'a Value {
    item["values"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["socket"] == socket))
        .unwrap_or_else(|| panic!("no value for {socket} in {item}"))
}

/// (name, sha256) of every file a socket value holds in the sandbox's state (an image's files, or the
/// file), sorted: what the platform stored, to compare with what receipts say was sent.
pub fn stored_files(value: &Value) -> Vec<(String, String)> {
    let files = if value["image"].is_object() {
        value["image"]["files"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else if value["file"].is_object() {
        vec![value["file"].clone()]
    } else {
        vec![]
    };
    let mut out: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_owned(),
                f["sha256"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// What a receipt says about socket `slug`, which it must name.
pub fn socket_of<'a>(r: &'a Receipt, slug: &str) -> &'a gc_hotfolder::receipt::SocketReceipt {
    r.sockets
        .iter()
        .find(|s| s.slug == slug)
        .unwrap_or_else(|| panic!("{}: no socket {slug} in the receipt", r.case))
}

/// The receipt has one socket per value of `item` (in the sandbox's state).
#[track_caller]
pub fn one_value_per_socket(r: &Receipt, item: &Value) {
    let values = item["values"].as_array().unwrap();
    let case = &r.case;
    assert_eq!(
        values.len(),
        r.sockets.len(),
        "{case}: one value per socket: {item}"
    );
}

/// The item (in the sandbox's state) holds exactly what the receipt says was delivered: every socket,
/// every byte, every value; with `pks`, under the value pks the receipt names.
#[track_caller]
pub fn holds_exactly(item: &Value, r: &Receipt, pks: bool) {
    one_value_per_socket(r, item);
    for s in &r.sockets {
        let at = format!("{}/{}", r.case, s.slug);
        let v = gc_testkit::http::find_by(&item["values"], &["socket"], &s.slug)
            .unwrap_or_else(|| panic!("{at}: no value in {item}"));
        if pks {
            assert_eq!(v["pk"].as_i64(), s.value_pk, "{at}: value pk");
        }
        if s.files.is_empty() || v.get("value").is_some_and(|x| !x.is_null()) {
            assert_eq!(Some(&v["value"]), s.value.as_ref(), "{at}: value");
        } else {
            assert_eq!(
                stored_files(v),
                sent_files(s),
                "{at}: the stored bytes are the sent bytes"
            );
        }
    }
}

/// (upload name, SHA-256) of every file a receipt says a socket sent, sorted like [`stored_files`]: what
/// was sent, for DICOM the de-identified copy rather than the file in the case folder.
pub fn sent_files(socket: &gc_hotfolder::receipt::SocketReceipt) -> Vec<(String, String)> {
    let mut sent: Vec<(String, String)> = socket
        .files
        .iter()
        .map(|f| (f.upload_name.clone(), f.sent_sha256.clone()))
        .collect();
    sent.sort();
    sent
}

/// The SHA-256 of every file of every image value of an item or display set in the sandbox's state.
pub fn stored_image_shas(item: &Value) -> Vec<String> {
    item["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["image"].is_object())
        .flat_map(|v| stored_files(v).into_iter().map(|(_, sha)| sha))
        .collect()
}

/// `json[key]` is a text that contains `text` (an alert's reason, a status note).
#[track_caller]
pub fn says(json: &Value, key: &str, text: &str) {
    let said = json[key].as_str().unwrap_or_default();
    assert!(said.contains(text), "{key} of {json}");
}

/// Every display set of a reader study in the sandbox's state.
pub fn display_sets_of<'a>(state: &'a Value, slug: &str) -> Vec<&'a Value> {
    let studies = state["reader_studies"]
        .as_array()
        .expect("reader_studies in state");
    studies
        .iter()
        .filter(|a| a["slug"] == slug)
        .flat_map(|a| a["display_sets"].as_array().into_iter().flatten())
        .collect()
}

/// Sockets used by the example cases, and the rules that find their files.
pub const ARCHIVE_RULES: &str = r#"
  [[folder.socket]]
  slug = "generic-medical-image"
  files = ["image.mha", "image.mhd", "image.raw", "image.nii.gz", "dicom/*.dcm"]
  [[folder.socket]]
  slug = "report"
  files = "report.pdf"
  optional = true
  [[folder.socket]]
  slug = "lesion-count"
  value_file = "count.json"
  optional = true
  [[folder.socket]]
  slug = "results-json"
  value_file = "results.json"
  optional = true
  [[folder.socket]]
  slug = "notes"
  value = "delivered by gc-hotfolder"
"#;

pub const READER_STUDY_RULES: &str = r#"
  [[folder.socket]]
  slug = "generic-medical-image"
  files = ["image.mha", "image.nii.gz"]
  [[folder.socket]]
  slug = "segmentation"
  files = "seg.mha"
  optional = true
  [[folder.socket]]
  slug = "is-abnormal"
  value_file = "abnormal.json"
  [[folder.socket]]
  slug = "nodule-box"
  value_file = "box.json"
  optional = true
"#;

/// A config file for one archive drop folder (and optionally a reader-study one) against `sb`.
pub fn write_config(
    dir: &Path,
    sb: &Sandbox,
    archive_drop: &Path,
    reader_drop: Option<&Path>,
    extra: &str,
) -> PathBuf {
    let mut text = format!(
        "[server]\nurl = \"{}\"\ntoken = \"{DEMO_TOKEN}\"\nstate_dir = \"{}\"\n\n[limits]\npart_size = \"5MiB\"\n\n\
         [agent]\nretry_first = \"300ms\"\nretry_max = \"3s\"\nauth_pause = \"2s\"\nshutdown_grace = \"5s\"\n\n\
         [[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\nquiet = \"1s\"\n{extra}\n{ARCHIVE_RULES}\n",
        sb.base_url(),
        dir.join("state").display(),
        archive_drop.display()
    );
    if let Some(r) = reader_drop {
        text.push_str(&format!(
            "\n[[folder]]\npath = \"{}\"\nreader_study = \"demo-reader-study\"\nquiet = \"1s\"\n{extra}\n{READER_STUDY_RULES}\n",
            r.display()
        ));
    }
    let path = dir.join("gc-hotfolder.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An archive case of one of five shapes (chosen by `n`), written into `dir` (created).
pub fn archive_case(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    match n % 5 {
        0 => {
            samples::write_mha(&dir.join("image.mha"), [8, 8, 4], n).unwrap();
            samples::write_pdf(&dir.join("report.pdf"), &format!("report {n}")).unwrap();
            std::fs::write(dir.join("count.json"), n.to_string()).unwrap();
        }
        1 => {
            samples::write_mhd_pair(dir, "image", [6, 6, 3], n).unwrap();
            std::fs::write(
                dir.join("results.json"),
                format!("{{\"case\": {n}, \"score\": 0.5}}"),
            )
            .unwrap();
        }
        2 => {
            samples::write_nifti(&dir.join("image.nii.gz"), [5, 5, 5], true, n).unwrap();
            std::fs::write(dir.join("count.json"), "3").unwrap();
        }
        3 => {
            let ids = samples::DicomSeriesIds::new(n);
            std::fs::create_dir_all(dir.join("dicom")).unwrap();
            samples::write_dicom_series(&dir.join("dicom"), 4, 8, 8, &ids, n).unwrap();
        }
        _ => {
            samples::write_mha(&dir.join("image.mha"), [16, 16, 2], n).unwrap();
            samples::write_pdf(&dir.join("report.pdf"), "a longer report").unwrap();
            std::fs::write(dir.join("results.json"), "[1, 2, 3]").unwrap();
            std::fs::write(dir.join("count.json"), "7").unwrap();
        }
    }
}

/// Cases `write` writes (e.g. [`archive_case`]), one for each of `numbers`, into `drop/<name(n)>`; their
/// folders.
pub fn cases(
    drop: &Path,
    numbers: std::ops::Range<u64>,
    name: impl Fn(u64) -> String,
    write: fn(&Path, u64),
) -> Vec<PathBuf> {
    numbers
        .map(|n| {
            let case = drop.join(name(n));
            write(&case, n);
            case
        })
        .collect()
}

/// A reader-study case, written into `dir` (created).
pub fn reader_case(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    samples::write_mha(&dir.join("image.mha"), [8, 8, 1], n).unwrap();
    if n.is_multiple_of(2) {
        samples::write_segmentation_mha(&dir.join("seg.mha"), [8, 8, 1], &[0, 1], n).unwrap();
    }
    std::fs::write(
        dir.join("abnormal.json"),
        if n.is_multiple_of(3) { "true" } else { "false" },
    )
    .unwrap();
    if n % 3 == 1 {
        let bx = serde_json::json!({
            "type": "2D bounding box", "name": format!("nodule {n}"),
            "corners": [[0, 0, 0], [4, 0, 0], [4, 4, 0], [0, 4, 0]],
            "version": {"major": 1, "minor": 0}
        });
        std::fs::write(dir.join("box.json"), bx.to_string()).unwrap();
    }
}

/// Write a case elsewhere, then rename it into place: how careful exporters deliver.
pub fn drop_atomically(drop: &Path, name: &str, write: impl FnOnce(&Path)) {
    let staging = drop.parent().unwrap().join(format!(".staging-{name}"));
    std::fs::create_dir_all(drop).unwrap();
    write(&staging);
    std::fs::rename(&staging, drop.join(name)).unwrap();
}

/// All receipts below a receipts folder, by case.
pub fn receipts(dir: &Path) -> Vec<gc_hotfolder::receipt::Receipt> {
    let mut out: Vec<_> = gc_hotfolder::receipt::all(dir)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    out.sort_by(|a, b| a.case.cmp(&b.case));
    out
}

/// The agent as a real subprocess, its log appended to a file that several runs may share.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
    /// "token accepted" lines already in the log when this agent started: it logs one more once its signal
    /// handlers are in place.
    starts_before: usize,
}

fn startups(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("token accepted")
        .count()
}

impl Agent {
    pub fn start(config: &Path, log: &Path) -> Agent {
        let starts_before = startups(log);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = bin()
            .args(["run", "--config"])
            .arg(config)
            .env("GC_HOTFOLDER_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent {
            child,
            log: log.to_owned(),
            starts_before,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log holds `what` at least `times` times.
    pub async fn wait_log(&self, what: &str, times: usize) {
        eventually(Duration::from_secs(30), what, async || {
            (self.log().matches(what).count() >= times).then_some(())
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM once this agent is up; it must exit 0 after reaching a checkpoint.
    pub fn stop(mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while startups(&self.log) <= self.starts_before {
            assert!(
                Instant::now() < deadline,
                "the agent did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "agent exited with {status}; log:\n{}",
            self.log()
        );
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that fails must not leave its agent running.
impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait until the receipts under `state_dir` satisfy `done`; on timeout, say which exist and show the end
/// of the agent's log (`<state_dir>/../agent.log`).
pub async fn wait_receipts_until(
    state_dir: &Path,
    limit: Duration,
    done: impl Fn(&[Receipt]) -> bool,
) -> Vec<Receipt> {
    let deadline = Instant::now() + limit;
    loop {
        let r = receipts(&state_dir.join("receipts"));
        if done(&r) {
            return r;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(state_dir.parent().unwrap().join("agent.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            let tail = tail[tail.len().saturating_sub(40)..].join("\n");
            let seen: Vec<(&str, Outcome, Option<&str>)> = r
                .iter()
                .map(|r| (r.case.as_str(), r.outcome, r.reason.as_deref()))
                .collect();
            panic!("timed out after {limit:?}; receipts: {seen:?}\nlog:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until there are `n` receipts.
pub async fn wait_receipts(state_dir: &Path, n: usize, limit: Duration) -> Vec<Receipt> {
    wait_receipts_until(state_dir, limit, |r| r.len() >= n).await
}

/// Wait until `n` receipts say delivered.
pub async fn wait_delivered(state_dir: &Path, n: usize, limit: Duration) -> Vec<Receipt> {
    wait_receipts_until(state_dir, limit, |r| {
        r.iter().filter(|r| r.outcome == Outcome::Delivered).count() >= n
    })
    .await
}

/// Wait for the receipt of one case.
pub async fn receipt_for(state_dir: &Path, case: &str) -> Receipt {
    let r = wait_receipts_until(state_dir, Duration::from_secs(60), |r| {
        r.iter().any(|r| r.case == case)
    })
    .await;
    r.into_iter().find(|r| r.case == case).unwrap()
}

/// Start the agent, kill it with SIGKILL after a random 400–2000 ms (xorshift from `seed`), and again,
/// until `n` cases have delivered receipts or 40 kills were made. Returns the number of kills.
pub async fn kill_9_repeatedly(
    cfg: &Path,
    log: &Path,
    state_dir: &Path,
    n: usize,
    seed: u64,
) -> usize {
    let receipts_dir = state_dir.join("receipts");
    kill_9_until(cfg, log, 40, seed, || {
        receipts(&receipts_dir)
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered)
            .count()
            == n
    })
    .await
}

/// Start the agent and kill it with SIGKILL after a random 400–2000 ms (xorshift from `seed`), again
/// and again, until `done` or `rounds` kills. Returns the number of kills.
pub async fn kill_9_until(
    cfg: &Path,
    log: &Path,
    rounds: usize,
    seed: u64,
    done: impl Fn() -> bool,
) -> usize {
    let mut rng = seed | 1;
    let mut kills = 0;
    for _ in 0..rounds {
        if done() {
            break;
        }
        let agent = Agent::start(cfg, log);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(400 + rng % 1600)).await;
        agent.kill9();
        kills += 1;
    }
    kills
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every file below `dir`, relative, with its SHA-256.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::Digest;
    files_below(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()));
            (rel, sha)
        })
        .collect()
}

/// The metrics address the agent logged when it bound `127.0.0.1:0`.
pub async fn metrics_addr(agent: &Agent) -> std::net::SocketAddr {
    agent.wait_log("serving /metrics and /status", 1).await;
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("serving /metrics and /status"))
        .unwrap();
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next();
    addr.unwrap().parse().unwrap()
}

/// The body of a GET of `url` (plain HTTP on loopback, e.g. the agent's `/metrics`).
pub async fn fetch(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The agent's `/metrics`, once it serves them.
pub async fn metrics_of(agent: &Agent) -> String {
    let addr = metrics_addr(agent).await;
    fetch(&format!("http://{addr}/metrics")).await
}

/// Add `text` at the end of a config file.
pub fn append(config: &Path, text: &str) {
    let mut c = std::fs::read_to_string(config).unwrap();
    c.push_str(text);
    std::fs::write(config, c).unwrap();
}

/// Replace `from` by `to` in a config file, which must hold it.
pub fn edit(config: &Path, from: &str, to: &str) {
    let c = std::fs::read_to_string(config).unwrap();
    assert!(c.contains(from), "{from:?} in {c}");
    std::fs::write(config, c.replace(from, to)).unwrap();
}

/// Chat webhooks carry their key in the path: it must never be logged.
pub const HOOK_PATH: &str = "/services/T0/s3cr3t-hook-key";

/// A webhook receiver on loopback that records every alert it accepts. While `down`, it answers 503, as
/// a receiver in maintenance would.
pub struct Receiver {
    pub url: String,
    pub alerts: Arc<Mutex<Vec<Value>>>,
    /// POSTs seen, accepted or not.
    pub posts: Arc<AtomicU32>,
    pub down: Arc<AtomicBool>,
}

pub async fn receiver(down: bool) -> Receiver {
    use axum::routing::post;
    let alerts: Arc<Mutex<Vec<Value>>> = Arc::default();
    let posts: Arc<AtomicU32> = Arc::default();
    let down = Arc::new(AtomicBool::new(down));
    let (a, p, d) = (alerts.clone(), posts.clone(), down.clone());
    let app = axum::Router::new().route(
        HOOK_PATH,
        post(move |axum::Json(v): axum::Json<Value>| {
            let (a, p, d) = (a.clone(), p.clone(), d.clone());
            async move {
                p.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    return http::StatusCode::SERVICE_UNAVAILABLE;
                }
                a.lock().unwrap().push(v);
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}{HOOK_PATH}"),
        alerts,
        posts,
        down,
    }
}

impl Receiver {
    /// Wait until the agent tried at least `n` POSTs.
    pub async fn wait_posts(&self, n: u32) {
        eventually(
            Duration::from_secs(30),
            "POSTs to the webhook",
            async || (self.posts.load(Ordering::SeqCst) >= n).then_some(()),
        )
        .await;
    }

    pub async fn wait_for(&self, event: &str) -> Value {
        eventually(
            Duration::from_secs(30),
            &format!("a {event} alert"),
            async || {
                self.alerts
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|a| a["event"] == event)
                    .cloned()
            },
        )
        .await
    }
}

/// The socket rule of a DICOM image set (`series/*.dcm`, named after the case), for `write_config`'s
/// `extra`, with the folder's `dicom_import_deadline`.
pub fn dicom_set_rule(deadline: &str) -> String {
    format!(
        "dicom_import_deadline = \"{deadline}\"\n[[folder.socket]]\nslug = \"dicom-image-set\"\n\
         files = \"series/*.dcm\"\nimage_name = \"{{case}}\"\n"
    )
}

/// Let a case of the archive folder hold no image for `generic-medical-image` (e.g. only a DICOM set).
pub fn image_optional(config: &Path) {
    edit(
        config,
        "\"dicom/*.dcm\"]",
        "\"dicom/*.dcm\"]\n  optional = true",
    );
}

/// A CT series of `n` slices in `case/series/`; its files, sorted.
pub fn write_series(case: &Path, n: u32, ids: &samples::DicomSeriesIds, seed: u64) -> Vec<PathBuf> {
    let dir = case.join("series");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = samples::write_dicom_series(&dir, n, 8, 8, ids, seed).unwrap();
    files.sort();
    files
}

/// Give a DICOM file another SOP class (in its data set and its file meta group).
pub fn set_sop_class(path: &Path, uid: &str) {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, VR};
    let mut obj = dicom_object::open_file(path).unwrap();
    obj.put(DataElement::new(
        dicom_dictionary_std::tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(uid),
    ));
    obj.meta_mut().media_storage_sop_class_uid = uid.into();
    obj.write_to_file(path).unwrap();
}

/// `gc-hotfolder status` (with `args`, e.g. `--json`) for a config; its standard output.
pub async fn status_of(config: &Path, args: &[&str]) -> String {
    gc("status", config).args(args).run_async().await.stdout
}

/// Are the tests running as root (needed to run commands as another user)?
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The binary run as user `uid` with primary group `gid` and only the supplementary `groups` (as an
/// operator's login would be), with none of root's groups and no token in the environment.
pub fn as_user(uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={uid}"), format!("--regid={gid}")]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg("--")
        .arg(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .env_remove("GRAND_CHALLENGE_AUTHORIZATION")
        .env_remove("CREDENTIALS_DIRECTORY");
    c
}

/// The one value `sql` reads from the agent's journal, or `None` while it cannot be read (not made yet,
/// or the row not there yet): for polls with a deadline.
pub fn journal_value<T: rusqlite::types::FromSql>(journal: &Path, sql: &str) -> Option<T> {
    let db = rusqlite::Connection::open(journal).ok()?;
    db.query_row(sql, [], |r| r.get(0)).ok()
}
