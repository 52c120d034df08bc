//! DICOM de-identification against the reference: a generated corpus (CT series, MR, a whole-slide
//! multi-frame image with encapsulated pixel data, an SOP class the procedure rejects; private tags and
//! nested sequences throughout) is de-identified by our module and by the Python de-identifier the
//! platform's client uses, and the results must agree tag by tag. UIDs are compared by the consistency
//! of the mapping (both sides are free to pick their new UIDs under the platform's root).
//!
//! The Python comes from `GC_HOTFOLDER_DEID_PYTHON` or from a venv the test makes once (see
//! `python_support`); without one the test fails with an explanation, it is never skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{InMemDicomObject, open_file};
use gc_content::deidentify::{
    DeidError, PROCEDURE_JSON, Procedure, ROOT_UID, UidMap, deidentify_file,
};

fn python() -> PathBuf {
    gc_testkit::python::deidentifier(&gc_testkit::venvs!())
}

const PATIENT_NAME: &str = "DOE^JANE";
const PATIENT_ID: &str = "PID-4711";
const BIRTH_DATE: &str = "19610203";
const STUDY_UID: &str = "1.2.999.7.1";
const CT_SERIES_UID: &str = "1.2.999.7.2";
const FRAME_OF_REFERENCE: &str = "1.2.999.7.3";
const CT_CLASS: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.4";
const WSI_CLASS: &str = "1.2.840.10008.5.1.4.1.1.77.1.6";
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

fn el(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// The patient, study and equipment attributes every file of the corpus shares.
fn patient_and_study(
    sop_class: &str,
    sop_instance: &str,
    modality: &str,
) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        el(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
        el(tags::SOP_CLASS_UID, VR::UI, sop_class),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_instance),
        el(tags::STUDY_DATE, VR::DA, "20240511"),
        el(tags::STUDY_TIME, VR::TM, "093000"),
        el(tags::ACCESSION_NUMBER, VR::SH, "ACC123"),
        el(tags::MODALITY, VR::CS, modality),
        el(tags::MANUFACTURER, VR::LO, "ACME Imaging"),
        el(tags::INSTITUTION_NAME, VR::LO, "St. Example Hospital"),
        el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "WHO^DR"),
        el(tags::STATION_NAME, VR::SH, "CT-ROOM-2"),
        el(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
        el(tags::PATIENT_ID, VR::LO, PATIENT_ID),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, BIRTH_DATE),
        el(tags::PATIENT_SEX, VR::CS, "F"),
        el(tags::PATIENT_AGE, VR::AS, "063Y"),
        el(tags::STUDY_INSTANCE_UID, VR::UI, STUDY_UID),
        el(tags::STUDY_ID, VR::SH, "S1"),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, FRAME_OF_REFERENCE),
        el(tags::SERIES_DESCRIPTION, VR::LO, "Thorax for Jane Doe"),
        // An earlier tool's trace, kept and extended.
        el(
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            "site export filter v2",
        ),
        // A private block: creator and one value.
        el(Tag(0x0009, 0x0010), VR::LO, "ACME 1.0"),
        el(Tag(0x0009, 0x1001), VR::LO, "operator jane.doe"),
        el(Tag(0x0029, 0x0010), VR::LO, "OTHER VENDOR"),
        DataElement::new(
            Tag(0x0029, 0x1002),
            VR::OB,
            PrimitiveValue::from(vec![1u8, 2, 3, 4]),
        ),
    ]
}

fn pixel_module(rows: u16, cols: u16, bits: u16) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        us(tags::SAMPLES_PER_PIXEL, 1),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, rows),
        us(tags::COLUMNS, cols),
        us(tags::BITS_ALLOCATED, bits),
        us(tags::BITS_STORED, bits),
        us(tags::HIGH_BIT, bits - 1),
        us(tags::PIXEL_REPRESENTATION, 0),
    ]
}

/// The text of `tag` in `obj`, which must hold it.
fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().to_string()
}

