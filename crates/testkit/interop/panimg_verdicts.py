"""The platform's verdict on each case of the image corpus, from panimg itself.

Usage: panimg_verdicts.py CORPUS_DIR

Every subfolder of CORPUS_DIR holds the uploads of one image value. Each is imported as the platform
imports user uploads: the files are copied into a fresh directory, every ZIP archive is extracted in
place (recursively, the archive itself removed), then `panimg.convert` runs with the default builders
and no post-processors (the platform makes DZI tiles later, in the background). One JSON line per case
is printed: the number of images, the properties of the single image when there is exactly one, the
files no builder consumed, or the exception that ended the import.
"""

import json
import logging
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from panimg import convert

logging.disable(logging.CRITICAL)


def extract_zips(directory: Path) -> None:
    while True:
        archives = [
            p for p in sorted(directory.rglob("*")) if p.is_file() and zipfile.is_zipfile(p)
        ]
        if not archives:
            return
        for archive in archives:
            with zipfile.ZipFile(archive) as z:
                for member in z.infolist():
                    target = (archive.parent / member.filename).resolve()
                    if directory.resolve() not in target.parents:
                        continue
                    if member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            archive.unlink()


def verdict(case: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = tmp / "input"
        shutil.copytree(case, inp)
        try:
            extract_zips(inp)
            result = convert(
                input_directory=inp,
                output_directory=tmp / "output",
                post_processors=[],
            )
        except Exception as e:  # the import task fails as a whole
            return {"case": case.name, "unexpected": f"{type(e).__name__}: {e}"}
        all_files = {p.resolve() for p in inp.rglob("*") if p.is_file()}
        consumed = {Path(p).resolve() for p in result.consumed_files}
        out = {
            "case": case.name,
            "images": len(result.new_images),
            "unconsumed": len(all_files - consumed),
        }
        if len(result.new_images) == 1:
            image = next(iter(result.new_images))
            out["image"] = {
                "width": image.width,
                "height": image.height,
                "depth": image.depth,
                "timepoints": image.timepoints,
                "color_space": image.color_space.value,
            }
        return out


def main() -> None:
    root = Path(sys.argv[1])
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        print(json.dumps(verdict(case)), flush=True)


if __name__ == "__main__":
    main()
