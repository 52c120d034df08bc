//! The HTTP client: TLS, the token, retries, lookups by slug, pagination, items, images and values.
//!
//! Every API request goes through [`Client::send`], so the token handling (only ever to the platform's own
//! origin), the retry loop and the error classification exist once. Uploads ([`super::uploads`]) and
//! verification ([`super::verify`]) build on the crate-internal helpers defined here.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER,
};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use super::auth::Token;
use super::error::GcError;
use super::models::{
    Archive, HyperlinkedImage, Item, Page, ReaderStudy, Socket, Target, TargetKind, UploadSession,
    UserUpload, ValueEntry,
};
use super::observe::{ClientObserver, Unobserved};
use super::retry::{
    Decision, Outcome, Reply, RequestKind, RetryPolicy, TransportFailure, retry_cause,
};

/// How to reach the platform and how hard to push it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API base, with its trailing slash, e.g. `https://grand-challenge.org/api/v1/`.
    pub base_url: url::Url,
    pub token: Token,
    /// An extra CA certificate (PEM) to trust, e.g. the sandbox's self-signed one.
    pub ca_cert: Option<PathBuf>,
    /// S3 part size in bytes (gcapi uses 32 MiB).
    pub part_size: u64,
    /// Parts in flight at once, across all files of this client.
    pub parallel_parts: usize,
    /// Files being uploaded at once, across all cases of this client.
    pub parallel_files: usize,
    pub retry: RetryPolicy,
    /// Per connect/read phase, like gcapi's 60 s. For part uploads: the longest time without progress.
    pub timeout: Duration,
    /// Told of retries and finished uploads; [`Unobserved`] by default.
    pub observer: Arc<dyn ClientObserver>,
}

/// The platform's default part size, gcapi's 32 MiB.
pub const DEFAULT_PART_SIZE: u64 = 32 << 20;
/// S3 refuses larger parts.
const MAX_PART_SIZE: u64 = 5 << 30;
/// API answers are small JSON documents; anything bigger is not the platform talking.
const MAX_API_BODY: usize = 64 << 20;
/// Page size for list walks (the platform's default and gcapi's).
const PAGE_LIMIT: u64 = 100;
/// The largest page the platform serves (gc-protocol.md §1.7).
const MAX_PAGE_LIMIT: u64 = 1000;
/// A download asks the kernel to start writing each such stretch to disk as soon as it is written, so
/// that the final fsync (the file must be on disk before it counts as downloaded) has little left to do.
const WRITEBACK_STEP: u64 = 8 << 20;
/// Chunks of a download on their way to the disk at most (hyper's chunks are at most a few hundred KiB).
const DOWNLOAD_QUEUE: usize = 64;
/// Redirect hops a download may take (the media URL redirects to signed storage once).
const MAX_REDIRECTS: usize = 10;

impl ClientConfig {
    /// The defaults: 32 MiB parts, 8 parts and 4 files in flight, the default retry policy, 60 s timeouts.
    pub fn new(base_url: Url, token: Token) -> ClientConfig {
        ClientConfig {
            base_url,
            token,
            ca_cert: None,
            part_size: DEFAULT_PART_SIZE,
            parallel_parts: 8,
            parallel_files: 4,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
            observer: Arc::new(Unobserved),
        }
    }
}

/// A client for one platform and one token. Cheap to clone; clones share connections, caches and the
/// client-wide upload concurrency limits.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) base: Url,
    auth: HeaderValue,
    /// API calls and downloads: no redirects followed, read timeout.
    api: reqwest::Client,
    /// Part PUTs to presigned URLs: no token ever, no redirects, and no read timeout (a part can take longer
    /// than any fixed timeout on a slow link; an idle watchdog bounds it instead).
    pub(crate) s3: reqwest::Client,
    pub(crate) part_size: u64,
    pub(crate) parallel_parts: usize,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) part_slots: Semaphore,
    pub(crate) file_slots: Semaphore,
    sockets: Mutex<HashMap<String, Socket>>,
    /// Keyed by `"<kind>/<slug>"`.
    targets: Mutex<HashMap<String, Target>>,
    rng: Mutex<StdRng>,
    pub(crate) observer: Arc<dyn ClientObserver>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("part_size", &self.inner.part_size)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

/// Plain http is acceptable only when it cannot leave the machine.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A primary key goes into a URL path: refuse anything that could change the path.
pub(crate) fn check_pk(what: &str, pk: &str) -> Result<(), GcError> {
    if !pk.is_empty()
        && pk
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '~')
    {
        Ok(())
    } else {
        Err(GcError::Config(format!(
            "{what} '{pk}' is not a valid primary key"
        )))
    }
}

