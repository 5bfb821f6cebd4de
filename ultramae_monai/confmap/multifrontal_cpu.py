"""CPU kernels for the lower tree levels of the multifrontal Cholesky (numba), where fronts are small.

Padding thousands of small fronts to one size and running batched library kernels on them is bound by
memory traffic and per-call overhead on a CPU. Here every subtree below a cut height is factorised
depth-first (post-order) in one compiled loop: the front is assembled in a scratch buffer that stays in
cache, children's update matrices come off a stack (Duff & Reid, ACM TOMS 9(3), 1983), and the partial
Cholesky is a row-wise Crout loop whose inner products run over contiguous rows. Subtrees (and batch
items) are independent and run in parallel. The subtree roots hand their update matrices to the
batched upper levels in :mod:`ultramae_monai.confmap.multifrontal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np

from ultramae_monai.confmap.multifrontal_symbolic import Symbolic

__all__ = ["LowerPlan", "backward_lower", "factor_lower", "forward_lower", "lower_plan"]


@dataclass(frozen=True)
class LowerPlan:
    """Nodes below ``cut`` height: subtree node ranges ``[first, root]`` in post-order and buffer sizes."""

    cut: int
    first: np.ndarray
    root: np.ndarray
    l_ptr: np.ndarray  # offsets of each node's (m, s) factor block
    u_ptr: np.ndarray  # offsets of each subtree root's packed update matrix
    stack: np.ndarray  # peak packed-stack size per subtree
    front: int  # largest m * m below the cut


@lru_cache(maxsize=16)
def _plan_cached(sym: Symbolic, cut: int) -> LowerPlan:
    tr = sym.tree
    s = np.diff(tr.elim_ptr)
    r = np.diff(tr.ring_ptr)
    m = s + r
    low = tr.height < cut
    roots = np.flatnonzero(low & ((tr.parent < 0) | (tr.height[np.maximum(tr.parent, 0)] >= cut)))
    size = np.ones(len(s), dtype=np.int64)  # subtree sizes, post-order: first = root - size + 1
    for k in range(len(s)):
        if tr.parent[k] >= 0:
            size[tr.parent[k]] += size[k]
    first = roots - size[roots] + 1
    packed = r * (r + 1) // 2
    stack = _peak_stack(first, roots, tr.nkids, packed)
    l_ptr = np.zeros(len(s) + 1, dtype=np.int64)
    l_ptr[1:] = np.cumsum(np.where(low, m * s, 0))
    u_ptr = np.zeros(len(roots) + 1, dtype=np.int64)
    u_ptr[1:] = np.cumsum(packed[roots])
    front = int((m[low] ** 2).max()) if low.any() else 0
    return LowerPlan(cut, first, roots, l_ptr, u_ptr, stack, front)


def lower_plan(sym: Symbolic, cut: int) -> LowerPlan:
    """Subtrees of ``sym`` below tree height ``cut`` (cached)."""
    return _plan_cached(sym, int(cut))


@nb.njit(cache=True)
def _peak_stack(first: np.ndarray, roots: np.ndarray, nkids: np.ndarray, packed: np.ndarray) -> np.ndarray:
    out = np.zeros(len(roots), dtype=np.int64)
    sizes = np.empty(packed.shape[0], dtype=np.int64)
    for t in range(len(roots)):
        top, depth, peak = 0, 0, 0
        for k in range(first[t], roots[t]):
            for _ in range(nkids[k]):  # pop the children
                depth -= 1
                top -= sizes[depth]
            sizes[depth] = packed[k]
            depth += 1
            top += packed[k]
            peak = max(peak, top)
        out[t] = peak
    return out


@nb.njit(cache=True, fastmath=True, boundscheck=False)
def _factor_node(
    k: int,
    coef: np.ndarray,
    tr_elim_ptr: np.ndarray,
    tr_ring_ptr: np.ndarray,
    asm_ptr: np.ndarray,
    asm_src: np.ndarray,
    asm_p: np.ndarray,
    asm_q: np.ndarray,
    kid_ptr: np.ndarray,
    kid_q: np.ndarray,
    kid_r: np.ndarray,
    stack: np.ndarray,
    base: int,
    f: np.ndarray,
    lbuf: np.ndarray,
    l_off: int,
    u_out: np.ndarray,
    u_off: int,
) -> bool:
    """Assemble, extend-add (children's packed updates from ``stack[base:]``) and partially factor node ``k``."""
    s = tr_elim_ptr[k + 1] - tr_elim_ptr[k]
    r = tr_ring_ptr[k + 1] - tr_ring_ptr[k]
    m = s + r
    f[: m * m] = 0.0
    for e in range(asm_ptr[k], asm_ptr[k + 1]):
        f[asm_p[e] * m + asm_q[e]] = coef[asm_src[e]]
    pos = base
    qo = kid_ptr[k]
    for c in range(kid_r.shape[0]):
        rc = kid_r[c]
        for a in range(rc):
            qa = kid_q[qo + a]
            for b in range(a + 1):
                qb = kid_q[qo + b]
                if qa >= qb:
                    f[qa * m + qb] += stack[pos]
                else:
                    f[qb * m + qa] += stack[pos]
                pos += 1
        qo += rc
    ok = True
    for i in range(m):
        ri = i * m
        for j in range(min(i + 1, s)):
            rj = j * m
            acc = f[ri + j]
            for t in range(j):
                acc -= f[ri + t] * f[rj + t]
            if j == i:
                if not acc > 0.0:
                    ok = False
                    acc = 1.0
                f[ri + i] = np.sqrt(acc)
            else:
                f[ri + j] = acc / f[rj + j]
        if i >= s:  # update row i: four inner products at a time share the loads of row i
            j = s
            while j + 3 <= i:
                r0, r1, r2, r3 = j * m, (j + 1) * m, (j + 2) * m, (j + 3) * m
                a0, a1, a2, a3 = f[ri + j], f[ri + j + 1], f[ri + j + 2], f[ri + j + 3]
                for t in range(s):
                    x = f[ri + t]
                    a0 -= x * f[r0 + t]
                    a1 -= x * f[r1 + t]
                    a2 -= x * f[r2 + t]
                    a3 -= x * f[r3 + t]
                u_out[u_off] = a0
                u_out[u_off + 1] = a1
                u_out[u_off + 2] = a2
                u_out[u_off + 3] = a3
                u_off += 4
                j += 4
            while j <= i:
                rj = j * m
                acc = f[ri + j]
                for t in range(s):
                    acc -= f[ri + t] * f[rj + t]
                u_out[u_off] = acc
                u_off += 1
                j += 1
    for i in range(m):
        for t in range(min(i + 1, s)):
            lbuf[l_off + i * s + t] = f[i * m + t]
    return ok


@nb.njit(cache=True, parallel=True)
def _factor_lower(
    coef: np.ndarray,
    first: np.ndarray,
    roots: np.ndarray,
    stack_size: np.ndarray,
    front: int,
    l_ptr: np.ndarray,
    u_ptr: np.ndarray,
    elim_ptr: np.ndarray,
    ring_ptr: np.ndarray,
    asm_ptr: np.ndarray,
    asm_src: np.ndarray,
    asm_p: np.ndarray,
    asm_q: np.ndarray,
    kid_ptr: np.ndarray,
    kid_q: np.ndarray,
    nkids: np.ndarray,
    lbuf: np.ndarray,
    uroot: np.ndarray,
) -> bool:
    nsub = len(roots)
    n_task = coef.shape[0] * nsub
    ok_all = np.ones(n_task, dtype=np.bool_)
    ring_len = ring_ptr[1:] - ring_ptr[:-1]
    for task in nb.prange(n_task):
        bi, t = task // nsub, task % nsub
        stack = np.empty(max(stack_size[t], 1))
        f = np.empty(max(front, 1))
        rings = np.empty(roots[t] - first[t] + 1, dtype=np.int64)  # ring sizes of the stacked updates
        depth, top = 0, 0
        cb = coef[bi]
        for k in range(first[t], roots[t] + 1):
            nk = nkids[k]
            # children are the last nk entries on the stack, in order
            kid_r = rings[depth - nk : depth].copy()
            base = top
            for c in range(nk):
                base -= kid_r[c] * (kid_r[c] + 1) // 2
            depth -= nk
            r = ring_len[k]
            if k == roots[t]:
                out, off = uroot[bi], u_ptr[t]
            else:
                out, off = stack, base
            if k == roots[t] or r == 0:
                ok = _factor_node(
                    k, cb, elim_ptr, ring_ptr, asm_ptr, asm_src, asm_p, asm_q, kid_ptr, kid_q, kid_r,
                    stack, base, f, lbuf[bi], l_ptr[k], out, off,
                )  # fmt: skip
            else:
                # the update overwrites the children's slots, which the assembly has already read
                tmp = np.empty(r * (r + 1) // 2)
                ok = _factor_node(
                    k, cb, elim_ptr, ring_ptr, asm_ptr, asm_src, asm_p, asm_q, kid_ptr, kid_q, kid_r,
                    stack, base, f, lbuf[bi], l_ptr[k], tmp, 0,
                )  # fmt: skip
                stack[base : base + tmp.shape[0]] = tmp
            ok_all[task] &= ok
            rings[depth] = r
            depth += 1
            top = base + r * (r + 1) // 2
    return ok_all.all()


def factor_lower(sym: Symbolic, plan: LowerPlan, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Factor all subtrees below the cut for a batch ``coef`` ``(B, n * 9)``.

    Returns the factor blocks ``(B, l_ptr[-1])``, the roots' packed updates ``(B, u_ptr[-1])`` and whether
    every pivot was positive.
    """
    tr = sym.tree
    batch = coef.shape[0]
    lbuf = np.empty((batch, int(plan.l_ptr[-1])))
    uroot = np.empty((batch, int(plan.u_ptr[-1])))
    ok = _factor_lower(
        np.ascontiguousarray(coef), plan.first, plan.root, plan.stack, plan.front, plan.l_ptr, plan.u_ptr,
        tr.elim_ptr, tr.ring_ptr, tr.asm_ptr, tr.asm_src, tr.asm_p, tr.asm_q, tr.kid_ptr, tr.kid_q, tr.nkids,
        lbuf, uroot,
    )  # fmt: skip
    return lbuf, uroot, bool(ok)


@nb.njit(cache=True, parallel=True, fastmath=True)
def _forward(
    x: np.ndarray, lbuf: np.ndarray, l_ptr: np.ndarray, lo: int, hi: int,
    elim_ptr: np.ndarray, elim: np.ndarray, ring_ptr: np.ndarray, ring: np.ndarray,
) -> None:  # fmt: skip
    for bi in nb.prange(x.shape[0]):
        xb, lb = x[bi], lbuf[bi]
        for k in range(lo, hi):
            if l_ptr[k + 1] == l_ptr[k]:
                continue
            e0, s = elim_ptr[k], elim_ptr[k + 1] - elim_ptr[k]
            r0, r = ring_ptr[k], ring_ptr[k + 1] - ring_ptr[k]
            off = l_ptr[k]
            y = np.empty(s)
            for i in range(s):
                acc = xb[elim[e0 + i]]
                for t in range(i):
                    acc -= lb[off + i * s + t] * y[t]
                y[i] = acc / lb[off + i * s + i]
                xb[elim[e0 + i]] = y[i]
            for a in range(r):
                acc = 0.0
                row = off + (s + a) * s
                for t in range(s):
                    acc += lb[row + t] * y[t]
                xb[ring[r0 + a]] -= acc


@nb.njit(cache=True, parallel=True, fastmath=True)
def _backward(
    x: np.ndarray, lbuf: np.ndarray, l_ptr: np.ndarray, lo: int, hi: int,
    elim_ptr: np.ndarray, elim: np.ndarray, ring_ptr: np.ndarray, ring: np.ndarray,
) -> None:  # fmt: skip
    for bi in nb.prange(x.shape[0]):
        xb, lb = x[bi], lbuf[bi]
        for k in range(hi - 1, lo - 1, -1):
            if l_ptr[k + 1] == l_ptr[k]:
                continue
            e0, s = elim_ptr[k], elim_ptr[k + 1] - elim_ptr[k]
            r0, r = ring_ptr[k], ring_ptr[k + 1] - ring_ptr[k]
            off = l_ptr[k]
            y = np.empty(s)
            for i in range(s):
                y[i] = xb[elim[e0 + i]]
            for a in range(r):
                xa = xb[ring[r0 + a]]
                row = off + (s + a) * s
                for t in range(s):
                    y[t] -= lb[row + t] * xa
            for i in range(s - 1, -1, -1):
                acc = y[i]
                for t in range(i + 1, s):
                    acc -= lb[off + t * s + i] * y[t]
                y[i] = acc / lb[off + i * s + i]
                xb[elim[e0 + i]] = y[i]


def forward_lower(sym: Symbolic, plan: LowerPlan, lbuf: np.ndarray, x: np.ndarray) -> None:
    """In place ``x <- L^-1 x`` restricted to the nodes below the cut (``x`` is ``(B, >= n)``)."""
    tr = sym.tree
    _forward(x, lbuf, plan.l_ptr, 0, len(tr.height), tr.elim_ptr, tr.elim, tr.ring_ptr, tr.ring)


def backward_lower(sym: Symbolic, plan: LowerPlan, lbuf: np.ndarray, x: np.ndarray) -> None:
    """In place ``x <- L^-T x`` for the nodes below the cut, after the upper levels are solved."""
    tr = sym.tree
    _backward(x, lbuf, plan.l_ptr, 0, len(tr.height), tr.elim_ptr, tr.elim, tr.ring_ptr, tr.ring)


@nb.njit(cache=True, boundscheck=False)
def gather_into(out: np.ndarray, dst: np.ndarray, src_arr: np.ndarray, src: np.ndarray, add: bool) -> None:
    """``out[:, dst] (+)= src_arr[:, src]`` for 2D ``(B, ...)`` arrays: the front assembly and extend-add.

    A compiled loop: torch's indexed copy/add on CPU costs ~10x more per entry.
    """
    for bi in range(out.shape[0]):
        o, v = out[bi], src_arr[bi]
        if add:
            for e in range(dst.shape[0]):
                o[dst[e]] += v[src[e]]
        else:
            for e in range(dst.shape[0]):
                o[dst[e]] = v[src[e]]
