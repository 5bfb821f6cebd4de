"""CPU multifrontal Cholesky in float32: a compiled, tree-parallel walk with BLAS-3 fronts.

Same elimination tree and fronts as :mod:`ultramae_monai.confmap.multifrontal` (nested dissection of the
grid, fixed per shape), but organised for a CPU rather than for batched tensor kernels:

* the tree is cut into independent subtrees, one numba thread each, walked depth-first. A front lives
  in a per-depth slot of the thread's arena; a finished child adds its update matrix straight into its
  parent's slot (Duff & Reid, ACM TOMS 9(3), 1983), so there is no update stack and no padding;
* each front is eliminated by ``spotrf``/``strsm``/``ssyrk`` (:mod:`.blas`, single-threaded), or, for the
  tiny fronts low in the tree where a library call costs more than the arithmetic, by a short
  vectorised loop;
* float32 halves memory traffic and doubles the SIMD width. It is not accurate enough on its own (the
  weights span 1e-5..1), so :mod:`ultramae_monai.confmap.refine` uses the factor as a preconditioner for
  conjugate gradients in float64, which reaches float64 accuracy in two or three steps.

Fronts are column-major with leading dimension ``m = s + r`` (``s`` eliminated nodes, ``r`` ring nodes);
only the lower triangle is read. The factor keeps each node's first ``s`` columns, ``[L11; L21]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np

from ultramae_monai.confmap.blas import partial_cholesky, single_threaded_blas
from ultramae_monai.confmap.multifrontal_symbolic import Symbolic, symbolic

__all__ = ["CpuFactor", "CpuPlan", "cpu_plan", "factorize_cpu", "solve_cpu"]

SMALL_FRONT = 80  # fronts with m below this are eliminated by the compiled loop, not BLAS


@dataclass(frozen=True, eq=False)
class CpuPlan:
    """Per-shape schedule: ``nsub`` subtrees (``first[t]..root[t]`` in post-order) and the ``upper`` nodes.

    ``slot`` offsets a front at relative depth ``d`` inside a subtree arena of ``arena`` floats; upper
    node ``upper[i]`` has its own front at ``upper_off[i]``. ``l_ptr`` offsets each node's ``m * s``
    factor columns. ``kq_off[c]`` is where child ``c``'s ring positions start in ``tree.kid_q``.
    ``upper_pos[g]`` numbers the grid nodes eliminated by upper nodes (-1 elsewhere).
    """

    sym: Symbolic
    s: np.ndarray
    m: np.ndarray
    depth: np.ndarray
    kq_off: np.ndarray
    first_kid: np.ndarray
    kids_ptr: np.ndarray
    kids: np.ndarray
    l_ptr: np.ndarray
    first: np.ndarray
    root: np.ndarray
    task_of: np.ndarray
    upper: np.ndarray
    upper_off: np.ndarray
    upper_size: int
    slot: np.ndarray
    arena: int
    upper_pos: np.ndarray
    n_upper_nodes: int

    @property
    def nsub(self) -> int:
        return len(self.root)


@lru_cache(maxsize=16)
def cpu_plan(shape: tuple[int, int], parts: int = 1) -> CpuPlan:
    """The schedule for an ``H x W`` grid split into at least ``parts`` subtrees (cached)."""
    sym = symbolic((int(shape[0]), int(shape[1])))
    tr = sym.tree
    nn = len(tr.parent)
    s = np.diff(tr.elim_ptr)
    r = np.diff(tr.ring_ptr)
    m = s + r
    depth = np.zeros(nn, dtype=np.int64)
    for k in range(nn - 1, -1, -1):  # parents come after children in post-order
        if tr.parent[k] >= 0:
            depth[k] = depth[tr.parent[k]] + 1
    # children lists (post-order within a parent) and where each child's ring sits in kid_q
    order = np.lexsort((np.arange(nn), tr.parent))
    order = order[tr.parent[order] >= 0]
    kids = order.astype(np.int64)
    kids_ptr = np.zeros(nn + 1, dtype=np.int64)
    kids_ptr[1:] = np.cumsum(np.bincount(tr.parent[kids], minlength=nn))
    kq_off = np.full(nn, -1, dtype=np.int64)
    first_kid = np.zeros(nn, dtype=np.bool_)
    for p in np.flatnonzero(np.diff(kids_ptr)):
        off = tr.kid_ptr[p]
        for i, c in enumerate(kids[kids_ptr[p] : kids_ptr[p + 1]]):
            kq_off[c] = off
            off += r[c]
            first_kid[c] = i == 0
    l_ptr = np.zeros(nn + 1, dtype=np.int64)
    l_ptr[1:] = np.cumsum(m * s)
    # subtrees: all nodes at the shallowest depth with at least `parts` nodes
    d_cut = 0
    while (depth == d_cut).sum() < parts and (depth == d_cut + 1).any():
        d_cut += 1
    root = np.flatnonzero(depth == d_cut)
    size = np.ones(nn, dtype=np.int64)
    for k in range(nn):
        if tr.parent[k] >= 0:
            size[tr.parent[k]] += size[k]
    first = root - size[root] + 1
    task_of = np.full(nn, -1, dtype=np.int64)
    task_of[root] = np.arange(len(root))
    upper = np.flatnonzero(depth < d_cut)
    upper_off = np.zeros(len(upper) + 1, dtype=np.int64)
    upper_off[1:] = np.cumsum(m[upper] ** 2)
    in_sub = depth >= d_cut
    rel = depth - d_cut
    slot_len = np.zeros(int(rel.max()) + 1, dtype=np.int64)
    np.maximum.at(slot_len, rel[in_sub], m[in_sub] ** 2)
    slot = np.zeros(len(slot_len) + 1, dtype=np.int64)
    slot[1:] = np.cumsum(slot_len)
    n = shape[0] * shape[1]
    upper_pos = np.full(n, -1, dtype=np.int64)
    upper_nodes = np.concatenate([tr.elim[tr.elim_ptr[k] : tr.elim_ptr[k + 1]] for k in upper]) if len(upper) else []
    upper_pos[np.asarray(upper_nodes, dtype=np.int64)] = np.arange(len(upper_nodes))
    return CpuPlan(
        sym, s, m, depth, kq_off, first_kid, kids_ptr, kids, l_ptr, first, root, task_of, upper, upper_off,
        int(upper_off[-1]), slot, int(slot[-1]), upper_pos, len(upper_nodes),
    )  # fmt: skip


@dataclass
class CpuFactor:
    """float32 factor columns ``(B, l_ptr[-1])`` of a batch of systems, with the plan that placed them."""

    plan: CpuPlan
    lbuf: np.ndarray

    @property
    def batch(self) -> int:
        return self.lbuf.shape[0]


# ----------------------------------------------------------------------------------------------- kernels


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _init_front(k, f, m, coef, asm_ptr, asm_src, asm_p, asm_q):
    """Zero the lower triangle of node ``k``'s front and put in its original matrix entries."""
    for j in range(m):
        f[j * m + j : (j + 1) * m] = 0.0
    for e in range(asm_ptr[k], asm_ptr[k + 1]):
        f[asm_p[e] + asm_q[e] * m] = coef[asm_src[e]]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _extend_add(fc, mc, sc, q, fp, mp):
    """Add a child's update (the trailing block of its front ``fc``) into its parent's front ``fp``."""
    rc = mc - sc
    for b in range(rc):
        qb = q[b]
        base = (sc + b) * mc + sc
        for a in range(b, rc):
            qa = q[a]
            if qa >= qb:
                fp[qa + qb * mp] += fc[base + a]
            else:
                fp[qb + qa * mp] += fc[base + a]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _partial_cholesky_small(f, m, s):
    """:func:`partial_cholesky` for small fronts: left-looking pivot columns, then one rank-``s`` update."""
    for j in range(s):
        cj = j * m
        for t in range(j):
            c = f[j + t * m]
            ct = t * m
            for i in range(j, m):
                f[cj + i] -= f[ct + i] * c
        d = f[cj + j]
        if not d > 0.0:
            return False
        d = np.sqrt(d)
        f[cj + j] = d
        inv = np.float32(1.0) / d
        for i in range(j + 1, m):
            f[cj + i] *= inv
    for c in range(s, m):
        cc = c * m
        for t in range(s):
            coef = f[c + t * m]
            ct = t * m
            for i in range(c, m):
                f[cc + i] -= f[ct + i] * coef
    return True


