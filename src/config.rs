//! The TOML configuration: what the operator writes, checked before anything runs.
//!
//! Every error names the file, the line and the key, because the person reading it is an operator with an
//! editor open, not a developer with a debugger. Unknown keys are errors: a typo must never silently turn
//! into a default.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use gc_client::TargetKind;

/// A configuration error located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub line: Option<(usize, usize)>,
    /// The key (dotted path) the error is about, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.line {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: Server,
    pub limits: Limits,
    pub agent: AgentTiming,
    /// Where Prometheus metrics and a status JSON are served, if anywhere.
    pub metrics: Option<Metrics>,
    /// Webhooks told about quarantined cases, stuck cases and refused tokens.
    pub notify: Vec<Notify>,
    pub folders: Vec<Folder>,
}

/// `[metrics]`: a small HTTP server for `/metrics` (Prometheus text) and `/status` (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub listen: std::net::SocketAddr,
}

/// One `[[notify]]` webhook. Its URL is often a secret (chat webhooks carry their key in the path), so
/// logs and `Debug` show only [`Notify::label`].
#[derive(Clone, PartialEq, Eq)]
pub struct Notify {
    pub url: url::Url,
    /// Which alerts it wants; all of them unless the config narrows it.
    pub events: Vec<AlertKind>,
    /// How long one POST may take.
    pub timeout: Duration,
}

impl Notify {
    /// The webhook as logs name it: its origin only, e.g. `https://hooks.example.org/…`.
    pub fn label(&self) -> String {
        format!("{}/…", self.url.origin().ascii_serialization())
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("url", &self.label())
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What an operator is alerted about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A case could not be delivered.
    Quarantined,
    /// A case is still changing (or missing its marker) after `max_wait`.
    Stuck,
    /// The platform refused the token: a target is paused.
    AuthFailed,
    /// A drop folder's target or a socket is not on the platform: its cases are held.
    FolderHeld,
    /// A drop folder does not exist or cannot be listed (an unmounted share).
    FolderMissing,
    /// A delivered case could not be moved or deleted as `after` says: it stays in the drop folder.
    PostActionFailed,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Quarantined,
        AlertKind::Stuck,
        AlertKind::AuthFailed,
        AlertKind::FolderHeld,
        AlertKind::FolderMissing,
        AlertKind::PostActionFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Quarantined => "quarantined",
            AlertKind::Stuck => "stuck",
            AlertKind::AuthFailed => "auth_failed",
            AlertKind::FolderHeld => "folder_held",
            AlertKind::FolderMissing => "folder_missing",
            AlertKind::PostActionFailed => "post_action_failed",
        }
    }
}

/// How the agent paces itself: scans, retries and shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTiming {
    /// Full scans of every folder, catching whatever events missed.
    pub reconcile: Duration,
    /// First wait after a failure that may pass; doubles per attempt up to `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// How long a target stays paused after the platform refused the token.
    pub auth_pause: Duration,
    /// How long deliveries may run on after SIGTERM before they are cut off (they resume at next start).
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub url: url::Url,
    /// Where the token comes from; resolved only when talking to the platform, never stored in the config.
    pub token_file: Option<PathBuf>,
    /// An inline token: a secret, so its `Debug` is redacted like every other token's.
    pub token: Option<gc_client::Token>,
    pub ca_cert: Option<PathBuf>,
    pub state_dir: PathBuf,
}

/// How hard to push the platform and the disks.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Cases being prepared and uploaded at once.
    pub parallel_cases: usize,
    /// Cases delivered at once in all: uploading, or uploaded and waiting for the platform's import,
    /// which costs a timer and a journal row, not an upload slot.
    pub awaiting_import: usize,
    /// Upload records the platform may hold for cases not verified yet (it refuses new uploads
    /// beyond 2000 per user; an upload is consumed once imported).
    pub pending_uploads: usize,
    pub parallel_files: usize,
    pub parallel_parts: usize,
    pub part_size: u64,
}

/// Where the API token was read from: named in messages about a refused token, so that the operator
/// knows which copy to replace. Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `server.token_file`.
    File(PathBuf),
    /// The environment variable `GRAND_CHALLENGE_AUTHORIZATION`.
    Env,
    /// The systemd credential `gc-token` (`LoadCredential=` in the unit).
    Credential(PathBuf),
    /// `server.token` in this config file.
    Inline(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "the file {} (server.token_file)", p.display()),
            TokenSource::Env => write!(f, "the environment variable {}", gc_client::TOKEN_ENV),
            TokenSource::Credential(p) => write!(
                f,
                "the systemd credential gc-token ({}, from LoadCredential= in the unit)",
                p.display()
            ),
            TokenSource::Inline(c) => write!(f, "server.token in {}", c.display()),
        }
    }
}

/// One drop folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The folder's position in the config, used in messages (`folder[2]`).
    pub index: usize,
    pub path: PathBuf,
    pub target: TargetKind,
    pub target_slug: String,
    /// Which folders at `depth` below `path` are cases.
    pub case: globset::GlobMatcher,
    pub case_pattern: String,
    pub depth: usize,
    pub title: String,
    pub quiet: Duration,
    pub max_wait: Duration,
    pub marker: Option<String>,
    /// Temp-file patterns: while any matches, the case is not ready.
    pub ignore: globset::GlobSet,
    pub ignore_patterns: Vec<String>,
    pub after: After,
    pub quarantine: Option<PathBuf>,
    pub on_change: OnChange,
    pub poll: Poll,
    pub poll_interval: Duration,
    pub sockets: Vec<SocketRule>,
    /// DICOM files going to image sockets are de-identified copies (on unless the folder opts out).
    pub deidentify: bool,
    /// How long verification waits for the platform to import a DICOM image set before the case is
    /// quarantined: the platform reports such a failure to no API, so only this deadline ends the wait.
    pub dicom_import_deadline: Duration,
    /// Where an algorithm's outputs land, one folder per case: set exactly when `target` is
    /// [`TargetKind::Algorithm`] (`outbox = "/path"`, by default `outbox` beside the drop folder).
    pub outbox: Option<PathBuf>,
    /// The permissions of files the agent creates for people (results, moved cases' folders), e.g.
    /// `0o640`; by default the drop folder's group permissions ([`crate::share`]).
    pub mode: Option<u32>,
}

impl Folder {
    /// The group and permissions of what the agent creates for this folder's people.
    pub fn sharing(&self) -> crate::share::Sharing {
        crate::share::Sharing::of(&self.path, self.mode)
    }
}

