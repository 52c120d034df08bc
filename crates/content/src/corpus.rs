//! A fixed corpus of image uploads, good and broken, in every format the platform's importer knows:
//! the inputs on which the sandbox's importer ([`crate::imaging`]) is checked against the platform's
//! own converter. Each case is a folder holding the uploads of one image value.
//!
//! Everything is generated from one seed, so a run is reproducible and no binary fixture lives in
//! the repository. The broken cases are variations of good ones, each changing one thing, so that a
//! disagreement points at one rule.

use std::io::{self, Cursor, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::{GzEncoder, ZlibEncoder};

use crate::samples::{self, DicomSeriesIds, SampleRng};

/// The seed of the whole corpus.
pub const SEED: u64 = 0x9a71_3c0d;

/// One case: its folder name and its files (upload filename, bytes).
struct Case {
    name: String,
    files: Vec<(String, Vec<u8>)>,
}

/// Write every case as a folder under `root` (which must exist); returns the case names in order.
pub fn write_corpus(root: &Path) -> io::Result<Vec<String>> {
    let cases = cases()?;
    let mut names = Vec::with_capacity(cases.len());
    for (i, case) in cases.into_iter().enumerate() {
        let name = format!("{i:03}-{}", case.name);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        for (file, bytes) in &case.files {
            std::fs::write(dir.join(file), bytes)?;
        }
        names.push(name);
    }
    Ok(names)
}

/// A case of one file.
fn one(name: &str, file: &str, bytes: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        files: vec![(file.into(), bytes)],
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn noise(rng: &mut SampleRng, n: usize, modulo: u64) -> Vec<u8> {
    (0..n).map(|_| rng.below(modulo) as u8).collect()
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data)?;
    e.finish()
}

fn zlib(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data)?;
    e.finish()
}

fn cut(mut bytes: Vec<u8>, keep: usize) -> Vec<u8> {
    bytes.truncate(keep);
    bytes
}

// ---------------------------------------------------------------------------------------------
// MetaImage

/// A MetaImage header as ordered `key = value` lines; `ElementDataFile` is written last.
#[derive(Clone)]
struct Mha {
    fields: Vec<(String, String)>,
    data_file: String,
}

impl Mha {
    fn new(dims: &[u64], element_type: &str) -> Mha {
        let spacing = vec!["0.5"; dims.len()].join(" ");
        let dim_size = dims
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        Mha {
            fields: vec![
                ("ObjectType".into(), "Image".into()),
                ("NDims".into(), dims.len().to_string()),
                ("BinaryData".into(), "True".into()),
                ("BinaryDataByteOrderMSB".into(), "False".into()),
                ("CompressedData".into(), "False".into()),
                ("ElementSpacing".into(), spacing),
                ("DimSize".into(), dim_size),
                ("ElementType".into(), element_type.into()),
            ],
            data_file: "LOCAL".into(),
        }
    }

    fn set(mut self, key: &str, value: &str) -> Mha {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = value.into(),
            None => self.fields.push((key.into(), value.into())),
        }
        self
    }

    fn without(mut self, key: &str) -> Mha {
        self.fields.retain(|(k, _)| k != key);
        self
    }

    fn header(&self) -> Vec<u8> {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str(&format!("ElementDataFile = {}\n", self.data_file));
        s.into_bytes()
    }

    fn local(&self, data: &[u8]) -> Vec<u8> {
        let mut b = self.header();
        b.extend_from_slice(data);
        b
    }
}

fn metaimage_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    metaimage_sample_cases(out)?;

    let u8_3d = noise(rng, 6 * 5 * 3, 200);
    let base = Mha::new(&[6, 5, 3], "MET_UCHAR");
    metaimage_type_cases(rng, out, &base, &u8_3d);
    metaimage_size_cases(out, &base, &u8_3d);
    let compressed = zlib(&u8_3d)?;
    metaimage_compression_cases(rng, out, &base, &compressed);
    metaimage_channel_cases(rng, out);
    metaimage_spacing_and_text_cases(out, &base, &u8_3d);
    metaimage_field_cases(out, &base, &u8_3d);
    metaimage_window_cases(out, &base, &u8_3d);
    metaimage_timepoint_cases(rng, out, &base, &u8_3d);
    metaimage_not_header_cases(rng, out, &base, &u8_3d);
    metaimage_detached_cases(out, &base, &u8_3d, &compressed);
    Ok(())
}

