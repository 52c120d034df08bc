//! Image import as the platform's importer judges it, at header level: MetaImage (`.mha`, `.mhd` + data
//! file), NIfTI (`.nii`, `.nii.gz`), DICOM and TIFF. One image value must yield exactly one image.