/// What happens to a case folder once it is verifiably delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Leave,
    Delete,
    Move(PathBuf),
}

impl fmt::Display for After {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            After::Leave => write!(f, "leave it"),
            After::Delete => write!(f, "delete it"),
            After::Move(dest) => write!(f, "move it to {}", dest.display()),
        }
    }
}

/// What happens when files of an already delivered case change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    Update,
    Ignore,
    Quarantine,
}

/// Whether to rely on filesystem events or to poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Poll {
    /// Events, and polling where the filesystem gives none (network filesystems).
    Auto,
    Always,
}

/// One socket of the target and where its value comes from inside a case.
#[derive(Debug, Clone)]
pub struct SocketRule {
    pub slug: String,
    pub source: RuleSource,
    /// A missing source is fine (the socket is left out) instead of an error.
    pub optional: bool,
}

#[derive(Debug, Clone)]
pub enum RuleSource {
    /// Files matched by globs relative to the case folder: one image (from one or many files), or one file.
    Files {
        patterns: Vec<String>,
        matcher: globset::GlobSet,
    },
    /// The files of one DICOM series, sent as a DICOM image set with this name (template).
    DicomImageSet {
        patterns: Vec<String>,
        matcher: globset::GlobSet,
        image_name: String,
    },
    /// A JSON file whose content is the value.
    ValueFile(String),
    /// A constant value from the config.
    Value(serde_json::Value),
}

/// Temp files of copy tools, browsers and editors: a case with any of these is still being written.
pub const DEFAULT_IGNORE: &[&str] = &[
    "*.part",
    "*.partial",
    "*.tmp",
    "*.temp",
    "*.filepart",
    "*.crdownload",
    "*.swp",
    "*~",
    ".~*",
    "~$*",
    ".*",
];

// ---- the raw, spanned shape of the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Spanned<RawServer>,
    #[serde(default)]
    limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    agent: Option<RawAgent>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    notify: Vec<Spanned<RawNotify>>,
    #[serde(default)]
    folder: Vec<Spanned<RawFolder>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: Spanned<String>,
    events: Option<Spanned<Vec<AlertKind>>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: Spanned<String>,
    token_file: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    ca_cert: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    parallel_cases: Option<Spanned<i64>>,
    awaiting_import: Option<Spanned<i64>>,
    pending_uploads: Option<Spanned<i64>>,
    parallel_files: Option<Spanned<i64>>,
    parallel_parts: Option<Spanned<i64>>,
    part_size: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    reconcile: Option<Spanned<String>>,
    retry_first: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    auth_pause: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFolder {
    path: Spanned<String>,
    archive: Option<Spanned<String>>,
    reader_study: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    outbox: Option<Spanned<String>>,
    case: Option<Spanned<String>>,
    depth: Option<Spanned<i64>>,
    title: Option<Spanned<String>>,
    quiet: Option<Spanned<String>>,
    max_wait: Option<Spanned<String>>,
    marker: Option<Spanned<String>>,
    ignore: Option<Spanned<Vec<String>>>,
    after: Option<Spanned<String>>,
    quarantine: Option<Spanned<String>>,
    on_change: Option<OnChange>,
    poll: Option<Poll>,
    poll_interval: Option<Spanned<String>>,
    deidentify: Option<bool>,
    dicom_import_deadline: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    socket: Vec<Spanned<RawSocket>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    slug: Spanned<String>,
    files: Option<Spanned<OneOrMany>>,
    image_name: Option<Spanned<String>>,
    value_file: Option<Spanned<String>>,
    value: Option<Spanned<toml::Value>>,
    #[serde(default)]
    optional: bool,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The dotted key path (`limits.parallel_cases`, `folder[1].on_change`) of the value that starts at
/// `offset`, the way the rest of the messages name keys; `None` if `offset` is not at a `key = value` value.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = before[line_start..].split_once('=')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    if key.is_empty() || key.contains(['[', '{', ',']) {
        return None;
    }
    // The table the line is in, from the headers above it; array tables get their index.
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut table = String::new();
    let render = |name: &str, index: &std::collections::HashMap<String, usize>| {
        let mut out = String::new();
        let mut dotted = String::new();
        for part in name.split('.').map(str::trim) {
            if !dotted.is_empty() {
                dotted.push('.');
                out.push('.');
            }
            dotted.push_str(part);
            out.push_str(part);
            if let Some(i) = index.get(&dotted) {
                out.push_str(&format!("[{i}]"));
            }
        }
        out
    };
    for line in text[..line_start].lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            let name = name.0.trim();
            let parent = name.rsplit_once('.').map_or("", |p| p.0);
            let slot = format!("{}/{name}", render(parent, &index));
            let n = counts.entry(slot).or_insert(0);
            index.insert(name.to_owned(), *n);
            *n += 1;
            table = render(name, &index);
        } else if let Some(name) = line.strip_prefix('[').and_then(|r| r.split_once(']')) {
            table = render(name.0.trim(), &index);
        }
    }
    Some(if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    })
}

