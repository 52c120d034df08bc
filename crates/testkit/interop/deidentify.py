"""De-identify every file named on the command line with the reference de-identifier, one instance for
all of them (one case), into OUT_DIR; print a JSON object {file name: "ok" | "rejected: why"}.

Usage: deidentify.py OUT_DIR FILE...
"""

import json
import sys
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from grand_challenge_dicom_de_identifier.deidentifier import DicomDeidentifier
from grand_challenge_dicom_de_identifier.exceptions import RejectedDICOMFileError


def deidentify(deidentifier, src, out):
    """The reference's deidentify_file, except for a data set without a file meta group: the reference
    reads it (force=True) but cannot write it without a transfer syntax, so it gets the one it was read
    in."""
    with pydicom.dcmread(src, force=True) as dataset:
        if "TransferSyntaxUID" in getattr(dataset, "file_meta", {}):
            deidentifier.deidentify_file(src, output=out)
            return
        implicit, little = dataset.original_encoding
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        deidentifier.deidentify_dataset(dataset)
        dataset.save_as(out, enforce_file_format=True)


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    deidentifier = DicomDeidentifier()
    results = {}
    for name in sys.argv[2:]:
        src = Path(name)
        try:
            deidentify(deidentifier, src, out_dir / src.name)
            results[src.name] = "ok"
        except RejectedDICOMFileError as e:
            results[src.name] = f"rejected: {e.justification}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
