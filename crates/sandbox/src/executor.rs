//! The deterministic executor that runs a sandbox job: its inputs imported as an item's would be, then
//! every output derived from them after the algorithm's configured duration (see `algorithms` for what
//! is derived and why).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::store::{
    Civ, CivContent, Image, Notification, SessionStatus, SessionTarget, StoredFile, UserId, World,
    concat_files, store_image_files,
};
use super::worker;
use crate::algorithms::*;
use crate::app::App;
use gc_content::imaging::ImportedImage;
use gc_content::kinds::SuperKind;

fn lock(app: &App) -> std::sync::MutexGuard<'_, World> {
    app.world()
}

fn set_status(app: &App, job: Uuid, status: JobStatus) {
    if let Some(j) = lock(app).algorithms.jobs.get_mut(&job) {
        j.status = status;
    }
}

fn fail(app: &App, job: Uuid, message: String, stderr: String) {
    let mut w = lock(app);
    let Some(j) = w.algorithms.jobs.get_mut(&job) else {
        return;
    };
    j.status = JobStatus::Failed;
    j.error_message = message.clone();
    j.stderr = stderr;
    let (creator, algorithm) = (j.creator, j.algorithm);
    let title = w
        .algorithms
        .get(algorithm)
        .map(|a| a.title.clone())
        .unwrap_or_default();
    w.notifications.push(Notification {
        user: creator,
        message: format!(
            "Unfortunately one of the jobs for algorithm {title} failed with an error: {message}"
        ),
    });
}

/// A job's life after the request that created it: import the uploaded inputs (the item machinery of
/// the worker, with the job as the target), then run the executor for the algorithm's duration.
pub(crate) async fn execute(app: Arc<App>, job: Uuid, inputs: Vec<worker::Job>) {
    let delay = app.config.import_delay;
    if !inputs.is_empty() && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let notes_before = lock(&app).notifications.len();
    for input in inputs {
        let a = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || worker::run(&a, input)).await {
            tracing::warn!(error = %e, "a job input import panicked");
        }
    }
    let missing = missing_inputs(&lock(&app), job, notes_before);
    if let Some(reason) = missing {
        return fail(&app, job, reason, String::new());
    }
    set_status(&app, job, JobStatus::Queued);
    tokio::task::yield_now().await;
    let (duration, failure) = {
        let mut w = lock(&app);
        let Some(j) = w.algorithms.jobs.get_mut(&job) else {
            return;
        };
        j.status = JobStatus::Executing;
        let algorithm = j.algorithm;
        match w.algorithms.get(algorithm) {
            Some(a) => (a.duration, a.failure.clone()),
            None => return,
        }
    };
    let started = Instant::now();
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
    if let Some(msg) = failure {
        return fail(&app, job, msg.clone(), msg);
    }
    let a = app.clone();
    let outcome = tokio::task::spawn_blocking(move || produce_outputs(&a, job)).await;
    match outcome {
        Ok(Ok(stdout)) => {
            let mut w = lock(&app);
            if let Some(j) = w.algorithms.jobs.get_mut(&job) {
                j.status = JobStatus::Succeeded;
                j.stdout = stdout;
                j.exec_duration = Some(started.elapsed());
            }
        }
        Ok(Err(msg)) => fail(&app, job, msg.clone(), msg),
        Err(e) => fail(
            &app,
            job,
            format!("The executor stopped: {e}"),
            String::new(),
        ),
    }
}

