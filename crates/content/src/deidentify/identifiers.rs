//! The patient identifiers of a DICOM header, and whether text that leaves this machine (an item's
//! title, a DICOM image set's name) repeats one of them.
//!
//! Folder names are where identifiers slip out: scanners and PACS exports name folders after the
//! Patient ID (`P02003/20240503/IM0001`), the Accession Number or the patient's name, and a title
//! template such as `{path}` carries them to the platform. The comparison is deliberately loose (no
//! case, no separators, a substring anywhere), because a false alarm costs a look while a miss sends
//! an identifier away. The identifiers never appear in what this module says: only their kind.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Needles shorter than this (after normalising) only match a whole word of the text, so that a
/// two-letter name part does not match inside every other word.
const MIN_SUBSTRING: usize = 4;

/// Patient ID, Patient's Name and Accession Number as a DICOM header holds them. `Debug` shows none of
/// them, so they cannot reach a log by accident.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatientIdentifiers {
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
}

impl std::fmt::Debug for PatientIdentifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PatientIdentifiers { .. }")
    }
}

/// Which identifier a text repeats (named in warnings instead of the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdentifierKind {
    PatientId,
    PatientName,
    AccessionNumber,
}

impl std::fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdentifierKind::PatientId => "Patient ID",
            IdentifierKind::PatientName => "Patient's Name",
            IdentifierKind::AccessionNumber => "Accession Number",
        })
    }
}

impl PatientIdentifiers {
    /// The identifiers of a header (empty values count as absent).
    pub fn of(header: &InMemDicomObject) -> PatientIdentifiers {
        PatientIdentifiers {
            patient_id: super::text(header, tags::PATIENT_ID),
            patient_name: super::text(header, tags::PATIENT_NAME),
            accession_number: super::text(header, tags::ACCESSION_NUMBER),
        }
    }

    /// The kinds of identifier `text` repeats, in a fixed order.
    pub fn found_in(&self, text: &str) -> Vec<IdentifierKind> {
        let mut out = Vec::new();
        if self
            .patient_id
            .as_deref()
            .is_some_and(|i| looks_like(text, i))
        {
            out.push(IdentifierKind::PatientId);
        }
        if self.patient_name.as_deref().is_some_and(|n| {
            looks_like(text, n) || name_parts(n).any(|part| looks_like(text, part))
        }) {
            out.push(IdentifierKind::PatientName);
        }
        if self
            .accession_number
            .as_deref()
            .is_some_and(|a| looks_like(text, a))
        {
            out.push(IdentifierKind::AccessionNumber);
        }
        out
    }
}

/// The family, given and middle names of a DICOM person name (`DOE^JANE`, alphabetic, ideographic and
/// phonetic groups separated by `=`).
fn name_parts(name: &str) -> impl Iterator<Item = &str> {
    name.split(['^', '='])
}

fn normalised(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Does `text` repeat `identifier`? Compared without case, spaces and separators, so that a folder
/// `Doe_Jane` matches the name `DOE^JANE` and `p02003-ct` the ID `P02003`: anywhere in the text for an
/// identifier of [`MIN_SUBSTRING`] characters or more, as a whole word for a shorter one.
pub fn looks_like(text: &str, identifier: &str) -> bool {
    let needle = normalised(identifier);
    if needle.is_empty() {
        return false;
    }
    if needle.chars().count() >= MIN_SUBSTRING {
        return normalised(text).contains(&needle);
    }
    text.split(|c: char| !c.is_alphanumeric())
        .any(|word| normalised(word) == needle)
}

/// A text that leaves this machine, for [`title_warnings`]: what it is, the setting that makes it, and
/// its value for one case.
#[derive(Debug, Clone, Copy)]
pub struct Leaving<'a> {
    /// e.g. "title", "image name of socket ct-set".
    pub what: &'a str,
    /// The config key whose template rendered it, e.g. "title", "image_name".
    pub setting: &'a str,
    pub text: &'a str,
}

