//! Python reference implementations for the tests (gcapi, and any other package the platform itself
//! uses), each in a venv of its own that is made once and kept between runs.
//!
//! A venv lives in `target/tmp/venvs/<name>` (cargo's per-target scratch folder, which `cargo clean`
//! removes; [`crate::venvs!`] names it from the calling test). It is made under an exclusive lock, so tests running in parallel build it once, and it is
//! marked complete only after `pip install` succeeded, so an interrupted install is redone. An
//! environment variable may name a Python that already has the packages instead.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why no Python with the packages could be had.
#[derive(Debug)]
pub enum NoPython {
    /// `python3 -m venv` failed: the machine lacks python3 or its venv module.
    NoVenv(String),
    /// `pip install` failed: most often PyPI cannot be reached.
    PipFailed(String),
    /// The Python named by the environment variable cannot import the packages.
    BadOverride(String),
}

impl std::fmt::Display for NoPython {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPython::NoVenv(s) | NoPython::PipFailed(s) | NoPython::BadOverride(s) => {
                f.write_str(s)
            }
        }
    }
}

/// A Python interpreter that can import `import_check` (a Python module name), taken from the
/// environment variable `override_var` when it is set, else from the cached venv `name` under `venvs`
/// (give it [`crate::venvs!`]) with `requirements` installed (pip requirement strings, pinned by the
/// caller).
pub fn python_with(
    venvs: &Path,
    name: &str,
    requirements: &[&str],
    import_check: &str,
    override_var: &str,
) -> Result<PathBuf, NoPython> {
    if let Ok(python) = std::env::var(override_var) {
        return overriding_python(python, requirements, import_check, override_var);
    }
    std::fs::create_dir_all(venvs)
        .map_err(|e| NoPython::NoVenv(format!("{}: {e}", venvs.display())))?;
    let lock = File::create(venvs.join(format!("{name}.lock")))
        .map_err(|e| NoPython::NoVenv(format!("cannot create the venv lock: {e}")))?;
    // SAFETY: flock on a descriptor we own; the lock is released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(NoPython::NoVenv(format!(
            "cannot lock the venv: {}",
            std::io::Error::last_os_error()
        )));
    }
    let venv = venvs.join(name);
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    let wanted = requirements.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(python);
    }
    make_venv(&venv, override_var)?;
    pip_install(&python, requirements, override_var)?;
    std::fs::write(&marker, &wanted)
        .map_err(|e| NoPython::PipFailed(format!("cannot mark the venv complete: {e}")))?;
    Ok(python)
}

/// The Python an environment variable names, if it can import what the tests need.
fn overriding_python(
    python: String,
    requirements: &[&str],
    import_check: &str,
    override_var: &str,
) -> Result<PathBuf, NoPython> {
    let ok = Command::new(&python)
        .args(["-c", &format!("import {import_check}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(PathBuf::from(python));
    }
    Err(NoPython::BadOverride(format!(
        "{override_var}={python} cannot import {import_check}; install it with `{python} -m pip install {}`",
        requirements.join(" ")
    )))
}

/// A fresh venv at `venv` (whatever was there goes).
fn make_venv(venv: &Path, override_var: &str) -> Result<(), NoPython> {
    let _ = std::fs::remove_dir_all(venv);
    match Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(NoPython::NoVenv(format!(
            "`python3 -m venv` failed (install python3-venv, or set {override_var}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(NoPython::NoVenv(format!(
            "cannot run python3 (install it, or set {override_var}): {e}"
        ))),
    }
}

/// `requirements` installed into the venv of `python`.
fn pip_install(python: &Path, requirements: &[&str], override_var: &str) -> Result<(), NoPython> {
    let installed = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(requirements)
        .output();
    match installed {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(NoPython::PipFailed(format!(
            "`pip install {}` failed (no access to PyPI?); set {override_var} to a python that has it: {}",
            requirements.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(NoPython::PipFailed(format!("cannot run pip: {e}"))),
    }
}

/// Run a Python reference tool to its end and return what it printed on stdout; a failure panics with
/// `what` and the tool's stderr.
#[track_caller]
pub fn run_ok(command: &mut Command, what: &str) -> Vec<u8> {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A script of `crates/testkit/interop/` that drives one of the platform's Python tools.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// The pinned packages of the platform's DICOM de-identification, with pydicom to write test files.
pub const DEIDENTIFIER: &[&str] = &[
    "grand-challenge-dicom-de-identifier==0.1.1",
    "grand-challenge-dicom-de-id-procedure==2025.10.1",
    "pydicom==3.0.2",
];

/// A Python with the platform's de-identifier ([`DEIDENTIFIER`]) in the venv `dicom-deid-0.1.1` under
/// `venvs`, or the one `GC_HOTFOLDER_DEID_PYTHON` names; panics with the reason if there is none.
pub fn deidentifier(venvs: &Path) -> PathBuf {
    python_with(
        venvs,
        "dicom-deid-0.1.1",
        DEIDENTIFIER,
        "grand_challenge_dicom_de_identifier.deidentifier",
        "GC_HOTFOLDER_DEID_PYTHON",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The same slice of one patient stored in every way DICOM is stored (`interop/encodings.py`, written
/// with pydicom in the de-identifier's venv under `venvs`) into `dir`: file name → how it is stored.
pub fn write_encodings(venvs: &Path, dir: &Path) -> std::collections::BTreeMap<String, String> {
    let python = deidentifier(venvs);
    let stdout = run_ok(
        Command::new(python).arg(script("encodings.py")).arg(dir),
        "writing the encodings",
    );
    serde_json::from_slice(&stdout).unwrap()
}

/// Every identifier the files of [`write_encodings`] hold, and the prefix of their original UIDs: none
/// may leave this machine.
pub const ENCODINGS_SECRETS: &[&str] = &[
    "ROE^RICHARD",
    "RICHARD",
    "PID-8812",
    "19580704",
    "OPID-5531",
    "ACC98765",
    "Example Hospital",
    "WHO^DR",
    "SCANNER_AE",
    "1.2.999.8.",
];
