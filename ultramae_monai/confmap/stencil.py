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

    Nodes outside ``fov`` get identity rows and value 0 (they have no edges). The same system as
    :func:`stencil_9pt`, laid out as padded stencil arrays.
    """
    coef, b = stencil_9pt(weights, seeds, fov)
    h, w = weights.weights[0].shape
    rows = coef.reshape(h, w, 9)

    def padded(x: np.ndarray) -> np.ndarray:
        out = np.zeros((h + 2, w + 2))
        out[1:-1, 1:-1] = x
        return out

    # the node's own coupling below, right, below-right and above-right (the other four by symmetry)
    return Stencil2D(
        c=padded(rows[..., 4]), s=padded(rows[..., 7]), e=padded(rows[..., 5]), se=padded(rows[..., 8]),
        ne=padded(rows[..., 2]), b=padded(b.reshape(h, w)),
    )  # fmt: skip


_SUM_ORDER = (7, 1, 5, 3, 8, 0, 6, 2)  # down, up, right, left, down-right, up-left, down-left, up-right


@nb.njit(cache=True, parallel=True, boundscheck=False)
def _nine_point(down, right, dr, dl, fixed, value, coef, b):
    h, w = down.shape
    for i in nb.prange(h):
        wts = np.empty(9)  # once per row: an allocation (or a row view) per pixel cost more than the pass
        for j in range(w):
            p = i * w + j
            # the 8 neighbours (d = 3 * (di + 1) + (dj + 1)) and their edge weights
            wts[:] = 0.0
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
            for d in range(9):
                coef[p, d] = 0.0
            if fixed[i, j]:
                coef[p, 4] = 1.0
                b[p] = 0.0
                continue
            deg, rhs = 0.0, 0.0
            for d in _SUM_ORDER:  # MONAI's (and assemble_csr's) order: per direction, own edge then partner's
                if wts[d] == 0.0:
                    continue
                qi, qj = i + d // 3 - 1, j + d % 3 - 1
                deg += wts[d]
                if fixed[qi, qj]:
                    rhs += wts[d] * value[qi, qj]
                else:
                    coef[p, d] = -wts[d]
            coef[p, 4] = deg
            b[p] = rhs


def stencil_9pt(weights: EdgeWeights, seeds: Seeds, fov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Dirichlet-reduced system as ``(H * W, 9)`` stencil rows and an ``(H * W,)`` right-hand side.

    Row ``p`` column ``d`` couples node ``p`` to its neighbour ``(d // 3 - 1, d % 3 - 1)`` away: the layout
    of :func:`ultramae_monai.confmap.multifrontal.stencil_from_2d`, built in one compiled pass.
    """
    if weights.offsets != ((1, 0), (0, 1), (1, 1), (1, -1)):
        raise ValueError(f"the 2D stencil needs the 8-neighbour offsets, got {weights.offsets}")
    down, right, dr, dl = (np.ascontiguousarray(x, dtype=np.float64) for x in weights.weights)
    fixed = seeds.held(fov)
    h, w = down.shape
    coef = np.empty((h * w, 9))
    b = np.empty(h * w)
    _nine_point(
        down, right, dr, dl, np.ascontiguousarray(fixed), np.ascontiguousarray(seeds.value, dtype=np.float64), coef, b
    )
    return coef, b
