//! gc-hotfolder turns drop folders into Grand Challenge uploads: the agent, and the commands of its
//! binary.
//!
//! Read this file first: it is the map (`ARCHITECTURE.md` at the root has the whole workspace). The
//! platform client is the `gc-client` crate, what the platform accepts (value schemas, image verdicts,
//! DICOM de-identification) is `gc-content`, and the test server is `gc-sandbox`. A case folder travels
//! through the agent's modules in this order:
//!
//! ```text
//!  watch ──"case may have changed"──► settle ──Ready(snapshot)──► rules (plan)
//!                                                                    │
//!  receipt + post-action ◄── deliver (create → upload → PATCH → verify) ◄── journal
//! ```
//!
//! The modules form layers, listed from the top; each imports only modules of the layers below it.
//!
//! Commands, what each subcommand does:
//! - [`commands`] [`commands::dispatch`] runs the command the command line names; `run`, `check`,
//!   `status`, `receipts`, `explain`, `pause`, `resume`, `retry`: operating the agent.
//! - [`upload`]   the one-shot `upload` command: cases given on the command line, with progress bars.
//! - [`pull`]     the way back: an archive's items, a reader study's display sets or an algorithm's job
//!   outputs into folders, resumable.
//! - [`demo`]     the sandbox and the agent together on loopback, for trying it without an account.
//! - [`sandbox_command`] the `sandbox` command: the sandbox crate's server from the command line.
//! - [`manual`]   manual pages per command, from the CLI plus exit status, environment and files.
//! - [`start`]    what every command does first: config, runtime, platform connection, stop signal
//!   (below the commands, which never import one another for helpers).
//!
//! The daemon:
//! - [`agent`]    the loop: hints → readiness → plan → journal → delivery tasks → receipts.
//!
//! What the agent tells people:
//! - [`notify`]   webhook alerts (quarantine, stuck case, refused token) that carry no patient data.
//! - [`metrics`]  counters of what the agent did, served as Prometheus text and a status JSON.
//! - [`status`]   each drop folder's cases by state, pauses and holds, for `status` and the metrics.
//! - [`receipt`]  the JSON receipt per case and the append-only audit log, written atomically.
//! - [`preflight`] whether the platform has each folder's target and sockets: `check --online`, and the
//!   agent before it delivers anything.
//!
//! Delivery:
//! - [`deliver`]  one planned case against the platform, step by step: sent under an upload slot, then
//!   verified without one, with every other case waiting for the platform's import; for an algorithm
//!   folder, one job followed to its end, its outputs written to the outbox.
//! - [`after`]    a delivered case's post-action (leave, delete, move), its failures recorded and retried.
//! - [`outbox`]   an algorithm job's outputs as a case folder, written as `pull` writes an item, whole.
//! - [`item_folder`] an item's values as files in a folder: safe names and paths, each value written
//!   whole; what `pull` and `outbox` both write.
//!
//! The record:
//! - [`journal`]  SQLite record of every case and every delivery step: the truth after a restart; also
//!   the requests of `pause`/`resume`/`retry` to a running agent and the queue of webhook alerts.
//!
//! Decisions (pure, but for reading the case they are given):
//! - [`watch`]    which cases may have changed: filesystem events, polling and scans, all mere hints.
//! - [`settle`]   stat snapshots of a case, and the decision that it has stopped changing.
//! - [`rules`]    which files of a case go to which socket, the title, the manifest hash, the case's
//!   pseudonym.
//! - [`access`]   whether the service's own user could read the files a config names (`check` warns).
//!
//! Ground:
//! - [`config`]   the TOML configuration: schema, loading, validation with file:line errors.
//! - [`cli`]      the command line: arguments, exit codes, logging; `main.rs` only parses and dispatches.
//! - [`share`]    the group and permissions of what the agent creates for people (results, moved cases).
//! - [`statelock`] one agent per state folder: an exclusive lock held while `run` runs.
//! - [`clock`]    RFC 3339 timestamps.
//! - [`fsutil`]   atomic file writes (temp file, fsync, rename) shared by receipts and state files.
//! - [`service`]  systemd notifications: ready, status line, watchdog, stopping, reloading.

pub mod access;
pub mod after;
pub mod agent;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod fsutil;
pub mod item_folder;
pub mod journal;
pub mod manual;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod preflight;
pub mod pull;
pub mod receipt;
pub mod rules;
pub mod sandbox_command;
pub mod service;
pub mod settle;
pub mod share;
pub mod start;
pub mod statelock;
pub mod status;
pub mod upload;
pub mod watch;
