//! What every step of de-identification shares: its error and the small readings of DICOM text that
//! the steps agree on.

use dicom_core::Tag;

/// Why a file was not de-identified. The text is for a receipt: it names the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeidError {
    /// Not DICOM in any way it can be stored ([`super::sniff`]).
    #[error("not a DICOM file")]
    NotDicom,
    /// The procedure refuses the file.
    #[error("refused by the de-identification procedure: {0}")]
    Rejected(String),
    /// A DICOM file that cannot be read to its end (truncated, malformed) or written.
    #[error("{0}")]
    Unreadable(String),
}

/// A string value without DICOM's padding.
pub(crate) fn trimmed(s: &str) -> &str {
    s.trim_end_matches(['\0', ' ']).trim_start_matches(' ')
}

/// A tag as the procedure and the receipts write it: `(GGGG,EEEE)`.
pub(crate) fn tag_key(t: Tag) -> String {
    format!("({:04X},{:04X})", t.0, t.1)
}

/// A file the DICOM reader gave up on, in the receipt's words.
pub(crate) fn unreadable(e: impl std::fmt::Display) -> DeidError {
    DeidError::Unreadable(format!("cannot read it as DICOM: {e}"))
}
