"""Edge weights of the confidence-map random walk (Karamalis et al., MedIA 2012), bit-exact with MONAI.

MONAI (``monai.data.ultrasound_confidence_map``) assembles one COO vector ``s`` holding ``n`` zeros for the
diagonal, then the 8-neighbour differences ``|I_p - I_q|`` (each edge twice). It normalises ``s`` to [0, 1]
(its minimum is the diagonal's 0, so this is ``s / (max + eps)``), adds ``gamma`` to every non-vertical
entry, normalises again and maps ``w = exp(-beta * s) + 1e-5``. Here the same numbers come from one
array per edge direction on the grid (an edge is stored once, at its first node), in the same float64
operations, so every weight equals MONAI's to the last bit while costing a few vectorised passes.

The grid is N-dimensional with the beam (depth) along axis 0: in 2D the directions are down (the beam),
right, down-right and down-left (MONAI's 8-neighbourhood); :func:`edge_offsets` gives the 3D choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

__all__ = ["EPS", "EdgeWeights", "attenuation", "edge_offsets", "edge_weights", "normalize", "pair_slices"]

EPS = float(np.finfo(np.float64).eps)
WEIGHT_FLOOR = 1e-5  # MONAI's "10e-6": keeps the graph connected across the strongest edges


@dataclass(frozen=True)
class EdgeWeights:
    """Weights of all edges along each offset: ``weights[k][p]`` joins node ``p`` and ``p + offsets[k]``.

    Entries whose far end is off the grid (or outside the field of view) are 0.
    """

    offsets: tuple[tuple[int, ...], ...]
    weights: tuple[np.ndarray, ...]


def normalize(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """MONAI's ``(x - min) / (ptp + eps)`` in float64, over the ``valid`` entries (all by default)."""
    x = np.asarray(x, dtype=np.float64)
    v = x if valid is None else x[valid]
    if v.size == 0:
        return np.zeros_like(x)
    lo = v.min()
    return (x - lo) / ((v.max() - lo) + EPS)


def attenuation(depth: int, alpha: float) -> np.ndarray:
    """Beer-Lambert depth weighting ``1 - exp(-alpha * linspace(0, 1, depth))`` (float64, shape ``(depth,)``)."""
    return 1.0 - np.exp(-alpha * np.linspace(0, 1, depth, dtype=np.float64))


