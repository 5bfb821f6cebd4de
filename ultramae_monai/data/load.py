"""One entry point for every ultrasound file: DICOM, video, PNG/JPEG still or 3D volume.

Why by content first: PACS exports name DICOM files anything (or nothing), and screenshots are saved with the
wrong suffix; the magic bytes (``DICM`` at byte 128, PNG/JPEG/BMP/TIFF/GIF signatures) decide before the suffix
does, and a suffix-less file is tried as a bare DICOM dataset last. Each reader returns the one array convention
(``docs/conventions.md``), so callers never branch on the file type.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from monai.data import MetaTensor

from ultramae_monai.data.dicom_reader import DICOM_SUFFIXES, is_dicom_file, read_dicom
from ultramae_monai.data.image_reader import IMAGE_SUFFIXES, read_image
from ultramae_monai.data.reader_base import DicomCapableReader, existing_file, suffix_of
from ultramae_monai.data.video_reader import VIDEO_SUFFIXES, read_video
from ultramae_monai.data.volume_reader import VOLUME_SUFFIXES, read_volume
from ultramae_monai.errors import UnreadableFileError

__all__ = [
    "SOURCE_DICOM",
    "SOURCE_IMAGE",
    "SOURCE_VIDEO",
    "SOURCE_VOLUME",
    "SUPPORTED_SUFFIXES",
    "UltrasoundReader",
    "load_ultrasound",
    "source_type",
]

SOURCE_DICOM, SOURCE_IMAGE, SOURCE_VIDEO, SOURCE_VOLUME = "dicom", "image", "video", "volume"
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    *DICOM_SUFFIXES,
    *IMAGE_SUFFIXES,
    *VOLUME_SUFFIXES,
    *VIDEO_SUFFIXES,
)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", SOURCE_IMAGE),
    (b"\xff\xd8\xff", SOURCE_IMAGE),  # JPEG
    (b"II*\x00", SOURCE_IMAGE),  # TIFF, little endian
    (b"MM\x00*", SOURCE_IMAGE),  # TIFF, big endian
    (b"GIF87a", SOURCE_VIDEO),  # GIFs are (often animated) clips: the video reader handles one frame too
    (b"GIF89a", SOURCE_VIDEO),
)
_BY_SUFFIX = {
    **dict.fromkeys(DICOM_SUFFIXES, SOURCE_DICOM),
    **dict.fromkeys(IMAGE_SUFFIXES, SOURCE_IMAGE),
    **dict.fromkeys(VOLUME_SUFFIXES, SOURCE_VOLUME),
    **dict.fromkeys(VIDEO_SUFFIXES, SOURCE_VIDEO),
}


def _is_bare_dicom(p: Path) -> bool:
    """A DICOM dataset without the Part 10 preamble (old PACS exports): pydicom parses an image from it."""
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        return "Rows" in ds and "Columns" in ds
    except Exception:  # anything pydicom cannot parse is simply not DICOM here
        return False


def source_type(path: str | PathLike) -> str:
    """``dicom``, ``image``, ``video`` or ``volume``: by content, then suffix, then a bare-DICOM parse.

    Raises:
        UnreadableFileError: missing, empty, or in no supported format.
    """
    p = existing_file(path)
    if is_dicom_file(p):
        return SOURCE_DICOM
    with p.open("rb") as f:
        head = f.read(16)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    suffix = suffix_of(p)
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if _is_bare_dicom(p):
        return SOURCE_DICOM
    raise UnreadableFileError(
        f"unknown format (suffix {'.' + suffix if suffix else 'none'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)})",
        p,
    )


def load_ultrasound(
    path: str | PathLike,
    *,
    color: bool = False,
    start: int = 0,
    stride: int = 1,
    clip_length: int | None = None,
    max_frames: int | None = None,
    allow_any_modality: bool = False,
) -> MetaTensor:
    """Read any supported ultrasound file as a still ``(C, H, W)``, cine ``(C, T, H, W)`` or volume ``(C, H, W, D)``.

    Args:
        path: the file; its type comes from :func:`source_type`.
        color: RGB (``C = 3``) instead of BT.601 luma grey (``C = 1``).
        start, stride, clip_length, max_frames: frame selection for cines and videos
            (:func:`~ultramae_monai.data.frame_selection.frame_indices`); stills and volumes ignore them.
        allow_any_modality: DICOM only: read non-ultrasound modalities too.

    Raises:
        UnreadableFileError, UnsupportedCodecError, NotUltrasoundError, InvalidInputError: from the readers,
        always naming the file.
    """
    kind = source_type(path)
    frames = {"start": start, "stride": stride, "clip_length": clip_length, "max_frames": max_frames}
    if kind == SOURCE_DICOM:
        return read_dicom(path, color=color, allow_any_modality=allow_any_modality, **frames)
    if kind == SOURCE_VIDEO:
        return read_video(path, color=color, **frames)
    if kind == SOURCE_IMAGE:
        return read_image(path, color=color)
    return read_volume(path, color=color)


class UltrasoundReader(DicomCapableReader):
    """One MONAI reader for every ultrasound format: ``LoadImaged(keys, reader=UltrasoundReader())``.

    The constructor takes :func:`load_ultrasound`'s options; several files given at once are stacked on channels.
    """

    suffixes = SUPPORTED_SUFFIXES
    read_fn = staticmethod(load_ultrasound)

    def matches_content(self, path: str | PathLike) -> bool:
        return is_dicom_file(path)  # suffix-less PACS files