/// The server URL as the API base: https (or http to a loopback address), a host, no credentials, no
/// query or fragment, and a trailing slash so that relative API paths join under it.
fn server_base(mut base: Url) -> Result<Url, GcError> {
    match base.scheme() {
        "https" => {}
        "http" if is_loopback(&base) => {}
        "http" => {
            return Err(GcError::Config(format!(
                "the server URL {base} uses plain http; the platform must be reached over https \
                 (http is only allowed for a loopback address)"
            )));
        }
        other => {
            return Err(GcError::Config(format!(
                "the server URL {base} has the unsupported scheme '{other}'"
            )));
        }
    }
    if base.host().is_none() || base.cannot_be_a_base() {
        return Err(GcError::Config(format!(
            "the server URL {base} has no host"
        )));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(GcError::Config(
            "the server URL must not contain credentials".into(),
        ));
    }
    base.set_query(None);
    base.set_fragment(None);
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

/// Part size, concurrency and retry settings that could never make progress.
fn check_limits(config: &ClientConfig) -> Result<(), GcError> {
    if config.part_size == 0 || config.part_size > MAX_PART_SIZE {
        return Err(GcError::Config(format!(
            "the part size {} is outside 1 byte … 5 GiB",
            config.part_size
        )));
    }
    if config.parallel_parts == 0 || config.parallel_files == 0 {
        return Err(GcError::Config(
            "parallel_parts and parallel_files must be at least 1".into(),
        ));
    }
    if config.retry.max_attempts == 0 {
        return Err(GcError::Config(
            "the retry policy must allow at least one attempt".into(),
        ));
    }
    Ok(())
}

/// The extra CA certificates to trust; a file given but holding none is a mistake, not "trust nothing extra".
fn read_ca_certs(path: Option<&Path>) -> Result<Vec<reqwest::Certificate>, GcError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|e| {
        GcError::Config(format!(
            "cannot read the CA certificate {}: {e}",
            path.display()
        ))
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        GcError::Config(format!("{} is not a PEM certificate: {e}", path.display()))
    })?;
    if certs.is_empty() {
        return Err(GcError::Config(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The API client (with a read timeout) and the storage client (without: an idle watchdog bounds parts).
fn http_clients(
    base: &Url,
    certs: &[reqwest::Certificate],
    timeout: Duration,
) -> Result<(reqwest::Client, reqwest::Client), GcError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .user_agent(concat!("gc-hotfolder/", env!("CARGO_PKG_VERSION")))
            .https_only(base.scheme() == "https")
            .tls_certs_merge(certs.to_vec());
        if is_loopback(base) {
            b = b.no_proxy();
        }
        b
    };
    let build_err =
        |e: reqwest::Error| GcError::Config(format!("cannot set up the HTTP client: {e}"));
    let api = builder().read_timeout(timeout).build().map_err(build_err)?;
    let s3 = builder().build().map_err(build_err)?;
    Ok((api, s3))
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, GcError> {
        let base = server_base(config.base_url.clone())?;
        check_limits(&config)?;
        let auth = config.token.header()?;
        let certs = read_ca_certs(config.ca_cert.as_deref())?;
        let (api, s3) = http_clients(&base, &certs, config.timeout)?;

        Ok(Client {
            inner: Arc::new(Inner {
                base,
                auth,
                api,
                s3,
                part_size: config.part_size,
                parallel_parts: config.parallel_parts,
                timeout: config.timeout,
                retry: config.retry,
                part_slots: Semaphore::new(config.parallel_parts),
                file_slots: Semaphore::new(config.parallel_files),
                sockets: Mutex::new(HashMap::new()),
                targets: Mutex::new(HashMap::new()),
                rng: Mutex::new(StdRng::from_os_rng()),
                observer: config.observer,
            }),
        })
    }

    pub fn base_url(&self) -> &url::Url {
        &self.inner.base
    }

    /// The owner of the token. Use it to check the token up front: list endpoints answer an anonymous
    /// caller with empty results instead of an error (gc-protocol.md §1.3, §9.1).
    pub async fn whoami(&self) -> Result<String, GcError> {
        let context = "checking the API token";
        let me: serde_json::Value = self
            .get_json(self.api_url("profiles/users/self/")?, context)
            .await
            .map_err(|e| self.not_the_api(e))?;
        me.pointer("/user/username")
            .and_then(|u| u.as_str())
            .map(str::to_owned)
            .ok_or_else(|| GcError::Protocol {
                context: context.into(),
                message: "no user.username in the profile".into(),
            })
    }

    /// An answer that is not the API's (no such page, a redirect, HTML) to the first request usually means
    /// the server URL lacks the API path: say so, with the URL to write instead.
    fn not_the_api(&self, e: GcError) -> GcError {
        let base = &self.inner.base;
        let unexpected = matches!(
            e,
            GcError::NotFound(_)
                | GcError::Protocol { .. }
                | GcError::Rejected {
                    status: 300..=399 | 404 | 405,
                    ..
                }
        );
        if !unexpected || base.path().ends_with("/api/v1/") {
            return e;
        }
        let mut suggested = base.clone();
        suggested.set_path("/api/v1/");
        GcError::Config(format!(
            "{base} is not the platform's API ({e}); the server URL must end in /api/v1/, e.g. {suggested}"
        ))
    }

    /// A socket by slug, cached for the life of the client (sockets do not change kind).
    pub async fn socket(&self, slug: &str) -> Result<Socket, GcError> {
        if let Some(s) = lock(&self.inner.sockets).get(slug) {
            return Ok(s.clone());
        }
        let context = format!("looking up socket '{slug}'");
        let page: Page<Socket> = self
            .page("components/interfaces/", &[("slug", slug)], 0, &context)
            .await?;
        let socket = page.results.into_iter().find(|s| s.slug == slug).ok_or_else(|| {
            GcError::NotFound(format!(
                "'{slug}' is not an existing socket; see https://grand-challenge.org/components/interfaces/inputs/"
            ))
        })?;
        lock(&self.inner.sockets).insert(slug.to_owned(), socket.clone());
        Ok(socket)
    }

    /// An archive or reader study by slug, cached. Not found means "does not exist or this token cannot
    /// see it": the platform does not distinguish the two (gc-protocol.md §4.1).
    pub async fn resolve_target(&self, kind: TargetKind, slug: &str) -> Result<Target, GcError> {
        if let Some(t) = lock(&self.inner.targets).get(&target_key(kind, slug)) {
            return Ok(t.clone());
        }
        let target = match kind {
            TargetKind::Archive => {
                let context = format!("looking up archive '{slug}'");
                let page: Page<Archive> = self
                    .page("archives/", &[("slug", slug)], 0, &context)
                    .await?;
                let found = only_one(page.results, || not_visible("archive", slug))?;
                Target {
                    kind,
                    slug: slug.to_owned(),
                    pk: found.pk,
                    api_url: found.api_url,
                    url: found.url,
                }
            }
            TargetKind::ReaderStudy => {
                let context = format!("looking up reader study '{slug}'");
                let page: Page<ReaderStudy> = self
                    .page("reader-studies/", &[("slug", slug)], 0, &context)
                    .await?;
                let found = only_one(
                    page.results
                        .into_iter()
                        .filter(|r| r.slug == slug)
                        .collect(),
                    || not_visible("reader study", slug),
                )?;
                Target {
                    kind,
                    slug: slug.to_owned(),
                    pk: found.pk,
                    api_url: found.api_url,
                    url: found.url,
                }
            }
            TargetKind::Algorithm => {
                let found = self.algorithm(slug).await?;
                Target {
                    kind,
                    slug: slug.to_owned(),
                    pk: found.pk,
                    api_url: found.api_url,
                    url: found.url,
                }
            }
        };
        check_pk("the target's pk", &target.pk)?;
        lock(&self.inner.targets).insert(target_key(kind, slug), target.clone());
        Ok(target)
    }

    /// Create an empty archive item or display set. A display set gets the automatic order (0 = next).
    /// With a title that already exists the error answers `is_duplicate_title()`.
    pub async fn create_item(&self, target: &Target, title: &str) -> Result<Item, GcError> {
        let (body, context) = match target.kind {
            TargetKind::Archive => (
                serde_json::json!({"archive": target.api_url, "title": title}),
                format!(
                    "creating an item titled '{title}' in archive '{}'",
                    target.slug
                ),
            ),
            TargetKind::ReaderStudy => (
                serde_json::json!({"reader_study": target.slug, "title": title}),
                format!(
                    "creating a display set titled '{title}' in reader study '{}'",
                    target.slug
                ),
            ),
            TargetKind::Algorithm => {
                return Err(GcError::Config(format!(
                    "algorithm '{}' holds no items: its cases become jobs",
                    target.slug
                )));
            }
        };
        let url = self.api_url(items_path(target.kind))?;
        self.call(
            Method::POST,
            url,
            Some(&body),
            RequestKind::Create,
            &context,
        )
        .await
    }

    /// Page through the container's items for one with exactly this title (there is no title filter,
    /// gc-protocol.md §4.7). Used after a duplicate-title error, or after a crash between create and journal.
    pub async fn find_item_by_title(
        &self,
        target: &Target,
        title: &str,
    ) -> Result<Option<Item>, GcError> {
        let context = format!("searching {} for '{title}'", target.slug);
        let mut found = None;
        self.walk(
            items_path(target.kind),
            &[(items_filter(target.kind), &target.pk)],
            &context,
            |item: Item| {
                if item.title == title {
                    found = Some(item);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )
        .await?;
        Ok(found)
    }

    /// Every item of an archive, or every display set of a reader study, in the read representation.
    /// Archive items have no defined order on the platform, so a row can move between pages while the
    /// archive changes (gc-protocol.md §1.7): an item seen twice is kept once.
    pub async fn list_items(&self, target: &Target) -> Result<Vec<Item>, GcError> {
        let context = format!("listing the items of {}", target.slug);
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        self.walk(
            items_path(target.kind),
            &[(items_filter(target.kind), &target.pk)],
            &context,
            |item: Item| {
                if seen.insert(item.pk.clone()) {
                    all.push(item);
                }
                ControlFlow::Continue(())
            },
        )
        .await?;
        Ok(all)
    }

    /// An image by its API URL, as an item value's `image` gives it. The URL must be on the platform's
    /// origin: the token goes nowhere else.
    pub async fn get_image(&self, url: &str) -> Result<HyperlinkedImage, GcError> {
        let parsed =
            Url::parse(url).map_err(|e| GcError::Config(format!("the image URL '{url}': {e}")))?;
        let context = format!("reading image {}", parsed.path());
        self.get_json(parsed, &context).await
    }

    pub async fn get_item(&self, target: &Target, pk: &str) -> Result<Item, GcError> {
        let url = self.item_url(target, pk)?;
        self.get_json(url, &format!("reading item {pk} of {}", target.slug))
            .await
    }

    /// Set socket values. Values are applied inside the request; uploads and images are attached later by
    /// background tasks, see [`Client::await_values`].
    pub async fn patch_values(
        &self,
        target: &Target,
        pk: &str,
        entries: &[ValueEntry],
    ) -> Result<Item, GcError> {
        let url = self.item_url(target, pk)?;
        let body = serde_json::json!({ "values": entries });
        let context = format!("setting values of item {pk} in {}", target.slug);
        self.call(
            Method::PATCH,
            url,
            Some(&body),
            RequestKind::NonIdempotent,
            &context,
        )
        .await
    }

    /// The item's API URL, which the archive item representation does not contain (gc-protocol.md §4.2).
    pub fn item_api_url(&self, target: &Target, pk: &str) -> String {
        format!("{}{}{pk}/", self.inner.base, items_path(target.kind))
    }

    /// An upload of this token's user; `None` once it has been consumed (or expired, or never existed).
    pub async fn get_upload(&self, pk: &str) -> Result<Option<UserUpload>, GcError> {
        check_pk("upload", pk)?;
        let url = self.api_url(&format!("uploads/{pk}/"))?;
        match self.get_json(url, &format!("reading upload {pk}")).await {
            Ok(u) => Ok(Some(u)),
            Err(GcError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All of this user's raw image upload sessions (unordered and unfilterable on the platform).
    pub async fn upload_sessions(&self) -> Result<Vec<UploadSession>, GcError> {
        let mut all = Vec::new();
        self.walk(
            "cases/upload-sessions/",
            &[],
            "listing upload sessions",
            |s: UploadSession| {
                all.push(s);
                ControlFlow::Continue(())
            },
        )
        .await?;
        Ok(all)
    }

    /// Stream a file (an image file or a file value) to `dest`, replacing it only when complete. Redirects
    /// are followed, and the token is sent only while the URL is on the platform's own origin: signed
    /// storage URLs elsewhere never see it.
    pub async fn download(&self, url: &str, dest: &Path) -> Result<u64, GcError> {
        let start = Url::parse(url)
            .map_err(|e| GcError::Config(format!("cannot download '{url}': {e}")))?;
        let context = format!("downloading {}", start.path());
        let policy = &self.inner.retry;
        let tmp = temp_beside(dest)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.download_once(&start, &tmp, &context).await;
            let decision = match &result {
                Ok(DownloadStep::Done(_)) => Decision::Accept,
                Ok(DownloadStep::Reply {
                    status,
                    headers,
                    body,
                }) => {
                    let reply = reply_of(*status, headers, body);
                    policy.decide(
                        RequestKind::Idempotent,
                        attempt,
                        &Outcome::Reply(reply),
                        self.jitter(),
                        SystemTime::now(),
                    )
                }
                Err(DownloadError::Local(_)) => Decision::Accept,
                Err(DownloadError::Transport(e)) => {
                    let message = transport_message(e);
                    let outcome = Outcome::Transport {
                        failure: classify_transport(e),
                        message: &message,
                    };
                    policy.decide(
                        RequestKind::Idempotent,
                        attempt,
                        &outcome,
                        self.jitter(),
                        SystemTime::now(),
                    )
                }
            };
            match (decision, result) {
                (_, Err(DownloadError::Local(e))) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e);
                }
                (Decision::Accept, Ok(DownloadStep::Done(n))) => {
                    tokio::fs::rename(&tmp, dest)
                        .await
                        .map_err(|e| GcError::io(dest, e))?;
                    return Ok(n);
                }
                (Decision::Retry(delay), result) => {
                    let cause = match &result {
                        Ok(DownloadStep::Reply { status, .. }) => retry_cause(Some(*status), None),
                        Err(DownloadError::Transport(e)) => {
                            retry_cause(None, Some(classify_transport(e)))
                        }
                        _ => retry_cause(None, None),
                    };
                    self.inner.observer.request_retried(&cause);
                    tracing::warn!(%context, attempt, ?delay, "download failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                (Decision::Fail(f), _) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(f.into_error(&context));
                }
                (Decision::Accept, _) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(GcError::Protocol {
                        context,
                        message: "the download ended without the file".into(),
                    });
                }
            }
        }
    }

    async fn download_once(
        &self,
        start: &Url,
        tmp: &Path,
        context: &str,
    ) -> Result<DownloadStep, DownloadError> {
        let mut url = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.inner.api.get(url.clone());
            if same_origin(&url, &self.inner.base) {
                req = req.header(AUTHORIZATION, self.inner.auth.clone());
            } else if url.scheme() != "https" && !is_loopback(&url) {
                return Err(DownloadError::Local(GcError::Config(format!(
                    "{context}: refusing to download over plain http from {}",
                    url.host_str().unwrap_or("?")
                ))));
            }
            let resp = req.send().await.map_err(DownloadError::Transport)?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(next) = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
            {
                url = next;
                continue;
            }
            if !status.is_success() {
                let headers = resp.headers().clone();
                let body = read_limited(resp).await.map_err(DownloadError::Transport)?;
                return Ok(DownloadStep::Reply {
                    status: status.as_u16(),
                    headers,
                    body,
                });
            }
            let written = save_body(resp, tmp).await?;
            return Ok(DownloadStep::Done(written));
        }
        Err(DownloadError::Local(GcError::Protocol {
            context: context.to_owned(),
            message: format!("more than {MAX_REDIRECTS} redirects"),
        }))
    }

    // ---- crate-internal plumbing shared with uploads and verify ----

    /// An API URL below the base. `path` is relative and ends in `/`.
    pub(crate) fn api_url(&self, path: &str) -> Result<Url, GcError> {
        self.inner
            .base
            .join(path)
            .map_err(|e| GcError::Config(format!("cannot build the URL for {path}: {e}")))
    }

    fn item_url(&self, target: &Target, pk: &str) -> Result<Url, GcError> {
        check_pk("item", pk)?;
        self.api_url(&format!("{}{pk}/", items_path(target.kind)))
    }

    /// A number in `[0, 1)` for back-off jitter, from this client's own RNG.
    pub(crate) fn jitter(&self) -> f64 {
        lock(&self.inner.rng).random::<f64>()
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        context: &str,
    ) -> Result<T, GcError> {
        self.call(Method::GET, url, None, RequestKind::Idempotent, context)
            .await
    }

    /// One API request with retries, its JSON answer decoded.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        kind: RequestKind,
        context: &str,
    ) -> Result<T, GcError> {
        let bytes = self.send(method, url, body, kind, context).await?;
        serde_json::from_slice(&bytes).map_err(|e| GcError::Protocol {
            context: context.to_owned(),
            message: format!("the answer is not the documented JSON ({e})"),
        })
    }

    /// One API request with retries: the body of the 2xx answer, or the classified failure.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        kind: RequestKind,
        context: &str,
    ) -> Result<Bytes, GcError> {
        if !same_origin(&url, &self.inner.base) {
            // The token goes to the platform's own origin only (gcapi refuses such URLs as well).
            return Err(GcError::Config(format!(
                "{context}: refusing to send the token to {}, which is not the platform's address",
                url.host_str().unwrap_or("?")
            )));
        }
        let body = match body {
            Some(b) => Some(Bytes::from(
                serde_json::to_vec(b).map_err(|e| GcError::Config(format!("{context}: {e}")))?,
            )),
            None => None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.exchange(&method, &url, body.as_ref()).await;
            let decision = self.decide_attempt(kind, attempt, &result);
            match decision {
                Decision::Accept => match result {
                    Ok((_, _, bytes)) => return Ok(bytes),
                    Err(e) => {
                        return Err(GcError::Protocol {
                            context: context.into(),
                            message: transport_message(&e),
                        });
                    }
                },
                Decision::Retry(delay) => {
                    let status = result.as_ref().ok().map(|r| r.0);
                    let failure = result.as_ref().err().map(classify_transport);
                    self.inner
                        .observer
                        .request_retried(&retry_cause(status, failure));
                    tracing::warn!(%context, attempt, ?status, ?delay, "request failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Decision::Fail(failure) => return Err(failure.into_error(context)),
            }
        }
    }

    /// One API request without retries: the answer's status, headers and (bounded) body.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Bytes>,
    ) -> Result<(u16, HeaderMap, Bytes), reqwest::Error> {
        let mut req = self
            .inner
            .api
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(ACCEPT, "application/json");
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        read_limited(resp)
            .await
            .map(|bytes| (status, headers, bytes))
    }

    /// The retry policy's verdict on one attempt's answer or transport failure.
    fn decide_attempt(
        &self,
        kind: RequestKind,
        attempt: u32,
        result: &Result<(u16, HeaderMap, Bytes), reqwest::Error>,
    ) -> Decision {
        let policy = &self.inner.retry;
        match result {
            Ok((status, headers, bytes)) => {
                let reply = reply_of(*status, headers, bytes);
                policy.decide(
                    kind,
                    attempt,
                    &Outcome::Reply(reply),
                    self.jitter(),
                    SystemTime::now(),
                )
            }
            Err(e) => {
                let message = transport_message(e);
                let outcome = Outcome::Transport {
                    failure: classify_transport(e),
                    message: &message,
                };
                policy.decide(kind, attempt, &outcome, self.jitter(), SystemTime::now())
            }
        }
    }

    /// Hand every row of a list endpoint to `visit`, page by page, until it breaks or the list ends.
    pub(crate) async fn walk<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
        context: &str,
        visit: impl FnMut(T) -> ControlFlow<()>,
    ) -> Result<(), GcError> {
        self.walk_sized(path, filters, PAGE_LIMIT, context, visit)
            .await
            .map(|_| ())
    }

    /// Every row of a list endpoint in pages of the largest size the platform serves, and the list's
    /// count: for reading whole lists in as few requests as possible.
    pub(crate) async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
        context: &str,
    ) -> Result<(Vec<T>, u64), GcError> {
        let mut all = Vec::new();
        let count = self
            .walk_sized(path, filters, MAX_PAGE_LIMIT, context, |row| {
                all.push(row);
                ControlFlow::Continue(())
            })
            .await?;
        Ok((all, count))
    }

    /// An archive's items or a reader study's display sets, all of them, and how many the platform
    /// counted. Archive items have no defined order, so while the archive changes a row can be missed or
    /// seen twice (gc-protocol.md §1.7): a caller looking for an item it misses reads it on its own.
    pub async fn all_items(&self, target: &Target) -> Result<(Vec<Item>, u64), GcError> {
        let context = format!("listing the items of {}", target.slug);
        self.list_all(
            items_path(target.kind),
            &[(items_filter(target.kind), &target.pk)],
            &context,
        )
        .await
    }

    /// This user's upload sessions, all of them, and how many the platform counted.
    pub async fn all_upload_sessions(&self) -> Result<(Vec<UploadSession>, u64), GcError> {
        self.list_all("cases/upload-sessions/", &[], "listing upload sessions")
            .await
    }

    /// [`Client::walk`] with pages of `limit` rows; returns the list's count as the last page gave it.
    async fn walk_sized<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
        limit: u64,
        context: &str,
        mut visit: impl FnMut(T) -> ControlFlow<()>,
    ) -> Result<u64, GcError> {
        let mut offset = 0;
        loop {
            let page: Page<T> = self
                .page_sized(path, filters, offset, limit, context)
                .await?;
            let n = page.results.len() as u64;
            for row in page.results {
                if visit(row).is_break() {
                    return Ok(page.count);
                }
            }
            offset += n;
            if n == 0 || page.next.is_none() || offset >= page.count {
                return Ok(page.count);
            }
        }
    }

    /// One page of a list endpoint (gc-protocol.md §1.7).
    pub(crate) async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
        offset: u64,
        context: &str,
    ) -> Result<Page<T>, GcError> {
        self.page_sized(path, filters, offset, PAGE_LIMIT, context)
            .await
    }

    /// One page of `limit` rows.
    async fn page_sized<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
        offset: u64,
        limit: u64,
        context: &str,
    ) -> Result<Page<T>, GcError> {
        let mut url = self.api_url(path)?;
        url.query_pairs_mut()
            .extend_pairs(filters)
            .append_pair("limit", &limit.to_string())
            .append_pair("offset", &offset.to_string());
        self.get_json(url, context).await
    }
}

