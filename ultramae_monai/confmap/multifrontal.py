"""Exact solve of 9-point grid systems by a level-batched multifrontal Cholesky, in torch (CPU or CUDA).

The confidence-map system (:func:`ultramae_monai.confmap.system.assemble_csr`) is SPD with a 9-point
stencil on the image grid. Its nested-dissection elimination tree is fixed by the grid shape
(:mod:`ultramae_monai.confmap.multifrontal_symbolic`), so all index bookkeeping is done once per shape and
the numeric work is, per tree level, one gather (assembly), one scatter-add (extend-add) and three
batched dense kernels: ``L11 = chol(F11)``, ``L21 = F21 L11^-T``, ``U = F22 - L21 L21^T`` (Duff & Reid,
ACM TOMS 9(3), 1983). A batch of systems of one shape (cine frames) just enlarges every batch. The same
code runs on CUDA, where the per-level batching is what makes the many small fronts of the lower tree
levels efficient. Unlike multigrid, the cost does not depend on the weights (beta = 90 speckle makes the
edge weights span 1e-5..1, which ruins geometric multigrid convergence).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch

from ultramae_monai.confmap.cpu_engine import ENGINE
from ultramae_monai.confmap.multifrontal_cpu import (
    backward_lower,
    factor_lower,
    forward_lower,
    gather_into,
    lower_plan,
)
from ultramae_monai.confmap.multifrontal_symbolic import Symbolic, symbolic
from ultramae_monai.confmap.refine import pcg_refine
from ultramae_monai.errors import InvalidInputError

__all__ = [
    "MultifrontalFactor",
    "csr_to_stencil",
    "default_cut",
    "factorize",
    "solve_factored",
    "solve_multifrontal",
    "solve_multifrontal_batch",
    "stencil_from_2d",
]


def _maps(sym: Symbolic, device: torch.device) -> list:
    """The symbolic index arrays as int64 tensors on ``device`` (cached per structure and device)."""
    return _maps_cached(sym, str(device))


@lru_cache(maxsize=16)
def _maps_cached(sym: Symbolic, device: str) -> list:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64, device=device)

    return [
        (
            t(lv.elim),
            t(lv.ring),
            t(lv.asm_src),
            t(lv.asm_dst),
            t(lv.pad_diag),
            [(c, t(s), t(d)) for c, s, d in lv.children],
        )
        for lv in sym.levels
    ]


def csr_to_stencil(mat: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H * W, 9)`` stencil coefficients of a CSR matrix with a 9-point pattern on a C-ordered grid.

    Column ``d`` of row ``i`` is the coupling to the neighbour ``(d // 3 - 1, d % 3 - 1)`` away.
    """
    h, w = shape
    n = h * w
    mat = sp.csr_matrix(mat)
    if not mat.has_canonical_format:  # duplicates are summed, as in the matrix they represent
        mat = mat.copy()
        mat.sum_duplicates()
    if mat.shape != (n, n):
        raise InvalidInputError(f"matrix of shape {mat.shape} does not match a {h}x{w} grid")
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(mat.indptr))
    cols = mat.indices.astype(np.int64)
    di = cols // w - rows // w
    dj = cols % w - rows % w
    if np.abs(di).max(initial=0) > 1 or np.abs(dj).max(initial=0) > 1:
        raise InvalidInputError("matrix has entries outside the 9-point stencil of the grid")
    out = np.zeros(n * 9)
    out[rows * 9 + (di + 1) * 3 + (dj + 1)] = mat.data
    return out.reshape(n, 9)


