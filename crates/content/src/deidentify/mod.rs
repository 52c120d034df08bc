//! DICOM de-identification on this machine, before any byte of a DICOM file leaves it.
//!
//! The platform's own client de-identifies DICOM with the `grand-challenge-dicom-de-identifier` package
//! and the procedure of `grand-challenge-dicom-de-id-procedure`; a hot folder fed by scanners must do at
//! least as much. This module applies that same procedure (shipped as `procedure.json`, Apache-2.0, see
//! `PROCEDURE-LICENSE.md`) with the same semantics: a table of actions per SOP class and per tag
//! (X remove, K keep, Z blank or dummy, D dummy, U new UID, R reject), the same dummy value per VR, and
//! Patient Identity Removed / De-identification Method set afterwards. A file of an SOP class the
//! procedure does not list is refused.
//!
//! Two deliberate differences: new UIDs are not random but derived from the original UID and a secret
//! of the case ([`UidMap`]), so a delivery resumed after a crash produces the very same bytes it had
//! started to upload, and every file of a case maps a UID alike; and the file meta group is written
//! afresh (Media Storage SOP Instance UID follows the new SOP Instance UID, no AE titles of the sender).
//!
//! The decisions ([`deidentify_dataset`]) are pure and work on an in-memory data set; the file
//! function ([`deidentify_file`]) first walks the file's element headers ([`scan`]: a damaged length
//! is refused before any parser allocates for it), then reads the header up to the pixel data,
//! de-identifies it and streams the pixel data across: native pixel data straight from the file in
//! 64 KiB chunks, encapsulated pixel data fragment by fragment. Memory does not grow with the size of
//! an image.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dicom_core::header::Header;
use dicom_core::value::{C, PrimitiveValue, Value};
use dicom_core::{DataElement, DataElementHeader, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntax;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::collector::DicomCollector;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::{DataSetWriter, DataToken, IntoTokens, LazyDataToken};
use dicom_parser::stateful::decode::StatefulDecode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use sha2::{Digest, Sha256};

mod error;
mod identifiers;
mod layout;
mod scan;
pub mod sniff;
mod un;
pub use error::DeidError;
use error::{tag_key, trimmed, unreadable};
pub use identifiers::{IdentifierKind, Leaving, PatientIdentifiers, looks_like, title_warnings};
use scan::PixelData;

/// The procedure as shipped: byte for byte the file of `grand-challenge-dicom-de-id-procedure`.
pub const PROCEDURE_JSON: &str = include_str!("procedure.json");

/// The platform's root for the UIDs it hands out; every new UID starts with it.
pub const ROOT_UID: &str = "1.2.826.0.1.3680043.10.1666.";

/// What the procedure says to do with one data element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// X: remove the element.
    Remove,
    /// K: keep it (and apply the table to the items of a sequence).
    Keep,
    /// D: replace the value by the dummy of its VR (every element of a sequence, recursively).
    Dummy,
    /// Z: blank text values, dummy the others (every element of a sequence, recursively).
    Blank,
    /// U: replace the UID by a new one under [`ROOT_UID`], the same for the same original in a case.
    Uid,
    /// R: refuse the whole file.
    Reject,
}

impl Action {
    fn parse(s: &str) -> Result<Action, String> {
        Ok(match s {
            "X" => Action::Remove,
            "K" => Action::Keep,
            "D" => Action::Dummy,
            "Z" => Action::Blank,
            "U" => Action::Uid,
            "R" => Action::Reject,
            other => return Err(format!("unknown action {other:?}")),
        })
    }
}

/// An action with the procedure's reason for it (quoted when a file is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub justification: String,
}

/// The rules for one SOP class.
#[derive(Debug, Clone)]
pub struct SopClassRules {
    pub default: Rule,
    pub tags: HashMap<Tag, Rule>,
}

/// A parsed de-identification procedure.
#[derive(Debug, Clone)]
pub struct Procedure {
    /// The procedure's own version (recorded in every file and in receipts).
    pub version: String,
    /// For an SOP class the procedure does not list: only reject and keep exist.
    pub default: Rule,
    pub sop_classes: HashMap<String, SopClassRules>,
}

#[derive(serde::Deserialize)]
struct RawRule {
    default: String,
    #[serde(default)]
    justification: String,
}

