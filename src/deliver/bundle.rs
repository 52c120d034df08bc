//! The many files of one image socket as one ZIP upload. The platform unpacks every ZIP upload of an
//! image before it imports it (gc-protocol.md §3.5), so a DICOM series of hundreds of slices goes as one
//! upload instead of hundreds: four requests instead of four per slice, and one of the 2000 upload
//! records a user may hold while imports are pending instead of one per slice (§8.2), which would
//! otherwise cap how many such cases can wait for their import at once.
//!
//! The archive is the same, byte for byte, on every attempt (members stored, not compressed, in plan
//! order, with fixed times), so an interrupted upload of it resumes. Its members carry the names the
//! files would have been uploaded under, so the platform's image holds the same files either way.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// From this many files, an image socket's files go as one ZIP.
pub const BUNDLE_FROM: usize = 16;

/// One image socket's files packed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub slug: String,
    /// Where the journal records its upload: never a path of the case's (those are relative).
    pub key: String,
    pub local: PathBuf,
    /// The upload's name.
    pub filename: String,
}

impl Bundle {
    /// The journal's key of a socket's ZIP.
    pub fn key_of(slug: &str) -> String {
        format!("/{slug}.zip")
    }
}

/// The upload records a plan holds on the platform until its imports consume them: one per file, but
/// one for the files of a socket that go as a ZIP. Files of a socket that is not an image go one by
/// one, and a socket taking many files is an image (a file socket takes one).
pub fn uploads(plan: &crate::rules::Plan) -> usize {
    use crate::rules::Source;
    plan.sockets
        .iter()
        .map(|s| match &s.source {
            Source::Files(files) if files.len() >= BUNDLE_FROM => 1,
            Source::Files(files) | Source::DicomImageSet { files, .. } => files.len(),
            Source::ValueFile(_) => 1,
            Source::Value(_) => 0,
        })
        .sum()
}

/// The folder of the ZIPs inside a delivery's staging folder: hidden, so no file of the case (dotfiles
/// are never part of a case) is ever staged there.
pub const FOLDER: &str = ".bundles";

/// Write `members` (upload name, file) as the ZIP of socket `slug` under `staging`.
pub fn write(staging: &Path, slug: &str, members: &[(String, PathBuf)]) -> io::Result<Bundle> {
    let dir = staging.join(FOLDER);
    std::fs::create_dir_all(&dir)?;
    let filename = format!("{slug}.zip");
    let local = dir.join(&filename);
    let mut zip = zip::ZipWriter::new(BufWriter::new(File::create(&local)?));
    for (name, path) in members {
        let size = std::fs::metadata(path)?.len();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644)
            .large_file(size >= u32::MAX as u64);
        zip.start_file(name.as_str(), options)
            .map_err(io::Error::other)?;
        io::copy(&mut File::open(path)?, &mut zip)?;
    }
    // Not synced: the archive is made again by any later attempt, so a crash can lose it.
    let file = zip.finish().map_err(io::Error::other)?;
    file.into_inner().map_err(|e| e.into_error())?;
    Ok(Bundle {
        slug: slug.to_owned(),
        key: Bundle::key_of(slug),
        local,
        filename,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_files_make_the_same_archive_whose_members_keep_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"first slice").unwrap();
        std::fs::write(&b, vec![7u8; 70_000]).unwrap();
        let members = vec![
            ("dicom-0001.dcm".to_owned(), a.clone()),
            ("dicom-0002.dcm".to_owned(), b.clone()),
        ];
        let one = write(&dir.path().join("s1"), "ct-image", &members).unwrap();
        let two = write(&dir.path().join("s2"), "ct-image", &members).unwrap();
        assert_eq!(one.filename, "ct-image.zip");
        assert_eq!(one.key, "/ct-image.zip");
        assert_eq!(
            std::fs::read(&one.local).unwrap(),
            std::fs::read(&two.local).unwrap(),
            "an interrupted upload resumes with the very same bytes"
        );
        // Unpacked as the platform does it: the files under their upload names, unchanged.
        let files = vec![(one.filename.clone(), one.local.clone())];
        let unpacked =
            gc_content::imaging::unpack_zips(&files, &dir.path().join("scratch")).unwrap();
        let names: Vec<&str> = unpacked.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dicom-0001.dcm", "dicom-0002.dcm"]);
        assert_eq!(std::fs::read(&unpacked[1].1).unwrap(), vec![7u8; 70_000]);
    }
}