@nb.njit(cache=True, nogil=True)
def _eliminate(f, m, s):
    if m < SMALL_FRONT:
        return _partial_cholesky_small(f, m, s)
    return partial_cholesky(f, m, s)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _factor_subtree(
    t, coef, arena, lb, first, root, slot, depth, s_, m_, parent, nkids, first_kid, kq_off, kid_q, l_ptr,
    asm_ptr, asm_src, asm_p, asm_q,
):
    """Factor subtree ``t`` depth-first; its root's update stays in slot 0 of ``arena``."""
    ok = True
    d0 = depth[root[t]]
    for k in range(first[t], root[t] + 1):
        m, s = m_[k], s_[k]
        d = depth[k] - d0
        f = arena[slot[d] :]
        if nkids[k] == 0:
            _init_front(k, f, m, coef, asm_ptr, asm_src, asm_p, asm_q)
        ok &= _eliminate(f, m, s)
        lb[l_ptr[k] : l_ptr[k] + m * s] = f[: m * s]
        if k != root[t]:
            p = parent[k]
            fp = arena[slot[d - 1] :]
            if first_kid[k]:
                _init_front(p, fp, m_[p], coef, asm_ptr, asm_src, asm_p, asm_q)
            _extend_add(f, m, s, kid_q[kq_off[k] : kq_off[k] + m - s], fp, m_[p])
    return ok