fn write(path: &Path, obj: InMemDicomObject, ts: &str) {
    let (class, inst) = (
        text(&obj, tags::SOP_CLASS_UID),
        text(&obj, tags::SOP_INSTANCE_UID),
    );
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(inst)
                .source_application_entity_title("SCANNER_AE"),
        )
        .unwrap();
    file.write_to_file(path).unwrap();
}

/// The elements of an instance `sop` of `class` in the series `series` of the corpus's study, with its
/// pixel module of `rows` × `cols` pixels of `bits` bits (its pixel data still to add).
fn series_file(
    (class, sop, modality): (&str, &str, &str),
    (rows, cols, bits): (u16, u16, u16),
    series: &str,
) -> Vec<DataElement<InMemDicomObject>> {
    let mut e = patient_and_study(class, sop, modality);
    e.extend(pixel_module(rows, cols, bits));
    e.push(el(tags::SERIES_INSTANCE_UID, VR::UI, series));
    e
}

/// Pixel data of `bytes`, as OB.
fn pixel_bytes(bytes: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tags::PIXEL_DATA, VR::OB, bytes.into())
}

/// The corpus: file name → what it is. Fixed content, so runs compare alike.
fn write_corpus(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    // Each file written as `name` with the transfer syntax `ts`.
    let mut save = |name: &str, elements, ts| {
        let path = dir.join(name);
        write(&path, item(elements), ts);
        files.push(path);
    };
    // A CT series of three native 16-bit slices, the second and third referring to the first.
    for i in 1..=3u16 {
        let sop = format!("1.2.999.7.2.{i}");
        let mut e = series_file((CT_CLASS, &sop, "CT"), (8, 8, 16), CT_SERIES_UID);
        e.push(el(tags::INSTANCE_NUMBER, VR::IS, &i.to_string()));
        e.push(el(tags::SLICE_THICKNESS, VR::DS, "1.25"));
        e.push(el(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("0\\0\\{i}"),
        ));
        // A kept sequence holding a kept value, a removed nested sequence and a UID reference.
        e.push(seq(
            tags::CT_EXPOSURE_SEQUENCE,
            vec![item(vec![
                DataElement::new(
                    tags::EXPOSURE_TIME_INMS,
                    VR::FD,
                    PrimitiveValue::from(12.5f64),
                ),
                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.999.7.2.1"),
                el(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
                seq(
                    tags::REFERENCED_IMAGE_SEQUENCE,
                    vec![item(vec![el(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        "1.2.999.7.2.1",
                    )])],
                ),
                el(Tag(0x0009, 0x0010), VR::LO, "ACME 1.0"),
                el(Tag(0x0009, 0x1005), VR::SH, "nested private"),
            ])],
        ));
        e.push(seq(
            tags::REFERENCED_IMAGE_SEQUENCE,
            vec![item(vec![
                el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, CT_CLASS),
                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.999.7.2.1"),
            ])],
        ));
        let pixels: Vec<u16> = (0..64).map(|p| p * i).collect();
        e.push(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        save(&format!("ct-{i}.dcm"), e, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    }
    // An MR slice in implicit VR, another series of the same study, 8-bit.
    {
        let mut e = series_file((MR_CLASS, "1.2.999.7.4.1", "MR"), (4, 4, 8), "1.2.999.7.4");
        e.push(el(tags::ECHO_TIME, VR::DS, "4.2"));
        e.push(el(tags::OPERATORS_NAME, VR::PN, "OPERATOR^ONE"));
        e.push(seq(
            tags::PATIENT_SPECIES_CODE_SEQUENCE,
            vec![item(vec![
                el(tags::CODE_VALUE, VR::SH, "337915000"),
                el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SCT"),
                el(tags::CODE_MEANING, VR::LO, "Homo sapiens"),
            ])],
        ));
        e.push(pixel_bytes((0..16u8).collect::<Vec<_>>()));
        save("mr.dcm", e, uids::IMPLICIT_VR_LITTLE_ENDIAN);
    }
    // A whole-slide image: multi-frame, encapsulated (JPEG baseline syntax; the fragments are opaque),
    // with kept, blanked (Z) and nested functional-group sequences.
    {
        let mut e = series_file(
            (WSI_CLASS, "1.2.999.7.5.1", "SM"),
            (16, 16, 8),
            "1.2.999.7.5",
        );
        e.push(el(tags::NUMBER_OF_FRAMES, VR::IS, "3"));
        e.push(el(tags::CONTAINER_IDENTIFIER, VR::LO, "SLIDE-JD-01"));
        e.push(seq(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![item(vec![seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(vec![
                    el(tags::PIXEL_SPACING, VR::DS, "0.00025\\0.00025"),
                    el(tags::SLICE_THICKNESS, VR::DS, "0.004"),
                ])],
            )])],
        ));
        e.push(seq(
            tags::SPECIMEN_PREPARATION_SEQUENCE,
            vec![item(vec![
                el(tags::SPECIMEN_IDENTIFIER, VR::LO, "SPEC-JD"),
                seq(
                    tags::SPECIMEN_PREPARATION_STEP_CONTENT_ITEM_SEQUENCE,
                    vec![item(vec![
                        el(tags::VALUE_TYPE, VR::CS, "TEXT"),
                        el(tags::TEXT_VALUE, VR::UT, "stained by Jane's nurse"),
                        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.999.7.2.1"),
                        DataElement::new(
                            tags::OBSERVATION_DATE_TIME,
                            VR::DT,
                            PrimitiveValue::from("20240511093000"),
                        ),
                        us(Tag(0x0040, 0xA0B0), 7),
                    ])],
                ),
            ])],
        ));
        let fragments = vec![
            vec![0xFFu8, 0xD8, 1, 2, 3, 4, 0xFF, 0xD9],
            vec![0xFF, 0xD8, 5, 6, 0xFF, 0xD9],
            vec![0xFF, 0xD8, 7, 8, 9, 10, 11, 12, 0xFF, 0xD9],
        ];
        e.push(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
        ));
        save("slide.dcm", e, uids::JPEG_BASELINE8_BIT);
    }
    // A secondary capture: an SOP class the procedure does not support.
    {
        let capture = (SECONDARY_CAPTURE, "1.2.999.7.6.1", "OT");
        let mut e = series_file(capture, (2, 2, 8), "1.2.999.7.6");
        e.push(pixel_bytes(vec![1u8, 2, 3, 4]));
        save("capture.dcm", e, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    }
    files
}

