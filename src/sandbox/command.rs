//! `gc-hotfolder sandbox`: run the sandbox from the command line until Ctrl-C or SIGTERM.

use crate::cli::SandboxArgs;

use super::{Fixture, Sandbox, SandboxOptions};

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
    import-fails                   answer as usual, but the background imports the request schedules
                                   (values of a PATCH set from uploads) fail: a DICOM image set or a
                                   file with a notification only, an image's session as \"Failed\"
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
  --fault 'PATCH /api/v1/archives/items/* import-fails'
AT RUN TIME (PUT /_sandbox/faults replaces every rule; GET lists them as objects)
  The body is a JSON list (or {\"rules\": [...]}) of rules, each the words above as a string or an
  object with the fields of a fixture's [[fault]] table: action (status, latency, drop,
  too_many_uploads, import_fails) with status and retry_after, ms, or threshold; method, path,
  probability, after, times. [] removes every rule. An invalid rule is answered 400, changing nothing.
  curl -X PUT http://127.0.0.1:8000/_sandbox/faults -H 'Content-Type: application/json' \\
    -d '[\"PUT /s3/* 503 p=0.2\", {\"path\": \"/api/v1/uploads/*\", \"action\": \"latency\", \"ms\": 200}]'

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
    let world = banner(&options.fixture);
    let sandbox = Sandbox::start(options).await?;
    println!("Grand Challenge sandbox: {}", sandbox.base_url());
    for line in &world {
        println!("{line}");
    }
    if let Some(ca) = sandbox.ca_cert_path() {
        println!("CA certificate: {}", ca.display());
    }
    let origin = sandbox.base_url().origin().ascii_serialization();
    println!("State: {origin}/_sandbox/state");
    println!("Stop with Ctrl-C.");
    stop.await;
    eprintln!("stopping");
    sandbox.stop().await;
    if let Some(dir) = temp_tls {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// What a fixture holds, as the sandbox prints it at start: its sockets, targets, algorithms and the
/// tokens to try them with (a sandbox's tokens are made up for trying things; they open nothing else).
pub fn banner(fixture: &Fixture) -> Vec<String> {
    let mut out = vec!["Sockets (slug: kind):".to_owned()];
    out.extend(
        fixture
            .sockets
            .iter()
            .map(|s| format!("  {}: {}", s.slug, s.kind.label)),
    );
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            out.push(title.to_owned());
            out.extend(lines);
        }
    };
    section(
        "Archives (slug: title):",
        fixture
            .archives
            .iter()
            .map(|a| format!("  {}: {}", a.slug, a.title))
            .collect(),
    );
    section(
        "Reader studies (slug: title):",
        fixture
            .reader_studies
            .iter()
            .map(|r| format!("  {}: {}", r.slug, r.title))
            .collect(),
    );
    section(
        "Algorithms (slug: inputs → outputs):",
        fixture
            .algorithms
            .iter()
            .map(|a| {
                let interfaces: Vec<String> = a
                    .interfaces
                    .iter()
                    .map(|i| format!("{} → {}", i.inputs.join(", "), i.outputs.join(", ")))
                    .collect();
                format!("  {}: {}", a.slug, interfaces.join("; "))
            })
            .collect(),
    );
    section(
        "Tokens (user, what they may do: token):",
        fixture
            .users
            .iter()
            .map(|u| {
                format!(
                    "  {} ({}): {}",
                    u.username,
                    roles(fixture, &u.username),
                    u.token
                )
            })
            .collect(),
    );
    out
}

/// What a fixture's user may do, e.g. "editor of demo-archive; may run lung-volume-estimator".
fn roles(fixture: &Fixture, user: &str) -> String {
    let (a, r, g) = (
        &fixture.archives,
        &fixture.reader_studies,
        &fixture.algorithms,
    );
    let mut editor = listed(a, user, |x| (&x.slug, &x.editors));
    editor.extend(listed(r, user, |x| (&x.slug, &x.editors)));
    editor.extend(listed(g, user, |x| (&x.slug, &x.editors)));
    let uploader = listed(a, user, |x| (&x.slug, &x.uploaders));
    let mut viewer = listed(a, user, |x| (&x.slug, &x.users));
    viewer.extend(listed(r, user, |x| (&x.slug, &x.readers)));
    let runs = listed(g, user, |x| (&x.slug, &x.users));
    let mut parts = Vec::new();
    if let Some(u) = fixture.users.iter().find(|u| u.username == user) {
        if u.staff {
            parts.push("staff".to_owned());
        }
        if !u.active {
            parts.push("inactive".to_owned());
        }
    }
    for (what, list) in [
        ("editor of", editor),
        ("uploader of", uploader),
        ("user of", viewer),
        ("may run", runs),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        "no role: sees public targets only".to_owned()
    } else {
        parts.join("; ")
    }
}

/// The slugs of the `items` whose list (as `pick` gives it with the slug) names `user`.
fn listed<'a, T>(
    items: &'a [T],
    user: &str,
    pick: impl Fn(&'a T) -> (&'a String, &'a Vec<String>),
) -> Vec<&'a str> {
    items
        .iter()
        .map(pick)
        .filter(|(_, list)| list.iter().any(|u| u == user))
        .map(|(slug, _)| slug.as_str())
        .collect()
}
