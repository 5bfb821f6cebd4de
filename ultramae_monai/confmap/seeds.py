"""Source and sink nodes (the random walk's boundary conditions), as in MONAI's ``get_seed_and_labels``.

The source is the transducer row (value 1); the sinks (value 0) are chosen by ``sink_mode``:
``all`` the last row, ``mid`` its middle pixel, ``min`` its darkest pixels (ties kept, 10% of the width
excluded at each side, on the normalised image before attenuation), ``mask`` the non-zero pixels of a
user mask. A node that is both source and sink is a source, as in MONAI.

With a field-of-view mask the "rows" become per-scanline: the source of a column is its first FOV
pixel along the beam and its bottom its last one. Gaps inside a column are filled first
(:func:`column_fill`) so every free node is joined to a source along its scanline and the system stays
non-singular. Without a mask both definitions are MONAI's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SINK_MODES", "Seeds", "column_fill", "make_seeds"]

SINK_MODES = ("all", "mid", "min", "mask")


@dataclass(frozen=True)
class Seeds:
    """Dirichlet nodes: ``fixed`` marks seeds, ``value`` is 1 at sources and 0 elsewhere (both image-shaped)."""

    fixed: np.ndarray
    value: np.ndarray

    def held(self, fov: np.ndarray | None = None) -> np.ndarray:
        """The nodes that keep identity rows in the system: the seeds, and every node outside ``fov``."""
        return self.fixed if fov is None else self.fixed | ~fov


def column_fill(fov: np.ndarray) -> np.ndarray:
    """Fill every scanline (axis 0) of a FOV mask between its first and last pixel."""
    fov = np.asarray(fov, dtype=bool)
    from_top = np.logical_or.accumulate(fov, axis=0)
    from_bottom = np.logical_or.accumulate(fov[::-1], axis=0)[::-1]
    return from_top & from_bottom


def _ends(fov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last FOV index along axis 0 for every scanline (-1 where a scanline is empty)."""
    depth = fov.shape[0]
    has = fov.any(axis=0)
    top = np.where(has, np.argmax(fov, axis=0), -1)
    bottom = np.where(has, depth - 1 - np.argmax(fov[::-1], axis=0), -1)
    return top, bottom


def make_seeds(
    data: np.ndarray,
    sink_mode: str = "all",
    sink_mask: np.ndarray | None = None,
    fov: np.ndarray | None = None,
) -> Seeds:
    """Seeds for an image with the beam along axis 0 (2D or 3D); ``data`` is the normalised image.

    ``fov`` must already be column-filled. In 3D a "row" is the plane at a given depth and ``mid`` the
    centre scanline of the lateral plane.
    """
    if sink_mode not in SINK_MODES:
        raise ValueError(f"unknown sink_mode {sink_mode!r}; expected one of {SINK_MODES}")
    shape = data.shape
    fov_ = np.ones(shape, dtype=bool) if fov is None else np.asarray(fov, dtype=bool)
    top, bottom = _ends(fov_)
    lines = np.nonzero(top >= 0)  # lateral indices of non-empty scanlines, in C order
    fixed = np.zeros(shape, dtype=bool)
    if sink_mode == "all":
        fixed[(bottom[lines], *lines)] = True
    elif sink_mode == "mid":
        if len(lines[0]):
            if data.ndim == 2:
                pick = (lines[0][len(lines[0]) // 2],)
            else:  # the scanline nearest the centre of the lateral plane
                centre = np.array([n // 2 for n in shape[1:]])
                dist = sum((li - c) ** 2 for li, c in zip(lines, centre, strict=False))
                k = int(np.argmin(dist))
                pick = tuple(li[k] for li in lines)
            fixed[(bottom[pick], *pick)] = True
    elif sink_mode == "min":
        vals = data[(bottom[lines], *lines)]
        keep = np.ones(vals.shape, dtype=bool)
        if data.ndim == 2:  # MONAI: exclude int(10% of W) scanlines at each side (when that is > 0)
            ten = int(len(vals) * 0.1)
            if ten > 0:
                keep[:ten] = False
                keep[len(vals) - ten :] = False
        else:
            for li, n in zip(lines, shape[1:], strict=False):
                ten = int(n * 0.1)
                keep &= (li >= ten) & (li < n - ten)
            if not keep.any():
                keep[:] = True
        if keep.any():
            sel = keep & (vals == vals[keep].min())
            fixed[(bottom[lines][sel], *(li[sel] for li in lines))] = True
    else:
        if sink_mask is None:
            raise ValueError("sink_mode='mask' needs a sink_mask")
        sm = np.asarray(sink_mask)
        if sm.shape != shape:
            raise ValueError(f"sink_mask has shape {sm.shape}, the image {shape}")
        fixed |= (sm != 0) & fov_
    value = np.zeros(shape, dtype=np.float64)
    value[(top[lines], *lines)] = 1.0
    fixed[(top[lines], *lines)] = True
    return Seeds(fixed=fixed, value=value)
