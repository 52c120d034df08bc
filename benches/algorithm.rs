//! Algorithm folders, measured, not asserted: `cargo bench --bench algorithm`.
//!
//! How long after a case is ready its outputs are in the outbox, beyond the job's own run time (goal
//! ≤ 2 s with the default poll settings). The sandbox and the agent each run as their own process on
//! loopback; the sandbox's world has one algorithm per case, so that each job runs its own time (the
//! demo's lung volume estimator: a CT image in; a value, a JSON file and a copy of the image out), and
//! the agent, with its default settings, one drop folder per algorithm with a 1 s quiet window. Cases
//! are dropped by rename, two at a time (the default number of cases delivered at once, so no case
//! waits for another).
//!
//! Per case: ready (the agent's "ready" log line) → outputs (the receipt's `finished`, written after the
//! case's folder was renamed into the outbox), the job's run time (`exec_duration` as the platform
//! reports it) and the overhead, their difference. The overhead is split into upload + start (ready →
//! "job started"), following (the job seen ended, minus its start and run time: input import and poll
//! granularity) and outputs (the job seen ended → receipt: download, outbox write, receipt).
//!
//! The baseline, in the same run, is the bare round trip of the same work through the library's client
//! without the agent: upload the image, start the job, poll it every 100 ms until it ends, write its
//! outputs with `outbox::write_case`.
//!
//! Environment: `GC_BENCH_JOB_SECONDS` (job durations, default "1,3,10,30": the agent looks at a job
//! an eighth of its elapsed time apart, at most 1.5 s, so from 12 s on it sees a job's end up to 1.5 s
//! late), `GC_BENCH_JOBS` (cases per duration, default 5), `GC_BENCH_DIR` (where the files go, default a
//! temp dir).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

mod common;

use common::{agent, log_events, wait_for};

use gc_client::{Client, ClientConfig, JobStatus, LocalFile, NoObserver, Token};
use gc_client::{ValueEntry, ValueSource};
use gc_hotfolder::receipt::{Outcome, Receipt};
use gc_sandbox::DEMO_TOKEN;

/// Cases dropped at once: the agent's default `limits.parallel_cases`.
const BATCH: usize = 2;
/// Each case's CT image (128 KiB of voxels).
const DIMS: [u32; 3] = [64, 64, 32];
const GOAL: f64 = 2.0;

fn main() {
    // reqwest is built without a default TLS provider; the library installs ring, and so does this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut seconds: Vec<f64> = common::env_list("GC_BENCH_JOB_SECONDS", "1,3,10,30");
    seconds.retain(|s| *s >= 0.0);
    let jobs: usize = common::env_or("GC_BENCH_JOBS", 5).max(1);
    let durations: Vec<Duration> = seconds
        .iter()
        .map(|s| Duration::from_secs_f64(*s))
        .collect();

    let tmp = common::scratch_dir();
    let dir = tmp.path();
    let fixture = dir.join("world.toml");
    let plan: Vec<Vec<Case>> = durations
        .iter()
        .enumerate()
        .map(|(i, d)| (0..jobs).map(|k| Case::new(i, *d, k, jobs)).collect())
        .collect();
    std::fs::write(&fixture, world(plan.iter().flatten())).expect("fixture");
    let (mut sandbox, base) = common::start_sandbox_with(
        &dir.join("sandbox"),
        &["--fixture".as_ref(), fixture.as_os_str()],
    );
    println!("sandbox: {base}");
    println!(
        "{jobs} cases per job duration, run times spread over one poll interval of the agent, dropped \
         {BATCH} at a time; a {}×{}×{} CT image each",
        DIMS[0], DIMS[1], DIMS[2]
    );

    let agent_runs = through_agent(&base, dir, &plan);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bare_runs = runtime.block_on(bare(&base, dir, &plan));

    for (i, d) in durations.iter().enumerate() {
        println!();
        let last = plan[i].last().map_or(*d, |c| c.duration);
        println!(
            "job duration {} to {}:",
            fmt_s(d.as_secs_f64()),
            fmt_s(last.as_secs_f64())
        );
        report("agent", &agent_runs[i]);
        report("bare client", &bare_runs[i]);
        let ours = overheads(&agent_runs[i]);
        let floor = overheads(&bare_runs[i]);
        if let (Some(o), Some(f)) = (ours.last(), floor.last()) {
            let p50 = percentile(&ours, 0.5);
            println!(
                "  the agent's overhead minus the bare one: p50 − p50 {}, max − max {}",
                fmt_s(p50 - percentile(&floor, 0.5)),
                fmt_s(o - f)
            );
            let verdict = |s: f64| if s <= GOAL { "PASS" } else { "MISS" };
            println!(
                "  goal: overhead ≤ {}: p50 {} {}, max {} {}",
                fmt_s(GOAL),
                fmt_s(p50),
                verdict(p50),
                fmt_s(*o),
                verdict(*o)
            );
        }
    }
    let _ = sandbox.kill();
    let _ = sandbox.wait();
}

