"""Which files of a DICOM input folder are ultrasound images the app can run on, and which are not.

Why not the SDK's loader as it is: it reads every file's pixel data up front and stops at the first file that is
not ``InvalidDicomError``-broken but still unreadable (a truncated header raises ``EOFError``). Here each header is
read with its pixel data deferred; a file that cannot be parsed is set aside with its cause, and the rest go on.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from ultramae_monai.data.dicom_reader import US_MODALITIES

__all__ = [
    "US_IMAGE_SOP_CLASSES",
    "SkippedFile",
    "is_ultrasound_image",
    "list_files",
    "read_headers",
    "source_header",
]

# Ultrasound Image Storage and Ultrasound Multi-frame Image Storage, current and retired (PS3.4 B.5)
US_IMAGE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",
        "1.2.840.10008.5.1.4.1.1.3.1",
        "1.2.840.10008.5.1.4.1.1.6",
        "1.2.840.10008.5.1.4.1.1.3",
    }
)
# Enhanced US Volume and Photoacoustic images: 3D / multi-channel objects the 2D bundles do not take
_NOT_2D_US_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.6.3"})
_DICOMDIR = "1.2.840.10008.1.3.10"
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)

_IDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class SkippedFile:
    """An input file the app did not process, and why (one line for the log and ``result.json``)."""

    path: str
    cause: str

    def __str__(self) -> str:
        return f"{self.path}: {self.cause}"


def list_files(folder: str | os.PathLike) -> list[Path]:
    """Every regular file under ``folder``, recursively, in a stable order (hidden files included: PACS names)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def read_headers(files: list[Path]) -> tuple[list[Dataset], list[SkippedFile]]:
    """Parse each DICOM header (pixel data deferred); files that are not DICOM or lack the UIDs are skipped, named.

    The datasets keep their ``filename``, so the project's readers decode the pixels later, only for the
    instances selected.
    """
    datasets: list[Dataset] = []
    skipped: list[SkippedFile] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, defer_size="256 KB")
        except Exception as e:  # InvalidDicomError, EOFError, struct.error, ...: all mean "not readable DICOM"
            skipped.append(SkippedFile(str(path), f"not a readable DICOM file ({type(e).__name__}: {e})"))
            continue
        missing = [k for k in _IDS if not ds.get(k)]
        media_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
        if _DICOMDIR in (str(ds.get("SOPClassUID", "")), media_class):
            continue  # the index of a DICOM medium, not an instance
        if missing:
            skipped.append(SkippedFile(str(path), f"DICOM without {', '.join(missing)}"))
            continue
        datasets.append(ds)
    return datasets, skipped


def is_ultrasound_image(ds: Dataset) -> bool:
    """An ultrasound still or cine: an ultrasound image SOP class, or a US modality with rows and columns."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in US_IMAGE_SOP_CLASSES:
        return True
    if sop_class in _NOT_2D_US_SOP_CLASSES:
        return False
    modality = str(ds.get("Modality", "") or "").upper()
    return modality in US_MODALITIES and "Rows" in ds and "Columns" in ds and "PixelData" in ds


def source_header(source: Dataset, drop: tuple[str, ...] = ()) -> Dataset:
    """The source header without pixel data, with the patient/study attributes highdicom copies present.

    Those are type 2 (may be empty) in the ultrasound IODs, and some devices leave them out altogether.
    """
    header = Dataset()
    header.file_meta = copy.deepcopy(source.file_meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom re-validates the device's over-long values
        for elem in source:
            if elem.keyword not in ("PixelData", *drop):
                header.add(copy.deepcopy(elem))
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    return header
