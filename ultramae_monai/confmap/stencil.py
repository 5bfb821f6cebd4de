"""The 2D linear system ``L_uu x = -L_us m`` as a symmetric 9-point stencil on the image grid.

Instead of deleting seed rows and columns (MONAI), every seed keeps an identity row and its couplings
move to the right-hand side, so the unknowns stay on the structured ``H x W`` grid that the multifrontal
solvers exploit; the free-node equations are exactly MONAI's. Row ``p`` holds the 9 couplings of node ``p``
(direction ``d`` is the neighbour ``(d // 3 - 1, d % 3 - 1)`` away), the layout every solver here reads.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ultramae_monai.confmap.graph import EdgeWeights
from ultramae_monai.confmap.seeds import Seeds

__all__ = ["stencil_9pt"]


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
    of :func:`ultramae_monai.confmap.multifrontal.csr_to_stencil`, built in one compiled pass.
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
