"""The app's human-readable outputs: the classification result as JSON, and PNG overlays for a quick look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ultramae_monai.deploy.results import InstanceResult

__all__ = ["OVERLAY_COLORS", "classification_record", "overlay_frames", "preview_frames", "write_overlays"]

OVERLAY_COLORS = np.array([[255, 64, 64], [64, 200, 255], [255, 210, 0], [120, 255, 120]], np.float32)
_ALPHA = 0.4


def classification_record(instance: InstanceResult, bundle: str) -> dict:
    """Per-frame probabilities and the instance's label (the class of the mean probability over frames)."""
    names, probs = instance.classifications[bundle]
    mean = probs.mean(axis=0)
    return {
        "bundle": bundle,
        "sop_instance_uid": instance.sop_instance_uid,
        "series_instance_uid": str(instance.header.SeriesInstanceUID),
        "file": instance.path,
        "class_names": names,
        "label": names[int(mean.argmax())],
        "probabilities": {n: float(p) for n, p in zip(names, mean, strict=True)},
        "frames": [[float(v) for v in row] for row in probs],
    }


def overlay_frames(num_frames: int, max_frames: int) -> list[int]:
    """Evenly spread frame indices, at most ``max_frames`` (every frame when there are fewer)."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return sorted({int(i) for i in np.linspace(0, num_frames - 1, max_frames).round()})


def _to_rgb8(frame: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` grey or RGB, any range, to ``(H, W, 3)`` uint8 (0..255 kept as is, else min-max)."""
    img = frame.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 255:
        img = (img - lo) / max(hi - lo, 1e-6) * 255
    img = np.moveaxis(img, 0, -1)
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]


def preview_frames(image: torch.Tensor, max_frames: int) -> dict[int, np.ndarray]:
    """The frames the overlays will show, as ``(H, W, 3)`` uint8: all a cine needs to keep for its PNGs."""
    array = image.detach().cpu().numpy()
    frames = array[:, None] if array.ndim == 3 else array  # (C, T, H, W)
    return {
        t: np.clip(_to_rgb8(frames[:, t]), 0, 255).astype(np.uint8) for t in overlay_frames(frames.shape[1], max_frames)
    }


def write_overlays(instance: InstanceResult, bundle: str, folder: Path) -> list[Path]:
    """PNG of each preview frame with the label map blended in colour (label ``k`` in ``OVERLAY_COLORS[k-1]``)."""
    _, maps = instance.segmentations[bundle]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for t, frame in sorted(instance.preview.items()):
        rgb = frame.astype(np.float32)
        for k in range(1, int(maps[t].max()) + 1):
            sel = maps[t] == k
            rgb[sel] = (1 - _ALPHA) * rgb[sel] + _ALPHA * OVERLAY_COLORS[(k - 1) % len(OVERLAY_COLORS)]
        path = folder / f"frame_{t:04d}.png"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
        written.append(path)
    return written
