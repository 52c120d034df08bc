//! The sandbox's importer against the platform's own converter: every case of the image corpus
//! (`sandbox::corpus`) is imported by panimg 0.18.2 (run in a venv as the platform runs it, see
//! `tests/interop/panimg_verdicts.py`) and by the sandbox, and the verdicts must be the same: an image
//! with the same size, depth, timepoints and colour space, or the same failure.
//!
//! The Python comes from `GC_HOTFOLDER_PANIMG_PYTHON` (a python with panimg 0.18.2 installed) or from a
//! venv that the test makes once and keeps in `target/` (see `python_support`). When PyPI cannot be
//! reached to make that venv, the test says so and checks nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gc_content::{corpus, imaging};
use gc_testkit::python::NoPython;

const PANIMG: &str = "panimg==0.18.2";

/// One verdict, in words that show the difference when two disagree.
fn sandbox_verdict(case_dir: &Path, scratch: &Path) -> String {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(case_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.path())
        })
        .collect();
    files.sort();
    match imaging::import_uploads(&files, scratch) {
        Ok((image, _)) => image_verdict(
            image.width,
            image.height,
            image.depth,
            image.timepoints,
            &image.color_space,
        ),
        Err(imaging::ImportError::Socket(m)) if m == imaging::SINGLE_IMAGE_MESSAGE => {
            "several images".into()
        }
        Err(imaging::ImportError::Session(m)) if m == imaging::UNEXPECTED_ERROR_MESSAGE => {
            "the import fails as a whole".into()
        }
        Err(imaging::ImportError::Session(m)) => {
            let n: usize = m
                .strip_suffix(" could not be imported")
                .and_then(|m| m.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("an unexpected failure: {m}"));
            assert_eq!(m, imaging::could_not_import_message(n));
            format!("no image, {n} unconsumed")
        }
        Err(e) => panic!("an unexpected failure: {e:?}"),
    }
}

fn image_verdict(w: u64, h: u64, depth: Option<u64>, t: Option<u64>, cs: &str) -> String {
    format!("image {w}x{h} depth {depth:?} timepoints {t:?} {cs}")
}

fn panimg_verdict(v: &serde_json::Value) -> String {
    if v.get("unexpected").is_some() {
        return "the import fails as a whole".into();
    }
    let n = v["images"].as_u64().unwrap();
    match n {
        0 => format!("no image, {} unconsumed", v["unconsumed"]),
        1 => {
            let i = &v["image"];
            image_verdict(
                i["width"].as_u64().unwrap(),
                i["height"].as_u64().unwrap(),
                i["depth"].as_u64(),
                i["timepoints"].as_u64(),
                i["color_space"].as_str().unwrap(),
            )
        }
        _ => "several images".into(),
    }
}

#[test]
fn the_importer_agrees_with_panimg_on_the_corpus() {
    let python = match gc_testkit::python::python_with(
        &gc_testkit::venvs!(),
        "panimg-0.18.2",
        &[PANIMG],
        "panimg",
        "GC_HOTFOLDER_PANIMG_PYTHON",
    ) {
        Ok(p) => p,
        Err(NoPython::PipFailed(e)) => {
            eprintln!("SKIPPED: panimg could not be installed, nothing was compared: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    std::fs::create_dir(&root).unwrap();
    let names = corpus::write_corpus(&root).unwrap();

    let script = gc_testkit::python::script("panimg_verdicts.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "panimg script failed:\n{stderr}");
    let reference: BTreeMap<String, String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["case"].as_str().unwrap().to_string(), panimg_verdict(&v))
        })
        .collect();
    assert_eq!(
        reference.len(),
        names.len(),
        "a verdict for every case:\n{stderr}"
    );

    let mut disagreements = Vec::new();
    for name in &names {
        let scratch = dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&scratch).unwrap();
        let ours = sandbox_verdict(&root.join(name), &scratch);
        let theirs = &reference[name];
        println!("{name}: {theirs}");
        if ours != *theirs {
            disagreements.push(format!("{name}:\n  panimg:  {theirs}\n  sandbox: {ours}"));
        }
    }
    println!(
        "{} of {} inputs agree with panimg 0.18.2",
        names.len() - disagreements.len(),
        names.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} inputs disagree:\n{}",
        disagreements.len(),
        names.len(),
        disagreements.join("\n")
    );
}