/// The sample writers' MetaImage files, with and without their data file.
fn metaimage_sample_cases(out: &mut Vec<Case>) -> io::Result<()> {
    let tmp = tempfile_dir()?;
    let good = tmp.join("good.mha");
    samples::write_mha(&good, [6, 5, 3], SEED)?;
    out.push(one("mha-sample", "ct.mha", std::fs::read(&good)?));
    let (mhd, raw) = samples::write_mhd_pair(&tmp, "pair", [6, 5, 3], SEED)?;
    out.push(Case {
        name: "mhd-raw-sample".into(),
        files: vec![
            ("pair.mhd".into(), std::fs::read(&mhd)?),
            ("pair.raw".into(), std::fs::read(&raw)?),
        ],
    });
    out.push(one("mhd-without-raw", "pair.mhd", std::fs::read(&mhd)?));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Dimensions and element types.
fn metaimage_type_cases(rng: &mut SampleRng, out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    out.push(one("mha-u8-3d", "a.mha", base.local(u8_3d)));
    out.push(one(
        "mha-2d",
        "a.mha",
        Mha::new(&[7, 4], "MET_UCHAR").local(&noise(rng, 28, 255)),
    ));
    out.push(one(
        "mha-4d",
        "a.mha",
        Mha::new(&[4, 3, 2, 3], "MET_UCHAR").local(&noise(rng, 72, 9)),
    ));
    out.push(one(
        "mha-4d-boolean",
        "a.mha",
        Mha::new(&[4, 3, 2, 3], "MET_UCHAR").local(&noise(rng, 72, 2)),
    ));
    out.push(one(
        "mha-1d",
        "a.mha",
        Mha::new(&[9], "MET_UCHAR").local(&noise(rng, 9, 255)),
    ));
    out.push(one(
        "mha-5d",
        "a.mha",
        Mha::new(&[2, 2, 2, 2, 2], "MET_UCHAR").local(&noise(rng, 32, 255)),
    ));
    out.push(one(
        "mha-i16",
        "a.mha",
        Mha::new(&[6, 5, 3], "MET_SHORT").local(&noise(rng, 180, 255)),
    ));
    out.push(one(
        "mha-f32",
        "a.mha",
        Mha::new(&[6, 5, 3], "MET_FLOAT").local(&[0u8; 360]),
    ));
    out.push(one(
        "mha-f64-big-endian",
        "a.mha",
        Mha::new(&[3, 2, 2], "MET_DOUBLE")
            .set("BinaryDataByteOrderMSB", "True")
            .local(&[0u8; 96]),
    ));
    out.push(one(
        "mha-long-long",
        "a.mha",
        Mha::new(&[3, 2, 2], "MET_LONG_LONG").local(&[0u8; 96]),
    ));
    out.push(one(
        "mha-unknown-element-type",
        "a.mha",
        Mha::new(&[3, 2, 2], "MET_WHATEVER").local(&[0u8; 12]),
    ));
}

/// Too little or too much voxel data, and sizes or types missing from the header.
fn metaimage_size_cases(out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    out.push(one("mha-truncated-data", "a.mha", base.local(&u8_3d[..50])));
    out.push(one(
        "mha-extra-data",
        "a.mha",
        base.local(&[u8_3d, &[1, 2, 3]].concat()),
    ));
    out.push(one(
        "mha-dimsize-mismatch",
        "a.mha",
        base.clone().set("DimSize", "6 5").local(u8_3d),
    ));
    out.push(one(
        "mha-no-dimsize",
        "a.mha",
        base.clone().without("DimSize").local(u8_3d),
    ));
    out.push(one(
        "mha-zero-dimension",
        "a.mha",
        base.clone().set("DimSize", "6 0 3").local(u8_3d),
    ));
    out.push(one(
        "mha-no-element-type",
        "a.mha",
        base.clone().without("ElementType").local(u8_3d),
    ));
}

/// Compressed voxel data, whole, empty, damaged or cut.
fn metaimage_compression_cases(
    rng: &mut SampleRng,
    out: &mut Vec<Case>,
    base: &Mha,
    compressed: &[u8],
) {
    out.push(one(
        "mha-compressed",
        "a.mha",
        base.clone()
            .set("CompressedData", "True")
            .set("CompressedDataSize", &compressed.len().to_string())
            .local(compressed),
    ));
    out.push(one(
        "mha-compressed-empty",
        "a.mha",
        base.clone()
            .set("CompressedData", "True")
            .set("CompressedDataSize", "0")
            .local(&[]),
    ));
    out.push(one(
        "mha-compressed-garbage",
        "a.mha",
        base.clone()
            .set("CompressedData", "True")
            .local(&noise(rng, 40, 256)),
    ));
    out.push(one(
        "mha-compressed-truncated",
        "a.mha",
        base.clone()
            .set("CompressedData", "True")
            .local(&compressed[..compressed.len() / 2]),
    ));
}

/// Colour images and channel counts the platform refuses.
fn metaimage_channel_cases(rng: &mut SampleRng, out: &mut Vec<Case>) {
    out.push(one(
        "mha-rgb",
        "a.mha",
        Mha::new(&[4, 3], "MET_UCHAR")
            .set("ElementNumberOfChannels", "3")
            .local(&noise(rng, 36, 256)),
    ));
    out.push(one(
        "mha-rgba-3d",
        "a.mha",
        Mha::new(&[4, 3, 2], "MET_UCHAR")
            .set("ElementNumberOfChannels", "4")
            .local(&noise(rng, 96, 256)),
    ));
    out.push(one(
        "mha-two-channels",
        "a.mha",
        Mha::new(&[4, 3], "MET_UCHAR")
            .set("ElementNumberOfChannels", "2")
            .local(&noise(rng, 24, 256)),
    ));
    out.push(one(
        "mha-five-channels",
        "a.mha",
        Mha::new(&[4, 3], "MET_UCHAR")
            .set("ElementNumberOfChannels", "5")
            .local(&noise(rng, 60, 256)),
    ));
}

/// Spacings ITK refuses or takes, and voxels written as text.
fn metaimage_spacing_and_text_cases(out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    out.push(one(
        "mha-zero-spacing",
        "a.mha",
        base.clone().set("ElementSpacing", "0.5 0 1").local(u8_3d),
    ));
    out.push(one(
        "mha-negative-spacing",
        "a.mha",
        base.clone().set("ElementSpacing", "0.5 -1 1").local(u8_3d),
    ));
    out.push(one(
        "mha-ascii",
        "a.mha",
        Mha::new(&[3, 2], "MET_UCHAR")
            .set("BinaryData", "False")
            .local(b"1 2 3 4 5 6\n"),
    ));
}

/// Patient and study fields (not checked) and the additional fields panimg checks.
fn metaimage_field_cases(out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    out.push(one(
        "mha-patient-metadata",
        "a.mha",
        base.clone()
            .set("PatientID", "A\\B")
            .set("PatientName", "Doe^Jane")
            .set("PatientBirthDate", "2020-13-45")
            .set("PatientSex", "female")
            .set("PatientAge", "forty")
            .set("StudyDate", "yesterday")
            .set("SeriesInstanceUID", "not-a-uid")
            .set("StudyDescription", "line\\two")
            .local(u8_3d),
    ));
    out.push(one(
        "mha-slice-thickness",
        "a.mha",
        base.clone().set("SliceThickness", "1.25").local(u8_3d),
    ));
    out.push(one(
        "mha-bad-slice-thickness",
        "a.mha",
        base.clone().set("SliceThickness", "thick").local(u8_3d),
    ));
    out.push(one(
        "mha-laterality-too-long",
        "a.mha",
        base.clone()
            .set("Laterality", &"L".repeat(200))
            .local(u8_3d),
    ));
}

/// `WindowCenter` and `WindowWidth` as scalars and arrays.
fn metaimage_window_cases(out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    out.push(one(
        "mha-window-scalars",
        "a.mha",
        base.clone()
            .set("WindowCenter", "40")
            .set("WindowWidth", "400")
            .local(u8_3d),
    ));
    out.push(one(
        "mha-window-arrays",
        "a.mha",
        base.clone()
            .set("WindowCenter", "[40, 50]")
            .set("WindowWidth", "[400, 350]")
            .local(u8_3d),
    ));
    out.push(one(
        "mha-window-arrays-unequal",
        "a.mha",
        base.clone()
            .set("WindowCenter", "[40, 50]")
            .set("WindowWidth", "[400]")
            .local(u8_3d),
    ));
    out.push(one(
        "mha-window-array-alone",
        "a.mha",
        base.clone().set("WindowCenter", "[40, 50]").local(u8_3d),
    ));
    out.push(one(
        "mha-window-array-and-scalar",
        "a.mha",
        base.clone()
            .set("WindowCenter", "[40, 50]")
            .set("WindowWidth", "400")
            .local(u8_3d),
    ));
    out.push(one(
        "mha-window-not-float",
        "a.mha",
        base.clone().set("WindowWidth", "wide").local(u8_3d),
    ));
}

/// `Exposures` and `ContentTimes`, one per timepoint.
fn metaimage_timepoint_cases(rng: &mut SampleRng, out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    let t4 = Mha::new(&[4, 3, 2, 3], "MET_UCHAR");
    let v4 = noise(rng, 72, 9);
    out.push(one(
        "mha-4d-exposures",
        "a.mha",
        t4.clone()
            .set("Exposures", "1 2 3")
            .set("ContentTimes", "120000 120001.500 120002")
            .local(&v4),
    ));
    out.push(one(
        "mha-4d-exposures-count",
        "a.mha",
        t4.clone().set("Exposures", "1 2").local(&v4),
    ));
    out.push(one(
        "mha-4d-content-times-count",
        "a.mha",
        t4.clone()
            .set("ContentTimes", "120000 120001 120002 120003")
            .local(&v4),
    ));
    out.push(one(
        "mha-3d-one-exposure",
        "a.mha",
        base.clone().set("Exposures", "5").local(u8_3d),
    ));
    out.push(one(
        "mha-3d-two-exposures",
        "a.mha",
        base.clone().set("Exposures", "5 6").local(u8_3d),
    ));
    out.push(one(
        "mha-bad-content-time",
        "a.mha",
        base.clone().set("ContentTimes", "250000").local(u8_3d),
    ));
}

/// Files that are no MetaImage header at all.
fn metaimage_not_header_cases(rng: &mut SampleRng, out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8]) {
    out.push(one("mha-not-a-header", "a.mha", noise(rng, 300, 256)));
    out.push(one(
        "mha-no-element-data-file",
        "a.mha",
        b"ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\n".to_vec(),
    ));
    out.push(one("mha-empty", "a.mha", Vec::new()));
    out.push(one(
        "mha-invalid-utf8",
        "a.mha",
        [
            b"ObjectType = Image\nComment = \xff\xfe\n".as_slice(),
            &base.local(u8_3d),
        ]
        .concat(),
    ));
}

