//! Tiny but real medical images for tests, the demo and benchmarks: each file is what the format's
//! reader expects (MetaImage, NIfTI, DICOM, TIFF), not just a plausible extension.
