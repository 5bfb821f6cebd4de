"""Reconstruction grids (input | masked | prediction | target) for TensorBoard and PNG files.

Loss curves alone hide the classic MAE failure (a blurry mean image with a falling loss); looking at the
reconstructions of the same fixed samples over training shows it at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["COLUMNS", "reconstruction_grid", "save_grid_png"]

COLUMNS = ("input", "masked", "pred", "target")


def _frame(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` from images or the middle frame of ``(B, C, T, H, W)`` clips; grey or RGB."""
    x = x.detach().float().cpu()
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    return x[:, :3] if x.shape[1] >= 3 else x[:, :1]


def _stretch(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max per sample over ``ref`` (default ``x``), so normalised targets (norm_pixel, CWUS) show too."""
    ref = x if ref is None else ref
    lo = ref.amin(dim=(1, 2, 3), keepdim=True)
    hi = ref.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def reconstruction_grid(images: dict[str, torch.Tensor], max_samples: int = 4, pad: int = 2) -> torch.Tensor:
    """A ``(C, rows x H, 4 x W)`` float grid in ``[0, 1]``: one row per sample, columns :data:`COLUMNS`.

    ``images`` holds ``input`` plus the ``masked``, ``pred`` and ``target`` of ``UltraMAE.reconstruct``. With
    ``visible`` (1 on the tokens the encoder saw) the prediction column shows, as in MAE's figures, the visible
    input pasted over the prediction of the masked tokens (predictions of visible tokens are not trained).
    Input, masked and prediction share the input's grey range; the target has its own.
    """
    frames = {k: _frame(images[k][:max_samples]) for k in COLUMNS}
    if "visible" in images:
        vis = _frame(images["visible"][:max_samples])
        frames["pred"] = frames["input"] * vis + frames["pred"] * (1 - vis)
    cols = [_stretch(frames[k], frames["input"] if k != "target" else None) for k in COLUMNS]
    channels = max(c.shape[1] for c in cols)
    cols = [c.expand(-1, channels, -1, -1) for c in cols]
    b, _, h, w = cols[0].shape
    grid = torch.ones(channels, b * (h + pad) + pad, len(cols) * (w + pad) + pad)
    for r in range(b):
        for c, col in enumerate(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[:, y : y + h, x : x + w] = col[r]
    return grid


def save_grid_png(grid: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a :func:`reconstruction_grid` as an 8-bit PNG (grey or RGB)."""
    arr = (grid.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(np.moveaxis(arr, 0, -1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
