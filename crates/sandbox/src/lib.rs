//! A Grand Challenge–compatible server, so that tests, the demo and benchmarks run against real HTTP with
//! the platform's behaviour (gc-protocol.md, appendix A) and no account or internet. The official Python
//! client works against it unchanged.
//!
//! What the platform would accept is judged by `gc-content`, the same code the agent's pre-checks use;
//! this crate adds the platform's side of the conversation: the world of users, sockets, archives,
//! reader studies, items and algorithms, the REST endpoints with the platform's exact JSON and error
//! texts, S3 multipart parts, background imports, fault injection and request recording. It never
//! imports the agent or the client.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use gc_sandbox::{Fixture, Sandbox, SandboxOptions};
//!
//! let sandbox = Sandbox::start(SandboxOptions::new(Fixture::demo())).await?;
//! // A platform client talks to `base_url()` with one of the fixture's tokens (e.g. DEMO_TOKEN);
//! // `state()` is everything the sandbox holds, for assertions.
//! assert!(sandbox.base_url().as_str().ends_with("/api/v1/"));
//! assert!(sandbox.state()["archives"].is_array());
//! sandbox.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! - [`fixture`]  the seeded world (users and tokens, sockets, archives, reader studies, items,
//!   algorithms) from TOML.
//! - [`algorithms`] algorithms, their jobs and the deterministic executor that runs them;
//!   `algorithm_api` their endpoints.
//! - [`faults`]   fault injection: statuses, `Retry-After`, latency, dropped connections, upload quotas.
//! - `store`      the in-memory world and its JSON representations; bytes live on disk.
//! - `routes`     which endpoint a path names (also used to resolve hyperlinks in bodies).
//! - `http`       the platform's HTTP conventions: exact JSON, error shapes, pagination, negotiation.
//! - `auth`       token authentication with the platform's literal messages.
//! - `api`, `values`, `uploads`  the REST endpoints; `s3` the presigned part PUT endpoint.
//! - `worker`     background imports after the configured delay.
//! - `tls`        a throw-away CA and leaf certificate for HTTPS.
//! - [`recorder`] every request received written to a folder (`--record`), for tests that search what
//!   clients sent.

mod algorithm_api;
mod algorithm_specs;
pub mod algorithms;
mod api;
mod app;
mod auth;
mod ctx;
mod executor;
pub mod faults;
pub mod fixture;
mod http;
pub mod recorder;
mod routes;
mod s3;
mod store;
mod tls;
mod uploads;
mod values;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

pub use faults::{FaultAction, FaultRule};
pub use fixture::{DEMO_ADMIN_TOKEN, DEMO_READER_TOKEN, DEMO_TOKEN, Fixture};

use app::{App, Config};
use faults::{Decision, FaultEngine, Terminal};
use http::{Resp, RespBody};
use routes::Route;
use store::{Urls, UserId, World};

const GIB: u64 = 1 << 30;

/// How to run a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The externally visible origin used in absolute URLs; default: derived from the bound address.
    pub public_url: Option<url::Url>,
    /// Serve HTTPS with a self-signed certificate; its CA is written into this directory.
    pub tls_dir: Option<PathBuf>,
    pub fixture: Fixture,
    /// Where uploaded bytes are stored; default: a temporary directory removed on stop.
    pub data_dir: Option<PathBuf>,
    /// How long the background worker waits before processing an import.
    pub import_delay: Duration,
    /// The smallest non-final part S3 accepts (5 MiB on the platform; tests lower it).
    pub min_part_size: u64,
    /// Fault rules in force from the start (the fixture's `[[fault]]` tables are added to these).
    pub faults: Vec<FaultRule>,
    /// Seed of the fault RNG, for reproducible runs; `None` draws from the OS.
    pub seed: Option<u64>,
    /// Uploads older than this are deleted whatever their state (1 day on the platform).
    pub upload_expiry: Duration,
    /// More than this many upload records per user → "too many uploads" (2000 on the platform).
    pub max_uploads_per_user: usize,
    /// Byte quota of uploads in flight for unverified users (2 GiB on the platform).
    pub upload_limit_unverified: u64,
    /// Byte quota for verified users (128 GiB on the platform).
    pub upload_limit_verified: u64,
    /// Lifetime of presigned part URLs (3600 s on the platform).
    pub presigned_url_lifetime: Duration,
    /// Write every request received into this folder ([`recorder`]); nothing else changes.
    pub record: Option<PathBuf>,
}

