"""The real ultrasound the demo runs on, all of it installed with the project (no download).

* 48 fetal-head B-mode images with skull masks from HC18 (van den Heuvel et al., PLoS ONE 2018, CC BY 4.0),
  downsized, in ``ultramae_monai/data/samples/hc18`` (attribution in its README).
* Ultrasound DICOMs from the MIT-licensed ``pydicom`` (always installed), ``pydicom-data`` and ``deid-data``
  (the ``test`` extra that ``scripts/demo.sh`` installs); the ones not installed are skipped.
"""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ultramae_monai.errors import UltraMAEError

__all__ = ["HC18_DIR", "HC18Case", "hc18_cases", "sample_dicoms", "write_us_dicom"]

HC18_DIR = Path(__file__).resolve().parents[1] / "data" / "samples" / "hc18"

# (pydicom test-file name, what it is); pydicom itself ships the first, pydicom-data the others
_PYDICOM_US = (
    ("examples_ybr_color.dcm", "30-frame JPEG YBR_FULL_422 cine (pydicom)"),
    ("US1_UNCR.dcm", "RGB still (pydicom-data)"),
    ("OBXXXX1A.dcm", "palette-colour obstetric still (pydicom-data)"),
)
# files inside deid-data's ultrasounds folder
_DEID_US = (("GREYSCALE_IMAGE.dcm", "grey still, 768x1024 (deid-data)"), ("RGB_IMAGE.dcm", "RGB still (deid-data)"))


@dataclass(frozen=True)
class HC18Case:
    """One sample image, its filled skull mask and its pixel size (mm)."""

    name: str
    image: Path
    mask: Path
    pixel_mm: float

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image in [0, 1] float32, mask bool)``, both ``(H, W)``."""
        img = np.asarray(Image.open(self.image).convert("L"), dtype=np.float32) / 255.0
        return img, np.asarray(Image.open(self.mask).convert("L")) > 127


def hc18_cases(root: str | Path = HC18_DIR) -> list[HC18Case]:
    """All sample cases, sorted by name (one exam each, so any split of the list is patient-disjoint)."""
    root = Path(root)
    table = root / "pixel_size_and_HC.csv"
    if not table.is_file():
        raise UltraMAEError("HC18 sample missing (reinstall the package from a full checkout)", table)
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cases = [
        HC18Case(
            name=r["filename"].removesuffix(".png"),
            image=root / "images" / r["filename"],
            mask=root / "masks" / r["filename"].replace(".png", "_mask.png"),
            pixel_mm=float(r["pixel size(mm)"]),
        )
        for r in rows
    ]
    return sorted(cases, key=lambda c: c.name)


def sample_dicoms() -> list[tuple[Path, str]]:
    """``(path, description)`` of the installed ultrasound DICOM samples (at least pydicom's own cine)."""
    from pydicom.data import get_testdata_file

    found: list[tuple[Path, str]] = []
    for name, what in _PYDICOM_US:
        try:
            path = get_testdata_file(name)
        except Exception:  # pydicom-data missing or offline: its files are optional
            path = None
        if path:
            found.append((Path(path), what))
    try:
        import deid_data

        folder = Path(deid_data.__file__).parent / "data" / "ultrasounds"
        found += [(folder / n, w) for n, w in _DEID_US if (folder / n).is_file()]
    except ImportError:
        pass
    if not found:
        raise UltraMAEError("no sample DICOM found (pydicom's test files are missing)")
    return found


def write_us_dicom(image: np.ndarray, path: str | Path, pixel_mm: float, patient: str = "DEMO^FETAL") -> Path:
    """Write a grey image in [0, 1] as a single-frame Ultrasound Image Storage DICOM (8-bit MONOCHROME2).

    The demo sends a held-out HC18 image through the deploy app this way, so the app segments a fetal head
    it was trained for; the patient and UIDs are synthetic.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    pixels = np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.PatientName, ds.PatientID = patient, "DEMO0001"
    ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelSpacing = [f"{pixel_mm:.6f}", f"{pixel_mm:.6f}"]
    ds.PixelData = pixels.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