def stencil_from_2d(c: np.ndarray, s: np.ndarray, e: np.ndarray, se: np.ndarray, ne: np.ndarray) -> np.ndarray:
    """``(H * W, 9)`` coefficients from the padded ``(H + 2, W + 2)`` arrays of a ``Stencil2D``.

    This skips CSR assembly: the stencil is built with a few slicing passes.
    """
    h, w = c.shape[0] - 2, c.shape[1] - 2
    i, j = slice(1, h + 1), slice(1, w + 1)
    im, jm, ip = slice(0, h), slice(0, w), slice(2, h + 2)
    cols = (
        se[im, jm],  # (-1, -1): the below-right coupling of the node above-left
        s[im, j],  # (-1, 0)
        ne[i, j],  # (-1, +1)
        e[i, jm],  # (0, -1)
        c[i, j],
        e[i, j],  # (0, +1)
        ne[ip, jm],  # (+1, -1): the above-right coupling of the node below-left
        s[i, j],  # (+1, 0)
        se[i, j],  # (+1, +1)
    )
    return np.stack(cols, axis=-1).reshape(h * w, 9)


def default_cut(sym: Symbolic, device: torch.device) -> int:
    """Tree height below which the CPU kernels run: levels of many small fronts (none on a GPU).

    The compiled per-front loop beats padded batched kernels while fronts fit in cache; large fronts
    (or few of them) go to torch, where MKL's blocked kernels win.
    """
    if device.type != "cpu":
        return 0
    big = (k for k, lv in enumerate(sym.levels) if lv.nb <= _CPU_BATCHED_FRONTS or lv.S + lv.R > _CPU_MAX_FRONT)
    return next(big, len(sym.levels))


_CPU_BATCHED_FRONTS = 16  # on a CPU, levels with at most this many fronts use batched BLAS ...
_CPU_MAX_FRONT = 480  # ... and so do levels with fronts larger than this


@dataclass
class MultifrontalFactor:
    """The factor: compact CPU blocks below tree height ``cut`` and ``(L11, L21)`` per level from ``cut`` up.

    ``L11`` is ``(B * nb, S, S)``, ``L21`` ``(B * nb, R, S)`` (``None`` at the root level). ``ok`` is a
    0-d bool tensor on the factor's device: every pivot was positive (the matrices were SPD).
    """

    sym: Symbolic
    batch: int
    cut: int
    lower: np.ndarray | None
    blocks: list[tuple[torch.Tensor, torch.Tensor | None] | None]
    ok: torch.Tensor


@lru_cache(maxsize=16)
def _root_scatter(sym: Symbolic, cut: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per height below ``cut``: where the packed root updates go in that level's padded update array."""
    plan = lower_plan(sym, cut)
    ring_len = np.diff(sym.tree.ring_ptr)
    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for t, k in enumerate(plan.root):
        h, r = int(sym.tree.height[k]), int(ring_len[k])
        big_r = sym.levels[h].R
        a, b = np.tril_indices(r)
        src = plan.u_ptr[t] + a * (a + 1) // 2 + b
        out.setdefault(h, []).append((src, (sym.tree.level_pos[k] * big_r + a) * big_r + b))
    return {h: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])) for h, v in out.items()}


_SCHUR_BLOCK = 128  # update blocks up to this size are formed whole


def _schur_lower_(f22: torch.Tensor, l21: torch.Tensor) -> torch.Tensor:
    """``f22 -= l21 l21^T`` in place on the lower triangle only, by recursive 2 x 2 blocking.

    Only the lower triangle of an update matrix is ever read, so the strictly upper off-diagonal blocks
    are skipped: about half the flops of one batched GEMM for large fronts (no batched SYRK in torch).
    """
    r = f22.shape[-1]
    if r <= _SCHUR_BLOCK:
        return f22.baddbmm_(l21, l21.mT, alpha=-1.0)
    h = r // 2
    _schur_lower_(f22[:, :h, :h], l21[:, :h])
    f22[:, h:, :h].baddbmm_(l21[:, h:], l21[:, :h].mT, alpha=-1.0)
    _schur_lower_(f22[:, h:, h:], l21[:, h:])
    return f22


