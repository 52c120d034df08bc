//! A walk over the element headers of a DICOM file before it is parsed for real.
//!
//! Two reasons. A damaged header (a length field turned into garbage, as a broken export or a bit flip
//! leaves it) makes a parser allocate and fill the length it was promised (gigabytes) before it notices
//! that the file ends; a drop folder with one such file would stall the agent for minutes. No value can
//! be longer than the bytes that remain in the file, so this walk refuses such a file at once, naming
//! the element. And the walk finds where native pixel data sits, so that it can be copied straight from
//! the file in bounded chunks instead of being read into memory as one value.
//!
//! The walk uses dicom-rs's own decoders and token reader, with the options the collector in
//! [`super::deidentify_file`] uses, so both see the same elements: every length that the collector
//! will allocate for has been checked against the file's size first. Values are skipped, not read.
//! Where the walk meets something dicom-rs itself refuses, it stops and lets the parser say so.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::decode::Decode;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::error::{DeidError, tag_key, unreadable};
use super::layout::Layout;

/// The top-level Pixel Data of a file, as far as the copy needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PixelData {
    /// The data set ends without Pixel Data.
    Absent,
    /// Native pixel data: `len` bytes starting `offset` bytes into the file.
    Native { offset: u64, len: u32 },
    /// Encapsulated pixel data (fragments), its element starting `offset` bytes into the file.
    Encapsulated { offset: u64 },
}

/// Walk the data set of `layout` up to the top-level Pixel Data (not further: what follows it is not
/// part of the image and is not copied). `Err` when an element declares more bytes than the file has
/// left, or when dicom-rs cannot read the structure. The file meta group was bounded when the layout
/// was read.
pub(super) fn scan(layout: &Layout) -> Result<PixelData, DeidError> {
    let file = File::open(&layout.path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    let mut src = Tracked::new(file);
    let at = Rc::clone(&src.at);
    src.seek(SeekFrom::Start(layout.data)).map_err(unreadable)?;
    let ts = TransferSyntaxRegistry.get(&layout.read_ts).ok_or_else(|| {
        DeidError::Unreadable(format!("unknown transfer syntax {}", layout.read_ts))
    })?;
    let mut tokens = LazyDataSetReader::new_with_ts(src, ts).map_err(unreadable)?;

    // Sequences open around the current token: Pixel Data only counts at the top level (an icon
    // image in a sequence has its own).
    let mut depth = 0usize;
    loop {
        // A token reads its own header and nothing before it: where it starts.
        let start = at.get();
        let Some(token) = tokens.advance() else {
            return Ok(PixelData::Absent);
        };
        let token = token.map_err(unreadable)?;
        let left = size.saturating_sub(at.get());
        match token {
            LazyDataToken::ElementHeader(h) => {
                let len = h.len.0;
                check(h.tag, len, left)?;
                if depth == 0 && h.tag == tags::PIXEL_DATA {
                    return Ok(PixelData::Native {
                        offset: at.get(),
                        len,
                    });
                }
            }
            LazyDataToken::SequenceStart { tag, len } => {
                if let Some(len) = len.get() {
                    check(tag, len, left)?;
                }
                depth += 1;
            }
            LazyDataToken::ItemStart { len } => {
                if let Some(len) = len.get() {
                    check(Tag(0xFFFE, 0xE000), len, left)?;
                }
            }
            LazyDataToken::PixelSequenceStart if depth == 0 => {
                return Ok(PixelData::Encapsulated { offset: start });
            }
            LazyDataToken::PixelSequenceStart => depth += 1,
            LazyDataToken::SequenceEnd => depth = depth.saturating_sub(1),
            LazyDataToken::ItemEnd => {}
            // Element values and (nested) fragments: their lengths were checked with their headers.
            value => value.skip().map_err(unreadable)?,
        }
    }
}

/// The file meta group from its first element on, element by element as dicom-rs's reader takes it
/// (Explicit VR Little Endian, as many bytes as its group length says), checking each declared length
/// against what is left. Stops without a verdict where that reader would fail anyway (it then fails on
/// the same element, before allocating anything).
pub(super) fn bound_file_meta(src: &mut Tracked, size: u64) -> Result<(), DeidError> {
    let decoder = dicom_encoding::decode::file_header_decoder();
    let Ok((first, _)) = decoder.decode_header(src) else {
        return Ok(());
    };
    if first.tag != Tag(0x0002, 0x0000) || first.len.0 != 4 {
        return Ok(());
    }
    let mut group_length = [0u8; 4];
    if src.read_exact(&mut group_length).is_err() {
        return Ok(());
    }
    let group_length = u32::from_le_bytes(group_length);
    let mut read = 0u32;
    while read < group_length {
        let Ok((h, header_len)) = decoder.decode_header(src) else {
            return Ok(());
        };
        let Some(len) = h.len.get() else {
            return Ok(());
        };
        check(h.tag, len, size.saturating_sub(src.at.get()))?;
        src.seek(SeekFrom::Current(i64::from(len)))
            .map_err(unreadable)?;
        read = read.saturating_add(header_len as u32).saturating_add(len);
    }
    Ok(())
}

/// No value is longer than the rest of the file.
fn check(tag: Tag, len: u32, left: u64) -> Result<(), DeidError> {
    if u64::from(len) > left {
        return Err(DeidError::Unreadable(format!(
            "cannot read it as DICOM: element {} declares {len} bytes but only {left} remain: the file is cut short or damaged",
            tag_key(tag)
        )));
    }
    Ok(())
}

/// A reader that knows its position in the file, shared with the walk (the token reader owns it).
pub(super) struct Tracked {
    inner: BufReader<File>,
    at: Rc<Cell<u64>>,
}

impl Tracked {
    pub(super) fn new(file: File) -> Tracked {
        Tracked {
            // A header is a few KiB: a small buffer, so as not to read into the pixel data.
            inner: BufReader::with_capacity(8 << 10, file),
            at: Rc::new(Cell::new(0)),
        }
    }

    /// Bytes into the file.
    pub(super) fn position(&self) -> u64 {
        self.at.get()
    }
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at.set(self.at.get() + n as u64);
        Ok(n)
    }
}

impl Seek for Tracked {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = match pos {
            // Within the buffer where it can: the walk skips small values often.
            SeekFrom::Current(n) => {
                self.inner.seek_relative(n)?;
                self.at.get().saturating_add_signed(n)
            }
            other => self.inner.seek(other)?,
        };
        self.at.set(at);
        Ok(at)
    }
}
