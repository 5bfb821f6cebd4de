"""What the label app accepts: readable 2D ultrasound images and cines, and label masks that fit them.

Checked before the bundle's loader runs, because MONAI's ``LoadImage`` falls back to its other readers when
the ultrasound reader refuses a file (a CT DICOM would then be segmented as if it were ultrasound). Plain image
files (PNG, JPEG, ...) carry no modality and are taken as ultrasound; DICOM files must say ``US``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ultramae_monai.data.dicom_reader import US_MODALITIES
from ultramae_monai.data.load import SOURCE_DICOM, SOURCE_IMAGE, SOURCE_VOLUME, load_ultrasound, source_type
from ultramae_monai.errors import InvalidInputError, NotUltrasoundError, UnreadableFileError

__all__ = ["LABEL_SUFFIXES", "check_ultrasound_file", "image_size", "read_label_mask", "single_instance"]

LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".nrrd", ".npy")


def single_instance(path: str | os.PathLike) -> str:
    """A DICOMweb datastore hands a series over as a folder of instances: its one file (an ultrasound image or
    cine is one instance); a plain file is returned as is."""
    p = Path(path)
    if not p.is_dir():
        return str(p)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    if len(files) != 1:
        raise InvalidInputError(f"a series of {len(files)} files: send one image or cine instance", p)
    return str(files[0])


def check_ultrasound_file(path: str | os.PathLike) -> str:
    """The file's source type (``dicom``, ``image``, ``video``); raises when it is unreadable or not ultrasound.

    Raises:
        UnreadableFileError: missing, empty, in no supported format, or a corrupt DICOM header.
        NotUltrasoundError: a DICOM of another modality.
        InvalidInputError: a 3D volume (the app segments 2D images and cines).
    """
    kind = source_type(path)
    if kind == SOURCE_VOLUME:
        raise InvalidInputError("3D volumes are not segmented by this app (2D images and cines only)", path)
    if kind == SOURCE_DICOM:
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as e:  # pydicom raises bare struct/EOF/Value errors on corrupt headers
            raise UnreadableFileError(f"corrupt or truncated DICOM header ({type(e).__name__}: {e})", path) from e
        modality = str(ds.get("Modality", "") or "").upper()
        if modality not in US_MODALITIES:
            raise NotUltrasoundError(f"modality is {modality or 'missing'!r}, not ultrasound", path)
    return kind


def image_size(path: str | os.PathLike) -> tuple[int, ...]:
    """``(H, W)`` of a still or ``(T, H, W)`` of a cine, from the header where the format allows."""
    kind = check_ultrasound_file(path)
    if kind == SOURCE_IMAGE:
        try:
            with Image.open(path) as img:
                return (img.height, img.width)
        except Exception as e:  # Pillow raises many types for corrupt files
            raise UnreadableFileError(f"not an image Pillow can read ({type(e).__name__})", path) from e
    x = load_ultrasound(path)
    return tuple(int(s) for s in x.shape[1:])


def read_label_mask(path: str | os.PathLike, size: tuple[int, ...]) -> np.ndarray:
    """A label file as an integer mask of exactly ``size`` (the image's ``(H, W)`` or ``(T, H, W)``).

    PNG/TIFF/BMP masks are ``(H, W)``; NIfTI/NRRD masks as 3D Slicer saves them (column, row[, frame]) are
    transposed back; singleton axes are dropped. Raises ``InvalidInputError`` naming both sizes when the label
    does not fit its image, ``UnreadableFileError`` when it cannot be read.
    """
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            arr = np.asarray(nib.load(str(p)).dataobj)
            arr = arr.transpose(*reversed(range(arr.ndim)))  # (x=col, y=row, z) -> (z, row, col)
        elif name.endswith(".nrrd"):
            import nrrd

            arr, _ = nrrd.read(str(p))
            arr = arr.transpose(*reversed(range(arr.ndim)))
        elif name.endswith(".npy"):
            arr = np.load(p, allow_pickle=False)
        else:
            with Image.open(p) as img:
                arr = np.asarray(img)
                if arr.ndim == 3:  # an RGB(A) rendering of a mask: any non-zero colour is the structure
                    arr = (arr[..., :3] > 0).any(axis=-1).astype(np.uint8)
    except Exception as e:  # the parsers raise many types for corrupt files
        raise UnreadableFileError(f"cannot read the label ({type(e).__name__}: {e})", path) from e
    arr = np.squeeze(arr)
    want = tuple(s for s in size if s != 1)
    if arr.shape != want:
        raise InvalidInputError(
            f"label size {'x'.join(map(str, arr.shape))} does not match its image's {'x'.join(map(str, want))}", path
        )
    if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InvalidInputError("label values must be whole numbers (class indices)", path)
    if arr.min() < 0 or arr.max() > 255:
        raise InvalidInputError(f"label values must lie in 0..255, got {arr.min()}..{arr.max()}", path)
    return arr.astype(np.uint8).reshape(size)