@nb.njit(cache=True, parallel=True)
def _factor_all(
    coef, arenas, uarenas, lbuf, first, root, slot, depth, s_, m_, parent, nkids, first_kid, kq_off, kid_q,
    l_ptr, asm_ptr, asm_src, asm_p, asm_q, upper, upper_off, task_of, kids_ptr, kids,
):
    batch = coef.shape[0]
    nsub = len(root)
    ok = np.ones(batch * nsub + batch, dtype=np.bool_)
    for task in nb.prange(batch * nsub):
        b, t = task // nsub, task % nsub
        ok[task] = _factor_subtree(
            t, coef[b], arenas[task], lbuf[b], first, root, slot, depth, s_, m_, parent, nkids, first_kid,
            kq_off, kid_q, l_ptr, asm_ptr, asm_src, asm_p, asm_q,
        )  # fmt: skip
    for b in nb.prange(batch):  # the few nodes above the subtrees, per batch item
        fu = uarenas[b]
        good = True
        for i in range(len(upper)):
            k = upper[i]
            m, s = m_[k], s_[k]
            f = fu[upper_off[i] :]
            _init_front(k, f, m, coef[b], asm_ptr, asm_src, asm_p, asm_q)
            for c in kids[kids_ptr[k] : kids_ptr[k + 1]]:
                if task_of[c] >= 0:
                    fc = arenas[b * nsub + task_of[c]]
                else:
                    fc = fu[upper_off[np.searchsorted(upper, c)] :]
                _extend_add(fc, m_[c], s_[c], kid_q[kq_off[c] : kq_off[c] + m_[c] - s_[c]], f, m)
            good &= _eliminate(f, m, s)
            lbuf[b, l_ptr[k] : l_ptr[k] + m * s] = f[: m * s]
        ok[batch * nsub + b] = good
    return ok.all()