/// UIDs paired between the two outputs: each side's UID must always meet the same partner.
#[derive(Default)]
struct UidPairs {
    ours_to_theirs: BTreeMap<String, String>,
    theirs_to_ours: BTreeMap<String, String>,
}

/// The partner `map` already holds for `uid`, if it is another than `partner` (else `partner` is
/// recorded as its partner).
fn other_partner(map: &mut BTreeMap<String, String>, uid: &str, partner: &str) -> Option<String> {
    let known = map.entry(uid.into()).or_insert_with(|| partner.into());
    (known != partner).then(|| known.clone())
}

impl UidPairs {
    fn pair(&mut self, at: &str, ours: &str, theirs: &str, diffs: &mut Vec<String>) {
        if let Some(a) = other_partner(&mut self.ours_to_theirs, ours, theirs) {
            diffs.push(format!(
                "{at}: our UID {ours} pairs with both {a} and {theirs}"
            ));
        }
        if let Some(b) = other_partner(&mut self.theirs_to_ours, theirs, ours) {
            diffs.push(format!(
                "{at}: their UID {theirs} pairs with both {b} and {ours}"
            ));
        }
        if ours.starts_with(ROOT_UID) != theirs.starts_with(ROOT_UID) {
            diffs.push(format!("{at}: {ours} and {theirs} disagree on the root"));
        }
    }
}

fn strings(v: &PrimitiveValue) -> Vec<String> {
    v.to_multi_str()
        .iter()
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .collect()
}

