//! Image import as the platform's importer judges it, at header level: MetaImage (`.mha`, `.mhd` + data
//! file), NIfTI (`.nii`, `.nii.gz`), DICOM and TIFF. One image value must yield exactly one image.

use std::path::PathBuf;

/// How the platform would store the imported image (`files[].image_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Mhd,
    Tiff,
}

/// What one successful import yields: the metadata the images API shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedImage {
    pub name: String,
    pub width: u64,
    pub height: u64,
    pub depth: Option<u64>,
    /// The image shape as the API shows it, slowest axis first, e.g. `[depth, height, width]`.
    pub shape: Vec<u64>,
    /// `"GRAY"`, `"RGB"`, `"RGBA"` …
    pub color_space: String,
    pub image_type: ImageType,
    pub voxel_spacing_mm: Option<[f64; 3]>,
    pub modality: Option<String>,
    /// Upload filenames that make up the stored image (served from `files[].file`).
    pub files: Vec<String>,
    /// Distinct voxel values, when the image is small enough to read (for segmentation checks).
    pub voxel_values: Option<Vec<i64>>,
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

/// Import the files of one image value. `files` are (upload filename, path of the stored bytes).
pub fn import_image(_files: &[(String, PathBuf)]) -> Result<ImportedImage, ImportError> {
    Err(ImportError::Session("An unexpected error occurred".into()))
}

/// Import the files of one DICOM image set value (one series, consistent study/series identifiers).
pub fn import_dicom_image_set(_files: &[(String, PathBuf)]) -> Result<ImportedImage, ImportError> {
    Err(ImportError::Session("An unexpected error occurred".into()))
}
