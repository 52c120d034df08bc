"""Write the same CT slice of one patient in every way DICOM is stored, into OUT_DIR, and print a JSON
object {file name: how it is stored}. The patient's identifiers and the original UIDs are fixed: the
test searches the de-identified copies for them.

Usage: encodings.py OUT_DIR
"""

import json
import sys
from pathlib import Path

from pydicom import DataElement, Dataset, config
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def referenced_image():
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = "1.2.999.8.3.100"
    return ref


def slice_of(number):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = f"1.2.999.8.3.{number}"
    ds.StudyDate = "20240511"
    ds.AccessionNumber = "ACC98765"
    ds.Modality = "CT"
    ds.InstitutionName = "St. Example Hospital"
    ds.ReferringPhysicianName = "WHO^DR"
    ds.ReferencedImageSequence = [referenced_image()]
    ds.PatientName = "ROE^RICHARD"
    ds.PatientID = "PID-8812"
    ds.PatientBirthDate = "19580704"
    ds.add_new(0x00101000, "LO", "OPID-5531")
    ds.StudyInstanceUID = "1.2.999.8.1"
    ds.SeriesInstanceUID = "1.2.999.8.2"
    ds.FrameOfReferenceUID = "1.2.999.8.4"
    ds.InstanceNumber = number
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "PN", "ROE^RICHARD")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(32))
    ds["PixelData"].VR = "OW"
    return ds


def meta(ds, ts):
    m = FileMetaDataset()
    m.MediaStorageSOPClassUID = ds.SOPClassUID
    m.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    m.TransferSyntaxUID = ts
    m.SourceApplicationEntityTitle = "SCANNER_AE"
    return m


def part10(ds, path, ts):
    ds.file_meta = meta(ds, ts)
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=True)


def bare(ds, path, implicit, little):
    dcmwrite(path, ds, implicit_vr=implicit, little_endian=little)


def as_un(ds):
    """SOP Class UID, the patient's name, the institution and a sequence stored as UN, as some PACS
    hand them back: values as raw bytes in implicit VR little endian."""
    # Otherwise pydicom itself turns a UN element of a known tag into its dictionary VR.
    config.replace_un_with_known_vr = False
    for tag in (0x00080016, 0x00100010, 0x00080080):
        raw = ds[tag].value
        raw = raw.encode() if isinstance(raw, str) else str(raw).encode()
        if len(raw) % 2:
            raw += b"\0" if tag == 0x00080016 else b" "
        ds[tag] = DataElement(tag, "UN", raw)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    seq = Dataset()
    seq.ReferencedImageSequence = ds.ReferencedImageSequence
    write_dataset(fp, seq)
    # Without the element's own header (tag, length) and a sequence delimiter if there is one: a
    # defined length value holding the items.
    items = fp.getvalue()[8:]
    if items.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"):
        items = items[:-8]
    ds[0x00081140] = DataElement(0x00081140, "UN", items)
    config.replace_un_with_known_vr = True
    return ds


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    written = {}

    bare(slice_of(1), out / "IM0001", implicit=True, little=True)
    written["IM0001"] = "bare data set, implicit VR little endian, no extension"
    bare(slice_of(2), out / "IM0002", implicit=False, little=True)
    written["IM0002"] = "bare data set, explicit VR little endian"
    bare(slice_of(3), out / "IM0003", implicit=False, little=False)
    written["IM0003"] = "bare data set, explicit VR big endian"

    ds = slice_of(4)
    ds.file_meta = meta(ds, ExplicitVRLittleEndian)
    dcmwrite(out / "meta-no-preamble", ds)
    written["meta-no-preamble"] = "file meta group without the preamble"

    part10(slice_of(5), out / "big-endian.dcm", ExplicitVRBigEndian)
    written["big-endian.dcm"] = "Part 10, explicit VR big endian"
    part10(slice_of(6), out / "deflated.dcm", DeflatedExplicitVRLittleEndian)
    written["deflated.dcm"] = "Part 10, deflated explicit VR little endian"
    part10(as_un(slice_of(7)), out / "un.dcm", ExplicitVRLittleEndian)
    written["un.dcm"] = "Part 10, standard elements stored as UN"
    part10(slice_of(8), out / "CT.1.2.999.8.3.8", ImplicitVRLittleEndian)
    written["CT.1.2.999.8.3.8"] = "Part 10, implicit VR, named as storescp names files"

    print(json.dumps(written))


if __name__ == "__main__":
    main()