/// Stream a download's body into `tmp` and make it durable; the bytes written.
async fn save_body(mut resp: reqwest::Response, tmp: &Path) -> Result<u64, DownloadError> {
    // The network hands over many small chunks; a thread of its own writes them as they come, so
    // that reading from the socket and writing to the disk overlap and no chunk is copied again.
    let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(DOWNLOAD_QUEUE);
    let path = tmp.to_owned();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(&path)?;
        let (mut written, mut flushed) = (0u64, 0u64);
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
            if written - flushed >= WRITEBACK_STEP {
                start_writeback(&file, flushed, written - flushed);
                flushed = written;
            }
        }
        file.sync_all()?;
        Ok(written)
    });
    let mut received = Ok(());
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if chunks.send(chunk).await.is_err() {
                    break; // the writer failed; its error is below
                }
            }
            Ok(None) => break,
            Err(e) => {
                received = Err(e);
                break;
            }
        }
    }
    drop(chunks);
    let written = match writer.await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(DownloadError::Local(GcError::io(tmp, e))),
        Err(e) => {
            return Err(DownloadError::Local(GcError::io(
                tmp,
                std::io::Error::other(e),
            )));
        }
    };
    received.map_err(DownloadError::Transport)?;
    Ok(written)
}

/// Start writing `len` bytes at `offset` of `file` to disk, without waiting for it (Linux
/// `sync_file_range`). Only a head start for the fsync that follows: a failure here changes nothing.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call; the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

