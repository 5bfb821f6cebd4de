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

import numpy as np

from ultramae_monai.confmap.graph import EdgeWeights
from ultramae_monai.confmap.seeds import Seeds

__all__ = ["Stencil2D", "assemble_2d"]


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