/// Locates errors in one file's text.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        (line, col)
    }

    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line_col(span.start)),
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validate config text; `path` is used in messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let loc = Locator { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // A value of the wrong type is located at the value: name the key it belongs to instead.
            let key = key_path_at(text, span.start).or_else(|| {
                text.get(span.clone())
                    .filter(|k| !k.contains('\n') && !k.is_empty())
                    .map(str::to_owned)
            });
            ConfigError {
                file: path.to_owned(),
                line: e.span().map(|s| loc.line_col(s.start)),
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        // Relative paths in the file are taken against its folder, made absolute so that a config named
        // by a relative path ("copy.toml") still matches the absolute case paths the commands compare.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        let base = base.as_path();
        let server = validate_server(&loc, base, raw.server.get_ref())?;
        let limits = validate_limits(&loc, raw.limits.as_ref().map(|l| l.get_ref()))?;
        let agent = validate_agent(&loc, raw.agent.as_ref())?;
        let metrics = match &raw.metrics {
            None => None,
            Some(m) => Some(Metrics {
                listen: m.listen.get_ref().parse().map_err(|_| {
                    loc.err(
                        m.listen.span(),
                        "metrics.listen",
                        format!(
                            "`{}` is not an address such as \"127.0.0.1:9898\"",
                            m.listen.get_ref()
                        ),
                    )
                })?,
            }),
        };
        let mut notify = Vec::new();
        for (i, n) in raw.notify.iter().enumerate() {
            notify.push(validate_notify(&loc, i, n.get_ref())?);
        }
        let mut folders = Vec::new();
        for (i, f) in raw.folder.iter().enumerate() {
            folders.push(validate_folder(&loc, base, i, f)?);
        }
        for (i, a) in folders.iter().enumerate() {
            for b in &folders[i + 1..] {
                if a.path.starts_with(&b.path) || b.path.starts_with(&a.path) {
                    return Err(loc.err(
                        raw.folder[b.index].get_ref().path.span(),
                        format!("folder[{}].path", b.index),
                        format!(
                            "overlaps folder[{}] ({}); a case must belong to one folder",
                            a.index,
                            a.path.display()
                        ),
                    ));
                }
            }
        }
        Ok(Config {
            file: path.to_owned(),
            server,
            limits,
            agent,
            metrics,
            notify,
            folders,
        })
    }

    /// Where the token comes from, in order: `token_file`, the environment variable
    /// `GRAND_CHALLENGE_AUTHORIZATION`, the systemd credential `gc-token` (`$CREDENTIALS_DIRECTORY/gc-token`,
    /// from `LoadCredential=`), `token`. `None` when there is none at all.
    pub fn token_source(&self) -> Option<TokenSource> {
        let s = &self.server;
        if let Some(f) = &s.token_file {
            return Some(TokenSource::File(f.clone()));
        }
        if std::env::var(gc_client::TOKEN_ENV).is_ok_and(|v| !v.trim().is_empty()) {
            return Some(TokenSource::Env);
        }
        if let Some(c) = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join("gc-token"))
            .filter(|p| p.is_file())
        {
            return Some(TokenSource::Credential(c));
        }
        s.token
            .as_ref()
            .map(|_| TokenSource::Inline(self.file.clone()))
    }

    /// The platform client this config describes, with the token from [`Config::token_source`],
    /// reporting what it does to `observer`.
    pub fn client(
        &self,
        observer: std::sync::Arc<dyn gc_client::ClientObserver>,
    ) -> Result<gc_client::Client, gc_client::GcError> {
        self.client_with(observer, Default::default(), Duration::from_secs(60))
    }

    /// A client for a command that answers a person at the terminal (`check --online`): a platform that
    /// is down is said so within seconds, not after a delivery's patient back-off.
    pub fn quick_client(
        &self,
        observer: std::sync::Arc<dyn gc_client::ClientObserver>,
    ) -> Result<gc_client::Client, gc_client::GcError> {
        let retry = gc_client::RetryPolicy {
            max_attempts: 2,
            max_delay: Duration::from_secs(1),
            ..Default::default()
        };
        self.client_with(observer, retry, Duration::from_secs(5))
    }

    fn client_with(
        &self,
        observer: std::sync::Arc<dyn gc_client::ClientObserver>,
        retry: gc_client::RetryPolicy,
        timeout: Duration,
    ) -> Result<gc_client::Client, gc_client::GcError> {
        let s = &self.server;
        let token = match self.token_source() {
            Some(TokenSource::Inline(_)) => match &s.token {
                Some(t) => t.clone(),
                None => gc_client::Token::from_sources(None, None, None)?,
            },
            Some(TokenSource::File(f) | TokenSource::Credential(f)) => {
                gc_client::Token::from_sources(Some(&f), None, None)?
            }
            Some(TokenSource::Env) => gc_client::Token::from_sources(
                None,
                std::env::var(gc_client::TOKEN_ENV).ok(),
                None,
            )?,
            None => gc_client::Token::from_sources(None, None, None)?,
        };
        gc_client::Client::new(gc_client::ClientConfig {
            base_url: s.url.clone(),
            token,
            ca_cert: s.ca_cert.clone(),
            part_size: self.limits.part_size,
            parallel_parts: self.limits.parallel_parts,
            parallel_files: self.limits.parallel_files,
            retry,
            timeout,
            observer,
        })
    }

    /// The folder a path belongs to, if any.
    pub fn folder_for(&self, path: &Path) -> Option<&Folder> {
        self.folders.iter().find(|f| path.starts_with(&f.path))
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn validate_server(loc: &Locator, base: &Path, s: &RawServer) -> Result<Server, ConfigError> {
    let mut url = url::Url::parse(s.url.get_ref())
        .map_err(|e| loc.err(s.url.span(), "server.url", format!("not a URL: {e}")))?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let loopback = is_loopback_host(&url);
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(loc.err(
            s.url.span(),
            "server.url",
            "must be https:// (plain http is allowed only for loopback hosts such as the local sandbox)",
        ));
    }
    if s.token_file.is_some() && s.token.is_some() {
        let t = s.token.as_ref().map_or(0..0, |t| t.span());
        return Err(loc.err(
            t,
            "server.token",
            "give either token_file or token, not both",
        ));
    }
    Ok(Server {
        url,
        token_file: s.token_file.as_ref().map(|t| resolve(base, t.get_ref())),
        token: match &s.token {
            None => None,
            Some(t) => Some(
                gc_client::Token::parse(t.get_ref())
                    .ok_or_else(|| loc.err(t.span(), "server.token", "is empty"))?,
            ),
        },
        ca_cert: s.ca_cert.as_ref().map(|c| resolve(base, c.get_ref())),
        state_dir: s
            .state_dir
            .as_ref()
            .map(|d| resolve(base, d.get_ref()))
            .unwrap_or_else(|| PathBuf::from("/var/lib/gc-hotfolder")),
    })
}

fn validate_notify(loc: &Locator, i: usize, n: &RawNotify) -> Result<Notify, ConfigError> {
    let key = |name: &str| format!("notify[{i}].{name}");
    let url = url::Url::parse(n.url.get_ref())
        .map_err(|e| loc.err(n.url.span(), key("url"), format!("not a URL: {e}")))?;
    if url.scheme() != "https" && !(url.scheme() == "http" && is_loopback_host(&url)) {
        return Err(loc.err(
            n.url.span(),
            key("url"),
            "must be https:// (plain http is allowed only for loopback hosts)",
        ));
    }
    let events = match &n.events {
        None => AlertKind::ALL.to_vec(),
        Some(e) if e.get_ref().is_empty() => {
            return Err(loc.err(
                e.span(),
                key("events"),
                "lists no event; leave it out to get all of them",
            ));
        }
        Some(e) => e.get_ref().clone(),
    };
    Ok(Notify {
        url,
        events,
        timeout: duration(loc, &n.timeout, key("timeout"), Duration::from_secs(10))?,
    })
}

