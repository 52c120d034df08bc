//! `gc-hotfolder sandbox`: run the sandbox from the command line until Ctrl-C or SIGTERM.

use crate::cli::SandboxArgs;

use gc_sandbox::{
    DEMO_ADMIN_TOKEN, DEMO_READER_TOKEN, DEMO_TOKEN, Fixture, Sandbox, SandboxOptions,
};

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
