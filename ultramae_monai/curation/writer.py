"""Compact, atomically written sample arrays for a curated set.

The pretraining loader memory-maps these files, so they are plain ``.npy`` (no compression to undo
per batch) in the smallest dtype that keeps the data: 8-bit ultrasound stays ``uint8`` (what nearly
every scanner exports), anything else becomes ``float16`` rescaled to ``[0, 1]``, confidence maps
are ``float16`` (they live in ``[0, 1]``; 11 mantissa bits are far below their own accuracy), and
scan-region masks are ``bool``. Long sides are optionally reduced (area averaging, no aliasing) so a
set curated for 224-px pretraining does not carry 1024-px frames.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ArrayWriter", "fit_long_side", "resize_spatial", "to_storage"]


def fit_long_side(shape: tuple[int, ...], max_side: int | None) -> tuple[int, ...]:
    """Spatial shape whose longest side is at most ``max_side``, aspect kept (unchanged if it fits)."""
    if not max_side or max(shape) <= max_side:
        return tuple(int(s) for s in shape)
    f = max_side / max(shape)
    return tuple(max(1, round(s * f)) for s in shape)


def resize_spatial(x: torch.Tensor, size: tuple[int, ...], mask: bool = False) -> torch.Tensor:
    """Resize the trailing ``len(size)`` axes of a channel-first array (area mean; masks keep pixels at least half inside).

    Area averaging is exact anti-aliasing for the integer-ish down-scalings used here and, unlike
    bilinear, never lets speckle alias into stripes.
    """
    nd = len(size)
    if tuple(x.shape[-nd:]) == tuple(size):
        return x
    lead = x.shape[:-nd]
    y = x.reshape(1, -1, *x.shape[-nd:]).float()
    y = F.interpolate(y, size=size, mode="area")
    y = y.reshape(*lead, *size)
    return y >= 0.5 if mask else y


def to_storage(x: torch.Tensor | np.ndarray, eight_bit: bool) -> tuple[np.ndarray, list[float] | None]:
    """``(array, intensity_range)``: uint8 for 8-bit sources, else float16 in [0, 1] and the [lo, hi] it maps."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if eight_bit:
        return np.clip(np.rint(a), 0, 255).astype(np.uint8), None
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return scaled.astype(np.float16), [lo, hi]


class ArrayWriter:
    """Writes ``<root>/<token[:2]>/<token><suffix>.npy``; file names are hashes, never source names."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path_for(self, token: str, suffix: str = "") -> Path:
        return self.root / token[:2] / f"{token}{suffix}.npy"

    def write(self, token: str, array: np.ndarray, suffix: str = "") -> Path:
        """Atomic write (temporary file then rename): a killed run never leaves half an array behind."""
        path = self.path_for(token, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