/// Detached headers and their data files, and folders holding more than one image or none.
fn metaimage_detached_cases(out: &mut Vec<Case>, base: &Mha, u8_3d: &[u8], compressed: &[u8]) {
    let mut hdr = base.clone();
    hdr.data_file = "vol.raw".into();
    out.push(Case {
        name: "mhd-raw".into(),
        files: vec![
            ("vol.mhd".into(), hdr.header()),
            ("vol.raw".into(), u8_3d.to_vec()),
        ],
    });
    out.push(Case {
        name: "mhd-raw-truncated".into(),
        files: vec![
            ("vol.mhd".into(), hdr.header()),
            ("vol.raw".into(), u8_3d[..40].to_vec()),
        ],
    });
    let mut zhdr = base.clone().set("CompressedData", "True");
    zhdr.data_file = "vol.zraw".into();
    out.push(Case {
        name: "mhd-zraw".into(),
        files: vec![
            ("vol.mhd".into(), zhdr.header()),
            ("vol.zraw".into(), compressed.to_vec()),
        ],
    });
    let mut escape = base.clone();
    escape.data_file = "../vol.raw".into();
    out.push(Case {
        name: "mhd-data-outside".into(),
        files: vec![
            ("vol.mhd".into(), escape.header()),
            ("vol.raw".into(), u8_3d.to_vec()),
        ],
    });
    let mut other_name = base.clone();
    other_name.data_file = "other.raw".into();
    out.push(Case {
        name: "mhd-names-missing-raw".into(),
        files: vec![
            ("vol.mhd".into(), other_name.header()),
            ("vol.raw".into(), u8_3d.to_vec()),
        ],
    });
    out.push(Case {
        name: "two-mha".into(),
        files: vec![
            ("a.mha".into(), base.local(u8_3d)),
            ("b.mha".into(), base.local(u8_3d)),
        ],
    });
    out.push(Case {
        name: "mha-and-text".into(),
        files: vec![
            ("a.mha".into(), base.local(u8_3d)),
            ("notes.txt".into(), b"case notes\n".to_vec()),
        ],
    });
    out.push(one("text-only", "notes.txt", b"no image here\n".to_vec()));
}

/// A private scratch folder for the sample writers that only write to disk.
fn tempfile_dir() -> io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "gc-hotfolder-corpus-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// NIfTI

/// A NIfTI-1 single file (`n+1`, data at 352), with the fields the variations change.
#[derive(Clone)]
struct Nifti {
    dim: [i16; 8],
    intent_code: i16,
    datatype: i16,
    bitpix: i16,
    pixdim: [f32; 8],
    magic: [u8; 4],
}

impl Nifti {
    fn new(dims: &[i16], datatype: i16, bitpix: i16) -> Nifti {
        let mut dim = [1i16; 8];
        dim[0] = dims.len() as i16;
        for (i, d) in dims.iter().enumerate() {
            dim[i + 1] = *d;
        }
        Nifti {
            dim,
            intent_code: 0,
            datatype,
            bitpix,
            pixdim: [1.0, 0.8, 0.8, 2.0, 1.0, 1.0, 1.0, 1.0],
            magic: *b"n+1\0",
        }
    }

