//! What a file bound for an image socket is, judged by its bytes, never by its name: the gate that
//! keeps DICOM from leaving without de-identification.
//!
//! The rule is fail closed. A file is sent as it is only when its content is positively one of the
//! non-DICOM formats the platform's importer reads (MetaImage, NIfTI, NRRD, TIFF, PNG, JPEG, or a ZIP
//! archive or gzip stream holding only such files). Anything a DICOM reader would read as a data set —
//! a Part 10 file with its preamble, a file meta group without the preamble, or a bare data set in any
//! of the uncompressed encodings, whatever the file is called — is DICOM and goes through
//! de-identification or is refused. Anything else is refused with the reason.
//!
//! A MetaImage header may name a detached data file (`ElementDataFile = scan.raw`) that has no
//! signature of its own: such a file passes only because a header beside it names it, and only if it
//! does not look like DICOM itself.
//!
//! The decisions ([`sniff`]) are pure functions of a file's first bytes; the readers around them read
//! at most [`HEAD`] bytes of a file (or of each ZIP member), so a hostile archive costs no more than its
//! directory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use dicom_core::VR;
use dicom_dictionary_std::uids;

/// How many bytes of a file the signatures look at.
pub const HEAD: usize = 4096;
/// How much of a MetaImage header is read for the name of its data file (the importer's own cap).
const METAIMAGE_HEADER: usize = 64 << 10;

/// Where the DICOM data set of a file starts, and how it is encoded when the file does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// 128-byte preamble, "DICM", file meta group, data set.
    Part10,
    /// A file meta group without the preamble: it starts `at` bytes into the file (after a "DICM" of its
    /// own, or at 0 where even that is missing).
    Meta { at: u64 },
    /// A data set with no file meta group, in the transfer syntax its first elements show.
    Bare { ts: &'static str },
}

/// The non-DICOM formats recognised by signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MetaImage,
    Nifti,
    Nrrd,
    Tiff,
    Png,
    Jpeg,
    Zip,
    Gzip,
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Dicom(Start),
    Other(Format),
    Unknown,
}

/// Judge a file by its first bytes (`head`, at most [`HEAD`] of them) and its length. DICOM is looked
/// for first: a file that is DICOM and also something else (a TIFF header in a DICOM preamble) is DICOM.
pub fn sniff(head: &[u8], len: u64) -> Content {
    if head.get(128..132) == Some(b"DICM") {
        return Content::Dicom(Start::Part10);
    }
    if head.starts_with(b"DICM") {
        return Content::Dicom(Start::Meta { at: 4 });
    }
    if let Some(start) = bare_data_set(head, len) {
        return Content::Dicom(start);
    }
    match signature(head) {
        Some(format) => Content::Other(format),
        None => Content::Unknown,
    }
}

/// The formats whose first bytes identify them.
fn signature(head: &[u8]) -> Option<Format> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    Some(if head.starts_with(PNG) {
        Format::Png
    } else if head.starts_with(b"\xff\xd8\xff") {
        Format::Jpeg
    } else if [b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"]
        .iter()
        .any(|m| head.starts_with(*m))
    {
        Format::Tiff
    } else if head.starts_with(b"NRRD000") {
        Format::Nrrd
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Format::Zip
    } else if head.starts_with(b"\x1f\x8b") {
        Format::Gzip
    } else if nifti(at) {
        Format::Nifti
    } else if metaimage_data_file(head).is_some() {
        Format::MetaImage
    } else {
        return None;
    })
}

/// NIfTI-1 (header size 348, magic `n+1`/`ni1` at 344) or NIfTI-2 (540, magic `n+2`/`ni2` at 4), in
/// either byte order.
fn nifti(at: impl Fn(usize, &[u8]) -> bool) -> bool {
    let size = |v: u32| at(0, &v.to_le_bytes()) || at(0, &v.to_be_bytes());
    (size(348) && (at(344, b"n+1\0") || at(344, b"ni1\0")))
        || (size(540) && (at(4, b"n+2\0") || at(4, b"ni2\0")))
}

