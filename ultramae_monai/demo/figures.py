"""Pictures of the demo, drawn with Pillow only (no plotting library): labelled panels, grids, overlays, curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["as_rgb", "grid", "line_plot", "overlay", "save_rgb"]

_GAP = 4
_LABEL_H = 14
_WHITE = (255, 255, 255)
# matplotlib's viridis sampled at 0, 0.25, 0.5, 0.75, 1
_VIRIDIS_AT = np.linspace(0.0, 1.0, 5)
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]) / 255.0


def as_rgb(image: np.ndarray | torch.Tensor, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "grey") -> np.ndarray:
    """A 2D array to ``(H, W, 3)`` uint8, linearly from ``[vmin, vmax]``; ``cmap`` ``grey`` or ``viridis``."""
    a = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float64)
    t = np.clip((a - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    if cmap == "grey":
        rgb = np.stack([t, t, t], axis=-1)
    elif cmap == "viridis":  # perceptually ordered dark blue -> green -> yellow, for maps in [0, 1]
        rgb = np.stack([np.interp(t, _VIRIDIS_AT, _VIRIDIS[:, k]) for k in range(3)], axis=-1)
    else:
        raise ValueError(f"unknown colour map {cmap!r}")
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(
    image: np.ndarray, mask: np.ndarray, colour: Sequence[int] = (0, 220, 90), alpha: float = 0.4
) -> np.ndarray:
    """A grey image in [0, 1] with ``mask`` tinted in ``colour`` and its outline drawn at full strength."""
    rgb = as_rgb(image).astype(np.float64)
    m = np.asarray(mask, dtype=bool)
    c = np.asarray(colour, dtype=np.float64)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * c
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    rgb[m & ~inner] = c
    return rgb.astype(np.uint8)


def _fit(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale a ``(H, W, 3)`` tile to fit a ``height x width`` cell (nearest, so patches stay crisp), centred."""
    scale = min(height / tile.shape[0], width / tile.shape[1])
    size = (max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale)))
    small = np.asarray(Image.fromarray(tile).resize(size, Image.Resampling.NEAREST))
    cell = np.full((height, width, 3), 255, np.uint8)
    r0, c0 = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    cell[r0 : r0 + small.shape[0], c0 : c0 + small.shape[1]] = small
    return cell


def grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    titles: Sequence[str] = (),
    height: int = 160,
    max_aspect: float = 1.6,
) -> Path:
    """Save a grid of RGB tiles in equal cells (``height`` tall, as wide as the widest tile up to ``max_aspect``),
    with column ``titles`` on top; returns ``path``."""
    aspect = min(max(t.shape[1] / t.shape[0] for row in rows for t in row), max_aspect)
    width = round(height * aspect)
    ncol = max(len(r) for r in rows)
    top = _LABEL_H + _GAP if titles else 0
    canvas = Image.new("RGB", ((width + _GAP) * ncol + _GAP, top + (height + _GAP) * len(rows) + _GAP), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for j in range(ncol):
        x = _GAP + j * (width + _GAP)
        if j < len(titles):
            draw.text((x, 2), titles[j], fill=(0, 0, 0))
        for i, row in enumerate(rows):
            if j < len(row):
                canvas.paste(Image.fromarray(_fit(row[j], height, width)), (x, top + _GAP + i * (height + _GAP)))
    path = Path(path)
    canvas.save(path)
    return path


def line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str,
    xlabel: str = "step",
    size: tuple[int, int] = (560, 300),
    log_y: bool = False,
) -> Path:
    """Save a plot of named ``(x, y)`` series (one colour each, legend top right); returns ``path``."""
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    w, h = size
    left, right, top, bottom = 58, 12, 24, 30
    img = Image.new("RGB", size, _WHITE)
    draw = ImageDraw.Draw(img)
    pts = [(x, y) for s in series.values() for x, y in s if np.isfinite(y) and (y > 0 or not log_y)]
    draw.text((left, 4), title, fill=(0, 0, 0))
    if pts:
        tf = np.log10 if log_y else (lambda v: v)
        xs = [p[0] for p in pts]
        ys = [float(tf(p[1])) for p in pts]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1e-9)
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def px(x: float, y: float) -> tuple[float, float]:
            return (
                left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (float(tf(y)) - y0) / (y1 - y0) * (h - top - bottom),
            )

        draw.rectangle((left, top, w - right, h - bottom), outline=(160, 160, 160))
        for k in range(5):
            yv = y0 + (y1 - y0) * k / 4
            yy = h - bottom - (h - top - bottom) * k / 4
            draw.line((left - 3, yy, left, yy), fill=(0, 0, 0))
            draw.text((2, yy - 6), f"{10**yv if log_y else yv:.3g}", fill=(0, 0, 0))
        draw.text((left, h - bottom + 4), f"{x0:g}", fill=(0, 0, 0))
        draw.text((w - right - 40, h - bottom + 4), f"{x1:g}", fill=(0, 0, 0))
        draw.text(((w - len(xlabel) * 6) / 2, h - bottom + 12), xlabel, fill=(0, 0, 0))
        for k, (name, s) in enumerate(series.items()):
            c = colours[k % len(colours)]
            line = [px(x, y) for x, y in s if np.isfinite(y) and (y > 0 or not log_y)]
            if len(line) > 1:
                draw.line(line, fill=c, width=2)
            elif line:
                draw.ellipse((line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2), fill=c)
            draw.text((w - right - 150, top + 4 + 12 * k), name, fill=c)
    path = Path(path)
    img.save(path)
    return path


def save_rgb(rgb: np.ndarray, path: str | Path) -> Path:
    """Save an ``(H, W, 3)`` uint8 array as PNG; returns ``path``."""
    path = Path(path)
    Image.fromarray(rgb).save(path)
    return path
