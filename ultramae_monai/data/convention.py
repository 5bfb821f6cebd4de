"""The one array convention shared by every reader, transform and network in ultramae_monai.

All arrays are channel-first ``MetaTensor``s (see ``docs/conventions.md``):

============  ==================  ==============================================
kind          layout              notes
============  ==================  ==============================================
still         ``(C, H, W)``       H = rows (depth / beam axis, top = transducer)
cine / video  ``(C, T, H, W)``    T = frames, time before space as in torch video
volume        ``(C, H, W, D)``    MONAI's spatial order, affine in ``meta``
============  ==================  ==============================================

``C`` is 1 (grey, the default) or 3 (RGB, on request). Intensities are float32 in the file's
native range (0..255 for 8-bit) unless a transform rescales them. The keys below are written by
every reader so that later steps (FOV masking, confidence maps, curation manifests, DICOM SEG
export) never have to guess.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from ultramae_monai.errors import InvalidInputError

__all__ = [
    "INTENSITY_MEAN",
    "INTENSITY_STD",
    "KIND_CINE",
    "KIND_STILL",
    "KIND_VOLUME",
    "LAYOUTS",
    "MetaKeys",
    "kind_of",
    "make_metatensor",
    "spatial_affine",
]

# Mean and standard deviation of curated ultrasound intensities in [0, 1], measured over a curated pool of
# ../shared/data (HC18, BUSI, POCUS, RESECT) by scripts/intensity_stats.py: the input normalisation of every
# bundle, stored in checkpoint metadata so fine-tuning and deployment normalise as pretraining did.
INTENSITY_MEAN = 0.207
INTENSITY_STD = 0.183

KIND_STILL = "still"
KIND_CINE = "cine"
KIND_VOLUME = "volume"
LAYOUTS = {KIND_STILL: "CHW", KIND_CINE: "CTHW", KIND_VOLUME: "CHWD"}


class MetaKeys:
    """Metadata keys set by ultramae_monai readers (besides MONAI's own ``affine``, ``filename_or_obj``)."""

    KIND = "us_kind"  # "still" | "cine" | "volume"
    LAYOUT = "us_layout"  # "CHW" | "CTHW" | "CHWD"
    SOURCE = "us_source"  # "dicom" | "video" | "image" | "volume"
    MODALITY = "modality"  # DICOM modality, "US" for non-DICOM ultrasound files
    PHOTOMETRIC = "photometric"  # photometric interpretation of the stored pixels (before conversion)
    COLOR = "us_color"  # "grey" | "rgb": what the returned channels hold
    SPACING = "spacing"  # physical spacing in mm per spatial axis (H, W) or (H, W, D); NaN if unknown
    FPS = "fps"  # frames per second (cine/video), NaN if unknown
    FRAME_TIME_MS = "frame_time_ms"  # ms between frames, NaN if unknown
    NUM_FRAMES = "num_frames"  # frames in the returned array
    SOURCE_FRAMES = "source_num_frames"  # frames in the file
    FRAME_INDICES = "frame_indices"  # which source frames were returned
    FOV_BOX = "fov_box"  # [row0, col0, row1, col1) of the scan region, when known
    US_REGIONS = "us_regions"  # [r0, c0, r1, c1) box of every DICOM SequenceOfUltrasoundRegions item
    FOV_MASK = "fov_mask"  # key under which dict transforms store the FOV mask
    ORIGINAL_SHAPE = "original_shape"
    FRAMES_AXIS = "us_frames_axis"  # "last": a 2D model's frames were the file's last axis (multi-frame NIfTI)


def kind_of(x: torch.Tensor | np.ndarray) -> str:
    """Kind of a channel-first array: the metadata wins, else 3 dims = still, 4 dims = cine."""
    if isinstance(x, MetaTensor) and MetaKeys.KIND in x.meta:
        return str(x.meta[MetaKeys.KIND])
    if x.ndim == 3:
        return KIND_STILL
    if x.ndim == 4:
        return KIND_CINE
    raise InvalidInputError(
        f"expected channel-first (C,H,W), (C,T,H,W) or (C,H,W,D) with metadata, got shape {tuple(x.shape)}"
    )


def spatial_affine(spacing: tuple[float, ...]) -> torch.Tensor:
    """A diagonal affine for 2D (rows, cols) pixels, so MONAI spatial transforms keep physical size."""
    nd = len(spacing)
    aff = torch.eye(nd + 1, dtype=torch.float64)
    for i, s in enumerate(spacing):
        aff[i, i] = float(s) if np.isfinite(s) and s > 0 else 1.0
    return aff


def make_metatensor(
    array: np.ndarray | torch.Tensor,
    kind: str,
    meta: dict[str, Any] | None = None,
    affine: torch.Tensor | np.ndarray | None = None,
) -> MetaTensor:
    """Wrap a channel-first array with the convention's metadata filled in (float32)."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(LAYOUTS)}")
    if isinstance(array, np.ndarray):
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # Pillow's grey images are read-only views: torch warns on those
            array = array.copy()
    t = torch.as_tensor(array)
    if t.ndim != len(LAYOUTS[kind]):
        raise ValueError(f"{kind} arrays are {LAYOUTS[kind]}, got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    m: dict[str, Any] = dict(meta or {})
    m[MetaKeys.KIND] = kind
    m[MetaKeys.LAYOUT] = LAYOUTS[kind]
    spatial = t.shape[1:] if kind != KIND_CINE else t.shape[2:]
    m.setdefault(MetaKeys.SPACING, [float("nan")] * len(spatial))
    m.setdefault(MetaKeys.ORIGINAL_SHAPE, list(t.shape))
    if kind == KIND_CINE:
        m.setdefault(MetaKeys.NUM_FRAMES, int(t.shape[1]))
        m.setdefault(MetaKeys.FPS, float("nan"))
        m.setdefault(MetaKeys.FRAME_TIME_MS, float("nan"))
    if affine is None:
        # a cine's time axis is a spatial axis to MONAI: give it unit spacing so the affine is 4x4
        sp = tuple(m[MetaKeys.SPACING])
        affine = spatial_affine((1.0, *sp[-2:]) if kind == KIND_CINE else sp)
    m["affine"] = torch.as_tensor(affine, dtype=torch.float64)
    return MetaTensor(t, meta=m)
