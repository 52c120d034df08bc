//! Tiny but real medical images for tests, the demo and benchmarks: each file is what the format's
//! reader expects (MetaImage, NIfTI, DICOM, TIFF), not just a plausible extension.
//!
//! Everything is generated from a `seed`, so a test can write a sample, send it through the whole
//! pipeline and assert on what the importer reports, without any binary fixture in the repository.
//! Writers stream to disk row by row, so large samples (benchmarks) keep memory flat.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// Voxel spacing written into the volumetric samples, in mm (x, y, z).
pub const SAMPLE_SPACING_MM: [f64; 3] = [0.75, 0.75, 1.5];

/// A small deterministic generator (splitmix64 seeding, xorshift64* stream): fast enough to fill
/// gigabytes, and stable across platforms and releases, unlike a library RNG.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64) -> Self {
        // A zero state would make xorshift emit zeros forever.
        SampleRng(splitmix64(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`); the tiny modulo bias does not matter for sample data.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn check_dims(dims: [u32; 3]) -> io::Result<()> {
    if dims.contains(&0) {
        return Err(invalid(
            "every dimension of a sample image must be at least 1",
        ));
    }
    Ok(())
}

/// Streams a synthetic uint8 volume: a bright ball in a darker background with noise, so that a
/// viewer shows something recognisable.
fn write_phantom_u8(out: &mut impl Write, dims: [u32; 3], seed: u64) -> io::Result<()> {
    let [nx, ny, nz] = dims;
    let mut rng = SampleRng::new(seed);
    let (cx, cy, cz) = (nx as f64 / 2.0, ny as f64 / 2.0, nz as f64 / 2.0);
    let r2 = {
        let r = (nx.min(ny) as f64 / 3.0).max(1.0);
        r * r
    };
    let mut row = vec![0u8; nx as usize];
    for z in 0..nz {
        for y in 0..ny {
            for (x, v) in row.iter_mut().enumerate() {
                let dx = x as f64 - cx;
                let dy = y as f64 - cy;
                let dz = (z as f64 - cz) * 2.0;
                let base: u64 = if dx * dx + dy * dy + dz * dz <= r2 {
                    180
                } else {
                    40
                };
                *v = (base + rng.below(40)) as u8;
            }
            out.write_all(&row)?;
        }
    }
    Ok(())
}

fn metaimage_header(dims: [u32; 3], element_data_file: &str) -> String {
    let [sx, sy, sz] = SAMPLE_SPACING_MM;
    format!(
        "ObjectType = Image\n\
         NDims = 3\n\
         BinaryData = True\n\
         BinaryDataByteOrderMSB = False\n\
         CompressedData = False\n\
         TransformMatrix = 1 0 0 0 1 0 0 0 1\n\
         Offset = -10 -20 30.5\n\
         CenterOfRotation = 0 0 0\n\
         AnatomicalOrientation = RAI\n\
         ElementSpacing = {sx} {sy} {sz}\n\
         DimSize = {} {} {}\n\
         ElementType = MET_UCHAR\n\
         ElementDataFile = {element_data_file}\n",
        dims[0], dims[1], dims[2]
    )
}

/// Write a single-file MetaImage (`ElementDataFile = LOCAL`), uint8, `dims` = `[width, height,
/// depth]` (MetaImage `DimSize` order), with spacing [`SAMPLE_SPACING_MM`] and an origin.
pub fn write_mha(path: &Path, dims: [u32; 3], seed: u64) -> io::Result<()> {
    check_dims(dims)?;
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(metaimage_header(dims, "LOCAL").as_bytes())?;
    write_phantom_u8(&mut out, dims, seed)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Write a detached MetaImage: `dir/stem.mhd` (the header) referencing `dir/stem.raw` (the voxels).
/// Returns `(header path, data path)`.
pub fn write_mhd_pair(
    dir: &Path,
    stem: &str,
    dims: [u32; 3],
    seed: u64,
) -> io::Result<(PathBuf, PathBuf)> {
    check_dims(dims)?;
    if stem.is_empty() || stem.contains('/') || stem.contains('\\') {
        return Err(invalid("the stem must be a plain file name"));
    }
    let mhd = dir.join(format!("{stem}.mhd"));
    let raw = dir.join(format!("{stem}.raw"));
    std::fs::write(&mhd, metaimage_header(dims, &format!("{stem}.raw")))?;
    let mut out = BufWriter::new(File::create(&raw)?);
    write_phantom_u8(&mut out, dims, seed)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((mhd, raw))
}

/// Write a MetaImage segmentation: uint8 voxels drawn from `labels` (every label occurs at least
/// once when the volume has room for it), so an importer must report exactly these values.
pub fn write_segmentation_mha(
    path: &Path,
    dims: [u32; 3],
    labels: &[u8],
    seed: u64,
) -> io::Result<()> {
    check_dims(dims)?;
    if labels.is_empty() {
        return Err(invalid("a segmentation needs at least one label"));
    }
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(metaimage_header(dims, "LOCAL").as_bytes())?;
    let mut rng = SampleRng::new(seed);
    let mut row = vec![0u8; dims[0] as usize];
    let mut index = 0usize;
    for _ in 0..u64::from(dims[1]) * u64::from(dims[2]) {
        for v in row.iter_mut() {
            *v = if index < labels.len() {
                labels[index]
            } else {
                labels[rng.below(labels.len() as u64) as usize]
            };
            index += 1;
        }
        out.write_all(&row)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Build the 348-byte NIfTI-1 header of a uint8 volume (`n+1`, data at offset 352, little endian).
fn nifti1_header(dims: [u32; 3]) -> io::Result<[u8; 348]> {
    let mut h = [0u8; 348];
    let put_i16 =
        |h: &mut [u8; 348], at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut [u8; 348], at: usize, v: f32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    h[38] = b'r';
    let dim =
        |d: u32| i16::try_from(d).map_err(|_| invalid("NIfTI-1 dimensions are at most 32767"));
    let d = [3, dim(dims[0])?, dim(dims[1])?, dim(dims[2])?, 1, 1, 1, 1];
    for (i, v) in d.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *v);
    }
    put_i16(&mut h, 70, 2); // datatype: DT_UINT8
    put_i16(&mut h, 72, 8); // bitpix
    let [sx, sy, sz] = SAMPLE_SPACING_MM;
    let pixdim = [1.0f32, sx as f32, sy as f32, sz as f32, 1.0, 1.0, 1.0, 1.0];
    for (i, v) in pixdim.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * i, *v);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 2 | 8; // xyzt_units: mm, s
    let descrip = b"gc-hotfolder sample";
    h[148..148 + descrip.len()].copy_from_slice(descrip);
    put_i16(&mut h, 252, 1); // qform_code: scanner
    put_i16(&mut h, 254, 1); // sform_code: scanner
    // srow: a diagonal affine with the spacing.
    put_f32(&mut h, 280, sx as f32);
    put_f32(&mut h, 296 + 4, sy as f32);
    put_f32(&mut h, 312 + 8, sz as f32);
    h[344..348].copy_from_slice(b"n+1\0");
    Ok(h)
}

/// Write a single-file NIfTI-1 uint8 volume (`.nii`, or gzip-compressed `.nii.gz` when `gz`).
/// The caller chooses the file name; the importer recognises NIfTI by that extension.
pub fn write_nifti(path: &Path, dims: [u32; 3], gz: bool, seed: u64) -> io::Result<()> {
    check_dims(dims)?;
    let header = nifti1_header(dims)?;
    let file = File::create(path)?;
    if gz {
        let mut out = GzEncoder::new(BufWriter::new(file), Compression::fast());
        out.write_all(&header)?;
        out.write_all(&[0u8; 4])?; // no extensions
        write_phantom_u8(&mut out, dims, seed)?;
        out.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    } else {
        let mut out = BufWriter::new(file);
        out.write_all(&header)?;
        out.write_all(&[0u8; 4])?;
        write_phantom_u8(&mut out, dims, seed)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

/// The identifiers shared by the files of one DICOM series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomSeriesIds {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub frame_of_reference_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub study_id: String,
    /// `YYYYMMDD`.
    pub study_date: String,
    pub accession_number: String,
    pub series_number: u32,
    pub modality: String,
}

/// A DICOM UID under the `2.25` root (UUID-derived), unique for each `(seed, salt)`.
fn uid(seed: u64, salt: u64) -> String {
    let hi = splitmix64(seed ^ salt.wrapping_mul(0x0100_0000_01b3));
    let lo = splitmix64(hi ^ 0x5851_f42d_4c95_7f2d);
    let v = ((u128::from(hi) << 64) | u128::from(lo)) >> 1;
    format!("2.25.{v}")
}

impl DicomSeriesIds {
    /// Identifiers of a CT series in its own study, derived from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = SampleRng::new(seed ^ 0xd1c0);
        DicomSeriesIds {
            study_instance_uid: uid(seed, 1),
            series_instance_uid: uid(seed, 2),
            frame_of_reference_uid: uid(seed, 3),
            patient_id: format!("PAT{:06}", rng.below(1_000_000)),
            patient_name: format!("Sample^Patient{}", rng.below(1000)),
            study_id: format!("S{}", rng.below(100_000)),
            study_date: format!(
                "20{:02}{:02}{:02}",
                10 + rng.below(15),
                1 + rng.below(12),
                1 + rng.below(28)
            ),
            accession_number: format!("ACC{:07}", rng.below(10_000_000)),
            series_number: 1 + rng.below(100) as u32,
            modality: "CT".into(),
        }
    }

    /// Another series of the same study and patient (new series UID and number).
    pub fn other_series(&self, seed: u64) -> Self {
        DicomSeriesIds {
            series_instance_uid: uid(seed, 4),
            series_number: self.series_number + 1,
            ..self.clone()
        }
    }
}

/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Appends one explicit-VR little-endian data element, padded to even length as DICOM requires.
fn dicom_element(buf: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = value.len() % 2;
    let len = value.len() + pad;
    buf.extend_from_slice(&group.to_le_bytes());
    buf.extend_from_slice(&element.to_le_bytes());
    buf.extend_from_slice(vr);
    if matches!(
        vr,
        b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN" | b"UC" | b"UR"
    ) {
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        buf.extend_from_slice(&(len as u16).to_le_bytes());
    }
    buf.extend_from_slice(value);
    if pad == 1 {
        // UIDs are padded with NUL, binary values with 0, text with a space.
        buf.push(if matches!(vr, b"UI" | b"OB" | b"UN") {
            0
        } else {
            b' '
        });
    }
}

fn dicom_str(buf: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &str) {
    dicom_element(buf, group, element, vr, value.as_bytes());
}

fn dicom_us(buf: &mut Vec<u8>, group: u16, element: u16, value: u16) {
    dicom_element(buf, group, element, b"US", &value.to_le_bytes());
}

/// A short stable tag of a UID, to give the files of different series different names.
fn uid_tag(uid: &str) -> u32 {
    // FNV-1a
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Write a DICOM Part 10 CT series: `n_slices` files `dir/<series tag>-<NNNN>.dcm`, each a
/// 128-byte preamble, `DICM`, a file meta group (explicit VR little endian), the patient, study,
/// series and image identifiers of `series`, and `rows × cols` unsigned 16-bit pixels (12 bits
/// stored, rescale intercept −1024). Returns the paths in instance order.
pub fn write_dicom_series(
    dir: &Path,
    n_slices: u32,
    rows: u16,
    cols: u16,
    series: &DicomSeriesIds,
    seed: u64,
) -> io::Result<Vec<PathBuf>> {
    if n_slices == 0 || rows == 0 || cols == 0 {
        return Err(invalid(
            "a DICOM series needs at least one slice of at least 1×1 pixels",
        ));
    }
    let mut rng = SampleRng::new(seed);
    let tag = uid_tag(&series.series_instance_uid);
    let mut paths = Vec::with_capacity(n_slices as usize);
    for i in 0..n_slices {
        let instance = i + 1;
        let slice = CtSlice {
            series,
            sop_instance_uid: uid(seed ^ u64::from(tag), 100 + u64::from(instance)),
            instance,
            z: f64::from(i) * SAMPLE_SPACING_MM[2],
            rows,
            cols,
        };
        let meta = slice.file_meta();
        let ds = slice.data_set();

        let path = dir.join(format!("{tag:08x}-{instance:04}.dcm"));
        let mut out = BufWriter::new(File::create(&path)?);
        out.write_all(&[0u8; 128])?;
        out.write_all(b"DICM")?;
        let mut group_length = Vec::with_capacity(12);
        dicom_element(
            &mut group_length,
            0x0002,
            0x0000,
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        );
        out.write_all(&group_length)?;
        out.write_all(&meta)?;
        out.write_all(&ds)?;
        write_ct_pixels(&mut out, rows, cols, &mut rng)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        paths.push(path);
    }
    Ok(paths)
}

/// One file of a sample CT series.
struct CtSlice<'a> {
    series: &'a DicomSeriesIds,
    sop_instance_uid: String,
    instance: u32,
    /// The slice position along z, in mm.
    z: f64,
    rows: u16,
    cols: u16,
}

impl CtSlice<'_> {
    /// The file meta group's elements (its group length is written before them).
    fn file_meta(&self) -> Vec<u8> {
        let mut meta = Vec::with_capacity(256);
        dicom_element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
        dicom_str(&mut meta, 0x0002, 0x0002, b"UI", CT_IMAGE_STORAGE);
        dicom_str(&mut meta, 0x0002, 0x0003, b"UI", &self.sop_instance_uid);
        dicom_str(&mut meta, 0x0002, 0x0010, b"UI", EXPLICIT_VR_LITTLE_ENDIAN);
        dicom_str(&mut meta, 0x0002, 0x0012, b"UI", "2.25.1234567890123456789");
        dicom_str(&mut meta, 0x0002, 0x0013, b"SH", "GCHOTFOLDER");
        meta
    }

    /// The data set up to and including the Pixel Data element's header; the values follow, streamed.
    fn data_set(&self) -> Vec<u8> {
        let series = self.series;
        let (rows, cols, z) = (self.rows, self.cols, self.z);
        let [sx, _, sz] = SAMPLE_SPACING_MM;
        let pixel_bytes = u32::from(rows) * u32::from(cols) * 2;
        let mut ds = Vec::with_capacity(1024);
        dicom_str(&mut ds, 0x0008, 0x0005, b"CS", "ISO_IR 100");
        dicom_str(&mut ds, 0x0008, 0x0008, b"CS", "ORIGINAL\\PRIMARY\\AXIAL");
        dicom_str(&mut ds, 0x0008, 0x0016, b"UI", CT_IMAGE_STORAGE);
        dicom_str(&mut ds, 0x0008, 0x0018, b"UI", &self.sop_instance_uid);
        dicom_str(&mut ds, 0x0008, 0x0020, b"DA", &series.study_date);
        dicom_str(&mut ds, 0x0008, 0x0030, b"TM", "120000");
        dicom_str(&mut ds, 0x0008, 0x0050, b"SH", &series.accession_number);
        dicom_str(&mut ds, 0x0008, 0x0060, b"CS", &series.modality);
        dicom_str(&mut ds, 0x0008, 0x0070, b"LO", "gc-hotfolder");
        dicom_str(&mut ds, 0x0008, 0x0090, b"PN", "");
        dicom_str(&mut ds, 0x0010, 0x0010, b"PN", &series.patient_name);
        dicom_str(&mut ds, 0x0010, 0x0020, b"LO", &series.patient_id);
        dicom_str(&mut ds, 0x0010, 0x0030, b"DA", "");
        dicom_str(&mut ds, 0x0010, 0x0040, b"CS", "O");
        dicom_str(&mut ds, 0x0018, 0x0050, b"DS", &format!("{sz}"));
        dicom_str(&mut ds, 0x0018, 0x0060, b"DS", "120");
        dicom_str(&mut ds, 0x0020, 0x000D, b"UI", &series.study_instance_uid);
        dicom_str(&mut ds, 0x0020, 0x000E, b"UI", &series.series_instance_uid);
        dicom_str(&mut ds, 0x0020, 0x0010, b"SH", &series.study_id);
        dicom_str(
            &mut ds,
            0x0020,
            0x0011,
            b"IS",
            &series.series_number.to_string(),
        );
        dicom_str(&mut ds, 0x0020, 0x0012, b"IS", "1");
        dicom_str(&mut ds, 0x0020, 0x0013, b"IS", &self.instance.to_string());
        dicom_str(&mut ds, 0x0020, 0x0032, b"DS", &format!("0\\0\\{z}"));
        dicom_str(&mut ds, 0x0020, 0x0037, b"DS", "1\\0\\0\\0\\1\\0");
        dicom_str(
            &mut ds,
            0x0020,
            0x0052,
            b"UI",
            &series.frame_of_reference_uid,
        );
        dicom_str(&mut ds, 0x0020, 0x1040, b"LO", "");
        dicom_str(&mut ds, 0x0020, 0x1041, b"DS", &format!("{z}"));
        dicom_us(&mut ds, 0x0028, 0x0002, 1);
        dicom_str(&mut ds, 0x0028, 0x0004, b"CS", "MONOCHROME2");
        dicom_us(&mut ds, 0x0028, 0x0010, rows);
        dicom_us(&mut ds, 0x0028, 0x0011, cols);
        dicom_str(&mut ds, 0x0028, 0x0030, b"DS", &format!("{sx}\\{sx}"));
        dicom_us(&mut ds, 0x0028, 0x0100, 16);
        dicom_us(&mut ds, 0x0028, 0x0101, 12);
        dicom_us(&mut ds, 0x0028, 0x0102, 11);
        dicom_us(&mut ds, 0x0028, 0x0103, 0);
        dicom_str(&mut ds, 0x0028, 0x1050, b"DS", "40");
        dicom_str(&mut ds, 0x0028, 0x1051, b"DS", "400");
        dicom_str(&mut ds, 0x0028, 0x1052, b"DS", "-1024");
        dicom_str(&mut ds, 0x0028, 0x1053, b"DS", "1");
        ds.extend_from_slice(&0x7FE0u16.to_le_bytes());
        ds.extend_from_slice(&0x0010u16.to_le_bytes());
        ds.extend_from_slice(b"OW\0\0");
        ds.extend_from_slice(&pixel_bytes.to_le_bytes());
        ds
    }
}

/// Stream one slice of `rows × cols` unsigned 16-bit pixels: a disc of soft tissue in air, with noise.
fn write_ct_pixels(
    out: &mut impl Write,
    rows: u16,
    cols: u16,
    rng: &mut SampleRng,
) -> io::Result<()> {
    let (cr, cc) = (f64::from(rows) / 2.0, f64::from(cols) / 2.0);
    let radius2 = (f64::from(rows.min(cols)) / 3.0).powi(2);
    let mut row = Vec::with_capacity(usize::from(cols) * 2);
    for r in 0..rows {
        row.clear();
        for c in 0..cols {
            let (dr, dc) = (f64::from(r) - cr, f64::from(c) - cc);
            // Stored 0..4095 → −1024..3071 HU: soft tissue in air.
            let base: u64 = if dr * dr + dc * dc <= radius2 {
                1064
            } else {
                24
            };
            let v = (base + rng.below(64)) as u16;
            row.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&row)?;
    }
    Ok(())
}

/// Write a baseline uncompressed 8-bit grayscale TIFF (little endian, strips of at most 64 KiB,
/// 72 dpi resolution tags as the importer requires).
pub fn write_tiff(path: &Path, width: u32, height: u32, seed: u64) -> io::Result<()> {
    if width == 0 || height == 0 {
        return Err(invalid("a TIFF needs at least 1×1 pixels"));
    }
    let layout = StripLayout::new(width, height)?;
    let head = layout.head();
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(&head)?;
    write_phantom_u8(&mut out, [width, height, 1], seed)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Where the parts of a one-page 8-bit strip TIFF go: header | IFD | XResolution | YResolution |
/// strip offsets | strip counts | pixels. The offset and count arrays live in the IFD entries
/// themselves when there is a single strip.
struct StripLayout {
    width: u32,
    height: u32,
    rows_per_strip: u32,
    n_strips: u32,
    xres_at: u32,
    yres_at: u32,
    offsets_at: u32,
    counts_at: u32,
    data_at: u32,
}

/// Where the IFD of [`write_tiff`]'s files starts: right after the 8-byte header.
const TIFF_IFD_OFFSET: u32 = 8;
/// The IFD entries [`StripLayout::head`] writes.
const TIFF_ENTRIES: u32 = 12;

impl StripLayout {
    /// Strips of at most 64 KiB; a classic TIFF must stay below 4 GiB.
    fn new(width: u32, height: u32) -> io::Result<StripLayout> {
        let rows_per_strip = (65536 / width).clamp(1, height);
        let n_strips = height.div_ceil(rows_per_strip);
        let ifd_len = 2 + 12 * TIFF_ENTRIES + 4;
        let xres_at = TIFF_IFD_OFFSET + ifd_len;
        let yres_at = xres_at + 8;
        let out_of_line = n_strips > 1;
        let offsets_at = yres_at + 8;
        let counts_at = offsets_at + if out_of_line { 4 * n_strips } else { 0 };
        let data_at = counts_at + if out_of_line { 4 * n_strips } else { 0 };
        let total = u64::from(data_at) + u64::from(width) * u64::from(height);
        if total > u64::from(u32::MAX) {
            return Err(invalid("a classic TIFF is limited to 4 GiB"));
        }
        Ok(StripLayout {
            width,
            height,
            rows_per_strip,
            n_strips,
            xres_at,
            yres_at,
            offsets_at,
            counts_at,
            data_at,
        })
    }

    fn arrays_out_of_line(&self) -> bool {
        self.n_strips > 1
    }

    /// The bytes of strip `i`: the last one holds the rows left over.
    fn strip_bytes(&self, i: u32) -> u32 {
        let rows = if i + 1 == self.n_strips {
            self.height - self.rows_per_strip * i
        } else {
            self.rows_per_strip
        };
        rows * self.width
    }

    /// Everything before the pixels: header, IFD, resolutions and the strip arrays.
    fn head(&self) -> Vec<u8> {
        let (width, height, data_at) = (self.width, self.height, self.data_at);
        let out_of_line = self.arrays_out_of_line();
        let mut head = Vec::with_capacity(data_at as usize);
        head.extend_from_slice(b"II*\0");
        head.extend_from_slice(&TIFF_IFD_OFFSET.to_le_bytes());
        head.extend_from_slice(&(TIFF_ENTRIES as u16).to_le_bytes());
        let mut entry = |tag: u16, typ: u16, count: u32, value: u32| {
            head.extend_from_slice(&tag.to_le_bytes());
            head.extend_from_slice(&typ.to_le_bytes());
            head.extend_from_slice(&count.to_le_bytes());
            head.extend_from_slice(&value.to_le_bytes());
        };
        const SHORT: u16 = 3;
        const LONG: u16 = 4;
        const RATIONAL: u16 = 5;
        entry(256, LONG, 1, width); // ImageWidth
        entry(257, LONG, 1, height); // ImageLength
        entry(258, SHORT, 1, 8); // BitsPerSample
        entry(259, SHORT, 1, 1); // Compression: none
        entry(262, SHORT, 1, 1); // PhotometricInterpretation: BlackIsZero
        entry(
            273,
            LONG,
            self.n_strips,
            if out_of_line {
                self.offsets_at
            } else {
                data_at
            },
        ); // StripOffsets
        entry(277, SHORT, 1, 1); // SamplesPerPixel
        entry(278, LONG, 1, self.rows_per_strip); // RowsPerStrip
        entry(
            279,
            LONG,
            self.n_strips,
            if out_of_line {
                self.counts_at
            } else {
                self.strip_bytes(0)
            },
        ); // StripByteCounts
        entry(282, RATIONAL, 1, self.xres_at); // XResolution
        entry(283, RATIONAL, 1, self.yres_at); // YResolution
        entry(296, SHORT, 1, 2); // ResolutionUnit: inch
        head.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        for _ in 0..2 {
            head.extend_from_slice(&72u32.to_le_bytes());
            head.extend_from_slice(&1u32.to_le_bytes());
        }
        if out_of_line {
            for i in 0..self.n_strips {
                head.extend_from_slice(&(data_at + i * self.rows_per_strip * width).to_le_bytes());
            }
            for i in 0..self.n_strips {
                head.extend_from_slice(&self.strip_bytes(i).to_le_bytes());
            }
        }
        debug_assert_eq!(head.len(), data_at as usize);
        head
    }
}

/// Write a minimal valid one-page PDF showing `text` (one line, Helvetica), with a correct
/// cross-reference table.
pub fn write_pdf(path: &Path, text: &str) -> io::Result<()> {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '(' | ')' | '\\' => {
                escaped.push('\\');
                escaped.push(ch);
            }
            // Keep the one-line content stream printable ASCII.
            c if c.is_ascii() && !c.is_ascii_control() => escaped.push(c),
            _ => escaped.push('?'),
        }
    }
    let content = format!("BT /F1 18 Tf 72 720 Td ({escaped}) Tj ET\n");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!(
            "<< /Length {} >>\nstream\n{content}endstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut pdf: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref_at = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        pdf.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    std::fs::write(path, pdf)
}

/// Write `size_bytes` pseudo-random bytes in 1 MiB chunks (memory stays at a few MiB whatever the
/// size). The content is reproducible from `seed` and incompressible in practice.
///
/// Generating every word is the slow part in unoptimised builds, so a 4 MiB random pool is made
/// once and each chunk is the pool read from a random offset, with every 4 KiB page stamped with
/// its position so that no two pages of the file repeat.
pub fn write_large_file(path: &Path, size_bytes: u64, seed: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    const POOL: usize = 4 << 20;
    const PAGE: usize = 4096;
    let mut rng = SampleRng::new(seed);
    let mut pool = vec![0u8; POOL];
    for word in pool.chunks_exact_mut(8) {
        word.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let mut buf = vec![0u8; CHUNK];
    let mut file = File::create(path)?;
    let mut remaining = size_bytes;
    let mut chunk_index: u64 = 0;
    while remaining > 0 {
        let n = remaining.min(CHUNK as u64) as usize;
        let offset = rng.below(POOL as u64) as usize;
        let first = n.min(POOL - offset);
        buf[..first].copy_from_slice(&pool[offset..offset + first]);
        buf[first..n].copy_from_slice(&pool[..n - first]);
        for (page_index, page) in buf[..n].chunks_mut(PAGE).enumerate() {
            let stamp = splitmix64(seed ^ (chunk_index << 8 | page_index as u64)).to_le_bytes();
            for (b, s) in page.iter_mut().zip(stamp) {
                *b ^= s;
            }
        }
        file.write_all(&buf[..n])?;
        remaining -= n as u64;
        chunk_index += 1;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn content_is_determined_by_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.mha"),
            dir.path().join("b.mha"),
            dir.path().join("c.mha"),
        );
        write_mha(&a, [6, 5, 4], 7).unwrap();
        write_mha(&b, [6, 5, 4], 7).unwrap();
        write_mha(&c, [6, 5, 4], 8).unwrap();
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
    }

    #[test]
    fn metaimage_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.mha");
        write_mha(&p, [6, 5, 4], 1).unwrap();
        let bytes = read(&p);
        let marker = b"ElementDataFile = LOCAL\n";
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap()
            + marker.len();
        assert_eq!(bytes.len() - at, 6 * 5 * 4);
        let header = std::str::from_utf8(&bytes[..at]).unwrap();
        assert!(
            header.contains("DimSize = 6 5 4\n") && header.contains("ElementType = MET_UCHAR\n")
        );

        let (mhd, raw) = write_mhd_pair(dir.path(), "pair", [3, 2, 2], 1).unwrap();
        assert!(
            std::fs::read_to_string(&mhd)
                .unwrap()
                .ends_with("ElementDataFile = pair.raw\n")
        );
        assert_eq!(read(&raw).len(), 12);
        assert!(write_mhd_pair(dir.path(), "../escape", [1, 1, 1], 1).is_err());
    }

    #[test]
    fn segmentation_uses_exactly_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seg.mha");
        write_segmentation_mha(&p, [4, 4, 4], &[9, 2, 5], 3).unwrap();
        let bytes = read(&p);
        let voxels = &bytes[bytes.len() - 64..];
        let used: std::collections::BTreeSet<u8> = voxels.iter().copied().collect();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![2, 5, 9]);
        assert!(write_segmentation_mha(&p, [4, 4, 4], &[], 3).is_err());
    }

    #[test]
    fn nifti_header_and_gzip_variant_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, gz) = (dir.path().join("a.nii"), dir.path().join("a.nii.gz"));
        write_nifti(&plain, [5, 4, 3], false, 2).unwrap();
        write_nifti(&gz, [5, 4, 3], true, 2).unwrap();
        let bytes = read(&plain);
        assert_eq!(bytes.len(), 352 + 60);
        assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().unwrap()), 348);
        assert_eq!(&bytes[344..348], b"n+1\0");
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(File::open(&gz).unwrap())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, bytes);
        assert!(write_nifti(&plain, [40000, 1, 1], false, 1).is_err());
    }

    #[test]
    fn dicom_files_are_part_10_with_the_series_identifiers() {
        let dir = tempfile::tempdir().unwrap();
        let ids = DicomSeriesIds::new(11);
        let paths = write_dicom_series(dir.path(), 3, 6, 5, &ids, 1).unwrap();
        assert_eq!(paths.len(), 3);
        for (i, p) in paths.iter().enumerate() {
            let b = read(p);
            assert!(b[..128].iter().all(|x| *x == 0));
            assert_eq!(&b[128..132], b"DICM");
            // (0002,0000) UL group length, then exactly that many bytes of group 0002.
            assert_eq!(&b[132..138], &[0x02, 0x00, 0x00, 0x00, b'U', b'L']);
            let meta_len = u32::from_le_bytes(b[140..144].try_into().unwrap()) as usize;
            assert_eq!(
                &b[144 + meta_len..146 + meta_len],
                &[0x08, 0x00],
                "data set follows the meta group"
            );
            assert!(
                b[144..144 + meta_len]
                    .windows(EXPLICIT_VR_LITTLE_ENDIAN.len())
                    .any(|w| w == EXPLICIT_VR_LITTLE_ENDIAN.as_bytes())
            );
            let text = String::from_utf8_lossy(&b);
            assert!(
                text.contains(&ids.study_instance_uid) && text.contains(&ids.series_instance_uid)
            );
            assert!(text.contains(&ids.patient_id) && text.contains(&ids.accession_number));
            assert!(
                text.contains(&format!("\\0\\{}", i as f64 * SAMPLE_SPACING_MM[2])),
                "slice position"
            );
            // Pixel data: OW with 6 × 5 × 2 bytes, the last element of the file.
            let tail = &b[b.len() - 60 - 12..b.len() - 60];
            assert_eq!(
                tail,
                &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 60, 0, 0, 0]
            );
        }
        let other = ids.other_series(12);
        assert_eq!(other.study_instance_uid, ids.study_instance_uid);
        assert_eq!(other.patient_id, ids.patient_id);
        assert_ne!(other.series_instance_uid, ids.series_instance_uid);
        let more = write_dicom_series(dir.path(), 1, 6, 5, &other, 1).unwrap();
        assert!(
            !paths.contains(&more[0]),
            "another series gets other file names"
        );
    }

    #[test]
    fn dicom_uids_are_valid() {
        for seed in 0..50 {
            let ids = DicomSeriesIds::new(seed);
            for uid in [
                &ids.study_instance_uid,
                &ids.series_instance_uid,
                &ids.frame_of_reference_uid,
            ] {
                assert!(uid.len() <= 64, "{uid}");
                assert!(
                    uid.split('.').all(|c| !c.is_empty()
                        && c.bytes().all(|b| b.is_ascii_digit())
                        && (c == "0" || !c.starts_with('0'))),
                    "{uid}"
                );
            }
            assert_eq!(ids.study_date.len(), 8);
            assert_eq!(ids, DicomSeriesIds::new(seed));
        }
        assert_ne!(DicomSeriesIds::new(1), DicomSeriesIds::new(2));
    }

    #[test]
    fn tiff_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tif");
        write_tiff(&p, 300, 500, 1).unwrap();
        let b = read(&p);
        assert_eq!(&b[0..4], b"II*\0");
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 12);
        // Three strips (218 rows of 300 bytes fit in 64 KiB): offsets and counts out of line.
        let strips = 500u32.div_ceil(65536 / 300);
        assert_eq!(strips, 3);
        assert_eq!(
            b.len() as u32,
            8 + 2 + 12 * 12 + 4 + 16 + 8 * strips + 300 * 500
        );
        assert!(write_tiff(&p, 0, 5, 1).is_err());
    }

    #[test]
    fn pdf_cross_reference_offsets_point_at_objects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.pdf");
        write_pdf(&p, "Report (draft) \\ é").unwrap();
        let b = read(&p);
        // Byte-exact view (the binary comment line is not UTF-8): one char per byte.
        let text: String = b
            .iter()
            .map(|&c| if c.is_ascii() { c as char } else { '#' })
            .collect();
        assert!(text.starts_with("%PDF-1.4\n") && text.ends_with("%%EOF\n"));
        assert!(text.contains("(Report \\(draft\\) \\\\ ?) Tj"));
        let startxref: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(text[startxref..].starts_with("xref\n0 6\n"));
        for (n, line) in text[startxref..].lines().skip(3).take(5).enumerate() {
            let off: usize = line[..10].parse().unwrap();
            assert_eq!(line.len(), 19, "20-byte entries with the newline");
            assert!(text[off..].starts_with(&format!("{} 0 obj", n + 1)));
        }
    }

    #[test]
    fn large_files_are_exact_reproducible_and_prefix_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let size = 3 * (1 << 20) + 12345;
        write_large_file(&a, size, 5).unwrap();
        write_large_file(&b, 1 << 20, 5).unwrap();
        write_large_file(&c, 0, 5).unwrap();
        let (ba, bb) = (read(&a), read(&b));
        assert_eq!(ba.len() as u64, size);
        assert_eq!(&ba[..bb.len()], &bb[..]);
        assert_eq!(read(&c).len(), 0);
        // Incompressible: no byte value dominates.
        let mut counts = [0usize; 256];
        ba.iter().for_each(|x| counts[*x as usize] += 1);
        assert!(counts.iter().all(|n| *n < ba.len() / 128));
        let pages: std::collections::HashSet<&[u8]> = ba.chunks(4096).collect();
        assert_eq!(pages.len(), ba.len().div_ceil(4096), "no page repeats");
    }
}