fn compare(
    ours: &InMemDicomObject,
    theirs: &InMemDicomObject,
    at: &str,
    pairs: &mut UidPairs,
    diffs: &mut Vec<String>,
) {
    let our_tags: Vec<Tag> = ours.tags().collect();
    let their_tags: Vec<Tag> = theirs.tags().collect();
    if our_tags != their_tags {
        diffs.push(format!(
            "{at}: tags differ:\n  ours   {our_tags:?}\n  theirs {their_tags:?}"
        ));
        return;
    }
    for tag in our_tags {
        let (a, b) = (ours.element(tag).unwrap(), theirs.element(tag).unwrap());
        let here = format!("{at}{tag}");
        if a.vr() != b.vr() {
            diffs.push(format!("{here}: VR {} vs {}", a.vr(), b.vr()));
            continue;
        }
        match (a.value(), b.value()) {
            (Value::Sequence(x), Value::Sequence(y)) => {
                if x.items().len() != y.items().len() {
                    diffs.push(format!(
                        "{here}: {} items vs {}",
                        x.items().len(),
                        y.items().len()
                    ));
                    continue;
                }
                for (i, (p, q)) in x.items().iter().zip(y.items()).enumerate() {
                    compare(p, q, &format!("{here}[{i}]"), pairs, diffs);
                }
            }
            (Value::PixelSequence(x), Value::PixelSequence(y)) => {
                if x.fragments() != y.fragments() {
                    diffs.push(format!("{here}: pixel fragments differ"));
                }
            }
            (Value::Primitive(x), Value::Primitive(y)) if a.vr() == VR::UI => {
                let (x, y) = (strings(x), strings(y));
                if x.len() != y.len() {
                    diffs.push(format!("{here}: {x:?} vs {y:?}"));
                }
                for (p, q) in x.iter().zip(&y) {
                    pairs.pair(&here, p, q, diffs);
                }
            }
            (Value::Primitive(x), Value::Primitive(y)) => {
                let same = match a.vr() {
                    VR::OB | VR::OW | VR::UN | VR::OD | VR::OF | VR::OL | VR::OV => {
                        x.to_bytes() == y.to_bytes()
                    }
                    VR::US
                    | VR::SS
                    | VR::UL
                    | VR::SL
                    | VR::FL
                    | VR::FD
                    | VR::UV
                    | VR::SV
                    | VR::AT => x == y,
                    _ => strings(x) == strings(y),
                };
                if !same {
                    diffs.push(format!("{here}: {x:?} vs {y:?}"));
                }
            }
            _ => diffs.push(format!("{here}: different kinds of value")),
        }
    }
}

fn text_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag).map(|e| {
        e.to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_string()
    })
}

/// De-identify `corpus` with the reference de-identifier (one instance: one case) into `out`: file
/// name → "ok" or "rejected: why".
fn reference(out: &Path, corpus: &[PathBuf]) -> BTreeMap<String, String> {
    let stdout = gc_testkit::python::run_ok(
        Command::new(python())
            .arg(gc_testkit::python::script("deidentify.py"))
            .arg(out)
            .args(corpus),
        "the reference de-identifier",
    );
    serde_json::from_slice(&stdout).unwrap()
}

/// The built-in procedure, and a fresh UID map (a new case's secret).
fn ours() -> (&'static Procedure, UidMap) {
    (Procedure::builtin().unwrap(), UidMap::random())
}

/// The corpus ([`write_corpus`]) in `in/` of a scratch folder.
fn scratch_corpus() -> (tempfile::TempDir, Vec<PathBuf>) {
    let scratch = tempfile::tempdir().unwrap();
    let corpus = write_corpus(&scratch.path().join("in"));
    (scratch, corpus)
}

