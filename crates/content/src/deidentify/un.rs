//! Standard elements stored with VR UN, read as what they are.
//!
//! A file that went through a system that did not know an attribute (some PACS do this on a round
//! trip) may carry it as UN, its value as raw bytes. PS3.5 6.2.2 says a reader that knows the tag
//! uses the dictionary's VR, with the value encoded in implicit VR little endian. Without this, the
//! SOP Class UID itself can arrive as UN and be taken for bytes, and a name stored as UN would be
//! handled by the procedure as a blob. What this module cannot resolve stays UN, which the procedure
//! treats like any other element of its tag.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::value::{C, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::error::{DeidError, tag_key};

/// Replace every UN element of a known standard tag by the element it encodes, in `obj` and in the
/// items of its sequences.
pub(super) fn resolve(obj: &mut InMemDicomObject) -> Result<(), DeidError> {
    let tags: Vec<Tag> = obj.tags().collect();
    for tag in tags {
        let Some(mut elem) = obj.take(tag) else {
            continue;
        };
        if elem.vr() == VR::UN
            && let Some(vr) = dictionary_vr(tag)
            && let Value::Primitive(p) = elem.value()
        {
            elem = decode(tag, vr, &p.to_bytes())?;
        }
        if let Some(items) = elem.items_mut() {
            for item in items.iter_mut() {
                resolve(item)?;
            }
        }
        obj.put(elem);
    }
    Ok(())
}

/// The VR the standard dictionary gives a tag, where it names one (a private or unknown tag: none).
fn dictionary_vr(tag: Tag) -> Option<VR> {
    if !tag.group().is_multiple_of(2) {
        return None;
    }
    let vr = match StandardDataDictionary.by_tag(tag)?.vr() {
        VirtualVr::Exact(VR::UN) => return None,
        VirtualVr::Exact(vr) => vr,
        VirtualVr::Xs => VR::US,
        // Overlay, pixel and LUT data: words.
        _ => VR::OW,
    };
    Some(vr)
}

/// The element that `bytes` (implicit VR little endian) encode for `tag` as `vr`.
fn decode(tag: Tag, vr: VR, bytes: &[u8]) -> Result<DataElement<InMemDicomObject>, DeidError> {
    if vr == VR::SQ {
        return sequence(tag, bytes);
    }
    let value = match vr {
        VR::US => PrimitiveValue::U16(numbers(bytes, u16::from_le_bytes)),
        VR::SS => PrimitiveValue::I16(numbers(bytes, i16::from_le_bytes)),
        VR::UL => PrimitiveValue::U32(numbers(bytes, u32::from_le_bytes)),
        VR::SL => PrimitiveValue::I32(numbers(bytes, i32::from_le_bytes)),
        VR::UV => PrimitiveValue::U64(numbers(bytes, u64::from_le_bytes)),
        VR::SV => PrimitiveValue::I64(numbers(bytes, i64::from_le_bytes)),
        VR::FL => PrimitiveValue::F32(numbers(bytes, f32::from_le_bytes)),
        VR::FD => PrimitiveValue::F64(numbers(bytes, f64::from_le_bytes)),
        VR::AT => PrimitiveValue::Tags(
            numbers(bytes, u32::from_le_bytes)
                .into_iter()
                .map(|v| Tag((v & 0xFFFF) as u16, (v >> 16) as u16))
                .collect(),
        ),
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
            PrimitiveValue::U8(bytes.iter().copied().collect())
        }
        // Text: single-valued where the VR allows backslashes in the value.
        VR::LT | VR::ST | VR::UT | VR::UR => PrimitiveValue::Str(text(bytes)),
        _ => PrimitiveValue::Strs(text(bytes).split('\\').map(str::to_owned).collect()),
    };
    Ok(DataElement::new(tag, vr, value))
}

/// Fixed-size numbers in little endian; a trailing partial one is dropped, as readers do.
fn numbers<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> C<T> {
    bytes
        .chunks_exact(N)
        .filter_map(|c| c.try_into().ok().map(from))
        .collect()
}

/// Text without DICOM's padding: UTF-8 where the bytes are (ASCII is), else Latin-1, the common
/// single-byte set.
fn text(bytes: &[u8]) -> String {
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    s.trim_end_matches(['\0', ' ']).to_owned()
}