enum DownloadStep {
    Done(u64),
    Reply {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
}

enum DownloadError {
    Transport(reqwest::Error),
    Local(GcError),
}

fn temp_beside(dest: &Path) -> Result<PathBuf, GcError> {
    let name = dest
        .file_name()
        .ok_or_else(|| GcError::Config(format!("{} is not a file path", dest.display())))?;
    Ok(dest.with_file_name(format!(
        ".{}.download-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4()
    )))
}

fn target_key(kind: TargetKind, slug: &str) -> String {
    format!("{kind:?}/{slug}")
}

/// The filter that lists a container's items: its pk (gc-protocol.md §1.8). An algorithm's "items" are
/// its jobs, listed by the algorithm's pk.
fn items_filter(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Archive => "archive",
        TargetKind::ReaderStudy => "reader_study",
        TargetKind::Algorithm => "algorithm_image__algorithm",
    }
}

pub(crate) fn items_path(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Archive => "archives/items/",
        TargetKind::ReaderStudy => "reader-studies/display-sets/",
        TargetKind::Algorithm => "algorithms/jobs/",
    }
}

fn only_one<T>(mut results: Vec<T>, none: impl FnOnce() -> GcError) -> Result<T, GcError> {
    match results.len() {
        1 => Ok(results.remove(0)),
        0 => Err(none()),
        n => Err(GcError::Protocol {
            context: "looking up by slug".into(),
            message: format!("{n} results for one slug"),
        }),
    }
}

