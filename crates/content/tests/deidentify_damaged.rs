//! Damaged DICOM is refused before anything is sent, quickly and with a reason an operator can act on:
//! never a panic (which would take a delivery task down), never a half image, never a stall.
//!
//! A file cut short, as a copy interrupted mid-way leaves it, is refused at every possible length.
//!
//! DICOM has no overall length, so a file cut exactly between two header elements (or inside the next
//! element's tag) reads as a complete, shorter data set, for the reference de-identifier as for ours. The
//! delivery catches those where the platform would: the copy is judged by the importer before anything
//! is created, and an image without its pixel data is refused there.
//!
//! A header with damaged bytes (as a fuzzer makes them, from the importer's corpus) is refused within
//! milliseconds, where a length field turned into garbage used to make the parser allocate gigabytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{InMemDicomObject, open_file};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use gc_content::deidentify::{DeidError, Procedure, UidMap, deidentify_file, patient_identifiers};
use gc_content::imaging::{Verdict, judge_files};
use gc_content::samples::{DicomSeriesIds, SampleRng, write_dicom_series};

/// A scratch folder, one small DICOM slice written in it, and its bytes.
fn one_slice() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let files = write_dicom_series(&dir, 1, 8, 8, &DicomSeriesIds::new(5), 5).unwrap();
    let whole = std::fs::read(&files[0]).unwrap();
    (scratch, files[0].clone(), whole)
}

#[test]
fn a_file_cut_at_any_length_is_refused_never_a_panic() {
    let (scratch, slice, whole) = one_slice();
    let procedure = Procedure::builtin().unwrap();
    let uids = UidMap::random();
    let src = scratch.path().join("cut.dcm");
    let dst = scratch.path().join("out.dcm");
    assert!(deidentify_file(procedure, &uids, &slice, &dst).is_ok());
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

/// DICOM files of every shape the corpus has (explicit VR series, multi-frame, RGB, 8-bit, files without
/// pixel data) plus an implicit VR file with a nested sequence and one with encapsulated pixel data,
/// written by dicom-rs: the originals that the mutations start from.
fn originals(dir: &Path) -> Vec<PathBuf> {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut files = Vec::new();
    for case in gc_content::corpus::write_corpus(&corpus).unwrap() {
        let mut dcm: Vec<PathBuf> = std::fs::read_dir(corpus.join(&case))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        dcm.sort();
        // One file a case is enough: the files of a series differ in values, not in layout.
        files.extend(dcm.into_iter().take(1));
    }
    let first = files[0].clone();
    for (name, ts) in [
        ("implicit.dcm", uids::IMPLICIT_VR_LITTLE_ENDIAN),
        ("encapsulated.dcm", uids::JPEG_BASELINE8_BIT),
    ] {
        let mut obj = open_file(&first).unwrap();
        obj.put(DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    PrimitiveValue::from("1.2.999.1"),
                ),
                DataElement::new(
                    tags::PATIENT_NAME,
                    VR::PN,
                    PrimitiveValue::from("NESTED^NAME"),
                ),
            ])]),
        ));
        if ts == uids::JPEG_BASELINE8_BIT {
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(
                    Vec::<u32>::new(),
                    vec![
                        vec![0xFF, 0xD8, 1, 2, 0xFF, 0xD9],
                        vec![0xFF, 0xD8, 0xFF, 0xD9],
                    ],
                ),
            ));
        }
        obj.meta_mut()
            .set_transfer_syntax(TransferSyntaxRegistry.get(ts).unwrap());
        let path = dir.join(name);
        obj.write_to_file(&path).unwrap();
        files.push(path);
    }
    files
}

/// Where the pixel data element starts (its tag's bytes, little endian), or the file's end.
fn header_end(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .skip(132)
        .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .map_or(bytes.len(), |p| p + 132 + 4)
}

/// Byte mutations of a header, the way a damaged copy or a fuzzer makes them: a random byte, a length
/// field turned huge (0xFFFF_0000, 0xFFFF) or undefined (0xFFFF_FFFF), a run of zeros.
fn mutants(bytes: &[u8], rng: &mut SampleRng, n: usize) -> Vec<(String, Vec<u8>)> {
    let end = header_end(bytes);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = 132 + rng.below((end - 132) as u64) as usize;
        let patch: Vec<u8> = match i % 5 {
            0 => vec![rng.below(256) as u8],
            1 => vec![0x00, 0x00, 0xFF, 0xFF],
            2 => vec![0xFF, 0xFF],
            3 => vec![0xFF, 0xFF, 0xFF, 0xFF],
            _ => vec![0; 1 + rng.below(8) as usize],
        };
        let mut m = bytes.to_vec();
        for (k, b) in patch.iter().enumerate() {
            if let Some(slot) = m.get_mut(at + k) {
                *slot = *b;
            }
        }
        out.push((format!("{patch:02X?} at {at}"), m));
    }
    out
}