#[derive(serde::Deserialize)]
struct RawSopClass {
    #[serde(default = "remove")]
    default: String,
    #[serde(default)]
    justification: String,
    #[serde(default)]
    tag: HashMap<String, RawRule>,
}

fn remove() -> String {
    "X".into()
}

fn reject() -> String {
    "R".into()
}

#[derive(serde::Deserialize)]
struct RawProcedure {
    #[serde(default = "reject")]
    default: String,
    #[serde(default)]
    justification: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(rename = "sopClass")]
    sop_class: HashMap<String, RawSopClass>,
}

/// `(GGGG,EEEE)` in hexadecimal, as the procedure writes tags. Keys with `XX` (repeating groups) match
/// no tag, exactly as in the reference implementation.
fn parse_tag(key: &str) -> Option<Tag> {
    let inner = key.strip_prefix('(')?.strip_suffix(')')?;
    let (g, e) = inner.split_once(',')?;
    Some(Tag(
        u16::from_str_radix(g, 16).ok()?,
        u16::from_str_radix(e, 16).ok()?,
    ))
}

impl Procedure {
    pub fn parse(json: &str) -> Result<Procedure, String> {
        let raw: RawProcedure =
            serde_json::from_str(json).map_err(|e| format!("procedure: {e}"))?;
        let default = Rule {
            action: Action::parse(&raw.default)?,
            justification: raw.justification.unwrap_or_default(),
        };
        if !matches!(default.action, Action::Reject | Action::Keep) {
            return Err(format!(
                "procedure: default action {} is neither reject nor keep",
                raw.default
            ));
        }
        let mut sop_classes = HashMap::new();
        for (uid, sc) in raw.sop_class {
            let mut tags = HashMap::new();
            for (key, r) in sc.tag {
                let rule = Rule {
                    action: Action::parse(&r.default)?,
                    justification: r.justification,
                };
                if let Some(tag) = parse_tag(&key) {
                    tags.insert(tag, rule);
                }
            }
            let default = Rule {
                action: Action::parse(&sc.default)?,
                justification: sc.justification,
            };
            sop_classes.insert(uid, SopClassRules { default, tags });
        }
        Ok(Procedure {
            version: raw.version.unwrap_or_else(|| "unknown".into()),
            default,
            sop_classes,
        })
    }

    /// The procedure shipped with this program.
    pub fn builtin() -> Result<&'static Procedure, String> {
        static BUILTIN: OnceLock<Result<Procedure, String>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Procedure::parse(PROCEDURE_JSON))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Why the procedure refuses every file of this SOP class, or `None` when it takes them (it lists
    /// the class, or its default keeps what it does not list). The platform de-identifies a DICOM image
    /// set with this procedure, so a refused class fails there as it fails here.
    pub fn refusal(&self, sop_class: &str) -> Option<String> {
        if self.sop_classes.contains_key(sop_class) || self.default.action == Action::Keep {
            return None;
        }
        Some(if self.default.justification.is_empty() {
            format!("SOP Class {sop_class} is not supported")
        } else {
            format!("{} ({sop_class})", self.default.justification)
        })
    }

    /// The SOP classes the procedure lists, sorted.
    pub fn supported_sop_classes(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.sop_classes.keys().map(String::as_str).collect();
        all.sort_unstable();
        all
    }

    /// The text written into De-identification Method (0012,0063).
    pub fn method(&self) -> String {
        format!(
            "grand-challenge-dicom-de-identifier:procedure:{}",
            self.version
        )
    }
}

/// Maps original UIDs to new ones under [`ROOT_UID`]: the same original gives the same new UID for the
/// same secret, so every file of a case (and every attempt at delivering it) agrees, while without the
/// secret the original cannot be found by trying candidates.
#[derive(Clone)]
pub struct UidMap {
    secret: [u8; 32],
}

impl std::fmt::Debug for UidMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UidMap(..)")
    }
}

impl UidMap {
    pub fn new(secret: [u8; 32]) -> UidMap {
        UidMap { secret }
    }

    /// A fresh random secret.
    pub fn random() -> UidMap {
        UidMap::new(rand::random())
    }

    pub fn secret_hex(&self) -> String {
        hex::encode(self.secret)
    }

    pub fn from_hex(s: &str) -> Option<UidMap> {
        let bytes = hex::decode(s).ok()?;
        Some(UidMap::new(bytes.try_into().ok()?))
    }

