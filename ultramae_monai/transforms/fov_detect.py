"""Detect the ultrasound field of view (scan region) of a still or a cine, as a boolean ``(H, W)`` mask.

Why this shape of algorithm: what lies outside the scan region (burned-in text, logos, grey-scale bars,
depth markers, calipers, ECG traces, the black border) is either flat, thin, small, or static over time,
while the scan region is one large, textured (speckle), convex area (sector, curvilinear or linear probe:
all convex). So, on a reduced grid (block means, for speed):

0. thin bright strokes (text, calipers, dotted scales) are replaced by their surroundings (white top-hat);
1. evidence = textured and brighter than the background (block mean and block std of the time-mean image),
   OR (cines) varying over time (temporal std of a subsample of frames); in a cine that varies at all,
   components that (almost) never vary are dropped;
2. a morphological opening removes what is thin (text strokes, ECG lines, calipers, dotted depth scales);
3. the largest connected component is kept, with any other component at least ``keep_ratio`` of its size
   lying within its column span (a probe's near-field bands can be cut off from the deep tissue by an
   anechoic layer; a grey-scale bar or text block beside the image is not);
4. the mask is the convex hull of those components, rasterised at full resolution, so anechoic regions
   (cysts, heart chambers, acoustic shadows) inside the fan stay in.

When the evidence is too small (a probe in air, a blank frame) the detector falls back to the DICOM
ultrasound regions if given, else to the whole frame: it never blanks an image it does not understand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ultramae_monai.errors import InvalidInputError

__all__ = ["detect_fov_mask", "fov_box", "regions_mask", "scan_region_problem"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIN_SPECKLE_CORRELATION = 0.3  # real B-mode >= 0.92 (BUSI, HC18), i.i.d. noise ~0.0: see docs/scan_region.md
_MAX_COLOUR_FRACTION = 0.5  # share of strongly coloured pixels above which an RGB image is a photograph


def _grey_frames(image: np.ndarray | torch.Tensor, num_frames: int) -> np.ndarray:
    """(C, H, W) or (C, T, H, W) -> grey float32 (T', H, W), at most ``num_frames`` frames spread evenly."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[0] not in (1, 3, 4):
        raise InvalidInputError(f"expected a (C, H, W) or (C, T, H, W) image with C in 1, 3, 4; got {a.shape}")
    if a.shape[1] > num_frames:
        a = a[:, np.linspace(0, a.shape[1] - 1, num_frames).round().astype(int)]
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise InvalidInputError("image contains NaN or Inf")
    return np.tensordot(_LUMA, a[:3], axes=1) if a.shape[0] >= 3 else a[0]


def _block_mean(frames: np.ndarray, f: int) -> np.ndarray:
    """(T, H, W) -> (T, ceil(H/f), ceil(W/f)) block means, edges padded by replication."""
    if f == 1:
        return frames
    t, h, w = frames.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    x = np.pad(frames, ((0, 0), (0, hp - h), (0, wp - w)), mode="edge")
    return x.reshape(t, hp // f, f, wp // f, f).mean(axis=(2, 4))


def _remove_thin_bright(frames: np.ndarray, contrast: float) -> np.ndarray:
    """Replace thin bright strokes (text, calipers, markers) by their surroundings, via a white top-hat.

    Why: a block of text on a grey banner is as bright and "textured" as tissue once averaged into blocks;
    without its strokes the banner is flat and drops out. Found on the time-mean so static UI is caught whole.
    """
    h, w = frames.shape[1:]
    size = max(3, round(max(h, w) / 160) | 1)  # ~2.5 x the widest stroke
    mean = frames.mean(axis=0)
    opened = ndimage.grey_opening(mean, size=(size, size))
    tophat = mean - opened
    lo, hi = np.percentile(mean, [1, 99.9])
    strokes = tophat > max(contrast * (hi - lo), 20.0)
    if not strokes.any():
        return frames
    return np.where(strokes[None], opened[None], frames)


def _blocks(frames: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block mean, in-block std (texture) and temporal std on an f x f grid (edges padded by replication)."""
    t, h, w = frames.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    x = np.pad(frames, ((0, 0), (0, hp - h), (0, wp - w)), mode="edge").reshape(t, hp // f, f, wp // f, f)
    mean_t = x.mean(axis=(2, 4))  # (T, h', w')
    mean = mean_t.mean(axis=0)
    in_block = (x**2).mean(axis=(0, 2, 4)) - (mean_t**2).mean(axis=0)
    # speckle is coarse in compressed video: add the variance of block means over a 3 x 3 neighbourhood
    around = ndimage.uniform_filter(mean_t**2, size=(1, 3, 3)).mean(0) - (
        ndimage.uniform_filter(mean_t, size=(1, 3, 3)) ** 2
    ).mean(0)
    texture = np.sqrt(np.maximum(in_block, 0.0) + np.maximum(around, 0.0))
    temporal = mean_t.std(axis=0) if t > 1 else np.zeros_like(mean)
    return mean, texture, temporal


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2 + radius  # a round-ish disk


def _hull_mask(points_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the convex hull of (row, col) points: pixel centres inside, one interval per row."""
    h, w = shape
    try:
        hull = ConvexHull(points_rc[:, ::-1])  # (x=col, y=row)
    except QhullError:  # degenerate (collinear) points: fall back to their bounding box
        r0, c0 = np.floor(points_rc.min(0)).astype(int)
        r1, c1 = np.ceil(points_rc.max(0)).astype(int)
        mask = np.zeros(shape, bool)
        mask[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)] = True
        return mask
    v = hull.points[hull.vertices]  # counter-clockwise (x, y)
    x0, y0 = v[:, 0], v[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    ys = np.arange(h) + 0.5
    lo = np.full(h, np.inf)
    hi = np.full(h, -np.inf)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        ya, yb = min(ay, by), max(ay, by)
        rows = np.nonzero((ys >= ya) & (ys <= yb))[0]
        if rows.size == 0:
            continue
        xs = np.full(rows.size, ax) if by == ay else ax + (ys[rows] - ay) * (bx - ax) / (by - ay)
        lo[rows] = np.minimum(lo[rows], xs)
        hi[rows] = np.maximum(hi[rows], xs)
    cols = np.arange(w) + 0.5
    return (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None])


def _main_components(labels: np.ndarray, areas: np.ndarray, keep_ratio: float) -> np.ndarray:
    """The largest component, plus big ones within its column span (near-field bands of the same probe)."""
    main = int(np.argmax(areas)) + 1
    cols = np.nonzero((labels == main).any(axis=0))[0]
    slack = max(2, (cols[-1] - cols[0]) // 10)
    lo, hi = cols[0] - slack, cols[-1] + slack
    keep = [main]
    for lab in np.nonzero(areas >= keep_ratio * areas.max())[0] + 1:
        span = np.nonzero((labels == lab).any(axis=0))[0]
        if lab != main and span[0] >= lo and span[-1] <= hi:
            keep.append(int(lab))
    return np.isin(labels, keep)


def regions_mask(regions: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Union of ``[r0, c0, r1, c1)`` boxes (e.g. DICOM SequenceOfUltrasoundRegions) as a boolean mask."""
    mask = np.zeros(shape, bool)
    for r0, c0, r1, c1 in regions:
        mask[max(int(r0), 0) : max(int(r1), 0), max(int(c0), 0) : max(int(c1), 0)] = True
    return mask


def fov_box(mask: np.ndarray) -> list[int]:
    """Bounding box ``[r0, c0, r1, c1)`` of a boolean (H, W) mask (the whole frame if it is empty)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return [0, 0, int(mask.shape[0]), int(mask.shape[1])]
    return [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]


def detect_fov_mask(
    image: np.ndarray | torch.Tensor,
    *,
    regions: Sequence[Sequence[int]] | None = None,
    analysis_size: int = 256,
    num_frames: int = 16,
    open_radius: int = 2,
    keep_ratio: float = 0.1,
    min_area: float = 0.02,
    contrast: float = 0.03,
    texture_threshold: float = 1.0,
    temporal_threshold: float = 0.05,
    text_contrast: float = 0.3,
    min_varying: float = 0.05,
) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the scan region of a still ``(C, H, W)`` or cine ``(C, T, H, W)``.

    Args:
        image: numpy array or tensor, grey (C=1) or RGB(A) (C=3/4), any intensity range.
        regions: optional ``[r0, c0, r1, c1)`` boxes known to bound the scan region (DICOM
            SequenceOfUltrasoundRegions): evidence outside them is ignored, and they are the fallback.
        analysis_size: the longer side of the reduced analysis grid (block means); accuracy ~ H / analysis_size px.
        num_frames: frames of a cine used (spread evenly); the temporal evidence needs at least 2.
        open_radius: opening radius on the analysis grid: structures thinner than ~2 x this are dropped.
        keep_ratio: besides the largest component, keep those at least this fraction of its area that lie
            within its column span.
        min_area: below this fraction of the frame the evidence is not trusted (fallback instead).
        contrast: a block is "bright" above background + contrast x (99th percentile - background).
        texture_threshold: minimum in-block std (grey levels) of a bright block: flat UI panels are excluded.
        temporal_threshold: a block "varies" when its temporal std exceeds this fraction of the 99th
            percentile of temporal std (so static text and UI never do, compression flicker rarely).
        min_varying: in a cine that varies, components with less than this fraction of varying blocks are
            dropped (static UI that survived the other tests).
        text_contrast: thin strokes brighter than their surroundings by this fraction of the intensity
            range are treated as text/markers and removed first (0 disables).
    """
    frames = _grey_frames(image, num_frames)
    h, w = frames.shape[1:]
    # work at half the analysis step (speed), then blocks of 2 x 2 of those: f full-resolution pixels per block
    d = max(1, int(np.ceil(max(h, w) / analysis_size)) // 2)
    small = _block_mean(frames, d)
    if text_contrast > 0:
        small = _remove_thin_bright(small, text_contrast)
    g = 2 if max(h, w) > analysis_size else 1
    f = d * g
    mean, texture, temporal = _blocks(small, g)
    background = float(np.percentile(mean, 1))
    span = float(np.percentile(mean, 99)) - background
    evidence = (mean > background + max(contrast * span, 2.0)) & (texture > texture_threshold)
    varying = None
    if frames.shape[0] > 1:
        top = float(np.percentile(temporal, 99))
        if top > 0.2:  # the cine does vary (not a frozen or duplicated frame)
            varying = temporal > max(temporal_threshold * top, 0.1)
            evidence |= varying
    if regions:
        prior = regions_mask(regions, (h, w))[::f, ::f]
        evidence &= prior[: evidence.shape[0], : evidence.shape[1]]
    if open_radius > 0:
        evidence = ndimage.binary_opening(evidence, structure=_disk(open_radius))
    labels, n = ndimage.label(evidence)
    if n and varying is not None:  # static components (logos, panels, a frozen reference image) are not live
        live = ndimage.mean(varying, labels, index=np.arange(1, n + 1)) >= min_varying
        labels = np.where(np.isin(labels, np.nonzero(live)[0] + 1), labels, 0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:] if n else np.zeros(0, int)
    if n == 0 or areas.max() * f * f < min_area * h * w:
        return regions_mask(regions, (h, w)) if regions else np.ones((h, w), bool)
    kept = _main_components(labels, areas, keep_ratio)
    edge = kept & ~ndimage.binary_erosion(kept)
    r, c = np.nonzero(edge)
    corners = np.concatenate([np.stack([r + dr, c + dc], 1) for dr in (0, 1) for dc in (0, 1)]) * f
    return _hull_mask(np.minimum(corners, [h, w]).astype(np.float64), (h, w))


def _neighbour_correlation(grey: np.ndarray, mask: np.ndarray) -> float:
    """Smaller of the row and column lag-1 correlations of ``grey`` (H, W) over pixel pairs inside ``mask``."""
    out = 1.0
    for a, b, m in (
        (grey[:, :-1], grey[:, 1:], mask[:, :-1] & mask[:, 1:]),
        (grey[:-1], grey[1:], mask[:-1] & mask[1:]),
    ):
        x, y = a[m].astype(np.float64), b[m].astype(np.float64)
        if x.size < 16 or x.std() == 0 or y.std() == 0:
            continue
        out = min(out, float(np.corrcoef(x, y)[0, 1]))
    return out


def scan_region_problem(image: np.ndarray | torch.Tensor, mask: np.ndarray | None = None) -> str | None:
    """Why ``image`` (``(C, H, W)`` or ``(C, T, H, W)``) has no detectable scan region, or None when it has one.

    Ultrasound speckle makes neighbouring pixels strongly correlated (lag-1 correlation >= 0.92 on every BUSI and
    HC18 image measured), while random noise has none: below 0.3 the image is refused as noise. A flat image has
    no region either, and an RGB image whose pixels are mostly strongly coloured is a photograph, not B-mode
    (colour Doppler covers a part of the sector only). ``mask``: the detected FOV (default: detected here).
    """
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    frame = a[:, 0] if a.ndim == 4 else a
    grey = _grey_frames(frame, 1)[0]
    m = detect_fov_mask(frame) if mask is None else np.asarray(mask, dtype=bool)
    if not m.any() or float(grey[m].std()) < 1e-3 * max(float(np.abs(grey).max()), 1e-12):
        return "no scan region detected: the image is flat (blank)"
    if _neighbour_correlation(grey, m) < _MIN_SPECKLE_CORRELATION:
        return "no scan region detected: neighbouring pixels are uncorrelated (noise, not ultrasound speckle)"
    if frame.shape[0] >= 3:
        rgb = frame[:3].astype(np.float64)
        top, low = rgb.max(0), rgb.min(0)
        coloured = (top - low) > 0.25 * np.maximum(top, 1e-12)
        if float(coloured[m].mean()) > _MAX_COLOUR_FRACTION:
            return "no scan region detected: most pixels are strongly coloured (a photograph, not ultrasound)"
    return None
