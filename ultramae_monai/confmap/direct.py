"""Exact sparse solve of the confidence-map system with a geometric nested-dissection ordering.

The system matrix is SPD after the seeds are removed, so LU needs no pivoting, and on a regular grid the
fill-minimising ordering is known in closed form: recursive bisection of the grid by its longest axis,
separators last (George, SIAM J. Numer. Anal. 10(2), 1973). This gives SuperLU the O(n^1.5) fill of
nested dissection instead of the minimum-degree heuristics MONAI relies on, which costs several times
more on these grids. The ordering depends only on the grid shape and is cached.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["nested_dissection", "solve_direct"]

_LEAF = 64  # nodes per leaf block: below this, dissection costs more than it saves


@lru_cache(maxsize=16)
def nested_dissection(shape: tuple[int, ...]) -> np.ndarray:
    """Nested-dissection permutation of a C-ordered grid of ``shape`` (2D or 3D), read-only."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    out: list[np.ndarray] = []
    stack: list[tuple[tuple[int, int], ...] | np.ndarray] = [tuple((0, n) for n in shape)]
    # iterative post-order: a box pushes [separator, right, left]; leaves and separators are emitted
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            out.append(item)
            continue
        box = item
        sizes = [hi - lo for lo, hi in box]
        if int(np.prod(sizes)) <= _LEAF or max(sizes) < 3:
            out.append(idx[tuple(slice(lo, hi) for lo, hi in box)].ravel())
            continue
        ax = int(np.argmax(sizes))
        lo, hi = box[ax]
        mid = (lo + hi) // 2
        sep = list(box)
        sep[ax] = (mid, mid + 1)
        left = list(box)
        left[ax] = (lo, mid)
        right = list(box)
        right[ax] = (mid + 1, hi)
        stack.append(idx[tuple(slice(a, b) for a, b in sep)].ravel())
        stack.append(tuple(right))
        stack.append(tuple(left))
    perm = np.concatenate(out)
    perm.setflags(write=False)
    return perm


def solve_direct(mat: sp.csr_matrix, b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Solve the SPD grid system ``mat x = b`` exactly (float64) with SuperLU in nested-dissection order."""
    perm = nested_dissection(tuple(shape))
    ap = mat[perm][:, perm].tocsc()
    lu = spla.splu(ap, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    x = np.empty_like(b)
    x[perm] = lu.solve(b[perm])
    return x
