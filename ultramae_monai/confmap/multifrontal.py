"""Exact solve of 9-point grid systems by a level-batched multifrontal Cholesky in torch, on any device.

The confidence-map system (:func:`ultramae_monai.confmap.system.assemble_csr`) is SPD with a 9-point
stencil on the image grid. Its nested-dissection elimination tree is fixed by the grid shape
(:mod:`ultramae_monai.confmap.multifrontal_symbolic`), so all index bookkeeping is done once per shape and
the numeric work is, per tree level, one gather (assembly), one scatter-add (extend-add) and three
batched dense kernels: ``L11 = chol(F11)``, ``L21 = F21 L11^-T``, ``U = F22 - L21 L21^T`` (Duff & Reid,
ACM TOMS 9(3), 1983). A batch of systems of one shape (cine frames, slices of a volume) just enlarges every
batch, which is what keeps a GPU busy on the many small fronts of the lower levels. The cost does not
depend on the weights (beta = 90 speckle makes the edge weights span 1e-5..1, which ruins iterative
solvers). Any floating dtype: float64 is exact; float32 serves as a preconditioner (:mod:`.device_solver`).

On a CPU the float32 BLAS engine (:mod:`.cpu_engine`) is an order of magnitude faster, so
:func:`solve_multifrontal_batch` uses it there and this factorisation is its exact fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch

from ultramae_monai.confmap.cpu_engine import ENGINE
from ultramae_monai.confmap.multifrontal_symbolic import Level, Symbolic, symbolic
from ultramae_monai.confmap.refine import pcg_refine
from ultramae_monai.errors import InvalidInputError

__all__ = [
    "MultifrontalFactor",
    "csr_to_stencil",
    "factorize",
    "solve_factored",
    "solve_multifrontal",
    "solve_multifrontal_batch",
]


@dataclass(frozen=True)
class _LevelMaps:
    """One level's index arrays on a device, for fronts stored as two blocks (see :func:`factorize`).

    ``asm_dst``, ``pad_diag`` and the ``panel`` children entries are flat positions in the level's
    ``(nb, S + R, S)`` panels (the front's first ``S`` columns); the ``update`` children entries are flat
    positions in its ``(nb, R, R)`` ring blocks. Children entries are ``(child level, src, dst)`` with
    ``src`` flat into the child level's ``(nb_c, R_c, R_c)`` update matrices.
    """

    elim: torch.Tensor
    ring: torch.Tensor
    asm_src: torch.Tensor
    asm_dst: torch.Tensor
    pad_diag: torch.Tensor
    panel: tuple[tuple[int, torch.Tensor, torch.Tensor], ...]
    update: tuple[tuple[int, torch.Tensor, torch.Tensor], ...]


def _split(lv: Level, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat lower-triangle positions in ``(nb, m, m)`` fronts -> (in the panel?, panel position, ring position)."""
    s_, r_ = lv.S, lv.R
    m = s_ + r_
    t, p, q = flat // (m * m), flat % (m * m) // m, flat % m
    in_panel = q < s_
    return in_panel, (t * m + p) * s_ + q, (t * max(r_, 1) + p - s_) * max(r_, 1) + q - s_


@lru_cache(maxsize=16)
def _maps(sym: Symbolic, device: str) -> tuple[_LevelMaps, ...]:
    """The symbolic index arrays as int64 tensors on ``device`` (cached per structure and device)."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64, device=device)

    out = []
    for lv in sym.levels:
        in_asm, asm_dst, _ = _split(lv, lv.asm_dst)
        _, pad_diag, _ = _split(lv, lv.pad_diag)
        if not in_asm.all():  # every stencil entry couples at least one eliminated node
            raise AssertionError("stencil entry outside the front's panel")
        panel, update = [], []
        for c, src, dst in lv.children:
            in_panel, at_panel, at_ring = _split(lv, dst)
            panel.append((c, t(src[in_panel]), t(at_panel[in_panel])))
            update.append((c, t(src[~in_panel]), t(at_ring[~in_panel])))
        out.append(
            _LevelMaps(t(lv.elim), t(lv.ring), t(lv.asm_src), t(asm_dst), t(pad_diag), tuple(panel), tuple(update))
        )
    return tuple(out)


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


@dataclass
class MultifrontalFactor:
    """The factor, level by level: ``blocks[k] = (D11, L21)`` with ``L21`` ``(B * nb, R, S)`` (None at the root).

    ``D11`` is ``L11`` ``(B * nb, S, S)``, or its inverse where ``inverted[k]`` (small fronts, see
    :func:`factorize`). ``ok`` is a 0-d bool tensor on the factor's device: every pivot was positive.
    """

    sym: Symbolic
    batch: int
    blocks: list[tuple[torch.Tensor, torch.Tensor | None]]
    inverted: list[bool]
    ok: torch.Tensor


_SCHUR_BLOCK = 128  # update blocks up to this size are formed whole


def _schur_lower_(f22: torch.Tensor, l21: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``f22 = beta f22 - l21 l21^T`` in place on the lower triangle only, by recursive 2 x 2 blocking.

    Only the lower triangle of an update matrix is ever read, so the strictly upper off-diagonal blocks
    are skipped: about half the flops of one batched GEMM for large fronts (no batched SYRK in torch).
    With ``beta = 0``, ``f22`` may hold anything (uninitialised memory): it is not read.
    """
    r = f22.shape[-1]
    if r <= _SCHUR_BLOCK:
        return f22.baddbmm_(l21, l21.mT, beta=beta, alpha=-1.0)
    h = r // 2
    _schur_lower_(f22[:, :h, :h], l21[:, :h], beta)
    f22[:, h:, :h].baddbmm_(l21[:, h:], l21[:, :h].mT, beta=beta, alpha=-1.0)
    _schur_lower_(f22[:, h:, h:], l21[:, h:], beta)
    return f22


def factorize(
    coef: torch.Tensor, shape: tuple[int, int], check: bool = True, invert_below: int = 0
) -> MultifrontalFactor:
    """Factorise a batch of SPD 9-point systems given as stencil coefficients ``(B, H * W, 9)``.

    Batched torch kernels on ``coef``'s device and in its dtype. ``check`` raises when a pivot is not
    positive; without it nothing waits for the device (the caller reads ``factor.ok``), so the
    factorisation can be captured in a CUDA graph. Levels whose fronts eliminate at most ``invert_below``
    nodes keep ``L11^-1`` instead of ``L11``: the triangular solves of those many small fronts become
    batched matrix products (0: never).
    """
    sym = symbolic(tuple(shape))
    device = coef.device
    maps = _maps(sym, str(device))
    batch = coef.shape[0]
    flat = coef.reshape(batch, -1)
    updates: dict[int, torch.Tensor] = {}
    last_use = {c: k for k, lv in enumerate(sym.levels) for c, _, _ in lv.children}
    blocks: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    inverted: list[bool] = []
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for k, (lv, mp) in enumerate(zip(sym.levels, maps, strict=True)):
        s_, r_, m = lv.S, lv.R, lv.S + lv.R
        # the front in two blocks: the panel [F11; F21] (its first S columns, where the stencil entries
        # go) and F22 (ring x ring, which only the children's updates reach). F22 is never assembled:
        # this level's update is written as -L21 L21^T into fresh memory and the children's entries
        # that fall into F22 (a quarter of it) are added to it, so no ring block is zero-filled or copied
        panel = flat.new_zeros(batch, lv.nb * m * s_)
        panel[:, mp.asm_dst] = flat[:, mp.asm_src]
        panel[:, mp.pad_diag] = 1.0
        to_update = []
        for (c, psrc, pdst), (_, usrc, udst) in zip(mp.panel, mp.update, strict=True):
            child = updates[c].reshape(batch, -1)
            panel.index_add_(1, pdst, child[:, psrc])
            if r_ and len(udst):
                to_update.append((udst, child[:, usrc]))
            if last_use[c] == k:
                del updates[c]
        panel = panel.view(batch * lv.nb, m, s_)
        l11, info = torch.linalg.cholesky_ex(panel[:, :s_])
        bad |= (info != 0).any()
        invert = s_ <= invert_below
        d11 = torch.linalg.inv_ex(l11)[0] if invert else l11
        l21 = None
        if r_:
            if invert:
                l21 = panel[:, s_:] @ d11.mT
            else:
                l21 = torch.linalg.solve_triangular(l11.mT, panel[:, s_:], upper=True, left=False)
            update = _schur_lower_(flat.new_empty(batch * lv.nb, r_, r_), l21, beta=0.0)
            for udst, values in to_update:
                update.view(batch, -1).index_add_(1, udst, values)
            updates[k] = update
        blocks.append((d11, l21))
        inverted.append(invert)
    if check and bool(bad):
        raise InvalidInputError("the system matrix is not symmetric positive definite")
    return MultifrontalFactor(sym, batch, blocks, inverted, ~bad)


def solve_factored(factor: MultifrontalFactor, b: torch.Tensor) -> torch.Tensor:
    """Solve with a factor for right-hand sides ``b`` ``(B, H * W)``: forward then backward over the levels."""
    sym, batch = factor.sym, factor.batch
    n = sym.shape[0] * sym.shape[1]
    maps = _maps(sym, str(b.device))
    x = b.new_zeros(batch, n + 1)  # slot n absorbs the padding
    x[:, :n] = b
    levels = list(zip(sym.levels, factor.blocks, factor.inverted, maps, strict=True))
    for lv, (d11, l21), inv, mp in levels:
        y = x[:, mp.elim].reshape(batch * lv.nb, lv.S, 1)
        y = d11 @ y if inv else torch.linalg.solve_triangular(d11, y, upper=False)
        x[:, mp.elim] = y.view(batch, -1, lv.S)
        if l21 is not None:
            x.index_add_(1, mp.ring.reshape(-1), -(l21 @ y).view(batch, -1))
        x[:, n] = 0.0
    for lv, (d11, l21), inv, mp in reversed(levels):
        y = x[:, mp.elim].reshape(batch * lv.nb, lv.S, 1)
        if l21 is not None:
            y = y - l21.mT @ x[:, mp.ring].reshape(batch * lv.nb, lv.R, 1)
        y = d11.mT @ y if inv else torch.linalg.solve_triangular(d11.mT, y, upper=True)
        x[:, mp.elim] = y.view(batch, -1, lv.S)
        x[:, n] = 0.0
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
    Build ``coef`` with :func:`csr_to_stencil` or :func:`~ultramae_monai.confmap.stencil.stencil_9pt`.
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