/// Warnings for the texts of a case that leave this machine (`leaving`) and repeat a patient identifier
/// of its DICOM files (`identifiers`, as read). Every folder of the case's path below the drop folder
/// (`case_path`, `/`-separated) is looked at, at any depth: a warning says which folder level the text
/// takes the identifier from (so the template can be fixed), which kind of identifier it is (never the
/// identifier), and proposes `{hash}`, which shows no folder name.
pub fn title_warnings(
    case_path: &str,
    leaving: &[Leaving<'_>],
    identifiers: &[PatientIdentifiers],
) -> Vec<String> {
    let kinds_in = |text: &str| -> Vec<IdentifierKind> {
        let mut kinds: Vec<IdentifierKind> =
            identifiers.iter().flat_map(|i| i.found_in(text)).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    let mut out = Vec::new();
    for l in leaving {
        let kinds = kinds_in(l.text);
        if kinds.is_empty() {
            continue;
        }
        // The folder levels the text includes that hold an identifier themselves: the template's part
        // to change.
        let depths: Vec<String> = case_path
            .split('/')
            .enumerate()
            .filter(|(_, name)| !name.is_empty() && l.text.contains(name))
            .filter(|(_, name)| !kinds_in(name).is_empty())
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        let kinds: Vec<String> = kinds.iter().map(|k| format!("the {k}")).collect();
        let source = match depths.as_slice() {
            [] => String::new(),
            [one] => format!(" the case's folder name at depth {one}, which"),
            many => format!(" the case's folder names at depths {}, which", and(many)),
        };
        let verb = if depths.is_empty() {
            "repeats"
        } else {
            "includes"
        };
        let repeat = match depths.len() {
            0 => "",
            1 => "repeats ",
            _ => "repeat ",
        };
        let object = format!("{repeat}{} of the case's DICOM files", and(&kinds));
        let (what, setting) = (l.what, l.setting);
        out.push(format!(
            "the {what} {verb}{source} {object}, and the {what} leaves this machine: use \
             {setting} = \"{{hash}}\", which shows no folder name"
        ));
    }
    out
}

/// "a", "a and b", "a, b and c".
fn and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(id: &str, name: &str, accession: &str) -> PatientIdentifiers {
        PatientIdentifiers {
            patient_id: Some(id.into()),
            patient_name: Some(name.into()),
            accession_number: Some(accession.into()),
        }
    }

    #[test]
    fn identifiers_are_found_anywhere_in_a_text_without_case_or_separators() {
        assert!(looks_like("Doe_Jane", "DOE^JANE"));
        assert!(looks_like("pid-4711", "PID-4711"));
        assert!(looks_like("P02003/20240503", "P02003"));
        assert!(looks_like("ct-of-p02003-2024", "P02003"));
        assert!(!looks_like("case-0001", "DOE^JANE"));
        assert!(!looks_like("", "^"));
        // Short identifiers only as a whole word: "Li" is not in "clinic", but is in "li-ct".
        assert!(!looks_like("clinic-07", "LI"));
        assert!(looks_like("li-ct", "LI"));
    }

    #[test]
    fn a_name_part_alone_is_found() {
        let p = ids("X1", "DOE^JANE", "A1");
        assert_eq!(p.found_in("doe-2024"), [IdentifierKind::PatientName]);
        assert_eq!(p.found_in("Jane"), [IdentifierKind::PatientName]);
        assert!(p.found_in("20240503").is_empty());
    }

    #[test]
    fn warnings_name_the_folder_level_and_the_kind_never_the_value() {
        let p = [ids("P02003", "DOE^JANE", "ACC0042")];
        let title = |t| Leaving {
            what: "title",
            setting: "title",
            text: t,
        };
        // `{path}` at depth 2: the patient's folder comes along.
        let w = title_warnings("P02003/20240503", &[title("P02003/20240503")], &p);
        assert_eq!(
            w,
            [
                "the title includes the case's folder name at depth 1, which repeats the Patient ID of \
              the case's DICOM files, and the title leaves this machine: use title = \"{hash}\", \
              which shows no folder name"
            ]
        );
        // `{case}` at depth 2 is the study date: nothing leaves.
        assert!(title_warnings("P02003/20240503", &[title("20240503")], &p).is_empty());
        // An identifier deeper down, and two kinds at once.
        let w = title_warnings("ward/ACC0042-p02003", &[title("ward/ACC0042-p02003")], &p);
        assert!(
            w[0].contains(
                "folder name at depth 2, which repeats the Patient ID and the Accession Number"
            ),
            "{w:?}"
        );
        // A title that repeats an identifier no folder holds (a fixed text in the template).
        let w = title_warnings("x/y", &[title("Doe-y")], &p);
        assert!(
            w[0].starts_with("the title repeats the Patient's Name of the case's DICOM files"),
            "{w:?}"
        );
        for w in title_warnings("P02003/x", &[title("P02003/x")], &p) {
            assert!(!w.contains("P02003") && !w.contains("DOE"), "{w}");
        }
        assert_eq!(format!("{:?}", p[0]), "PatientIdentifiers { .. }");
    }
}