    fn bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        h[0..4].copy_from_slice(&348i32.to_le_bytes());
        h[38] = b'r';
        for (i, v) in self.dim.iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        h[68..70].copy_from_slice(&self.intent_code.to_le_bytes());
        h[70..72].copy_from_slice(&self.datatype.to_le_bytes());
        h[72..74].copy_from_slice(&self.bitpix.to_le_bytes());
        for (i, v) in self.pixdim.iter().enumerate() {
            h[76 + 4 * i..80 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        h[108..112].copy_from_slice(&352f32.to_le_bytes());
        h[112..116].copy_from_slice(&1f32.to_le_bytes());
        h[123] = 2 | 8;
        h[252..254].copy_from_slice(&1i16.to_le_bytes());
        h[344..348].copy_from_slice(&self.magic);
        h.extend_from_slice(data);
        h
    }
}

/// A NIfTI-2 single file (`n+2`, 540-byte header, data at 544).
fn nifti2(dims: &[i64], data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 544];
    h[0..4].copy_from_slice(&540i32.to_le_bytes());
    h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
    h[12..14].copy_from_slice(&2i16.to_le_bytes()); // uint8
    h[14..16].copy_from_slice(&8i16.to_le_bytes());
    let mut dim = [1i64; 8];
    dim[0] = dims.len() as i64;
    for (i, d) in dims.iter().enumerate() {
        dim[i + 1] = *d;
    }
    for (i, v) in dim.iter().enumerate() {
        h[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    for i in 0..8 {
        h[104 + 8 * i..112 + 8 * i].copy_from_slice(&1f64.to_le_bytes());
    }
    h[168..176].copy_from_slice(&544i64.to_le_bytes());
    h[176..184].copy_from_slice(&1f64.to_le_bytes());
    h.extend_from_slice(data);
    h
}

fn nifti_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    nifti_sample_cases(out)?;

    let data = noise(rng, 6 * 5 * 3, 7);
    let base = Nifti::new(&[6, 5, 3], 2, 8);
    nifti_type_cases(rng, out, &base, &data)?;
    nifti_damaged_cases(out, &base, &data)?;
    nifti_name_and_version_cases(out, &base, &data)?;
    Ok(())
}

/// The sample writer's gzipped NIfTI file.
fn nifti_sample_cases(out: &mut Vec<Case>) -> io::Result<()> {
    let tmp = tempfile_dir()?;
    samples::write_nifti(&tmp.join("a.nii.gz"), [6, 5, 3], true, SEED)?;
    out.push(one(
        "nifti-sample-gz",
        "ct.nii.gz",
        std::fs::read(tmp.join("a.nii.gz"))?,
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Dimensions, data types, compression and vector intents.
fn nifti_type_cases(
    rng: &mut SampleRng,
    out: &mut Vec<Case>,
    base: &Nifti,
    data: &[u8],
) -> io::Result<()> {
    out.push(one("nifti-u8", "a.nii", base.bytes(data)));
    out.push(one("nifti-u8-gz", "a.nii.gz", gzip(&base.bytes(data))?));
    out.push(one(
        "nifti-2d",
        "a.nii",
        Nifti::new(&[6, 5], 2, 8).bytes(&data[..30]),
    ));
    out.push(one(
        "nifti-4d",
        "a.nii",
        Nifti::new(&[3, 2, 2, 4], 2, 8).bytes(&noise(rng, 48, 5)),
    ));
    out.push(one(
        "nifti-5d",
        "a.nii",
        Nifti::new(&[2, 2, 2, 2, 2], 2, 8).bytes(&noise(rng, 32, 5)),
    ));
    out.push(one(
        "nifti-i16",
        "a.nii",
        Nifti::new(&[6, 5, 3], 4, 16).bytes(&noise(rng, 180, 256)),
    ));
    out.push(one(
        "nifti-f32",
        "a.nii",
        Nifti::new(&[6, 5, 3], 16, 32).bytes(&[0u8; 360]),
    ));
    out.push(one(
        "nifti-rgb24",
        "a.nii",
        Nifti::new(&[4, 3], 128, 24).bytes(&noise(rng, 36, 256)),
    ));
    let mut vector = Nifti::new(&[3, 2, 1, 1, 3], 16, 32);
    vector.intent_code = 1007;
    out.push(one(
        "nifti-vector-intent",
        "a.nii",
        vector.bytes(&[0u8; 72]),
    ));
    let mut vector4 = Nifti::new(&[3, 2, 2, 1, 4], 2, 8);
    vector4.intent_code = 1007;
    out.push(one(
        "nifti-vector-intent-3d",
        "a.nii",
        vector4.bytes(&[0u8; 48]),
    ));
    Ok(())
}

/// Header fields and data the reader tolerates or refuses.
fn nifti_damaged_cases(out: &mut Vec<Case>, base: &Nifti, data: &[u8]) -> io::Result<()> {
    let mut zero_dim = base.clone();
    zero_dim.dim[3] = 0;
    out.push(one(
        "nifti-dimension-zero",
        "a.nii",
        zero_dim.bytes(&data[..30]),
    ));
    let mut zero_pix = base.clone();
    zero_pix.pixdim[2] = 0.0;
    out.push(one("nifti-zero-pixdim", "a.nii", zero_pix.bytes(data)));
    let mut bad_magic = base.clone();
    bad_magic.magic = *b"xyz\0";
    out.push(one("nifti-bad-magic", "a.nii", bad_magic.bytes(data)));
    out.push(one(
        "nifti-truncated",
        "a.nii",
        cut(base.bytes(data), 352 + 40),
    ));
    out.push(one(
        "nifti-header-only",
        "a.nii",
        cut(base.bytes(data), 200),
    ));
    let gz = gzip(&base.bytes(data))?;
    out.push(one(
        "nifti-gz-truncated",
        "a.nii.gz",
        gz[..gz.len() / 2].to_vec(),
    ));
    Ok(())
}

/// Recognised by extension only; NIfTI-2 is not read.
fn nifti_name_and_version_cases(out: &mut Vec<Case>, base: &Nifti, data: &[u8]) -> io::Result<()> {
    out.push(one("nifti-wrong-extension", "a.nii1", base.bytes(data)));
    out.push(one("nifti-no-extension", "a", base.bytes(data)));
    out.push(one(
        "nifti-unknown-datatype",
        "a.nii",
        Nifti::new(&[6, 5, 3], 999, 8).bytes(data),
    ));
    out.push(one("nifti2-u8", "a.nii", nifti2(&[6, 5, 3], data)));
    out.push(one(
        "nifti2-u8-gz",
        "a.nii.gz",
        gzip(&nifti2(&[6, 5, 3], data))?,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// NRRD

fn nrrd(version: &str, lines: &[&str], data: &[u8]) -> Vec<u8> {
    let mut b = format!("{version}\n# written for the image corpus\n").into_bytes();
    for l in lines {
        b.extend_from_slice(l.as_bytes());
        b.push(b'\n');
    }
    b.push(b'\n');
    b.extend_from_slice(data);
    b
}

fn nrrd_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    let data = noise(rng, 6 * 5 * 3, 200);
    let raw3 = [
        "type: uint8",
        "dimension: 3",
        "sizes: 6 5 3",
        "spacings: 0.5 0.5 2",
        "encoding: raw",
    ];
    nrrd_good_cases(out, &data, &raw3)?;
    nrrd_data_cases(out, &data, &raw3);
    nrrd_header_cases(out, &data, &raw3);
    Ok(())
}

/// Raw and gzip data of 2 to 4 axes, and colour.
fn nrrd_good_cases(out: &mut Vec<Case>, data: &[u8], raw3: &[&str]) -> io::Result<()> {
    out.push(one("nrrd-raw-3d", "a.nrrd", nrrd("NRRD0004", raw3, data)));
    let gz3 = [
        "type: uint8",
        "dimension: 3",
        "sizes: 6 5 3",
        "encoding: gzip",
    ];
    out.push(one(
        "nrrd-gzip-3d",
        "a.nrrd",
        nrrd("NRRD0004", &gz3, &gzip(data)?),
    ));
    out.push(one(
        "nrrd-2d-short",
        "a.nrrd",
        nrrd(
            "NRRD0005",
            &[
                "type: short",
                "dimension: 2",
                "sizes: 5 3",
                "endian: little",
                "encoding: raw",
            ],
            &data[..30],
        ),
    ));
    out.push(one(
        "nrrd-rgb",
        "a.nrrd",
        nrrd(
            "NRRD0004",
            &[
                "type: uint8",
                "dimension: 3",
                "sizes: 3 5 4",
                "kinds: RGB-color domain domain",
                "encoding: raw",
            ],
            &data[..60],
        ),
    ));
    out.push(one(
        "nrrd-4d",
        "a.nrrd",
        nrrd(
            "NRRD0004",
            &[
                "type: uint8",
                "dimension: 4",
                "sizes: 3 2 2 5",
                "encoding: raw",
            ],
            &data[..60],
        ),
    ));
    Ok(())
}

/// Short data and detached headers.
fn nrrd_data_cases(out: &mut Vec<Case>, data: &[u8], raw3: &[&str]) {
    out.push(one(
        "nrrd-truncated",
        "a.nrrd",
        nrrd("NRRD0004", raw3, &data[..20]),
    ));
    out.push(one(
        "nrrd-detached",
        "a.nhdr",
        nrrd(
            "NRRD0004",
            &[
                "type: uint8",
                "dimension: 3",
                "sizes: 6 5 3",
                "encoding: raw",
                "data file: a.raw",
            ],
            &[],
        ),
    ));
    out.push(Case {
        name: "nrrd-detached-with-data".into(),
        files: vec![
            (
                "a.nhdr".into(),
                nrrd(
                    "NRRD0004",
                    &[
                        "type: uint8",
                        "dimension: 3",
                        "sizes: 6 5 3",
                        "encoding: raw",
                        "datafile: a.raw",
                    ],
                    &[],
                ),
            ),
            ("a.raw".into(), data.to_vec()),
        ],
    });
}

/// Versions and header fields the reader refuses.
fn nrrd_header_cases(out: &mut Vec<Case>, data: &[u8], raw3: &[&str]) {
    out.push(one(
        "nrrd-version-9",
        "a.nrrd",
        nrrd("NRRD0009", raw3, data),
    ));
    out.push(one(
        "nrrd-no-type",
        "a.nrrd",
        nrrd(
            "NRRD0004",
            &["dimension: 3", "sizes: 6 5 3", "encoding: raw"],
            data,
        ),
    ));
    out.push(one(
        "nrrd-zero-spacing",
        "a.nrrd",
        nrrd(
            "NRRD0004",
            &[
                "type: uint8",
                "dimension: 3",
                "sizes: 6 5 3",
                "spacings: 0.5 0 2",
                "encoding: raw",
            ],
            data,
        ),
    ));
    out.push(one("nrrd-magic-only", "a.nrrd", b"NRRD0004\n".to_vec()));
}

// ---------------------------------------------------------------------------------------------
// DICOM

/// One DICOM Part 10 file in explicit VR little endian: elements by tag, written in tag order.
#[derive(Clone)]
struct Dicom {
    elements: std::collections::BTreeMap<u32, ([u8; 2], Vec<u8>)>,
    preamble: bool,
}

const CT: &str = samples::CT_IMAGE_STORAGE;
const WSI: &str = "1.2.840.10008.5.1.4.1.1.77.1.6";

impl Dicom {
    fn set(mut self, tag: u32, vr: &[u8; 2], value: &[u8]) -> Dicom {
        let mut v = value.to_vec();
        if v.len() % 2 == 1 {
            v.push(if matches!(vr, b"UI" | b"OB" | b"OW") {
                0
            } else {
                b' '
            });
        }
        self.elements.insert(tag, (*vr, v));
        self
    }

    fn text(self, tag: u32, vr: &[u8; 2], value: &str) -> Dicom {
        self.set(tag, vr, value.as_bytes())
    }

    fn us(self, tag: u32, value: u16) -> Dicom {
        self.set(tag, b"US", &value.to_le_bytes())
    }

    fn without(mut self, tag: u32) -> Dicom {
        self.elements.remove(&tag);
        self
    }

    /// A grayscale image of `rows × cols × frames` 16-bit pixels of one series.
    fn image(
        ids: &DicomSeriesIds,
        instance: u32,
        rows: u16,
        cols: u16,
        frames: u32,
        rng: &mut SampleRng,
    ) -> Dicom {
        let sop = format!("{}.{instance}", ids.series_instance_uid);
        let pixels = noise(
            rng,
            usize::from(rows) * usize::from(cols) * 2 * frames as usize,
            16,
        );
        let mut d = Dicom {
            elements: Default::default(),
            preamble: true,
        }
        .text(0x0002_0002, b"UI", CT)
        .text(0x0002_0003, b"UI", &sop)
        .text(0x0002_0010, b"UI", samples::EXPLICIT_VR_LITTLE_ENDIAN)
        .text(0x0008_0016, b"UI", CT)
        .text(0x0008_0018, b"UI", &sop)
        .text(0x0008_0020, b"DA", &ids.study_date)
        .text(0x0008_0060, b"CS", &ids.modality)
        .text(0x0010_0010, b"PN", &ids.patient_name)
        .text(0x0010_0020, b"LO", &ids.patient_id)
        .text(0x0020_000D, b"UI", &ids.study_instance_uid)
        .text(0x0020_000E, b"UI", &ids.series_instance_uid)
        .text(0x0020_0011, b"IS", &ids.series_number.to_string())
        .text(0x0020_0013, b"IS", &instance.to_string())
        .text(0x0020_0032, b"DS", &format!("0\\0\\{}", 2 * instance))
        .text(0x0020_0037, b"DS", "1\\0\\0\\0\\1\\0")
        .us(0x0028_0002, 1)
        .text(0x0028_0004, b"CS", "MONOCHROME2")
        .us(0x0028_0010, rows)
        .us(0x0028_0011, cols)
        .text(0x0028_0030, b"DS", "0.7\\0.7")
        .us(0x0028_0100, 16)
        .us(0x0028_0101, 12)
        .us(0x0028_0102, 11)
        .us(0x0028_0103, 0)
        .set(0x7FE0_0010, b"OW", &pixels);
        if frames > 1 {
            d = d.text(0x0028_0008, b"IS", &frames.to_string());
        }
        d
    }

    /// Make the pixels 8-bit RGB (`frames` frames).
    fn rgb(self, rows: u16, cols: u16, frames: u32, rng: &mut SampleRng) -> Dicom {
        let n = usize::from(rows) * usize::from(cols) * 3 * frames as usize;
        self.us(0x0028_0002, 3)
            .text(0x0028_0004, b"CS", "RGB")
            .us(0x0028_0006, 0)
            .us(0x0028_0100, 8)
            .us(0x0028_0101, 8)
            .us(0x0028_0102, 7)
            .set(0x7FE0_0010, b"OB", &noise(rng, n, 256))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut meta = Vec::new();
        let mut body = Vec::new();
        for (tag, (vr, value)) in &self.elements {
            let buf = if tag >> 16 == 2 { &mut meta } else { &mut body };
            buf.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
            buf.extend_from_slice(&((tag & 0xffff) as u16).to_le_bytes());
            buf.extend_from_slice(vr);
            if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
                buf.extend_from_slice(&[0, 0]);
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            } else {
                buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
            }
            buf.extend_from_slice(value);
        }
        let mut out = Vec::with_capacity(132 + meta.len() + body.len() + 12);
        if self.preamble {
            out.extend_from_slice(&[0u8; 128]);
            out.extend_from_slice(b"DICM");
            out.extend_from_slice(&[0x02, 0, 0, 0]);
            out.extend_from_slice(b"UL");
            out.extend_from_slice(&4u16.to_le_bytes());
            out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
            out.extend_from_slice(&meta);
        }
        out.extend_from_slice(&body);
        out
    }
}

fn series(name: &str, files: Vec<Dicom>, edit: impl Fn(usize, Dicom) -> Dicom) -> Case {
    Case {
        name: name.into(),
        files: files
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("slice{i:02}.dcm"), edit(i, d).bytes()))
            .collect(),
    }
}

/// `n` grey single-frame slices of a series, in instance order.
fn slices(ids: &DicomSeriesIds, n: u32, rng: &mut SampleRng) -> Vec<Dicom> {
    (1..=n)
        .map(|i| Dicom::image(ids, i, 6, 5, 1, rng))
        .collect()
}

/// A series edit that changes nothing.
fn same(_: usize, d: Dicom) -> Dicom {
    d
}

/// 4-D: `n` slices of two per timepoint, each with its temporal position, content time and exposure.
fn four_d(ids: &DicomSeriesIds, n: u32, rng: &mut SampleRng) -> Vec<Dicom> {
    (0..n)
        .map(|i| {
            let t = i / 2 + 1;
            Dicom::image(ids, i + 1, 6, 5, 1, rng)
                .set(0x0020_9128, b"UL", &t.to_le_bytes())
                .text(0x0020_0032, b"DS", &format!("0\\0\\{}", 2 * (i % 2)))
                .text(0x0008_0033, b"TM", &format!("12000{t}"))
                .text(0x0018_1152, b"IS", &(10 * t).to_string())
        })
        .collect()
}

fn dicom_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    dicom_sample_cases(out)?;

    let ids = DicomSeriesIds::new(SEED + 1);
    dicom_layout_cases(rng, out, &ids);
    dicom_identifier_cases(rng, out, &ids);
    dicom_pixel_data_cases(rng, out, &ids);
    dicom_geometry_cases(rng, out, &ids);
    dicom_field_cases(rng, out, &ids);
    dicom_mixed_cases(rng, out, &ids);
    dicom_pixel_format_cases(rng, out, &ids);
    dicom_4d_cases(rng, out, &ids);
    out.push(Case {
        name: "dicom-not-dicom".into(),
        files: vec![("a.dcm".into(), noise(rng, 400, 256))],
    });
    Ok(())
}

/// The sample writer's CT series.
fn dicom_sample_cases(out: &mut Vec<Case>) -> io::Result<()> {
    let ids = DicomSeriesIds::new(SEED);
    let tmp = tempfile_dir()?;
    let written = samples::write_dicom_series(&tmp, 3, 6, 5, &ids, SEED)?;
    let mut files = Vec::new();
    for p in &written {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| invalid("a sample without a name"))?;
        files.push((name, std::fs::read(p)?));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    out.push(Case {
        name: "dicom-sample-series".into(),
        files,
    });
    Ok(())
}

/// Single files, series, multi-frame files and files without the Part 10 preamble.
fn dicom_layout_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series("dicom-single", slices(ids, 1, rng), same));
    out.push(series("dicom-series", slices(ids, 4, rng), same));
    out.push(series(
        "dicom-multiframe",
        vec![Dicom::image(ids, 1, 6, 5, 4, rng)],
        same,
    ));
    out.push(series(
        "dicom-multiframe-truncated",
        vec![Dicom::image(ids, 1, 6, 5, 4, rng)],
        |_, d| {
            let pixels = d.elements[&0x7FE0_0010].1.clone();
            d.set(0x7FE0_0010, b"OW", &pixels[..pixels.len() / 2])
        },
    ));
    out.push(series(
        "dicom-no-preamble",
        slices(ids, 2, rng),
        |_, mut d| {
            d.preamble = false;
            d
        },
    ));
}