/// One case's figures, in seconds.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Ready → outputs in the outbox.
    total: f64,
    /// The job's own run time, as the platform reports it.
    exec: f64,
    /// Ready → the job exists.
    start: f64,
    /// The job exists → seen ended, minus its run time.
    follow: f64,
    /// Seen ended → outputs in the outbox.
    outputs: f64,
}

/// One case: its own algorithm, so that its job runs its own time.
struct Case {
    name: String,
    slug: String,
    duration: Duration,
}

impl Case {
    /// Case `k` of `n` of nominal duration `d` (the `i`th). The run times of a duration's cases are
    /// spread over the interval at which the agent then looks at a job (an eighth of the time it has
    /// followed it, 250 ms to 1.5 s), so that the jobs end at every phase of its polls, as run times that
    /// vary do on the platform; with one run time they would all be seen equally late.
    fn new(i: usize, d: Duration, k: usize, n: usize) -> Case {
        let interval = (d / 8).clamp(Duration::from_millis(250), Duration::from_millis(1500));
        let duration = d + interval.mul_f64(k as f64 / n as f64);
        let name = format!("d{i}-case{k:02}");
        Case {
            slug: format!("estimator-{name}"),
            name,
            duration,
        }
    }
}

/// A world with the demo user and, per case, an algorithm of the demo's lung volume estimator's
/// interface that runs as long as the case's job should.
fn world<'a>(cases: impl Iterator<Item = &'a Case>) -> String {
    let mut text = format!(
        "[[user]]\nusername = \"demo\"\ntoken = \"{DEMO_TOKEN}\"\n\n\
         [[socket]]\nslug = \"ct-image\"\ntitle = \"CT Image\"\nkind = \"Image\"\nsuper_kind = \"Image\"\n\
         relative_path = \"images/ct-image\"\n\n\
         [[socket]]\nslug = \"generic-medical-image\"\ntitle = \"Generic Medical Image\"\nkind = \"Image\"\n\
         super_kind = \"Image\"\nrelative_path = \"images/generic-medical-image\"\n\n\
         [[socket]]\nslug = \"lung-volume\"\ntitle = \"Lung Volume\"\nkind = \"Float\"\nsuper_kind = \"Value\"\n\
         relative_path = \"lung-volume.json\"\n\n\
         [[socket]]\nslug = \"results-json\"\ntitle = \"Results JSON\"\nkind = \"Anything\"\nsuper_kind = \"File\"\n\
         relative_path = \"results.json\"\n"
    );
    for c in cases {
        text.push_str(&format!(
            "\n[[algorithm]]\nslug = \"{slug}\"\ntitle = \"{slug}\"\neditors = [\"demo\"]\nduration = \"{}ms\"\n\
             [[algorithm.interface]]\ninputs = [\"ct-image\"]\noutputs = [\"lung-volume\", \"results-json\", \
             \"generic-medical-image\"]\n",
            c.duration.as_millis(),
            slug = c.slug
        ));
    }
    text
}

/// A case folder written beside the drop folder, then renamed into it whole.
fn drop_case(staging: &Path, drop: &Path, name: &str, seed: u64) {
    let dir = staging.join(name);
    std::fs::create_dir_all(&dir).expect("staging");
    gc_content::samples::write_mha(&dir.join("ct.mha"), DIMS, seed).expect("mha");
    std::fs::rename(&dir, drop.join(name)).expect("rename");
}

// ---- through the agent ---------------------------------------------------------------------------

