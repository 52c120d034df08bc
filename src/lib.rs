//! gc-hotfolder turns drop folders into Grand Challenge uploads.
//!
//! Read this file first: it is the map. A case folder travels through the modules in this order:
//!
//! ```text
//!  watch ──"case may have changed"──► settle ──Ready(snapshot)──► rules (plan)
//!                                                                    │
//!  receipt + post-action ◄── deliver (create → upload → PATCH → verify) ◄── journal
//! ```
//!
//! - [`agent`]    the daemon's loop: hints → readiness → plan → journal → delivery tasks → receipts.
//! - [`config`]   the TOML configuration: schema, loading, validation with file:line errors.
//! - [`watch`]    which cases may have changed: filesystem events, polling and scans, all mere hints.
//! - [`settle`]   stat snapshots of a case, and the decision that it has stopped changing.
//! - [`rules`]    which files of a case go to which socket, the title and the manifest hash (pure).
//! - [`journal`]  SQLite record of every case and every delivery step: the truth after a restart; also
//!   the requests of `pause`/`resume`/`retry` to a running agent and the queue of webhook alerts.
//! - [`deliver`]  one planned case against the platform, step by step; for an algorithm folder, one job
//!   followed to its end, its outputs written to the outbox.
//! - [`receipt`]  the JSON receipt per case and the append-only audit log, written atomically.
//! - [`fsutil`]   atomic file writes (temp file, fsync, rename) shared by receipts and state files.
//! - [`upload`]   the one-shot `upload` command: cases given on the command line, with progress bars.
//! - [`pull`]     the way back: an archive's items, a reader study's display sets or an algorithm's job
//!   outputs into folders, resumable.
//! - [`outbox`]   an algorithm job's outputs as a case folder, written as `pull` writes an item, whole.
//! - [`commands`] `run`, `check`, `status`, `explain`, `retry`: operating the agent.
//! - [`preflight`] whether the platform has each folder's target and sockets: `check --online`, and the
//!   agent before it delivers anything.
//! - [`access`]   whether the service's own user could read the files a config names (`check` warns).
//! - [`demo`]     the sandbox and the agent together on loopback, for trying it without an account.
//! - [`sandbox_command`] the `sandbox` command: the sandbox crate's server from the command line.
//! - [`metrics`]  counters of what the agent did, served as Prometheus text and a status JSON.
//! - [`notify`]   webhook alerts (quarantine, stuck case, refused token) that carry no patient data.
//! - [`service`]  systemd notifications: ready, status line, watchdog, stopping, reloading.
//! - [`cli`]      the command-line interface; `main.rs` only parses and dispatches.
//! - [`manual`]   manual pages per command, from the CLI plus exit status, environment and files.

pub mod access;
pub mod agent;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod fsutil;
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
pub mod start;
pub mod status;
pub mod upload;
pub mod watch;