/// Both de-identifiers set up over `corpus`, below `scratch`: the reference run, its verdict of each
/// file (see [`reference`]) and its copies in `py/`; and for ours an empty `rs/` and [`ours`].
fn both_sides(
    scratch: &Path,
    corpus: &[PathBuf],
) -> (
    BTreeMap<String, String>,
    PathBuf,
    PathBuf,
    (&'static Procedure, UidMap),
) {
    let out_py = scratch.join("py");
    let verdicts = reference(&out_py, corpus);
    let out_rs = scratch.join("rs");
    std::fs::create_dir_all(&out_rs).unwrap();
    (verdicts, out_py, out_rs, ours())
}

#[test]
fn agrees_with_the_reference_de_identifier_tag_by_tag() {
    let (scratch, corpus) = scratch_corpus();
    let (verdicts, out_py, out_rs, (procedure, uids)) = both_sides(scratch.path(), &corpus);
    let mut pairs = UidPairs::default();
    let mut diffs = Vec::new();
    let mut compared = 0;
    for src in &corpus {
        let name = src.file_name().unwrap().to_str().unwrap();
        let ours = deidentify_file(procedure, &uids, src, &out_rs.join(name));
        let theirs = &verdicts[name];
        match ours {
            Err(DeidError::Rejected(why)) => {
                assert!(
                    theirs.starts_with("rejected: "),
                    "{name}: we refused ({why}), the reference did not"
                );
                assert!(
                    why.contains("Unsupported SOP Class") && why.contains(SECONDARY_CAPTURE),
                    "{why}"
                );
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
            Ok(_) => assert_eq!(theirs, "ok", "{name}"),
        }
        let a = open_file(out_rs.join(name)).unwrap();
        let b = open_file(out_py.join(name)).unwrap();
        assert_eq!(
            a.meta().transfer_syntax(),
            b.meta().transfer_syntax(),
            "{name}"
        );
        // The file meta group names the new instance on both sides.
        pairs.pair(
            &format!("{name} meta"),
            a.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0'),
            b.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0'),
            &mut diffs,
        );
        compare(&a, &b, &format!("{name} "), &mut pairs, &mut diffs);
        compared += 1;
    }
    assert!(
        diffs.is_empty(),
        "differences from the reference:\n{}",
        diffs.join("\n")
    );
    assert_eq!(compared, 5, "CT ×3, MR, slide");

    // Beyond agreeing: what must hold whatever the reference does.
    let ct: Vec<_> = (1..=3)
        .map(|i| open_file(out_rs.join(format!("ct-{i}.dcm"))).unwrap())
        .collect();
    let series: Vec<_> = ct
        .iter()
        .map(|o| text_of(o, tags::SERIES_INSTANCE_UID).unwrap())
        .collect();
    assert!(
        series
            .iter()
            .all(|s| s == &series[0] && s.starts_with(ROOT_UID) && s != CT_SERIES_UID),
        "{series:?}"
    );
    let first = text_of(&ct[0], tags::SOP_INSTANCE_UID).unwrap();
    let referenced = ct[2]
        .element(tags::CT_EXPOSURE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .element(tags::REFERENCED_SOP_INSTANCE_UID)
        .map(|e| e.to_str().unwrap().trim_end_matches('\0').to_string())
        .unwrap();
    assert_eq!(
        referenced, first,
        "a reference follows the instance it names"
    );
    assert_eq!(
        ct[0]
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0'),
        first
    );
    assert_eq!(
        text_of(&ct[0], tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("YES")
    );
    let methods = ct[0]
        .element(tags::DEIDENTIFICATION_METHOD)
        .unwrap()
        .to_multi_str()
        .unwrap()
        .to_vec();
    assert_eq!(methods.len(), 2, "{methods:?}");
    assert!(methods[1].contains(&procedure.version), "{methods:?}");
    for entry in std::fs::read_dir(&out_rs).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for secret in [
            PATIENT_NAME,
            PATIENT_ID,
            BIRTH_DATE,
            "Jane",
            "SCANNER_AE",
            "jane.doe",
            STUDY_UID,
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is still in a de-identified file"
            );
        }
    }
}

#[test]
fn the_shipped_procedure_is_the_packages_file_byte_for_byte() {
    let python = python();
    let stdout = gc_testkit::python::run_ok(
        Command::new(&python).args([
            "-c",
            "import grand_challenge_dicom_de_id_procedure as p; print(p.script_dir / 'procedure.json')",
        ]),
        "finding the procedure package",
    );
    let path = String::from_utf8(stdout).unwrap();
    let theirs = std::fs::read(path.trim()).unwrap();
    assert!(
        theirs == PROCEDURE_JSON.as_bytes(),
        "src/deidentify/procedure.json differs from the package's"
    );
    let license = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/deidentify/PROCEDURE-LICENSE.md");
    assert!(
        std::fs::read_to_string(license)
            .unwrap()
            .contains("Apache License")
    );
}

#[test]
fn bad_input_is_refused_with_the_cause() {
    let (scratch, corpus) = scratch_corpus();
    let (procedure, uids) = ours();
    let dst = scratch.path().join("out.dcm");

    let text = scratch.path().join("notes.dcm");
    std::fs::write(&text, "this is a text file named like DICOM\n".repeat(10)).unwrap();
    assert_eq!(
        deidentify_file(procedure, &uids, &text, &dst),
        Err(DeidError::NotDicom)
    );

    let whole = std::fs::read(&corpus[0]).unwrap();
    for (what, cut) in [
        ("in the pixel data", whole.len() - 20),
        ("in the header", 400),
    ] {
        let truncated = scratch.path().join("truncated.dcm");
        std::fs::write(&truncated, &whole[..cut]).unwrap();
        match deidentify_file(procedure, &uids, &truncated, &dst) {
            Err(DeidError::Unreadable(why)) => {
                assert!(why.contains("cannot read"), "{what}: {why}")
            }
            other => panic!("a file cut {what} gave {other:?}"),
        }
    }
}

/// A delivery resumed after a crash makes its copies again: they must be the very bytes it had started
/// to upload. The copies depend only on the file and the case's secret.
#[test]
fn the_same_file_and_secret_give_the_same_bytes() {
    let (scratch, corpus) = scratch_corpus();
    let (procedure, uids) = ours();
    let again = UidMap::from_hex(&uids.secret_hex()).unwrap();
    for src in corpus.iter().filter(|p| !p.ends_with("capture.dcm")) {
        let (a, b, c) = (
            scratch.path().join("a.dcm"),
            scratch.path().join("b.dcm"),
            scratch.path().join("c.dcm"),
        );
        let first = deidentify_file(procedure, &uids, src, &a).unwrap();
        let second = deidentify_file(procedure, &again, src, &b).unwrap();
        assert_eq!(first.sha256, second.sha256, "{}", src.display());
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let other = deidentify_file(procedure, &UidMap::random(), src, &c).unwrap();
        assert_ne!(
            other.sha256, first.sha256,
            "another case maps UIDs elsewhere"
        );
    }
}

/// What follows the pixel data (trailing padding, a digital signature) is not part of the image: it is
/// not sent, and above all not folded into the pixel data as if it were one more fragment.
#[test]
fn nothing_after_the_pixel_data_is_sent() {
    let scratch = tempfile::tempdir().unwrap();
    let (procedure, uids) = ours();
    let fragments = vec![
        vec![0xFFu8, 0xD8, 1, 2, 3, 4, 0xFF, 0xD9],
        vec![0xFF, 0xD8, 5, 6, 0xFF, 0xD9],
    ];
    let trailing = b"SIGNED BY DR JANE DOE".to_vec();
    for (ts, pixels) in [
        (
            uids::JPEG_BASELINE8_BIT,
            Value::from(PixelFragmentSequence::new(
                Vec::<u32>::new(),
                fragments.clone(),
            )),
        ),
        (
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            Value::from(PrimitiveValue::from(vec![7u8; 64])),
        ),
    ] {
        let mut e = patient_and_study(CT_CLASS, "1.2.999.9.1", "CT");
        e.extend(pixel_module(8, 8, 8));
        e.push(DataElement::new(tags::PIXEL_DATA, VR::OB, pixels));
        e.push(DataElement::new(
            Tag(0xFFFC, 0xFFFC),
            VR::OB,
            PrimitiveValue::from(trailing.clone()),
        ));
        let (src, dst) = (
            scratch.path().join("in.dcm"),
            scratch.path().join("out.dcm"),
        );
        write(&src, item(e), ts);
        assert!(
            std::fs::read(&src)
                .unwrap()
                .windows(trailing.len())
                .any(|w| w == trailing)
        );

        deidentify_file(procedure, &uids, &src, &dst).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert!(
            !bytes.windows(trailing.len()).any(|w| w == trailing),
            "{ts}: the trailing element was sent"
        );
        let out = open_file(&dst).unwrap();
        assert!(out.get(Tag(0xFFFC, 0xFFFC)).is_none(), "{ts}");
        let pixel_data = out.element(tags::PIXEL_DATA).unwrap();
        match pixel_data.value() {
            Value::PixelSequence(seq) => assert_eq!(seq.fragments(), &fragments[..], "{ts}"),
            Value::Primitive(p) => assert_eq!(p.to_bytes().as_ref(), &[7u8; 64][..], "{ts}"),
            other => panic!("{ts}: {other:?}"),
        }
    }
}

/// A Part 10 copy read back: its transfer syntax, the instance its file meta group names, the data set,
/// and the data set's bytes (inflated where they were deflated: dicom-rs reads deflated data sets only
/// with a feature the product does not need).
fn read_copy(path: &Path) -> (String, String, InMemDicomObject, Vec<u8>) {
    use std::io::Read;
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[128..132], b"DICM", "{}", path.display());
    let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..]).unwrap();
    // (0002,0000) UL: 8 bytes of header after "DICM", then the group's length.
    let group = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let data = &bytes[144 + group..];
    let ts = meta.transfer_syntax().to_owned();
    let (read_ts, data) = if ts == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(data)
            .read_to_end(&mut inflated)
            .unwrap();
        (uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(), inflated)
    } else {
        (ts.clone(), data.to_vec())
    };
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let obj = InMemDicomObject::read_dataset_with_ts(
        data.as_slice(),
        dicom_encoding::TransferSyntaxIndex::get(&registry, &read_ts).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let instance = meta.media_storage_sop_instance_uid().to_owned();
    (ts, instance, obj, data)
}

