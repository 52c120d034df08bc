//! Where a DICOM file's data set starts and how it is encoded, for every way DICOM is stored: a Part 10
//! file, a file meta group without the preamble, a bare data set (as older scanners and export tools
//! write them), and deflated data sets, which are inflated into a work file first so that every later
//! step reads plain explicit VR little endian with offsets into a file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::FileMetaTable;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::error::{DeidError, trimmed, unreadable};
use super::scan::{Tracked, bound_file_meta};
use super::sniff::Start;

/// A deflated data set inflates to at most this much; beyond it the file is refused (a few KiB of
/// deflate can claim gigabytes).
const MAX_INFLATED: u64 = 4 << 30;

/// How to read a DICOM file's data set.
#[derive(Debug)]
pub(super) struct Layout {
    /// The file the data set is read from: the original, or its inflated work copy.
    pub path: PathBuf,
    /// Where the data set starts in `path`.
    pub data: u64,
    /// The transfer syntax the data set is read in (explicit VR little endian for an inflated one).
    pub read_ts: String,
    /// The transfer syntax the file declares and the copy keeps (deflated stays deflated).
    pub file_ts: String,
    /// The inflated work copy, removed when the layout is dropped.
    work: Option<PathBuf>,
}

impl Layout {
    /// Was the data set deflated (and so must the copy's be)?
    pub fn deflated(&self) -> bool {
        self.work.is_some()
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        if let Some(work) = &self.work {
            let _ = std::fs::remove_file(work);
        }
    }
}

/// Find the data set of `src`, stored as `start` says. A deflated data set is inflated into `work`.
pub(super) fn layout(src: &Path, start: Start, work: &Path) -> Result<Layout, DeidError> {
    let (data, file_ts) = match start {
        Start::Part10 => meta_group(src, 132)?,
        Start::Meta { at } => meta_group(src, at)?,
        Start::Bare { ts } => (0, ts.to_owned()),
    };
    if TransferSyntaxRegistry.get(&file_ts).is_none() {
        return Err(DeidError::Unreadable(format!(
            "cannot read it as DICOM: unknown transfer syntax {file_ts}"
        )));
    }
    if file_ts != uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        return Ok(Layout {
            path: src.to_owned(),
            data,
            read_ts: file_ts.clone(),
            file_ts,
            work: None,
        });
    }
    // Made before the work file exists, so that it is removed whatever happens next.
    let layout = Layout {
        path: work.to_owned(),
        data: 0,
        read_ts: uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
        file_ts,
        work: Some(work.to_owned()),
    };
    inflate(src, data, work)?;
    Ok(layout)
}

/// Read the file meta group whose first element is `at` bytes into the file (its lengths checked
/// against the file's size first): where the data set starts, and the transfer syntax.
fn meta_group(src: &Path, at: u64) -> Result<(u64, String), DeidError> {
    let file = File::open(src).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    let mut reader = Tracked::new(file);
    reader.seek(SeekFrom::Start(at)).map_err(unreadable)?;
    let unstated = unstated_group_length(&mut reader, size)?;
    reader.seek(SeekFrom::Start(at)).map_err(unreadable)?;
    // dicom-rs reads the group after its "DICM", and only with its group length first: give it both
    // where the file has none of its own.
    let meta = match unstated {
        None => {
            bound_file_meta(&mut reader, size)?;
            reader.seek(SeekFrom::Start(at)).map_err(unreadable)?;
            FileMetaTable::from_reader((&b"DICM"[..]).chain(&mut reader))
        }
        Some(len) => {
            let mut stated = b"DICM\x02\x00\x00\x00UL\x04\x00".to_vec();
            stated.extend_from_slice(&len.to_le_bytes());
            FileMetaTable::from_reader(stated.chain((&mut reader).take(u64::from(len))))
        }
    }
    .map_err(unreadable)?;
    Ok((
        reader.position(),
        trimmed(meta.transfer_syntax()).to_owned(),
    ))
}

/// A file meta group that does not open with its group length (0002,0000), as some writers leave it:
/// its length, found by walking its elements (explicit VR little endian, each length checked against
/// the file). `None` when the group length is there.
fn unstated_group_length(reader: &mut Tracked, size: u64) -> Result<Option<u32>, DeidError> {
    let start = reader.position();
    let mut header = [0u8; 8];
    let mut first = true;
    // Where the group's last whole element ends.
    let mut end = start;
    while end + 8 <= size {
        reader.read_exact(&mut header).map_err(unreadable)?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        if group != 0x0002 {
            break;
        }
        if first && element == 0x0000 {
            return Ok(None);
        }
        first = false;
        let long =
            dicom_core::VR::from_binary([header[4], header[5]]).is_some_and(super::sniff::long_vr);
        let len = if long {
            let mut long = [0u8; 4];
            reader.read_exact(&mut long).map_err(unreadable)?;
            u64::from(u32::from_le_bytes(long))
        } else {
            u64::from(u16::from_le_bytes([header[6], header[7]]))
        };
        let left = size.saturating_sub(reader.position());
        if len > left {
            return Err(DeidError::Unreadable(format!(
                "cannot read it as DICOM: element (0002,{element:04X}) declares {len} bytes but only {left} remain: the file is cut short or damaged"
            )));
        }
        reader
            .seek(SeekFrom::Current(len as i64))
            .map_err(unreadable)?;
        end = reader.position();
    }
    u32::try_from(end - start).map(Some).map_err(|_| {
        DeidError::Unreadable("cannot read it as DICOM: the file meta group is too long".into())
    })
}

/// Inflate the raw deflate stream from `data` to the end of `src` into `work`, streaming.
fn inflate(src: &Path, data: u64, work: &Path) -> Result<(), DeidError> {
    let mut file = File::open(src).map_err(unreadable)?;
    file.seek(SeekFrom::Start(data)).map_err(unreadable)?;
    let mut inflated =
        flate2::read::DeflateDecoder::new(BufReader::new(file)).take(MAX_INFLATED + 1);
    let out = File::create(work)
        .map_err(|e| DeidError::Unreadable(format!("cannot write the inflated work copy: {e}")))?;
    let mut out = BufWriter::new(out);
    let copied = std::io::copy(&mut inflated, &mut out)
        .map_err(|e| DeidError::Unreadable(format!("cannot inflate the data set: {e}")))?;
    if copied > MAX_INFLATED {
        return Err(DeidError::Unreadable(format!(
            "the deflated data set inflates to more than {} GiB",
            MAX_INFLATED >> 30
        )));
    }
    out.flush()
        .map_err(|e| DeidError::Unreadable(format!("cannot write the inflated work copy: {e}")))
}