/// Why some input never arrived: the failed import session's message, else the notification the
/// failed import left, else a generic text. `None` when every input of the interface is there.
fn missing_inputs(w: &World, job: Uuid, notes_before: usize) -> Option<String> {
    let j = w.algorithms.jobs.get(&job)?;
    let interface = w.algorithms.get(j.algorithm)?.interfaces.get(j.interface)?;
    let missing: Vec<String> = interface
        .inputs
        .iter()
        .filter(|s| !j.inputs.contains_key(s))
        .filter_map(|s| w.socket(*s).map(|s| s.slug.clone()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let session_error = w
        .sessions
        .values()
        .filter(|s| {
            s.status == SessionStatus::Failed
                && matches!(s.target, SessionTarget::Item { item, .. } if item == job)
        })
        .map(|s| s.error_message.clone())
        .next();
    let notification = w
        .notifications
        .get(notes_before..)
        .unwrap_or_default()
        .iter()
        .rev()
        .find(|n| n.user == j.creator)
        .map(|n| n.message.clone());
    Some(session_error.or(notification).unwrap_or_else(|| {
        format!(
            "The inputs for {} could not be processed.",
            missing.join(", ")
        )
    }))
}

/// An input as the executor sees it.
enum Input {
    Value(Json),
    Image {
        meta: Box<ImportedImage>,
        files: Vec<(String, PathBuf)>,
    },
    File(StoredFile),
}

/// What the executor makes for one output socket.
enum Output {
    Value(Json),
    Image {
        meta: Box<ImportedImage>,
        files: Vec<(String, PathBuf)>,
    },
    /// Bytes to write (JSON kinds) or a file to copy.
    Bytes {
        name: String,
        bytes: Vec<u8>,
    },
    Copy(StoredFile),
}

fn voxels(meta: &ImportedImage) -> u64 {
    meta.width * meta.height * meta.depth.unwrap_or(1)
}

/// The executor's pure part: outputs from inputs.
fn derive(inputs: &[NamedInput], outputs: &[OutputSocket]) -> Result<Vec<(i64, Output)>, String> {
    let first_image = inputs.iter().find_map(|(_, _, i)| match i {
        Input::Image { meta, files } => Some((meta, files)),
        _ => None,
    });
    let numeric: f64 = inputs
        .iter()
        .filter_map(|(_, _, i)| match i {
            Input::Value(v) => v.as_f64(),
            _ => None,
        })
        .sum();
    let count = match first_image {
        Some((meta, _)) => voxels(meta) as f64,
        None => numeric,
    };
    let summary = Json::Object(
        inputs
            .iter()
            .map(|(slug, _, i)| {
                let v = match i {
                    Input::Value(v) => v.clone(),
                    Input::Image { meta, .. } => {
                        json!({"name": meta.name, "shape": meta.shape, "voxels": voxels(meta)})
                    }
                    Input::File(f) => json!({"name": f.name, "size": f.size, "sha256": f.sha256}),
                };
                (slug.clone(), v)
            })
            .collect(),
    );
    let mut made = Vec::new();
    for (socket, slug, code, super_kind, relative_path) in outputs {
        let value = match *code {
            "FLT" => json!(count),
            "INT" => json!(count.round() as i64),
            "BOOL" => json!((count.round() as i64) % 2 == 0),
            "STR" => json!(format!("{} voxels", count.round() as i64)),
            _ => json!({"inputs": summary}),
        };
        let out = match super_kind {
            SuperKind::Value => Output::Value(value),
            SuperKind::Image => match first_image {
                Some((meta, files)) => Output::Image {
                    meta: meta.clone(),
                    files: files.clone(),
                },
                None => return Err(format!("No input image to produce {slug} from")),
            },
            SuperKind::File => match inputs.iter().find(|(_, c, _)| c == code) {
                Some((_, _, Input::File(f))) => Output::Copy(f.clone()),
                _ => Output::Bytes {
                    name: relative_path
                        .rsplit('/')
                        .next()
                        .unwrap_or("output.json")
                        .to_string(),
                    bytes: serde_json::to_vec_pretty(&value).unwrap_or_default(),
                },
            },
        };
        made.push((*socket, out));
    }
    Ok(made)
}

/// Gather the inputs, derive the outputs, store their bytes and attach them to the job; returns the
/// job's stdout.
fn produce_outputs(app: &App, job: Uuid) -> Result<String, String> {
    let JobSockets {
        inputs,
        outputs,
        creator,
    } = JobSockets::gather(&lock(app), job)?;
    let mut stdout: String = inputs
        .iter()
        .map(|(slug, _, _)| format!("Reading input {slug}\n"))
        .collect();
    let made = derive(&inputs, &outputs)?;
    let mut attach = Vec::new();
    for (socket, out) in made {
        let slug = outputs
            .iter()
            .find(|o| o.0 == socket)
            .map(|o| o.1.clone())
            .unwrap_or_default();
        stdout.push_str(&format!("Writing output {slug}\n"));
        let produced = store_output(app, creator, out).map_err(|e| {
            tracing::warn!(error = %e, "cannot store a job output");
            format!("Output {slug} could not be stored")
        })?;
        attach.push((socket, produced));
    }
    attach_outputs(&mut lock(app), job, attach);
    Ok(stdout)
}

/// An input socket's slug and kind code, and its value.
type NamedInput = (String, &'static str, Input);
/// An output socket: pk, slug, kind code, super kind, relative path.
type OutputSocket = (i64, String, &'static str, SuperKind, String);

/// What a job reads and must write, taken from the world at once.
struct JobSockets {
    inputs: Vec<NamedInput>,
    outputs: Vec<OutputSocket>,
    creator: UserId,
}

impl JobSockets {
    fn gather(w: &World, job: Uuid) -> Result<JobSockets, String> {
        let j = w
            .algorithms
            .jobs
            .get(&job)
            .ok_or("The job no longer exists")?;
        let interface = w
            .algorithms
            .get(j.algorithm)
            .and_then(|a| a.interfaces.get(j.interface))
            .ok_or("The algorithm has no such interface")?;
        let mut inputs = Vec::new();
        for civ in j.inputs.values().filter_map(|pk| w.civs.get(pk)) {
            let Some(socket) = w.socket(civ.socket) else {
                continue;
            };
            let input = match &civ.content {
                CivContent::Value(v) => Input::Value(v.clone()),
                CivContent::File(f) => Input::File(f.clone()),
                CivContent::Image(pk) => {
                    let img = w.images.get(pk).ok_or("An input image no longer exists")?;
                    Input::Image {
                        meta: Box::new(img.meta.clone()),
                        files: img
                            .files
                            .iter()
                            .map(|f| (f.stored.name.clone(), f.stored.path.clone()))
                            .collect(),
                    }
                }
            };
            inputs.push((socket.slug.clone(), socket.kind.code, input));
        }
        let outputs = interface
            .outputs
            .iter()
            .filter_map(|pk| w.socket(*pk))
            .map(|s| {
                (
                    s.pk,
                    s.slug.clone(),
                    s.kind.code,
                    s.super_kind,
                    s.relative_path.clone(),
                )
            })
            .collect();
        Ok(JobSockets {
            inputs,
            outputs,
            creator: j.creator,
        })
    }
}

/// Store one output's bytes under the data folder, without the world lock held.
fn store_output(app: &App, creator: UserId, out: Output) -> std::io::Result<Produced> {
    let data_dir = &app.data_dir;
    Ok(match out {
        Output::Value(v) => Produced::Value(v),
        Output::Image { meta, files } => {
            let pk = Uuid::new_v4();
            let stored = store_image_files(data_dir, pk, &meta, &files)?;
            Produced::Image(Box::new(Image {
                pk,
                name: meta.name.clone(),
                meta: *meta,
                files: stored,
                origin: None,
                creator: Some(creator),
                dicom_image_set_id: None,
            }))
        }
        Output::Bytes { name, bytes } => {
            let civ = lock(app).next_civ_pk();
            let dest = data_dir.join("files").join(civ.to_string()).join(&name);
            let scratch = dest.with_extension("partial");
            let written = std::fs::create_dir_all(dest.parent().unwrap_or(data_dir))
                .and_then(|_| std::fs::write(&scratch, &bytes))
                .and_then(|_| concat_files(std::slice::from_ref(&scratch), &dest));
            let _ = std::fs::remove_file(&scratch);
            let (size, sha256) = written?;
            Produced::File(
                civ,
                StoredFile {
                    name,
                    path: dest,
                    size,
                    sha256,
                },
            )
        }
        Output::Copy(f) => {
            let civ = lock(app).next_civ_pk();
            let dest = data_dir.join("files").join(civ.to_string()).join(&f.name);
            let (size, sha256) = concat_files(std::slice::from_ref(&f.path), &dest)?;
            Produced::File(
                civ,
                StoredFile {
                    name: f.name,
                    path: dest,
                    size,
                    sha256,
                },
            )
        }
    })
}

/// Make the stored outputs socket values and the job's outputs.
fn attach_outputs(w: &mut World, job: Uuid, attach: Vec<(i64, Produced)>) {
    for (socket, produced) in attach {
        let civ = match produced {
            Produced::Value(v) => w.civ_for_value(socket, v),
            Produced::Image(image) => {
                let pk = image.pk;
                w.images.insert(pk, *image);
                w.civ_for_image(socket, pk)
            }
            Produced::File(pk, file) => {
                w.civs.insert(
                    pk,
                    Civ {
                        pk,
                        socket,
                        content: CivContent::File(file),
                    },
                );
                pk
            }
        };
        if let Some(j) = w.algorithms.jobs.get_mut(&job) {
            j.outputs.insert(socket, civ);
        }
    }
}

enum Produced {
    Value(Json),
    Image(Box<Image>),
    File(i64, StoredFile),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::iso_duration;
    use std::time::Duration;

    #[test]
    fn durations_as_django_prints_them() {
        assert_eq!(
            iso_duration(Duration::from_millis(200)),
            "P0DT00H00M00.200000S"
        );
        assert_eq!(iso_duration(Duration::from_secs(90_061)), "P1DT01H01M01S");
    }

    #[test]
    fn values_derive_from_the_inputs() {
        let inputs = vec![
            ("count".to_string(), "INT", Input::Value(json!(4))),
            ("weight".to_string(), "FLT", Input::Value(json!(1.5))),
        ];
        let outputs = vec![
            (
                1,
                "total".to_string(),
                "FLT",
                SuperKind::Value,
                "total.json".to_string(),
            ),
            (
                2,
                "even".to_string(),
                "BOOL",
                SuperKind::Value,
                "even.json".to_string(),
            ),
            (
                3,
                "report".to_string(),
                "JSON",
                SuperKind::File,
                "out/report.json".to_string(),
            ),
        ];
        let made = derive(&inputs, &outputs).unwrap();
        assert!(matches!(&made[0].1, Output::Value(v) if *v == json!(5.5)));
        assert!(
            matches!(&made[1].1, Output::Value(v) if *v == json!(true)),
            "5.5 rounds to 6"
        );
        match &made[2].1 {
            Output::Bytes { name, bytes } => {
                assert_eq!(name, "report.json");
                let v: Json = serde_json::from_slice(bytes).unwrap();
                assert_eq!(v["inputs"]["count"], 4);
            }
            _ => panic!("a JSON file output is written"),
        }
        let image_out = vec![(
            4,
            "copy".to_string(),
            "IMG",
            SuperKind::Image,
            "images/copy".to_string(),
        )];
        assert!(derive(&inputs, &image_out).is_err(), "no image to copy");
    }
}