    pub fn map(&self, uid: &str) -> String {
        let digest = Sha256::new()
            .chain_update(self.secret)
            .chain_update(uid.as_bytes())
            .finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        // A UID is at most 64 characters: the root leaves room for 36 digits.
        let n = u128::from_be_bytes(first) % 10u128.pow(36);
        format!("{ROOT_UID}{n}")
    }
}

/// The dummy value of a VR, as the reference implementation has it.
fn dummy(vr: VR) -> PrimitiveValue {
    let s = |v: &str| PrimitiveValue::from(v);
    match vr {
        VR::AE => s("DUMMY_AE"),
        VR::AS => s("030Y"),
        VR::AT => PrimitiveValue::Tags(C::from_elem(Tag(0, 0), 1)),
        VR::CS => s("DUMMY"),
        VR::DA => s("20000101"),
        VR::DS => s("0.0"),
        VR::DT => s("20000101120000.000000"),
        VR::FL => PrimitiveValue::F32(C::from_elem(0.0, 1)),
        VR::FD => PrimitiveValue::F64(C::from_elem(0.0, 1)),
        VR::IS => s("0"),
        VR::LO => s("DUMMY_LONG_STRING"),
        VR::LT => s("DUMMY LONG TEXT"),
        VR::OB | VR::UN => PrimitiveValue::U8(C::from_elem(0, 1)),
        VR::OD | VR::OV => PrimitiveValue::U8(C::from_elem(0, 8)),
        VR::OF | VR::OL => PrimitiveValue::U8(C::from_elem(0, 4)),
        VR::OW => PrimitiveValue::U8(C::from_elem(0, 2)),
        VR::PN => s("DUMMY^PATIENT^^^"),
        VR::SH => s("DUMMY"),
        VR::SL => PrimitiveValue::I32(C::from_elem(0, 1)),
        VR::SS => PrimitiveValue::I16(C::from_elem(0, 1)),
        VR::ST => s("DUMMY SHORT TEXT"),
        VR::SV => PrimitiveValue::I64(C::from_elem(0, 1)),
        VR::TM => s("120000.000000"),
        VR::UC => s("DUMMY UNLIMITED CHARACTERS"),
        VR::UI => s("1.2.3.4.5.6.7.8.9.0.1.2.3.4.5.6.7.8.9.0"),
        VR::UL => PrimitiveValue::U32(C::from_elem(0, 1)),
        VR::UR => s("http://dummy.example.test"),
        VR::US => PrimitiveValue::U16(C::from_elem(0, 1)),
        VR::UT => s("DUMMY UNLIMITED TEXT"),
        VR::UV => PrimitiveValue::U64(C::from_elem(0, 1)),
        VR::SQ => PrimitiveValue::Empty,
    }
}

/// Text VRs that action Z empties rather than filling with a dummy.
fn blanked(vr: VR) -> bool {
    matches!(
        vr,
        VR::CS | VR::LO | VR::LT | VR::SH | VR::ST | VR::UC | VR::UT
    )
}

/// The SOP Class UID of a data set.
pub fn sop_class_of(obj: &InMemDicomObject) -> Option<String> {
    let e = obj.get(tags::SOP_CLASS_UID)?;
    e.to_str().ok().map(|s| trimmed(&s).to_owned())
}

/// De-identify a data set in place (no file meta group). Returns the rules' verdict: `Err` with the
/// procedure's justification when the file must be refused.
pub fn deidentify_dataset(
    procedure: &Procedure,
    uids: &UidMap,
    obj: &mut InMemDicomObject,
) -> Result<(), DeidError> {
    let sop_class = sop_class_of(obj)
        .ok_or_else(|| DeidError::Rejected("the file has no SOP Class UID (0008,0016)".into()))?;
    let keep_all;
    let rules = match procedure.sop_classes.get(&sop_class) {
        Some(r) => r,
        None if procedure.default.action == Action::Keep => {
            keep_all = SopClassRules {
                default: procedure.default.clone(),
                tags: HashMap::new(),
            };
            &keep_all
        }
        None => {
            let why = procedure
                .refusal(&sop_class)
                .unwrap_or_else(|| format!("SOP Class {sop_class} is not supported"));
            return Err(DeidError::Rejected(why));
        }
    };
    apply(obj, &rules.tags, &rules.default, uids)?;

    let method = procedure.method();
    let methods = match obj.get(tags::DEIDENTIFICATION_METHOD) {
        Some(e) => {
            let mut m: Vec<String> = e
                .to_multi_str()
                .map(|v| v.iter().map(|s| trimmed(s).to_owned()).collect())
                .unwrap_or_default();
            m.push(method);
            m
        }
        None => vec![method],
    };
    obj.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD,
        VR::LO,
        PrimitiveValue::Strs(methods.into_iter().collect()),
    ));
    obj.put(DataElement::new(
        tags::PATIENT_IDENTITY_REMOVED,
        VR::CS,
        PrimitiveValue::from("YES"),
    ));
    Ok(())
}