/// A sequence stored as UN: its items in implicit VR little endian, parsed by reading the element
/// afresh with its real tag (the implicit reader takes SQ from the dictionary).
fn sequence(tag: Tag, bytes: &[u8]) -> Result<DataElement<InMemDicomObject>, DeidError> {
    let len = u32::try_from(bytes.len()).map_err(|_| too_long(tag))?;
    let mut encoded = Vec::with_capacity(bytes.len() + 8);
    encoded.extend_from_slice(&tag.group().to_le_bytes());
    encoded.extend_from_slice(&tag.element().to_le_bytes());
    encoded.extend_from_slice(&len.to_le_bytes());
    encoded.extend_from_slice(bytes);
    let ts = TransferSyntaxRegistry
        .get(dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| DeidError::Unreadable("no implicit VR little endian reader".into()))?;
    let mut parsed = InMemDicomObject::read_dataset_with_ts(encoded.as_slice(), ts).map_err(|e| {
        DeidError::Unreadable(format!(
            "cannot read it as DICOM: element {} is a sequence stored as UN that cannot be read: {e}",
            tag_key(tag)
        ))
    })?;
    let mut elem = parsed.take(tag).ok_or_else(|| too_long(tag))?;
    if let Some(items) = elem.items_mut() {
        for item in items.iter_mut() {
            resolve(item)?;
        }
    }
    Ok(elem)
}

fn too_long(tag: Tag) -> DeidError {
    DeidError::Unreadable(format!(
        "cannot read it as DICOM: element {} is a sequence stored as UN that cannot be read",
        tag_key(tag)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    fn un(tag: Tag, bytes: &[u8]) -> DataElement<InMemDicomObject> {
        DataElement::new(
            tag,
            VR::UN,
            PrimitiveValue::U8(bytes.iter().copied().collect()),
        )
    }

    #[test]
    fn standard_tags_stored_as_un_take_their_dictionary_vr() {
        let mut obj = InMemDicomObject::from_element_iter([
            un(tags::SOP_CLASS_UID, b"1.2.840.10008.5.1.4.1.1.2\0"),
            un(tags::PATIENT_NAME, b"DOE^JANE"),
            un(tags::ROWS, &512u16.to_le_bytes()),
            un(tags::IMAGE_TYPE, b"ORIGINAL\\PRIMARY "),
            un(Tag(0x0009, 0x1001), b"private stays UN"),
        ]);
        resolve(&mut obj).unwrap();
        let sop = obj.get(tags::SOP_CLASS_UID).unwrap();
        assert_eq!(sop.vr(), VR::UI);
        assert_eq!(sop.to_str().unwrap(), "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(obj.get(tags::PATIENT_NAME).unwrap().vr(), VR::PN);
        assert_eq!(obj.get(tags::ROWS).unwrap().to_int::<u16>().unwrap(), 512);
        let image_type = obj.get(tags::IMAGE_TYPE).unwrap().to_multi_str().unwrap();
        assert_eq!(image_type.as_ref(), ["ORIGINAL", "PRIMARY"]);
        assert_eq!(obj.get(Tag(0x0009, 0x1001)).unwrap().vr(), VR::UN);
    }

    #[test]
    fn a_sequence_stored_as_un_is_read_as_items() {
        // One item (defined length) holding Referenced SOP Instance UID, implicit VR little endian.
        let uid = b"1.2.3.4\0";
        let mut inner = Vec::new();
        inner.extend_from_slice(&0x0008u16.to_le_bytes());
        inner.extend_from_slice(&0x1155u16.to_le_bytes());
        inner.extend_from_slice(&(uid.len() as u32).to_le_bytes());
        inner.extend_from_slice(uid);
        let mut item = Vec::new();
        item.extend_from_slice(&0xFFFEu16.to_le_bytes());
        item.extend_from_slice(&0xE000u16.to_le_bytes());
        item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        item.extend_from_slice(&inner);
        let mut obj =
            InMemDicomObject::from_element_iter([un(tags::REFERENCED_IMAGE_SEQUENCE, &item)]);
        resolve(&mut obj).unwrap();
        let seq = obj.get(tags::REFERENCED_IMAGE_SEQUENCE).unwrap();
        assert_eq!(seq.vr(), VR::SQ);
        let items = seq.items().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0]
                .get(tags::REFERENCED_SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap(),
            "1.2.3.4"
        );
    }
}