/// The identifiers that group the files into series and order their slices.
fn dicom_identifier_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series("dicom-no-sop-class", slices(ids, 2, rng), |_, d| {
        d.without(0x0008_0016)
    }));
    out.push(series("dicom-no-study-uid", slices(ids, 1, rng), |_, d| {
        d.without(0x0020_000D)
    }));
    out.push(series(
        "dicom-no-series-uid",
        slices(ids, 1, rng),
        |_, d| d.without(0x0020_000E),
    ));
    out.push(series(
        "dicom-no-instance-number",
        slices(ids, 3, rng),
        |_, d| d.without(0x0020_0013),
    ));
    out.push(series(
        "dicom-single-no-instance-number",
        slices(ids, 1, rng),
        |_, d| d.without(0x0020_0013),
    ));
}

/// Missing, short or cut pixel data, and no image size.
fn dicom_pixel_data_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series(
        "dicom-no-pixel-data",
        slices(ids, 1, rng),
        |_, d| d.without(0x7FE0_0010),
    ));
    out.push(series(
        "dicom-truncated-pixels",
        slices(ids, 2, rng),
        |_, d| d.set(0x7FE0_0010, b"OW", &[0u8; 10]),
    ));
    let cut_file = slices(ids, 1, rng)[0].bytes();
    out.push(Case {
        name: "dicom-cut-in-header".into(),
        files: vec![("a.dcm".into(), cut_file[..300].to_vec())],
    });
    out.push(series("dicom-no-rows", slices(ids, 1, rng), |_, d| {
        d.without(0x0028_0010)
    }));
}