type Element = dicom_object::mem::InMemElement;

fn apply(
    obj: &mut InMemDicomObject,
    table: &HashMap<Tag, Rule>,
    default: &Rule,
    uids: &UidMap,
) -> Result<(), DeidError> {
    let tags: Vec<Tag> = obj.tags().collect();
    for tag in tags {
        let Some(elem) = obj.take(tag) else { continue };
        let rule = table.get(&tag).unwrap_or(default);
        if let Some(kept) = apply_element(elem, rule, table, default, uids)? {
            obj.put(kept);
        }
    }
    Ok(())
}

fn apply_element(
    mut elem: Element,
    rule: &Rule,
    table: &HashMap<Tag, Rule>,
    default: &Rule,
    uids: &UidMap,
) -> Result<Option<Element>, DeidError> {
    let vr = elem.vr();
    Ok(match rule.action {
        Action::Remove => None,
        Action::Reject => {
            return Err(DeidError::Rejected(format!(
                "element {}: {}",
                tag_key(elem.tag()),
                rule.justification
            )));
        }
        Action::Keep => {
            if let Some(items) = elem.items_mut() {
                for item in items.iter_mut() {
                    apply(item, table, default, uids)?;
                }
            }
            Some(elem)
        }
        Action::Dummy | Action::Blank if vr == VR::SQ => {
            // Everything below a replaced sequence is replaced alike, whatever the table says.
            let inner = Rule {
                action: rule.action,
                justification: "Parent sequence was replaced".into(),
            };
            if let Some(items) = elem.items_mut() {
                for item in items.iter_mut() {
                    apply(item, &HashMap::new(), &inner, uids)?;
                }
            }
            Some(elem)
        }
        Action::Blank if blanked(vr) => {
            Some(DataElement::new(elem.tag(), vr, PrimitiveValue::Empty))
        }
        Action::Dummy | Action::Blank => Some(DataElement::new(elem.tag(), vr, dummy(vr))),
        Action::Uid => {
            let values: Vec<String> = match elem.value() {
                Value::Primitive(p) => p
                    .to_multi_str()
                    .iter()
                    .map(|s| uids.map(trimmed(s)))
                    .collect(),
                _ => return Ok(Some(elem)),
            };
            // An empty UID gets a new UID too, as in the reference implementation.
            let values = if values.is_empty() {
                vec![uids.map("")]
            } else {
                values
            };
            Some(DataElement::new(
                elem.tag(),
                vr,
                PrimitiveValue::Strs(values.into_iter().collect()),
            ))
        }
    })
}

fn io_write(e: impl std::fmt::Display) -> DeidError {
    DeidError::Unreadable(format!("cannot write the de-identified copy: {e}"))
}

/// What [`deidentify_file`] wrote, and what it read that the caller may need to warn about.
#[derive(Clone, PartialEq, Eq)]
pub struct Written {
    /// SHA-256 (hex) of the de-identified copy: what is sent.
    pub sha256: String,
    pub size: u64,
    /// The patient identifiers of the original (to warn about titles that repeat them).
    pub identifiers: PatientIdentifiers,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let s = e.to_str().ok()?;
    let t = trimmed(&s);
    (!t.is_empty()).then(|| t.to_owned())
}