impl SandboxOptions {
    /// Loopback on a free port, plain HTTP, no import delay, 5 MiB parts and the platform's limits;
    /// settings from the fixture's `[sandbox]` table take precedence over these defaults.
    pub fn new(fixture: Fixture) -> SandboxOptions {
        let s = fixture.settings.clone();
        SandboxOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            tls_dir: None,
            data_dir: None,
            import_delay: s.import_delay.unwrap_or(Duration::ZERO),
            min_part_size: s.min_part_size.unwrap_or(5 * 1024 * 1024),
            faults: Vec::new(),
            seed: s.seed,
            upload_expiry: s.upload_expiry.unwrap_or(Duration::from_secs(24 * 3600)),
            max_uploads_per_user: s.max_uploads_per_user.unwrap_or(2000),
            upload_limit_unverified: s.upload_limit_unverified.unwrap_or(2 * GIB),
            upload_limit_verified: s.upload_limit_verified.unwrap_or(128 * GIB),
            presigned_url_lifetime: s
                .presigned_url_lifetime
                .unwrap_or(Duration::from_secs(3600)),
            record: None,
            fixture,
        }
    }
}

/// A running sandbox.
pub struct Sandbox {
    base_url: url::Url,
    ca_cert: Option<PathBuf>,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    cleanup: AbortHandle,
    owned_data_dir: Option<PathBuf>,
}

impl Sandbox {
    pub async fn start(options: SandboxOptions) -> anyhow::Result<Sandbox> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (data_dir, owned) = match &options.data_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "gc-hotfolder-sandbox-{}",
                    uuid::Uuid::new_v4().simple()
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let addr = listener.local_addr()?;
        let tls = match &options.tls_dir {
            Some(dir) => Some(tls::setup(dir).context("cannot set up TLS")?),
            None => None,
        };
        let origin = public_origin(options.public_url.as_ref(), addr, tls.is_some());
        let base_url = url::Url::parse(&format!("{origin}/api/v1/")).context("public URL")?;
        let app = Arc::new(new_app(&options, data_dir.clone(), origin).await?);
        let cleanup =
            tokio::spawn(expire_uploads(app.clone(), options.upload_expiry)).abort_handle();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ca_cert = tls.as_ref().map(|t| t.ca_path.clone());
        let server = tokio::spawn(serve(
            listener,
            tls.map(|t| t.acceptor),
            app.clone(),
            shutdown_rx,
        ));
        tracing::info!(%base_url, "sandbox listening");
        Ok(Sandbox {
            base_url,
            ca_cert,
            app,
            shutdown,
            server: Some(server),
            cleanup,
            owned_data_dir: owned.then_some(data_dir),
        })
    }

    /// The API base, e.g. `http://127.0.0.1:41234/api/v1/`.
    pub fn base_url(&self) -> url::Url {
        self.base_url.clone()
    }

    /// The CA certificate to trust when serving HTTPS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// Where uploaded bytes, files and images are stored.
    pub fn data_dir(&self) -> &Path {
        &self.app.data_dir
    }

    /// Replace the fault rules in force (the fixture's and the options' included).
    pub fn set_faults(&self, rules: Vec<FaultRule>) -> anyhow::Result<()> {
        let mut engine = self
            .app
            .faults
            .lock()
            .map_err(|_| anyhow::anyhow!("fault engine poisoned"))?;
        engine.set_rules(rules).map_err(anyhow::Error::msg)
    }

    /// What `GET /_sandbox/state` returns.
    pub fn state(&self) -> serde_json::Value {
        self.app.world().state_json(&self.app.urls)
    }

    /// Stop accepting, let open connections finish (at most 5 s), stop background jobs.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.abort_background();
    }

    fn abort_background(&mut self) {
        self.cleanup.abort();
        if let Ok(mut tasks) = self.app.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        if let Some(dir) = self.owned_data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.abort_background();
    }
}

/// The origin of absolute URLs: the public URL's, else the bound address (a wildcard address answers
/// on loopback).
fn public_origin(public_url: Option<&url::Url>, addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    match public_url {
        Some(u) => u.origin().ascii_serialization(),
        None => {
            let host = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
                IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            format!("{scheme}://{host}:{}", addr.port())
        }
    }
}