/// Pixel spacings and slice positions.
fn dicom_geometry_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series(
        "dicom-zero-pixel-spacing",
        slices(ids, 2, rng),
        |_, d| d.text(0x0028_0030, b"DS", "0\\0.7"),
    ));
    out.push(series(
        "dicom-no-pixel-spacing",
        slices(ids, 2, rng),
        |_, d| d.without(0x0028_0030),
    ));
    out.push(series(
        "dicom-same-position",
        slices(ids, 3, rng),
        |_, d| d.text(0x0020_0032, b"DS", "0\\0\\0"),
    ));
}

/// Patient fields, photometric interpretation, rescaling, windows and the whole-slide SOP class.
fn dicom_field_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series(
        "dicom-patient-metadata",
        slices(ids, 2, rng),
        |_, d| {
            d.text(0x0010_0030, b"DA", "2020-01-01")
                .text(0x0010_0040, b"CS", "x")
                .text(0x0010_0020, b"LO", "A\\B")
        },
    ));
    out.push(series("dicom-monochrome1", slices(ids, 2, rng), |_, d| {
        d.text(0x0028_0004, b"CS", "MONOCHROME1")
    }));
    out.push(series("dicom-rescaled", slices(ids, 2, rng), |_, d| {
        d.text(0x0028_1052, b"DS", "-1024")
            .text(0x0028_1053, b"DS", "1")
    }));
    out.push(series(
        "dicom-window-arrays",
        slices(ids, 2, rng),
        |_, d| {
            d.text(0x0028_1050, b"DS", "40\\50")
                .text(0x0028_1051, b"DS", "400")
        },
    ));
    out.push(series(
        "dicom-wsi-sop-class",
        slices(ids, 1, rng),
        |_, d| d.text(0x0008_0016, b"UI", WSI),
    ));
}

/// Folders holding two series, or slices of different sizes.
fn dicom_mixed_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    let other = DicomSeriesIds::new(SEED + 2);
    let mut two = slices(ids, 2, rng);
    two.extend((1..=2).map(|i| Dicom::image(&other, i, 6, 5, 1, rng)));
    out.push(series("dicom-two-series", two, same));
    let mut mixed = slices(ids, 2, rng);
    mixed.push(Dicom::image(ids, 3, 4, 5, 1, rng));
    out.push(series("dicom-mixed-sizes", mixed, same));
}

/// Colour pixels, single- and multi-frame, and 8-bit grey pixels.
fn dicom_pixel_format_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series("dicom-rgb-single", vec![rgb(ids, 1, 1, rng)], same));
    out.push(series(
        "dicom-rgb-series",
        (1..=3).map(|i| rgb(ids, i, 1, rng)).collect(),
        same,
    ));
    out.push(series(
        "dicom-rgb-multiframe",
        vec![rgb(ids, 1, 3, rng).text(0x0028_0008, b"IS", "3")],
        same,
    ));
    out.push(series(
        "dicom-rgb-one-frame",
        vec![rgb(ids, 1, 1, rng).text(0x0028_0008, b"IS", "1")],
        same,
    ));
    out.push(series("dicom-8bit", slices(ids, 2, rng), |_, d| {
        d.us(0x0028_0100, 8)
            .us(0x0028_0101, 8)
            .us(0x0028_0102, 7)
            .set(0x7FE0_0010, b"OW", &[3u8; 30])
    }));
}

/// 4-D series: timepoints, and the content time and exposure each needs.
fn dicom_4d_cases(rng: &mut SampleRng, out: &mut Vec<Case>, ids: &DicomSeriesIds) {
    out.push(series("dicom-4d", four_d(ids, 4, rng), same));
    out.push(series("dicom-4d-uneven", four_d(ids, 3, rng), same));
    out.push(series(
        "dicom-4d-no-content-time",
        four_d(ids, 4, rng),
        |_, d| d.without(0x0008_0033),
    ));
    out.push(series(
        "dicom-4d-no-exposure",
        four_d(ids, 4, rng),
        |_, d| d.without(0x0018_1152),
    ));
    out.push(series("dicom-4d-one-timepoint", four_d(ids, 2, rng), same));
    out.push(series(
        "dicom-4d-bad-content-time",
        four_d(ids, 4, rng),
        |_, d| d.text(0x0008_0033, b"TM", "99"),
    ));
}

fn rgb(ids: &DicomSeriesIds, instance: u32, frames: u32, rng: &mut SampleRng) -> Dicom {
    Dicom::image(ids, instance, 4, 5, 1, rng).rgb(4, 5, frames, rng)
}

// ---------------------------------------------------------------------------------------------
// TIFF

/// A one-strip TIFF per page, classic layout; `entries` are (tag, type, values) with SHORT = 3,
/// LONG = 4, RATIONAL = 5 (pairs of u32).
struct TiffPage {
    entries: Vec<(u16, u16, Vec<u32>)>,
    pixels: Vec<u8>,
}

fn tiff_page(width: u32, height: u32, samples: u32, photometric: u32, pixels: Vec<u8>) -> TiffPage {
    TiffPage {
        entries: vec![
            (256, 4, vec![width]),
            (257, 4, vec![height]),
            (258, 3, vec![8; samples as usize]),
            (259, 3, vec![1]),
            (262, 3, vec![photometric]),
            (273, 4, vec![0]),
            (277, 3, vec![samples]),
            (278, 4, vec![height]),
            (279, 4, vec![0]),
            (282, 5, vec![72, 1]),
            (283, 5, vec![72, 1]),
            (296, 3, vec![2]),
        ],
        pixels,
    }
}

impl TiffPage {
    fn set(mut self, tag: u16, typ: u16, values: Vec<u32>) -> TiffPage {
        self.entries.retain(|e| e.0 != tag);
        self.entries.push((tag, typ, values));
        self.entries.sort_by_key(|e| e.0);
        self
    }

    fn without(mut self, tag: u16) -> TiffPage {
        self.entries.retain(|e| e.0 != tag);
        self
    }
}