/// Loopback hosts may use plain http: the traffic never leaves the machine.
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn positive(
    loc: &Locator,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=1024).contains(n.get_ref()) => Ok(*n.get_ref() as usize),
        Some(n) => Err(loc.err(n.span(), key, "must be a whole number from 1 to 1024")),
    }
}

/// Cases delivered at once, most of them waiting for the platform's import.
pub const DEFAULT_AWAITING_IMPORT: usize = 200;
/// Upload records held for unverified cases: the platform's 2000 per user, less room for other clients
/// of the same account and for uploads that failed imports leave behind.
pub const DEFAULT_PENDING_UPLOADS: usize = 1500;

/// A whole number from 1 to `max`.
fn within(
    loc: &Locator,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: usize,
    max: i64,
) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(n.get_ref()) => Ok(*n.get_ref() as usize),
        Some(n) => Err(loc.err(
            n.span(),
            key,
            format!("must be a whole number from 1 to {max}"),
        )),
    }
}

fn validate_limits(loc: &Locator, l: Option<&RawLimits>) -> Result<Limits, ConfigError> {
    let Some(l) = l else {
        return Ok(Limits {
            parallel_cases: 2,
            awaiting_import: DEFAULT_AWAITING_IMPORT,
            pending_uploads: DEFAULT_PENDING_UPLOADS,
            parallel_files: 4,
            parallel_parts: 8,
            part_size: 32 << 20,
        });
    };
    let part_size = match &l.part_size {
        None => 32 << 20,
        Some(s) => {
            let n =
                parse_size(s.get_ref()).map_err(|m| loc.err(s.span(), "limits.part_size", m))?;
            if !(5 << 20..=5 << 30).contains(&n) {
                return Err(loc.err(
                    s.span(),
                    "limits.part_size",
                    "must be between 5MiB and 5GiB (S3's part limits)",
                ));
            }
            n
        }
    };
    Ok(Limits {
        parallel_cases: positive(loc, &l.parallel_cases, "limits.parallel_cases", 2)?,
        awaiting_import: within(
            loc,
            &l.awaiting_import,
            "limits.awaiting_import",
            DEFAULT_AWAITING_IMPORT,
            100_000,
        )?,
        pending_uploads: within(
            loc,
            &l.pending_uploads,
            "limits.pending_uploads",
            DEFAULT_PENDING_UPLOADS,
            1_000_000,
        )?,
        parallel_files: positive(loc, &l.parallel_files, "limits.parallel_files", 4)?,
        parallel_parts: positive(loc, &l.parallel_parts, "limits.parallel_parts", 8)?,
        part_size,
    })
}

fn validate_agent(loc: &Locator, a: Option<&RawAgent>) -> Result<AgentTiming, ConfigError> {
    let none = RawAgent {
        reconcile: None,
        retry_first: None,
        retry_max: None,
        auth_pause: None,
        shutdown_grace: None,
    };
    let a = a.unwrap_or(&none);
    let d = |v: &Option<Spanned<String>>, key: &str, default: u64| {
        duration(loc, v, format!("agent.{key}"), Duration::from_secs(default))
    };
    Ok(AgentTiming {
        reconcile: d(&a.reconcile, "reconcile", 600)?,
        retry_first: d(&a.retry_first, "retry_first", 30)?,
        retry_max: d(&a.retry_max, "retry_max", 1800)?,
        auth_pause: d(&a.auth_pause, "auth_pause", 300)?,
        shutdown_grace: d(&a.shutdown_grace, "shutdown_grace", 30)?,
    })
}

/// `"32MiB"`, `"5 MB"`, `"1048576"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as \"32MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn duration(
    loc: &Locator,
    v: &Option<Spanned<String>>,
    key: String,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.get_ref()).map_err(|e| {
            loc.err(
                s.span(),
                key,
                format!(
                    "`{}` is not a duration such as \"30s\" or \"6h\": {e}",
                    s.get_ref()
                ),
            )
        }),
    }
}

fn globset(
    loc: &Locator,
    span: Range<usize>,
    key: &str,
    patterns: &[String],
) -> Result<globset::GlobSet, ConfigError> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                loc.err(
                    span.clone(),
                    key,
                    format!("bad pattern `{p}`: {}", e.kind()),
                )
            })?;
        b.add(g);
    }
    b.build().map_err(|e| loc.err(span, key, e.to_string()))
}

fn validate_folder(
    loc: &Locator,
    base: &Path,
    index: usize,
    sf: &Spanned<RawFolder>,
) -> Result<Folder, ConfigError> {
    let f = sf.get_ref();
    let k = |name: &str| format!("folder[{index}].{name}");
    let path = resolve(base, f.path.get_ref());
    let (target, target_slug) = folder_target(loc, index, sf)?;
    let outbox = folder_outbox(loc, base, index, sf, target, &path)?;
    let (case, case_pattern) = folder_case(loc, index, f)?;
    let depth = match &f.depth {
        None => 1,
        Some(d) if (1..=8).contains(d.get_ref()) => *d.get_ref() as usize,
        Some(d) => return Err(loc.err(d.span(), k("depth"), "must be from 1 to 8")),
    };
    let title = f
        .title
        .as_ref()
        .map_or("{case}".to_owned(), |t| t.get_ref().clone());
    if let Some(t) = &f.title {
        check_template(t.get_ref()).map_err(|m| loc.err(t.span(), k("title"), m))?;
    }
    let mut ignore_patterns: Vec<String> = DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect();
    let ignore_span = f.ignore.as_ref().map_or(0..0, |i| i.span());
    if let Some(extra) = &f.ignore {
        ignore_patterns.extend(extra.get_ref().iter().cloned());
    }
    let ignore = globset(loc, ignore_span, &k("ignore"), &ignore_patterns)?;
    let after = folder_after(loc, base, index, f)?;
    let (quiet, max_wait) = folder_waits(loc, index, sf)?;
    let sockets = folder_sockets(loc, index, sf)?;
    let dicom_import_deadline = dicom_deadline(loc, index, f, &sockets)?;
    let mode = match &f.mode {
        None => None,
        Some(m) => Some(file_mode(m.get_ref()).map_err(|e| loc.err(m.span(), k("mode"), e))?),
    };
    Ok(Folder {
        index,
        path,
        target,
        target_slug,
        case,
        case_pattern,
        depth,
        title,
        quiet,
        max_wait,
        marker: f.marker.as_ref().map(|m| m.get_ref().clone()),
        ignore,
        ignore_patterns,
        after,
        quarantine: f.quarantine.as_ref().map(|q| resolve(base, q.get_ref())),
        on_change: f.on_change.unwrap_or(OnChange::Update),
        poll: f.poll.unwrap_or(Poll::Auto),
        poll_interval: duration(
            loc,
            &f.poll_interval,
            k("poll_interval"),
            Duration::from_secs(5),
        )?,
        sockets,
        deidentify: f.deidentify.unwrap_or(true),
        dicom_import_deadline,
        outbox,
        mode,
    })
}

