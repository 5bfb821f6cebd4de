"""DICOM ultrasound stills and cines as channel-first ``MetaTensor``s (``docs/conventions.md``).

Why not MONAI's ``PydicomReader``: for a multi-frame ultrasound it returns ``(rows, frames, cols)``, leaves
PALETTE COLOR as LUT indices, decodes every frame even when a 16-frame clip is wanted, and ignores the
``SequenceOfUltrasoundRegions`` that carry the physical spacing. This reader uses pydicom 3's frame-level
decoding (only the requested frames are decompressed), pydicom's own palette and colour-space code, and returns
a still ``(C, H, W)`` or a cine ``(C, T, H, W)``, grey (BT.601 luma) by default or RGB on request.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import MetaTensor
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

try:
    from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder
except ImportError:  # pydicom 2.x (the MONAI Label environment, scripts/venv_label.sh): whole-dataset decoding
    from ultramae_monai.data.dicom_pydicom2 import apply_color_lut, convert_color_space, get_decoder

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, MetaKeys, make_metatensor
from ultramae_monai.data.frame_selection import frames_of_file
from ultramae_monai.data.reader_base import DicomCapableReader, channels_first, existing_file
from ultramae_monai.errors import (
    NotUltrasoundError,
    UltraMAEError,
    UnreadableFileError,
    UnsupportedCodecError,
)

__all__ = [
    "DICOM_SUFFIXES",
    "US_MODALITIES",
    "US_REGIONS",
    "US_REGION_BOX",
    "UltrasoundDicomReader",
    "dicom_frame_timing",
    "dicom_regions",
    "dicom_spacing",
    "is_dicom_file",
    "read_dicom",
]

DICOM_SUFFIXES = ("dcm", "dicom", "dic")
US_MODALITIES = frozenset({"US", "IVUS"})
US_REGIONS = MetaKeys.US_REGIONS
US_REGION_BOX = "us_region_box"  # meta key: the box of the 2D tissue region that gave the spacing
TRANSFER_SYNTAX = "transfer_syntax"  # meta key: transfer syntax name

_CM = 3  # PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15)
_TISSUE_2D = 1  # RegionSpatialFormat 1 = 2D (B-mode tissue or flow)
_RGB_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
_GREY_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})


def is_dicom_file(path: str | PathLike) -> bool:
    """DICOM Part 10 by content: ``DICM`` at byte 128 (whatever the file is called)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _why_no_image(path: Path) -> str:
    """Why a file parsed as DICOM holds no image: cut off (in the header or the pixel data), or not DICOM."""
    size = path.stat().st_size
    if not is_dicom_file(path):
        return "not a DICOM file (no DICM preamble, no image dataset)"
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return f"truncated or corrupt DICOM: the header cannot be parsed ({size} bytes, DICM preamble present)"
    if "Rows" in header and "Columns" in header:
        return f"truncated DICOM: the pixel data is cut off ({size} bytes; the header is complete)"
    if len(header) == 0:
        return f"truncated DICOM: the file ends after the preamble ({size} bytes)"
    return f"truncated DICOM, or not an image object: no Rows/Columns in the header ({size} bytes)"


def _open(path: str | PathLike) -> Dataset:
    """Parse the header; pixel data stays on disk until the frames are picked (``defer_size``)."""
    p = existing_file(path)
    try:
        try:
            ds = pydicom.dcmread(p, defer_size="256 KB")
        except InvalidDicomError:  # no preamble/file meta: accept a bare dataset that has an image in it
            ds = pydicom.dcmread(p, defer_size="256 KB", force=True)
    except Exception as e:  # pydicom raises bare struct/EOF/Value errors on truncated or corrupt headers
        raise UnreadableFileError(f"corrupt or truncated DICOM header ({type(e).__name__}: {e})", p) from e
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableFileError(_why_no_image(p), p)
    if "TransferSyntaxUID" not in getattr(
        ds, "file_meta", {}
    ):  # a bare dataset is uncompressed, in the encoding it was parsed with
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _num_frames(ds: Dataset, path: str | PathLike) -> int:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise UnreadableFileError(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}", path) from e
    if n < 1:
        raise UnreadableFileError(f"invalid NumberOfFrames {n}", path)
    return n


def dicom_regions(ds: Dataset) -> list[dict[str, Any]]:
    """The ``SequenceOfUltrasoundRegions`` items: box ``[r0, c0, r1, c1)``, format, units and mm per pixel."""
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            box = [
                int(item.RegionLocationMinY0),
                int(item.RegionLocationMinX0),
                int(item.RegionLocationMaxY1) + 1,
                int(item.RegionLocationMaxX1) + 1,
            ]
        except (AttributeError, TypeError, ValueError):
            continue  # a region without its location cannot bound anything
        units_x, units_y = item.get("PhysicalUnitsXDirection"), item.get("PhysicalUnitsYDirection")
        dx, dy = item.get("PhysicalDeltaX"), item.get("PhysicalDeltaY")
        in_cm = units_x == _CM and units_y == _CM and dx is not None and dy is not None
        regions.append(
            {
                "box": box,
                "spatial_format": int(item.get("RegionSpatialFormat", 0) or 0),
                "data_type": int(item.get("RegionDataType", 0) or 0),
                # PhysicalDelta is cm per pixel; a negative delta only flips the axis direction
                "spacing_mm": [abs(float(dy)) * 10.0, abs(float(dx)) * 10.0] if in_cm else None,
            }
        )
    return regions