def factorize(
    coef: torch.Tensor, shape: tuple[int, int], cut: int | None = None, check: bool = True
) -> MultifrontalFactor:
    """Factorise a batch of SPD 9-point systems given as stencil coefficients ``(B, H * W, 9)``.

    Tree levels below height ``cut`` (default :func:`default_cut`) use the CPU kernels, the rest batched
    torch kernels on ``coef``'s device and in its dtype. ``check`` raises when a pivot is not positive; without
    it nothing waits for the device (the caller reads ``factor.ok``), so the factorisation can be captured
    in a CUDA graph.
    """
    sym = symbolic(tuple(shape))
    device = coef.device
    cut = default_cut(sym, device) if cut is None else min(int(cut), len(sym.levels))
    maps = _maps(sym, device)
    batch = coef.shape[0]
    flat = coef.reshape(batch, -1)
    updates: dict[int, torch.Tensor] = {}
    lower = None
    ok = True
    if cut > 0:
        plan = lower_plan(sym, cut)
        lower, uroot, ok = factor_lower(sym, plan, flat.cpu().numpy())
        for h, (src, dst) in _root_scatter(sym, cut).items():
            lv = sym.levels[h]
            u = np.zeros((batch, lv.nb * lv.R * lv.R))
            u[:, dst] = uroot[:, src]
            updates[h] = torch.from_numpy(u).to(device)
    last_use = {c: k for k, lv in enumerate(sym.levels) for c, _, _ in lv.children}
    blocks: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * cut
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for k in range(cut, len(sym.levels)):
        lv, (_, _, src, dst, pad, kids) = sym.levels[k], maps[k]
        s_, m = lv.S, lv.S + lv.R
        front = flat.new_zeros(batch, lv.nb * m * m)
        on_cpu = device.type == "cpu"
        if on_cpu:
            gather_into(front.numpy(), lv.asm_dst, flat.numpy(), lv.asm_src, False)
        else:
            front[:, dst] = flat[:, src]
        front[:, pad] = 1.0
        for (c, csrc, cdst), (_, csrc_np, cdst_np) in zip(kids, lv.children, strict=True):
            u = updates[c].reshape(batch, -1)
            if on_cpu:
                gather_into(front.numpy(), cdst_np, u.numpy(), csrc_np, True)
            else:
                front.index_add_(1, cdst, u[:, csrc])
            if last_use[c] == k:
                del updates[c]
        front = front.view(batch * lv.nb, m, m)
        l11, info = torch.linalg.cholesky_ex(front[:, :s_, :s_])
        bad |= (info != 0).any()
        if lv.R:
            l21 = torch.linalg.solve_triangular(l11.mT, front[:, s_:, :s_], upper=True, left=False)
            updates[k] = _schur_lower_(front[:, s_:, s_:], l21).contiguous()
            blocks.append((l11, l21))
        else:
            blocks.append((l11, None))
    good = ~bad if ok else torch.zeros((), dtype=torch.bool, device=device)
    if check and not bool(good):
        raise InvalidInputError("the system matrix is not symmetric positive definite")
    return MultifrontalFactor(sym, batch, cut, lower, blocks, good)