fn tiff(pages: &[TiffPage], big_endian: bool) -> Vec<u8> {
    let order = ByteOrder { big_endian };
    let mut out: Vec<u8> = Vec::new();
    out.extend_from_slice(if big_endian { b"MM" } else { b"II" });
    out.extend_from_slice(&order.u16(42));
    out.extend_from_slice(&order.u32(8));
    for (p, page) in pages.iter().enumerate() {
        write_tiff_page(&mut out, page, order, p + 1 < pages.len());
        if out.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}

/// How a TIFF writes its numbers.
#[derive(Clone, Copy)]
struct ByteOrder {
    big_endian: bool,
}

impl ByteOrder {
    fn u16(self, v: u16) -> [u8; 2] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u32(self, v: u32) -> [u8; 4] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
}

/// Append one page at the end of `out`: its IFD, the values that do not fit in it, its pixels.
/// The strip offset and byte count entries are filled in here; `more` links the next page.
fn write_tiff_page(out: &mut Vec<u8>, page: &TiffPage, order: ByteOrder, more: bool) {
    let ifd_at = out.len() as u32;
    let n = page.entries.len() as u32;
    let mut extra_at = ifd_at + 2 + 12 * n + 4;
    let mut ifd = Vec::new();
    let mut extra = Vec::new();
    ifd.extend_from_slice(&order.u16(n as u16));
    let pixels_at = extra_at
        + page
            .entries
            .iter()
            .map(|(_, typ, v)| {
                let size = if *typ == 3 { 2 } else { 4 } * v.len() as u32;
                if size > 4 { size } else { 0 }
            })
            .sum::<u32>();
    for (tag, typ, values) in &page.entries {
        let values: Vec<u32> = match tag {
            273 => vec![pixels_at],
            279 => vec![page.pixels.len() as u32],
            _ => values.clone(),
        };
        let count = if *typ == 5 {
            values.len() as u32 / 2
        } else {
            values.len() as u32
        };
        let mut bytes = Vec::new();
        for v in &values {
            if *typ == 3 {
                bytes.extend_from_slice(&order.u16(*v as u16));
            } else {
                bytes.extend_from_slice(&order.u32(*v));
            }
        }
        ifd.extend_from_slice(&order.u16(*tag));
        ifd.extend_from_slice(&order.u16(*typ));
        ifd.extend_from_slice(&order.u32(count));
        if bytes.len() <= 4 {
            bytes.resize(4, 0);
            ifd.extend_from_slice(&bytes);
        } else {
            ifd.extend_from_slice(&order.u32(extra_at));
            extra_at += bytes.len() as u32;
            extra.extend_from_slice(&bytes);
        }
    }
    let next = if more {
        pixels_at + page.pixels.len() as u32
    } else {
        0
    };
    ifd.extend_from_slice(&order.u32(next));
    out.extend_from_slice(&ifd);
    out.extend_from_slice(&extra);
    out.extend_from_slice(&page.pixels);
}

/// The grey 8×6 page most TIFF cases vary.
fn gray_page(rng: &mut SampleRng) -> TiffPage {
    tiff_page(8, 6, 1, 1, noise(rng, 48, 256))
}

fn tiff_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    tiff_sample_cases(out)?;
    tiff_layout_cases(rng, out);
    tiff_resolution_cases(rng, out);
    tiff_photometric_cases(rng, out);
    tiff_damaged_cases(rng, out);
    Ok(())
}

