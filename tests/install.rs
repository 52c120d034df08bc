//! The installation the README describes, reproduced in a temporary folder: the service's files as root
//! lays them out, and the agent run as an unprivileged user (as systemd's `DynamicUser=` runs it), with the
//! token handed over as a credential. Needs root to change owners and users; without root each test says
//! so and checks nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use gc_hotfolder::receipt::Outcome;
use gc_sandbox::DEMO_TOKEN;

/// The user the service runs as here: nobody, who owns nothing and is in no group of ours.
const SERVICE_UID: u32 = 65534;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Give `path` and everything below it to the service's user, as systemd does for `StateDirectory=`.
fn give_to_service(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", &format!("{SERVICE_UID}:{SERVICE_UID}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The binary run as the service's user, without any of root's groups.
fn as_service() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={SERVICE_UID}"),
        &format!("--regid={SERVICE_UID}"),
        "--clear-groups",
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_gc-hotfolder"))
    .env_remove("GRAND_CHALLENGE_AUTHORIZATION")
    .env_remove("CREDENTIALS_DIRECTORY");
    c
}

/// A temporary folder that other users may enter (a fresh temporary folder is private to root).
fn open_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    tmp
}

fn config_text(sb: &gc_sandbox::Sandbox, state: &Path, drop: &Path, token: &str) -> String {
    format!(
        "[server]\nurl = \"{}\"\n{token}state_dir = \"{}\"\n\n[[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\n\
         quiet = \"1s\"\nafter = \"leave\"\n{ARCHIVE_RULES}\n",
        sb.base_url(),
        state.display(),
        drop.display()
    )
}

struct Layout {
    etc: PathBuf,
    config: PathBuf,
    token: PathBuf,
    state: PathBuf,
    drop: PathBuf,
}

/// `/etc/gc-hotfolder` with `config.toml` and `token`, a state folder and a drop folder with one case, below
/// `root`, with the folder and file modes given.
fn layout(
    root: &Path,
    sb: &gc_sandbox::Sandbox,
    etc_mode: u32,
    config_mode: u32,
    token_line: bool,
) -> Layout {
    let etc = root.join("etc/gc-hotfolder");
    std::fs::create_dir_all(&etc).unwrap();
    chmod(&root.join("etc"), 0o755);
    let token = etc.join("token");
    std::fs::write(&token, format!("{DEMO_TOKEN}\n")).unwrap();
    chmod(&token, 0o600);
    let state = root.join("var/lib/gc-hotfolder");
    let drop = root.join("srv/drop");
    drop_atomically(&drop, "patient-001", |d| archive_case(d, 0));
    std::fs::create_dir_all(&state).unwrap();
    for d in [root.join("var"), root.join("var/lib"), root.join("srv")] {
        chmod(&d, 0o755);
    }
    give_to_service(&state);
    give_to_service(&drop);
    let line = if token_line {
        format!("token_file = \"{}\"\n", token.display())
    } else {
        String::new()
    };
    let config = etc.join("config.toml");
    std::fs::write(&config, config_text(sb, &state, &drop, &line)).unwrap();
    chmod(&config, config_mode);
    chmod(&etc, etc_mode);
    Layout {
        etc,
        config,
        token,
        state,
        drop,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_only_config_folder_is_flagged_by_check_and_stops_the_service() {
    if !is_root() {
        eprintln!("skipped: changing owners and running as another user needs root");
        return;
    }
    let sb = sandbox().await;
    let tmp = open_tempdir();
    let l = layout(tmp.path(), &sb, 0o700, 0o600, true);

    // What the service meets: it cannot even read its config (exit 2, a config error).
    let out = as_service()
        .args(["run", "--config"])
        .arg(&l.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // `check` run by root reads everything, and says what the service would not.
    let out = gc("check", &l.config).run();
    let stdout = out.stdout.clone();
    out.expect(0);
    let etc = l.etc.display().to_string();
    assert!(
        stdout.contains(&format!(
            "the service cannot read this config: {etc} (mode 0700, owner uid 0) cannot be entered by other users"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "server.token_file: the service cannot read {}",
            l.token.display()
        )) && stdout.contains("LoadCredential=gc-token:"),
        "{stdout}"
    );
    assert!(!stdout.contains(DEMO_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_layout_runs_as_an_unprivileged_user_with_the_token_as_a_credential() {
    if !is_root() {
        eprintln!("skipped: changing owners and running as another user needs root");
        return;
    }
    let sb = sandbox().await;
    let tmp = open_tempdir();
    // README: the folder 0755, the config 0644 without token_file, the token 0600 for root alone.
    let l = layout(tmp.path(), &sb, 0o755, 0o644, false);
    // What LoadCredential= gives the service: a private copy of the token in a folder only it can read.
    let creds = tmp.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(&l.token, creds.join("gc-token")).unwrap();
    chmod(&creds.join("gc-token"), 0o400);
    give_to_service(&creds);
    chmod(&creds, 0o500);

    let out = gc("check", &l.config).run();
    let stdout = out.stdout.clone();
    out.expect(0);
    assert!(!stdout.contains("warning"), "{stdout}");

    let out = as_service()
        .args(["check", "--online", "--config"])
        .arg(&l.config)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{out:?}");
    assert!(stdout.contains("token: accepted for user"), "{stdout}");

    let log = tmp.path().join("agent.log");
    let mut agent = as_service()
        .args(["run", "--config"])
        .arg(&l.config)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let receipts = wait_receipts(&l.state, 1, Duration::from_secs(60)).await;
    assert_eq!(receipts[0].outcome, Outcome::Delivered, "{receipts:?}");
    assert!(l.drop.join("patient-001").is_dir());
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {text}");
    assert!(text.contains("token accepted"), "{text}");
    assert!(!text.contains(DEMO_TOKEN));
}
