"""Semicoarsening multigrid with beam-line relaxation, as a CG preconditioner: numba kernels for the CPU.

The confidence-map system is strongly anisotropic: beam (vertical) couplings are ~1 in smooth tissue,
lateral and diagonal ones at most ``exp(-beta * gamma / (1 + gamma))``, and all of them jump down to 1e-5
at strong echoes. Point smoothers and algebraic multigrid with standard coarsening struggle with that
(issue 3 measures pyamg at 5.8 s). The black-box remedy for anisotropic, jumping coefficients on a
structured grid is semicoarsening multigrid (Schaffer, SIAM J. Sci. Comput. 20(1), 1998; Dendy 1982):

* relaxation solves whole beam lines (grid columns) exactly with the Thomas algorithm, in zebra order
  (even columns, then odd; reversed after the coarse-grid correction so the V-cycle is symmetric);
* the grid is coarsened along the lateral axis only, ``W -> ceil(W / 2) -> ... -> 1`` column, where
  the coarsest problem is one tridiagonal solve;
* odd columns are interpolated from their neighbours with weights from the vertically collapsed stencil
  (operator-dependent, so interpolation does not smear across strong edges);
* coarse operators are Galerkin products ``P^T A P``, which stay 9-point stencils and are formed in
  stencil form.

One V(1, 1)-cycle preconditions conjugate gradients (float64), which then converges in a handful of
iterations independent of image size, so the whole solve is O(pixels). Every array is a zero-padded
``(H + 2, W + 2)`` grid (see :mod:`ultramae_monai.confmap.stencil`); a level hierarchy is packed in flat
buffers with per-level offsets so the whole solve is one compiled call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ultramae_monai.confmap.stencil import Stencil2D

__all__ = ["Hierarchy", "SolveInfo", "build_hierarchy", "pcg_solve"]

_NJIT = {"cache": True, "fastmath": False, "nogil": True}


@dataclass(frozen=True)
class SolveInfo:
    """Outcome of an iterative solve: iterations used and final relative residual ``|b - Ax| / |b|``."""

    iterations: int
    residual: float


@dataclass(frozen=True)
class Hierarchy:
    """Multigrid levels of one 2D system packed in flat float64 buffers (``ops`` rows: c, s, e, se, ne,
    inverse Thomas pivots, Thomas multipliers, left and right interpolation weights)."""

    height: int
    widths: np.ndarray
    offsets: np.ndarray
    ops: np.ndarray


@njit(**_NJIT)
def _view(buf, off, h, w):
    return buf[off : off + (h + 2) * (w + 2)].reshape((h + 2, w + 2))


@njit(**_NJIT)
def _level(ops, off, h, w):
    """The nine operator arrays of one level as padded 2D views."""
    return (
        _view(ops[0], off, h, w),
        _view(ops[1], off, h, w),
        _view(ops[2], off, h, w),
        _view(ops[3], off, h, w),
        _view(ops[4], off, h, w),
        _view(ops[5], off, h, w),
        _view(ops[6], off, h, w),
        _view(ops[7], off, h, w),
        _view(ops[8], off, h, w),
    )


@njit(**_NJIT)
def _coupling(c, s, e, se, ne, i, j, a, b):
    """Matrix entry between padded node (i, j) and (i + a, j + b), |a|, |b| <= 1."""
    if a == 0:
        if b == 0:
            return c[i, j]
        return e[i, j] if b == 1 else e[i, j - 1]
    if a == 1:
        if b == 0:
            return s[i, j]
        return se[i, j] if b == 1 else ne[i + 1, j - 1]
    if b == 0:
        return s[i - 1, j]
    return ne[i, j] if b == 1 else se[i - 1, j - 1]


@njit(**_NJIT)
def _thomas_factor(c, s, invd, cp, h, w):
    """LU pivots of every column's tridiagonal block, computed row by row for all columns at once."""
    for i in range(1, h + 1):
        for j in range(1, w + 1):
            d = c[i, j] - s[i - 1, j] * cp[i - 1, j]
            invd[i, j] = 1.0 / d
            cp[i, j] = s[i, j] / d


@njit(**_NJIT)
def _interp_weights(c, s, e, se, ne, pl, pr, h, w):
    """Collapsed-stencil interpolation weights of the fine-only columns (even padded index)."""
    for i in range(1, h + 1):
        for j in range(2, w + 1, 2):
            den = c[i, j] + s[i, j] + s[i - 1, j]
            if den <= 0.0:
                den = c[i, j]
            left = -(e[i, j - 1] + se[i - 1, j - 1] + ne[i + 1, j - 1])
            right = -(e[i, j] + se[i, j] + ne[i, j]) if j < w else 0.0
            pl[i, j] = left / den
            pr[i, j] = right / den