/// A folder's one target (archive, reader study or algorithm) and its slug.
fn folder_target(
    loc: &Locator,
    index: usize,
    sf: &Spanned<RawFolder>,
) -> Result<(TargetKind, String), ConfigError> {
    let f = sf.get_ref();
    let k = |name: &str| format!("folder[{index}].{name}");
    // In the file's order, so that a second target is named where it is written.
    let mut given: Vec<(TargetKind, &str, &Spanned<String>)> = [
        (TargetKind::Archive, "archive", &f.archive),
        (TargetKind::ReaderStudy, "reader_study", &f.reader_study),
        (TargetKind::Algorithm, "algorithm", &f.algorithm),
    ]
    .into_iter()
    .filter_map(|(kind, key, v)| v.as_ref().map(|v| (kind, key, v)))
    .collect();
    given.sort_by_key(|(_, _, v)| v.span().start);
    let (target, target_key, target_slug) = match given.as_slice() {
        [one] => *one,
        [] => {
            return Err(loc.err(
                sf.span(),
                format!("folder[{index}]"),
                "needs a target: archive = \"slug\", reader_study = \"slug\" or algorithm = \"slug\"",
            ));
        }
        [_, (_, key, second), ..] => {
            return Err(loc.err(
                second.span(),
                k(key),
                "give exactly one of archive, reader_study and algorithm",
            ));
        }
    };
    if target_slug.get_ref().trim().is_empty() {
        return Err(loc.err(
            target_slug.span(),
            k(target_key),
            "the slug may not be empty",
        ));
    }
    Ok((target, target_slug.get_ref().clone()))
}

/// An algorithm folder's outbox (by default beside the drop folder, never inside it); none for other
/// targets.
fn folder_outbox(
    loc: &Locator,
    base: &Path,
    index: usize,
    sf: &Spanned<RawFolder>,
    target: TargetKind,
    path: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    let f = sf.get_ref();
    let k = |name: &str| format!("folder[{index}].{name}");
    let outbox = match (&f.outbox, target) {
        (Some(o), TargetKind::Algorithm) if o.get_ref().trim().is_empty() => {
            return Err(loc.err(o.span(), k("outbox"), "the path may not be empty"));
        }
        (Some(o), TargetKind::Algorithm) => Some(resolve(base, o.get_ref())),
        (None, TargetKind::Algorithm) => Some(default_outbox(path)),
        (Some(o), _) => {
            return Err(loc.err(
                o.span(),
                k("outbox"),
                "only a folder with an algorithm target has an outbox",
            ));
        }
        (None, _) => None,
    };
    if let Some(o) = &outbox
        && o.starts_with(path)
    {
        let span = f.outbox.as_ref().map_or(sf.span(), |o| o.span());
        return Err(loc.err(
            span,
            k("outbox"),
            format!(
                "{} is inside the drop folder, where results would be taken for new cases",
                o.display()
            ),
        ));
    }
    Ok(outbox)
}

/// Which subfolders are cases: the `case` pattern, compiled, and as written.
fn folder_case(
    loc: &Locator,
    index: usize,
    f: &RawFolder,
) -> Result<(globset::GlobMatcher, String), ConfigError> {
    let case_pattern = f
        .case
        .as_ref()
        .map_or("*".to_owned(), |c| c.get_ref().clone());
    let case = globset::GlobBuilder::new(&case_pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| {
            loc.err(
                f.case.as_ref().map_or(0..0, |c| c.span()),
                format!("folder[{index}].case"),
                format!("bad pattern: {}", e.kind()),
            )
        })?
        .compile_matcher();
    Ok((case, case_pattern))
}

/// What happens to a delivered case folder: left, deleted, or moved.
fn folder_after(
    loc: &Locator,
    base: &Path,
    index: usize,
    f: &RawFolder,
) -> Result<After, ConfigError> {
    let Some(a) = &f.after else {
        return Ok(After::Leave);
    };
    match a.get_ref().as_str() {
        "leave" => Ok(After::Leave),
        "delete" => Ok(After::Delete),
        s if s.starts_with("move:") && s.len() > 5 => Ok(After::Move(resolve(base, &s[5..]))),
        _ => Err(loc.err(
            a.span(),
            format!("folder[{index}].after"),
            "must be \"leave\", \"delete\" or \"move:/some/folder\"",
        )),
    }
}

/// The quiet window and the longest wait before a changing case is reported, the latter the longer.
fn folder_waits(
    loc: &Locator,
    index: usize,
    sf: &Spanned<RawFolder>,
) -> Result<(Duration, Duration), ConfigError> {
    let f = sf.get_ref();
    let k = |name: &str| format!("folder[{index}].{name}");
    let quiet = duration(loc, &f.quiet, k("quiet"), Duration::from_secs(30))?;
    let max_wait = duration(
        loc,
        &f.max_wait,
        k("max_wait"),
        Duration::from_secs(6 * 3600),
    )?;
    if max_wait <= quiet {
        let span = f.max_wait.as_ref().map_or(sf.span(), |m| m.span());
        return Err(loc.err(span, k("max_wait"), "must be longer than quiet"));
    }
    Ok((quiet, max_wait))
}

/// The folder's socket rules: at least one, no socket twice.
fn folder_sockets(
    loc: &Locator,
    index: usize,
    sf: &Spanned<RawFolder>,
) -> Result<Vec<SocketRule>, ConfigError> {
    let mut sockets: Vec<SocketRule> = Vec::new();
    for (j, ss) in sf.get_ref().socket.iter().enumerate() {
        let rule = validate_socket(loc, index, j, ss)?;
        if sockets.iter().any(|r| r.slug == rule.slug) {
            return Err(loc.err(
                ss.get_ref().slug.span(),
                format!("folder[{index}].socket[{j}].slug"),
                format!("socket `{}` is listed twice", rule.slug),
            ));
        }
        sockets.push(rule);
    }
    if sockets.is_empty() {
        return Err(loc.err(
            sf.span(),
            format!("folder[{index}]"),
            "needs at least one [[folder.socket]]",
        ));
    }
    Ok(sockets)
}