fn not_visible(what: &str, slug: &str) -> GcError {
    GcError::NotFound(format!(
        "{what} '{slug}' does not exist or this token has no access to it"
    ))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a cache half-written; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn reply_of<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> Reply<'a> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    Reply {
        status,
        content_type: header(CONTENT_TYPE),
        retry_after: header(RETRY_AFTER),
        location: header(LOCATION),
        body,
    }
}

/// Read a response body, refusing absurd sizes.
pub(crate) async fn read_limited(mut resp: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_API_BODY {
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub(crate) fn classify_transport(e: &reqwest::Error) -> TransportFailure {
    if tls_error(e).is_some() {
        TransportFailure::Tls
    } else if e.is_timeout() {
        TransportFailure::Timeout
    } else if e.is_connect() {
        TransportFailure::Connect
    } else if e.is_body() || e.is_decode() || e.is_request() {
        TransportFailure::Reset
    } else {
        TransportFailure::Other
    }
}

/// The TLS error behind a transport error, if it is one. rustls reports through `io::Error`s (nested), whose
/// `source()` skips the error they wrap, so those links are unwrapped by hand.
fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut link = std::error::Error::source(e);
    while let Some(s) = link {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        link = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    None
}

/// What to do about a failed TLS handshake, in one sentence.
fn tls_advice(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidMessage(_) => format!(
            "the server did not answer in TLS ({e}): it probably speaks plain http on this port; \
             write the server URL with http:// if it is a sandbox on this machine, or check the port"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the server's certificate is not accepted ({e}): if it is signed by your own CA, name \
             that CA's PEM file in server.ca_cert; check that the URL's host name is the certificate's"
        ),
        other => format!("{other}"),
    }
}

/// The causes of a transport error, without the URL (presigned URLs carry signatures).
pub(crate) fn transport_message(e: &reqwest::Error) -> String {
    if let Some(t) = tls_error(e) {
        return tls_advice(t);
    }
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        if e.is_timeout() {
            "operation timed out".into()
        } else {
            "no further detail".into()
        }
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn config(url: &str) -> ClientConfig {
        ClientConfig::new(Url::parse(url).unwrap(), Token::parse(SECRET).unwrap())
    }

    #[test]
    fn https_is_required_except_on_loopback() {
        for ok in [
            "https://grand-challenge.org/api/v1/",
            "http://127.0.0.1:8000/api/v1/",
            "http://127.3.2.1/api/v1/",
            "http://[::1]:9000/api/v1/",
            "http://LocalHost:9000/api/v1/",
        ] {
            Client::new(config(ok)).unwrap();
        }
        for bad in [
            "http://grand-challenge.org/api/v1/",
            "http://10.0.0.1/api/v1/",
            "http://localhost.evil.com/api/v1/",
            "ftp://127.0.0.1/",
        ] {
            let err = Client::new(config(bad)).unwrap_err();
            assert!(matches!(err, GcError::Config(_)), "{bad}: {err}");
        }
        let err = Client::new(config("http://grand-challenge.org/api/v1/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn base_url_gets_its_trailing_slash() {
        let c = Client::new(config("https://example.org/api/v1?x=1")).unwrap();
        assert_eq!(c.base_url().as_str(), "https://example.org/api/v1/");
        let target = Target {
            kind: TargetKind::ReaderStudy,
            slug: "rs".into(),
            pk: "p".into(),
            api_url: String::new(),
            url: String::new(),
        };
        assert_eq!(
            c.item_api_url(&target, "abc"),
            "https://example.org/api/v1/reader-studies/display-sets/abc/"
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let mut c = config("https://example.org/api/v1/");
        c.part_size = 0;
        assert!(matches!(Client::new(c), Err(GcError::Config(_))));
        let mut c = config("https://example.org/api/v1/");
        c.parallel_parts = 0;
        assert!(matches!(Client::new(c), Err(GcError::Config(_))));
        let mut c = config("https://example.org/api/v1/");
        c.ca_cert = Some("/nonexistent/ca.pem".into());
        assert!(
            Client::new(c)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/ca.pem")
        );
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let mut c = config("https://example.org/api/v1/");
        c.ca_cert = Some(not_pem);
        assert!(matches!(Client::new(c), Err(GcError::Config(_))));
    }

    #[test]
    fn pks_that_could_change_a_path_are_refused() {
        check_pk("item", "0f3c-uuid-like").unwrap();
        for bad in ["", "../x", "a/b", "a?b", "a b", "%2e%2e"] {
            assert!(check_pk("item", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Url::parse("https://h.org/api/v1/").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("https://h.org:443/media/x").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("http://h.org/api/v1/").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://h.org:8443/api/v1/").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://s3.amazonaws.com/api/v1/").unwrap()
        ));
    }

    #[test]
    fn nothing_printable_contains_the_token() {
        let cfg = config("https://example.org/api/v1/");
        assert!(!format!("{cfg:?}").contains(SECRET));
        let client = Client::new(cfg).unwrap();
        assert!(!format!("{client:?}").contains(SECRET));
        let errors = [
            GcError::Auth {
                status: 401,
                detail: "Invalid token.".into(),
            },
            GcError::Config(
                Token::from_sources(None, None, None)
                    .unwrap_err()
                    .to_string(),
            ),
            Token::from_sources(None, Some(format!("{SECRET}\u{1}")), None).unwrap_err(),
        ];
        for e in errors {
            assert!(!e.to_string().contains(SECRET) && !format!("{e:?}").contains(SECRET));
        }
    }
}