def _tissue_region(regions: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest 2D region with a physical (cm) spacing: the B-mode image that the spacing belongs to."""
    spatial = [r for r in regions if r["spacing_mm"] is not None and r["spatial_format"] == _TISSUE_2D]
    spatial = spatial or [r for r in regions if r["spacing_mm"] is not None]
    if not spatial:
        return None
    return max(spatial, key=lambda r: (r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1]))


def dicom_spacing(ds: Dataset, regions: Sequence[dict[str, Any]] | None = None) -> list[float]:
    """``[row, col]`` mm per pixel: the ultrasound region's physical deltas, else PixelSpacing, else NaN."""
    tissue = _tissue_region(dicom_regions(ds) if regions is None else regions)
    if tissue is not None:
        return list(tissue["spacing_mm"])
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            try:
                return [float(value[0]), float(value[1])]
            except (TypeError, ValueError):
                continue
    return [float("nan"), float("nan")]


def dicom_frame_timing(ds: Dataset) -> tuple[float, float]:
    """``(fps, frame_time_ms)`` from FrameTime, FrameTimeVector, CineRate or RecommendedDisplayFrameRate.

    FrameTime (the acquisition interval) wins over the display rates; NaN when the file has none.
    """
    ms = float("nan")
    try:
        if ds.get("FrameTime") not in (None, ""):
            ms = float(ds.FrameTime)
        elif ds.get("FrameTimeVector") not in (None, ""):
            vector = np.asarray([float(v) for v in ds.FrameTimeVector][1:])  # the first entry is 0 by definition
            ms = float(vector.mean()) if vector.size else float("nan")
        else:
            for key in ("CineRate", "RecommendedDisplayFrameRate"):
                if ds.get(key) not in (None, "") and float(ds.get(key)) > 0:
                    ms = 1000.0 / float(ds.get(key))
                    break
    except (TypeError, ValueError):
        ms = float("nan")
    if not np.isfinite(ms) or ms <= 0:
        return float("nan"), float("nan")
    return 1000.0 / ms, ms


def _check_modality(ds: Dataset, path: str | PathLike, allow_any_modality: bool) -> str:
    modality = str(ds.get("Modality", "") or "").upper()
    if not allow_any_modality and modality not in US_MODALITIES:
        raise NotUltrasoundError(
            f"modality is {modality or 'missing'!r}, not ultrasound (pass allow_any_modality=True to read it)", path
        )
    return modality


def _decoder(ds: Dataset, path: str | PathLike) -> Any:
    """pydicom's decoder for the file's transfer syntax, or UnsupportedCodecError when no plugin can run it."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        raise UnreadableFileError("no Transfer Syntax UID in the file meta", path)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as e:
        raise UnsupportedCodecError(f"no pydicom decoder for transfer syntax {tsyntax.name}", path) from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise UnsupportedCodecError(f"transfer syntax {tsyntax.name} needs {missing}", path)
    return decoder


def _decode(ds: Dataset, path: str | PathLike, indices: np.ndarray) -> tuple[np.ndarray, str]:
    """Decode only the frames ``indices`` (sorted, unique): ``(T, H, W[, 3])`` and the decoded colour space."""
    if "PixelData" not in ds:
        size = Path(path).stat().st_size
        raise UnreadableFileError(f"no pixel data (the file ends after the header at {size} bytes: truncated?)", path)
    decoder = _decoder(ds, path)
    frames, photometric = [], str(ds.get("PhotometricInterpretation", ""))
    try:
        for arr, props in decoder.iter_array(ds, indices=[int(i) for i in indices]):
            frames.append(arr)
            photometric = str(props.get("photometric_interpretation", photometric))
    except UltraMAEError:
        raise
    except Exception as e:  # every pydicom / plugin failure: truncated pixel data, corrupt codestream, ...
        if "less than expected" in str(e) or isinstance(e, EOFError):
            raise UnreadableFileError(f"truncated DICOM: the pixel data is cut off ({e})", path) from e
        raise UnreadableFileError(f"cannot decode pixel data ({type(e).__name__}: {e})", path) from e
    return np.stack(frames), photometric


def _to_display(pixels: np.ndarray, photometric: str, ds: Dataset, path: str | PathLike) -> tuple[np.ndarray, bool]:
    """Decoded pixels to grey or RGB, whichever the file holds: ``(pixels, is_rgb)``."""
    try:
        if photometric == "PALETTE COLOR":
            return apply_color_lut(pixels, ds), True
        if photometric in ("YBR_FULL", "YBR_FULL_422"):  # pydicom converts these already; kept for raw decoders
            return convert_color_space(pixels, photometric, "RGB"), True
    except Exception as e:
        raise UnreadableFileError(f"cannot convert {photometric} to RGB ({type(e).__name__}: {e})", path) from e
    if photometric == "MONOCHROME1":  # 0 is white: invert within the stored bit depth
        bits = int(ds.get("BitsStored", pixels.dtype.itemsize * 8))
        if int(ds.get("PixelRepresentation", 0)) == 1:
            return (-1 - pixels.astype(np.int64)).astype(np.int32), False
        return ((1 << bits) - 1 - pixels.astype(np.int64)).astype(np.int64 if bits > 16 else np.int32), False
    if photometric in _GREY_PHOTOMETRICS:
        return pixels, False
    if photometric in _RGB_PHOTOMETRICS and pixels.shape[-1] == 3:
        return pixels, True
    raise UnsupportedCodecError(f"photometric interpretation {photometric!r} is not supported", path)


def read_dicom(
    path: str | PathLike,
    *,
    color: bool = False,
    start: int = 0,
    stride: int = 1,
    clip_length: int | None = None,
    max_frames: int | None = None,
    allow_any_modality: bool = False,
) -> MetaTensor:
    """Read a DICOM ultrasound: a single frame as a still ``(C, H, W)``, a multi-frame as a cine ``(C, T, H, W)``.

    Args:
        path: DICOM Part 10 file (any suffix).
        color: RGB (``C = 3``) instead of BT.601 luma grey (``C = 1``); palette, YBR and MONOCHROME1 are
            converted first, so grey and colour show the same picture.
        start, stride, clip_length, max_frames: frame selection of a cine, see
            :func:`~ultramae_monai.data.frame_selection.frame_indices`; only those frames are decoded. Ignored for stills.
        allow_any_modality: read non-ultrasound modalities too (otherwise NotUltrasoundError).

    Raises:
        UnreadableFileError: missing, empty, truncated or corrupt file, or no pixel data.
        UnsupportedCodecError: compressed with a codec no installed plugin decodes, or an unknown photometric.
        NotUltrasoundError: the modality is not US (unless ``allow_any_modality``).
        InvalidInputError: a frame selection outside the cine.
    """
    ds = _open(path)
    modality = _check_modality(ds, path, allow_any_modality)
    n = _num_frames(ds, path)
    is_cine = n > 1
    idx = frames_of_file(n, path, start, stride, clip_length, max_frames) if is_cine else np.zeros(1, np.int64)
    needed = np.unique(idx)
    decoded, photometric = _decode(ds, path, needed)
    pixels, is_rgb = _to_display(decoded, photometric, ds, path)
    if needed.size != idx.size:  # restore repeats (a clip padded with its last frame)
        pixels = pixels[np.searchsorted(needed, idx)]
    array = channels_first(pixels if is_cine else pixels[0], is_rgb, color)
    regions = dicom_regions(ds)
    tissue = _tissue_region(regions)
    fps, frame_ms = dicom_frame_timing(ds)
    meta: dict[str, Any] = {
        "filename_or_obj": str(path),
        MetaKeys.SOURCE: "dicom",
        MetaKeys.MODALITY: modality,
        MetaKeys.PHOTOMETRIC: str(ds.get("PhotometricInterpretation", "")),
        MetaKeys.COLOR: "rgb" if color else "grey",
        MetaKeys.SPACING: dicom_spacing(ds, regions),
        MetaKeys.SOURCE_FRAMES: n,
        MetaKeys.FRAME_INDICES: idx.tolist(),
        MetaKeys.NUM_FRAMES: int(idx.size),
        TRANSFER_SYNTAX: ds.file_meta.TransferSyntaxUID.name,
        US_REGIONS: [r["box"] for r in regions],
    }
    if tissue is not None:
        meta[US_REGION_BOX] = tissue["box"]
    if is_cine:
        meta[MetaKeys.FPS], meta[MetaKeys.FRAME_TIME_MS] = fps, frame_ms
    return make_metatensor(array, KIND_CINE if is_cine else KIND_STILL, meta)


class UltrasoundDicomReader(DicomCapableReader):
    """MONAI reader for DICOM ultrasound: ``LoadImage(reader=UltrasoundDicomReader())`` gives ``(C, [T,] H, W)``.

    The constructor takes :func:`read_dicom`'s options (``color``, ``start``, ``stride``, ``clip_length``,
    ``max_frames``, ``allow_any_modality``); several files given at once are stacked on channels.
    """

    suffixes = DICOM_SUFFIXES
    read_fn = staticmethod(read_dicom)

    def matches_content(self, path: str | PathLike) -> bool:
        return is_dicom_file(path)  # PACS exports often have no suffix