/// Read `src`, de-identify it and write the result to `dst` (created or truncated; the caller decides
/// where). `src` may be stored in any way [`sniff`] recognises as DICOM; the copy is always a Part 10
/// file in the transfer syntax of the original (a deflated data set is deflated again). The pixel data
/// is copied as it is, fragment by fragment. The output depends only on the input and the UID map: the
/// same file de-identified twice gives the same bytes.
pub fn deidentify_file(
    procedure: &Procedure,
    uids: &UidMap,
    src: &Path,
    dst: &Path,
) -> Result<Written, DeidError> {
    let layout = open(src, &work_file(dst))?;
    let pixel_data = scan::scan(&layout)?;
    let mut header = read_header(&layout)?;
    let keep_pixels = {
        let sop_class = sop_class_of(&header);
        let rules = sop_class
            .as_deref()
            .and_then(|c| procedure.sop_classes.get(c));
        rules.map_or(procedure.default.action, |r| {
            r.tags.get(&tags::PIXEL_DATA).unwrap_or(&r.default).action
        })
    };
    // Native pixel data of more than 8 bits a sample is OW, else OB (what the file had in explicit VR).
    let native_vr = match header.get(tags::BITS_ALLOCATED).map(|e| e.to_int::<u16>()) {
        Some(Ok(bits)) if bits > 8 => VR::OW,
        _ => VR::OB,
    };
    let identifiers = PatientIdentifiers::of(&header);
    deidentify_dataset(procedure, uids, &mut header)?;
    if keep_pixels == Action::Reject {
        return Err(DeidError::Rejected("pixel data".into()));
    }
    let pixels = Pixels {
        from: &layout.path,
        data: if keep_pixels == Action::Keep {
            pixel_data
        } else {
            PixelData::Absent
        },
        native_vr,
    };
    let (sha256, size) = write_copy(&layout, header, &pixels, dst)?;
    Ok(Written {
        sha256,
        size,
        identifiers,
    })
}

/// Where the data set of a DICOM file is, however the file is stored; `NotDicom` when it is not DICOM.
fn open(src: &Path, work: &Path) -> Result<layout::Layout, DeidError> {
    let (head, len) = sniff::head(src, sniff::HEAD).map_err(unreadable)?;
    let sniff::Content::Dicom(start) = sniff::sniff(&head, len) else {
        return Err(DeidError::NotDicom);
    };
    layout::layout(src, start, work)
}

/// The work file for a deflated data set of the copy `dst`: beside it, removed after use.
fn work_file(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".inflated");
    dst.with_file_name(name)
}

/// The data set up to the pixel data, its standard elements stored as UN read as what they are.
fn read_header(layout: &layout::Layout) -> Result<InMemDicomObject, DeidError> {
    let mut file = File::open(&layout.path).map_err(unreadable)?;
    file.seek(SeekFrom::Start(layout.data))
        .map_err(unreadable)?;
    // The collector reads the header only: a buffer of one chunk, so that it does not read far ahead
    // into the pixel data, which the copy reads again from its own offset.
    let mut collector = DicomCollector::new_with_ts(
        BufReader::with_capacity(CHUNK, file),
        layout.read_ts.clone(),
    );
    let mut header = InMemDicomObject::new_empty();
    collector
        .read_dataset_up_to_pixeldata(&mut header)
        .map_err(unreadable)?;
    un::resolve(&mut header)?;
    Ok(header)
}

/// The pixel data the copy takes over, and where from.
struct Pixels<'a> {
    from: &'a Path,
    data: PixelData,
    native_vr: VR,
}

/// Write the copy: preamble, a fresh file meta group, the de-identified header and the pixel data,
/// deflated where the original was. Returns the copy's SHA-256 and size.
fn write_copy(
    layout: &layout::Layout,
    header: InMemDicomObject,
    pixels: &Pixels<'_>,
    dst: &Path,
) -> Result<(String, u64), DeidError> {
    let sop_instance = header
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok().map(|s| trimmed(&s).to_owned()))
        .unwrap_or_default();
    let sop_class = sop_class_of(&header).unwrap_or_default();
    let new_meta = FileMetaTableBuilder::new()
        .transfer_syntax(layout.file_ts.as_str())
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION)
        .build()
        .map_err(io_write)?;
    let ts = TransferSyntaxRegistry.get(&layout.read_ts).ok_or_else(|| {
        DeidError::Unreadable(format!("unknown transfer syntax {}", layout.read_ts))
    })?;

    let out = File::create(dst).map_err(io_write)?;
    let mut out = Hashing {
        inner: BufWriter::with_capacity(1 << 20, out),
        hash: Sha256::new(),
        size: 0,
    };
    out.write_all(&[0u8; 128]).map_err(io_write)?;
    out.write_all(b"DICM").map_err(io_write)?;
    new_meta.write(&mut out).map_err(io_write)?;
    if layout.deflated() {
        let mut deflated =
            flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::default());
        write_data_set(&mut deflated, ts, header, pixels)?;
        deflated.finish().map_err(io_write)?;
    } else {
        write_data_set(&mut out, ts, header, pixels)?;
    }
    out.flush().map_err(io_write)?;
    Ok((hex::encode(out.hash.finalize()), out.size))
}

