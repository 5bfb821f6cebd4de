"""The DICOM reader on pydicom 2 (the MONAI Label environment) and on pydicom 3 gives the same cine.

In ``.venv-label`` (pydicom 2.4) the reader decodes through :mod:`ultramae_monai.data.dicom_pydicom2`; in the
project's environment through ``pydicom.pixels``. Both must return the convention's ``(C, T, H, W)`` with the
selected frames, and refuse a non-ultrasound modality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ultramae_monai.data import load_ultrasound
from ultramae_monai.errors import NotUltrasoundError

FRAMES = np.arange(3 * 16 * 20, dtype=np.uint8).reshape(3, 16, 20)


def write_cine(path: Path, modality: str = "US") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.NumberOfFrames, ds.Rows, ds.Columns = FRAMES.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 40.0
    ds.PixelData = FRAMES.tobytes()
    major = int(pydicom.__version__.split(".")[0])
    kwargs = {"enforce_file_format": True} if major >= 3 else {"write_like_original": False}
    if major < 3:
        ds.is_little_endian, ds.is_implicit_VR = True, False
    pydicom.dcmwrite(str(path), ds, **kwargs)
    return path


def test_cine_frames_and_selection(tmp_path):
    cine = load_ultrasound(write_cine(tmp_path / "cine.dcm"))
    assert tuple(cine.shape) == (1, 3, 16, 20)
    np.testing.assert_array_equal(cine[0].numpy(), FRAMES.astype(np.float32))
    picked = load_ultrasound(tmp_path / "cine.dcm", start=1, stride=1, clip_length=2)
    np.testing.assert_array_equal(picked[0].numpy(), FRAMES[1:3].astype(np.float32))


def test_other_modality_is_refused(tmp_path):
    with pytest.raises(NotUltrasoundError, match="CT"):
        load_ultrasound(write_cine(tmp_path / "ct.dcm", modality="CT"))