@njit(**_NJIT)
def _galerkin(c, s, e, se, ne, pl, pr, cc, cs, ce, cse, cne, h, w, wc):
    """Coarse 9-point stencil ``P^T A P`` of a lateral semicoarsening step."""
    acc = np.zeros((3, 3))
    for ic in range(1, h + 1):
        for jc in range(1, wc + 1):
            acc[:, :] = 0.0
            for k in range(3):  # support of the coarse basis function: fine columns 2jc-2 .. 2jc
                fj = 2 * jc - 2 + k
                if fj < 1 or fj > w:
                    continue
                pf = 1.0 if k == 1 else (pr[ic, fj] if k == 0 else pl[ic, fj])
                if pf == 0.0:
                    continue
                for a in range(-1, 2):
                    gi = ic + a
                    if gi < 1 or gi > h:
                        continue
                    for b in range(-1, 2):
                        gj = fj + b
                        if gj < 1 or gj > w:
                            continue
                        v = pf * _coupling(c, s, e, se, ne, ic, fj, a, b)
                        if v == 0.0:
                            continue
                        if gj % 2 == 1:
                            acc[a + 1, (gj + 1) // 2 - jc + 1] += v
                        else:
                            acc[a + 1, gj // 2 - jc + 1] += v * pl[gi, gj]
                            acc[a + 1, gj // 2 + 1 - jc + 1] += v * pr[gi, gj]
            cc[ic, jc] = acc[1, 1]
            cs[ic, jc] = acc[2, 1]
            ce[ic, jc] = acc[1, 2]
            cse[ic, jc] = acc[2, 2]
            cne[ic, jc] = acc[0, 2]


@njit(**_NJIT)
def _setup(ops, widths, offsets, h):
    nlev = widths.shape[0]
    for lev in range(nlev):
        w, o = widths[lev], offsets[lev]
        c, s, e, se, ne, invd, cp, pl, pr = _level(ops, o, h, w)
        _thomas_factor(c, s, invd, cp, h, w)
        if lev + 1 < nlev:
            _interp_weights(c, s, e, se, ne, pl, pr, h, w)
            wc, oc = widths[lev + 1], offsets[lev + 1]
            cc, cs, ce, cse, cne, _, _, _, _ = _level(ops, oc, h, wc)
            _galerkin(c, s, e, se, ne, pl, pr, cc, cs, ce, cse, cne, h, w, wc)


def build_hierarchy(st: Stencil2D) -> Hierarchy:
    """Galerkin levels ``W, ceil(W/2), ..., 1`` and their line factorisations for one stencil."""
    h, w = st.shape
    widths = [w]
    while widths[-1] > 1:
        widths.append((widths[-1] + 1) // 2)
    sizes = [(h + 2) * (wl + 2) for wl in widths]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    ops = np.zeros((9, int(sum(sizes))))
    n0 = sizes[0]
    for k, a in enumerate((st.c, st.s, st.e, st.se, st.ne)):
        ops[k, :n0] = a.ravel()
    widths_a = np.asarray(widths, dtype=np.int64)
    _setup(ops, widths_a, offsets, h)
    return Hierarchy(height=h, widths=widths_a, offsets=offsets, ops=ops)


@njit(**_NJIT)
def _relax(c, s, e, se, ne, invd, cp, x, b, h, w, parity):
    """Exact line solves on the columns of one parity (padded index), with the others held fixed."""
    j0 = 1 if parity == 1 else 2
    for i in range(1, h + 1):
        for j in range(j0, w + 1, 2):
            r = b[i, j] - (
                e[i, j] * x[i, j + 1]
                + e[i, j - 1] * x[i, j - 1]
                + se[i, j] * x[i + 1, j + 1]
                + se[i - 1, j - 1] * x[i - 1, j - 1]
                + ne[i, j] * x[i - 1, j + 1]
                + ne[i + 1, j - 1] * x[i + 1, j - 1]
            )
            x[i, j] = (r - s[i - 1, j] * x[i - 1, j]) * invd[i, j]
    for i in range(h - 1, 0, -1):
        for j in range(j0, w + 1, 2):
            x[i, j] -= cp[i, j] * x[i + 1, j]


@njit(inline="always", **_NJIT)
def _row(c, s, e, se, ne, x, i, j):
    """``(A x)[i, j]`` for the padded symmetric 9-point stencil."""
    return (
        c[i, j] * x[i, j]
        + s[i, j] * x[i + 1, j]
        + s[i - 1, j] * x[i - 1, j]
        + e[i, j] * x[i, j + 1]
        + e[i, j - 1] * x[i, j - 1]
        + se[i, j] * x[i + 1, j + 1]
        + se[i - 1, j - 1] * x[i - 1, j - 1]
        + ne[i, j] * x[i - 1, j + 1]
        + ne[i + 1, j - 1] * x[i + 1, j - 1]
    )


@njit(**_NJIT)
def _apply(c, s, e, se, ne, x, y, h, w):
    """``y = A x`` on the interior."""
    for i in range(1, h + 1):
        for j in range(1, w + 1):
            y[i, j] = _row(c, s, e, se, ne, x, i, j)


@njit(**_NJIT)
def _restrict_residual(c, s, e, se, ne, pl, pr, x, b, bc, h, w, wc):
    """Coarse right-hand side ``P^T (b - A x)``, fused so the fine residual is never stored."""
    for i in range(1, h + 1):
        for jc in range(1, wc + 1):
            acc = 0.0
            for k in range(3):
                j = 2 * jc - 2 + k
                if j < 1 or j > w:
                    continue
                pf = 1.0 if k == 1 else (pr[i, j] if k == 0 else pl[i, j])
                r = b[i, j] - _row(c, s, e, se, ne, x, i, j)
                acc += pf * r
            bc[i, jc] = acc


@njit(**_NJIT)
def _prolong_add(pl, pr, xc, x, h, w):
    for i in range(1, h + 1):
        for j in range(1, w + 1, 2):
            x[i, j] += xc[i, (j + 1) // 2]
        for j in range(2, w + 1, 2):
            x[i, j] += pl[i, j] * xc[i, j // 2] + pr[i, j] * xc[i, j // 2 + 1]


@njit(**_NJIT)
def _vcycle(ops, widths, offsets, h, xs, bs):
    """One symmetric V(1,1)-cycle for ``A x = b`` with ``x = 0`` on entry; level 0 lives in xs/bs[:n0]."""
    nlev = widths.shape[0]
    for lev in range(nlev):
        w, o = widths[lev], offsets[lev]
        c, s, e, se, ne, invd, cp, pl, pr = _level(ops, o, h, w)
        x, b = _view(xs, o, h, w), _view(bs, o, h, w)
        x[:, :] = 0.0
        _relax(c, s, e, se, ne, invd, cp, x, b, h, w, 1)
        if lev + 1 == nlev:
            break
        _relax(c, s, e, se, ne, invd, cp, x, b, h, w, 0)
        wc, oc = widths[lev + 1], offsets[lev + 1]
        _restrict_residual(c, s, e, se, ne, pl, pr, x, b, _view(bs, oc, h, wc), h, w, wc)
    for lev in range(nlev - 2, -1, -1):
        w, o = widths[lev], offsets[lev]
        c, s, e, se, ne, invd, cp, pl, pr = _level(ops, o, h, w)
        x, b = _view(xs, o, h, w), _view(bs, o, h, w)
        wc, oc = widths[lev + 1], offsets[lev + 1]
        _prolong_add(pl, pr, _view(xs, oc, h, wc), x, h, w)
        _relax(c, s, e, se, ne, invd, cp, x, b, h, w, 0)
        _relax(c, s, e, se, ne, invd, cp, x, b, h, w, 1)


@njit(**_NJIT)
def _pcg(ops, widths, offsets, h, b, x, tol, maxiter):
    w = widths[0]
    n0 = (h + 2) * (w + 2)
    c, s, e, se, ne, _, _, _, _ = _level(ops, 0, h, w)
    total = ops.shape[1]
    xs = np.zeros(total)
    bs = np.zeros(total)
    r = np.zeros((h + 2, w + 2))
    q = np.zeros((h + 2, w + 2))
    _apply(c, s, e, se, ne, x, q, h, w)
    r[:, :] = b - q
    bnorm = np.sqrt(np.sum(b * b))
    if bnorm == 0.0:
        x[:, :] = 0.0
        return 0, 0.0
    rnorm = np.sqrt(np.sum(r * r))
    if rnorm <= tol * bnorm:
        return 0, rnorm / bnorm
    bs[:n0] = r.ravel()
    _vcycle(ops, widths, offsets, h, xs, bs)
    p = xs[:n0].copy().reshape((h + 2, w + 2))
    rz = np.sum(r * p)
    it = 0
    while it < maxiter:
        it += 1
        _apply(c, s, e, se, ne, p, q, h, w)
        alpha = rz / np.sum(p * q)
        x += alpha * p
        r -= alpha * q
        rnorm = np.sqrt(np.sum(r * r))
        if rnorm <= tol * bnorm or not np.isfinite(rnorm):
            break
        bs[:n0] = r.ravel()
        _vcycle(ops, widths, offsets, h, xs, bs)
        z = xs[:n0].reshape((h + 2, w + 2))
        rz_new = np.sum(r * z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return it, rnorm / bnorm


def pcg_solve(
    hier: Hierarchy, b: np.ndarray, x0: np.ndarray | None = None, tol: float = 1e-8, maxiter: int = 100
) -> tuple[np.ndarray, SolveInfo]:
    """Solve ``A x = b`` (padded arrays) by multigrid-preconditioned CG from ``x0`` (default 0)."""
    x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=np.float64, copy=True)
    it, res = _pcg(hier.ops, hier.widths, hier.offsets, hier.height, b, x, tol, maxiter)
    return x, SolveInfo(iterations=int(it), residual=float(res))