/// A file mode in octal, as `chmod` takes it: `"0640"`, `"640"`. The owner must keep reading and
/// writing (the agent rewrites its results); set-ID and sticky bits are not for files.
fn file_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{text:?} is not an octal file mode such as \"0640\""))?;
    if mode > 0o777 {
        return Err(format!(
            "{text:?}: only permission bits (at most 0777) are allowed"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "{text:?}: the owner (the service) must be able to read and write (0600)"
        ));
    }
    Ok(mode)
}

/// The platform's DICOM image set imports take minutes (gc-protocol.md §4.6: "a timeout (e.g. … 2 h for
/// DICOM sets)"), longer for large series and a busy platform.
pub const DEFAULT_DICOM_IMPORT_DEADLINE: Duration = Duration::from_secs(2 * 3600);

/// A folder's `dicom_import_deadline`: a positive duration, only where a rule sends a DICOM image set (a
/// rule with `image_name`), since elsewhere it would change nothing.
fn dicom_deadline(
    loc: &Locator,
    index: usize,
    f: &RawFolder,
    sockets: &[SocketRule],
) -> Result<Duration, ConfigError> {
    let key = format!("folder[{index}].dicom_import_deadline");
    let d = duration(
        loc,
        &f.dicom_import_deadline,
        key.clone(),
        DEFAULT_DICOM_IMPORT_DEADLINE,
    )?;
    let Some(given) = &f.dicom_import_deadline else {
        return Ok(d);
    };
    if d.is_zero() {
        return Err(loc.err(given.span(), key, "must be longer than 0s"));
    }
    if !sockets
        .iter()
        .any(|r| matches!(r.source, RuleSource::DicomImageSet { .. }))
    {
        return Err(loc.err(
            given.span(),
            key,
            "applies only to DICOM image sets, and no [[folder.socket]] of this folder has an image_name",
        ));
    }
    Ok(d)
}

/// `<drop>/../outbox`: beside the drop folder, not in it, so results are never taken for cases.
fn default_outbox(drop: &Path) -> PathBuf {
    drop.parent().unwrap_or(drop).join("outbox")
}