/// A reason is for the receipt of a hospital's operator: one sentence, no internals of a parser.
fn is_clear(why: &str) -> bool {
    !why.is_empty()
        && why.len() < 300
        && !why.contains('\n')
        && !why.contains("Backtrace")
        && !why.contains("{ ")
}

/// A damaged header (a length field turned into garbage) made the parser allocate and read gigabytes or
/// walk garbage for seconds to minutes before refusing the file; a drop folder with a damaged export
/// must not stall the agent. Every mutant must be refused with a clear reason, or de-identified, well
/// within a second even in a debug build (the failure mode is a hang, so a generous bound is the test),
/// and reading the patient identifiers for `check` must be as quick.
#[test]
fn damaged_headers_are_refused_quickly_with_a_clear_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let procedure = Procedure::builtin().unwrap();
    let uids = UidMap::new([9; 32]);
    let src = scratch.path().join("damaged.dcm");
    let dst = scratch.path().join("out.dcm");
    let mut rng = SampleRng::new(0xdead_beef);
    let (mut slow, mut unclear, mut tried, mut refused) = (Vec::new(), Vec::new(), 0, 0);
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    // The corpus's broken cases (no preamble, no SOP class, ...) are refused as they are: not originals.
    let originals: Vec<PathBuf> = originals(scratch.path())
        .into_iter()
        .filter(|o| deidentify_file(procedure, &uids, o, &dst).is_ok())
        .collect();
    assert!(originals.len() >= 30, "{} originals", originals.len());
    for original in &originals {
        let bytes = std::fs::read(original).unwrap();
        for (what, mutant) in mutants(&bytes, &mut rng, 15) {
            std::fs::write(&src, &mutant).unwrap();
            let name = format!("{} with {what}", original.display());
            let t = Instant::now();
            let result = deidentify_file(procedure, &uids, &src, &dst);
            let _ = patient_identifiers(&src);
            let took = t.elapsed();
            longest = longest.max(took);
            tried += 1;
            if took > Duration::from_secs(1) {
                slow.push(format!("{name}: {took:?}"));
            }
            match result {
                Ok(_) => {}
                Err(e) => {
                    refused += 1;
                    if !is_clear(&e.to_string()) {
                        unclear.push(format!("{name}: {e}"));
                    }
                }
            }
        }
    }
    println!(
        "{tried} damaged headers ({refused} refused) in {:?}, the longest {longest:?}",
        started.elapsed()
    );
    assert!(slow.is_empty(), "slower than 1 s:\n{}", slow.join("\n"));
    assert!(
        unclear.is_empty(),
        "unclear reasons:\n{}",
        unclear.join("\n")
    );
    assert!(
        refused > tried / 4,
        "{refused} of {tried}: the mutations hit too little"
    );
}

/// The length checks name the element and the numbers, whichever group holds the damage.
#[test]
fn a_declared_length_beyond_the_file_is_named_in_the_reason() {
    let (scratch, _, whole) = one_slice();
    let procedure = Procedure::builtin().unwrap();
    let uids = UidMap::random();
    let (src, dst) = (
        scratch.path().join("bad.dcm"),
        scratch.path().join("out.dcm"),
    );
    let find = |pattern: &[u8]| {
        whole
            .windows(pattern.len())
            .position(|w| w == pattern)
            .unwrap()
    };
    // (tag bytes, offset of the length from the tag, width of the length field, tag as named)
    let cases: [(&[u8], usize, usize, &str); 3] = [
        // Transfer Syntax UID in the file meta group (explicit VR, 2-byte length).
        (&[0x02, 0x00, 0x10, 0x00, b'U', b'I'], 6, 2, "(0002,0010)"),
        // Patient's Name in the data set.
        (&[0x10, 0x00, 0x10, 0x00, b'P', b'N'], 6, 2, "(0010,0010)"),
        // Pixel Data (OW, 4-byte length).
        (&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W'], 8, 4, "(7FE0,0010)"),
    ];
    for (tag, offset, width, named) in cases {
        let at = find(tag) + offset;
        let mut bad = whole.clone();
        let huge: u32 = if width == 2 { 0xFFFE } else { 0xFFFF_0000 };
        bad[at..at + width].copy_from_slice(&huge.to_le_bytes()[..width]);
        std::fs::write(&src, &bad).unwrap();
        let remaining = whole.len() - (at + width);
        let expected = format!(
            "cannot read it as DICOM: element {named} declares {huge} bytes but only {remaining} remain: \
             the file is cut short or damaged"
        );
        match deidentify_file(procedure, &uids, &src, &dst) {
            Err(DeidError::Unreadable(why)) => assert_eq!(why, expected),
            other => panic!("{named}: {other:?}"),
        }
    }
}
