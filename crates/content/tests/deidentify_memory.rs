//! Native (uncompressed) pixel data crosses de-identification in bounded chunks: memory stays flat
//! whatever the size of the image, as uploads do.
//!
//! How it is measured, and why this way: a whole-slide image of 512 frames of 512×512 16-bit pixels
//! (256 MiB of native pixel data, the kind a slide scanner exports) is de-identified in a child process
//! that does nothing else (this test binary, started again on this one test), which reports its peak
//! resident set (`VmHWM`) before and after. A copy that held the pixel data as one value would grow by
//! at least the 256 MiB it read; a streamed copy grows by its buffers (a few MiB). The bound, 64 MiB,
//! sits far from both, so the test neither flakes nor lets a whole-value read through. The harness's
//! own process is not measured: its peak depends on whatever else ran in it.
//!
//! The pixel bytes must come out exactly as they went in (every 1 MiB chunk carries its own index, so
//! a lost, repeated or misplaced chunk shows), behind a de-identified header.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, DataElementHeader, Length, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::Encode;
use dicom_encoding::encode::explicit_le::ExplicitVRLittleEndianEncoder;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use gc_content::deidentify::{Procedure, UidMap, deidentify_file};
use gc_content::samples::SampleRng;
use sha2::{Digest, Sha256};

const TEST: &str = "a_large_native_multi_frame_image_is_copied_with_flat_memory";
/// Set in the child: the source and destination paths, one per line.
const CHILD: &str = "GC_HOTFOLDER_DEID_MEMORY_CHILD";
const WSI_CLASS: &str = "1.2.840.10008.5.1.4.1.1.77.1.6";
const FRAMES: u32 = 512;
const SIDE: u16 = 512;
const MIB: usize = 1 << 20;
const BOUND_KIB: u64 = 64 * 1024;

#[test]
fn a_large_native_multi_frame_image_is_copied_with_flat_memory() {
    if let Ok(job) = std::env::var(CHILD) {
        return child(&job);
    }
    let scratch = tempfile::tempdir().unwrap();
    let (src, dst) = (
        scratch.path().join("slide.dcm"),
        scratch.path().join("out.dcm"),
    );
    let pixel_len = u64::from(FRAMES) * u64::from(SIDE) * u64::from(SIDE) * 2;
    let pixels_in = write_slide(&src, pixel_len);

    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}\n{}", src.display(), dst.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.split_once("child peak KiB: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (before, after) = (report[0], report[1]);
    println!(
        "de-identifying {} MiB of native pixel data: peak RSS {before} KiB before, {after} KiB after",
        pixel_len >> 20
    );
    assert!(
        after - before < BOUND_KIB,
        "memory grew by {} KiB copying {} MiB of pixel data (bound {BOUND_KIB} KiB)",
        after - before,
        pixel_len >> 20
    );

    // The copy: a de-identified header, then the very pixel bytes, last in the file.
    let header = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&dst)
        .unwrap();
    assert_eq!(
        header
            .element(tags::PATIENT_IDENTITY_REMOVED)
            .unwrap()
            .to_str()
            .unwrap()
            .trim(),
        "YES"
    );
    assert_eq!(
        header
            .element(tags::NUMBER_OF_FRAMES)
            .unwrap()
            .to_str()
            .unwrap()
            .trim(),
        FRAMES.to_string()
    );
    for tag in [tags::PATIENT_NAME, tags::PATIENT_ID] {
        let kept = header
            .element(tag)
            .map(|e| e.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            !kept.contains("DOE") && !kept.contains("4711"),
            "{tag}: {kept}"
        );
    }
    let out_len = std::fs::metadata(&dst).unwrap().len();
    let mut f = File::open(&dst).unwrap();
    f.seek(SeekFrom::Start(out_len - pixel_len - 12)).unwrap();
    let mut pixel_header = [0u8; 12];
    f.read_exact(&mut pixel_header).unwrap();
    let mut expected = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
    expected.extend_from_slice(&(pixel_len as u32).to_le_bytes());
    assert_eq!(pixel_header.to_vec(), expected, "the Pixel Data header");
    assert_eq!(sha256_of_rest(&mut f), pixels_in, "the pixel bytes");
}

/// The child: de-identify one file and report the peak RSS before and after.
fn child(job: &str) {
    let (src, dst) = job.split_once('\n').unwrap();
    let procedure = Procedure::builtin().unwrap();
    let uids = UidMap::new([1; 32]);
    let before = peak_rss_kib();
    deidentify_file(procedure, &uids, Path::new(src), Path::new(dst)).unwrap();
    let after = peak_rss_kib();
    println!("child peak KiB: {before} {after}");
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A VL whole-slide image with `pixel_len` bytes of native 16-bit pixel data, written in 1 MiB
/// chunks: the header by dicom-rs, then the Pixel Data element. Returns the pixel bytes' SHA-256.
fn write_slide(path: &Path, pixel_len: u64) -> Vec<u8> {
    let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let obj = InMemDicomObject::from_element_iter([
        s(tags::SOP_CLASS_UID, VR::UI, WSI_CLASS),
        s(tags::SOP_INSTANCE_UID, VR::UI, "1.2.999.8.1"),
        s(tags::MODALITY, VR::CS, "SM"),
        s(tags::PATIENT_NAME, VR::PN, "DOE^JANE"),
        s(tags::PATIENT_ID, VR::LO, "PID-4711"),
        s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.999.8.2"),
        s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.999.8.3"),
        s(tags::NUMBER_OF_FRAMES, VR::IS, &FRAMES.to_string()),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, SIDE),
        us(tags::COLUMNS, SIDE),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 16),
        us(tags::HIGH_BIT, 15),
        us(tags::PIXEL_REPRESENTATION, 0),
    ]);
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(WSI_CLASS)
                .media_storage_sop_instance_uid("1.2.999.8.1"),
        )
        .unwrap();
    file.write_to_file(path).unwrap();

    let mut out = BufWriter::new(File::options().append(true).open(path).unwrap());
    ExplicitVRLittleEndianEncoder::default()
        .encode_element_header(
            &mut out,
            DataElementHeader::new(tags::PIXEL_DATA, VR::OW, Length(pixel_len as u32)),
        )
        .unwrap();
    let mut chunk = vec![0u8; MIB];
    let mut rng = SampleRng::new(8);
    for b in chunk.iter_mut() {
        *b = rng.below(256) as u8;
    }
    let mut hash = Sha256::new();
    for i in 0..pixel_len as usize / MIB {
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        hash.update(&chunk);
        out.write_all(&chunk).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    hash.finalize().to_vec()
}

fn sha256_of_rest(f: &mut File) -> Vec<u8> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    hash.finalize().to_vec()
}