/// A sandbox's shared state: the recorder, the world seeded from the fixture, the fault rules of the
/// fixture and the options, and the limits.
async fn new_app(
    options: &SandboxOptions,
    data_dir: PathBuf,
    origin: String,
) -> anyhow::Result<App> {
    let recorder = match &options.record {
        Some(dir) => Some(
            recorder::Recorder::new(dir)
                .with_context(|| format!("cannot record requests into {}", dir.display()))?,
        ),
        None => None,
    };
    let fixture = options.fixture.clone();
    let dir = data_dir.clone();
    let world = tokio::task::spawn_blocking(move || World::from_fixture(&fixture, &dir)).await??;
    let mut engine = FaultEngine::new(options.seed);
    let mut rules = options.fixture.faults.clone();
    rules.extend(options.faults.iter().cloned());
    engine.set_rules(rules).map_err(anyhow::Error::msg)?;
    Ok(App {
        world: Mutex::new(world),
        faults: Mutex::new(engine),
        config: Config {
            import_delay: options.import_delay,
        },
        data_dir,
        urls: Urls { origin },
        limits: app::Limits {
            max_uploads_per_user: options.max_uploads_per_user,
            upload_limit_unverified: options.upload_limit_unverified,
            upload_limit_verified: options.upload_limit_verified,
            max_files_per_session: 100,
            min_part_size: options.min_part_size,
        },
        signer: s3::Signer::new(options.presigned_url_lifetime),
        tasks: Mutex::new(Vec::new()),
        recorder,
    })
}

/// Delete uploads older than `expiry`, whatever their state (the platform's hourly cleanup).
async fn expire_uploads(app: Arc<App>, expiry: Duration) {
    let tick = (expiry / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
    loop {
        tokio::time::sleep(tick).await;
        let mut w = app.world();
        let expired: Vec<uuid::Uuid> = w
            .uploads
            .values()
            .filter(|u| u.created_at.elapsed() >= expiry)
            .map(|u| u.pk)
            .collect();
        for pk in expired {
            w.delete_upload(pk);
        }
    }
}

/// Marks a response that must not be sent: the connection is closed instead.
#[derive(Clone, Copy)]
struct AbortConnection;

#[derive(Debug)]
struct ConnectionAborted;

impl std::fmt::Display for ConnectionAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a fault rule")
    }
}

impl std::error::Error for ConnectionAborted {}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = axum::Router::new().fallback(entry).with_state(app);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => serve_connection(TokioIo::new(s), router, shutdown).await,
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        },
                        None => serve_connection(TokioIo::new(stream), router, shutdown).await,
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}

