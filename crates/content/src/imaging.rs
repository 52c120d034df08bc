//! Image import as the platform's importer judges it: which uploads make an image, which are refused
//! and which make the whole import fail, with the image's size, depth, timepoints and colour space.
//! One image value must yield exactly one image.
//!
//! The platform runs panimg; this module follows **panimg 0.18.2** (with the SimpleITK 2.5, pydicom 3
//! and tifffile it installs), and is checked against it on a generated corpus ([`crate::corpus`],
//! test `panimg`). Its rules:
//!
//! - **Before the builders**: every ZIP upload (recognised by content) is unpacked in place,
//!   recursively, the archive itself removed. Each folder is then converted on its own: a detached
//!   header only finds its data file, a DICOM series only its slices, in the same folder. Duplicate
//!   upload names fail the import.
//! - **Builders, in order**, each taking what it can of what earlier ones left: MetaImage, NIfTI,
//!   NRRD, DICOM, TIFF, PNG/JPEG. One image: success (files nobody took are reported); none: "N files
//!   could not be imported"; several: "Image imports should result in a single image". An image with
//!   two colour components passes the readers but not the platform's image model, which raises: the
//!   import fails as a whole ("An unexpected error occurred").
//! - **MetaImage** (`.mha`, or a `.mhd` whose `ElementDataFile` is another upload of the folder, never
//!   outside it): header lines under 10 000 bytes of valid UTF-8 up to `ElementDataFile`; 2 to 4
//!   dimensions; at most 4 channels; no zero spacing (ITK refuses it; a negative one passes); all
//!   uncompressed voxel bytes present (extra ones are ignored); compressed data is not checked (ITK
//!   makes an image even of an empty or damaged stream); a zero dimension makes an empty image that
//!   the platform's model raises on. Patient and study fields (PatientID, PatientBirthDate,
//!   SeriesInstanceUID, ...) are not checked: panimg dropped those checks after 0.15. Checked are
//!   only the fields panimg keeps: `Laterality` (≤ 128 characters), `SliceThickness`,
//!   `SmallestImagePixelValue`, `LargestImagePixelValue`, `t0`, `t1` (floats), `Exposures` (floats)
//!   and `ContentTimes` (`HHMMSS[.fff]`), one per timepoint (the fourth axis, else 1), and
//!   `WindowCenter`/`WindowWidth` (float or `[f, f, ...]`; an array needs the other one as an array of
//!   the same length).
//! - **NIfTI** (by extension `.nii`/`.nii.gz` only): NIfTI-1; NIfTI-2 is not read by the platform's
//!   SimpleITK. A dimension of 0 counts as 1, missing voxels read as zero, the magic is not checked;
//!   a fifth axis holds vector components only with a vector or displacement intent, otherwise the
//!   image has five dimensions and is refused.
//! - **NRRD**: single files with attached data (`NRRD0001`–`NRRD0005`); a detached header (`data
//!   file:`) is refused. The data must be complete (raw or gzip); a non-domain first axis holds the
//!   colour components; zero spacing is refused.
//! - **DICOM** (by content, Part 10 with preamble): grouped by (StudyInstanceUID, StackID or
//!   SeriesInstanceUID, SOPClassUID), all required; WSI-DICOM is left to the TIFF builder. Several
//!   files need an InstanceNumber each; pixel data must be complete; no zero spacing. 4-D (two or more
//!   TemporalPositionIndex values) needs the same number of slices per timepoint and a ContentTime and
//!   Exposure where panimg reads them. Colour pixels make an image only from one multi-frame file:
//!   a single frame per file is taken for a 2-D volume that cannot be oriented, and fails. A
//!   multi-frame grey file among several is taken for the whole volume.
//! - **TIFF** (by content): tags of the first page only, pixels not decoded: width, height, a
//!   resolution in inch or centimetre units, and a photometric interpretation of MinIsBlack, RGB,
//!   RGBA or YCbCr. Colour space follows the photometric interpretation (an RGB TIFF with alpha is
//!   RGB).
//! - **PNG and JPEG** (by content): the pixels are decoded, so a truncated or damaged file is no
//!   image; grey with alpha and 1-bit PNGs raise in the platform's image model.
//!
//! The sandbox has no SimpleITK: it reads headers with bounded reads (at most 64 KiB of any header,
//! DICOM walked element by element up to the pixel data), streams voxel data through a fixed buffer
//! (segment values only for images up to [`MAX_VOXEL_SCAN_BYTES`]) and decodes PNG/JPEG with the
//! `image` crate. Malformed input is an unimported file, never a panic. Not covered: OCT and
//! whole-slide formats other than TIFF, and compressed DICOM transfer syntaxes are trusted to decode.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How the platform would store the imported image (`files[].image_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Mhd,
    Tiff,
}

/// The voxel component type the platform's importer would load the image as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Complex float32 pairs (NIfTI).
    C64,
    /// Complex float64 pairs (NIfTI).
    C128,
}

impl PixelType {
    fn size(self) -> u64 {
        match self {
            PixelType::U8 | PixelType::I8 => 1,
            PixelType::U16 | PixelType::I16 => 2,
            PixelType::U32 | PixelType::I32 | PixelType::F32 => 4,
            PixelType::U64 | PixelType::I64 | PixelType::F64 | PixelType::C64 => 8,
            PixelType::C128 => 16,
        }
    }

    fn is_integer(self) -> bool {
        !matches!(
            self,
            PixelType::F32 | PixelType::F64 | PixelType::C64 | PixelType::C128
        )
    }

    fn is_8bit(self) -> bool {
        matches!(self, PixelType::U8 | PixelType::I8)
    }
}

/// Patient/study metadata the platform keeps per image (panimg's extra metadata), plus the
/// identifiers a DICOM image set must share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMetadata {
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    /// `YYYYMMDD`.
    pub patient_birth_date: Option<String>,
    pub patient_age: Option<String>,
    pub patient_sex: Option<String>,
    /// `YYYYMMDD`.
    pub study_date: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub study_description: Option<String>,
    pub series_description: Option<String>,
    /// DICOM only.
    pub study_id: Option<String>,
    /// DICOM only.
    pub accession_number: Option<String>,
    /// DICOM only.
    pub series_number: Option<String>,
}

/// What one successful import yields: the metadata the images API shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedImage {
    /// As the platform names it: the main file's upload name, for DICOM `<StudyInstanceUID>-<n>`.
    pub name: String,
    pub width: u64,
    pub height: u64,
    pub depth: Option<u64>,
    /// The image shape as the API shows it, slowest axis first, e.g. `[depth, height, width]`;
    /// timepoints first when present, colour components last when more than one.
    pub shape: Vec<u64>,
    /// `"GRAY"`, `"RGB"`, `"RGBA"`, `"YCBCR"`.
    pub color_space: String,
    pub image_type: ImageType,
    /// `[width, height, depth]` spacing, when the platform shows all three (see `voxel_*_mm`).
    pub voxel_spacing_mm: Option<[f64; 3]>,
    pub modality: Option<String>,
    /// Upload filenames that make up the stored image (served from `files[].file`).
    pub files: Vec<String>,
    /// Distinct voxel values, when the image is small enough to read (for segmentation checks).
    /// Known for uncompressed or zlib-compressed integer MetaImage and NIfTI images of at most
    /// [`MAX_VOXEL_SCAN_BYTES`] of voxel data with at most 65 536 distinct values; `None` otherwise.
    pub voxel_values: Option<Vec<i64>>,
    /// 4-D images that are not segmentations: the size of the fourth axis.
    pub timepoints: Option<u64>,
    /// The API's `voxel_width_mm` / `voxel_height_mm` / `voxel_depth_mm`.
    pub voxel_width_mm: Option<f64>,
    pub voxel_height_mm: Option<f64>,
    pub voxel_depth_mm: Option<f64>,
    /// The component type the image is stored with (`None` when unknown, e.g. JPEG/PNG).
    pub pixel_type: Option<PixelType>,
    /// The segment values as the platform determines them (panimg's rule): only for single-channel
    /// 8-bit images with at most 64 distinct values (4-D: `1..=t` when the values are 0 and 1), for
    /// TIFF from the min/max sample value tags. `None`: "segments could not be determined".
    pub segments: Option<Vec<i64>>,
    pub metadata: ImageMetadata,
    /// Upload filenames no importer accepted although an image resulted; the platform reports them
    /// as [`could_not_import_message`] on a session that still succeeds.
    pub unimported_files: Vec<String>,
}

/// Why an import failed, worded as the platform words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    /// Becomes the session's `error_message` as is, e.g. `"1 file could not be imported"`.
    Session(String),
    /// The files imported but do not make one value for a socket, e.g. `"Image imports should result in a
    /// single image"`; the sandbox wraps it as `"Image validation for socket <title> failed with error: <msg>."`.
    Socket(String),
}

/// Voxel data larger than this is not read (the platform's `MAX_SITK_FILE_SIZE`).
pub const MAX_VOXEL_SCAN_BYTES: u64 = 256 * 1024 * 1024;
/// panimg's `MAXIMUM_SEGMENTS_LENGTH`.
pub const MAX_SEGMENTS: usize = 64;
const MAX_DISTINCT_VALUES: usize = 65_536;
const HEADER_CAP: usize = 64 * 1024;

pub const DUPLICATE_FILES_MESSAGE: &str =
    "Duplicate files uploaded, please try again with a unique set of files";
pub const SINGLE_IMAGE_MESSAGE: &str = "Image imports should result in a single image";

/// `"1 file could not be imported"`, `"3 files could not be imported"`.
pub fn could_not_import_message(n: usize) -> String {
    format!(
        "{n} file{} could not be imported",
        if n == 1 { "" } else { "s" }
    )
}

/// One upload: its filename and where its bytes are stored.
#[derive(Clone, Copy)]
struct Upload<'a> {
    /// The file name within its folder: what the builders see.
    name: &'a str,
    /// The whole upload name, with the folders of an unpacked ZIP: what the image's files are called.
    key: &'a str,
    path: &'a Path,
}

/// Why a builder made no image from a file.
#[derive(Debug)]
enum Reject {
    /// The file is unusable: it counts as a file that could not be imported.
    File(String),
    /// The platform's importer fails as a whole on this input (it raises where it does not expect
    /// to), so the session ends with "An unexpected error occurred".
    Unexpected,
}

impl From<&str> for Reject {
    fn from(s: &str) -> Self {
        Reject::File(s.to_string())
    }
}

impl From<String> for Reject {
    fn from(s: String) -> Self {
        Reject::File(s)
    }
}

/// A builder's verdict on all its files: the images, or the whole import fails.
type BuilderResult = Result<Vec<Built>, Unexpected>;

#[derive(Debug)]
struct Unexpected;

pub const UNEXPECTED_ERROR_MESSAGE: &str = "An unexpected error occurred";

/// Collect per-file outcomes: images kept, unusable files skipped, a crash ends everything.
fn collect_built(outcomes: impl Iterator<Item = Result<Built, Reject>>) -> BuilderResult {
    let mut out = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(b) => out.push(b),
            Err(Reject::File(reason)) => tracing::debug!(%reason, "a file was not imported"),
            Err(Reject::Unexpected) => return Err(Unexpected),
        }
    }
    Ok(out)
}

/// One image a builder made, with the indices of the uploads it consumed.
struct Built {
    image: ImportedImage,
    consumed: Vec<usize>,
}

/// Import the files of one image value. `files` are (upload filename, path of the stored bytes); a
/// filename may hold `/` for files unpacked from a ZIP (see [`unpack_zips`]).
pub fn import_image(files: &[(String, PathBuf)]) -> Result<ImportedImage, ImportError> {
    if files.is_empty() {
        return Err(ImportError::Session("No files were uploaded".into()));
    }
    let uploads = unique_uploads(files)?;

    // The platform converts each directory on its own: a detached header finds its data file, and a
    // DICOM series its slices, only in the same directory.
    let mut folders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, u) in uploads.iter().enumerate() {
        let folder = u.key.rsplit_once('/').map_or("", |(dir, _)| dir);
        folders.entry(folder).or_default().push(i);
    }
    let mut consumed = vec![false; uploads.len()];
    let mut images: Vec<ImportedImage> = Vec::new();
    for members in folders.values() {
        let folder: Vec<Upload> = members.iter().map(|&i| uploads[i]).collect();
        for built in import_folder(&folder)? {
            for &local in &built.consumed {
                consumed[members[local]] = true;
            }
            let mut image = built.image;
            image.files = built
                .consumed
                .iter()
                .map(|&local| folder[local].key.to_string())
                .collect();
            images.push(image);
        }
    }

    let unimported: Vec<String> = (0..uploads.len())
        .filter(|&i| !consumed[i])
        .map(|i| uploads[i].key.to_string())
        .collect();
    match images.len() {
        0 => Err(ImportError::Session(could_not_import_message(
            unimported.len(),
        ))),
        1 => {
            let mut image = images.remove(0);
            image.unimported_files = unimported;
            Ok(image)
        }
        _ => Err(ImportError::Socket(SINGLE_IMAGE_MESSAGE.into())),
    }
}

/// Import the uploads of one image value as the platform does: ZIP archives unpacked under
/// `scratch` first (see [`unpack_zips`]), then [`import_image`]. Returns the image and the files it
/// was made from (unpacked ones included), by the names in [`ImportedImage::files`].
pub fn import_uploads(
    uploads: &[(String, PathBuf)],
    scratch: &Path,
) -> Result<(ImportedImage, Vec<(String, PathBuf)>), ImportError> {
    if uploads.is_empty() {
        return Err(ImportError::Session("No files were uploaded".into()));
    }
    unique_uploads(uploads)?;
    let files = unpack_zips(uploads, scratch).map_err(|e| {
        tracing::debug!(error = %e, "a ZIP upload could not be unpacked");
        ImportError::Session(UNEXPECTED_ERROR_MESSAGE.into())
    })?;
    if files.is_empty() {
        // Only empty archives: nothing to import and nothing left over.
        return Err(ImportError::Session(could_not_import_message(0)));
    }
    let image = import_image(&files)?;
    Ok((image, files))
}

/// What the importer can tell about the files of one image value before they are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The files make one image, or they hold something this importer does not follow exactly: only
    /// the platform can tell.
    Pass,
    /// The platform's import of these files is certain to fail, with the error it would give.
    Fails(ImportError),
}

/// Extensions of formats the platform reads and this importer does not follow: OCT scans and
/// whole-slide images read through OpenSlide (some of them TIFF inside, some not).
const UNFOLLOWED_EXTENSIONS: [&str; 12] = [
    "fds", "fda", "e2e", "img", "mrxs", "vms", "vmu", "ndpi", "scn", "svslide", "bif", "svs",
];

/// Judge the files of one image value (upload filename, path of the bytes) as the platform's importer
/// would, before anything is created for them. Conservative: [`Verdict::Fails`] only when every file is
/// in a format this importer follows panimg for (or in none at all) and the import fails by its rules.
/// ZIP archives, whole-slide DICOM and the formats of [`UNFOLLOWED_EXTENSIONS`] pass to the platform.
/// Reads what [`import_image`] reads: headers, with voxel data streamed.
pub fn judge_files(files: &[(String, PathBuf)]) -> Verdict {
    if files.is_empty() || !files.iter().all(|(name, path)| followed(name, path)) {
        return Verdict::Pass;
    }
    match import_image(files) {
        Ok(_) => Verdict::Pass,
        Err(e) => Verdict::Fails(e),
    }
}

/// Whether the platform's verdict on this file is one this importer reproduces.
fn followed(name: &str, path: &Path) -> bool {
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    if UNFOLLOWED_EXTENSIONS.contains(&extension.as_str()) || is_zip(path) {
        return false;
    }
    // Whole-slide DICOM is converted by the platform's slide reader, which this importer does not follow.
    !read_dicom_header(path)
        .is_ok_and(|h| h.text(TAG_SOP_CLASS_UID).as_deref() == Some(WSI_SOP_CLASS))
}

/// The builders in the platform's order over the files of one directory; each sees only what
/// earlier ones left.
fn import_folder(uploads: &[Upload]) -> Result<Vec<Built>, ImportError> {
    let mut consumed = vec![false; uploads.len()];
    let mut images: Vec<Built> = Vec::new();
    type Builder = fn(&[Upload], &[usize]) -> BuilderResult;
    let builders: [Builder; 6] = [
        build_metaimage,
        build_nifti,
        build_nrrd,
        build_dicom,
        build_tiff,
        build_fallback,
    ];
    for builder in builders {
        let remaining: Vec<usize> = (0..uploads.len()).filter(|&i| !consumed[i]).collect();
        if remaining.is_empty() {
            break;
        }
        let Ok(built_images) = builder(uploads, &remaining) else {
            return Err(ImportError::Session(UNEXPECTED_ERROR_MESSAGE.into()));
        };
        for built in built_images {
            for &i in &built.consumed {
                consumed[i] = true;
            }
            images.push(built);
        }
    }
    Ok(images)
}

/// The most files the ZIP archives of one image value may unpack to, nested archives included.
const MAX_UNPACKED_FILES: usize = 100_000;
/// How deep archives may nest in archives.
const MAX_ZIP_NESTING: usize = 8;

