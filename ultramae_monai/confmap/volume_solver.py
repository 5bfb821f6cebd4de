"""Exact solve of the 3D confidence-map system: CG preconditioned by exact 2D slice solves.

A nested-dissection direct solve of a 256 x 256 x 288 volume needs separator fronts of ~65k x 65k (tens of
GB), and geometric multigrid fails on the random-conductance medium that beta = 90 speckle makes of the
graph. Every (beam, W) slice at fixed ``d`` is, however, a 2D 9-point system that the multifrontal
Cholesky (:mod:`ultramae_monai.confmap.multifrontal`) factorises exactly and in batches. So the volume
is treated as a block-tridiagonal system over slices ``A = S - N`` (``S`` the slice blocks, which keep
the D edges in their diagonal; ``N`` the couplings between neighbouring slices) and solved by float64
conjugate gradients preconditioned with

* ``"sgs"`` (default): one symmetric red-black block Gauss-Seidel sweep over slices (even slices, odd
  slices with the updated right-hand side, even slices again: symmetric, so valid for CG; 1.5 slice
  solves per slice and roughly half the iterations of Jacobi), or
* ``"jacobi"``: block Jacobi (every slice solved once, independently).

Slice factors are formed once, in batches of ``chunk`` slices, and reused by every iteration (Concus,
Golub & Meurant, SIAM J. Sci. Stat. Comput. 6(1), 1985, for block preconditioners of this kind). When
the slices do not interact (``N = 0``) the preconditioner is the exact inverse and CG stops after one
iteration. Connectivity 6 and 14 work too: the in-slice part of their stencils is a subset of 9 points,
and whatever joins different slices goes into ``N``.

``precision="mixed"`` factorises the slices with the CPU float32 multifrontal Cholesky with row-sum
pivots (:mod:`.multifrontal_blas`; the slice blocks are random-walk Laplacians, the D edges adding to
their row sums) and applies each block inverse as one float32 solve. The outer CG stays float64
(residuals, matrix products, iterates), so the answer is as exact as with float64 factors: a float32
solve is within ~1e-6 relative of the exact block inverse, far closer than the sweep itself is to
``A^-1``, and the flexible CG absorbs the difference (same iteration counts, measured). Half the memory
and traffic of float64 factors, which is what an iteration is bound by (see ``docs/benchmarks.md``).
The outer CG is the flexible (Polak-Ribiere) variant, so block solves that are not exactly linear
cannot stall it. Matrix products use the slice stencils and the coupling directly (slice-major, no
permutation of the full matrix).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ultramae_monai.confmap.cpu_engine import ENGINE
from ultramae_monai.confmap.graph import EdgeWeights, pair_slices
from ultramae_monai.confmap.multifrontal import MultifrontalFactor, factorize, solve_factored
from ultramae_monai.confmap.refine import matvec_9pt
from ultramae_monai.confmap.seeds import Seeds
from ultramae_monai.confmap.system import degrees_and_rhs, free_edges
from ultramae_monai.errors import ConvergenceError, InvalidInputError

__all__ = [
    "PRECISIONS",
    "PRECONDITIONERS",
    "SliceFactors",
    "SliceSplit",
    "factor_slices",
    "from_slice_major",
    "slice_matvec",
    "slice_system",
    "solve_volume",
    "split_slices",
    "to_slice_major",
]

logger = logging.getLogger(__name__)

PRECONDITIONERS = ("sgs", "jacobi")
LOG_EVERY = 10  # CG iterations between progress lines: a full-size volume takes minutes
PRECISIONS = ("mixed", "exact")
_ROW_CHUNK = 1 << 21  # CSR rows converted per pass when splitting (bounds the int64 temporaries)


@dataclass(frozen=True)
class SliceSplit:
    """``A = blockdiag(S_d) - N`` in slice-major order (node ``d * H * W + h * W + w``).

    ``coef[d]`` is the ``(H * W, 9)`` stencil of slice block ``S_d``; ``coupling`` holds ``-N`` (the
    entries of ``A`` that join different slices) as a slice-major CSR matrix.
    """

    coef: np.ndarray
    coupling: sp.csr_matrix


def to_slice_major(x: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A C-ordered ``(H, W, D)`` grid vector in slice-major order (node ``d * H * W + h * W + w``)."""
    return np.ascontiguousarray(np.asarray(x).reshape(shape).transpose(2, 0, 1)).reshape(-1)


