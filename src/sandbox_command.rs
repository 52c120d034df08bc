//! `gc-hotfolder sandbox`: run the sandbox from the command line until Ctrl-C or SIGTERM.

use crate::cli::SandboxArgs;

use gc_sandbox::{
    DEMO_ADMIN_TOKEN, DEMO_READER_TOKEN, DEMO_TOKEN, Fixture, Sandbox, SandboxOptions,
};

/// The `--fault` syntax and the `--record` layout, shown by `gc-hotfolder sandbox --help`.
pub const SANDBOX_HELP: &str = "\
FAULT RULES (--fault, repeatable; also [[fault]] in the fixture and PUT /_sandbox/faults at run time)
  Words separated by spaces, in any order:
    [METHOD] PATH ACTION [p=PROBABILITY] [after] [times=N]
  PATH     a glob on the request path; * also matches '/', e.g. /api/v1/uploads/*  /s3/*  *
  ACTION   one of:
    STATUS [retry-after=SECONDS]   answer 500 (HTML page), 502/503/504/429 (proxy page, no JSON;
                                   S3-style XML under /s3/) instead of handling the request
    latency=MS                     wait MS milliseconds first
    drop                           close the connection without an answer (the request body is not read)
    too-many-uploads=N             POST /api/v1/uploads/ answers the \"too many uploads\" 400 once the
                                   caller owns N uploads
  p=0.25   the chance per matching request (default 1)
  after    handle the request first (it is committed), then lose the answer: STATUS replaces it,
           drop cuts the connection in the middle of the response body
  times=N  fire at most N times
  Draws come from a seeded RNG (--seed) so a run can be reproduced.
EXAMPLES
  --fault 'PUT /s3/* 503 retry-after=1 p=0.2'
  --fault 'POST /api/v1/archives/items/ 502 after times=1'
  --fault '* latency=200'
  --fault '/s3/* drop p=0.05'

REQUEST RECORDING (--record DIR)
  Every request received is written to DIR as it arrives, two files per request, numbered in
  order of arrival (after the records already in DIR):
    000001.head  the request line (METHOD /path?query HTTP/1.1) and every header as received,
                 one per line; once the body is over, an empty line and
                 'body: N bytes, complete' or 'body: N bytes, not read to its end'
    000001.body  the body, written chunk by chunk as the server reads it (part PUTs of any
                 size go to disk as they arrive, never held in memory)
  Recording changes nothing the server does: a body it does not read to its end (an error
  answered early, a fault that drops the connection) is recorded as far as it was read.
  The credentials of an Authorization header are not written, only the scheme and the first
  16 hex digits of their SHA-256: 'authorization: Bearer [redacted, sha256 3b1f0c...]'.";

/// Run the sandbox; returns the process exit code.
pub fn main(args: SandboxArgs) -> u8 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

async fn serve(args: SandboxArgs) -> anyhow::Result<()> {
    // Before anything is printed: a caller that stops the server as soon as it reads "Stop with" must
    // find the handlers in place, or the signal's default action kills the process.
    let stop = crate::commands::shutdown_signal();
    let fixture = match &args.fixture {
        Some(path) => Fixture::load(path)?,
        None => Fixture::demo(),
    };
    let demo = fixture.is_demo;
    let mut options = SandboxOptions::new(fixture);
    options.listen = args.listen;
    options.public_url = args.public_url;
    options.data_dir = args.data_dir.clone();
    if let Some(d) = args.import_delay {
        options.import_delay = d;
    }
    if let Some(m) = args.min_part_size {
        options.min_part_size = m;
    }
    if args.seed.is_some() {
        options.seed = args.seed;
    }
    options.faults = args.faults;
    options.record = args.record;
    let mut temp_tls = None;
    if args.tls || args.tls_dir.is_some() {
        options.tls_dir = Some(match (&args.tls_dir, &args.data_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(data)) => data.join("tls"),
            (None, None) => {
                let dir = std::env::temp_dir().join(format!(
                    "gc-hotfolder-sandbox-tls-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                temp_tls = Some(dir.clone());
                dir
            }
        });
    }
    let sockets: Vec<(String, String)> = options
        .fixture
        .sockets
        .iter()
        .map(|s| (s.slug.clone(), s.kind.label.to_owned()))
        .collect();
    let sandbox = Sandbox::start(options).await?;
    println!("Grand Challenge sandbox: {}", sandbox.base_url());
    println!("Sockets (slug: kind):");
    for (slug, kind) in &sockets {
        println!("  {slug}: {kind}");
    }
    if let Some(ca) = sandbox.ca_cert_path() {
        println!("CA certificate: {}", ca.display());
    }
    let origin = sandbox.base_url().origin().ascii_serialization();
    println!("State: {origin}/_sandbox/state");
    if demo {
        println!("Demo tokens (built-in fixture):");
        println!("  demo   (editor of demo-archive and demo-reader-study): {DEMO_TOKEN}");
        println!("  reader (view-only):                                    {DEMO_READER_TOKEN}");
        println!("  admin  (staff):                                        {DEMO_ADMIN_TOKEN}");
    }
    println!("Stop with Ctrl-C.");
    stop.await;
    eprintln!("stopping");
    sandbox.stop().await;
    if let Some(dir) = temp_tls {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