fn through_agent(base: &str, dir: &Path, plan: &[Vec<Case>]) -> Vec<Vec<Run>> {
    let dir = dir.join("agent");
    let staging = dir.join("staging");
    let state = dir.join("state");
    let mut text = format!(
        "[server]\nurl = \"{base}\"\ntoken = \"{DEMO_TOKEN}\"\nstate_dir = \"{}\"\n",
        state.display()
    );
    // A drop folder per case, since each has its own algorithm.
    for c in plan.iter().flatten() {
        let drop = dir.join("drop").join(&c.name);
        std::fs::create_dir_all(&drop).expect("drop");
        text.push_str(&format!(
            "\n[[folder]]\npath = \"{}\"\nalgorithm = \"{}\"\nquiet = \"1s\"\noutbox = \"{}\"\n\
             [[folder.socket]]\nslug = \"ct-image\"\nfiles = \"ct.mha\"\n",
            drop.display(),
            c.slug,
            dir.join("outbox").display()
        ));
    }
    let config = dir.join("config.toml");
    std::fs::write(&config, text).expect("config");
    let log = dir.join("agent.log");
    let mut agent = agent(&config, &log);
    let folders = plan.iter().flatten().count();
    wait_for("startup", Duration::from_secs(60), || {
        log_events(&log, "startup scan done").len() >= folders
    });

    for cases in plan {
        for batch in cases.chunks(BATCH) {
            for (k, c) in batch.iter().enumerate() {
                drop_case(&staging, &dir.join("drop").join(&c.name), &c.name, k as u64);
            }
            let limit = batch.iter().map(|c| c.duration).max().unwrap_or_default() * 2
                + Duration::from_secs(120);
            wait_for("the batch's receipts", limit, || {
                let rs = receipts(&state);
                batch.iter().all(|c| rs.iter().any(|r| r.case == c.name))
            });
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();

    let rs = receipts(&state);
    let ready = log_events(&log, "ready");
    let started = log_events(&log, "job started");
    let seen = log_events(&log, "job");
    plan.iter()
        .map(|cases| {
            cases
                .iter()
                .map(|Case { name, .. }| {
                    let r = rs
                        .iter()
                        .find(|r| &r.case == name)
                        .expect("a receipt per case");
                    assert_eq!(
                        r.outcome,
                        Outcome::Delivered,
                        "{name}: {:?}",
                        r.reason.as_deref()
                    );
                    let job = r.job.as_ref().expect("the receipt's job");
                    let at = |events: &[(SystemTime, serde_json::Value)],
                              f: &dyn Fn(&serde_json::Value) -> bool| {
                        events
                            .iter()
                            .find(|(_, v)| f(v))
                            .map(|(t, _)| *t)
                            .unwrap_or_else(|| panic!("{name}: a log line is missing"))
                    };
                    let ready_at = at(&ready, &|v| v["case"] == name.as_str());
                    let started_at = at(&started, &|v| v["job"] == job.pk.as_str());
                    let ended_at = at(&seen, &|v| {
                        v["job"] == job.pk.as_str() && v["status"] == "Succeeded"
                    });
                    let finished = rfc3339(&r.finished);
                    let exec = exec_seconds(job.exec_duration.as_deref());
                    Run {
                        total: secs(ready_at, finished),
                        exec,
                        start: secs(ready_at, started_at),
                        follow: secs(started_at, ended_at) - exec,
                        outputs: secs(ended_at, finished),
                    }
                })
                .collect()
        })
        .collect()
}

fn receipts(state: &Path) -> Vec<Receipt> {
    gc_hotfolder::receipt::all(&state.join("receipts"))
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

// ---- the bare round trip ---------------------------------------------------------------------------

async fn bare(base: &str, dir: &Path, plan: &[Vec<Case>]) -> Vec<Vec<Run>> {
    let dir = dir.join("bare");
    let url = url::Url::parse(base).expect("the sandbox's URL");
    let token = Token::parse(DEMO_TOKEN).expect("token");
    let client = Client::new(ClientConfig::new(url, token)).expect("client");
    let outbox = dir.join("outbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    let mut all = Vec::new();
    for cases in plan {
        let mut runs = Vec::new();
        for batch in cases.chunks(BATCH) {
            let mut tasks = Vec::new();
            for (k, c) in batch.iter().enumerate() {
                let algorithm = client.algorithm(&c.slug).await.expect("the algorithm");
                let case = dir.join("cases").join(&c.name);
                std::fs::create_dir_all(&case).expect("case");
                let mha = case.join("ct.mha");
                gc_content::samples::write_mha(&mha, DIMS, k as u64).expect("mha");
                let (client, outbox, name) = (&client, &outbox, c.name.clone());
                tasks.push(async move { round_trip(client, &algorithm, mha, outbox, name).await });
            }
            runs.extend(futures_util::future::join_all(tasks).await);
        }
        all.push(runs);
    }
    all
}

/// Upload, start, poll every 100 ms, write the outputs: the least any client does for one case.
async fn round_trip(
    client: &Client,
    algorithm: &gc_client::Algorithm,
    mha: PathBuf,
    outbox: &Path,
    name: String,
) -> Run {
    let t = Instant::now();
    let file = LocalFile {
        path: mha,
        filename: "ct.mha".into(),
    };
    let upload = client
        .upload_file(&file, None, &NoObserver)
        .await
        .expect("upload");
    let inputs = [ValueEntry {
        socket: "ct-image".into(),
        source: ValueSource::UserUploads(vec![upload.api_url]),
    }];
    let created = client.start_job(algorithm, &inputs).await.expect("start");
    let started = t.elapsed().as_secs_f64();
    let job = loop {
        let job = client.job(&created.pk).await.expect("job");
        if job.status.is_final() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended = t.elapsed().as_secs_f64();
    assert_eq!(job.status, JobStatus::Succeeded, "{name}");
    gc_hotfolder::outbox::write_case(
        client,
        (outbox, gc_hotfolder::share::Sharing::of(outbox, None)),
        &name,
        &job.outputs,
        gc_hotfolder::outbox::Existing::Keep,
    )
    .await
    .expect("outputs");
    let total = t.elapsed().as_secs_f64();
    let exec = exec_seconds(job.exec_duration.as_deref());
    Run {
        total,
        exec,
        start: started,
        follow: ended - started - exec,
        outputs: total - ended,
    }
}

// ---- figures ---------------------------------------------------------------------------------------

fn overheads(runs: &[Run]) -> Vec<f64> {
    sorted(runs.iter().map(|r| r.total - r.exec))
}

fn sorted(it: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = it.collect();
    v.sort_by(f64::total_cmp);
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(who: &str, runs: &[Run]) {
    let stat = |f: &dyn Fn(&Run) -> f64| {
        let v = sorted(runs.iter().map(f));
        format!(
            "p50 {} max {}",
            fmt_s(percentile(&v, 0.5)),
            fmt_s(*v.last().unwrap_or(&0.0))
        )
    };
    println!(
        "  {who:<12} ({} cases) job run time {} | ready→outputs {} | overhead {}",
        runs.len(),
        stat(&|r| r.exec),
        stat(&|r| r.total),
        stat(&|r| r.total - r.exec),
    );
    println!(
        "  {:<12} overhead split: upload+start {} | following beyond the run time {} | outputs {}",
        "",
        stat(&|r| r.start),
        stat(&|r| r.follow),
        stat(&|r| r.outputs),
    );
}

fn fmt_s(s: f64) -> String {
    if s.abs() < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn rfc3339(text: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    SystemTime::from(t)
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// How long a job ran, from its `exec_duration` as the platform gives it.
fn exec_seconds(exec_duration: Option<&str>) -> f64 {
    exec_duration
        .and_then(iso_seconds)
        .expect("the job's exec_duration")
}

/// Seconds of an ISO-8601 duration as the platform writes them: "P0DT00H00M03.001234S", "PT3.5S".
fn iso_seconds(text: &str) -> Option<f64> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut total = 0.0;
    let mut number = String::new();
    for (part, units) in [
        (days, [('D', 86_400.0)].as_slice()),
        (time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)]),
    ] {
        for c in part.chars() {
            if let Some((_, scale)) = units.iter().find(|(u, _)| *u == c) {
                total += number.parse::<f64>().ok()? * scale;
                number.clear();
            } else {
                number.push(c);
            }
        }
        if !number.is_empty() {
            return None;
        }
    }
    Some(total)
}