def from_slice_major(xs: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of :func:`to_slice_major`: back to C order."""
    h, w, depth = shape
    return np.ascontiguousarray(np.asarray(xs).reshape(depth, h, w).transpose(1, 2, 0)).reshape(-1)


def split_slices(mat: sp.csr_matrix, shape: tuple[int, int, int]) -> SliceSplit:
    """Split the C-ordered ``(H, W, D)`` grid matrix into slice stencils and cross-slice couplings."""
    h, w, depth = (int(s) for s in shape)
    n2, n = h * w, h * w * depth
    if mat.shape != (n, n):
        raise InvalidInputError(f"matrix of shape {mat.shape} does not match a {h}x{w}x{depth} grid")
    mat = sp.csr_matrix(mat)
    if not mat.has_canonical_format:
        mat = mat.copy()
        mat.sum_duplicates()
    coef = np.zeros((depth, n2, 9))
    flat = coef.reshape(-1)
    off_r, off_c, off_v = [], [], []
    for lo in range(0, n, _ROW_CHUNK):
        hi = min(n, lo + _ROW_CHUNK)
        a, b = mat.indptr[lo], mat.indptr[hi]
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(mat.indptr[lo : hi + 1]))
        cols = mat.indices[a:b].astype(np.int64)
        vals = mat.data[a:b]
        pr, dr = np.divmod(rows, depth)
        pc, dc = np.divmod(cols, depth)
        inside = dr == dc
        di = pc[inside] // w - pr[inside] // w
        dj = pc[inside] % w - pr[inside] % w
        if np.abs(di).max(initial=0) > 1 or np.abs(dj).max(initial=0) > 1:
            raise InvalidInputError("matrix has in-slice entries outside the 9-point stencil of a (beam, W) slice")
        flat[(dr[inside] * n2 + pr[inside]) * 9 + (di + 1) * 3 + (dj + 1)] = vals[inside]
        across = ~inside
        if np.abs(dc[across] - dr[across]).max(initial=0) > 1:
            raise InvalidInputError("matrix couples slices that are not neighbours along D")
        off_r.append(dr[across] * n2 + pr[across])
        off_c.append(dc[across] * n2 + pc[across])
        off_v.append(-vals[across])
    coupling = sp.csr_matrix((np.concatenate(off_v), (np.concatenate(off_r), np.concatenate(off_c))), shape=(n, n))
    return SliceSplit(coef=coef, coupling=coupling)


def slice_system(weights: EdgeWeights, seeds: Seeds, fov: np.ndarray | None = None) -> tuple[SliceSplit, np.ndarray]:
    """The split system of a volume straight from its edge weights: ``split_slices(assemble_csr(...))``
    without the grid matrix (``b`` C-ordered, as from :func:`~ultramae_monai.confmap.system.assemble_csr`).

    Same equations (seeds and nodes outside ``fov`` keep identity rows), but a 256 x 256 x 288 volume's
    CSR matrix (208M entries) and the COO arrays it is built from are never formed: that was the peak
    memory of a full-size 3D map.
    """
    shape = weights.weights[0].shape
    if len(shape) != 3:
        raise InvalidInputError(f"slice_system needs 3D (H, W, D) weights, got shape {shape}")
    h, w, depth = shape
    n2 = h * w
    fixed = seeds.held(fov)
    free = ~fixed
    deg, rhs = degrees_and_rhs(weights, seeds, fixed)
    coef = np.zeros((depth, h, w, 9))
    grid = coef.transpose(1, 2, 0, 3)  # (H, W, D, 9) view: written in the weights' layout
    for off, wk in zip(weights.offsets, weights.weights, strict=False):
        if off[2] == 0:  # in-slice: both stencil rows
            a, b = pair_slices(shape, off)
            coupled = np.where(free[a] & free[b], wk[a], 0.0)
            grid[(*a, (off[0] + 1) * 3 + off[1] + 1)] -= coupled
            grid[(*b, (1 - off[0]) * 3 + 1 - off[1])] -= coupled
    grid[..., 4] = np.where(free, deg, 1.0)
    sm = from_slice_major(np.arange(n2 * depth), shape).reshape(shape)  # each node's slice-major index
    across = {off for off in weights.offsets if off[2] != 0}
    rows, cols, vals = free_edges(weights, free, sm, across)  # N holds the couplings' magnitudes (A = S - N)
    coupling = sp.csr_matrix((vals, (rows, cols)), shape=(n2 * depth, n2 * depth))
    return SliceSplit(coef=coef.reshape(depth, n2, 9), coupling=coupling), rhs.ravel()


@dataclass
class SliceFactors:
    """Factors of the slice blocks: ``chunks[k]`` factorises slices ``index[k]`` together, either exactly
    (float64 :class:`MultifrontalFactor`) or in float32 (the CPU engine's ``CpuFactor``, one float32 solve per block)."""

    index: list[np.ndarray]
    chunks: list  # MultifrontalFactor, or the CPU engine's CpuFactor

    @property
    def nbytes(self) -> int:
        """Bytes held by the factors (the dense level blocks, or the CPU engine's float32 factor)."""
        total = 0
        for f in self.chunks:
            if not isinstance(f, MultifrontalFactor):
                total += f.lbuf.nbytes
                continue
            for blk in f.blocks:
                total += sum(t.numel() * t.element_size() for t in blk if t is not None)
        return total

    def solve(self, rhs: np.ndarray, out: np.ndarray, slices: np.ndarray) -> None:
        """``out[d] = S_d^-1 rhs[d]`` for the slices ``d`` in ``slices`` (those factored, in chunk groups)."""
        wanted = np.zeros(out.shape[0], dtype=bool)
        wanted[slices] = True
        for idx, f in zip(self.index, self.chunks, strict=True):
            if not wanted[idx].all():
                continue
            if not isinstance(f, MultifrontalFactor):
                out[idx] = ENGINE.solve_cpu(f, rhs[idx])
            else:
                out[idx] = solve_factored(f, torch.from_numpy(np.ascontiguousarray(rhs[idx]))).numpy()


def slice_matvec(split: SliceSplit, shape: tuple[int, int]):
    """``x -> A x`` for slice-major float64 vectors: ``S x`` from the slice stencils, minus ``N x``.

    The grid matrix itself is C-ordered ``(H, W, D)``; multiplying it would permute two vectors of the
    whole volume per product (a third of a CG iteration at 128 x 128 x 144, measured).
    """
    depth, n2, _ = split.coef.shape

    def apply(xs: np.ndarray) -> np.ndarray:
        out = matvec_9pt(split.coef, xs.reshape(depth, n2), shape).reshape(-1)
        out -= split.coupling @ xs
        return out

    return apply


def factor_slices(coef: np.ndarray, shape: tuple[int, int], chunk: int = 16, precision: str = "mixed") -> SliceFactors:
    """Factorise every slice block, even slices and odd slices in separate chunks (red-black sweeps).

    With ``precision="mixed"`` a chunk whose float32 factorisation meets a non-positive pivot is
    factorised exactly instead.
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    depth = coef.shape[0]
    index, chunks = [], []
    for parity in (0, 1):
        ids = np.arange(parity, depth, 2)
        for k in range(0, len(ids), chunk):
            sel = ids[k : k + chunk]
            block = np.ascontiguousarray(coef[sel])
            factor = ENGINE.factorize_cpu(block, shape) if precision == "mixed" and ENGINE is not None else None
            index.append(sel)
            chunks.append(factor if factor is not None else factorize(torch.from_numpy(block), shape))
    return SliceFactors(index=index, chunks=chunks)


def _preconditioner(factors: SliceFactors, coupling: sp.csr_matrix, depth: int, kind: str):
    """``z = M^-1 r`` for slice-major vectors: block Jacobi or one symmetric red-black Gauss-Seidel sweep."""
    even, odd = np.arange(0, depth, 2), np.arange(1, depth, 2)
    every = np.arange(depth)

    def apply(r: np.ndarray) -> np.ndarray:
        rr = r.reshape(depth, -1)
        z = np.zeros_like(rr)
        if kind == "jacobi":
            factors.solve(rr, z, every)
            return z.reshape(-1)
        factors.solve(rr, z, even)
        for group in (odd, even):  # A = S - N, so the updated right-hand side is r + N z
            factors.solve(rr + (coupling @ z.reshape(-1)).reshape(depth, -1), z, group)
        return z.reshape(-1)

    return apply


def solve_volume(
    system: sp.spmatrix | SliceSplit,
    b: np.ndarray,
    shape: tuple[int, int, int],
    tol: float = 1e-10,
    max_iter: int = 500,
    x0: np.ndarray | None = None,
    preconditioner: str = "sgs",
    chunk: int = 16,
    precision: str = "mixed",
) -> tuple[np.ndarray, int, float]:
    """Solve an SPD ``(H, W, D)`` grid system in float64: the C-ordered matrix of ``assemble_csr``, or the
    same system already split into slices (:func:`slice_system`, which never forms the matrix).

    Returns the solution, the CG iterations and the final relative residual. ``b``, ``x0`` and the result
    are C-ordered. Stops when ``|b - A x| / |b| <= tol``; the default 1e-10
    keeps the max abs error of a confidence map well below 1e-4 (the error is ~1e4 times the relative
    residual on RESECT volumes). ``precision``: float32 slice factors, one float32 solve per block
    (``"mixed"``), or float64 ones. Raises :class:`~ultramae_monai.errors.ConvergenceError` after
    ``max_iter`` iterations.
    """
    if len(shape) != 3:
        raise InvalidInputError(f"solve_volume needs a 3D grid shape, got {shape}")
    if preconditioner not in PRECONDITIONERS:
        raise InvalidInputError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
    h, w, depth = (int(s) for s in shape)
    split = system if isinstance(system, SliceSplit) else split_slices(system, (h, w, depth))
    if split.coef.shape != (depth, h * w, 9):
        raise InvalidInputError(f"slice stencils of shape {split.coef.shape} do not match a {h}x{w}x{depth} grid")
    t0 = time.perf_counter()
    factors = factor_slices(split.coef, (h, w), chunk, precision)
    logger.info(
        "3D confidence map %dx%dx%d: %d slices factorised (%s, %.2f GB) in %.1f s; CG to relative residual %.0e",
        h, w, depth, depth, precision, factors.nbytes / 1e9, time.perf_counter() - t0, tol,
    )  # fmt: skip
    precond = _preconditioner(factors, split.coupling, depth, preconditioner)
    slice_mat = slice_matvec(split, (h, w))
    bs = to_slice_major(np.asarray(b, dtype=np.float64), (h, w, depth))
    xs = np.zeros_like(bs) if x0 is None else to_slice_major(np.asarray(x0, dtype=np.float64), (h, w, depth))
    t0 = time.perf_counter()
    xs, iterations, residual = _pcg(slice_mat, precond, bs, xs, tol, max_iter, log_every=LOG_EVERY)
    logger.info("3D confidence map: %d CG iterations in %.1f s", iterations, time.perf_counter() - t0)
    if not residual <= tol:
        raise ConvergenceError(
            f"slice-preconditioned CG stopped after {iterations} iterations at relative residual "
            f"{residual:.2e} > tol {tol:.1e}"
        )
    return from_slice_major(xs, (h, w, depth)), iterations, residual


def _pcg(
    matvec, precond, b: np.ndarray, x: np.ndarray, tol: float, max_iter: int, log_every: int = 0
) -> tuple[np.ndarray, int, float]:
    """Flexible preconditioned conjugate gradients in float64 from ``x``; residual recomputed at the end.
    Every ``log_every`` iterations (0: never) the relative residual is logged at INFO."""
    bnorm = float(np.linalg.norm(b))
    if bnorm == 0.0:
        return np.zeros_like(b), 0, 0.0
    r = b - matvec(x)
    res = float(np.linalg.norm(r)) / bnorm
    it = 0
    if res <= tol:
        return x, 0, res
    z = precond(r)
    p = z.copy()
    rz = float(r @ z)
    while it < max_iter:
        it += 1
        q = matvec(p)
        alpha = rz / float(p @ q)
        x += alpha * p
        r -= alpha * q
        res = float(np.linalg.norm(r)) / bnorm
        if log_every and it % log_every == 0:
            logger.info("CG iteration %d: relative residual %.2e (stops at %.0e)", it, res, tol)
        if res <= tol:
            break
        z_old = z
        z = precond(r)
        rz_new = float(r @ z)
        p *= (rz_new - float(r @ z_old)) / rz  # Polak-Ribiere: robust to slightly varying preconditioners
        p += z
        rz = rz_new
    res = float(np.linalg.norm(b - matvec(x))) / bnorm
    return x, it, res
