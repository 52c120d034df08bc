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

/// The drop folder's group: the service and the staff who read results are members.
const STAFF_GID: u32 = 4242;
/// A member of staff: not the service, in the drop folder's group only.
const READER_UID: u32 = 4343;

/// `cmd` run as the staff member.
fn as_reader(args: &[&str], path: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={READER_UID}"),
            &format!("--regid={STAFF_GID}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .arg(path)
        .output()
        .unwrap()
}

/// Results and moved cases are shared as the drop folder is: a drop folder of group staff, set-group-ID,
/// served by a service with `UMask=0077` in that group; a member of staff reads the algorithm's results
/// and lists the folders the agent made under done/ and quarantine/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_service_creates_is_readable_by_the_drop_folders_group() {
    if !is_root() {
        eprintln!("skipped: changing owners and running as another user needs root");
        return;
    }
    let sb = sandbox().await;
    let tmp = open_tempdir();
    let root = tmp.path();
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    give_to_service(&state);
    chmod(&state, 0o700);
    // Shared folders: root owns them, group staff may write, the group sticks to what is made below.
    let srv = root.join("srv");
    let (cases, lung, done, quarantine) = (
        srv.join("ct"),
        srv.join("lung-ct"),
        srv.join("done"),
        srv.join("quarantine"),
    );
    for d in [&cases, &lung, &done, &quarantine] {
        std::fs::create_dir_all(d).unwrap();
    }
    let share = |d: &Path| {
        std::os::unix::fs::chown(d, Some(0), Some(STAFF_GID)).unwrap();
        chmod(d, 0o2770);
    };
    for d in [&srv, &cases, &lung, &done, &quarantine] {
        share(d);
    }
    // A scanner-style study that is delivered, one that is quarantined (no image), an algorithm case.
    let study = cases.join("P00123/20240503");
    std::fs::create_dir_all(&study).unwrap();
    archive_case(&study, 0);
    let bad = cases.join("P00777/20240504");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("count.json"), "3").unwrap();
    let ct = lung.join("case-a");
    std::fs::create_dir_all(&ct).unwrap();
    gc_content::samples::write_mha(&ct.join("ct.mha"), [8, 8, 4], 1).unwrap();
    Command::new("chown")
        .args(["-R", &format!("0:{STAFF_GID}")])
        .arg(&srv)
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["-R", "g+rwX"])
        .arg(&srv)
        .status()
        .unwrap();

    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nurl = \"{}\"\ntoken = \"{DEMO_TOKEN}\"\nstate_dir = \"{}\"\n\n\
             [[folder]]\npath = \"{}\"\narchive = \"demo-archive\"\ndepth = 2\ntitle = \"{{hash}}\"\nquiet = \"1s\"\n\
             after = \"move:{}\"\nquarantine = \"{}\"\n{ARCHIVE_RULES}\n\
             [[folder]]\npath = \"{}\"\nalgorithm = \"lung-volume-estimator\"\nquiet = \"1s\"\noutbox = \"{}\"\n\
             \n  [[folder.socket]]\n  slug = \"ct-image\"\n  files = \"*.mha\"\n",
            sb.base_url(),
            state.display(),
            cases.display(),
            done.display(),
            quarantine.display(),
            lung.display(),
            srv.join("results").display(),
        ),
    )
    .unwrap();
    chmod(&config, 0o644);

    // The service: its own user, a member of staff, and the unit's umask.
    let log = root.join("agent.log");
    let mut agent = Command::new("setpriv")
        .args([
            &format!("--reuid={SERVICE_UID}"),
            &format!("--regid={SERVICE_UID}"),
            &format!("--groups={STAFF_GID}"),
            "--",
            "sh",
            "-c",
            "umask 077; exec \"$0\" \"$@\"",
        ])
        .arg(env!("CARGO_BIN_EXE_gc-hotfolder"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let receipts = wait_receipts(&state, 3, Duration::from_secs(90)).await;
    let result = srv.join("results/case-a");
    let moved = done.join("P00123/20240503");
    eventually(Duration::from_secs(30), "moved and written", async || {
        (moved.is_dir() && quarantine.join("P00777/20240504").is_dir() && result.is_dir())
            .then_some(())
    })
    .await;
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        receipts
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered)
            .count()
            == 2,
        "{receipts:?}\n{text}"
    );

    // What staff can do: list the folders the agent made, read every result.
    for dir in [
        done.join("P00123"),
        quarantine.join("P00777"),
        srv.join("results"),
        result.clone(),
    ] {
        let out = as_reader(&["ls"], &dir);
        assert!(out.status.success(), "ls {}: {out:?}", dir.display());
    }
    let value = result.join("lung-volume.json");
    let out = as_reader(&["cat"], &value);
    assert!(out.status.success(), "cat {}: {out:?}", value.display());
    // Shared with the group, not with others, and the group sticks.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(done.join("P00123")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (STAFF_GID, 0o2770));
    let meta = std::fs::metadata(&value).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (STAFF_GID, 0o660));
}