/// Unpack every ZIP archive among `files` in place, recursively, as the platform does before its
/// importer runs: each archive (recognised by its content, not its name) is replaced by its
/// members, named `<archive's folder>/<member path>`, written under `scratch`. Members whose path
/// would leave the archive's folder are skipped. An archive that cannot be read to the end fails
/// the whole import, as on the platform.
pub fn unpack_zips(
    files: &[(String, PathBuf)],
    scratch: &Path,
) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = files.to_vec();
    for round in 0..=MAX_ZIP_NESTING {
        let archives: Vec<usize> = (0..out.len()).filter(|&i| is_zip(&out[i].1)).collect();
        if archives.is_empty() {
            return Ok(out);
        }
        let mut unpacked: Vec<(String, PathBuf)> = Vec::new();
        for &i in &archives {
            let (name, path) = &out[i];
            let folder = name.rsplit_once('/').map_or("", |(dir, _)| dir);
            let mut archive = zip::ZipArchive::new(File::open(path)?).map_err(io::Error::other)?;
            for k in 0..archive.len() {
                let mut member = archive.by_index(k).map_err(io::Error::other)?;
                if member.is_dir() {
                    continue;
                }
                let Some(relative) = member.enclosed_name() else {
                    continue;
                };
                let relative = relative.to_string_lossy().replace('\\', "/");
                let member_name = if folder.is_empty() {
                    relative
                } else {
                    format!("{folder}/{relative}")
                };
                let dest = scratch.join(format!("r{round}")).join(&member_name);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut target = File::create(&dest)?;
                io::copy(&mut member, &mut target)?;
                unpacked.push((member_name, dest));
                if out.len() + unpacked.len() > MAX_UNPACKED_FILES {
                    return Err(io::Error::other("too many files in the ZIP archives"));
                }
            }
        }
        let mut keep: Vec<(String, PathBuf)> = out
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !archives.contains(i))
            .map(|(_, f)| f)
            .collect();
        // A member named like a file already there overwrites it, as extraction into a folder does.
        for (name, path) in unpacked {
            keep.retain(|(n, _)| *n != name);
            keep.push((name, path));
        }
        out = keep;
    }
    Err(io::Error::other("ZIP archives nested too deeply"))
}

/// Whether a file is a ZIP archive by its content (an end of central directory record), like
/// Python's `zipfile.is_zipfile`.
fn is_zip(path: &Path) -> bool {
    File::open(path)
        .ok()
        .is_some_and(|f| zip::ZipArchive::new(f).is_ok())
}

/// Why the files of one DICOM image set cannot become an image set on the platform. Files are named by
/// their position among the files judged, so that the sandbox names them by upload name and a client by
/// the paths of its case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DicomSetFault {
    NoFiles,
    /// Two uploads have the same name.
    Duplicate([usize; 2]),
    /// Not a DICOM Part 10 file that can be read up to its pixel data.
    Unreadable {
        file: usize,
        why: String,
    },
    /// The platform's de-identification refuses the file: its SOP class is not in the procedure.
    Refused {
        file: usize,
        why: String,
    },
    /// The files differ in an identifier the whole set must share. The files are grouped by value, in
    /// order of first appearance; the values are not kept, since they may identify a patient.
    NotShared {
        keyword: &'static str,
        groups: Vec<Vec<usize>>,
    },
    /// The files lack an identifier the import needs.
    Missing {
        keyword: &'static str,
    },
    /// The first file holds no image (no Rows or Columns).
    NoImage {
        file: usize,
    },
}

impl DicomSetFault {
    /// The platform's wording, naming the files by `names` (one per file judged).
    pub fn message(&self, names: &[&str]) -> String {
        let name = |i: &usize| names.get(*i).copied().unwrap_or("a file");
        match self {
            DicomSetFault::NoFiles => "No DICOM files were uploaded".into(),
            DicomSetFault::Duplicate(_) => DUPLICATE_FILES_MESSAGE.into(),
            DicomSetFault::Unreadable { file, .. } => {
                format!("{} is not a valid DICOM file", name(file))
            }
            DicomSetFault::Refused { file, why } => {
                format!("{} was refused by the de-identification: {why}", name(file))
            }
            DicomSetFault::NotShared { keyword, groups } => format!(
                "All DICOM files of an image set must have the same {keyword}, found {} different values",
                groups.len()
            ),
            DicomSetFault::Missing { keyword } => format!("The DICOM files have no {keyword}"),
            DicomSetFault::NoImage { file } => format!("{} contains no image", name(file)),
        }
    }
}

/// Judge the files of one DICOM image set value (upload filename, path of the bytes) as the platform
/// will: each file readable as DICOM and of an SOP class its de-identification procedure takes, one
/// series of one study (the identifiers of [`IMAGE_SET_SHARED_TAGS`] shared), and an image in it. The
/// sandbox's import judges with this same function, so what passes here fails there only for reasons
/// outside the files (a fault injected as the platform's storage failing).
pub fn judge_dicom_image_set(files: &[(String, PathBuf)]) -> Result<(), DicomSetFault> {
    dicom_set_headers(files).map(|_| ())
}

/// The headers of a DICOM image set's files, once [`judge_dicom_image_set`]'s rules hold.
fn dicom_set_headers(files: &[(String, PathBuf)]) -> Result<Vec<DicomHeader>, DicomSetFault> {
    if files.is_empty() {
        return Err(DicomSetFault::NoFiles);
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(files.len());
    for (i, (name, _)) in files.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), i) {
            return Err(DicomSetFault::Duplicate([first, i]));
        }
    }
    let procedure = crate::deidentify::Procedure::builtin()
        .map_err(|why| DicomSetFault::Refused { file: 0, why })?;
    let mut headers = Vec::with_capacity(files.len());
    for (file, (_, path)) in files.iter().enumerate() {
        let header =
            read_dicom_header(path).map_err(|why| DicomSetFault::Unreadable { file, why })?;
        let refusal = match header.text(TAG_SOP_CLASS_UID).filter(|c| !c.is_empty()) {
            Some(class) => procedure.refusal(&class),
            None => Some("the file has no SOP Class UID (0008,0016)".into()),
        };
        if let Some(why) = refusal {
            return Err(DicomSetFault::Refused { file, why });
        }
        headers.push(header);
    }
    for (keyword, tag) in IMAGE_SET_SHARED_TAGS {
        let groups = group_by_value(&headers, tag);
        if groups.len() > 1 {
            return Err(DicomSetFault::NotShared { keyword, groups });
        }
    }
    for (keyword, tag) in [
        ("StudyInstanceUID", TAG_STUDY_UID),
        ("SeriesInstanceUID", TAG_SERIES_UID),
    ] {
        if headers[0].text(tag).is_none_or(|v| v.is_empty()) {
            return Err(DicomSetFault::Missing { keyword });
        }
    }
    if headers[0].u16(TAG_ROWS).is_none() || headers[0].u16(TAG_COLUMNS).is_none() {
        return Err(DicomSetFault::NoImage { file: 0 });
    }
    Ok(headers)
}