/// Files without the preamble, without a file meta group, without an extension, in big endian,
/// deflated, or with standard elements stored as UN are DICOM all the same: recognised by content,
/// de-identified as the reference de-identifies them, and nothing identifying is left.
#[test]
fn every_way_dicom_is_stored_is_de_identified_as_the_reference_does() {
    use gc_content::deidentify::sniff::{Content, HEAD, head, sniff};
    let scratch = tempfile::tempdir().unwrap();
    let input = scratch.path().join("in");
    let encodings = gc_testkit::python::write_encodings(&gc_testkit::venvs!(), &input);
    assert_eq!(encodings.len(), 8, "{encodings:?}");
    let corpus: Vec<PathBuf> = encodings.keys().map(|n| input.join(n)).collect();
    let (verdicts, out_py, out_rs, (procedure, uids)) = both_sides(scratch.path(), &corpus);
    let (mut pairs, mut diffs) = (UidPairs::default(), Vec::new());
    for (name, how) in &encodings {
        let src = input.join(name);
        let (bytes, len) = head(&src, HEAD).unwrap();
        assert!(
            matches!(sniff(&bytes, len), Content::Dicom(_)),
            "{name} ({how}) is DICOM"
        );
        assert_eq!(verdicts[name], "ok", "{name} ({how})");
        let dst = out_rs.join(name);
        let written = deidentify_file(procedure, &uids, &src, &dst)
            .unwrap_or_else(|e| panic!("{name} ({how}): {e}"));
        // The identifiers titles are compared with, read from the header alone (as `check` does) and
        // while copying, however the file is stored.
        let expected = gc_content::deidentify::PatientIdentifiers {
            patient_id: Some("PID-8812".into()),
            patient_name: Some("ROE^RICHARD".into()),
            accession_number: Some("ACC98765".into()),
        };
        assert!(
            gc_content::deidentify::patient_identifiers(&src).as_ref() == Some(&expected),
            "{name} ({how}): the identifiers read from the header"
        );
        assert!(
            written.identifiers == expected,
            "{name} ({how}): the identifiers read while copying"
        );
        let (ts_a, meta_a, a, data_a) = read_copy(&dst);
        let (ts_b, meta_b, b, _) = read_copy(&out_py.join(name));
        assert_eq!(ts_a, ts_b, "{name} ({how}): transfer syntax");
        pairs.pair(&format!("{name} meta"), &meta_a, &meta_b, &mut diffs);
        compare(&a, &b, &format!("{name} "), &mut pairs, &mut diffs);
        let on_disk = std::fs::read(&dst).unwrap();
        for secret in gc_testkit::python::ENCODINGS_SECRETS {
            for (what, hay) in [("file", &on_disk), ("data set", &data_a)] {
                assert!(
                    !hay.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{name} ({how}): {secret} is still in the copy's {what}"
                );
            }
        }
        // The pixel data goes across unchanged.
        assert_eq!(
            a.element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            b.element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            "{name}"
        );
    }
    assert!(
        diffs.is_empty(),
        "differences from the reference:\n{}",
        diffs.join("\n")
    );
}