def edge_offsets(ndim: int, connectivity: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Neighbour offsets (beam first), each edge once.

    2D: MONAI's 8-neighbourhood (``connectivity`` 8; 4 keeps only down and right). 3D (beam, W, D):
    6 = the axis neighbours; 10 (default) = MONAI's 8-neighbourhood in every (beam, W) slice plus the
    D neighbours, so a volume of identical slices has exactly the 2D map in every slice; 14 = 8-neighbour
    in the (beam, W) and (beam, D) planes alike (lateral directions treated symmetrically).
    """
    if ndim == 2:
        connectivity = 8 if connectivity is None else connectivity
        table = {4: ((1, 0), (0, 1)), 8: ((1, 0), (0, 1), (1, 1), (1, -1))}
    elif ndim == 3:
        connectivity = 10 if connectivity is None else connectivity
        axes = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
        diag_w = ((1, 1, 0), (1, -1, 0))
        diag_d = ((1, 0, 1), (1, 0, -1))
        table = {6: axes, 10: axes + diag_w, 14: axes + diag_w + diag_d}
    else:
        raise ValueError(f"confidence maps are defined on 2D or 3D grids, got {ndim}D")
    if connectivity not in table:
        raise ValueError(f"connectivity {connectivity} not available in {ndim}D; choose one of {sorted(table)}")
    return table[connectivity]


def pair_slices(shape: tuple[int, ...], offset: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices selecting the first nodes ``p`` and their partners ``p + offset`` that lie on the grid."""
    first, second = [], []
    for n, o in zip(shape, offset, strict=False):
        first.append(slice(max(0, -o), n - max(0, o)))
        second.append(slice(max(0, o), n - max(0, -o)))
    return tuple(first), tuple(second)


def edge_weights(
    image: np.ndarray,
    beta: float,
    gamma: float,
    fov: np.ndarray | None = None,
    connectivity: int | None = None,
) -> EdgeWeights:
    """Random-walk edge weights of an (attenuated, normalised) image with the beam along axis 0.

    ``fov`` (bool, same shape) restricts the graph to edges with both ends inside the field of view; the
    normalising maxima are then taken over those edges only.
    """
    img = np.asarray(image, dtype=np.float64)
    offsets = edge_offsets(img.ndim, connectivity)
    if fov is None and offsets == edge_offsets(2, 8) and img.ndim == 2:
        return EdgeWeights(offsets=offsets, weights=_weights_8(np.ascontiguousarray(img), beta, gamma))
    diffs, valids = [], []
    for off in offsets:
        a, b = pair_slices(img.shape, off)
        d = np.zeros(img.shape, dtype=np.float64)
        v = np.zeros(img.shape, dtype=bool)
        d[a] = np.abs(img[a] - img[b])
        v[a] = True if fov is None else fov[a] & fov[b]
        if fov is not None:
            d[~v] = 0.0
        diffs.append(d)
        valids.append(v)
    # first normalisation: the minimum is the diagonal's 0, so divide by (max + eps)
    m1 = max((float(d.max()) if d.size else 0.0) for d in diffs)
    for d in diffs:
        d /= m1 + EPS
    for off, d, v in zip(offsets, diffs, valids, strict=False):
        if any(off[1:]):  # every non-beam direction gets the lateral penalty
            d[v] += gamma
    m2 = max((float(d.max()) if d.size else 0.0) for d in diffs)
    weights = []
    for d, v in zip(diffs, valids, strict=False):
        d /= m2 + EPS
        w = np.exp(-beta * d, dtype=np.float64) + WEIGHT_FLOOR
        w[~v] = 0.0
        weights.append(w)
    return EdgeWeights(offsets=offsets, weights=tuple(weights))


@nb.njit(cache=True, boundscheck=False, parallel=True)
def _exponents_8(img, gamma, beta):
    """``-beta * s`` of the four 8-neighbour directions, with the same float64 operations as the general path
    (three row-parallel passes; the two normalising maxima are exact whatever the order)."""
    h, w = img.shape
    d = np.empty((4, h, w))
    row_max = np.zeros(h)
    for i in nb.prange(h):
        m1 = 0.0
        for j in range(w):
            a = img[i, j]
            d0 = d1 = d2 = d3 = 0.0
            if i + 1 < h:
                d0 = abs(a - img[i + 1, j])
                if j + 1 < w:
                    d2 = abs(a - img[i + 1, j + 1])
                if j > 0:
                    d3 = abs(a - img[i + 1, j - 1])
            if j + 1 < w:
                d1 = abs(a - img[i, j + 1])
            d[0, i, j], d[1, i, j], d[2, i, j], d[3, i, j] = d0, d1, d2, d3
            m1 = max(m1, max(max(d0, d1), max(d2, d3)))
        row_max[i] = m1
    c1 = row_max.max() + EPS
    for i in nb.prange(h):
        m2 = 0.0
        for k in range(4):
            for j in range(w):
                on = (k == 0 and i + 1 < h) or (k == 1 and j + 1 < w) or (k == 2 and i + 1 < h and j + 1 < w)
                on = on or (k == 3 and i + 1 < h and j > 0)
                x = d[k, i, j] / c1
                if k > 0 and on:  # the lateral penalty, on edges that exist
                    x += gamma
                d[k, i, j] = x if on else -1.0
                m2 = max(m2, x if on else 0.0)
        row_max[i] = m2
    c2 = row_max.max() + EPS
    for i in nb.prange(h):
        for k in range(4):
            for j in range(w):
                d[k, i, j] = -beta * (d[k, i, j] / c2) if d[k, i, j] >= 0.0 else -np.inf
    return d


def _weights_8(img: np.ndarray, beta: float, gamma: float) -> tuple[np.ndarray, ...]:
    """The 2D 8-neighbour weights without a FOV in one compiled pass plus numpy's ``exp`` (bit-identical)."""
    e = _exponents_8(img, float(gamma), float(beta))
    w = np.exp(e, dtype=np.float64)
    w += WEIGHT_FLOOR
    w[np.isneginf(e)] = 0.0
    return tuple(w)
