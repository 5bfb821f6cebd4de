"""Crop windows of cached arrays: MAE's random-resized box, and the lazy slice-then-resize that reads only the box.

Used by :class:`~ultramae_monai.transforms.RandResizedCropd` (the bundle's crop) and by
:class:`~ultramae_monai.data.ManifestDataset` (``img_size``: whole-image evaluation items).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["crop_resize", "random_resized_box"]


def _uniform(rng: Any, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _integer(rng: Any, hi: int) -> int:
    """An integer in ``[0, hi)`` from a NumPy ``Generator`` or ``RandomState``."""
    return int(rng.integers(0, hi)) if hasattr(rng, "integers") else int(rng.randint(0, hi))


def random_resized_box(
    height: int,
    width: int,
    rng: Any,
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] | None = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(row0, col0, rows, cols)`` of a random crop; the whole image when ``rng`` is None (evaluation).

    ``ratio`` None keeps the image's own aspect ratio. After 10 failed draws the whole image is taken, as
    torchvision does.
    """
    if rng is None:
        return 0, 0, height, width
    area = height * width
    lo, hi = (width / height, width / height) if ratio is None else (ratio[0], ratio[1])
    log_ratio = (math.log(lo), math.log(hi))
    for _ in range(10):
        target = area * _uniform(rng, scale[0], scale[1])
        aspect = math.exp(_uniform(rng, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _integer(rng, height - h + 1), _integer(rng, width - w + 1), h, w
    return 0, 0, height, width


def crop_resize(x: Any, box: tuple[int, int, int, int], size: tuple[int, int], mode: str) -> torch.Tensor:
    """Slice the box (lazily on a memory map), then resize the last two axes; float32, or bool for ``nearest``."""
    r0, c0, h, w = box
    window = x[..., r0 : r0 + h, c0 : c0 + w]
    t = window if isinstance(window, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(window))
    lead = t.shape[:-2]
    flat = t.reshape(1, -1, h, w).float()
    if mode == "nearest":
        out = F.interpolate(flat, size=size, mode="nearest") > 0
    else:
        out = F.interpolate(flat, size=size, mode=mode, align_corners=False, antialias=True)
    return out.reshape(*lead, *size)