def factorize_cpu(coef: np.ndarray, shape: tuple[int, int]) -> CpuFactor | None:
    """float32 factor of a batch of SPD 9-point systems given as stencil coefficients ``(B, H * W, 9)``.

    Returns None when a pivot is not positive in float32 (the caller then factorises in float64).
    """
    batch = coef.shape[0]
    threads = nb.get_num_threads()
    plan = cpu_plan((int(shape[0]), int(shape[1])), max(1, -(-threads // batch)))
    tr = plan.sym.tree
    flat = np.ascontiguousarray(coef.reshape(batch, -1), dtype=np.float64)
    arenas = np.empty((batch * plan.nsub, max(plan.arena, 1)), dtype=np.float32)
    uarenas = np.empty((batch, max(plan.upper_size, 1)), dtype=np.float32)
    lbuf = np.empty((batch, int(plan.l_ptr[-1])), dtype=np.float32)
    with single_threaded_blas():
        ok = _factor_all(
            flat, arenas, uarenas, lbuf, plan.first, plan.root, plan.slot, plan.depth, plan.s, plan.m,
            tr.parent, tr.nkids, plan.first_kid, plan.kq_off, tr.kid_q, plan.l_ptr, tr.asm_ptr, tr.asm_src,
            tr.asm_p, tr.asm_q, plan.upper, plan.upper_off, plan.task_of, plan.kids_ptr, plan.kids,
        )  # fmt: skip
    return CpuFactor(plan, lbuf) if ok else None


# ------------------------------------------------------------------------------------------------- solve


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _forward_node(k, x, lb, l_ptr, s_, m_, elim_ptr, elim, ring_ptr, ring, work, upper_pos, delta):
    """``x_e <- L11^-1 x_e``, ``x_ring -= L21 x_e``; ring updates of upper nodes go to ``delta``."""
    s, m = s_[k], m_[k]
    off = l_ptr[k]
    e0, r0 = elim_ptr[k], ring_ptr[k]
    for i in range(s):
        work[i] = x[elim[e0 + i]]
    work[s:m] = 0.0
    for j in range(s):
        col = off + j * m
        yj = work[j] / lb[col + j]
        work[j] = yj
        for i in range(j + 1, m):
            work[i] -= lb[col + i] * yj
    for i in range(s):
        x[elim[e0 + i]] = work[i]
    for a in range(m - s):
        g = ring[r0 + a]
        u = upper_pos[g]
        if u >= 0 and delta.shape[0] > 0:
            delta[u] += work[s + a]
        else:
            x[g] += work[s + a]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _backward_node(k, x, lb, l_ptr, s_, m_, elim_ptr, elim, ring_ptr, ring, work):
    """``x_e <- L11^-T (x_e - L21^T x_ring)``."""
    s, m = s_[k], m_[k]
    off = l_ptr[k]
    e0, r0 = elim_ptr[k], ring_ptr[k]
    for i in range(s):
        work[i] = x[elim[e0 + i]]
    for a in range(m - s):
        work[s + a] = x[ring[r0 + a]]
    for j in range(s - 1, -1, -1):
        col = off + j * m
        acc = work[j]
        for i in range(j + 1, m):
            acc -= lb[col + i] * work[i]
        work[j] = acc / lb[col + j]
    for i in range(s):
        x[elim[e0 + i]] = work[i]


@nb.njit(cache=True, parallel=True)
def _solve_all(
    x, lbuf, first, root, upper, s_, m_, l_ptr, elim_ptr, elim, ring_ptr, ring, upper_pos, n_upper, max_m,
):
    batch = x.shape[0]
    nsub = len(root)
    delta = np.zeros((batch * nsub, n_upper), dtype=np.float32)
    for task in nb.prange(batch * nsub):
        b, t = task // nsub, task % nsub
        work = np.empty(max_m, dtype=np.float32)
        for k in range(first[t], root[t] + 1):
            _forward_node(k, x[b], lbuf[b], l_ptr, s_, m_, elim_ptr, elim, ring_ptr, ring, work, upper_pos, delta[task])
    empty = np.zeros(0, dtype=np.float32)
    for b in nb.prange(batch):
        work = np.empty(max_m, dtype=np.float32)
        xb = x[b]
        for i in range(len(upper)):
            k = upper[i]
            for j in range(elim_ptr[k], elim_ptr[k + 1]):
                g = elim[j]
                u = upper_pos[g]
                for t in range(nsub):
                    xb[g] += delta[b * nsub + t, u]
        for i in range(len(upper)):
            _forward_node(upper[i], xb, lbuf[b], l_ptr, s_, m_, elim_ptr, elim, ring_ptr, ring, work, upper_pos, empty)
        for i in range(len(upper) - 1, -1, -1):
            _backward_node(upper[i], xb, lbuf[b], l_ptr, s_, m_, elim_ptr, elim, ring_ptr, ring, work)
    for task in nb.prange(batch * nsub):
        b, t = task // nsub, task % nsub
        work = np.empty(max_m, dtype=np.float32)
        for k in range(root[t], first[t] - 1, -1):
            _backward_node(k, x[b], lbuf[b], l_ptr, s_, m_, elim_ptr, elim, ring_ptr, ring, work)


def solve_cpu(factor: CpuFactor, b: np.ndarray) -> np.ndarray:
    """float32 solve ``L L^T x = b`` for ``b`` ``(B, H * W)``; returns a new float32 array."""
    plan = factor.plan
    tr = plan.sym.tree
    x = np.array(b, dtype=np.float32, order="C", copy=True)
    _solve_all(
        x, factor.lbuf, plan.first, plan.root, plan.upper, plan.s, plan.m, plan.l_ptr, tr.elim_ptr, tr.elim,
        tr.ring_ptr, tr.ring, plan.upper_pos, plan.n_upper_nodes, int(plan.m.max()),
    )  # fmt: skip
    return x
