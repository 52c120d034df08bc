//! The first contact with the platform, got wrong the usual ways: https to a plain-http server, an
//! untrusted certificate, a URL without the API path, a wrong token. Each must end at once (no retries for
//! what cannot pass) with one sentence that names the likely fix, and never show the token.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const WRONG_TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";

fn config(dir: &Path, url: &str, server_extra: &str) -> std::path::PathBuf {
    let drop = dir.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let text = format!(
        "[server]\nurl = \"{url}\"\n{server_extra}state_dir = \"{}\"\n\n[[folder]]\npath = \"{}\"\n\
         archive = \"demo-archive\"\n{ARCHIVE_RULES}\n",
        dir.join("state").display(),
        drop.display()
    );
    let path = dir.join("gc-hotfolder.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Run the binary with `args` and the config; returns the output and how long it took.
fn run(args: &[&str], config: &Path, env_token: Option<&str>) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut cmd = bin();
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("GRAND_CHALLENGE_AUTHORIZATION")
        .env_remove("CREDENTIALS_DIRECTORY");
    if let Some(t) = env_token {
        cmd.env("GRAND_CHALLENGE_AUTHORIZATION", t);
    }
    let out = cmd.output().unwrap();
    (out, t0.elapsed())
}

/// What a run that must have failed on the platform (exit 3) printed, stdout then stderr.
#[track_caller]
fn platform_failure(out: &Output) -> String {
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{t}");
    t
}

/// The default retry policy would take half a minute to give up on a failure it retries.
const NO_RETRIES: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_server_says_so_at_once() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = sb.base_url().as_str().replace("http://", "https://");
    let token = format!("token = \"{}\"\n", gc_sandbox::DEMO_TOKEN);
    let cfg = config(tmp.path(), &url, &token);
    let advice = "did not answer in TLS (received corrupt message of type InvalidContentType): it probably \
                  speaks plain http on this port; write the server URL with http://";
    let (out, took) = run(&["check", "--online"], &cfg, None);
    let t = platform_failure(&out);
    assert!(took < NO_RETRIES, "took {took:?}: {t}");
    assert!(t.contains(advice), "{t}");
    assert!(!t.contains("retrying"), "retried: {t}");
    // The service starts anyway (a network may come right later), says the same once, and does not
    // repeat the request in a loop.
    let agent = Agent::start(&cfg, &tmp.path().join("agent.log"));
    agent.wait_log(advice, 1).await;
    assert!(!agent.log().contains("retrying"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_names_ca_cert() {
    let tls = tempfile::tempdir().unwrap();
    let sb = sandbox_with(|o| o.tls_dir = Some(tls.path().to_owned())).await;
    let tmp = tempfile::tempdir().unwrap();
    let token = format!("token = \"{}\"\n", gc_sandbox::DEMO_TOKEN);
    let cfg = config(tmp.path(), sb.base_url().as_str(), &token);
    let (out, took) = run(&["check", "--online"], &cfg, None);
    let t = platform_failure(&out);
    assert!(took < NO_RETRIES, "took {took:?}: {t}");
    assert!(
        t.contains("certificate is not accepted") && t.contains("server.ca_cert"),
        "{t}"
    );
    // With the CA named, the same server is fine.
    let ca = sb.ca_cert_path().unwrap().display().to_string();
    let cfg = config(
        tmp.path(),
        sb.base_url().as_str(),
        &format!("{token}ca_cert = \"{ca}\"\n"),
    );
    let (out, _) = run(&["check", "--online"], &cfg, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_the_api_path_says_which_url_to_write() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = sb.base_url();
    let root = format!("{}://{}/", base.scheme(), base.authority());
    let token = format!("token = \"{}\"\n", gc_sandbox::DEMO_TOKEN);
    let cfg = config(tmp.path(), &root, &token);
    for args in [&["check", "--online"][..], &["run"][..]] {
        let (out, took) = run(args, &cfg, None);
        let t = platform_failure(&out);
        assert!(took < NO_RETRIES, "{args:?} took {took:?}: {t}");
        assert!(
            t.contains(&format!(
                "the server URL must end in /api/v1/, e.g. {root}api/v1/"
            )),
            "{args:?}: {t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_says_where_it_came_from_and_never_shows_it() {
    let sb = sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = sb.base_url().to_string();

    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, WRONG_TOKEN).unwrap();
    let cfg = config(
        tmp.path(),
        &url,
        &format!("token_file = \"{}\"\n", token_file.display()),
    );
    for args in [&["check", "--online"][..], &["run"][..]] {
        let (out, _) = run(args, &cfg, None);
        let t = platform_failure(&out);
        assert!(
            t.contains(&format!(
                "refused the token from the file {} (server.token_file)",
                token_file.display()
            )) && t.contains("create a new token"),
            "{args:?}: {t}"
        );
        assert!(!t.contains(WRONG_TOKEN), "{t}");
    }

    let cfg = config(tmp.path(), &url, "");
    let (out, _) = run(&["check", "--online"], &cfg, Some(WRONG_TOKEN));
    let t = platform_failure(&out);
    assert!(
        t.contains("refused the token from the environment variable GRAND_CHALLENGE_AUTHORIZATION"),
        "{t}"
    );
    assert!(!t.contains(WRONG_TOKEN), "{t}");

    let cfg = config(tmp.path(), &url, &format!("token = \"{WRONG_TOKEN}\"\n"));
    let (out, _) = run(&["check", "--online"], &cfg, None);
    let t = platform_failure(&out);
    assert!(
        t.contains(&format!(
            "refused the token from server.token in {}",
            cfg.display()
        )),
        "{t}"
    );
    assert!(!t.contains(WRONG_TOKEN), "{t}");
}
