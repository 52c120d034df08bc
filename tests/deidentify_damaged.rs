//! A DICOM file cut short, as a copy interrupted mid-way leaves it, is refused at every possible length
//! before anything is sent: never a panic (which would take a delivery task down), never a half image.
//!
//! DICOM has no overall length, so a file cut exactly between two header elements (or inside the next
//! element's tag) reads as a complete, shorter data set, for the reference de-identifier as for ours. The
//! delivery catches those where the platform would: the copy is judged by the importer before anything
//! is created, and an image without its pixel data is refused there.

use gc_hotfolder::deidentify::{Procedure, UidMap, deidentify_file};
use gc_hotfolder::samples::{DicomSeriesIds, write_dicom_series};
use gc_hotfolder::sandbox::imaging::{Verdict, judge_files};

#[test]
fn a_file_cut_at_any_length_is_refused_never_a_panic() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let files = write_dicom_series(&dir, 1, 8, 8, &DicomSeriesIds::new(5), 5).unwrap();
    let whole = std::fs::read(&files[0]).unwrap();
    let procedure = Procedure::builtin().unwrap();
    let uids = UidMap::random();
    let src = scratch.path().join("cut.dcm");
    let dst = scratch.path().join("out.dcm");
    assert!(deidentify_file(procedure, &uids, &files[0], &dst).is_ok());
    let judge =
        |path: &std::path::Path| judge_files(&[("slice.dcm".to_owned(), path.to_path_buf())]);
    assert_eq!(
        judge(&dst),
        Verdict::Pass,
        "the whole file's copy is an image"
    );
    let mut wrong = Vec::new();
    for cut in 0..whole.len() {
        std::fs::write(&src, &whole[..cut]).unwrap();
        match std::panic::catch_unwind(|| deidentify_file(procedure, &uids, &src, &dst)) {
            Ok(Err(_)) => {}
            Ok(Ok(_)) if judge(&dst) != Verdict::Pass => {}
            Ok(Ok(_)) => wrong.push(format!("cut at {cut}: copied and judged an image")),
            Err(_) => wrong.push(format!("cut at {cut}: panicked")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} lengths: {wrong:?}",
        wrong.len(),
        whole.len()
    );
}