/// Templates know `{case}` (the case folder's name), `{path}` (its path below the drop folder) and
/// `{hash}` (a stable hash of that path, for titles that must not show a folder named after a patient).
pub fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or("an opening `{` has no closing `}`")?
            + open;
        match &rest[open + 1..close] {
            "case" | "path" | "hash" => {}
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}`; use {{case}}, {{path}} or {{hash}}"
                ));
            }
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

fn validate_socket(
    loc: &Locator,
    fi: usize,
    si: usize,
    ss: &Spanned<RawSocket>,
) -> Result<SocketRule, ConfigError> {
    let s = ss.get_ref();
    let key = |name: &str| format!("folder[{fi}].socket[{si}].{name}");
    let slug = s.slug.get_ref().trim().to_owned();
    if slug.is_empty() {
        return Err(loc.err(s.slug.span(), key("slug"), "may not be empty"));
    }
    let sources = [s.files.is_some(), s.value_file.is_some(), s.value.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if sources != 1 {
        return Err(loc.err(
            ss.span(),
            format!("folder[{fi}].socket[{si}]"),
            "give exactly one of files, value_file or value",
        ));
    }
    if s.image_name.is_some() && s.files.is_none() {
        let span = s.image_name.as_ref().map_or(0..0, |n| n.span());
        return Err(loc.err(
            span,
            key("image_name"),
            "only goes with files (a DICOM image set)",
        ));
    }
    let source = if let Some(files) = &s.files {
        files_source(loc, &key, files, s.image_name.as_ref())?
    } else if let Some(vf) = &s.value_file {
        if vf.get_ref().starts_with('/') || vf.get_ref().split('/').any(|c| c == "..") {
            return Err(loc.err(
                vf.span(),
                key("value_file"),
                "must be relative to the case folder and stay inside it",
            ));
        }
        RuleSource::ValueFile(vf.get_ref().clone())
    } else {
        let v = s
            .value
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or(toml::Value::Boolean(false));
        let json =
            serde_json::to_value(v).map_err(|e| loc.err(ss.span(), key("value"), e.to_string()))?;
        RuleSource::Value(json)
    };
    Ok(SocketRule {
        slug,
        source,
        optional: s.optional,
    })
}

/// A socket rule's `files` patterns (relative, inside the case folder): files for one socket, or a
/// DICOM image set when the rule names its image.
fn files_source(
    loc: &Locator,
    key: &dyn Fn(&str) -> String,
    files: &Spanned<OneOrMany>,
    image_name: Option<&Spanned<String>>,
) -> Result<RuleSource, ConfigError> {
    let patterns = match files.get_ref().clone() {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(ps) => ps,
    };
    if patterns.is_empty() || patterns.iter().any(|p| p.trim().is_empty()) {
        return Err(loc.err(
            files.span(),
            key("files"),
            "needs at least one non-empty pattern",
        ));
    }
    if let Some(p) = patterns
        .iter()
        .find(|p| p.starts_with('/') || p.split('/').any(|c| c == ".."))
    {
        return Err(loc.err(
            files.span(),
            key("files"),
            format!("`{p}` must be relative to the case folder and stay inside it"),
        ));
    }
    let matcher = globset(loc, files.span(), &key("files"), &patterns)?;
    let Some(name) = image_name else {
        return Ok(RuleSource::Files { patterns, matcher });
    };
    check_template(name.get_ref()).map_err(|m| loc.err(name.span(), key("image_name"), m))?;
    if name.get_ref().trim().is_empty() {
        return Err(loc.err(name.span(), key("image_name"), "may not be blank"));
    }
    Ok(RuleSource::DicomImageSet {
        patterns,
        matcher,
        image_name: name.get_ref().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
url = "http://127.0.0.1:8000/api/v1/"
token_file = "token"
state_dir = "state"

[[folder]]
path = "/srv/drop/lung"
archive = "lung-archive"
case = "patient*"
quiet = "2s"

  [[folder.socket]]
  slug = "ct-image"
  files = ["ct/*.dcm"]
  [[folder.socket]]
  slug = "report"
  files = "report.pdf"
  optional = true
  [[folder.socket]]
  slug = "lung-volume"
  value_file = "volume.json"
  [[folder.socket]]
  slug = "site"
  value = "Nijmegen"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/gc/hot.toml"), text)
    }

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.server.token_file.as_deref(),
            Some(Path::new("/etc/gc/token"))
        );
        assert_eq!(c.server.state_dir, Path::new("/etc/gc/state"));
        let f = &c.folders[0];
        assert_eq!(f.target, TargetKind::Archive);
        assert_eq!(f.quiet, Duration::from_secs(2));
        assert_eq!(f.title, "{case}");
        assert_eq!(f.after, After::Leave);
        assert_eq!(f.on_change, OnChange::Update);
        assert!(f.case.is_match("patient7") && !f.case.is_match("other"));
        assert!(
            f.ignore.is_match("x.part")
                && f.ignore.is_match(".hidden")
                && !f.ignore.is_match("ct.dcm")
        );
        assert_eq!(f.sockets.len(), 4);
        assert!(matches!(&f.sockets[3].source, RuleSource::Value(v) if v == "Nijmegen"));
        assert!(f.sockets[1].optional);
        assert_eq!(c.limits.part_size, 32 << 20);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = GOOD.replace("quiet = \"2s\"", "quiet = \"2s\"\nquite = \"3s\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line.map(|l| l.0), Some(12), "{e}");
        assert_eq!(e.key.as_deref(), Some("quite"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/gc/hot.toml:12:1: quite: unknown field `quite`"),
            "{e}"
        );
    }

    #[test]
    fn values_of_the_wrong_type_name_their_key_not_the_value() {
        let text = GOOD.replace(
            "[[folder]]",
            "[limits]\nparallel_cases = \"two\"\n\n[[folder]]",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line.map(|l| l.0)),
            (Some("limits.parallel_cases"), Some(8)),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("/etc/gc/hot.toml:8:18: limits.parallel_cases: "),
            "{e}"
        );

        let second = GOOD.replace("path = \"/srv/drop/lung\"", "path = \"/srv/drop/other\"");
        let text = format!("{GOOD}\n{}", &second[second.find("[[folder]]").unwrap()..]).replacen(
            "quiet = \"2s\"",
            "quiet = \"2s\"\non_change = \"update\"",
            1,
        );
        let at = text.rfind("quiet = \"2s\"").unwrap();
        let text = format!(
            "{}quiet = \"2s\"\non_change = \"merge\"{}",
            &text[..at],
            &text[at + "quiet = \"2s\"".len()..]
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[1].on_change"), "{e}");
        assert!(e.message.contains("merge"), "{e}");

        let text = GOOD.replace("optional = true", "optional = \"yes\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("folder[0].socket[1].optional"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_name_file_line_and_key() {
        let text = GOOD.replace("quiet = \"2s\"", "quiet = \"soon\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].quiet"));
        assert_eq!(e.line.map(|l| l.0), Some(11));

        let text = GOOD.replace(
            "archive = \"lung-archive\"",
            "archive = \"a\"\nreader_study = \"b\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].reader_study"), "{e}");

        let text = GOOD.replace(
            "value = \"Nijmegen\"",
            "value = \"x\"\n  value_file = \"y.json\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].socket[3]"), "{e}");
        assert!(e.message.contains("exactly one"), "{e}");

        let text = GOOD.replace("files = \"report.pdf\"", "files = \"../report.pdf\"");
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("folder[0].socket[1].files")
        );

        let text = GOOD.replace("127.0.0.1:8000", "example.org");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line.map(|l| l.0)),
            (Some("server.url"), Some(3)),
            "{e}"
        );

        let text = GOOD.replace(
            "case = \"patient*\"",
            "case = \"patient*\"\ntitle = \"{patient}\"",
        );
        assert!(parse(&text).unwrap_err().message.contains("{patient}"));
    }

    #[test]
    fn metrics_and_webhooks_are_checked_like_the_rest() {
        let with =
            |extra: &str| parse(&GOOD.replace("[[folder]]", &format!("{extra}\n[[folder]]")));
        let c = with(
            "[metrics]\nlisten = \"127.0.0.1:9898\"\n[[notify]]\nurl = \"https://hooks.example.org/x\"\n\
             [[notify]]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"auth_failed\"]\ntimeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(
            c.metrics.map(|m| m.listen.to_string()).as_deref(),
            Some("127.0.0.1:9898")
        );
        assert_eq!(c.notify[0].events, AlertKind::ALL.to_vec());
        assert_eq!(c.notify[1].events, vec![AlertKind::AuthFailed]);
        assert_eq!(c.notify[1].timeout, Duration::from_secs(3));
        assert!(parse(GOOD).unwrap().metrics.is_none());

        let e = with("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line.map(|l| l.0)),
            (Some("metrics.listen"), Some(8)),
            "{e}"
        );
        let e = with("[[notify]]\nurl = \"http://hooks.example.org/x\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("notify[0].url"), "{e}");
        let e = with("[[notify]]\nurl = \"https://h/\"\nevents = [\"quarantine\"]\n").unwrap_err();
        assert_eq!(e.line.map(|l| l.0), Some(9), "{e}");
        assert!(e.message.contains("unknown variant"), "{e}");
        let e = with("[[notify]]\nurl = \"https://h/\"\nevents = []\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("notify[0].events"), "{e}");
        let e = with("[[notify]]\nurl = \"https://h/\"\nsecret = \"x\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("secret"), "{e}");

        let c = with("[[notify]]\nurl = \"https://hooks.example.org/services/T0/B0/s3cr3tk3y\"\n")
            .unwrap();
        assert_eq!(c.notify[0].label(), "https://hooks.example.org/…");
        assert!(!format!("{c:?}").contains("s3cr3tk3y"));
    }

    #[test]
    fn relative_paths_are_absolute_even_for_a_config_named_relatively() {
        let c = Config::parse(Path::new("copy.toml"), GOOD).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.server.state_dir, cwd.join("state"));
        let c = Config::parse(
            Path::new("copy.toml"),
            &GOOD.replace("/srv/drop/lung", "drop/lung"),
        )
        .unwrap();
        assert_eq!(c.folders[0].path, cwd.join("drop/lung"));
    }

    #[test]
    fn overlapping_folders_are_rejected() {
        let extra = "\n[[folder]]\npath = \"/srv/drop/lung/sub\"\narchive = \"x\"\n  [[folder.socket]]\n  slug = \"s\"\n  value = 1\n";
        let e = parse(&format!("{GOOD}{extra}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[1].path"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("5 MB"), Ok(5_000_000));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("lots").is_err());
    }
    #[test]
    fn waiting_cases_and_their_upload_records_have_limits_of_their_own() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.limits.parallel_cases, 2);
        assert_eq!(c.limits.awaiting_import, 200);
        assert_eq!(c.limits.pending_uploads, 1500);
        let with = |limits: &str| {
            parse(&GOOD.replace(
                "\n[[folder]]",
                &format!("\n[limits]\n{limits}\n\n[[folder]]"),
            ))
        };
        let c = with("awaiting_import = 500\npending_uploads = 1800").unwrap();
        assert_eq!(
            (c.limits.awaiting_import, c.limits.pending_uploads),
            (500, 1800)
        );
        let e = with("awaiting_import = 0").unwrap_err().to_string();
        assert!(
            e.contains("limits.awaiting_import: must be a whole number from 1 to 100000"),
            "{e}"
        );
    }
    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.folders[0].sockets.len(), 5);
        assert_eq!(
            c.folders[0].after,
            After::Move(PathBuf::from("/srv/drop/done"))
        );
    }
    #[test]
    fn an_algorithm_is_a_third_target_with_an_outbox() {
        let algo = GOOD.replace(
            "archive = \"lung-archive\"",
            "algorithm = \"lung-volume-estimator\"",
        );
        let c = parse(&algo).unwrap();
        let f = &c.folders[0];
        assert_eq!(f.target, TargetKind::Algorithm);
        assert_eq!(f.target_slug, "lung-volume-estimator");
        assert_eq!(f.outbox.as_deref(), Some(Path::new("/srv/drop/outbox")));
        assert_eq!(parse(GOOD).unwrap().folders[0].outbox, None);

        let c =
            parse(&algo.replace("quiet = \"2s\"", "quiet = \"2s\"\noutbox = \"results\"")).unwrap();
        assert_eq!(
            c.folders[0].outbox.as_deref(),
            Some(Path::new("/etc/gc/results"))
        );

        let e = parse(&algo.replace("case = ", "reader_study = \"rs\"\ncase = ")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].reader_study"), "{e}");
        assert!(e.message.contains("exactly one"), "{e}");
        let e =
            parse(&GOOD.replace("quiet = \"2s\"", "quiet = \"2s\"\noutbox = \"/r\"")).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line.map(|l| l.0)),
            (Some("folder[0].outbox"), Some(12)),
            "{e}"
        );
        let e = parse(&algo.replace(
            "quiet = \"2s\"",
            "quiet = \"2s\"\noutbox = \"/srv/drop/lung/out\"",
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].outbox"), "{e}");
        assert!(e.message.contains("inside the drop folder"), "{e}");
        let e = parse(&algo.replace("\"lung-volume-estimator\"", "\" \"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].algorithm"), "{e}");
        let e = parse(&algo.replace("algorithm = \"lung-volume-estimator\"\n", "")).unwrap_err();
        assert!(e.message.contains("algorithm = "), "{e}");
    }

    #[test]
    fn the_example_dicom_image_set_and_its_deadline_are_valid() {
        let text = include_str!("../config.example.toml")
            .replace("# dicom_import_deadline = ", "dicom_import_deadline = ")
            .replace(
                "  # [[folder.socket]]\n  # slug = \"ct-dicom-set\"",
                "  [[folder.socket]]\n  slug = \"ct-dicom-set\"",
            )
            .replace(
                "  # files = \"dicom/**/*.dcm\"",
                "  files = \"dicom/**/*.dcm\"",
            )
            .replace("  # image_name = ", "  image_name = ");
        let c = Config::parse(Path::new("/etc/gc-hotfolder/config.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.folders[0].sockets.len(), 6);
        assert_eq!(
            c.folders[0].dicom_import_deadline,
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn the_example_algorithm_folder_is_valid() {
        let text = include_str!("../config.example.toml")
            .replace("archive = \"lung-ct-archive\"", "# archive")
            .replace("# algorithm = ", "algorithm = ")
            .replace("# outbox = ", "outbox = ");
        let c = Config::parse(Path::new("/etc/gc-hotfolder/config.toml"), &text).unwrap();
        assert_eq!(c.folders[0].target, TargetKind::Algorithm);
        assert_eq!(
            c.folders[0].outbox.as_deref(),
            Some(Path::new("/srv/results/lung-ct"))
        );
    }

    #[test]
    fn an_inline_token_never_shows_in_debug_output() {
        let text = GOOD.replace("token_file = \"token\"", "token = \"Bearer s3cr3t-t0ken\"");
        let c = parse(&text).unwrap();
        assert!(c.server.token.is_some());
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t-t0ken"), "{debug}");
    }

    #[test]
    fn the_dicom_import_deadline_is_a_folder_setting_for_dicom_image_sets() {
        let dicom_set = GOOD.replace(
            "  [[folder.socket]]\n  slug = \"site\"",
            "  [[folder.socket]]\n  slug = \"ct-set\"\n  files = \"set/*.dcm\"\n  image_name = \"{case}\"\n  [[folder.socket]]\n  slug = \"site\"",
        );
        assert_eq!(
            parse(&dicom_set).unwrap().folders[0].dicom_import_deadline,
            DEFAULT_DICOM_IMPORT_DEADLINE
        );
        let with = |text: &str, value: &str| {
            text.replace(
                "quiet = \"2s\"",
                &format!("quiet = \"2s\"\ndicom_import_deadline = \"{value}\""),
            )
        };
        let c = parse(&with(&dicom_set, "20m")).unwrap();
        assert_eq!(
            c.folders[0].dicom_import_deadline,
            Duration::from_secs(1200)
        );
        let e = parse(&with(&dicom_set, "0s")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].dicom_import_deadline"));
        assert!(e.to_string().contains("longer than 0s"), "{e}");
        let e = parse(&with(&dicom_set, "soon")).unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
        // Without a DICOM image set rule the key would do nothing: it is refused, where it stands.
        let e = parse(&with(GOOD, "20m")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("folder[0].dicom_import_deadline"));
        assert!(
            e.to_string()
                .contains("no [[folder.socket]] of this folder has an image_name"),
            "{e}"
        );
    }
}
