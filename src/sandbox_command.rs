//! `gc-hotfolder sandbox`: run the sandbox from the command line until Ctrl-C or SIGTERM.

use crate::cli::SandboxArgs;

use gc_sandbox::{Fixture, Sandbox, SandboxOptions};

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
    let stop = crate::start::shutdown_signal();
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