def solve_factored(factor: MultifrontalFactor, b: torch.Tensor) -> torch.Tensor:
    """Solve with a factor for right-hand sides ``b`` ``(B, H * W)``: forward then backward over the levels."""
    sym, batch, cut = factor.sym, factor.batch, factor.cut
    n = sym.shape[0] * sym.shape[1]
    maps = _maps(sym, b.device)
    if cut > 0:
        plan = lower_plan(sym, cut)
        xn = np.zeros((batch, n + 1))  # slot n absorbs the padding
        xn[:, :n] = b.cpu().numpy()
        forward_lower(sym, plan, factor.lower, xn)
        x = torch.from_numpy(xn).to(b.device)
    else:
        x = b.new_zeros(batch, n + 1)
        x[:, :n] = b
    upper = list(zip(sym.levels[cut:], factor.blocks[cut:], maps[cut:], strict=True))
    for lv, (l11, l21), (elim, ring, *_) in upper:
        y = x[:, elim].reshape(batch * lv.nb, lv.S, 1)
        y = torch.linalg.solve_triangular(l11, y, upper=False)
        x[:, elim] = y.view(batch, -1, lv.S)
        if l21 is not None:
            x.index_add_(1, ring.reshape(-1), -(l21 @ y).view(batch, -1))
        x[:, n] = 0.0
    for lv, (l11, l21), (elim, ring, *_) in reversed(upper):
        y = x[:, elim].reshape(batch * lv.nb, lv.S, 1)
        if l21 is not None:
            y = y - l21.mT @ x[:, ring].reshape(batch * lv.nb, lv.R, 1)
        y = torch.linalg.solve_triangular(l11.mT, y, upper=True)
        x[:, elim] = y.view(batch, -1, lv.S)
        x[:, n] = 0.0
    if cut > 0:
        xn = x.cpu().numpy() if x.device.type != "cpu" else x.numpy()
        xn = np.ascontiguousarray(xn)
        backward_lower(sym, plan, factor.lower, xn)
        x = torch.from_numpy(xn).to(b.device)
    return x[:, :n]


def solve_multifrontal_batch(
    coef: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    shape: tuple[int, int],
    device: str | torch.device | None = None,
    mixed: bool = True,
) -> torch.Tensor:
    """Solve ``B`` SPD 9-point grid systems of one ``shape``: stencil ``coef`` ``(B, H * W, 9)``, ``b`` ``(B, H * W)``.

    Runs on ``device`` (default: that of ``coef``, CPU for numpy); returns float64 ``(B, H * W)``. On a CPU
    with ``mixed`` (default) the factor is float32 and CG in float64 refines the solution to an estimated
    1e-6 (:func:`ultramae_monai.confmap.refine.pcg_refine`); should that fail, and on other devices, the
    factorisation is float64 and exact.
    Build ``coef`` with :func:`csr_to_stencil` or, without a CSR matrix, :func:`stencil_from_2d`.
    """
    h, w = int(shape[0]), int(shape[1])
    coef_t = torch.as_tensor(coef, dtype=torch.float64, device=device)
    b_t = torch.as_tensor(b, dtype=torch.float64, device=coef_t.device)
    if coef_t.ndim != 3 or coef_t.shape[1:] != (h * w, 9) or b_t.shape != coef_t.shape[:2]:
        raise InvalidInputError(
            f"expected coef (B, {h * w}, 9) and b (B, {h * w}), got {tuple(coef_t.shape)} and {tuple(b_t.shape)}"
        )
    if h < 1 or w < 1:
        raise InvalidInputError(f"empty grid {shape}")
    if coef_t.device.type == "cpu" and mixed:
        x = _solve_mixed_cpu(coef_t.numpy(), b_t.numpy(), (h, w))
        if x is not None:
            return torch.from_numpy(x)
    return solve_factored(factorize(coef_t, (h, w)), b_t)


def _solve_mixed_cpu(coef: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """float32 factor + float64 CG (:mod:`.multifrontal_blas`, :mod:`.refine`); None if either gives up
    (or the engine is unavailable: :mod:`.cpu_engine`)."""
    if ENGINE is None:
        return None
    factor = ENGINE.factorize_cpu(coef, shape)
    if factor is None:  # a float32 pivot was not positive
        return None
    try:
        x, info = pcg_refine(coef, b, shape, factor.precondition)
    finally:
        ENGINE.release(factor)
    return x if info.converged else None


def solve_multifrontal(mat: sp.csr_matrix, b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Solve the SPD 9-point grid system ``mat x = b`` exactly (float64); drop-in for ``solve_direct``."""
    if len(shape) != 2:
        raise InvalidInputError(f"the multifrontal solver handles 2D grids, got shape {shape}")
    coef = csr_to_stencil(mat, (int(shape[0]), int(shape[1])))
    x = solve_multifrontal_batch(coef[None], np.asarray(b, dtype=np.float64)[None], (shape[0], shape[1]), mixed=False)
    return x[0].numpy()
