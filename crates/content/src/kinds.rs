//! The socket kinds of gc-protocol.md §3.2: the API speaks in labels ("Integer"), the error texts in
//! internal codes ("INT"), and validation depends on the family. One table keeps the three in step.

/// What a kind's values are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// JSON values: stored in the database (super kind Value) or as a `.json` file (super kind File).
    Json,
    /// panimg images (IMG, SEG, HMAP, DSPF).
    Image,
    /// DICOM image sets (DCMIS).
    DicomImageSet,
    /// Plain files with their extension.
    File(&'static str),
}

/// One socket kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub label: &'static str,
    pub code: &'static str,
    pub family: Family,
}

const fn json(label: &'static str, code: &'static str) -> Kind {
    Kind {
        label,
        code,
        family: Family::Json,
    }
}

const fn file(label: &'static str, code: &'static str, ext: &'static str) -> Kind {
    Kind {
        label,
        code,
        family: Family::File(ext),
    }
}

/// Every kind the platform defines.
pub const KINDS: &[Kind] = &[
    json("String", "STR"),
    json("Integer", "INT"),
    json("Float", "FLT"),
    json("Bool", "BOOL"),
    json("Anything", "JSON"),
    json("Chart", "CHART"),
    json("2D bounding box", "2DBB"),
    json("Multiple 2D bounding boxes", "M2DB"),
    json("Distance measurement", "DIST"),
    json("Multiple distance measurements", "MDIS"),
    json("Point", "POIN"),
    json("Multiple points", "MPOI"),
    json("Polygon", "POLY"),
    json("Multiple polygons", "MPOL"),
    json("Line", "LINE"),
    json("Multiple lines", "MLIN"),
    json("Angle", "ANGL"),
    json("Multiple angles", "MANG"),
    json("Ellipse", "ELLI"),
    json("Multiple ellipses", "MELL"),
    json("Three-point angle", "3ANG"),
    json("Multiple three-point angles", "M3AN"),
    json("Affine transform registration", "ATRG"),
    json("Choice", "CHOI"),
    json("Multiple choice", "MCHO"),
    Kind {
        label: "Image",
        code: "IMG",
        family: Family::Image,
    },
    Kind {
        label: "Segmentation",
        code: "SEG",
        family: Family::Image,
    },
    Kind {
        label: "Heat Map",
        code: "HMAP",
        family: Family::Image,
    },
    Kind {
        label: "Displacement field",
        code: "DSPF",
        family: Family::Image,
    },
    Kind {
        label: "DICOM Image Set",
        code: "DCMIS",
        family: Family::DicomImageSet,
    },
    file("PDF file", "PDF", ".pdf"),
    file("SQREG file", "SQREG", ".sqreg"),
    file("Thumbnail jpg", "JPEG", ".jpeg"),
    file("Thumbnail png", "PNG", ".png"),
    file("OBJ file", "OBJ", ".obj"),
    file("MP4 file", "MP4", ".mp4"),
    file("Newick tree-format file", "NEWCK", ".newick"),
    file("BIOM format", "BIOM", ".biom"),
    file("CSV file", "CSV", ".csv"),
    file("ZIP file", "ZIP", ".zip"),
];

/// Look a kind up by its label, case-insensitively (gcapi compares labels that way too).
pub fn by_label(label: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.label.eq_ignore_ascii_case(label))
}

/// A socket's super kind (gc-protocol.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SuperKind {
    Image,
    File,
    Value,
}

impl SuperKind {
    pub fn label(self) -> &'static str {
        match self {
            SuperKind::Image => "Image",
            SuperKind::File => "File",
            SuperKind::Value => "Value",
        }
    }
}

impl Kind {
    /// Whether `super_kind` is possible for this kind (JSON kinds may be stored either way).
    pub fn allows(self, super_kind: SuperKind) -> bool {
        match self.family {
            Family::Image | Family::DicomImageSet => super_kind == SuperKind::Image,
            Family::File(_) => super_kind == SuperKind::File,
            Family::Json => matches!(super_kind, SuperKind::Value | SuperKind::File),
        }
    }

    /// Position of this kind's values in the read representation of an item or display set, as the
    /// platform's `sort_civs` groups them: JSON kinds (however stored, so "Anything" kept as a file
    /// too), thumbnails, charts, other files, images. The group follows from the kind alone.
    pub fn read_rank(self) -> u8 {
        match (self.family, self.code) {
            (_, "CHART") => 2,
            (Family::Json, _) => 0,
            (_, "JPEG" | "PNG") => 1,
            (Family::File(_), _) => 3,
            (Family::Image | Family::DicomImageSet, _) => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_codes_are_unique() {
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                assert_ne!(a.label, b.label);
                assert_ne!(a.code, b.code);
            }
        }
    }

    #[test]
    fn super_kind_rules() {
        let int = by_label("integer").unwrap();
        assert!(
            int.allows(SuperKind::Value)
                && int.allows(SuperKind::File)
                && !int.allows(SuperKind::Image)
        );
        let pdf = by_label("PDF file").unwrap();
        assert!(pdf.allows(SuperKind::File) && !pdf.allows(SuperKind::Value));
        assert_eq!(
            by_label("DICOM image set").unwrap().family,
            Family::DicomImageSet
        );
    }

    #[test]
    fn read_groups_follow_sort_civs() {
        let rank = |label: &str| by_label(label).unwrap().read_rank();
        assert_eq!(
            rank("Anything"),
            0,
            "a JSON kind, even when stored as a file"
        );
        assert_eq!(rank("Integer"), 0);
        assert_eq!(rank("Thumbnail png"), 1);
        assert_eq!(rank("Thumbnail jpg"), 1);
        assert_eq!(rank("Chart"), 2, "charts are not among the values");
        assert_eq!(rank("PDF file"), 3);
        assert_eq!(rank("Segmentation"), 4);
        assert_eq!(rank("DICOM Image Set"), 4);
    }
}