/// A MetaImage header (`key = value` lines with `NDims`, ending at `ElementDataFile`): the value of
/// `ElementDataFile` (`LOCAL` for data in the same file).
pub fn metaimage_data_file(head: &[u8]) -> Option<String> {
    let mut ndims = false;
    for line in head.split(|&b| b == b'\n') {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        match key {
            "NDims" => ndims = true,
            "ElementDataFile" => return ndims.then(|| value.trim().to_owned()),
            _ => {}
        }
    }
    None
}

/// The first groups a data set can open with: the file meta group (0002), a DICOMDIR's (0004), and
/// the identifying, patient, acquisition, relationship and image groups. Pixel bytes and other
/// formats rarely start with one of these and then continue as elements do.
fn opening_group(group: u16) -> bool {
    group.is_multiple_of(2) && (0x0002..=0x0028).contains(&group)
}

/// A data set without the preamble, recognised by up to three consecutive well-formed elements in
/// ascending order. Explicit VR little endian is tried first, then big endian, then implicit VR little
/// endian; group 0002 first means a file meta group (always explicit VR little endian).
fn bare_data_set(head: &[u8], len: u64) -> Option<Start> {
    if elements_line_up(head, len, Encoding::ExplicitLe) {
        let group = u16::from_le_bytes([head[0], head[1]]);
        return Some(if group == 0x0002 {
            Start::Meta { at: 0 }
        } else {
            Start::Bare {
                ts: uids::EXPLICIT_VR_LITTLE_ENDIAN,
            }
        });
    }
    if elements_line_up(head, len, Encoding::ExplicitBe) {
        // Retired since 2004, and still found in old archives.
        #[allow(deprecated)]
        let ts = uids::EXPLICIT_VR_BIG_ENDIAN;
        return Some(Start::Bare { ts });
    }
    if elements_line_up(head, len, Encoding::ImplicitLe) {
        return Some(Start::Bare {
            ts: uids::IMPLICIT_VR_LITTLE_ENDIAN,
        });
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ExplicitLe,
    ExplicitBe,
    ImplicitLe,
}

/// Do the first elements of `head` read as elements in this encoding: an opening group first, tags
/// ascending, known VRs, lengths within the file? Stops with a yes after three elements, or where the
/// head ends or an element of undefined length (a sequence) begins, once the first one was sound.
fn elements_line_up(head: &[u8], len: u64, enc: Encoding) -> bool {
    let mut pos = 0usize;
    let mut last: Option<(u16, u16)> = None;
    for _ in 0..3 {
        let header = match element_header(head, pos, enc) {
            Header::Cut => return last.is_some(),
            Header::Malformed => return false,
            Header::Read(h) => h,
        };
        let fits = match last {
            None => opening_group(header.tag.0),
            Some(prev) => header.tag > prev,
        };
        if !fits {
            return false;
        }
        if header.value_len == u32::MAX {
            // A sequence or item of undefined length: its contents follow, not a next element.
            return true;
        }
        let end = (pos + header.len) as u64 + u64::from(header.value_len);
        if end > len {
            return false;
        }
        last = Some(header.tag);
        pos = match usize::try_from(end) {
            Ok(p) if p < head.len() => p,
            _ => return true,
        };
    }
    true
}

/// An element header as read from the first bytes of a file.
struct ElementHeader {
    tag: (u16, u16),
    /// The value's declared length (`u32::MAX`: undefined).
    value_len: u32,
    /// The header's own length.
    len: usize,
}

enum Header {
    Read(ElementHeader),
    /// The head ends inside the header: no verdict either way.
    Cut,
    /// Not an element header in this encoding (an unknown VR, reserved bytes that are not zero).
    Malformed,
}

/// The element header at `pos` in `head`, in encoding `enc`.
fn element_header(head: &[u8], pos: usize, enc: Encoding) -> Header {
    let big = enc == Encoding::ExplicitBe;
    let u16_at = |i: usize| -> Option<u16> {
        let b = [*head.get(i)?, *head.get(i + 1)?];
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |i: usize| -> Option<u32> {
        let b: [u8; 4] = head.get(i..i + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let (Some(group), Some(element)) = (u16_at(pos), u16_at(pos + 2)) else {
        return Header::Cut;
    };
    let read = |value_len: Option<u32>, len| match value_len {
        Some(value_len) => Header::Read(ElementHeader {
            tag: (group, element),
            value_len,
            len,
        }),
        None => Header::Cut,
    };
    if enc == Encoding::ImplicitLe {
        return read(u32_at(pos + 4), 8);
    }
    let Some(code) = head.get(pos + 4..pos + 6) else {
        return Header::Cut;
    };
    let Some(vr) = VR::from_binary([code[0], code[1]]) else {
        return Header::Malformed;
    };
    if !long_vr(vr) {
        return read(u16_at(pos + 6).map(u32::from), 8);
    }
    if head.get(pos + 6..pos + 8).is_some_and(|r| r != [0, 0]) {
        return Header::Malformed;
    }
    read(u32_at(pos + 8), 12)
}

/// VRs whose explicit header has two reserved bytes and a 4-byte length.
pub(super) fn long_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// Read a file's first `cap` bytes (fewer when it is shorter) and its length.
pub fn head(path: &Path, cap: usize) -> io::Result<(Vec<u8>, u64)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut out = Vec::with_capacity(cap.min(len as usize));
    file.take(cap as u64).read_to_end(&mut out)?;
    Ok((out, len))
}

/// What to do with one file going to an image socket, de-identification on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// DICOM: de-identify it (or refuse it if that fails).
    Dicom(Start),
    /// A non-DICOM format the importer reads: send it as it is.
    Plain(Format),
    /// Neither: refuse it, for this reason.
    Refused(String),
}

/// Judge one file of a case. `named` holds the case-relative paths that MetaImage headers of the case
/// name as their data files ([`named_data_files`]).
pub fn judge(case_dir: &Path, rel: &Path, named: &HashSet<PathBuf>) -> io::Result<Verdict> {
    let path = case_dir.join(rel);
    let (head, len) = head(&path, HEAD)?;
    Ok(match sniff(&head, len) {
        Content::Dicom(start) => Verdict::Dicom(start),
        Content::Other(Format::Zip) => zip_verdict(&path)?,
        Content::Other(Format::Gzip) => gzip_verdict(&head, "the file"),
        Content::Other(format) => Verdict::Plain(format),
        Content::Unknown if named.contains(rel) => Verdict::Plain(Format::MetaImage),
        Content::Unknown => Verdict::Refused(UNRECOGNISED.into()),
    })
}

const UNRECOGNISED: &str = "not a format this program recognises as free of DICOM (MetaImage, NIfTI, NRRD, TIFF, PNG, JPEG, or a ZIP of those), so it is not sent: convert it, or set deidentify = false for this folder if it holds no patient data";

/// A gzip stream is sent only when it holds a NIfTI image (`.nii.gz`); DICOM inside would leave
/// unchanged, and anything else is unrecognised.
fn gzip_verdict(head: &[u8], what: &str) -> Verdict {
    let mut inner = Vec::with_capacity(HEAD);
    // A head cut short still inflates as far as it goes; an error just ends what can be seen.
    let _ = flate2::read::GzDecoder::new(head)
        .take(HEAD as u64)
        .read_to_end(&mut inner);
    match sniff(&inner, u64::MAX) {
        Content::Other(Format::Nifti) => Verdict::Plain(Format::Nifti),
        Content::Dicom(_) => Verdict::Refused(format!(
            "{what} is gzip-compressed DICOM, which cannot be de-identified as it is: decompress it"
        )),
        _ => Verdict::Refused(format!(
            "{what} is gzip-compressed, but not a NIfTI image: {UNRECOGNISED}"
        )),
    }
}

/// A ZIP archive is sent only when every member is a recognised non-DICOM format (or a data file a
/// MetaImage header in it names): the platform unpacks it and would import DICOM inside unchanged.
fn zip_verdict(path: &Path) -> io::Result<Verdict> {
    let Ok(mut archive) = zip::ZipArchive::new(File::open(path)?) else {
        return Ok(Verdict::Refused(
            "a damaged ZIP archive, whose contents cannot be checked for DICOM".into(),
        ));
    };
    let mut heads = Vec::new();
    for i in 0..archive.len() {
        let Ok(member) = archive.by_index(i) else {
            return Ok(Verdict::Refused(
                "a ZIP archive whose members cannot be read, so they cannot be checked for DICOM"
                    .into(),
            ));
        };
        if member.is_dir() {
            continue;
        }
        let name = String::from_utf8_lossy(member.name_raw()).into_owned();
        let len = member.size();
        let mut head = Vec::with_capacity(HEAD);
        if member.take(HEAD as u64).read_to_end(&mut head).is_err() {
            return Ok(Verdict::Refused(format!(
                "member {name} of the ZIP archive cannot be read, so it cannot be checked for DICOM"
            )));
        }
        heads.push((name, head, len));
    }
    let named: HashSet<String> = heads
        .iter()
        .filter_map(|(name, head, _)| {
            let file = metaimage_data_file(head)?;
            let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
            Some(if dir.is_empty() {
                file
            } else {
                format!("{dir}/{file}")
            })
        })
        .collect();
    for (name, head, len) in &heads {
        let refused = |why: String| Ok(Verdict::Refused(why));
        match sniff(head, *len) {
            Content::Dicom(_) => {
                return refused(format!(
                    "the ZIP archive holds DICOM ({name}), which would leave without de-identification: unpack the archive into the case folder"
                ));
            }
            Content::Other(Format::Zip) => {
                return refused(format!(
                    "the ZIP archive holds another ZIP archive ({name}), which cannot be checked for DICOM: unpack it into the case folder"
                ));
            }
            Content::Other(Format::Gzip) => {
                if let Verdict::Refused(why) = gzip_verdict(head, &format!("member {name}")) {
                    return refused(why);
                }
            }
            Content::Other(_) => {}
            Content::Unknown if named.contains(name) => {}
            Content::Unknown => {
                return refused(format!(
                    "member {name} of the ZIP archive is {UNRECOGNISED}"
                ));
            }
        }
    }
    Ok(Verdict::Plain(Format::Zip))
}

/// The case-relative paths of the data files that the MetaImage headers among `files` name (a `.mhd`
/// beside its `.raw`): those files have no signature of their own.
pub fn named_data_files(case_dir: &Path, files: &[&Path]) -> HashSet<PathBuf> {
    files
        .iter()
        .filter_map(|rel| {
            let (head, _) = head(&case_dir.join(rel), METAIMAGE_HEADER).ok()?;
            let file = metaimage_data_file(&head)?;
            // The importer takes data files from the header's own folder only.
            if file == "LOCAL" || file.contains(['/', '\\']) {
                return None;
            }
            Some(rel.parent().unwrap_or(Path::new("")).join(file))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit_le(elements: &[(u16, u16, &[u8; 2], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (g, e, vr, value) in elements {
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
            out.extend_from_slice(*vr);
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn implicit_le(elements: &[(u16, u16, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (g, e, value) in elements {
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn judged(bytes: &[u8]) -> Content {
        sniff(&bytes[..bytes.len().min(HEAD)], bytes.len() as u64)
    }

    #[test]
    fn part_10_and_a_meta_group_without_preamble_are_dicom() {
        let mut part10 = vec![0u8; 128];
        part10.extend_from_slice(b"DICM");
        part10.extend_from_slice(&explicit_le(&[(2, 0x10, b"UI", b"1.2.840.10008.1.2\0")]));
        assert_eq!(judged(&part10), Content::Dicom(Start::Part10));
        assert_eq!(
            judged(&part10[128..]),
            Content::Dicom(Start::Meta { at: 4 })
        );
        assert_eq!(
            judged(&part10[132..]),
            Content::Dicom(Start::Meta { at: 0 })
        );
    }

    #[test]
    fn bare_data_sets_are_dicom_in_every_uncompressed_encoding() {
        let elements: &[(u16, u16, &[u8])] = &[
            (0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.2\0"),
            (0x0008, 0x0018, b"1.2.3.4\0"),
            (0x0010, 0x0010, b"DOE^JANE"),
        ];
        assert_eq!(
            judged(&implicit_le(elements)),
            Content::Dicom(Start::Bare {
                ts: uids::IMPLICIT_VR_LITTLE_ENDIAN
            })
        );
        let explicit: Vec<_> = elements
            .iter()
            .zip([b"UI", b"UI", b"PN"])
            .map(|((g, e, v), vr)| (*g, *e, vr, *v))
            .collect();
        assert_eq!(
            judged(&explicit_le(&explicit)),
            Content::Dicom(Start::Bare {
                ts: uids::EXPLICIT_VR_LITTLE_ENDIAN
            })
        );
        let mut be = Vec::new();
        for (g, e, vr, v) in &explicit {
            be.extend_from_slice(&g.to_be_bytes());
            be.extend_from_slice(&e.to_be_bytes());
            be.extend_from_slice(*vr);
            be.extend_from_slice(&(v.len() as u16).to_be_bytes());
            be.extend_from_slice(v);
        }
        #[allow(deprecated)]
        let ts = uids::EXPLICIT_VR_BIG_ENDIAN;
        assert_eq!(judged(&be), Content::Dicom(Start::Bare { ts }));
        // A lone first element is enough when the head ends there.
        assert!(matches!(
            judged(&implicit_le(&elements[..1])),
            Content::Dicom(_)
        ));
    }

    #[test]
    fn other_formats_are_recognised_and_the_rest_is_unknown() {
        let mut nifti = vec![0u8; 352];
        nifti[..4].copy_from_slice(&348u32.to_le_bytes());
        nifti[344..348].copy_from_slice(b"n+1\0");
        assert_eq!(judged(&nifti), Content::Other(Format::Nifti));
        assert_eq!(
            judged(b"ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n\x00\x01"),
            Content::Other(Format::MetaImage)
        );
        assert_eq!(judged(b"II*\0\x08\0\0\0"), Content::Other(Format::Tiff));
        assert_eq!(judged(b"NRRD0004\n"), Content::Other(Format::Nrrd));
        assert_eq!(
            judged(b"\x89PNG\r\n\x1a\n\0\0"),
            Content::Other(Format::Png)
        );
        for unknown in [
            &b"exported by mistake as text\n"[..],
            b"",
            b"ObjectType = Image\nElementDataFile = LOCAL\n",
            // Pixel-like bytes: an opening group, then nothing that lines up.
            &[8, 0, 0, 0, 200, 200, 200, 200, 1, 2, 3, 4],
        ] {
            assert_eq!(judged(unknown), Content::Unknown, "{unknown:?}");
        }
    }

    #[test]
    fn detached_data_files_pass_only_when_a_header_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("ct")).unwrap();
        std::fs::write(
            d.join("ct/a.mhd"),
            "NDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = a.raw\n",
        )
        .unwrap();
        std::fs::write(d.join("ct/a.raw"), [7u8; 8]).unwrap();
        std::fs::write(d.join("ct/b.raw"), [7u8; 8]).unwrap();
        let rels = [Path::new("ct/a.mhd"), Path::new("ct/a.raw")];
        let named = named_data_files(d, &rels);
        assert_eq!(named, HashSet::from([PathBuf::from("ct/a.raw")]));
        let j = |rel: &str| judge(d, Path::new(rel), &named).unwrap();
        assert_eq!(j("ct/a.mhd"), Verdict::Plain(Format::MetaImage));
        assert_eq!(j("ct/a.raw"), Verdict::Plain(Format::MetaImage));
        assert!(matches!(j("ct/b.raw"), Verdict::Refused(_)));
    }
}
