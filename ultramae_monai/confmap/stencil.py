"""The 2D linear system ``L_uu x = -L_us m`` as a symmetric 9-point stencil on the image grid.

Instead of deleting seed rows and columns (MONAI), every seed keeps an identity row and its couplings
move to the right-hand side, so the unknowns stay on the structured ``H x W`` grid that the multigrid
solvers exploit; the free-node equations are exactly MONAI's. Arrays are zero-padded by one node on
every side (``(H + 2, W + 2)``) so kernels need no boundary branches. Each coupling is stored once:
``s`` to the node below, ``e`` to the right, ``se`` below-right and ``ne`` above-right; the other four
follow by symmetry (``n[i, j] = s[i-1, j]``, ``w[i, j] = e[i, j-1]`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ultramae_monai.confmap.graph import EdgeWeights
from ultramae_monai.confmap.seeds import Seeds

__all__ = ["Stencil2D", "assemble_2d", "stencil_9pt"]


@dataclass(frozen=True)
class Stencil2D:
    """Padded float64 stencil ``c, s, e, se, ne`` and right-hand side ``b`` (all ``(H + 2, W + 2)``)."""

    c: np.ndarray
    s: np.ndarray
    e: np.ndarray
    se: np.ndarray
    ne: np.ndarray
    b: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.c.shape[0] - 2, self.c.shape[1] - 2

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``A x`` for a padded ``x`` (reference implementation, for tests)."""
        c, s, e, se, ne = self.c, self.s, self.e, self.se, self.ne
        y = np.zeros_like(x)
        i, j = slice(1, -1), slice(1, -1)
        y[i, j] = c[i, j] * x[i, j]
        y[i, j] += s[1:-1, 1:-1] * x[2:, 1:-1] + s[:-2, 1:-1] * x[:-2, 1:-1]
        y[i, j] += e[1:-1, 1:-1] * x[1:-1, 2:] + e[1:-1, :-2] * x[1:-1, :-2]
        y[i, j] += se[1:-1, 1:-1] * x[2:, 2:] + se[:-2, :-2] * x[:-2, :-2]
        y[i, j] += ne[1:-1, 1:-1] * x[:-2, 2:] + ne[2:, :-2] * x[2:, :-2]
        return y


def assemble_2d(weights: EdgeWeights, seeds: Seeds, fov: np.ndarray | None = None) -> Stencil2D:
    """Build the Dirichlet-reduced system from MONAI's 8-neighbour weights (offsets down, right, dr, dl).

    Nodes outside ``fov`` get identity rows and value 0 (they have no edges).
    """
    if weights.offsets != ((1, 0), (0, 1), (1, 1), (1, -1)):
        raise ValueError(f"assemble_2d needs the 8-neighbour offsets, got {weights.offsets}")
    down, right, dr, dl = weights.weights
    h, w = down.shape
    fixed = seeds.fixed if fov is None else seeds.fixed | ~fov
    free = ~fixed
    val = seeds.value

    deg = np.zeros((h, w))
    rhs = np.zeros((h, w))
    pad = np.zeros((h + 2, w + 2))
    c, s, e, se, ne = (pad.copy() for _ in range(5))
    for wk, (di, dj), out in ((down, (1, 0), s), (right, (0, 1), e), (dr, (1, 1), se), (dl, (1, -1), None)):
        a = (slice(0, h - di), slice(max(0, -dj), w - max(0, dj)))  # first node p
        b = (slice(di, h), slice(max(0, dj), w - max(0, -dj)))  # partner p + offset
        wa = wk[a]
        deg[a] += wa
        deg[b] += wa
        both = free[a] & free[b]
        rhs[a] += np.where(free[a] & fixed[b], wa * val[b], 0.0)
        rhs[b] += np.where(free[b] & fixed[a], wa * val[a], 0.0)
        coupling = np.where(both, -wa, 0.0)
        if out is not None:
            out[1 : h + 1 - di, 1 + max(0, -dj) : w + 1 - max(0, dj)] = coupling
        else:  # down-left edge (i, j+1)-(i+1, j) is the above-right coupling of (i+1, j)
            ne[2 : h + 1, 1:w] = coupling
    c[1:-1, 1:-1] = np.where(free, deg, 1.0)
    bb = pad.copy()
    bb[1:-1, 1:-1] = np.where(free, rhs, 0.0)
    return Stencil2D(c=c, s=s, e=e, se=se, ne=ne, b=bb)


@nb.njit(cache=True, parallel=True, boundscheck=False)
def _nine_point(down, right, dr, dl, fixed, value, coef, b):
    h, w = down.shape
    for i in nb.prange(h):
        for j in range(w):
            p = i * w + j
            # the 8 neighbours (d = 3 * (di + 1) + (dj + 1)) and their edge weights
            wts = np.zeros(9)
            if i > 0:
                if j > 0:
                    wts[0] = dr[i - 1, j - 1]
                wts[1] = down[i - 1, j]
                if j + 1 < w:
                    wts[2] = dl[i - 1, j + 1]
            if j > 0:
                wts[3] = right[i, j - 1]
            wts[5] = right[i, j]
            if i + 1 < h:
                if j > 0:
                    wts[6] = dl[i, j]
                wts[7] = down[i, j]
                wts[8] = dr[i, j]
            row = coef[p]
            row[:] = 0.0
            if fixed[i, j]:
                row[4] = 1.0
                b[p] = 0.0
                continue
            deg, rhs = 0.0, 0.0
            for d in range(9):
                if d == 4 or wts[d] == 0.0:
                    continue
                qi, qj = i + d // 3 - 1, j + d % 3 - 1
                deg += wts[d]
                if fixed[qi, qj]:
                    rhs += wts[d] * value[qi, qj]
                else:
                    row[d] = -wts[d]
            row[4] = deg
            b[p] = rhs


def stencil_9pt(weights: EdgeWeights, seeds: Seeds, fov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same system as :func:`assemble_2d`, as ``(H * W, 9)`` stencil rows and ``(H * W,)`` right-hand side.

    Row ``p`` column ``d`` couples node ``p`` to its neighbour ``(d // 3 - 1, d % 3 - 1)`` away: the layout
    of :func:`ultramae_monai.confmap.multifrontal.stencil_from_2d`, built in one compiled pass.
    """
    if weights.offsets != ((1, 0), (0, 1), (1, 1), (1, -1)):
        raise ValueError(f"stencil_9pt needs the 8-neighbour offsets, got {weights.offsets}")
    down, right, dr, dl = (np.ascontiguousarray(x, dtype=np.float64) for x in weights.weights)
    fixed = seeds.fixed if fov is None else seeds.fixed | ~fov
    h, w = down.shape
    coef = np.empty((h * w, 9))
    b = np.empty(h * w)
    _nine_point(down, right, dr, dl, np.ascontiguousarray(fixed), np.ascontiguousarray(seeds.value, dtype=np.float64), coef, b)
    return coef, b