/// The files (by index) grouped by their value of `tag`, an absent value counting as empty, in order of
/// first appearance.
fn group_by_value(headers: &[DicomHeader], tag: u32) -> Vec<Vec<usize>> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let value = h.text(tag).unwrap_or_default();
        match groups.iter_mut().find(|(v, _)| *v == value) {
            Some((_, members)) => members.push(i),
            None => groups.push((value, vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// Import the files of one DICOM image set value, judged by [`judge_dicom_image_set`]'s rules.
pub fn import_dicom_image_set(files: &[(String, PathBuf)]) -> Result<ImportedImage, ImportError> {
    let names: Vec<&str> = files
        .iter()
        .map(|(name, _)| {
            name.rsplit_once('/')
                .map_or(name.as_str(), |(_, base)| base)
        })
        .collect();
    let headers = dicom_set_headers(files).map_err(|f| ImportError::Session(f.message(&names)))?;
    let first = &headers[0];
    let (Some(rows), Some(cols)) = (first.u16(TAG_ROWS), first.u16(TAG_COLUMNS)) else {
        return Err(ImportError::Session(format!(
            "{} contains no image",
            names[0]
        )));
    };
    let frames: u64 = headers.iter().map(|h| h.frames()).sum();
    let mut image = new_image(
        names[0].to_string(),
        u64::from(cols),
        u64::from(rows),
        Some(frames),
        None,
        dicom_color_space(first),
        ImageType::Mhd,
    );
    image.modality = first.text(TAG_MODALITY);
    image.files = names.iter().map(|n| n.to_string()).collect();
    image.pixel_type = dicom_pixel_type(&headers.iter().collect::<Vec<_>>());
    if let Some((x, y)) = first.pixel_spacing() {
        image.set_spacing(
            Some(x),
            Some(y),
            Some(first.spacing_between_slices().unwrap_or(1.0)),
        );
    }
    image.metadata = dicom_metadata(first);
    Ok(image)
}

/// The identifiers the server-side de-identification requires to be shared by a whole image set.
const IMAGE_SET_SHARED_TAGS: [(&str, u32); 7] = [
    ("StudyInstanceUID", TAG_STUDY_UID),
    ("SeriesInstanceUID", TAG_SERIES_UID),
    ("PatientID", TAG_PATIENT_ID),
    ("StudyID", TAG_STUDY_ID),
    ("StudyDate", TAG_STUDY_DATE),
    ("AccessionNumber", TAG_ACCESSION_NUMBER),
    ("SeriesNumber", TAG_SERIES_NUMBER),
];

fn unique_uploads(files: &[(String, PathBuf)]) -> Result<Vec<Upload<'_>>, ImportError> {
    let mut seen = HashSet::with_capacity(files.len());
    let mut uploads = Vec::with_capacity(files.len());
    for (name, path) in files {
        if !seen.insert(name.as_str()) {
            return Err(ImportError::Session(DUPLICATE_FILES_MESSAGE.into()));
        }
        uploads.push(Upload {
            name: name
                .rsplit_once('/')
                .map_or(name.as_str(), |(_, base)| base),
            key: name.as_str(),
            path: path.as_path(),
        });
    }
    Ok(uploads)
}

fn new_image(
    name: String,
    width: u64,
    height: u64,
    depth: Option<u64>,
    timepoints: Option<u64>,
    color_space: ColorSpace,
    image_type: ImageType,
) -> ImportedImage {
    let mut shape = Vec::with_capacity(5);
    shape.extend(timepoints);
    shape.extend(depth);
    shape.push(height);
    shape.push(width);
    if color_space.components() > 1 {
        shape.push(color_space.components());
    }
    ImportedImage {
        name,
        width,
        height,
        depth,
        shape,
        color_space: color_space.label().to_string(),
        image_type,
        voxel_spacing_mm: None,
        modality: None,
        files: Vec::new(),
        voxel_values: None,
        timepoints,
        voxel_width_mm: None,
        voxel_height_mm: None,
        voxel_depth_mm: None,
        pixel_type: None,
        segments: None,
        metadata: ImageMetadata::default(),
        unimported_files: Vec::new(),
    }
}

impl ImportedImage {
    fn set_spacing(&mut self, x: Option<f64>, y: Option<f64>, z: Option<f64>) {
        self.voxel_width_mm = x;
        self.voxel_height_mm = y;
        self.voxel_depth_mm = z;
        self.voxel_spacing_mm = match (x, y, z) {
            (Some(x), Some(y), Some(z)) => Some([x, y, z]),
            _ => None,
        };
    }
}

/// An image of a voxel grid (MetaImage, NIfTI, NRRD) as panimg makes it: `dims` fastest axis first
/// (width, height, then depth and time when present) and `spacing(k)` of axis `k`. The segments come
/// from the voxel values, and a fourth axis counts as timepoints unless the image is a segmentation.
fn grid_image(
    name: &str,
    dims: &[u64],
    color_space: ColorSpace,
    pt: PixelType,
    voxel_values: Option<Vec<i64>>,
    spacing: impl Fn(usize) -> f64,
) -> ImportedImage {
    let ndims = dims.len();
    let segments = panimg_segments(
        Some(pt),
        color_space.components(),
        ndims,
        dims.get(3).copied(),
        voxel_values.as_deref(),
    );
    let timepoints = if ndims == 4 && segments.is_none() {
        dims.get(3).copied()
    } else {
        None
    };
    let mut image = new_image(
        name.to_string(),
        dims[0],
        dims[1],
        dims.get(2).copied(),
        timepoints,
        color_space,
        ImageType::Mhd,
    );
    image.set_spacing(
        Some(spacing(0)),
        Some(spacing(1)),
        (ndims >= 3).then(|| spacing(2)),
    );
    image.pixel_type = Some(pt);
    image.voxel_values = voxel_values;
    image.segments = segments;
    image
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColorSpace {
    Gray,
    Rgb,
    Rgba,
    YCbCr,
}

impl ColorSpace {
    fn from_components(n: u64) -> Option<ColorSpace> {
        match n {
            1 => Some(ColorSpace::Gray),
            3 => Some(ColorSpace::Rgb),
            4 => Some(ColorSpace::Rgba),
            _ => None,
        }
    }

    fn components(self) -> u64 {
        match self {
            ColorSpace::Gray => 1,
            ColorSpace::Rgb => 3,
            ColorSpace::Rgba | ColorSpace::YCbCr => 4,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ColorSpace::Gray => "GRAY",
            ColorSpace::Rgb => "RGB",
            ColorSpace::Rgba => "RGBA",
            ColorSpace::YCbCr => "YCBCR",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small I/O helpers

/// Read at most `cap` bytes from the start of a file.
fn read_prefix(path: &Path, cap: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(cap.min(8192));
    File::open(path)?.take(cap as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Fill `buf` as far as the reader allows; returns the number of bytes read (short only at EOF).
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Voxel values

/// Collects distinct values: a bitmap for 8/16-bit types, a bounded set otherwise.
enum Distinct {
    Bitmap { seen: Vec<bool>, offset: i64 },
    Set(BTreeSet<i64>),
    Overflow,
}

impl Distinct {
    fn new(pt: PixelType) -> Distinct {
        match pt {
            PixelType::U8 => Distinct::Bitmap {
                seen: vec![false; 256],
                offset: 0,
            },
            PixelType::I8 => Distinct::Bitmap {
                seen: vec![false; 256],
                offset: 128,
            },
            PixelType::U16 => Distinct::Bitmap {
                seen: vec![false; 65536],
                offset: 0,
            },
            PixelType::I16 => Distinct::Bitmap {
                seen: vec![false; 65536],
                offset: 32768,
            },
            _ => Distinct::Set(BTreeSet::new()),
        }
    }

    fn insert(&mut self, v: i64) {
        match self {
            Distinct::Bitmap { seen, offset } => {
                if let Some(slot) = usize::try_from(v + *offset)
                    .ok()
                    .and_then(|i| seen.get_mut(i))
                {
                    *slot = true;
                }
            }
            Distinct::Set(set) => {
                set.insert(v);
                if set.len() > MAX_DISTINCT_VALUES {
                    *self = Distinct::Overflow;
                }
            }
            Distinct::Overflow => {}
        }
    }

    fn finish(self) -> Option<Vec<i64>> {
        match self {
            Distinct::Bitmap { seen, offset } => Some(
                seen.iter()
                    .enumerate()
                    .filter(|(_, s)| **s)
                    .map(|(i, _)| i as i64 - offset)
                    .collect(),
            ),
            Distinct::Set(set) => Some(set.into_iter().collect()),
            Distinct::Overflow => None,
        }
    }
}

/// How a reader treats voxel data that ends early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ShortData {
    /// The values are unknown.
    Unknown,
    /// The missing voxels are zero (the NIfTI reader zero-fills).
    Zero,
}

/// Stream `n_elements` values of `pt` from `reader` and collect the distinct ones. `None` when the
/// values cannot be known (see [`ShortData`]) or are too many to list.
fn scan_voxels(
    reader: &mut dyn Read,
    pt: PixelType,
    big_endian: bool,
    n_elements: u64,
    short: ShortData,
) -> io::Result<Option<Vec<i64>>> {
    const BUF: usize = 1 << 20;
    let size = pt.size() as usize;
    let mut distinct = Distinct::new(pt);
    let mut remaining = n_elements.saturating_mul(pt.size());
    let mut buf = vec![0u8; BUF];
    if pt == PixelType::U8 {
        // The common segmentation case, kept tight.
        let mut seen = [false; 256];
        while remaining > 0 {
            let want = remaining.min(BUF as u64) as usize;
            let got = fill(reader, &mut buf[..want])?;
            for &b in &buf[..got] {
                seen[usize::from(b)] = true;
            }
            if got < want {
                if short == ShortData::Unknown {
                    return Ok(None);
                }
                seen[0] = true;
                break;
            }
            remaining -= got as u64;
        }
        return Ok(Some((0..256i64).filter(|&v| seen[v as usize]).collect()));
    }
    while remaining > 0 {
        let want = remaining.min(BUF as u64) as usize;
        let got = fill(reader, &mut buf[..want])?;
        for chunk in buf[..got].chunks_exact(size) {
            distinct.insert(decode_int(chunk, pt, big_endian));
        }
        if got < want {
            if short == ShortData::Unknown {
                return Ok(None);
            }
            distinct.insert(0);
            break;
        }
        if matches!(distinct, Distinct::Overflow) {
            return Ok(None);
        }
        remaining -= got as u64;
    }
    Ok(distinct.finish())
}

fn decode_int(b: &[u8], pt: PixelType, be: bool) -> i64 {
    macro_rules! int {
        ($t:ty, $n:expr) => {{
            let mut a = [0u8; $n];
            a.copy_from_slice(&b[..$n]);
            if be {
                <$t>::from_be_bytes(a) as i64
            } else {
                <$t>::from_le_bytes(a) as i64
            }
        }};
    }
    match pt {
        PixelType::U8 => i64::from(b[0]),
        PixelType::I8 => i64::from(b[0] as i8),
        PixelType::U16 => int!(u16, 2),
        PixelType::I16 => int!(i16, 2),
        PixelType::U32 => int!(u32, 4),
        PixelType::I32 => int!(i32, 4),
        // u64 beyond i64::MAX wraps; such images are not segmentations anyway.
        PixelType::U64 => int!(u64, 8),
        PixelType::I64 => int!(i64, 8),
        PixelType::F32 | PixelType::F64 | PixelType::C64 | PixelType::C128 => 0,
    }
}

/// panimg's segment rule, from the distinct values of a single-channel image.
fn panimg_segments(
    pt: Option<PixelType>,
    components: u64,
    ndims: usize,
    size4: Option<u64>,
    values: Option<&[i64]>,
) -> Option<Vec<i64>> {
    if components != 1 || !pt?.is_8bit() {
        return None;
    }
    let values = values?;
    if ndims == 4 {
        if !values.iter().all(|v| *v == 0 || *v == 1) {
            return None;
        }
        let t = size4?;
        if t as usize > MAX_SEGMENTS {
            return None;
        }
        return Some((1..=t as i64).collect());
    }
    (values.len() <= MAX_SEGMENTS).then(|| values.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Metadata validation (panimg validates these header values and rejects the image otherwise)

fn is_float(s: &str) -> bool {
    // panimg: [-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            a.bytes().all(|c| c.is_ascii_digit())
                && !b.is_empty()
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

fn is_float_array(s: &str) -> bool {
    // "[1.0, 2.0]"
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .is_some_and(|inner| {
            inner
                .split(',')
                .all(|p| is_float(p.strip_prefix(' ').unwrap_or(p)))
        })
}

/// panimg's checks of the additional MetaImage/NIfTI/NRRD header fields it keeps (its
/// `ADDITIONAL_HEADERS`); any other field passes. `fields` are the header's (key, value) pairs,
/// `timepoints` the size of the fourth axis of a 4-D image, else 1. `Err` rejects the file.
fn validate_additional_headers(fields: &[(&str, &str)], timepoints: u64) -> Result<(), String> {
    let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    for &(key, value) in fields {
        let ok = match key {
            "Laterality" => value.chars().count() <= 128 && !value.contains('\n'),
            "SliceThickness"
            | "SmallestImagePixelValue"
            | "LargestImagePixelValue"
            | "t0"
            | "t1" => is_float(value),
            "Exposures" => value.split(' ').all(is_float),
            "WindowCenter" | "WindowWidth" => is_float(value) || is_float_array(value),
            "ContentTimes" => value.split(' ').all(is_content_time),
            _ => continue,
        };
        if !ok {
            return Err(format!(
                "Value {value:?} for field {key:?} does not match pattern"
            ));
        }
        if matches!(key, "Exposures" | "ContentTimes") {
            let n = value.split(' ').count() as u64;
            if n != timepoints {
                return Err(format!(
                    "Found {n} values for {key:?}, but expected {timepoints} (1/timepoint)"
                ));
            }
        }
        if is_float_array(value) {
            let counter = if key == "WindowCenter" {
                "WindowWidth"
            } else {
                "WindowCenter"
            };
            let Some(other) = get(counter) else {
                return Err(format!(
                    "Headers {key:?} and {counter:?} should both be present but {counter:?} is missing"
                ));
            };
            if !is_float_array(other) {
                return Err(format!(
                    "Header {key:?} is of a different format than {counter:?}"
                ));
            }
            if value.split(',').count() != other.split(',').count() {
                return Err(format!(
                    "Headers {key:?} and {counter:?} should contain an equal number of values"
                ));
            }
        }
    }
    Ok(())
}

/// `HHMMSS` or `HHMMSS.fff`.
fn is_content_time(t: &str) -> bool {
    let (hms, frac) = match t.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (t, None),
    };
    hms.len() == 6
        && hms.bytes().all(|b| b.is_ascii_digit())
        && hms[0..2] < *"24"
        && hms[2..3] < *"6"
        && hms[4..5] < *"6"
        && frac.is_none_or(|f| f.len() == 3 && f.bytes().all(|b| b.is_ascii_digit()))
}

fn metadata_from(get: impl Fn(&str) -> Option<String>) -> ImageMetadata {
    let get = |k: &str| get(k).filter(|v| !v.is_empty());
    ImageMetadata {
        patient_id: get("PatientID"),
        patient_name: get("PatientName"),
        patient_birth_date: get("PatientBirthDate"),
        patient_age: get("PatientAge"),
        patient_sex: get("PatientSex"),
        study_date: get("StudyDate"),
        study_instance_uid: get("StudyInstanceUID"),
        series_instance_uid: get("SeriesInstanceUID"),
        study_description: get("StudyDescription"),
        series_description: get("SeriesDescription"),
        study_id: None,
        accession_number: None,
        series_number: None,
    }
}

// ---------------------------------------------------------------------------------------------
// MetaImage

/// The key/value lines of a MetaImage header, up to and including `ElementDataFile`.
struct MetaHeader {
    fields: HashMap<String, String>,
    order: Vec<String>,
    /// Where the voxels start in a `LOCAL` file: just after the `ElementDataFile` line.
    data_offset: u64,
}

impl MetaHeader {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|v| matches!(v.as_bytes().first(), Some(b'T' | b't' | b'1')))
    }
}

/// Parse like panimg: lines of at most 10 000 bytes, valid UTF-8, `key = value` (other lines
/// ignored), ending with the `ElementDataFile` line. `None`: not a MetaImage header.
fn parse_meta_header(prefix: &[u8]) -> Option<MetaHeader> {
    let mut fields = HashMap::new();
    let mut order = Vec::new();
    let mut pos = 0usize;
    while pos < prefix.len() {
        let (line, next) = match prefix[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&prefix[pos..pos + i], pos + i + 1),
            // A header line cut by the read cap cannot be judged: not a header we accept.
            None if prefix.len() == HEADER_CAP => return None,
            None => (&prefix[pos..], prefix.len()),
        };
        if line.len() >= 10_000 {
            return None;
        }
        let line = std::str::from_utf8(line).ok()?;
        let line = line.trim_end_matches(['\r', '\n']);
        if !line.trim().is_empty()
            && let Some((k, v)) = line.split_once('=')
        {
            let key = k.trim().to_string();
            if !fields.contains_key(&key) {
                order.push(key.clone());
            }
            fields.insert(key.clone(), v.trim().to_string());
            if key == "ElementDataFile" {
                return Some(MetaHeader {
                    fields,
                    order,
                    data_offset: next as u64,
                });
            }
        }
        pos = next;
    }
    None
}

fn metaio_element_type(name: &str) -> Option<PixelType> {
    let base = name.strip_suffix("_ARRAY").unwrap_or(name);
    Some(match base {
        "MET_CHAR" => PixelType::I8,
        "MET_UCHAR" => PixelType::U8,
        "MET_SHORT" => PixelType::I16,
        "MET_USHORT" => PixelType::U16,
        "MET_INT" | "MET_LONG" => PixelType::I32,
        "MET_UINT" | "MET_ULONG" => PixelType::U32,
        "MET_LONG_LONG" => PixelType::I64,
        "MET_ULONG_LONG" => PixelType::U64,
        "MET_FLOAT" => PixelType::F32,
        "MET_DOUBLE" => PixelType::F64,
        _ => return None,
    })
}

fn build_metaimage(uploads: &[Upload], remaining: &[usize]) -> BuilderResult {
    collect_built(remaining.iter().map(|&i| {
        let prefix = read_prefix(uploads[i].path, HEADER_CAP).map_err(|e| e.to_string())?;
        let header = parse_meta_header(&prefix).ok_or("Not an ITK file")?;
        metaimage_image(uploads, i, &header)
    }))
}

fn metaimage_image(uploads: &[Upload], i: usize, h: &MetaHeader) -> Result<Built, Reject> {
    let (data_index, data_offset) = metaimage_data_file(uploads, i, h)?;
    let layout = MetaLayout::read(h)?;
    let voxel_values = layout.voxel_values(uploads[data_index].path, data_offset)?;
    let spacing = |k: usize| {
        layout
            .spacing
            .as_ref()
            .and_then(|s| s.get(k).copied())
            .unwrap_or(1.0)
    };
    let mut image = grid_image(
        uploads[i].name,
        &layout.dims,
        layout.color_space,
        layout.pt,
        voxel_values,
        spacing,
    );
    image.metadata = metadata_from(|k| h.get(k).map(str::to_string));
    let mut consumed = vec![i];
    if data_index != i {
        consumed.push(data_index);
    }
    image.files = consumed
        .iter()
        .map(|&k| uploads[k].name.to_string())
        .collect();
    Ok(Built { image, consumed })
}

/// Which upload holds the voxels of the header at `i`, and where in it they start (`u64::MAX`: they
/// are the last bytes of the file). A detached data file must be another upload of the same folder.
fn metaimage_data_file(
    uploads: &[Upload],
    i: usize,
    h: &MetaHeader,
) -> Result<(usize, u64), Reject> {
    let data_file = h.get("ElementDataFile").unwrap_or_default();
    if data_file == "LOCAL" {
        return Ok((i, h.data_offset));
    }
    if data_file.is_empty()
        || data_file.contains('/')
        || data_file == "."
        || data_file == ".."
        || data_file.starts_with("LIST")
        || data_file.contains('%')
    {
        return Err(
            "ElementDataFile references a file which is not in the uploaded data directory".into(),
        );
    }
    let j = uploads
        .iter()
        .position(|u| u.name == data_file)
        .ok_or("Data container of mhd file is missing")?;
    let header_size: i64 = match h.get("HeaderSize") {
        Some(v) => v.parse().map_err(|_| "invalid HeaderSize")?,
        None => 0,
    };
    // -1: the voxels are the last bytes of the file (resolved once the data size is known).
    Ok((
        j,
        if header_size == -1 {
            u64::MAX
        } else {
            header_size.max(0) as u64
        },
    ))
}

/// What a MetaImage header says about its voxels.
struct MetaLayout {
    /// Axis sizes, fastest first.
    dims: Vec<u64>,
    pt: PixelType,
    components: u64,
    color_space: ColorSpace,
    spacing: Option<Vec<f64>>,
    big_endian: bool,
    /// `false`: the voxels are ASCII text.
    binary: bool,
    compressed: bool,
}

impl MetaLayout {
    /// The header's geometry, component type and encoding, checked as ITK and panimg check them.
    fn read(h: &MetaHeader) -> Result<MetaLayout, Reject> {
        let ndims: usize = h
            .get("NDims")
            .and_then(|v| v.parse().ok())
            .ok_or("NDims missing or invalid")?;
        if !(2..=4).contains(&ndims) {
            return Err("only 2-D, 3-D and 4-D images are supported".into());
        }
        let dims: Vec<u64> = h
            .get("DimSize")
            .ok_or("DimSize missing")?
            .split_whitespace()
            .map(|v| v.parse::<u64>().ok())
            .collect::<Option<_>>()
            .ok_or("DimSize invalid")?;
        // An empty image is read, but the platform's model of it raises (no minimum of no voxels).
        if dims.contains(&0) {
            return Err(Reject::Unexpected);
        }
        if dims.len() != ndims {
            return Err("DimSize does not match NDims".into());
        }
        let pt = metaio_element_type(h.get("ElementType").ok_or("ElementType missing")?)
            .ok_or("unsupported ElementType")?;
        let components: u64 = match h.get("ElementNumberOfChannels") {
            Some(v) => v.parse().map_err(|_| "invalid ElementNumberOfChannels")?,
            None => 1,
        };
        if components > 4 {
            return Err("Images with more than 4 channels not supported".into());
        }
        // Two channels pass the reader but not the platform's colour space model, which raises.
        let color_space = ColorSpace::from_components(components).ok_or(Reject::Unexpected)?;
        let fields: Vec<(&str, &str)> = h
            .order
            .iter()
            .map(|k| (k.as_str(), h.get(k).unwrap_or_default()))
            .collect();
        validate_additional_headers(&fields, if ndims == 4 { dims[3] } else { 1 })?;
        let spacing: Option<Vec<f64>> = h
            .get("ElementSpacing")
            .or_else(|| h.get("ElementSize"))
            .and_then(|v| v.split_whitespace().map(|s| s.parse().ok()).collect());
        // ITK refuses an image with a zero spacing.
        if spacing
            .as_ref()
            .is_some_and(|s| s.iter().take(ndims).any(|v| *v == 0.0))
        {
            return Err("SimpleITK could not open file.".into());
        }
        Ok(MetaLayout {
            dims,
            pt,
            components,
            color_space,
            spacing,
            big_endian: h
                .flag("BinaryDataByteOrderMSB")
                .or_else(|| h.flag("ElementByteOrderMSB"))
                .unwrap_or(false),
            binary: h.flag("BinaryData").unwrap_or(true),
            compressed: h.flag("CompressedData").unwrap_or(false),
        })
    }

    /// Check the voxel data at `offset` of `path` (`u64::MAX`: the last bytes of the file) as the
    /// reader does, and read its distinct values where the image is small enough.
    fn voxel_values(&self, path: &Path, offset: u64) -> Result<Option<Vec<i64>>, Reject> {
        let n_elements = self
            .dims
            .iter()
            .try_fold(self.components, |acc, d| acc.checked_mul(*d))
            .ok_or("image too large")?;
        let expected = n_elements
            .checked_mul(self.pt.size())
            .ok_or("image too large")?;
        let data_len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        let offset = if offset == u64::MAX {
            if self.compressed {
                return Err("HeaderSize = -1 is not supported with compressed data".into());
            }
            data_len
                .checked_sub(expected)
                .ok_or("data not read completely")?
        } else {
            offset
        };
        let available = data_len.saturating_sub(offset);
        let scanned = self.pt.is_integer() && expected <= MAX_VOXEL_SCAN_BYTES;
        if !self.binary {
            // ASCII voxels: the reader parses text; nothing to check at header level.
            Ok(None)
        } else if !self.compressed {
            if available < expected {
                return Err("data not read completely".into());
            }
            if !scanned {
                return Ok(None);
            }
            let mut f = File::open(path).map_err(|e| e.to_string())?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
            let values = scan_voxels(
                &mut f,
                self.pt,
                self.big_endian,
                n_elements,
                ShortData::Unknown,
            )
            .map_err(|e| e.to_string())?;
            Ok(values)
        } else if scanned {
            // The reader tolerates a damaged or even missing compressed stream.
            self.compressed_values(path, offset, available, n_elements)
        } else {
            Ok(None)
        }
    }

    /// The distinct values of a zlib or gzip stream of `available` bytes at `offset`; a corrupt
    /// stream leaves them unknown rather than failing the import.
    fn compressed_values(
        &self,
        path: &Path,
        offset: u64,
        available: u64,
        n_elements: u64,
    ) -> Result<Option<Vec<i64>>, Reject> {
        let mut f = File::open(path).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut first = [0u8; 2];
        let got = fill(&mut f, &mut first).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let raw = BufReader::new(f.take(available));
        let mut decoder: Box<dyn Read> = if got == 2 && first == [0x1f, 0x8b] {
            Box::new(flate2::bufread::GzDecoder::new(raw))
        } else {
            Box::new(flate2::bufread::ZlibDecoder::new(raw))
        };
        Ok(scan_voxels(
            &mut *decoder,
            self.pt,
            self.big_endian,
            n_elements,
            ShortData::Unknown,
        )
        .ok()
        .flatten())
    }
}

// ---------------------------------------------------------------------------------------------
// NIfTI

struct NiftiHeader {
    dim: [i64; 8],
    intent_code: i16,
    datatype: i16,
    pixdim: [f64; 8],
    vox_offset: f64,
    scl_slope: f64,
    scl_inter: f64,
    big_endian: bool,
}

fn parse_nifti_header(h: &[u8]) -> Option<NiftiHeader> {
    if h.len() < 348 {
        return None;
    }
    let le = |at: usize| i32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let be = |at: usize| i32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    // NIfTI-2 (a 540-byte header) is not read by the platform's SimpleITK.
    let big_endian = match (le(0), be(0)) {
        (348, _) => false,
        (_, 348) => true,
        _ => return None,
    };
    let i16_at = |at: usize| {
        let b = [h[at], h[at + 1]];
        if big_endian {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    };
    let f32_at = |at: usize| {
        let b = [h[at], h[at + 1], h[at + 2], h[at + 3]];
        f64::from(if big_endian {
            f32::from_be_bytes(b)
        } else {
            f32::from_le_bytes(b)
        })
    };
    let mut dim = [0i64; 8];
    let mut pixdim = [0f64; 8];
    for k in 0..8 {
        dim[k] = i64::from(i16_at(40 + 2 * k));
        pixdim[k] = f32_at(76 + 4 * k);
    }
    Some(NiftiHeader {
        dim,
        intent_code: i16_at(68),
        datatype: i16_at(70),
        pixdim,
        vox_offset: f32_at(108),
        scl_slope: f32_at(112),
        scl_inter: f32_at(116),
        big_endian,
    })
}

/// (component type, components) of a NIfTI datatype code.
fn nifti_datatype(code: i16) -> Option<(PixelType, u64)> {
    Some(match code {
        2 => (PixelType::U8, 1),
        4 => (PixelType::I16, 1),
        8 => (PixelType::I32, 1),
        16 => (PixelType::F32, 1),
        64 => (PixelType::F64, 1),
        128 => (PixelType::U8, 3),
        256 => (PixelType::I8, 1),
        512 => (PixelType::U16, 1),
        768 => (PixelType::U32, 1),
        1024 => (PixelType::I64, 1),
        32 => (PixelType::C64, 1),
        1792 => (PixelType::C128, 1),
        1280 => (PixelType::U64, 1),
        2304 => (PixelType::U8, 4),
        _ => return None,
    })
}

fn open_nifti(upload: &Upload) -> io::Result<Box<dyn Read>> {
    let mut f = File::open(upload.path)?;
    let mut magic = [0u8; 2];
    let got = fill(&mut f, &mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    // A `.nii.gz` is read through gzip when it is gzip; plain bytes are read as they are.
    if upload.name.ends_with(".gz") && got == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(
            f,
        ))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

fn build_nifti(uploads: &[Upload], remaining: &[usize]) -> BuilderResult {
    collect_built(
        remaining
            .iter()
            .filter(|&&i| uploads[i].name.ends_with(".nii") || uploads[i].name.ends_with(".nii.gz"))
            .map(|&i| nifti_image(uploads, i)),
    )
}

fn nifti_image(uploads: &[Upload], i: usize) -> Result<Built, Reject> {
    let upload = uploads[i];
    let mut reader = open_nifti(&upload).map_err(|e| e.to_string())?;
    let mut head = [0u8; 540];
    let got = fill(&mut *reader, &mut head).map_err(|e| e.to_string())?;
    let h = parse_nifti_header(&head[..got]).ok_or("Not a valid NifTI image file")?;
    let (mut pt, rgb_components) = nifti_datatype(h.datatype).ok_or("unsupported datatype")?;
    let (dims, components) = nifti_axes(&h, rgb_components)?;
    if components > 4 {
        return Err("Images with more than 4 channels not supported".into());
    }
    // Two channels pass the reader but not the platform's colour space model, which raises.
    let color_space = ColorSpace::from_components(components).ok_or(Reject::Unexpected)?;
    let rescaled =
        h.scl_slope.is_finite() && h.scl_slope != 0.0 && (h.scl_slope != 1.0 || h.scl_inter != 0.0);
    if rescaled {
        pt = if pt == PixelType::F64 {
            PixelType::F64
        } else {
            PixelType::F32
        };
    }

    let n_elements = dims
        .iter()
        .try_fold(components, |acc, s| acc.checked_mul(*s))
        .ok_or("image too large")?;
    let voxel_bytes = n_elements.checked_mul(pt.size()).ok_or("image too large")?;
    let mut voxel_values = None;
    if pt.is_integer()
        && voxel_bytes <= MAX_VOXEL_SCAN_BYTES
        && h.vox_offset.is_finite()
        && h.vox_offset >= 0.0
    {
        // The reader does not insist on complete voxel data; a short file leaves values unknown.
        voxel_values = nifti_values(&head[..got], reader, &h, pt, n_elements)
            .ok()
            .flatten();
    }

    let spacing = |k: usize| {
        let pixdim = h.pixdim[k + 1];
        if pixdim.is_finite() && pixdim != 0.0 {
            pixdim.abs()
        } else {
            1.0
        }
    };
    let mut image = grid_image(upload.name, &dims, color_space, pt, voxel_values, spacing);
    image.files = vec![upload.name.to_string()];
    Ok(Built {
        image,
        consumed: vec![i],
    })
}

/// The image axes as the reader sees them (sizes, fastest first) and the components per voxel. A 5th
/// axis > 1 holds vector components; trailing singleton time and (for vectors) depth axes are dropped.
fn nifti_axes(h: &NiftiHeader, rgb_components: u64) -> Result<(Vec<u64>, u64), Reject> {
    let d = h.dim;
    if !(1..=7).contains(&d[0]) || (1..=d[0] as usize).any(|k| d[k] < 0) {
        return Err("invalid dimensions".into());
    }
    // The reader takes a dimension of 0 as 1.
    let size = |k: usize| {
        if k as i64 <= d[0] {
            d[k].max(1) as u64
        } else {
            1
        }
    };
    let mut ndims = d[0] as usize;
    let mut components = rgb_components;
    if ndims >= 5 {
        // A fifth axis holds vector components only for a vector or displacement intent;
        // otherwise the image has five dimensions, which the platform refuses.
        const VECTOR_INTENTS: [i16; 2] = [1006, 1007];
        if (6..=ndims).any(|k| size(k) != 1)
            || (rgb_components > 1 && size(5) > 1)
            || (size(5) > 1 && !VECTOR_INTENTS.contains(&h.intent_code))
        {
            return Err("SimpleITK images with more than 4 dimensions are not supported".into());
        }
        if size(5) > 1 {
            components = size(5);
            ndims = 4;
            while ndims > 2 && size(ndims) == 1 {
                ndims -= 1;
            }
        } else {
            ndims = 4;
        }
    }
    if ndims == 4 && size(4) == 1 {
        ndims = 3;
    }
    if !(2..=4).contains(&ndims) {
        return Err("only 2-D, 3-D and 4-D images are supported".into());
    }
    Ok(((1..=ndims).map(size).collect(), components))
}

/// The distinct voxel values of a NIfTI image, `head` being the bytes read with its header and
/// `reader` the rest of the file.
fn nifti_values(
    head: &[u8],
    reader: Box<dyn Read>,
    h: &NiftiHeader,
    pt: PixelType,
    n_elements: u64,
) -> io::Result<Option<Vec<i64>>> {
    let offset = h.vox_offset as u64;
    // The voxels may start among the bytes read with the header.
    let start = offset.min(head.len() as u64) as usize;
    let mut data = (&head[start..]).chain(reader);
    let gap = offset - start as u64;
    let skipped = io::copy(&mut (&mut data).take(gap), &mut io::sink())?;
    if skipped != gap {
        // No voxel data at all: the reader zero-fills the whole image.
        return Ok(Some(vec![0]));
    }
    scan_voxels(&mut data, pt, h.big_endian, n_elements, ShortData::Zero)
}

// ---------------------------------------------------------------------------------------------
// NRRD (single file, header and data together)

/// The fields of an attached NRRD header and where its data starts.
struct NrrdHeader {
    fields: HashMap<String, String>,
    data_offset: u64,
}

/// panimg's check, then the header as the reader parses it. `Err`: not a NRRD the platform takes.
fn parse_nrrd_header(prefix: &[u8]) -> Result<NrrdHeader, Reject> {
    let magic = prefix.get(..8).ok_or("Not a NRRD image file")?;
    let version = magic
        .strip_prefix(b"NRRD")
        .filter(|v| v.iter().all(u8::is_ascii_digit))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u32>().ok())
        .ok_or("Not a NRRD image file")?;
    if !(1..=5).contains(&version) {
        return Err("File format not supported".into());
    }
    let mut fields = HashMap::new();
    let mut pos = match prefix.iter().position(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => return Err("Not a valid NRRD image file".into()),
    };
    loop {
        let Some(len) = prefix[pos..].iter().position(|&b| b == b'\n') else {
            // The header does not end within what was read (or the file ends inside it).
            return Err("Not a valid NRRD image file".into());
        };
        let line = &prefix[pos..pos + len];
        pos += len + 1;
        let line = std::str::from_utf8(line)
            .map_err(|_| "Not a valid NRRD image file")?
            .trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("data file:") || lower.starts_with("datafile:") {
            return Err("NRRD files with detached headers are not supported".into());
        }
        // `key:=value` pairs are free-form metadata; `field: value` lines describe the data.
        if line.contains(":=") {
            continue;
        }
        let (k, v) = line.split_once(": ").ok_or("Not a valid NRRD image file")?;
        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    Ok(NrrdHeader {
        fields,
        data_offset: pos as u64,
    })
}

fn nrrd_type(name: &str) -> Option<PixelType> {
    Some(match name {
        "signed char" | "int8" | "int8_t" => PixelType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => PixelType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            PixelType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => {
            PixelType::U16
        }
        "int" | "signed int" | "int32" | "int32_t" => PixelType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => PixelType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => PixelType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            PixelType::U64
        }
        "float" => PixelType::F32,
        "double" => PixelType::F64,
        _ => return None,
    })
}

fn build_nrrd(uploads: &[Upload], remaining: &[usize]) -> BuilderResult {
    collect_built(remaining.iter().map(|&i| {
        let prefix = read_prefix(uploads[i].path, HEADER_CAP).map_err(|e| e.to_string())?;
        let header = parse_nrrd_header(&prefix)?;
        nrrd_image(uploads, i, &header)
    }))
}

fn nrrd_image(uploads: &[Upload], i: usize, h: &NrrdHeader) -> Result<Built, Reject> {
    let layout = NrrdLayout::read(h)?;
    let voxel_values = layout.voxel_values(uploads[i].path, h.data_offset)?;
    let spacing = |k: usize| {
        layout
            .spacing
            .as_ref()
            .and_then(|s| s.get(k + layout.component_axes).copied())
            .map_or(1.0, f64::abs)
    };
    let image = grid_image(
        uploads[i].name,
        &layout.dims,
        layout.color_space,
        layout.pt,
        voxel_values,
        spacing,
    );
    Ok(Built {
        image,
        consumed: vec![i],
    })
}

/// What an attached NRRD header says about its data.
struct NrrdLayout {
    pt: PixelType,
    /// Domain axis sizes, fastest first.
    dims: Vec<u64>,
    components: u64,
    /// Leading axes that hold the components of a pixel (0 or 1): the spacings skip them.
    component_axes: usize,
    color_space: ColorSpace,
    /// Lower case, e.g. `raw` or `gzip`.
    encoding: String,
    big_endian: bool,
    spacing: Option<Vec<f64>>,
}

/// Any structural problem in a NRRD header, as the reader words it.
const NRRD_INVALID: &str = "Not a valid NRRD image file";

impl NrrdLayout {
    /// The header's type, axes, encoding and spacings, checked as the reader checks them.
    fn read(h: &NrrdHeader) -> Result<NrrdLayout, Reject> {
        let get = |k: &str| h.fields.get(k).map(String::as_str);
        let pt = nrrd_type(get("type").ok_or(NRRD_INVALID)?).ok_or(NRRD_INVALID)?;
        let dimension: usize = get("dimension")
            .and_then(|v| v.parse().ok())
            .ok_or(NRRD_INVALID)?;
        let sizes: Vec<u64> = get("sizes")
            .ok_or(NRRD_INVALID)?
            .split_whitespace()
            .map(|v| v.parse::<u64>().ok().filter(|s| *s > 0))
            .collect::<Option<_>>()
            .ok_or(NRRD_INVALID)?;
        if sizes.len() != dimension || dimension == 0 {
            return Err(NRRD_INVALID.into());
        }
        // An axis whose kind is not a domain holds the components of a pixel (the first one only).
        let kinds: Vec<String> = get("kinds")
            .map(|k| k.split_whitespace().map(str::to_ascii_lowercase).collect())
            .unwrap_or_default();
        let is_domain = |k: &str| matches!(k, "domain" | "space" | "time" | "none" | "???");
        let (components, dims) = match kinds.first() {
            Some(k) if !is_domain(k) => (sizes[0], sizes[1..].to_vec()),
            _ => (1, sizes.clone()),
        };
        if !(2..=4).contains(&dims.len()) {
            return Err("SimpleITK images with more than 4 dimensions are not supported".into());
        }
        if components > 4 {
            return Err("Images with more than 4 channels not supported".into());
        }
        let color_space = ColorSpace::from_components(components).ok_or(Reject::Unexpected)?;
        let encoding = get("encoding").ok_or(NRRD_INVALID)?.to_ascii_lowercase();
        let big_endian = match get("endian") {
            Some("big") => true,
            Some("little") | None => false,
            Some(_) => return Err(NRRD_INVALID.into()),
        };
        if pt.size() > 1
            && get("endian").is_none()
            && matches!(encoding.as_str(), "raw" | "gzip" | "gz")
        {
            return Err(NRRD_INVALID.into());
        }
        let spacing: Option<Vec<f64>> = get("spacings").and_then(|v| {
            v.split_whitespace()
                .filter(|s| !s.eq_ignore_ascii_case("nan"))
                .map(|s| s.parse().ok())
                .collect()
        });
        if spacing.as_ref().is_some_and(|s| s.contains(&0.0)) {
            return Err(NRRD_INVALID.into());
        }
        Ok(NrrdLayout {
            pt,
            component_axes: sizes.len() - dims.len(),
            dims,
            components,
            color_space,
            encoding,
            big_endian,
            spacing,
        })
    }

    /// Read the data at `offset` of `path` through its encoding: the reader needs every voxel, so a
    /// short or damaged data stream is no image. The distinct values where the image is small enough.
    fn voxel_values(&self, path: &Path, offset: u64) -> Result<Option<Vec<i64>>, Reject> {
        let pt = self.pt;
        let n_elements = self
            .dims
            .iter()
            .try_fold(self.components, |acc, d| acc.checked_mul(*d))
            .ok_or("image too large")?;
        let expected = n_elements.checked_mul(pt.size()).ok_or("image too large")?;
        let mut f = File::open(path).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut data: Box<dyn Read> = match self.encoding.as_str() {
            "raw" => Box::new(BufReader::new(f)),
            "gzip" | "gz" => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
            _ => return Err("unsupported NRRD encoding".into()),
        };
        if pt.is_integer() && expected <= MAX_VOXEL_SCAN_BYTES {
            scan_voxels(
                &mut *data,
                pt,
                self.big_endian,
                n_elements,
                ShortData::Unknown,
            )
            .map_err(|_| NRRD_INVALID)?
            .ok_or(NRRD_INVALID)
            .map(Some)
            .map_err(Reject::from)
        } else {
            let read = io::copy(&mut (&mut data).take(expected), &mut io::sink())
                .map_err(|_| NRRD_INVALID)?;
            if read < expected {
                return Err(NRRD_INVALID.into());
            }
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DICOM

const TAG_TRANSFER_SYNTAX: u32 = 0x0002_0010;
const TAG_SOP_CLASS_UID: u32 = 0x0008_0016;
const TAG_STUDY_DATE: u32 = 0x0008_0020;
const TAG_CONTENT_TIME: u32 = 0x0008_0033;
const TAG_EXPOSURE: u32 = 0x0018_1152;
const TAG_TEMPORAL_POSITION_INDEX: u32 = 0x0020_9128;
const TAG_ACCESSION_NUMBER: u32 = 0x0008_0050;
const TAG_MODALITY: u32 = 0x0008_0060;
const TAG_STUDY_DESCRIPTION: u32 = 0x0008_1030;
const TAG_SERIES_DESCRIPTION: u32 = 0x0008_103E;
const TAG_PATIENT_NAME: u32 = 0x0010_0010;
const TAG_PATIENT_ID: u32 = 0x0010_0020;
const TAG_PATIENT_BIRTH_DATE: u32 = 0x0010_0030;
const TAG_PATIENT_SEX: u32 = 0x0010_0040;
const TAG_PATIENT_AGE: u32 = 0x0010_1010;
const TAG_SPACING_BETWEEN_SLICES: u32 = 0x0018_0088;
const TAG_STUDY_UID: u32 = 0x0020_000D;
const TAG_SERIES_UID: u32 = 0x0020_000E;
const TAG_STUDY_ID: u32 = 0x0020_0010;
const TAG_SERIES_NUMBER: u32 = 0x0020_0011;
const TAG_INSTANCE_NUMBER: u32 = 0x0020_0013;
const TAG_IMAGE_POSITION: u32 = 0x0020_0032;
const TAG_STACK_ID: u32 = 0x0020_9056;
const TAG_SAMPLES_PER_PIXEL: u32 = 0x0028_0002;
const TAG_PHOTOMETRIC: u32 = 0x0028_0004;
const TAG_NUMBER_OF_FRAMES: u32 = 0x0028_0008;
const TAG_ROWS: u32 = 0x0028_0010;
const TAG_COLUMNS: u32 = 0x0028_0011;
const TAG_PIXEL_SPACING: u32 = 0x0028_0030;
const TAG_BITS_ALLOCATED: u32 = 0x0028_0100;
const TAG_PIXEL_REPRESENTATION: u32 = 0x0028_0103;
const TAG_RESCALE_INTERCEPT: u32 = 0x0028_1052;
const TAG_RESCALE_SLOPE: u32 = 0x0028_1053;
const TAG_PER_FRAME_GROUPS: u32 = 0x5200_9230;
const TAG_PIXEL_DATA: u32 = 0x7FE0_0010;
const TAG_ITEM: u32 = 0xFFFE_E000;
const TAG_ITEM_DELIMITER: u32 = 0xFFFE_E00D;
const TAG_SEQUENCE_DELIMITER: u32 = 0xFFFE_E0DD;
const UNDEFINED: u32 = 0xFFFF_FFFF;

const WANTED_TAGS: [u32; 32] = [
    TAG_SOP_CLASS_UID,
    TAG_CONTENT_TIME,
    TAG_EXPOSURE,
    TAG_TEMPORAL_POSITION_INDEX,
    TAG_STUDY_DATE,
    TAG_ACCESSION_NUMBER,
    TAG_MODALITY,
    TAG_STUDY_DESCRIPTION,
    TAG_SERIES_DESCRIPTION,
    TAG_PATIENT_NAME,
    TAG_PATIENT_ID,
    TAG_PATIENT_BIRTH_DATE,
    TAG_PATIENT_SEX,
    TAG_PATIENT_AGE,
    TAG_SPACING_BETWEEN_SLICES,
    TAG_STUDY_UID,
    TAG_SERIES_UID,
    TAG_STUDY_ID,
    TAG_SERIES_NUMBER,
    TAG_INSTANCE_NUMBER,
    TAG_IMAGE_POSITION,
    TAG_STACK_ID,
    TAG_SAMPLES_PER_PIXEL,
    TAG_PHOTOMETRIC,
    TAG_NUMBER_OF_FRAMES,
    TAG_ROWS,
    TAG_COLUMNS,
    TAG_PIXEL_SPACING,
    TAG_BITS_ALLOCATED,
    TAG_PIXEL_REPRESENTATION,
    TAG_RESCALE_INTERCEPT,
    TAG_RESCALE_SLOPE,
];

const WSI_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.77.1.6";
const MAX_DICOM_VALUE: u32 = 4096;
const MAX_DICOM_NESTING: usize = 16;

/// The top-level attributes of one DICOM file that the importer looks at.
#[derive(Debug, Default)]
struct DicomHeader {
    values: HashMap<u32, Vec<u8>>,
    big_endian: bool,
    per_frame_items: Option<u64>,
    /// Length of the pixel data value (`None`: encapsulated / undefined length).
    pixel_data_len: Option<Option<u64>>,
    /// Bytes left in the file after the pixel data element header (`None`: unknown, deflated).
    bytes_after_pixel_header: Option<u64>,
    /// Where the pixel data value starts in the file (`None`: deflated).
    pixel_data_offset: Option<u64>,
    native: bool,
}

impl DicomHeader {
    fn text(&self, tag: u32) -> Option<String> {
        let raw = self.values.get(&tag)?;
        let s = String::from_utf8_lossy(raw);
        let s = s.trim_end_matches(['\0', ' ']).trim_start_matches(' ');
        Some(s.to_string())
    }

    fn u16(&self, tag: u32) -> Option<u16> {
        let raw = self.values.get(&tag)?;
        if raw.len() < 2 {
            return None;
        }
        let b = [raw[0], raw[1]];
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    /// A UL value, or an integer string (as pydicom's `int()` takes either).
    fn integer(&self, tag: u32) -> Option<i64> {
        let raw = self.values.get(&tag)?;
        if raw.len() == 4 && !raw.iter().all(|b| b.is_ascii_digit() || *b == b' ') {
            let b = [raw[0], raw[1], raw[2], raw[3]];
            return Some(i64::from(if self.big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }));
        }
        self.text(tag)?.trim().parse().ok()
    }

    fn has(&self, tag: u32) -> bool {
        self.values.contains_key(&tag)
    }

    fn number(&self, tag: u32) -> Option<f64> {
        self.text(tag)?.split('\\').next()?.trim().parse().ok()
    }

    fn numbers(&self, tag: u32) -> Option<Vec<f64>> {
        self.text(tag)?
            .split('\\')
            .map(|p| p.trim().parse().ok())
            .collect()
    }

    fn frames(&self) -> u64 {
        self.per_frame_items
            .or_else(|| self.number(TAG_NUMBER_OF_FRAMES).map(|n| n.max(1.0) as u64))
            .unwrap_or(1)
    }

    /// (x, y) as panimg reads PixelSpacing.
    fn pixel_spacing(&self) -> Option<(f64, f64)> {
        match self.numbers(TAG_PIXEL_SPACING)?.as_slice() {
            [x, y, ..] => Some((*x, *y)),
            _ => None,
        }
    }

    fn spacing_between_slices(&self) -> Option<f64> {
        self.number(TAG_SPACING_BETWEEN_SLICES)
    }
}

/// Walks DICOM elements from any reader, tracking the byte position.
struct DicomReader<'a> {
    r: Box<dyn Read + 'a>,
    pos: u64,
    explicit: bool,
    big_endian: bool,
}

impl DicomReader<'_> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.bytes::<2>()?;
        Ok(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes::<4>()?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn tag(&mut self) -> Result<u32, String> {
        let group = self.u16()?;
        let element = self.u16()?;
        Ok((u32::from(group) << 16) | u32::from(element))
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        let copied =
            io::copy(&mut (&mut self.r).take(n), &mut io::sink()).map_err(|e| e.to_string())?;
        self.pos += copied;
        if copied != n {
            return Err("unexpected end of file".into());
        }
        Ok(())
    }

    fn value(&mut self, n: u32) -> Result<Vec<u8>, String> {
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v).map_err(|e| e.to_string())?;
        self.pos += u64::from(n);
        Ok(v)
    }

    /// The VR and length following a tag (`vr` is `None` in implicit VR and for item tags).
    fn vr_and_length(&mut self, tag: u32) -> Result<(Option<[u8; 2]>, u32), String> {
        if tag >> 16 == 0xFFFE || !self.explicit {
            return Ok((None, self.u32()?));
        }
        let vr = self.bytes::<2>()?;
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err("invalid VR".into());
        }
        let long = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        if long {
            self.bytes::<2>()?;
            Ok((Some(vr), self.u32()?))
        } else {
            Ok((Some(vr), u32::from(self.u16()?)))
        }
    }

    /// Skip the items of an undefined-length sequence; returns how many there were.
    fn sequence(&mut self, depth: usize) -> Result<u64, String> {
        if depth > MAX_DICOM_NESTING {
            return Err("sequences nested too deeply".into());
        }
        let mut items = 0;
        loop {
            // Items and delimiters never carry a VR, whatever the transfer syntax.
            let tag = self.tag()?;
            let len = self.u32()?;
            match tag {
                TAG_ITEM => {
                    items += 1;
                    if len == UNDEFINED {
                        self.nested_dataset(depth + 1)?;
                    } else {
                        self.skip(u64::from(len))?;
                    }
                }
                TAG_SEQUENCE_DELIMITER => return Ok(items),
                _ => return Err("malformed sequence".into()),
            }
        }
    }

    /// Skip the elements of an undefined-length item up to its delimiter.
    fn nested_dataset(&mut self, depth: usize) -> Result<(), String> {
        loop {
            let tag = self.tag()?;
            let (vr, len) = self.vr_and_length(tag)?;
            if tag == TAG_ITEM_DELIMITER {
                return Ok(());
            }
            self.element_body(tag, vr, len, depth)?;
        }
    }

    /// Skip an element's value (a sequence when its length is undefined).
    fn element_body(
        &mut self,
        _tag: u32,
        vr: Option<[u8; 2]>,
        len: u32,
        depth: usize,
    ) -> Result<Option<u64>, String> {
        if len == UNDEFINED {
            if vr.is_some_and(|v| &v == b"UN") {
                // An undefined-length UN is a sequence encoded in implicit VR.
                let explicit = std::mem::replace(&mut self.explicit, false);
                let n = self.sequence(depth + 1);
                self.explicit = explicit;
                return n.map(Some);
            }
            return self.sequence(depth + 1).map(Some);
        }
        self.skip(u64::from(len))?;
        Ok(None)
    }

    /// Read the data set's elements up to the pixel data into `header`: the wanted values, the
    /// per-frame item count and where the pixel data is (unknown in a deflated file).
    fn data_set(
        &mut self,
        header: &mut DicomHeader,
        file_len: u64,
        deflated: bool,
    ) -> Result<(), String> {
        // The data set may end without pixel data.
        while let Ok(tag) = self.tag() {
            let (vr, len) = self.vr_and_length(tag)?;
            if tag >= TAG_PIXEL_DATA && tag >> 16 != 0xFFFE {
                if tag == TAG_PIXEL_DATA {
                    header.pixel_data_len = Some((len != UNDEFINED).then_some(u64::from(len)));
                    header.bytes_after_pixel_header =
                        (!deflated).then(|| file_len.saturating_sub(self.pos));
                    header.pixel_data_offset = (!deflated).then_some(self.pos);
                }
                break;
            }
            if tag >> 16 == 0xFFFE {
                return Err("unexpected item outside a sequence".into());
            }
            if WANTED_TAGS.contains(&tag) && len != UNDEFINED && len <= MAX_DICOM_VALUE {
                let v = self.value(len)?;
                header.values.insert(tag, v);
            } else {
                let items = self.element_body(tag, vr, len, 0)?;
                if tag == TAG_PER_FRAME_GROUPS {
                    header.per_frame_items = items;
                }
            }
        }
        Ok(())
    }
}

/// Read the header of a DICOM Part 10 file up to its pixel data.
fn read_dicom_header(path: &Path) -> Result<DicomHeader, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut buffered = BufReader::new(file);
    let mut preamble = [0u8; 132];
    buffered
        .read_exact(&mut preamble)
        .map_err(|_| "not a DICOM file")?;
    if &preamble[128..132] != b"DICM" {
        return Err(
            "File is missing DICOM File Meta Information header or the 'DICM' prefix".into(),
        );
    }
    let (transfer_syntax, pos) = read_file_meta(&mut buffered)?;

    let (explicit, big_endian, deflated) = match transfer_syntax.as_str() {
        "1.2.840.10008.1.2" => (false, false, false),
        "1.2.840.10008.1.2.2" => (true, true, false),
        "1.2.840.10008.1.2.1.99" => (true, false, true),
        _ => (true, false, false),
    };
    let mut header = DicomHeader {
        big_endian,
        native: matches!(
            transfer_syntax.as_str(),
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" | ""
        ),
        ..DicomHeader::default()
    };
    let r: Box<dyn Read> = if deflated {
        Box::new(flate2::bufread::DeflateDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut rd = DicomReader {
        r,
        pos,
        explicit,
        big_endian,
    };
    rd.data_set(&mut header, file_len, deflated)?;
    Ok(header)
}

/// Read the file meta information (group 0002, always explicit VR little endian) after the preamble:
/// the transfer syntax UID and the position where the data set starts.
fn read_file_meta(buffered: &mut BufReader<File>) -> Result<(String, u64), String> {
    let mut pos: u64 = 132;
    let mut transfer_syntax = String::new();
    loop {
        let peek = buffered.fill_buf().map_err(|e| e.to_string())?;
        if peek.len() < 2 || u16::from_le_bytes([peek[0], peek[1]]) != 0x0002 {
            break;
        }
        let mut meta = DicomReader {
            r: Box::new(&mut *buffered),
            pos,
            explicit: true,
            big_endian: false,
        };
        let tag = meta.tag()?;
        let (vr, len) = meta.vr_and_length(tag)?;
        if len == UNDEFINED {
            return Err("undefined length in file meta information".into());
        }
        if tag == TAG_TRANSFER_SYNTAX && len <= 256 {
            let v = meta.value(len)?;
            transfer_syntax = String::from_utf8_lossy(&v)
                .trim_end_matches(['\0', ' '])
                .to_string();
        } else {
            meta.element_body(tag, vr, len, 0)?;
        }
        pos = meta.pos;
    }
    Ok((transfer_syntax, pos))
}

/// The distinct values of an uncompressed single-channel 8-bit series, as the platform loads it
/// (MONOCHROME1 inverted), read from the pixel data of each file.
fn dicom_segments(
    uploads: &[Upload],
    members: &[(usize, DicomHeader)],
    pt: Option<PixelType>,
    samples: u64,
) -> Option<Vec<i64>> {
    let pt = pt.filter(|p| p.is_8bit())?;
    if samples != 1 {
        return None;
    }
    let mut total = 0u64;
    for (_, h) in members {
        if !h.native || h.u16(TAG_BITS_ALLOCATED) != Some(8) {
            return None;
        }
        total = total.checked_add(pixel_count(h)?)?;
    }
    if total > MAX_VOXEL_SCAN_BYTES {
        return None;
    }
    let mut values = BTreeSet::new();
    for (i, h) in members {
        let mut f = File::open(uploads[*i].path).ok()?;
        f.seek(SeekFrom::Start(h.pixel_data_offset?)).ok()?;
        values.extend(
            scan_voxels(
                &mut BufReader::new(f),
                pt,
                false,
                pixel_count(h)?,
                ShortData::Unknown,
            )
            .ok()??,
        );
    }
    let inverted = members[0].1.text(TAG_PHOTOMETRIC).as_deref() == Some("MONOCHROME1");
    if inverted && let (Some(&min), Some(&max)) = (values.first(), values.last()) {
        // The platform flips the values around min + max in the 8-bit type, wrapping like it.
        let flip = |v: i64| -> i64 {
            if pt == PixelType::U8 {
                i64::from((min as u8).wrapping_add(max as u8).wrapping_sub(v as u8))
            } else {
                i64::from((min as i8).wrapping_add(max as i8).wrapping_sub(v as i8))
            }
        };
        values = values.into_iter().map(flip).collect();
    }
    Some(values.into_iter().collect())
}

fn pixel_count(h: &DicomHeader) -> Option<u64> {
    u64::from(h.u16(TAG_ROWS)?)
        .checked_mul(u64::from(h.u16(TAG_COLUMNS)?))?
        .checked_mul(h.frames())
}

fn dicom_color_space(h: &DicomHeader) -> ColorSpace {
    match h.u16(TAG_SAMPLES_PER_PIXEL).unwrap_or(1) {
        3 => ColorSpace::Rgb,
        4 => ColorSpace::Rgba,
        _ => ColorSpace::Gray,
    }
}

fn dicom_pixel_type(headers: &[&DicomHeader]) -> Option<PixelType> {
    let rescaled = headers.iter().any(|h| {
        h.number(TAG_RESCALE_SLOPE)
            .is_some_and(|s| (s - 1.0).abs() > 1e-9)
            || h.number(TAG_RESCALE_INTERCEPT)
                .is_some_and(|i| i.abs() > 1e-9)
    });
    if rescaled {
        return Some(PixelType::F32);
    }
    let h = headers.first()?;
    let signed = h.u16(TAG_PIXEL_REPRESENTATION) == Some(1);
    Some(match (h.u16(TAG_BITS_ALLOCATED)?, signed) {
        (8, false) | (1, _) => PixelType::U8,
        (8, true) => PixelType::I8,
        (16, false) => PixelType::U16,
        (16, true) => PixelType::I16,
        (32, false) => PixelType::U32,
        (32, true) => PixelType::I32,
        _ => return None,
    })
}

fn dicom_metadata(h: &DicomHeader) -> ImageMetadata {
    let mut m = metadata_from(|k| {
        let tag = match k {
            "PatientID" => TAG_PATIENT_ID,
            "PatientName" => TAG_PATIENT_NAME,
            "PatientBirthDate" => TAG_PATIENT_BIRTH_DATE,
            "PatientAge" => TAG_PATIENT_AGE,
            "PatientSex" => TAG_PATIENT_SEX,
            "StudyDate" => TAG_STUDY_DATE,
            "StudyInstanceUID" => TAG_STUDY_UID,
            "SeriesInstanceUID" => TAG_SERIES_UID,
            "StudyDescription" => TAG_STUDY_DESCRIPTION,
            "SeriesDescription" => TAG_SERIES_DESCRIPTION,
            _ => return None,
        };
        h.text(tag)
    });
    m.study_id = h.text(TAG_STUDY_ID).filter(|v| !v.is_empty());
    m.accession_number = h.text(TAG_ACCESSION_NUMBER).filter(|v| !v.is_empty());
    m.series_number = h.text(TAG_SERIES_NUMBER).filter(|v| !v.is_empty());
    m
}

fn build_dicom(uploads: &[Upload], remaining: &[usize]) -> BuilderResult {
    // Group like panimg: (study, stack or series, SOP class); a group's name counts per study in
    // order of first appearance.
    struct Group {
        key: (String, String, String),
        name: String,
        members: Vec<(usize, DicomHeader)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut per_study: HashMap<String, usize> = HashMap::new();
    for &i in remaining {
        let Ok(h) = read_dicom_header(uploads[i].path) else {
            continue;
        };
        let (Some(study), Some(series), Some(sop)) = (
            h.text(TAG_STUDY_UID),
            h.text(TAG_STACK_ID).or_else(|| h.text(TAG_SERIES_UID)),
            h.text(TAG_SOP_CLASS_UID),
        ) else {
            continue;
        };
        let key = (study.clone(), series, sop);
        match groups.iter_mut().find(|g| g.key == key) {
            Some(g) => g.members.push((i, h)),
            None => {
                let n = per_study.entry(study.clone()).or_insert(0);
                let name = format!("{study}-{n}");
                *n += 1;
                groups.push(Group {
                    key,
                    name,
                    members: vec![(i, h)],
                });
            }
        }
    }
    collect_built(groups.into_iter().map(|Group { key, name, members }| {
        if key.2 == WSI_SOP_CLASS {
            return Err("WSI-DICOM not supported by DICOM builder".into());
        }
        dicom_series_image(uploads, name, members)
    }))
}

fn dicom_series_image(
    uploads: &[Upload],
    name: String,
    members: Vec<(usize, DicomHeader)>,
) -> Result<Built, Reject> {
    let members = in_slice_order(members)?;
    let reference = &members[0].1;
    let rows = reference.u16(TAG_ROWS).ok_or("no Rows")?;
    let cols = reference.u16(TAG_COLUMNS).ok_or("no Columns")?;
    let samples = u64::from(reference.u16(TAG_SAMPLES_PER_PIXEL).unwrap_or(1));
    check_slices(&members, rows, cols, samples)?;
    let layout = SeriesLayout::of(&members, samples)?;
    let color_space = dicom_color_space(reference);
    let mut image = new_image(
        name,
        u64::from(cols),
        u64::from(rows),
        Some(layout.depth),
        None,
        color_space,
        ImageType::Mhd,
    );
    let z = slice_spacing(&members);
    let (x, y) = reference.pixel_spacing().unwrap_or((1.0, 1.0));
    // ITK refuses a zero spacing.
    if [x, y, z].contains(&0.0) {
        return Err("could not read file".into());
    }
    image.set_spacing(Some(x), Some(y), Some(z));
    image.modality = reference.text(TAG_MODALITY).filter(|m| !m.is_empty());
    image.pixel_type = dicom_pixel_type(&members.iter().map(|(_, h)| h).collect::<Vec<_>>());
    let (four_d, n_time) = (layout.four_d, layout.n_time);
    image.segments =
        dicom_segments(uploads, &members, image.pixel_type, samples).and_then(|values| {
            panimg_segments(
                image.pixel_type,
                1,
                if four_d { 4 } else { 3 },
                four_d.then_some(n_time),
                Some(&values),
            )
        });
    if four_d && image.segments.is_none() {
        image.timepoints = Some(n_time);
        image.shape.insert(0, n_time);
    }
    image.metadata = dicom_metadata(reference);
    image.files = members
        .iter()
        .map(|(i, _)| uploads[*i].name.to_string())
        .collect();
    let consumed = members.iter().map(|(i, _)| *i).collect();
    Ok(Built { image, consumed })
}

/// The files of a series ordered by their InstanceNumber, which every file of several needs.
fn in_slice_order(members: Vec<(usize, DicomHeader)>) -> Result<Vec<(usize, DicomHeader)>, Reject> {
    if members.len() < 2 {
        return Ok(members);
    }
    let mut keyed = Vec::with_capacity(members.len());
    for (i, h) in members {
        let n: i64 = h
            .text(TAG_INSTANCE_NUMBER)
            .and_then(|v| v.parse().ok())
            .ok_or("Could not determine slice order due to missing or invalid InstanceNumber")?;
        keyed.push((n, i, h));
    }
    // Stable, like Python's sort.
    keyed.sort_by_key(|(n, _, _)| *n);
    Ok(keyed.into_iter().map(|(_, i, h)| (i, h)).collect())
}

/// Every slice has the reference's size and pixel data as long as its header promises.
fn check_slices(
    members: &[(usize, DicomHeader)],
    rows: u16,
    cols: u16,
    samples: u64,
) -> Result<(), Reject> {
    for (_, h) in members {
        if h.u16(TAG_ROWS) != Some(rows) || h.u16(TAG_COLUMNS) != Some(cols) {
            return Err("slices differ in size".into());
        }
        let Some(len) = h.pixel_data_len else {
            return Err("no pixel data".into());
        };
        if let (Some(len), Some(avail)) = (len, h.bytes_after_pixel_header)
            && len > avail
        {
            return Err("pixel data truncated".into());
        }
        if h.native
            && let Some(len) = len
        {
            let bits = u64::from(h.u16(TAG_BITS_ALLOCATED).unwrap_or(16));
            let expected =
                (u64::from(rows) * u64::from(cols) * samples * h.frames() * bits).div_ceil(8);
            if len < expected {
                return Err("pixel data shorter than expected".into());
            }
        }
    }
    Ok(())
}

/// How the slices of a series stack up: its depth, and its timepoints when it is 4-D.
struct SeriesLayout {
    depth: u64,
    /// Distinct TemporalPositionIndex values.
    n_time: u64,
    four_d: bool,
}

impl SeriesLayout {
    /// The layout of files in slice order, refused where panimg cannot read it.
    fn of(members: &[(usize, DicomHeader)], samples: u64) -> Result<SeriesLayout, Reject> {
        let frames_per_file = members[0].1.frames();
        // 4-D: several temporal positions, each with the same number of slices, each with its
        // content time and exposure (panimg writes them into the image).
        let n_files = members.len() as u64;
        let n_time = members
            .iter()
            .filter_map(|(_, h)| h.integer(TAG_TEMPORAL_POSITION_INDEX))
            .collect::<BTreeSet<_>>()
            .len() as u64;
        let four_d = n_time >= 2;
        if four_d && !n_files.is_multiple_of(n_time) {
            return Err("Number of slices per time point differs".into());
        }
        let n_slices = n_files * frames_per_file / if four_d { n_time } else { 1 };
        if four_d
            && members.iter().enumerate().any(|(index, (_, h))| {
                (frames_per_file > 1 || (index as u64).is_multiple_of(n_slices))
                    && !(h.has(TAG_CONTENT_TIME) && h.has(TAG_EXPOSURE))
            })
        {
            return Err("could not read file".into());
        }
        // Pixels of one frame per file come as a 2-D array per file for grey values but as a 3-D
        // one for colour, which panimg takes for the whole volume of a 2-D image that cannot be
        // oriented. Only a single multi-frame colour file makes an image.
        if samples > 1 && (members.len() > 1 || frames_per_file < 2 || four_d) {
            return Err("could not read file".into());
        }
        // A multi-frame file's pixels are a volume: panimg takes the first file's as the whole image.
        let depth = if frames_per_file > 1 && !four_d {
            frames_per_file
        } else {
            n_slices
        };
        Ok(SeriesLayout {
            depth,
            n_time,
            four_d,
        })
    }
}

/// The z spacing: the mean distance between distinct slice positions, as panimg computes it, else
/// the reference's SpacingBetweenSlices.
fn slice_spacing(members: &[(usize, DicomHeader)]) -> f64 {
    let origins: Vec<[f64; 3]> = members
        .iter()
        .filter_map(|(_, h)| match h.numbers(TAG_IMAGE_POSITION)?.as_slice() {
            [x, y, z] => Some([*x, *y, *z]),
            _ => None,
        })
        .collect();
    let mut seen: Vec<[f64; 3]> = Vec::new();
    let mut sum = [0.0f64; 3];
    for o in &origins {
        if seen
            .iter()
            .any(|s| (0..3).all(|k| (s[k] - o[k]).abs() <= 1e-8 + 1e-5 * o[k].abs()))
        {
            continue;
        }
        if let Some(prev) = seen.last() {
            for k in 0..3 {
                sum[k] += o[k] - prev[k];
            }
        }
        seen.push(*o);
    }
    if seen.len() > 1 {
        let n = (seen.len() - 1) as f64;
        (sum.iter().map(|s| (s / n) * (s / n)).sum::<f64>()).sqrt()
    } else {
        members[0].1.spacing_between_slices().unwrap_or(1.0)
    }
}

// ---------------------------------------------------------------------------------------------
// TIFF

struct TiffEntry {
    typ: u16,
    count: u64,
    /// The value bytes when they fit inline, else the offset of the value.
    inline: Vec<u8>,
    offset: u64,
}

struct Tiff {
    file: File,
    len: u64,
    big_endian: bool,
    big: bool,
}

impl Tiff {
    fn read_at(&mut self, offset: u64, n: usize) -> Result<Vec<u8>, String> {
        if offset
            .checked_add(n as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err("offset beyond end of file".into());
        }
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| e.to_string())?;
        let mut v = vec![0u8; n];
        self.file.read_exact(&mut v).map_err(|e| e.to_string())?;
        Ok(v)
    }

    fn uint(&self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        if self.big_endian {
            a[8 - b.len()..].copy_from_slice(b);
            u64::from_be_bytes(a)
        } else {
            a[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(a)
        }
    }

    /// The entries of the IFD at `offset` and the offset of the next IFD.
    fn ifd(&mut self, offset: u64) -> Result<(BTreeMap<u16, TiffEntry>, u64), String> {
        let (count_len, entry_len, ptr_len) = if self.big { (8, 20, 8) } else { (2, 12, 4) };
        let raw = self.read_at(offset, count_len)?;
        let count = self.uint(&raw);
        if count == 0 || count > 4096 {
            return Err("implausible IFD".into());
        }
        let body = self.read_at(
            offset + count_len as u64,
            count as usize * entry_len + ptr_len,
        )?;
        let mut entries = BTreeMap::new();
        for e in body[..count as usize * entry_len].chunks_exact(entry_len) {
            let tag = self.uint(&e[0..2]) as u16;
            let typ = self.uint(&e[2..4]) as u16;
            let (count, value) = if self.big {
                (self.uint(&e[4..12]), &e[12..20])
            } else {
                (self.uint(&e[4..8]), &e[8..12])
            };
            entries.insert(
                tag,
                TiffEntry {
                    typ,
                    count,
                    inline: value.to_vec(),
                    offset: self.uint(value),
                },
            );
        }
        let next = self.uint(&body[count as usize * entry_len..]);
        Ok((entries, next))
    }

    fn type_size(typ: u16) -> Option<usize> {
        Some(match typ {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => return None,
        })
    }

    /// The bytes of the first value of an entry.
    fn first_value(&mut self, e: &TiffEntry) -> Option<Vec<u8>> {
        let size = Self::type_size(e.typ)?;
        if e.count == 0 {
            return None;
        }
        let total = (size as u64).checked_mul(e.count)?;
        if total <= e.inline.len() as u64 {
            Some(e.inline[..size].to_vec())
        } else {
            self.read_at(e.offset, size).ok()
        }
    }

    /// The first value of an integer entry (signed types sign-extended).
    fn int(&mut self, e: &TiffEntry) -> Option<i64> {
        let b = self.first_value(e)?;
        let u = self.uint(&b);
        Some(match e.typ {
            1 | 3 | 4 | 16 | 13 | 18 => u as i64,
            6 => i64::from(u as u8 as i8),
            8 => i64::from(u as u16 as i16),
            9 => i64::from(u as u32 as i32),
            17 => u as i64,
            _ => return None,
        })
    }

    fn rational(&mut self, e: &TiffEntry) -> Option<(f64, f64)> {
        if e.typ != 5 && e.typ != 10 {
            return None;
        }
        let b = self.first_value(e)?;
        let (n, d) = (self.uint(&b[0..4]), self.uint(&b[4..8]));
        if e.typ == 10 {
            Some((f64::from(n as u32 as i32), f64::from(d as u32 as i32)))
        } else {
            Some((n as f64, d as f64))
        }
    }
}

fn build_tiff(uploads: &[Upload], remaining: &[usize]) -> BuilderResult {
    collect_built(remaining.iter().map(|&i| tiff_image(uploads, i)))
}

fn tiff_image(uploads: &[Upload], i: usize) -> Result<Built, Reject> {
    let mut page = FirstPage::open(uploads[i].path)?;
    let width = page
        .int(256)
        .filter(|v| *v > 0)
        .ok_or("Image width could not be determined")? as u64;
    let height = page
        .int(257)
        .filter(|v| *v > 0)
        .ok_or("Image height could not be determined")? as u64;
    let color_space = match page.int(262) {
        Some(1) => ColorSpace::Gray,
        Some(2) => ColorSpace::Rgb,
        Some(6) => ColorSpace::YCbCr,
        _ => return Err("Color space could not be determined".into()),
    };
    let (x, y) = page.spacing()?;
    let samples = page.int(277).unwrap_or(1);
    let sample_format = page.int(339);
    let segments = if samples == 1 && matches!(sample_format, None | Some(1) | Some(2)) {
        page.segments()
    } else {
        None
    };
    let bits = page.int(258).unwrap_or(1);
    let pixel_type = match (bits, sample_format) {
        (8, None | Some(1)) => Some(PixelType::U8),
        (8, Some(2)) => Some(PixelType::I8),
        (16, None | Some(1)) => Some(PixelType::U16),
        (16, Some(2)) => Some(PixelType::I16),
        (32, None | Some(1)) => Some(PixelType::U32),
        (32, Some(2)) => Some(PixelType::I32),
        (32, Some(3)) => Some(PixelType::F32),
        (64, Some(3)) => Some(PixelType::F64),
        _ => None,
    };

    let mut image = new_image(
        uploads[i].name.to_string(),
        width,
        height,
        Some(1),
        None,
        color_space,
        ImageType::Tiff,
    );
    image.set_spacing(Some(x), Some(y), None);
    image.pixel_type = pixel_type;
    image.segments = segments;
    image.files = vec![uploads[i].name.to_string()];
    Ok(Built {
        image,
        consumed: vec![i],
    })
}

/// The tags of a TIFF's first page (the only one the platform's importer reads).
struct FirstPage {
    t: Tiff,
    tags: BTreeMap<u16, TiffEntry>,
}

impl FirstPage {
    /// Read the TIFF or BigTIFF header and the first IFD.
    fn open(path: &Path) -> Result<FirstPage, Reject> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut t = Tiff {
            file,
            len,
            big_endian: false,
            big: false,
        };
        let head = t.read_at(0, 8).map_err(|_| "not a TIFF")?;
        t.big_endian = match &head[0..2] {
            b"II" => false,
            b"MM" => true,
            _ => return Err("not a TIFF".into()),
        };
        let first_ifd = match t.uint(&head[2..4]) {
            42 => t.uint(&head[4..8]),
            43 => {
                t.big = true;
                let more = t.read_at(8, 8)?;
                if t.uint(&head[4..6]) != 8 {
                    return Err("unsupported BigTIFF offset size".into());
                }
                t.uint(&more)
            }
            _ => return Err("not a TIFF".into()),
        };
        let (tags, _) = t.ifd(first_ifd)?;
        Ok(FirstPage { t, tags })
    }

    /// The first value of an integer tag.
    fn int(&mut self, tag: u16) -> Option<i64> {
        self.tags.get(&tag).and_then(|e| self.t.int(e))
    }

    /// The (x, y) pixel spacing in mm, from the resolution tags in inch or centimetre units.
    fn spacing(&mut self) -> Result<(f64, f64), String> {
        let mm_per_unit = match self.int(296) {
            Some(2) => 25.4,
            Some(3) => 10.0,
            _ => return Err("Invalid resolution unit".into()),
        };
        let mut spacing = |tag: u16| -> Result<f64, String> {
            let (n, d) = self
                .tags
                .get(&tag)
                .and_then(|e| self.t.rational(e))
                .ok_or("Voxel spacing could not be determined")?;
            if n == 0.0 || d == 0.0 {
                return Err("Invalid resolution in tiff file".into());
            }
            Ok(mm_per_unit / (n / d))
        };
        Ok((spacing(282)?, spacing(283)?))
    }

    /// Segments from the sample value range tags (panimg reads them, it never scans TIFF pixels).
    fn segments(&mut self) -> Option<Vec<i64>> {
        // panimg takes the first tag unless its value is 0, then the signed one.
        let min = self.int(280).filter(|v| *v != 0).or_else(|| self.int(340));
        let max = self.int(281).filter(|v| *v != 0).or_else(|| self.int(341));
        let (min, max) = (min?, max?);
        (max.saturating_sub(min) < MAX_SEGMENTS as i64).then(|| (min..=max).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// PNG / JPEG fallback

fn build_fallback(uploads: &[Upload], remaining: &[usize]) -> BuilderResult {
    collect_built(remaining.iter().map(|&i| {
        let prefix = read_prefix(uploads[i].path, HEADER_CAP).map_err(|e| e.to_string())?;
        let header = match png_header(&prefix) {
            Some(png) => png,
            None => Ok(jpeg_header(&prefix).ok_or("Not a valid image file")?),
        };
        // The platform loads the pixels before it looks at their kind: a truncated or damaged
        // file is no image, whatever its kind.
        decode_pixels(uploads[i].path).map_err(|_| "Not a valid image file")?;
        let (width, height, color_space) = header?;
        if width == 0 || height == 0 {
            return Err("Not a valid image file".into());
        }
        let mut image = new_image(
            uploads[i].name.to_string(),
            width,
            height,
            None,
            None,
            color_space,
            ImageType::Mhd,
        );
        image.files = vec![uploads[i].name.to_string()];
        Ok(Built {
            image,
            consumed: vec![i],
        })
    }))
}

/// Decode a PNG or JPEG completely (and drop the pixels), as the platform's loader does.
fn decode_pixels(path: &Path) -> Result<(), image::ImageError> {
    let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_VOXEL_SCAN_BYTES);
    reader.limits(limits);
    reader.decode().map(drop)
}

/// `None`: not a PNG; `Some(Err)`: a PNG the platform cannot take.
fn png_header(b: &[u8]) -> Option<Result<(u64, u64, ColorSpace), Reject>> {
    if b.len() < 29 || &b[0..8] != b"\x89PNG\r\n\x1a\n" || &b[12..16] != b"IHDR" {
        return None;
    }
    let width = u64::from(u32::from_be_bytes([b[16], b[17], b[18], b[19]]));
    let height = u64::from(u32::from_be_bytes([b[20], b[21], b[22], b[23]]));
    let (bit_depth, color_type) = (b[24], b[25]);
    // What the platform's loader makes of each PNG kind: palette indices and grey load as one
    // channel, but 1-bit (boolean) and grey+alpha (two channels) make it raise.
    Some(match (color_type, bit_depth) {
        (0, 1) | (4, _) => Err(Reject::Unexpected),
        (0, _) | (3, _) => Ok((width, height, ColorSpace::Gray)),
        (2, _) => Ok((width, height, ColorSpace::Rgb)),
        (6, _) => Ok((width, height, ColorSpace::Rgba)),
        _ => Err("Not a valid image file".into()),
    })
}

fn jpeg_header(b: &[u8]) -> Option<(u64, u64, ColorSpace)> {
    if b.len() < 4 || b[0..3] != [0xFF, 0xD8, 0xFF] {
        return None;
    }
    let mut pos = 2usize;
    while pos + 4 <= b.len() {
        if b[pos] != 0xFF {
            return None;
        }
        let marker = b[pos + 1];
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            pos += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let s = b.get(pos + 4..pos + 10)?;
            let height = u64::from(u16::from_be_bytes([s[1], s[2]]));
            let width = u64::from(u16::from_be_bytes([s[3], s[4]]));
            let cs = match s[5] {
                1 => ColorSpace::Gray,
                3 => ColorSpace::Rgb,
                4 => ColorSpace::Rgba,
                _ => return None,
            };
            return Some((width, height, cs));
        }
        if len < 2 {
            return None;
        }
        pos += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{self, DicomSeriesIds};
    use proptest::prelude::*;
    use std::io::Write;

    /// Upload list for files in a directory, named by their file names.
    fn uploads(paths: &[PathBuf]) -> Vec<(String, PathBuf)> {
        paths
            .iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    p.clone(),
                )
            })
            .collect()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn judge_files_fails_only_what_the_platform_is_certain_to_fail() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fails_one = Verdict::Fails(ImportError::Session(could_not_import_message(1)));

        let text = write(d, "text.mha", b"hello, I am text");
        assert_eq!(judge_files(&uploads(&[text])), fails_one);

        let truncated = d.join("truncated.mha");
        samples::write_mha(&truncated, [8, 8, 4], 1).unwrap();
        let len = std::fs::metadata(&truncated).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&truncated)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        assert_eq!(judge_files(&uploads(&[truncated])), fails_one);

        let series = d.join("two-series");
        std::fs::create_dir_all(&series).unwrap();
        let mut two =
            samples::write_dicom_series(&series, 2, 4, 4, &DicomSeriesIds::new(1), 1).unwrap();
        let other = d.join("other");
        std::fs::create_dir_all(&other).unwrap();
        for (i, f) in samples::write_dicom_series(&other, 2, 4, 4, &DicomSeriesIds::new(2), 2)
            .unwrap()
            .into_iter()
            .enumerate()
        {
            let to = series.join(format!("other-{i}.dcm"));
            std::fs::rename(f, &to).unwrap();
            two.push(to);
        }
        assert_eq!(
            judge_files(&uploads(&two)),
            Verdict::Fails(single_image_error().unwrap_err())
        );

        // Every format the platform reads that this importer follows, valid: nothing to say.
        let mha = d.join("ok.mha");
        samples::write_mha(&mha, [8, 8, 4], 1).unwrap();
        let (mhd, raw) = samples::write_mhd_pair(d, "pair", [4, 3, 2], 9).unwrap();
        let nii = d.join("ok.nii.gz");
        samples::write_nifti(&nii, [5, 5, 5], true, 3).unwrap();
        let tif = d.join("ok.tif");
        samples::write_tiff(&tif, 8, 8, 4).unwrap();
        let one_series = d.join("one-series");
        std::fs::create_dir_all(&one_series).unwrap();
        let dicom =
            samples::write_dicom_series(&one_series, 3, 8, 8, &DicomSeriesIds::new(3), 3).unwrap();
        for files in [vec![mha], vec![mhd, raw], vec![nii], vec![tif], dicom] {
            assert_eq!(judge_files(&uploads(&files)), Verdict::Pass, "{files:?}");
        }

        // What this importer does not follow is left to the platform, even when it reads as nothing.
        let oct = write(d, "scan.e2e", b"hello, I am text");
        let slide = write(d, "slide.svs", b"hello, I am text");
        let zipped = d.join("text.zip");
        {
            let mut z = zip::ZipWriter::new(File::create(&zipped).unwrap());
            z.start_file("inner.mha", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"hello, I am text").unwrap();
            z.finish().unwrap();
        }
        for file in [oct, slide, zipped] {
            assert_eq!(
                judge_files(&uploads(std::slice::from_ref(&file))),
                Verdict::Pass,
                "{file:?}"
            );
        }
        assert_eq!(judge_files(&[]), Verdict::Pass);
    }

    fn session(msg: &str) -> Result<ImportedImage, ImportError> {
        Err(ImportError::Session(msg.into()))
    }

    fn single_image_error() -> Result<ImportedImage, ImportError> {
        Err(ImportError::Socket(SINGLE_IMAGE_MESSAGE.into()))
    }

    /// A MetaImage header with the given extra lines, ending with `ElementDataFile = LOCAL`.
    fn mha_bytes(extra: &str, dims: &str, element_type: &str, data: &[u8]) -> Vec<u8> {
        let ndims = dims.split_whitespace().count();
        let mut v = format!(
            "ObjectType = Image\nNDims = {ndims}\nBinaryData = True\n{extra}DimSize = {dims}\n\
             ElementType = {element_type}\nElementDataFile = LOCAL\n"
        )
        .into_bytes();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn could_not_import_message_pluralises() {
        assert_eq!(could_not_import_message(1), "1 file could not be imported");
        assert_eq!(could_not_import_message(2), "2 files could not be imported");
        assert_eq!(could_not_import_message(0), "0 files could not be imported");
    }

    #[test]
    fn mha_sample_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ct.mha");
        samples::write_mha(&p, [5, 6, 7], 1).unwrap();
        let img = import_image(&uploads(&[p])).unwrap();
        assert_eq!(img.name, "ct.mha");
        assert_eq!((img.width, img.height, img.depth), (5, 6, Some(7)));
        assert_eq!(img.shape, vec![7, 6, 5]);
        assert_eq!(img.color_space, "GRAY");
        assert_eq!(img.image_type, ImageType::Mhd);
        assert_eq!(img.voxel_spacing_mm, Some(samples::SAMPLE_SPACING_MM));
        assert_eq!(img.files, vec!["ct.mha"]);
        assert_eq!(img.pixel_type, Some(PixelType::U8));
        assert!(img.unimported_files.is_empty());
        let values = img.voxel_values.unwrap();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "sorted and distinct"
        );
        assert!(values.iter().all(|v| (40..220).contains(v)));
    }

    #[test]
    fn mhd_pair_round_trip_consumes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mhd, raw) = samples::write_mhd_pair(dir.path(), "scan", [4, 3, 2], 9).unwrap();
        // The data file first: detection is by header content, not by order or extension.
        let img = import_image(&uploads(&[raw, mhd])).unwrap();
        assert_eq!(img.name, "scan.mhd");
        assert_eq!(img.shape, vec![2, 3, 4]);
        assert_eq!(img.files, vec!["scan.mhd", "scan.raw"]);
    }

    #[test]
    fn mhd_without_its_data_file_is_one_unimported_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mhd, _raw) = samples::write_mhd_pair(dir.path(), "scan", [4, 3, 2], 9).unwrap();
        assert_eq!(
            import_image(&uploads(&[mhd])),
            session("1 file could not be imported")
        );
    }

    #[test]
    fn mhd_data_file_must_not_escape_the_upload_directory() {
        let dir = tempfile::tempdir().unwrap();
        let raw = write(dir.path(), "x.raw", &[0u8; 8]);
        let hdr = String::from_utf8(mha_bytes("", "2 2 2", "MET_UCHAR", b""))
            .unwrap()
            .replace("LOCAL", "../x.raw");
        let mhd = write(dir.path(), "x.mhd", hdr.as_bytes());
        assert_eq!(
            import_image(&uploads(&[mhd, raw])),
            session("2 files could not be imported")
        );
    }

    #[test]
    fn mhd_plus_unrelated_mha_is_not_a_single_image() {
        let dir = tempfile::tempdir().unwrap();
        let (mhd, raw) = samples::write_mhd_pair(dir.path(), "a", [2, 2, 2], 1).unwrap();
        let mha = dir.path().join("b.mha");
        samples::write_mha(&mha, [2, 2, 2], 2).unwrap();
        assert_eq!(
            import_image(&uploads(&[mhd, raw, mha])),
            single_image_error()
        );
    }

    #[test]
    fn nifti_samples_round_trip_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for (name, gz) in [("brain.nii", false), ("brain.nii.gz", true)] {
            let p = dir.path().join(name);
            samples::write_nifti(&p, [5, 6, 7], gz, 3).unwrap();
            let img = import_image(&uploads(&[p])).unwrap();
            assert_eq!(img.name, name);
            assert_eq!(img.shape, vec![7, 6, 5]);
            assert_eq!(img.voxel_spacing_mm, Some(samples::SAMPLE_SPACING_MM));
            assert_eq!(img.files, vec![name]);
            assert!(img.voxel_values.is_some_and(|v| !v.is_empty()));
        }
    }

    #[test]
    fn nifti_is_recognised_by_extension_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("brain.img");
        samples::write_nifti(&p, [2, 2, 2], false, 3).unwrap();
        assert_eq!(
            import_image(&uploads(&[p])),
            session("1 file could not be imported")
        );
    }

    #[test]
    fn segmentation_voxel_values_are_the_labels_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seg.mha");
        samples::write_segmentation_mha(&p, [8, 8, 4], &[7, 0, 3, 1, 3], 5).unwrap();
        let img = import_image(&uploads(&[p])).unwrap();
        assert_eq!(img.voxel_values, Some(vec![0, 1, 3, 7]));
        assert_eq!(img.segments, Some(vec![0, 1, 3, 7]));
    }

    #[test]
    fn compressed_metaimage_values_are_read_through_zlib() {
        let dir = tempfile::tempdir().unwrap();
        let voxels: Vec<u8> = (0..60u8).map(|i| i % 4 * 2).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&voxels).unwrap();
        let data = z.finish().unwrap();
        let extra = format!(
            "CompressedData = True\nCompressedDataSize = {}\n",
            data.len()
        );
        let p = write(
            dir.path(),
            "z.mha",
            &mha_bytes(&extra, "5 4 3", "MET_UCHAR", &data),
        );
        let img = import_image(&uploads(&[p])).unwrap();
        assert_eq!(img.voxel_values, Some(vec![0, 2, 4, 6]));
    }

    #[test]
    fn truncated_mha_is_rejected_and_trailing_bytes_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ct.mha");
        samples::write_mha(&p, [5, 6, 7], 1).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let cut = write(dir.path(), "cut.mha", &bytes[..bytes.len() - 1]);
        assert_eq!(
            import_image(&uploads(&[cut])),
            session("1 file could not be imported")
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"extra");
        let long = write(dir.path(), "long.mha", &longer);
        assert!(import_image(&uploads(&[long])).is_ok());
    }

    #[test]
    fn metaimage_header_problems_reject_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>); 6] = [
            ("no-ndims.mha", {
                let s = String::from_utf8(mha_bytes("", "2 2", "MET_UCHAR", &[0; 4])).unwrap();
                s.replace("NDims = 2\n", "").into_bytes()
            }),
            ("dims-mismatch.mha", {
                let s = String::from_utf8(mha_bytes("", "2 2", "MET_UCHAR", &[0; 4])).unwrap();
                s.replace("NDims = 2", "NDims = 3").into_bytes()
            }),
            (
                "bad-type.mha",
                mha_bytes("", "2 2", "MET_WHATEVER", &[0; 4]),
            ),
            ("one-d.mha", mha_bytes("", "4", "MET_UCHAR", &[0; 4])),
            (
                "bad-thickness.mha",
                mha_bytes("SliceThickness = thick\n", "2 2", "MET_UCHAR", &[0; 4]),
            ),
            (
                "six-channels.mha",
                mha_bytes("ElementNumberOfChannels = 6\n", "1 1", "MET_UCHAR", &[0; 6]),
            ),
        ];
        for (name, bytes) in cases {
            let p = write(dir.path(), name, &bytes);
            assert_eq!(
                import_image(&uploads(&[p])),
                session("1 file could not be imported"),
                "{name}"
            );
        }
        let ok = write(
            dir.path(),
            "meta.mha",
            &mha_bytes(
                "StudyDate = 20240229\nPatientID = P1\n",
                "2 2",
                "MET_UCHAR",
                &[0; 4],
            ),
        );
        let img = import_image(&uploads(&[ok])).unwrap();
        assert_eq!(img.metadata.patient_id.as_deref(), Some("P1"));
        assert_eq!(img.metadata.study_date.as_deref(), Some("20240229"));
        assert_eq!(img.depth, None);
        assert_eq!(img.shape, vec![2, 2]);
        assert_eq!(
            img.voxel_spacing_mm, None,
            "2-D images have no depth spacing"
        );
        assert_eq!(img.voxel_width_mm, Some(1.0));
    }

    #[test]
    fn two_channel_images_fail_the_whole_import() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "two.mha",
            &mha_bytes("ElementNumberOfChannels = 2\n", "2 2", "MET_UCHAR", &[0; 8]),
        );
        assert_eq!(
            import_image(&uploads(&[p])),
            session(UNEXPECTED_ERROR_MESSAGE)
        );
    }

    #[test]
    fn colour_and_4d_metaimages() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = write(
            dir.path(),
            "rgb.mha",
            &mha_bytes(
                "ElementNumberOfChannels = 3\n",
                "4 3 2",
                "MET_UCHAR",
                &[9; 72],
            ),
        );
        let img = import_image(&uploads(&[rgb])).unwrap();
        assert_eq!(
            (img.color_space.as_str(), img.shape.clone()),
            ("RGB", vec![2, 3, 4, 3])
        );
        assert_eq!(img.segments, None, "colour images are not segmentations");

        // 4-D 8-bit with only 0 and 1: a segmentation with one segment per volume.
        let masks: Vec<u8> = (0..48).map(|i| (i % 2) as u8).collect();
        let seg4 = write(
            dir.path(),
            "seg4.mha",
            &mha_bytes("", "2 2 4 3", "MET_UCHAR", &masks),
        );
        let img = import_image(&uploads(&[seg4])).unwrap();
        assert_eq!(img.segments, Some(vec![1, 2, 3]));
        assert_eq!(img.timepoints, None);
        assert_eq!(img.shape, vec![4, 2, 2]);

        let series: Vec<u8> = (0..96).map(|i| i as u8).collect();
        let t4 = write(
            dir.path(),
            "t4.mha",
            &mha_bytes("", "2 2 4 3", "MET_SHORT", &series),
        );
        let img = import_image(&uploads(&[t4])).unwrap();
        assert_eq!(img.timepoints, Some(3));
        assert_eq!(img.shape, vec![3, 4, 2, 2]);
        assert_eq!(img.segments, None, "16-bit images are not segmentations");
        assert_eq!(img.voxel_values.map(|v| v.len()), Some(48));
    }

    #[test]
    fn big_endian_16bit_values() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = [1000i16, -5, 1000, 7]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let p = write(
            dir.path(),
            "be.mha",
            &mha_bytes("BinaryDataByteOrderMSB = True\n", "2 2", "MET_SHORT", &data),
        );
        let img = import_image(&uploads(&[p])).unwrap();
        assert_eq!(img.voxel_values, Some(vec![-5, 7, 1000]));
    }

    #[test]
    fn huge_claimed_sizes_are_rejected_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "huge.mha",
            &mha_bytes("", "100000 100000 100000", "MET_DOUBLE", &[0; 16]),
        );
        assert_eq!(
            import_image(&uploads(&[p])),
            session("1 file could not be imported")
        );
        let q = write(
            dir.path(),
            "overflow.mha",
            &mha_bytes(
                "",
                "18446744073709551615 18446744073709551615",
                "MET_UCHAR",
                &[0; 16],
            ),
        );
        assert_eq!(
            import_image(&uploads(&[q])),
            session("1 file could not be imported")
        );
    }

    #[test]
    fn voxel_values_are_not_read_beyond_the_scan_limit() {
        let dir = tempfile::tempdir().unwrap();
        // 300 MiB of (sparse, zero) voxels: the image is valid, its values are not read.
        let header = mha_bytes("", "1024 1024 300", "MET_UCHAR", b"");
        let p = write(dir.path(), "big.mha", &header);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(header.len() as u64 + 1024 * 1024 * 300).unwrap();
        let img = import_image(&uploads(&[p])).unwrap();
        assert_eq!(img.voxel_values, None);
        assert_eq!(img.segments, None);
        assert_eq!(img.shape, vec![300, 1024, 1024]);
    }

    #[test]
    fn header_without_element_data_file_within_the_cap_is_not_metaimage() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"NDims = 2\nComment = ".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', HEADER_CAP));
        bytes.extend_from_slice(b"\nElementDataFile = LOCAL\n");
        let p = write(dir.path(), "long.mha", &bytes);
        assert_eq!(
            import_image(&uploads(&[p])),
            session("1 file could not be imported")
        );
    }

    /// A NIfTI-1 header (348 bytes + 4 extension bytes) for `dims` with datatype `dt`.
    fn nifti_bytes(
        dims: &[i16],
        dt: i16,
        bitpix: i16,
        slope: f32,
        big_endian: bool,
        data: &[u8],
    ) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        let i16b = |v: i16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let i32b = |v: i32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let f32b = |v: f32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        h[0..4].copy_from_slice(&i32b(348));
        let mut all = [1i16; 8];
        all[0] = dims.len() as i16;
        all[1..=dims.len()].copy_from_slice(dims);
        for (k, d) in all.iter().enumerate() {
            h[40 + 2 * k..42 + 2 * k].copy_from_slice(&i16b(*d));
            h[76 + 4 * k..80 + 4 * k].copy_from_slice(&f32b(if k == 0 { 1.0 } else { 0.5 }));
        }
        h[70..72].copy_from_slice(&i16b(dt));
        h[72..74].copy_from_slice(&i16b(bitpix));
        h[108..112].copy_from_slice(&f32b(352.0));
        h[112..116].copy_from_slice(&f32b(slope));
        h[344..348].copy_from_slice(b"n+1\0");
        h.extend_from_slice(data);
        h
    }

    #[test]
    fn nifti_dimensions_types_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let d2 = write(
            dir.path(),
            "a.nii",
            &nifti_bytes(&[3, 2], 2, 8, 1.0, false, &[1, 2, 3, 4, 5, 6]),
        );
        let img = import_image(&uploads(&[d2])).unwrap();
        assert_eq!((img.shape.clone(), img.depth), (vec![2, 3], None));
        assert_eq!(img.voxel_values, Some(vec![1, 2, 3, 4, 5, 6]));

        let be = write(
            dir.path(),
            "b.nii",
            &nifti_bytes(
                &[2, 2, 2],
                4,
                16,
                1.0,
                true,
                &[0, 9, 0, 9, 1, 0, 0, 9, 0, 9, 0, 9, 0, 9, 0, 9],
            ),
        );
        let img = import_image(&uploads(&[be])).unwrap();
        assert_eq!(img.voxel_values, Some(vec![9, 256]));
        assert_eq!(img.pixel_type, Some(PixelType::I16));
        assert_eq!(img.voxel_spacing_mm, Some([0.5, 0.5, 0.5]));

        // A trailing singleton time axis is dropped; a real one makes timepoints.
        let t1 = write(
            dir.path(),
            "c.nii",
            &nifti_bytes(&[2, 2, 2, 1], 2, 8, 1.0, false, &[3; 8]),
        );
        assert_eq!(import_image(&uploads(&[t1])).unwrap().shape, vec![2, 2, 2]);
        let t3 = write(
            dir.path(),
            "d.nii",
            &nifti_bytes(&[2, 2, 2, 3], 4, 16, 1.0, false, &[3; 48]),
        );
        let img = import_image(&uploads(&[t3])).unwrap();
        assert_eq!(
            (img.timepoints, img.shape.clone()),
            (Some(3), vec![3, 2, 2, 2])
        );

        // Missing voxels read as zero; a rescaled image loads as float.
        let short = write(
            dir.path(),
            "e.nii",
            &nifti_bytes(&[2, 2, 2], 2, 8, 1.0, false, &[5, 5]),
        );
        assert_eq!(
            import_image(&uploads(&[short])).unwrap().voxel_values,
            Some(vec![0, 5])
        );
        let scaled = write(
            dir.path(),
            "f.nii",
            &nifti_bytes(&[2, 2, 2], 2, 8, 2.0, false, &[5; 8]),
        );
        let img = import_image(&uploads(&[scaled])).unwrap();
        assert_eq!(
            (img.pixel_type, img.voxel_values),
            (Some(PixelType::F32), None)
        );

        let rgb = write(
            dir.path(),
            "g.nii",
            &nifti_bytes(&[2, 2, 2], 128, 24, 1.0, false, &[0; 24]),
        );
        assert_eq!(
            import_image(&uploads(&[rgb])).unwrap().shape,
            vec![2, 2, 2, 3]
        );

        for (name, bytes) in [
            ("h.nii", nifti_bytes(&[4], 2, 8, 1.0, false, &[0; 4])),
            (
                "i.nii",
                nifti_bytes(&[2, 2, 2], 9999, 8, 1.0, false, &[0; 8]),
            ),
            ("j.nii", nifti_bytes(&[2, -1, 2], 2, 8, 1.0, false, &[0; 8])),
            ("k.nii", b"not a nifti header at all".to_vec()),
        ] {
            let p = write(dir.path(), name, &bytes);
            assert_eq!(
                import_image(&uploads(&[p])),
                session("1 file could not be imported"),
                "{name}"
            );
        }
    }

    #[test]
    fn dicom_series_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ids = DicomSeriesIds::new(42);
        let mut paths = samples::write_dicom_series(dir.path(), 5, 16, 12, &ids, 1).unwrap();
        let expected_files: Vec<String> = uploads(&paths).into_iter().map(|(n, _)| n).collect();
        paths.reverse();
        let img = import_image(&uploads(&paths)).unwrap();
        assert_eq!(img.name, format!("{}-0", ids.study_instance_uid));
        assert_eq!((img.width, img.height, img.depth), (12, 16, Some(5)));
        assert_eq!(img.shape, vec![5, 16, 12]);
        assert_eq!(img.modality.as_deref(), Some("CT"));
        assert_eq!(img.files, expected_files, "sorted by InstanceNumber");
        assert_eq!(img.voxel_spacing_mm, Some([0.75, 0.75, 1.5]));
        assert_eq!(
            img.pixel_type,
            Some(PixelType::F32),
            "rescaled CT loads as float"
        );
        assert_eq!(
            img.metadata.patient_id.as_deref(),
            Some(ids.patient_id.as_str())
        );
        assert_eq!(
            img.metadata.series_instance_uid.as_deref(),
            Some(ids.series_instance_uid.as_str())
        );
        assert_eq!(
            img.metadata.study_date.as_deref(),
            Some(ids.study_date.as_str())
        );
    }

    #[test]
    fn two_dicom_series_are_not_a_single_image() {
        let dir = tempfile::tempdir().unwrap();
        let a = DicomSeriesIds::new(1);
        let b = a.other_series(2);
        let mut paths = samples::write_dicom_series(dir.path(), 2, 8, 8, &a, 1).unwrap();
        paths.extend(samples::write_dicom_series(dir.path(), 3, 8, 8, &b, 2).unwrap());
        assert_eq!(import_image(&uploads(&paths)), single_image_error());
    }

    #[test]
    fn one_broken_slice_fails_its_whole_series() {
        let dir = tempfile::tempdir().unwrap();
        let ids = DicomSeriesIds::new(3);
        let paths = samples::write_dicom_series(dir.path(), 3, 8, 8, &ids, 1).unwrap();
        let bytes = std::fs::read(&paths[1]).unwrap();
        std::fs::write(&paths[1], &bytes[..bytes.len() - 4]).unwrap();
        assert_eq!(
            import_image(&uploads(&paths)),
            session("3 files could not be imported")
        );
    }

    /// A Part 10 file whose data set is implicit VR little endian, with an undefined-length
    /// sequence (holding decoy identifiers) before the identifiers that count.
    fn implicit_vr_dicom(instance: u32, study: &str, series: &str, pixels: &[u8]) -> Vec<u8> {
        fn el(buf: &mut Vec<u8>, group: u16, element: u16, value: &[u8]) {
            let mut v = value.to_vec();
            if v.len() % 2 == 1 {
                v.push(0);
            }
            buf.extend_from_slice(&group.to_le_bytes());
            buf.extend_from_slice(&element.to_le_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(&v);
        }
        let ts = b"1.2.840.10008.1.2\0";
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        // Meta group without a group length element: read until the group changes.
        out.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        out.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        out.extend_from_slice(ts);
        el(&mut out, 0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.7");
        el(&mut out, 0x0008, 0x0060, b"OT");
        // (0008,1140) sequence of undefined length: one undefined-length item, one defined.
        out.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        el(&mut out, 0x0020, 0x000E, b"9.9.9");
        el(&mut out, 0x0028, 0x0010, &99u16.to_le_bytes());
        out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        let mut inner = Vec::new();
        el(&mut inner, 0x0020, 0x000D, b"8.8.8");
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        out.extend_from_slice(&inner);
        out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        el(&mut out, 0x0010, 0x0020, b"PID");
        el(&mut out, 0x0020, 0x000D, study.as_bytes());
        el(&mut out, 0x0020, 0x000E, series.as_bytes());
        el(&mut out, 0x0020, 0x0013, instance.to_string().as_bytes());
        el(&mut out, 0x0028, 0x0002, &1u16.to_le_bytes());
        el(&mut out, 0x0028, 0x0004, b"MONOCHROME2");
        el(&mut out, 0x0028, 0x0010, &2u16.to_le_bytes());
        el(&mut out, 0x0028, 0x0011, &3u16.to_le_bytes());
        el(&mut out, 0x0028, 0x0100, &8u16.to_le_bytes());
        el(&mut out, 0x0028, 0x0103, &0u16.to_le_bytes());
        el(&mut out, 0x7FE0, 0x0010, pixels);
        out
    }

    #[test]
    fn implicit_vr_dicom_with_sequences_and_8bit_segments() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a",
            &implicit_vr_dicom(2, "1.2.3", "1.2.3.4", &[0, 1, 1, 0, 2, 2]),
        );
        let b = write(
            dir.path(),
            "b",
            &implicit_vr_dicom(1, "1.2.3", "1.2.3.4", &[0, 0, 0, 0, 0, 5]),
        );
        let img = import_image(&uploads(&[a, b])).unwrap();
        assert_eq!(img.name, "1.2.3-0");
        assert_eq!(img.files, vec!["b", "a"]);
        assert_eq!((img.width, img.height, img.depth), (3, 2, Some(2)));
        assert_eq!(
            img.metadata.series_instance_uid.as_deref(),
            Some("1.2.3.4"),
            "not the decoy in the sequence"
        );
        assert_eq!(img.segments, Some(vec![0, 1, 2, 5]));
        assert_eq!(img.modality.as_deref(), Some("OT"));
    }

    #[test]
    fn dicom_without_instance_numbers_or_pixels_is_not_imported() {
        let dir = tempfile::tempdir().unwrap();
        let mut no_instance = implicit_vr_dicom(1, "1.2.3", "1.2.3.4", &[0; 6]);
        // Rename (0020,0013) to a private tag so the series cannot be ordered.
        let at = no_instance
            .windows(4)
            .position(|w| w == [0x20, 0x00, 0x13, 0x00])
            .unwrap();
        no_instance[at + 2] = 0x15;
        let a = write(dir.path(), "a", &no_instance);
        let b = write(
            dir.path(),
            "b",
            &implicit_vr_dicom(2, "1.2.3", "1.2.3.4", &[0; 6]),
        );
        assert_eq!(
            import_image(&uploads(&[a.clone(), b])),
            session("2 files could not be imported")
        );
        // A single file needs no order.
        assert!(import_image(&uploads(&[a])).is_ok());
        let short = write(
            dir.path(),
            "c",
            &implicit_vr_dicom(1, "1.2.3", "1.2.3.4", &[0; 2]),
        );
        assert_eq!(
            import_image(&uploads(&[short])),
            session("1 file could not be imported")
        );
        let mut no_dicm = implicit_vr_dicom(1, "1.2.3", "1.2.3.4", &[0; 6]);
        no_dicm[128] = b'X';
        let d = write(dir.path(), "d", &no_dicm);
        assert_eq!(
            import_image(&uploads(&[d])),
            session("1 file could not be imported")
        );
    }

    #[test]
    fn dicom_image_set_requires_shared_identifiers() {
        let dir = tempfile::tempdir().unwrap();
        let ids = DicomSeriesIds::new(5);
        let paths = samples::write_dicom_series(dir.path(), 3, 8, 6, &ids, 1).unwrap();
        let img = import_dicom_image_set(&uploads(&paths)).unwrap();
        assert_eq!((img.width, img.height, img.depth), (6, 8, Some(3)));
        assert_eq!(img.files.len(), 3);
        assert_eq!(
            img.metadata.accession_number.as_deref(),
            Some(ids.accession_number.as_str())
        );
        assert_eq!(
            img.metadata.series_number,
            Some(ids.series_number.to_string())
        );

        let other_dir = tempfile::tempdir().unwrap();
        let other = DicomSeriesIds {
            patient_id: "SOMEONE-ELSE".into(),
            ..ids.clone()
        };
        let mut mixed = paths.clone();
        mixed.extend(
            samples::write_dicom_series(
                other_dir.path(),
                1,
                8,
                6,
                &DicomSeriesIds {
                    series_instance_uid: "1.2.99".into(),
                    ..other.clone()
                },
                7,
            )
            .unwrap(),
        );
        let err = import_dicom_image_set(&uploads(&mixed)).unwrap_err();
        let ImportError::Session(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("SeriesInstanceUID"), "{msg}");

        let extra = samples::write_dicom_series(other_dir.path(), 1, 8, 6, &other, 8).unwrap();
        let mut same_series = uploads(&paths);
        same_series.push(("extra.dcm".to_string(), extra[0].clone()));
        let ImportError::Session(msg) = import_dicom_image_set(&same_series).unwrap_err() else {
            panic!()
        };
        assert!(msg.contains("PatientID"), "{msg}");

        let text = write(dir.path(), "notes.txt", b"hello");
        let mut with_text = paths.clone();
        with_text.push(text);
        assert_eq!(
            import_dicom_image_set(&uploads(&with_text)),
            session("notes.txt is not a valid DICOM file")
        );
        assert!(matches!(
            import_dicom_image_set(&[]),
            Err(ImportError::Session(_))
        ));
    }

    /// Rewrite every occurrence of CT Image Storage in a sample file to another SOP class of the same
    /// length (the file meta group and the data set alike).
    fn with_sop_class(path: &Path, class: &str) {
        let ct = samples::CT_IMAGE_STORAGE.as_bytes();
        assert_eq!(class.len(), ct.len());
        let mut bytes = std::fs::read(path).unwrap();
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(ct.len()).position(|w| w == ct) {
            bytes[at + i..at + i + ct.len()].copy_from_slice(class.as_bytes());
            at += i + ct.len();
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_dicom_image_set_is_judged_as_the_platform_judges_it() {
        let dir = tempfile::tempdir().unwrap();
        let ids = DicomSeriesIds::new(11);
        let paths = samples::write_dicom_series(dir.path(), 3, 4, 4, &ids, 1).unwrap();
        assert_eq!(judge_dicom_image_set(&uploads(&paths)), Ok(()));

        // Secondary Capture is not in the platform's de-identification procedure.
        with_sop_class(&paths[1], "1.2.840.10008.5.1.4.1.1.7");
        let fault = judge_dicom_image_set(&uploads(&paths)).unwrap_err();
        assert_eq!(
            fault,
            DicomSetFault::Refused {
                file: 1,
                why: "Unsupported SOP Class (1.2.840.10008.5.1.4.1.1.7)".into()
            }
        );
        let names: Vec<String> = uploads(&paths).into_iter().map(|(n, _)| n).collect();
        let ImportError::Session(msg) = import_dicom_image_set(&uploads(&paths)).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(
            msg,
            format!(
                "{} was refused by the de-identification: Unsupported SOP Class (1.2.840.10008.5.1.4.1.1.7)",
                names[1]
            )
        );

        // Two series: the files grouped by series, in order.
        let two = tempfile::tempdir().unwrap();
        let mut files =
            uploads(&samples::write_dicom_series(two.path(), 2, 4, 4, &ids, 2).unwrap());
        let other = tempfile::tempdir().unwrap();
        let second = DicomSeriesIds {
            series_instance_uid: "1.2.3.4.5".into(),
            ..ids.clone()
        };
        let more = samples::write_dicom_series(other.path(), 2, 4, 4, &second, 3).unwrap();
        files.insert(1, ("b.dcm".into(), more[0].clone()));
        files.push(("d.dcm".into(), more[1].clone()));
        assert_eq!(
            judge_dicom_image_set(&files),
            Err(DicomSetFault::NotShared {
                keyword: "SeriesInstanceUID",
                groups: vec![vec![0, 2], vec![1, 3]]
            })
        );

        let text = write(dir.path(), "notes.txt", b"hello");
        let Err(DicomSetFault::Unreadable { file: 0, why }) =
            judge_dicom_image_set(&uploads(&[text]))
        else {
            panic!()
        };
        assert!(!why.is_empty());
        let dup = vec![
            ("x.dcm".to_string(), paths[0].clone()),
            ("x.dcm".to_string(), paths[2].clone()),
        ];
        assert_eq!(
            judge_dicom_image_set(&dup),
            Err(DicomSetFault::Duplicate([0, 1]))
        );
        assert_eq!(judge_dicom_image_set(&[]), Err(DicomSetFault::NoFiles));
    }

    #[test]
    fn tiff_sample_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (w, h) in [(30, 40), (300, 400)] {
            let p = dir.path().join(format!("slide{w}.tif"));
            samples::write_tiff(&p, w, h, 4).unwrap();
            let img = import_image(&uploads(&[p])).unwrap();
            assert_eq!(img.image_type, ImageType::Tiff);
            assert_eq!(
                (img.width, img.height, img.depth),
                (u64::from(w), u64::from(h), Some(1))
            );
            assert_eq!(img.shape, vec![1, u64::from(h), u64::from(w)]);
            assert_eq!(img.color_space, "GRAY");
            let mm = 25.4 / 72.0;
            assert_eq!(
                (img.voxel_width_mm, img.voxel_height_mm, img.voxel_depth_mm),
                (Some(mm), Some(mm), None)
            );
        }
    }

    #[test]
    fn tiff_without_resolution_is_not_imported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tif");
        samples::write_tiff(&p, 8, 8, 4).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        // Turn ResolutionUnit (296 = 0x0128) into an unknown tag.
        let at = bytes.windows(2).position(|w| w == [0x28, 0x01]).unwrap();
        bytes[at] = 0x29;
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(
            import_image(&uploads(&[p])),
            session("1 file could not be imported")
        );
    }

    #[test]
    fn png_and_jpeg_are_judged_by_their_pixels() {
        use image::{ExtendedColorType, ImageEncoder};
        let dir = tempfile::tempdir().unwrap();
        let encode = |color: ExtendedColorType, channels: usize| {
            let mut out = Vec::new();
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(&vec![7u8; 7 * 5 * channels], 7, 5, color)
                .unwrap();
            out
        };
        let rgb = write(dir.path(), "rgb.png", &encode(ExtendedColorType::Rgb8, 3));
        let img = import_image(&uploads(&[rgb])).unwrap();
        assert_eq!(
            (img.shape.clone(), img.color_space.as_str(), img.depth),
            (vec![5, 7, 3], "RGB", None)
        );
        // Grey with alpha loads, but the platform's colour model has no two-channel space.
        let la = write(dir.path(), "la.png", &encode(ExtendedColorType::La8, 2));
        assert_eq!(
            import_image(&uploads(&[la])),
            session(UNEXPECTED_ERROR_MESSAGE)
        );
        // A valid header without pixels is no image, whatever its kind.
        for (name, color_type) in [("rgb-header.png", 2u8), ("la-header.png", 4)] {
            let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
            b.extend_from_slice(&7u32.to_be_bytes());
            b.extend_from_slice(&5u32.to_be_bytes());
            b.extend_from_slice(&[8, color_type, 0, 0, 0, 0, 0, 0, 0]);
            let p = write(dir.path(), name, &b);
            assert_eq!(
                import_image(&uploads(&[p])),
                session("1 file could not be imported"),
                "{name}"
            );
        }

        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode(&vec![90u8; 48 * 32 * 3], 48, 32, ExtendedColorType::Rgb8)
            .unwrap();
        let j = write(dir.path(), "photo.jpg", &jpeg);
        let img = import_image(&uploads(&[j])).unwrap();
        assert_eq!(
            (img.width, img.height, img.color_space.as_str()),
            (48, 32, "RGB")
        );
        let cut = write(dir.path(), "cut.jpg", &jpeg[..jpeg.len() / 2]);
        assert_eq!(
            import_image(&uploads(&[cut])),
            session("1 file could not be imported")
        );
    }

    #[test]
    fn files_no_builder_takes() {
        let dir = tempfile::tempdir().unwrap();
        let text = write(dir.path(), "notes.txt", b"hello = world\nthis is text\n");
        assert_eq!(
            import_image(&uploads(std::slice::from_ref(&text))),
            session("1 file could not be imported")
        );
        let pdf = dir.path().join("report.pdf");
        samples::write_pdf(&pdf, "report").unwrap();
        let empty = write(dir.path(), "empty.mha", b"");
        assert_eq!(
            import_image(&uploads(&[text.clone(), pdf, empty])),
            session("3 files could not be imported")
        );
        // One image plus junk still succeeds; the junk is reported.
        let mha = dir.path().join("ct.mha");
        samples::write_mha(&mha, [2, 2, 2], 1).unwrap();
        let img = import_image(&uploads(&[text, mha])).unwrap();
        assert_eq!(img.unimported_files, vec!["notes.txt"]);
    }

    #[test]
    fn duplicate_and_missing_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mha");
        samples::write_mha(&a, [2, 2, 2], 1).unwrap();
        let dup = vec![("x.mha".to_string(), a.clone()), ("x.mha".to_string(), a)];
        assert_eq!(import_image(&dup), session(DUPLICATE_FILES_MESSAGE));
        assert_eq!(
            import_dicom_image_set(&dup),
            session(DUPLICATE_FILES_MESSAGE)
        );
        assert!(matches!(import_image(&[]), Err(ImportError::Session(_))));
        let gone = vec![("gone.mha".to_string(), dir.path().join("does-not-exist"))];
        assert_eq!(import_image(&gone), session("1 file could not be imported"));
    }

    fn fuzz_names() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "x.mha", "x.mhd", "x.nii", "x.nii.gz", "x.dcm", "x.tif", "x.png", "x",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), name in fuzz_names()) {
            let dir = tempfile::tempdir().unwrap();
            let p = write(dir.path(), name, &bytes);
            let _ = import_image(&uploads(std::slice::from_ref(&p)));
            let _ = import_dicom_image_set(&uploads(&[p]));
        }

        #[test]
        fn damaged_samples_never_panic(
            kind in 0usize..6,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = match kind {
                0 => { let p = dir.path().join("x.mha"); samples::write_mha(&p, [3, 4, 5], 1).unwrap(); p }
                1 => { let p = dir.path().join("x.nii"); samples::write_nifti(&p, [3, 4, 5], false, 1).unwrap(); p }
                2 => { let p = dir.path().join("x.nii.gz"); samples::write_nifti(&p, [3, 4, 5], true, 1).unwrap(); p }
                3 => samples::write_dicom_series(dir.path(), 1, 4, 4, &DicomSeriesIds::new(1), 1).unwrap().remove(0),
                4 => { let p = dir.path().join("x.tif"); samples::write_tiff(&p, 9, 7, 1).unwrap(); p }
                _ => { let p = dir.path().join("x.png"); std::fs::write(&p, b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x07\0\0\0\x05\x08\x02\0\0\0").unwrap(); p }
            };
            let mut bytes = std::fs::read(&p).unwrap();
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            std::fs::write(&p, &bytes).unwrap();
            let _ = import_image(&uploads(std::slice::from_ref(&p)));
            let _ = import_dicom_image_set(&uploads(&[p]));
        }
    }
}
