"""The Dirichlet-reduced random-walk system ``L_uu x = -L_us m`` as a sparse matrix, on any 2D/3D grid.

Seeds and nodes outside the field of view keep identity rows (right-hand side 0) instead of being
deleted, so node ``k`` of the system is grid node ``k`` in C order and the grid orderings of
:mod:`ultramae_monai.confmap.direct` apply unchanged. Free rows are exactly MONAI's ``L_uu`` rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ultramae_monai.confmap.graph import EdgeWeights, pair_slices
from ultramae_monai.confmap.seeds import Seeds

__all__ = ["assemble_csr", "degrees_and_rhs", "free_edges"]


def degrees_and_rhs(weights: EdgeWeights, seeds: Seeds, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each node's weighted degree (the diagonal of a free row) and the pull of its fixed neighbours,
    ``sum w * value`` (the right-hand side of a free row; 0 on fixed nodes): shared by every assembly."""
    shape = weights.weights[0].shape
    free = ~fixed
    deg, rhs = np.zeros(shape), np.zeros(shape)
    for off, wk in zip(weights.offsets, weights.weights, strict=False):
        a, b = pair_slices(shape, off)
        wa = wk[a]
        deg[a] += wa
        deg[b] += wa
        rhs[a] += np.where(free[a] & fixed[b], wa * seeds.value[b], 0.0)
        rhs[b] += np.where(free[b] & fixed[a], wa * seeds.value[a], 0.0)
    return deg, np.where(free, rhs, 0.0)


def free_edges(
    weights: EdgeWeights, free: np.ndarray, index: np.ndarray, offsets: set[tuple[int, ...]] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges between free nodes, both directions, as COO ``(rows, cols, weights)`` with node numbers
    from ``index`` (a grid of each node's row); only the ``offsets`` given (all if None). The
    off-diagonal entries of every assembled system are ``-weights`` at these positions."""
    rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for off, wk in zip(weights.offsets, weights.weights, strict=False):
        if offsets is not None and off not in offsets:
            continue
        a, b = pair_slices(free.shape, off)
        wa = wk[a]
        keep = free[a] & free[b] & (wa != 0)
        ia, ib, v = index[a][keep], index[b][keep], wa[keep]
        rows += [ia, ib]
        cols += [ib, ia]
        vals += [v, v]
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def assemble_csr(
    weights: EdgeWeights, seeds: Seeds, fov: np.ndarray | None = None
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Return ``(A, b, fixed)``: the SPD matrix, right-hand side and Dirichlet mask (flattened, C order)."""
    shape = weights.weights[0].shape
    n = int(np.prod(shape))
    fixed = seeds.held(fov)
    free = ~fixed
    idx = np.arange(n).reshape(shape)
    deg, rhs = degrees_and_rhs(weights, seeds, fixed)
    rows, cols, w = free_edges(weights, free, idx)
    diag = np.where(free, deg, 1.0).ravel()
    rows, cols = np.concatenate([rows, idx.ravel()]), np.concatenate([cols, idx.ravel()])
    mat = sp.csr_matrix((np.concatenate([-w, diag]), (rows, cols)), shape=(n, n))
    return mat, rhs.ravel(), fixed.ravel()