/// The data set in transfer syntax `ts`: the header as tokens, then the pixel data streamed from the
/// original.
fn write_data_set<W: Write>(
    out: &mut W,
    ts: &TransferSyntax,
    header: InMemDicomObject,
    pixels: &Pixels<'_>,
) -> Result<(), DeidError> {
    let mut writer = DataSetWriter::with_ts(&mut *out, ts).map_err(io_write)?;
    writer
        .write_sequence(header.into_tokens())
        .map_err(io_write)?;
    if let PixelData::Encapsulated { offset } = pixels.data {
        copy_fragments(pixels.from, offset, ts, &mut writer)?;
    }
    writer.flush().map_err(io_write)?;
    drop(writer);
    if let PixelData::Native { offset, len } = pixels.data {
        // The copy is written in the transfer syntax of the original (its file meta group says so),
        // so the value's bytes go across as they are, whatever the byte order.
        let encoder = ts
            .encoder_for::<W>()
            .ok_or_else(|| io_write(format!("no encoder for transfer syntax {}", ts.uid())))?;
        // Padded to even length as DICOM requires (and as dicom-rs writes any value).
        let header = DataElementHeader::new(
            tags::PIXEL_DATA,
            pixels.native_vr,
            Length(len.saturating_add(1) & !1),
        );
        encoder
            .encode_element_header(&mut *out, header)
            .map_err(io_write)?;
        copy_native(pixels.from, offset, len, out)?;
        if len % 2 == 1 {
            out.write_all(&[0]).map_err(io_write)?;
        }
    }
    Ok(())
}

/// The patient identifiers of a DICOM file (however stored), read from its header only (for `check`,
/// which must not read whole series); `None` for a file that is not DICOM or cannot be read.
pub fn patient_identifiers(path: &Path) -> Option<PatientIdentifiers> {
    let work = std::env::temp_dir().join(format!("gc-hotfolder-{}.inflated", uuid::Uuid::new_v4()));
    let layout = open(path, &work).ok()?;
    scan::scan(&layout).ok()?;
    let header = read_header(&layout).ok()?;
    Some(PatientIdentifiers::of(&header))
}

/// Our implementation class in the file meta group of every de-identified copy (under the 2.25 root,
/// derived from a fixed UUID).
const IMPLEMENTATION_CLASS_UID: &str = "2.25.203516286392371233935186391779446862597";
const IMPLEMENTATION_VERSION: &str = "GCHOTFOLDER";

/// Native pixel data is copied in chunks of this size: memory stays flat whatever the image's size.
const CHUNK: usize = 64 << 10;