/// A damaged file of every encoding is refused within a second: an error, or a copy that the
/// platform's importer would not take for an image (DICOM has no overall length, so a data set cut
/// between elements reads as a shorter one; the delivery refuses that copy before anything is made).
#[test]
fn damaged_files_of_every_encoding_are_refused_quickly() {
    use gc_content::imaging::{Verdict, judge_files};
    let scratch = tempfile::tempdir().unwrap();
    let input = scratch.path().join("in");
    let encodings = gc_testkit::python::write_encodings(&gc_testkit::venvs!(), &input);
    let (procedure, uids) = ours();
    let (src, dst) = (
        scratch.path().join("damaged"),
        scratch.path().join("out.dcm"),
    );
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (name, how) in &encodings {
        let whole = std::fs::read(input.join(name)).unwrap();
        let mut variants = vec![
            ("cut at two thirds", whole[..whole.len() * 2 / 3].to_vec()),
            ("cut in the pixel data", whole[..whole.len() - 7].to_vec()),
        ];
        // A length field turned into garbage: the two bytes before the first name's value.
        let name_at = whole.windows(11).position(|w| w == b"ROE^RICHARD");
        let mut garbage = whole.clone();
        match name_at {
            Some(at) => garbage[at - 2..at].copy_from_slice(&[0xFF, 0xFF]),
            // Deflated: the stream itself damaged.
            None => {
                let mid = garbage.len() * 3 / 4;
                garbage[mid] ^= 0x5A;
                garbage[mid + 1] ^= 0xA5;
            }
        }
        variants.push(("a damaged length", garbage));
        for (what, bytes) in variants {
            tried += 1;
            std::fs::write(&src, &bytes).unwrap();
            let started = Instant::now();
            let result = std::panic::catch_unwind(|| deidentify_file(procedure, &uids, &src, &dst));
            let took = started.elapsed();
            let refused = match result {
                Ok(Err(_)) => true,
                Ok(Ok(_)) => judge_files(&[("slice.dcm".into(), dst.clone())]) != Verdict::Pass,
                Err(_) => {
                    wrong.push(format!("{name} ({how}), {what}: panicked"));
                    continue;
                }
            };
            if !refused {
                wrong.push(format!(
                    "{name} ({how}), {what}: copied and judged an image"
                ));
            }
            if took > Duration::from_secs(1) {
                wrong.push(format!("{name} ({how}), {what}: took {took:?}"));
            }
        }
    }
    assert_eq!(tried, 24);
    assert!(wrong.is_empty(), "{wrong:#?}");
}