async fn serve_connection<I>(io: I, router: axum::Router, mut shutdown: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            use tower::ServiceExt;
            let response = match router.oneshot(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if response.extensions().get::<AbortConnection>().is_some() {
                return Err(ConnectionAborted);
            }
            Ok(response)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn entry(State(app): State<Arc<App>>, req: Request) -> Response {
    handle(app, req).await
}

/// One request: faults before, dispatch, faults after, counting.
async fn handle(app: Arc<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match &app.recorder {
        Some(r) => r.record(&parts, body),
        None => body,
    };
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = http::query_pairs(parts.uri.query());
    let route = routes::resolve(&path);
    let control = matches!(route, Some(Route::SandboxState | Route::SandboxFaults));
    if control {
        return control_request(&app, route.as_ref(), &method, body)
            .await
            .into_response()
            .await;
    }
    let pattern = match &route {
        Some(r) => r.pattern(),
        None => "(unknown)",
    };
    let decision = app
        .faults
        .lock()
        .map(|mut f| f.decide(&method, &path))
        .unwrap_or_default();
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    if let Some(t) = decision.before {
        let (response, label) = fault_response(t, &path).await;
        count(&app, &method, pattern, &label);
        return response;
    }

    let resp = dispatch(
        &app,
        route.as_ref(),
        &method,
        &parts,
        query,
        body,
        &decision,
    )
    .await;
    let pattern = if route.is_none() && resp.status == 301 {
        "(redirect)"
    } else {
        pattern
    };
    let (response, label) = match decision.after {
        None => {
            let label = resp.status.as_u16().to_string();
            (resp.into_response().await, label)
        }
        Some(t @ Terminal::Status { .. }) => fault_response(t, &path).await,
        Some(Terminal::Drop) => (cut_response(resp).await, "dropped".to_string()),
    };
    count(&app, &method, pattern, &label);
    response
}

/// The answer of the handler for `route`: S3, media files or the API.
async fn dispatch(
    app: &Arc<App>,
    route: Option<&Route>,
    method: &str,
    parts: &::http::request::Parts,
    query: Vec<(String, String)>,
    body: Body,
    decision: &Decision,
) -> Resp {
    match route {
        None => match slash_redirect(parts.uri.path(), parts.uri.query()) {
            Some(r) => r,
            None => Resp::html(404),
        },
        Some(Route::S3Object { user, upload }) => {
            if method == "PUT" {
                let has_auth = parts.headers.contains_key(::http::header::AUTHORIZATION);
                s3::put_part(
                    &app.world,
                    &app.signer,
                    user,
                    upload,
                    &query,
                    has_auth,
                    body,
                )
                .await
            } else {
                Resp::s3_error(
                    405,
                    "MethodNotAllowed",
                    "The specified method is not allowed against this resource.",
                )
            }
        }
        Some(Route::MediaFile { civ, name }) if method == "GET" || method == "HEAD" => {
            media_file(app, civ, name)
        }
        Some(Route::MediaImage { image, file, name }) if method == "GET" || method == "HEAD" => {
            media_image(app, image, file, name)
        }
        Some(Route::MediaFile { .. } | Route::MediaImage { .. }) => Resp::html(405),
        Some(r) => api_request(app, r, method, parts, query, body, decision).await,
    }
}

fn count(app: &App, method: &str, pattern: &str, status: &str) {
    *app.world()
        .requests
        .entry(format!("{method} {pattern} {status}"))
        .or_insert(0) += 1;
}

/// Django's APPEND_SLASH: 301 to the slashed URL when that one exists.
fn slash_redirect(path: &str, query: Option<&str>) -> Option<Resp> {
    if path.ends_with('/') {
        return None;
    }
    let slashed = format!("{path}/");
    let route = routes::resolve(&slashed)?;
    if !route.is_api() {
        return None;
    }
    let location = match query {
        Some(q) => format!("{slashed}?{q}"),
        None => slashed,
    };
    Some(Resp::redirect(&location))
}

async fn fault_response(t: Terminal, path: &str) -> (Response, String) {
    match t {
        Terminal::Drop => {
            let mut r = Response::new(Body::empty());
            r.extensions_mut().insert(AbortConnection);
            (r, "dropped".into())
        }
        Terminal::Status {
            status,
            retry_after,
        } => {
            let mut resp = if path.starts_with("/s3/") {
                match status {
                    503 => Resp::s3_error(503, "SlowDown", "Please reduce your request rate."),
                    500 => Resp::s3_error(
                        500,
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ),
                    s => Resp::s3_error(
                        s,
                        "ServiceUnavailable",
                        "Service is unable to handle request.",
                    ),
                }
            } else if status == 500 {
                Resp::html(500)
            } else {
                Resp::proxy(status, None)
            };
            if let Some(s) = retry_after {
                resp = resp.with_header(::http::header::RETRY_AFTER, &s.to_string());
            }
            (resp.into_response().await, status.to_string())
        }
    }
}

/// Send the status line, headers and half of the body, then break the connection.
async fn cut_response(resp: Resp) -> Response {
    let status = resp.status;
    let headers = resp.headers.clone();
    let (content_type, bytes): (&str, Option<Bytes>) = match &resp.body {
        RespBody::Json(v) => (
            "application/json",
            Some(serde_json::to_vec(v).unwrap_or_default().into()),
        ),
        RespBody::Html(s) => ("text/html; charset=utf-8", Some(Bytes::from(s.clone()))),
        RespBody::Xml(s) => ("application/xml", Some(Bytes::from(s.clone()))),
        RespBody::File { .. } => ("application/octet-stream", None),
        RespBody::Empty => ("", None),
    };
    let broken = || std::io::Error::other("connection dropped by a fault rule");
    let (body, len) = match (bytes, resp.body) {
        (Some(b), _) if b.len() > 1 => {
            let half = b.slice(..b.len() / 2);
            let len = b.len() as u64;
            (
                Body::from_stream(futures_util::stream::iter(vec![Ok(half), Err(broken())])),
                len,
            )
        }
        (_, RespBody::File { path, size }) if size > 1 => {
            match tokio::fs::File::open(&path).await {
                Ok(f) => {
                    let half = tokio_util::io::ReaderStream::new(f.take(size / 2));
                    (
                        Body::from_stream(
                            half.chain(futures_util::stream::once(async move { Err(broken()) })),
                        ),
                        size,
                    )
                }
                Err(_) => return fault_response(Terminal::Drop, "").await.0,
            }
        }
        // Nothing to cut in the middle of: the answer is lost entirely.
        _ => return fault_response(Terminal::Drop, "").await.0,
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(::http::header::CONTENT_TYPE, v);
    }
    h.insert(::http::header::CONTENT_LENGTH, len.into());
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    }
    r
}

async fn control_request(app: &App, route: Option<&Route>, method: &str, body: Body) -> Resp {
    match (route, method) {
        (Some(Route::SandboxState), "GET") => Resp::json(200, app.world().state_json(&app.urls)),
        (Some(Route::SandboxFaults), "GET") => {
            let rules = app.faults.lock().map(|f| f.rules()).unwrap_or_default();
            Resp::json(
                200,
                serde_json::json!(rules.iter().map(|r| r.to_spec()).collect::<Vec<_>>()),
            )
        }
        (Some(Route::SandboxFaults), "PUT") => {
            let bytes = match axum::body::to_bytes(body, 1 << 20).await {
                Ok(b) => b,
                Err(e) => return Resp::detail(400, &e.to_string()),
            };
            // A rule is an object with the fields of a fixture's [[fault]] table, or the words of
            // --fault (both as `gc-hotfolder sandbox --help` shows them).
            #[derive(serde::Deserialize)]
            #[serde(untagged)]
            enum Rule {
                Words(String),
                Spec(faults::FaultSpec),
            }
            #[derive(serde::Deserialize)]
            #[serde(untagged)]
            enum Specs {
                List(Vec<Rule>),
                Wrapped { rules: Vec<Rule> },
            }
            let specs = match serde_json::from_slice::<Specs>(&bytes) {
                Ok(Specs::List(l) | Specs::Wrapped { rules: l }) => l,
                Err(e) => {
                    return Resp::detail(
                        400,
                        &format!(
                            "expected a list of fault rules (objects like {{\"path\": \"/s3/*\", \
                             \"action\": \"status\", \"status\": 503}} or strings like \
                             \"PUT /s3/* 503\"): {e}"
                        ),
                    );
                }
            };
            let rules: Result<Vec<FaultRule>, String> = specs
                .into_iter()
                .map(|r| match r {
                    Rule::Words(w) => w.parse(),
                    Rule::Spec(s) => s.into_rule(),
                })
                .collect();
            let rules = match rules {
                Ok(r) => r,
                Err(e) => return Resp::detail(400, &e),
            };
            let specs: Vec<_> = rules.iter().map(|r| r.to_spec()).collect();
            match app.faults.lock().map(|mut f| f.set_rules(rules)) {
                Ok(Ok(())) => Resp::json(200, serde_json::json!(specs)),
                Ok(Err(e)) => Resp::detail(400, &e),
                Err(_) => Resp::html(500),
            }
        }
        (Some(r), m) => Resp::method_not_allowed(m, r.methods()),
        (None, _) => Resp::html(404),
    }
}

fn media_file(app: &App, civ: &str, name: &str) -> Resp {
    let w = app.world();
    let found = civ
        .parse::<i64>()
        .ok()
        .and_then(|pk| w.civs.get(&pk))
        .and_then(|c| match &c.content {
            store::CivContent::File(f) if f.name == name => Some(f.clone()),
            _ => None,
        });
    match found {
        Some(f) => Resp {
            status: ::http::StatusCode::OK,
            headers: Vec::new(),
            body: RespBody::File {
                path: f.path,
                size: f.size,
            },
        },
        None => Resp::html(404),
    }
}

fn media_image(app: &App, image: &str, file: &str, name: &str) -> Resp {
    let w = app.world();
    let (Ok(image), Ok(file)) = (uuid::Uuid::parse_str(image), uuid::Uuid::parse_str(file)) else {
        return Resp::html(404);
    };
    let found = w.images.get(&image).and_then(|i| {
        i.files
            .iter()
            .find(|f| f.pk == file && f.stored.name == name)
    });
    match found {
        Some(f) => Resp {
            status: ::http::StatusCode::OK,
            headers: Vec::new(),
            body: RespBody::File {
                path: f.stored.path.clone(),
                size: f.stored.size,
            },
        },
        None => Resp::html(404),
    }
}

/// The largest JSON body accepted (Django's 16 MiB, with room for the framework's streaming parser).
const MAX_JSON_BODY: usize = 64 << 20;

async fn api_request(
    app: &Arc<App>,
    route: &Route,
    method: &str,
    parts: &::http::request::Parts,
    query: Vec<(String, String)>,
    body: Body,
    faults: &Decision,
) -> Resp {
    let header = |name: ::http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Err(r) = http::accepts_json(
        header(::http::header::ACCEPT).as_deref(),
        http::query_get(&query, "format"),
    ) {
        return r;
    }
    let user = match authenticated_user(app, parts) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let effective = if method == "HEAD" { "GET" } else { method };
    if let Some(r) = answer_without_handler(route, method, effective, user) {
        return r;
    }
    let bytes = match read_json_body(body, effective).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path = parts.uri.path().to_string();
    let (resp, jobs) = {
        let mut w = app.world();
        let ctx = ctx::Ctx {
            method: effective,
            path: &path,
            query,
            user,
            urls: &app.urls,
            content_type: header(::http::header::CONTENT_TYPE),
            body: bytes,
            limits: &app.limits,
            signer: &app.signer,
            too_many_uploads: faults.too_many_uploads,
        };
        match api::handle(&mut w, &ctx, route) {
            Ok(done) => done,
            Err(r) => (r, Vec::new()),
        }
    };
    for job in jobs {
        if faults.import_fails {
            worker::spawn_failing(app, job);
        } else {
            worker::spawn(app, job);
        }
    }
    resp
}

/// The user of the request's token: `None` without one, `Err` for a token refused.
fn authenticated_user(app: &App, parts: &::http::request::Parts) -> Result<Option<UserId>, Resp> {
    let outcome = {
        let w = app.world();
        auth::authenticate(
            parts
                .headers
                .get(::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            |token| {
                w.users
                    .iter()
                    .find(|u| u.token == token)
                    .map(|u| (u.pk, u.active))
            },
        )
    };
    match outcome {
        auth::Auth::Anonymous => Ok(None),
        auth::Auth::User(u) => Ok(Some(u)),
        auth::Auth::Failed(msg) => Err(Resp::unauthorized(msg)),
    }
}

/// What is answered before any handler runs: OPTIONS, and methods the route does not take
/// (`effective` is the method with HEAD taken as GET).
fn answer_without_handler(
    route: &Route,
    method: &str,
    effective: &str,
    user: Option<UserId>,
) -> Option<Resp> {
    if effective == "OPTIONS" {
        return Some(Resp::json(
            200,
            serde_json::json!({
                "name": route.pattern(),
                "description": "",
                "renders": ["application/json"],
                "parses": ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"],
            }),
        ));
    }
    if route.methods().contains(&effective) {
        return None;
    }
    // Model permissions are checked before the method: deleting items is not allowed through the API.
    if matches!(route, Route::Item(..)) && effective == "DELETE" {
        return Some(if user.is_some() {
            Resp::forbidden()
        } else {
            Resp::not_authenticated()
        });
    }
    let mut allowed: Vec<&str> = route.methods().to_vec();
    allowed.extend(["HEAD", "OPTIONS"]);
    Some(Resp::method_not_allowed(method, &allowed))
}

/// The body of a request that may carry one, up to [`MAX_JSON_BODY`].
async fn read_json_body(body: Body, effective: &str) -> Result<Bytes, Resp> {
    if !matches!(effective, "POST" | "PUT" | "PATCH") {
        return Ok(Bytes::new());
    }
    axum::body::to_bytes(body, MAX_JSON_BODY)
        .await
        .map_err(|_| {
            Resp::detail(
                400,
                "Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.",
            )
        })
}