/// The sample writer's TIFF file.
fn tiff_sample_cases(out: &mut Vec<Case>) -> io::Result<()> {
    let tmp = tempfile_dir()?;
    samples::write_tiff(&tmp.join("a.tif"), 9, 7, SEED)?;
    out.push(one(
        "tiff-sample",
        "a.tif",
        std::fs::read(tmp.join("a.tif"))?,
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Byte orders, colour spaces and pages.
fn tiff_layout_cases(rng: &mut SampleRng, out: &mut Vec<Case>) {
    out.push(one("tiff-gray", "a.tif", tiff(&[gray_page(rng)], false)));
    out.push(one(
        "tiff-gray-big-endian",
        "a.tiff",
        tiff(&[gray_page(rng)], true),
    ));
    out.push(one(
        "tiff-rgb",
        "a.tif",
        tiff(&[tiff_page(8, 6, 3, 2, noise(rng, 144, 256))], false),
    ));
    out.push(one(
        "tiff-rgba",
        "a.tif",
        tiff(
            &[tiff_page(8, 6, 4, 2, noise(rng, 192, 256)).set(338, 3, vec![2])],
            false,
        ),
    ));
    out.push(one(
        "tiff-pyramid",
        "a.tif",
        tiff(
            &[
                gray_page(rng),
                tiff_page(4, 3, 1, 1, noise(rng, 12, 256)),
                tiff_page(2, 2, 1, 1, noise(rng, 4, 256)),
            ],
            false,
        ),
    ));
}

/// Resolutions and resolution units, which the importer requires.
fn tiff_resolution_cases(rng: &mut SampleRng, out: &mut Vec<Case>) {
    out.push(one(
        "tiff-no-resolution",
        "a.tif",
        tiff(&[gray_page(rng).without(282).without(283)], false),
    ));
    out.push(one(
        "tiff-resolution-unit-none",
        "a.tif",
        tiff(&[gray_page(rng).set(296, 3, vec![1])], false),
    ));
    out.push(one(
        "tiff-resolution-centimeter",
        "a.tif",
        tiff(&[gray_page(rng).set(296, 3, vec![3])], false),
    ));
    out.push(one(
        "tiff-zero-resolution",
        "a.tif",
        tiff(&[gray_page(rng).set(282, 5, vec![0, 1])], false),
    ));
    out.push(one(
        "tiff-no-resolution-unit",
        "a.tif",
        tiff(&[gray_page(rng).without(296)], false),
    ));
}

/// Photometric interpretations and sample value ranges.
fn tiff_photometric_cases(rng: &mut SampleRng, out: &mut Vec<Case>) {
    out.push(one(
        "tiff-palette",
        "a.tif",
        tiff(&[gray_page(rng).set(262, 3, vec![3])], false),
    ));
    out.push(one(
        "tiff-white-is-zero",
        "a.tif",
        tiff(&[gray_page(rng).set(262, 3, vec![0])], false),
    ));
    out.push(one(
        "tiff-min-max-sample",
        "a.tif",
        tiff(
            &[gray_page(rng).set(280, 3, vec![0]).set(281, 3, vec![3])],
            false,
        ),
    ));
}

/// Cut files and another extension.
fn tiff_damaged_cases(rng: &mut SampleRng, out: &mut Vec<Case>) {
    let whole = tiff(&[gray_page(rng)], false);
    out.push(one(
        "tiff-truncated-pixels",
        "a.tif",
        whole[..whole.len() - 20].to_vec(),
    ));
    out.push(one("tiff-truncated-ifd", "a.tif", whole[..40].to_vec()));
    out.push(one("tiff-header-only", "a.tif", whole[..8].to_vec()));
    out.push(one("tiff-other-extension", "scan.dat", whole.clone()));
}

// ---------------------------------------------------------------------------------------------
// PNG, JPEG and other 2-D formats

fn png(
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
    pixels: &[u8],
) -> io::Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(pixels, width, height, color)
        .map_err(invalid)?;
    Ok(out)
}

fn jpeg(
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
    pixels: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(pixels, width, height, color)
        .map_err(invalid)?;
    Ok(out)
}

fn flat_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    use image::ExtendedColorType as C;
    let (w, h) = (9u32, 7u32);
    let px = |rng: &mut SampleRng, channels: u32| noise(rng, (w * h * channels) as usize, 256);
    let gray_png = png(w, h, C::L8, &px(rng, 1))?;
    out.push(one("png-gray", "a.png", gray_png.clone()));
    out.push(one("png-rgb", "a.png", png(w, h, C::Rgb8, &px(rng, 3))?));
    out.push(one("png-rgba", "a.png", png(w, h, C::Rgba8, &px(rng, 4))?));
    out.push(one(
        "png-gray-alpha",
        "a.png",
        png(w, h, C::La8, &px(rng, 2))?,
    ));
    out.push(one("png-gray16", "a.png", png(w, h, C::L16, &px(rng, 2))?));
    out.push(one(
        "png-truncated",
        "a.png",
        gray_png[..gray_png.len() - 30].to_vec(),
    ));
    out.push(one("png-signature-only", "a.png", gray_png[..8].to_vec()));
    let mut bad_crc = gray_png.clone();
    let at = bad_crc.len() / 2;
    bad_crc[at] ^= 0xff;
    out.push(one("png-corrupt-data", "a.png", bad_crc));
    out.push(one("png-named-jpg", "a.jpg", gray_png.clone()));
    let rgb_jpeg = jpeg(w, h, C::Rgb8, &px(rng, 3))?;
    out.push(one("jpeg-rgb", "a.jpg", rgb_jpeg.clone()));
    out.push(one("jpeg-gray", "a.jpeg", jpeg(w, h, C::L8, &px(rng, 1))?));
    out.push(one(
        "jpeg-truncated",
        "a.jpg",
        rgb_jpeg[..rgb_jpeg.len() / 2].to_vec(),
    ));
    out.push(one("jpeg-header-only", "a.jpg", rgb_jpeg[..20].to_vec()));
    out.push(one(
        "gif",
        "a.gif",
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec(),
    ));
    let mut bmp = b"BM".to_vec();
    let row = 4u32; // 1 pixel × 3 bytes, padded
    let size = 54 + row;
    bmp.extend_from_slice(&size.to_le_bytes());
    bmp.extend_from_slice(&[0, 0, 0, 0]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&1i32.to_le_bytes());
    bmp.extend_from_slice(&1i32.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&[0u8; 24]);
    bmp.extend_from_slice(&[10, 20, 30, 0]);
    out.push(one("bmp", "a.bmp", bmp));
    out.push(Case {
        name: "png-and-jpeg".into(),
        files: vec![
            ("a.png".into(), gray_png.clone()),
            ("b.jpg".into(), rgb_jpeg.clone()),
        ],
    });
    out.push(Case {
        name: "png-and-broken-png".into(),
        files: vec![
            ("a.png".into(), gray_png.clone()),
            ("b.png".into(), gray_png[..40].to_vec()),
        ],
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ZIP archives (the platform unpacks them before its importer runs)

fn zip(entries: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        if name.ends_with('/') {
            z.add_directory(*name, options).map_err(invalid)?;
        } else {
            z.start_file(*name, options).map_err(invalid)?;
            z.write_all(bytes)?;
        }
    }
    Ok(z.finish().map_err(invalid)?.into_inner())
}

fn zip_cases(rng: &mut SampleRng, out: &mut Vec<Case>) -> io::Result<()> {
    let u8_3d = noise(rng, 6 * 5 * 3, 200);
    let mha = Mha::new(&[6, 5, 3], "MET_UCHAR").local(&u8_3d[..]);
    let mut hdr = Mha::new(&[6, 5, 3], "MET_UCHAR");
    hdr.data_file = "vol.raw".into();
    let mhd = hdr.header();
    let ids = DicomSeriesIds::new(SEED + 7);
    let dcm: Vec<Vec<u8>> = (1..=3)
        .map(|i| Dicom::image(&ids, i, 6, 5, 1, rng).bytes())
        .collect();
    zip_image_cases(out, &u8_3d, &mha, &mhd, &dcm)?;
    zip_mixed_cases(out, &u8_3d, &mha, &mhd)?;
    Ok(())
}

/// Archives of one image, in folders, split over folders and nested.
fn zip_image_cases(
    out: &mut Vec<Case>,
    u8_3d: &[u8],
    mha: &[u8],
    mhd: &[u8],
    dcm: &[Vec<u8>],
) -> io::Result<()> {
    out.push(one("zip-mha", "case.zip", zip(&[("ct.mha", mha)])?));
    out.push(one(
        "zip-mhd-raw",
        "case.zip",
        zip(&[("vol.mhd", mhd), ("vol.raw", u8_3d)])?,
    ));
    out.push(one(
        "zip-dicom-series",
        "series.zip",
        zip(&[
            ("a.dcm", &dcm[0][..]),
            ("b.dcm", &dcm[1][..]),
            ("c.dcm", &dcm[2][..]),
        ])?,
    ));
    out.push(one(
        "zip-dicom-in-folder",
        "series.zip",
        zip(&[
            ("study/", &[][..]),
            ("study/a.dcm", &dcm[0][..]),
            ("study/b.dcm", &dcm[1][..]),
            ("study/c.dcm", &dcm[2][..]),
        ])?,
    ));
    out.push(one(
        "zip-dicom-split-folders",
        "series.zip",
        zip(&[
            ("one/a.dcm", &dcm[0][..]),
            ("two/b.dcm", &dcm[1][..]),
            ("two/c.dcm", &dcm[2][..]),
        ])?,
    ));
    out.push(one(
        "zip-mhd-raw-split-folders",
        "case.zip",
        zip(&[("h/vol.mhd", mhd), ("d/vol.raw", u8_3d)])?,
    ));
    let inner = zip(&[("ct.mha", mha)])?;
    out.push(one(
        "zip-in-zip",
        "outer.zip",
        zip(&[("inner.zip", &inner[..])])?,
    ));
    Ok(())
}

/// Archives of several images or none, damaged ones, and archives beside other uploads.
fn zip_mixed_cases(out: &mut Vec<Case>, u8_3d: &[u8], mha: &[u8], mhd: &[u8]) -> io::Result<()> {
    out.push(one(
        "zip-two-images",
        "case.zip",
        zip(&[("a.mha", mha), ("b.mha", mha)])?,
    ));
    out.push(one(
        "zip-image-and-text",
        "case.zip",
        zip(&[("a.mha", mha), ("readme.txt", &b"hello"[..])])?,
    ));
    out.push(one("zip-empty", "case.zip", zip(&[][..])?));
    out.push(one(
        "zip-text-only",
        "case.zip",
        zip(&[("readme.txt", &b"hello"[..])])?,
    ));
    let whole = zip(&[("ct.mha", mha)])?;
    out.push(one(
        "zip-truncated",
        "case.zip",
        whole[..whole.len() / 2].to_vec(),
    ));
    out.push(one("zip-named-otherwise", "case.bin", whole.clone()));
    out.push(Case {
        name: "zip-and-image".into(),
        files: vec![
            ("case.zip".into(), whole.clone()),
            ("other.mha".into(), mha.to_vec()),
        ],
    });
    out.push(Case {
        name: "zip-with-raw-for-outside-mhd".into(),
        files: vec![
            ("vol.mhd".into(), mhd.to_vec()),
            ("data.zip".into(), zip(&[("vol.raw", u8_3d)])?),
        ],
    });
    Ok(())
}

fn cases() -> io::Result<Vec<Case>> {
    let mut rng = SampleRng::new(SEED);
    let mut out = Vec::new();
    metaimage_cases(&mut rng, &mut out)?;
    nifti_cases(&mut rng, &mut out)?;
    nrrd_cases(&mut rng, &mut out)?;
    dicom_cases(&mut rng, &mut out)?;
    tiff_cases(&mut rng, &mut out)?;
    flat_cases(&mut rng, &mut out)?;
    zip_cases(&mut rng, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_reproducible() {
        let a = cases().unwrap();
        let b = cases().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.name, y.name);
            assert_eq!(x.files, y.files, "{}", x.name);
        }
        let mut names: Vec<&str> = a.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), a.len(), "case names are unique");
    }
}