/// Copy `len` bytes of native pixel data starting `offset` bytes into `src`.
fn copy_native(src: &Path, offset: u64, len: u32, out: &mut impl Write) -> Result<(), DeidError> {
    let mut file = File::open(src).map_err(unreadable)?;
    file.seek(SeekFrom::Start(offset)).map_err(unreadable)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut copied: u64 = 0;
    while copied < u64::from(len) {
        let want = (u64::from(len) - copied).min(CHUNK as u64) as usize;
        let n = match file.read(&mut chunk[..want]) {
            Ok(0) => {
                // The walk saw the bytes; the file shrank since.
                return Err(DeidError::Unreadable(format!(
                    "cannot read it as DICOM: the pixel data is cut short ({copied} of {len} bytes)"
                )));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
        };
        out.write_all(&chunk[..n]).map_err(io_write)?;
        copied += n as u64;
    }
    Ok(())
}

/// Copy encapsulated pixel data (the basic offset table, then the fragments) one item at a time, from
/// its element `offset` bytes into `src` to the end of its sequence, and not a byte further.
fn copy_fragments<W, E>(
    src: &Path,
    offset: u64,
    ts: &TransferSyntax,
    writer: &mut DataSetWriter<W, E>,
) -> Result<(), DeidError>
where
    W: Write,
    E: dicom_encoding::encode::EncodeTo<W>,
{
    let mut file = BufReader::with_capacity(CHUNK, File::open(src).map_err(unreadable)?);
    file.seek(SeekFrom::Start(offset)).map_err(unreadable)?;
    let mut tokens = LazyDataSetReader::new_with_ts(file, ts).map_err(unreadable)?;
    let mut write = |token| writer.write(token).map_err(io_write);
    let (mut started, mut len, mut buf) = (false, 0, Vec::new());
    while let Some(token) = tokens.advance() {
        match token.map_err(unreadable)? {
            LazyDataToken::PixelSequenceStart => {}
            LazyDataToken::ItemStart { len: item } => {
                len = item.0;
                buf.clear();
            }
            LazyDataToken::LazyItemValue { len, decoder } => {
                // A short read is not an error of the reader: the length tells a cut file.
                decoder.read_to_vec(len, &mut buf).map_err(unreadable)?;
                if buf.len() != len as usize {
                    return Err(DeidError::Unreadable(format!(
                        "cannot read it as DICOM: the pixel data is cut short ({} of {len} bytes)",
                        buf.len()
                    )));
                }
            }
            LazyDataToken::ItemEnd => {
                // Pixel data without even an offset table item is left out, as it always was.
                if !started {
                    write(DataToken::PixelSequenceStart)?;
                    started = true;
                }
                write(DataToken::ItemStart { len: Length(len) })?;
                write(DataToken::ItemValue(std::mem::take(&mut buf)))?;
                write(DataToken::ItemEnd)?;
            }
            LazyDataToken::SequenceEnd => {
                if started {
                    write(DataToken::SequenceEnd)?;
                }
                return Ok(());
            }
            other => {
                return Err(DeidError::Unreadable(format!(
                    "cannot read it as DICOM: unexpected {:?} in the pixel data",
                    other.into_repr()
                )));
            }
        }
    }
    Err(DeidError::Unreadable(
        "cannot read it as DICOM: the pixel data ends without its sequence delimiter".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_procedure_parses() {
        let p = Procedure::builtin().unwrap();
        assert_eq!(p.default.action, Action::Reject);
        assert!(p.sop_classes.contains_key("1.2.840.10008.5.1.4.1.1.2"));
        let ct = &p.sop_classes["1.2.840.10008.5.1.4.1.1.2"];
        assert_eq!(ct.tags[&tags::PATIENT_NAME].action, Action::Blank);
        assert_eq!(ct.tags[&tags::PIXEL_DATA].action, Action::Keep);
    }

    #[test]
    fn the_procedure_refuses_sop_classes_it_does_not_list() {
        let p = Procedure::builtin().unwrap();
        assert_eq!(p.refusal("1.2.840.10008.5.1.4.1.1.2"), None);
        assert_eq!(
            p.refusal("1.2.840.10008.5.1.4.1.1.7").as_deref(),
            Some("Unsupported SOP Class (1.2.840.10008.5.1.4.1.1.7)")
        );
        assert_eq!(
            p.supported_sop_classes(),
            [
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.840.10008.5.1.4.1.1.4",
                "1.2.840.10008.5.1.4.1.1.77.1.6"
            ]
        );
        let keep_all = Procedure::parse(r#"{"default": "K", "sopClass": {}}"#).unwrap();
        assert_eq!(keep_all.refusal("1.2.3"), None);
    }

    #[test]
    fn uids_map_consistently_under_the_root_and_fit_64_characters() {
        let m = UidMap::new([7; 32]);
        let a = m.map("1.2.3.4");
        assert_eq!(a, m.map("1.2.3.4"));
        assert_ne!(a, m.map("1.2.3.5"));
        assert_ne!(a, UidMap::new([8; 32]).map("1.2.3.4"));
        assert!(a.starts_with(ROOT_UID) && a.len() <= 64, "{a}");
        assert_eq!(
            UidMap::from_hex(&m.secret_hex()).unwrap().map("x"),
            m.map("x")
        );
    }
}
