"""De-identify every file named on the command line with the reference de-identifier, one instance for
all of them (one case), into OUT_DIR; print a JSON object {file name: "ok" | "rejected: why"}.

Usage: deidentify.py OUT_DIR FILE...
"""

import json
import sys
from pathlib import Path

from grand_challenge_dicom_de_identifier.deidentifier import DicomDeidentifier
from grand_challenge_dicom_de_identifier.exceptions import RejectedDICOMFileError


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    deidentifier = DicomDeidentifier()
    results = {}
    for name in sys.argv[2:]:
        src = Path(name)
        try:
            deidentifier.deidentify_file(src, output=out_dir / src.name)
            results[src.name] = "ok"
        except RejectedDICOMFileError as e:
            results[src.name] = f"rejected: {e.justification}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
