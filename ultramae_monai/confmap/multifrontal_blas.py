"""CPU multifrontal Cholesky in float32: a compiled, tree-parallel walk with BLAS-3 fronts.

Same elimination tree and fronts as :mod:`ultramae_monai.confmap.multifrontal` (nested dissection of the
grid, fixed per shape), but organised for a CPU rather than for batched tensor kernels:

* the tree is cut into independent subtrees, one numba thread each. The small fronts at the bottom of
  a subtree (leaves and the short separators above them) are eliminated first, height by height, many
  at a time in an interleaved layout (:mod:`.multifrontal_bottom`); the rest is walked depth-first. A front's pivot columns are built in place in the factor; its update block waits in a
  per-depth slot of the thread's arena until the parent takes it in (Duff & Reid, ACM TOMS 9(3), 1983):
  no update stack, no copies, no padding, no zero-filling of update blocks. Rings are ordered as in the
  parent's front (:mod:`.multifrontal_symbolic`), so extend-add runs down each column in contiguous runs
  (small rings: entry by entry);
* each front is eliminated by BLAS (:mod:`.blas`, single-threaded), or, for the tiny fronts low in the
  tree where a library call costs more than the arithmetic, by a short vectorised loop (inner loops
  index slices from 0, so numba drops its wraparound checks);
* float32 halves memory traffic and doubles the SIMD width. It is not accurate enough on its own (the
  weights span 1e-5..1), so :mod:`ultramae_monai.confmap.refine` uses the factor as a preconditioner for
  conjugate gradients in float64, which reaches float64 accuracy in two or three steps.

Fronts are column-major (``s`` eliminated nodes, ``r`` ring nodes, ``m = s + r``): the first ``s`` columns
(leading dimension ``m``) become the factor's ``[L11; L21]``, the trailing ``r x r`` block (leading
dimension ``r``) the update; only lower triangles are read. The solve substitutes column by column, so
below each pivot the pivot block and ring rows form one contiguous vector operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numba as nb
import numpy as np

from ultramae_monai.confmap.blas import gemm_nt, partial_cholesky, schur_lower, single_threaded_blas
from ultramae_monai.confmap.multifrontal_bottom import CHUNK, bottom_groups, eliminate_batch, packed_col
from ultramae_monai.confmap.multifrontal_symbolic import Symbolic, symbolic

__all__ = ["CpuFactor", "CpuPlan", "Fronts", "Schedule", "cpu_plan", "factorize_cpu", "solve_cpu"]

SMALL_FRONT = 40  # fronts with m below this are eliminated by the compiled loop, not BLAS
GTH_PANEL = 16  # pivot columns per panel of the blocked row-sum elimination (16-64 measured; 16 best)
LEAF_AREA = 12  # leaf boxes of the nested dissection (see multifrontal_symbolic)
MAP_RING = 40  # children with smaller rings are added entry by entry, larger ones in contiguous runs
BATCH_M = 40  # fronts below this order at the bottom of the tree are eliminated in interleaved batches


class Fronts(NamedTuple):
    """Per-node arrays the compiled kernels read, by name (a numba-typed named tuple).

    Node ``k`` eliminates ``s[k]`` grid nodes (``elim[elim_ptr[k]:elim_ptr[k + 1]]``) and passes an update on
    its ``m[k] - s[k]`` ring nodes (``ring[ring_ptr[k]:]``) to its parent; ``l_ptr`` offsets its ``m * s``
    factor columns. Its children are ``kids[kids_ptr[k]:kids_ptr[k + 1]]``. A child's ring maps to its
    parent's front in runs of consecutive positions (``run_ptr``/``run_a``/``run_q``, :func:`_runs`); its first
    ``split`` ring nodes are the parent's pivots; ``kid_q[kq_off[c]:]`` lists those positions one by one.
    Matrix entries: stencil entry ``asm_src`` (flat into ``(n, 9)``) goes to factor position ``asm_dst`` of
    its node (entries ``asm_ptr[k]:asm_ptr[k + 1]``). ``batch_u[k]`` is where a node eliminated in the batched
    bottom keeps its packed update (-1: not batched). ``upper_pos[g]`` numbers the grid nodes eliminated by
    the nodes above the subtrees (-1 elsewhere).
    """

    s: np.ndarray
    m: np.ndarray
    l_ptr: np.ndarray
    kids_ptr: np.ndarray
    kids: np.ndarray
    run_ptr: np.ndarray
    run_a: np.ndarray
    run_q: np.ndarray
    split: np.ndarray
    kid_q: np.ndarray
    kq_off: np.ndarray
    asm_ptr: np.ndarray
    asm_src: np.ndarray
    asm_dst: np.ndarray
    batch_u: np.ndarray
    elim_ptr: np.ndarray
    elim: np.ndarray
    ring_ptr: np.ndarray
    ring: np.ndarray
    upper_pos: np.ndarray


class Schedule(NamedTuple):
    """Who eliminates what: ``nsub`` subtrees (``first[t]..root[t]`` in post-order, one task each) and the
    ``upper`` nodes above them.

    A node's update block waits for its parent in slot ``sib`` (its index among its siblings) at its depth
    relative to its subtree root: ``slot[d] + sib * slot_len[d]`` in a subtree arena (a subtree root's
    block starts the arena); upper node ``upper[i]`` keeps its block at ``upper_off[i]``; ``task_of`` maps a
    subtree root to its task. The batched bottom (:mod:`.multifrontal_bottom`): nodes ``bottom`` in chunks
    ``chunk_ptr`` (task ``t``'s from ``task_chunk[t]``), scratch sizes ``batch_dims`` (3 ints).
    """

    first: np.ndarray
    root: np.ndarray
    depth: np.ndarray
    sib: np.ndarray
    slot: np.ndarray
    slot_len: np.ndarray
    upper: np.ndarray
    upper_off: np.ndarray
    task_of: np.ndarray
    bottom: np.ndarray
    chunk_ptr: np.ndarray
    task_chunk: np.ndarray
    batch_dims: np.ndarray


@dataclass(frozen=True, eq=False)
class CpuPlan:
    """Per-shape plan: the symbolic analysis, the fronts' arrays, the schedule, and the buffer sizes
    (``arena`` floats per subtree, ``batch_u_len`` floats of packed bottom updates, ``n_upper_nodes`` grid
    nodes eliminated above the subtrees)."""

    sym: Symbolic
    fronts: Fronts
    sched: Schedule
    arena: int
    n_upper_nodes: int
    batch_u_len: int

    @property
    def nsub(self) -> int:
        return len(self.sched.root)


@lru_cache(maxsize=16)
def cpu_plan(shape: tuple[int, int], parts: int = 1, leaf_area: int = LEAF_AREA, batch_bottom: bool = True) -> CpuPlan:
    """The schedule for an ``H x W`` grid split into at least ``parts`` subtrees (cached); with
    ``batch_bottom`` the small fronts at the bottom of the subtrees are eliminated in interleaved batches
    (:mod:`.multifrontal_bottom`), otherwise one by one."""
    sym = symbolic((int(shape[0]), int(shape[1])), leaf_area)
    tr = sym.tree
    nn = len(tr.parent)
    s = np.diff(tr.elim_ptr)
    r = np.diff(tr.ring_ptr)
    m = s + r
    depth = _depths(tr.parent)
    # children lists (post-order within a parent) and where each child's ring sits in kid_q
    order = np.lexsort((np.arange(nn), tr.parent))
    kids = order[tr.parent[order] >= 0].astype(np.int64)
    kids_ptr = np.zeros(nn + 1, dtype=np.int64)
    kids_ptr[1:] = np.cumsum(np.bincount(tr.parent[kids], minlength=nn))
    kq_off = np.full(nn, -1, dtype=np.int64)
    sib = np.zeros(nn, dtype=np.int64)
    par = tr.parent[kids]
    sib[kids] = np.arange(len(kids)) - kids_ptr[par]
    before = np.cumsum(r[kids]) - r[kids]  # ring entries of all earlier children, in kids order
    kq_off[kids] = tr.kid_ptr[par] + before - before[kids_ptr[par]]
    l_ptr = np.zeros(nn + 1, dtype=np.int64)
    l_ptr[1:] = np.cumsum(m * s)
    # subtrees: all nodes at the shallowest depth with at least `parts` nodes
    d_cut = 0
    while (depth == d_cut).sum() < parts and (depth == d_cut + 1).any():
        d_cut += 1
    root = np.flatnonzero(depth == d_cut)
    size = _subtree_sizes(tr.parent)
    first = root - size[root] + 1
    task_of = np.full(nn, -1, dtype=np.int64)
    task_of[root] = np.arange(len(root))
    upper = np.flatnonzero(depth < d_cut)
    upper_off = np.zeros(len(upper) + 1, dtype=np.int64)
    upper_off[1:] = np.cumsum(r[upper] ** 2)
    in_sub = depth >= d_cut
    rel = depth - d_cut
    slot_len = np.zeros(int(rel.max()) + 2, dtype=np.int64)  # one spare level: leaves look below
    np.maximum.at(slot_len, rel[in_sub], r[in_sub] ** 2)
    n_sib = int(sib.max()) + 1
    slot = np.zeros(len(slot_len) + 1, dtype=np.int64)
    slot[1:] = np.cumsum(slot_len * n_sib)
    n = shape[0] * shape[1]
    upper_pos = np.full(n, -1, dtype=np.int64)
    upper_nodes = np.concatenate([tr.elim[tr.elim_ptr[k] : tr.elim_ptr[k + 1]] for k in upper]) if len(upper) else []
    upper_pos[np.asarray(upper_nodes, dtype=np.int64)] = np.arange(len(upper_nodes))
    run_ptr, run_a, run_q, split = _runs(tr.kid_q, kq_off, r, s, tr.parent)
    # the small fronts at the bottom of each subtree are eliminated in batches before its walk
    node_task = np.full(nn, -1, dtype=np.int64)
    for t in range(len(root)):
        node_task[first[t] : root[t] + 1] = t
    height, batched = _bottom(tr.parent, kids_ptr, kids, m, node_task, BATCH_M if batch_bottom else 0)
    nodes = np.flatnonzero(batched)
    bottom, chunk_ptr, task_chunk, u_off = bottom_groups(nodes, node_task[nodes], height[nodes], s, m, len(root))
    batch_u = np.full(nn, -1, dtype=np.int64)
    batch_u[bottom] = u_off[:-1]
    rb = r[bottom]  # batched updates are packed lower triangles
    dims = (
        (int((m * s)[bottom].max()), int((rb * (rb + 1) // 2).max()), int(s[bottom].max()))
        if len(bottom)
        else (1, 1, 1)
    )
    # matrix entries as 32-bit (source, destination) pairs: a third of the index traffic of (src, p, q)
    node_of = np.repeat(np.arange(nn), np.diff(tr.asm_ptr))
    asm_dst = (tr.asm_p + tr.asm_q * m[node_of]).astype(np.int32)
    asm_src = tr.asm_src.astype(np.int32)
    fronts = Fronts(
        s=s, m=m, l_ptr=l_ptr, kids_ptr=kids_ptr, kids=kids, run_ptr=run_ptr, run_a=run_a, run_q=run_q, split=split,
        kid_q=tr.kid_q, kq_off=kq_off, asm_ptr=tr.asm_ptr, asm_src=asm_src, asm_dst=asm_dst, batch_u=batch_u,
        elim_ptr=tr.elim_ptr, elim=tr.elim, ring_ptr=tr.ring_ptr, ring=tr.ring, upper_pos=upper_pos,
    )  # fmt: skip
    sched = Schedule(
        first=first, root=root, depth=depth, sib=sib, slot=slot, slot_len=slot_len, upper=upper,
        upper_off=upper_off, task_of=task_of, bottom=bottom, chunk_ptr=chunk_ptr, task_chunk=task_chunk,
        batch_dims=np.array(dims, dtype=np.int64),
    )  # fmt: skip
    return CpuPlan(sym, fronts, sched, int(slot[-1]), len(upper_nodes), int(u_off[-1]))


def _runs(
    kid_q: np.ndarray, kq_off: np.ndarray, r: np.ndarray, s: np.ndarray, parent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of consecutive parent positions in each child's ring map (see :class:`Fronts`).

    Child ``c``'s block ``run_ptr[c]:run_ptr[c + 1]`` lists its runs' first ring index ``run_a`` and first
    parent position ``run_q``, then a closing entry ``run_a = r[c]``, so run ``i`` ends where ``i + 1`` starts.
    ``split[c]`` counts the ring nodes that are the parent's pivots (they come first: positions increase).
    """
    return _runs_compiled(kid_q, kq_off, r.astype(np.int64), s.astype(np.int64), parent)


@nb.njit(cache=True)
def _runs_compiled(kid_q, kq_off, r, s, parent):
    nn = len(r)
    has = (kq_off >= 0) & (r > 0)
    lens = np.zeros(nn, dtype=np.int64)
    split = np.zeros(nn, dtype=np.int64)
    for c in range(nn):
        if not has[c]:
            continue
        q0 = kq_off[c]
        cnt = 1
        for a in range(1, r[c]):
            if kid_q[q0 + a] != kid_q[q0 + a - 1] + 1:
                cnt += 1
        lens[c] = cnt + 1
        sp_ = s[parent[c]]
        k = 0
        while k < r[c] and kid_q[q0 + k] < sp_:
            k += 1
        split[c] = k
    run_ptr = np.zeros(nn + 1, dtype=np.int64)
    for c in range(nn):
        run_ptr[c + 1] = run_ptr[c] + lens[c]
    run_a = np.empty(run_ptr[-1], dtype=np.int64)
    run_q = np.empty(run_ptr[-1], dtype=np.int64)
    for c in range(nn):
        if not has[c]:
            continue
        q0, o = kq_off[c], run_ptr[c]
        for a in range(r[c]):
            if a == 0 or kid_q[q0 + a] != kid_q[q0 + a - 1] + 1:
                run_a[o] = a
                run_q[o] = kid_q[q0 + a]
                o += 1
        run_a[o] = r[c]
        run_q[o] = -1
    return run_ptr, run_a, run_q, split


@nb.njit(cache=True)
def _bottom(parent, kids_ptr, kids, m, node_task, batch_m):
    """Each node's height above the leaves, and whether it is eliminated in a batch: inside a subtree,
    ``m < batch_m``, and all its children batched too (so batches only ever wait for batches)."""
    nn = len(parent)
    height = np.zeros(nn, dtype=np.int64)
    batched = np.zeros(nn, dtype=np.bool_)
    for k in range(nn):  # post-order: children first
        ok = node_task[k] >= 0 and m[k] < batch_m
        for i in range(kids_ptr[k], kids_ptr[k + 1]):
            c = kids[i]
            height[k] = max(height[k], height[c] + 1)
            ok = ok and batched[c]
        batched[k] = ok
    return height, batched


@nb.njit(cache=True)
def _subtree_sizes(parent):
    size = np.ones(len(parent), dtype=np.int64)
    for k in range(len(parent)):  # post-order: children first
        if parent[k] >= 0:
            size[parent[k]] += size[k]
    return size


@nb.njit(cache=True)
def _depths(parent):
    depth = np.zeros(len(parent), dtype=np.int64)
    for k in range(len(parent) - 1, -1, -1):  # parents come after children in post-order
        if parent[k] >= 0:
            depth[k] = depth[parent[k]] + 1
    return depth


@dataclass
class CpuFactor:
    """float32 factor columns ``(B, l_ptr[-1])`` of a batch of systems, with the plan that placed them."""

    plan: CpuPlan
    lbuf: np.ndarray

    @property
    def batch(self) -> int:
        return self.lbuf.shape[0]

    def precondition(self, r: np.ndarray) -> np.ndarray:
        """The float32 solve as a float64 preconditioner, for :func:`ultramae_monai.confmap.refine.pcg_refine`."""
        return solve_cpu(self, r).astype(np.float64)


# ----------------------------------------------------------------------------------------------- kernels


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _init_pivots(k, lf, m, s, vals, asm_ptr, asm_src, asm_dst):
    """Zero node ``k``'s pivot columns and put in its matrix entries (they all lie in those columns)."""
    lf[: m * s] = 0.0
    for e in range(asm_ptr[k], asm_ptr[k + 1]):
        lf[asm_dst[e]] = vals[asm_src[e]]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _extend_add(uc, rc, ra, rq, b_lo, b_hi, lp, mp, sp, up, packed):
    """Add columns ``b_lo:b_hi`` of a child's update ``uc`` (``rc x rc``, or its lower triangle packed by
    columns if ``packed``) into its parent's front, run by run."""
    rp = mp - sp
    nrun = len(ra) - 1
    jb = 0  # the run holding column b
    for b in range(b_lo, b_hi):
        while ra[jb + 1] <= b:
            jb += 1
        qb = rq[jb] + b - ra[jb]
        base = packed_col(b, rc) if packed else b * rc
        if qb < sp:  # a pivot column of the parent
            dst, col = lp, qb * mp
        else:
            dst, col = up, (qb - sp) * rp - sp
        for j in range(jb, nrun):
            lo = max(ra[j], b)
            n = ra[j + 1] - lo
            d = dst[col + rq[j] + lo - ra[j] : col + rq[j] + ra[j + 1] - ra[j]]
            v = uc[base + lo : base + ra[j + 1]]
            for t in range(n):  # slices indexed from 0: no wraparound checks, so the loop vectorises
                d[t] += v[t]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _extend_add_map(uc, rc, pos, b_lo, b_hi, lp, mp, sp, up, packed):
    """:func:`_extend_add` for small updates, entry by entry through the ring's parent positions ``pos``
    (runs of a few entries cost more to set up than to add)."""
    rp = mp - sp
    for b in range(b_lo, b_hi):
        qb = pos[b]
        base = packed_col(b, rc) if packed else b * rc
        if qb < sp:
            col = qb * mp
            for a in range(b, rc):
                lp[col + pos[a]] += uc[base + a]
        else:
            col = (qb - sp) * rp - sp
            for a in range(b, rc):
                up[col + pos[a]] += uc[base + a]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _update_small(f, m, s, u):
    """``u = -L21 L21^T`` (lower triangle, ld ``r``) from the pivot columns of a small front, column by column
    (the first term assigns, so ``u`` is never zeroed)."""
    r = m - s
    for c in range(r):
        n = r - c
        uc = u[c * r + c : (c + 1) * r]
        if s == 0:
            uc[:] = 0.0
            continue
        ct = f[s + c : m]
        coef = ct[0]
        for i in range(n):
            uc[i] = -ct[i] * coef
        for t in range(1, s):
            ct = f[t * m + s + c : (t + 1) * m]
            coef = ct[0]
            for i in range(n):
                uc[i] -= ct[i] * coef


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _partial_cholesky_small(f, m, s, u):
    """:func:`partial_cholesky` for small fronts: left-looking pivot columns, then ``u = -L21 L21^T``.

    Inner loops run over slices from index 0 so that numba drops its negative-index checks and vectorises.
    """
    for j in range(s):
        cj = f[j * m + j : (j + 1) * m]  # column j from the diagonal down
        for t in range(j):
            c = f[j + t * m]
            ct = f[t * m + j : (t + 1) * m]
            for i in range(m - j):
                cj[i] -= ct[i] * c
        d = cj[0]
        if not d > 0.0:
            return False
        d = np.sqrt(d)
        inv = np.float32(1.0) / d
        for i in range(m - j):
            cj[i] *= inv
        cj[0] = d
    _update_small(f, m, s, u)
    return True


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _partial_cholesky_small_gth(f, m, s, u, z):
    """:func:`_partial_cholesky_small` with every pivot taken from its row sum (Grassmann, Taksar & Heyman).

    For a random-walk Laplacian (off-diagonals <= 0) the diagonal entry of a Schur complement is the
    sum of its row's off-diagonal magnitudes plus the row's *excess* (its coupling to the Dirichlet
    nodes), which elimination only increases by ``|L_jt| z_t`` (``z = L^-1 excess >= 0``). Computed that
    way no subtraction cancels, so float32 pivots stay accurate where ``d - sum`` would lose every digit
    (weights spanning 1e-5..1). On entry the pivot diagonals hold the excesses; ``z`` receives
    ``L11^-1 excess`` (computed along, column by column).
    """
    if not _gth_panel(f, m, 0, s, z):
        return False
    _update_small(f, m, s, u)
    return True


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _gth_panel(f, m, j0, j1, z):
    """Row-sum elimination of pivot columns ``j0:j1``, already updated by the columns before ``j0``.

    Each column takes the panel's earlier columns four at a time: one pass over it per four updates
    instead of one per update (this kernel is bound by loads and stores; 1.03-1.3x on single fronts of
    order 250-730 with 64-column panels, and with it 16-column panels beat 64 by 1.2-1.4x).
    """
    for j in range(j0, j1):
        n = m - j
        cj = f[j * m + j : j * m + j + n]
        exj = cj[0]
        t = j0
        while t + 4 <= j:
            c0, c1, c2, c3 = f[j + t * m], f[j + (t + 1) * m], f[j + (t + 2) * m], f[j + (t + 3) * m]
            exj -= c0 * z[t] + c1 * z[t + 1] + c2 * z[t + 2] + c3 * z[t + 3]
            a0 = f[t * m + j : t * m + j + n]
            a1 = f[(t + 1) * m + j : (t + 1) * m + j + n]
            a2 = f[(t + 2) * m + j : (t + 2) * m + j + n]
            a3 = f[(t + 3) * m + j : (t + 3) * m + j + n]
            for i in range(1, n):
                cj[i] -= a0[i] * c0 + a1[i] * c1 + a2[i] * c2 + a3[i] * c3
            t += 4
        for u in range(t, j):  # the remaining one to three
            c = f[j + u * m]
            exj -= c * z[u]
            cu = f[u * m + j : u * m + j + n]
            for i in range(1, n):
                cj[i] -= cu[i] * c
        acc = exj
        for i in range(1, n):
            acc += abs(cj[i])
        if not acc > 0.0:
            return False
        d = np.sqrt(acc)
        inv = np.float32(1.0) / d
        for i in range(1, n):
            cj[i] *= inv
        cj[0] = d
        z[j] = exj * inv
    return True


@nb.njit(cache=True, nogil=True)
def _partial_cholesky_gth(f, m, s, u, z):
    """The row-sum elimination for large fronts: left-looking panels of ``GTH_PANEL`` columns, each first
    updated by one GEMM with all earlier columns (its pivots' excesses restored and corrected by
    ``|L| z``), then eliminated by :func:`_gth_panel` (``L11`` and ``L21`` together); then the Schur
    update by BLAS. ``z`` (at least ``m + GTH_PANEL`` long) receives ``L11^-1 excess`` in ``z[:s]`` and
    keeps a panel's excesses in ``z[m:]``."""
    for j0 in range(0, s, GTH_PANEL):
        j1 = min(j0 + GTH_PANEL, s)
        if j0 > 0:
            w = j1 - j0
            ex = z[m : m + w]  # the panel's excesses; z[:s] holds L11^-1 excess
            for j in range(j0, j1):
                ex[j - j0] = f[j + j * m]
            gemm_nt(m - j0, w, j0, f[j0:], m, f[j0:], m, f[j0 + j0 * m :], m, 1.0)
            for j in range(j0, j1):
                acc = ex[j - j0]
                for t in range(j0):
                    acc -= f[j + t * m] * z[t]
                f[j + j * m] = acc
        if not _gth_panel(f, m, j0, j1, z):
            return False
    if m > s:
        schur_lower(f, m, s, u)
    return True


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _excess_update(f, m, s, u, z, w):
    """Write the ring rows' excess increments ``-L21 z`` on the update block's diagonal (whose Schur
    values the parent never uses: it recomputes its pivots from row sums); ``w``: scratch of ``>= r``."""
    r = m - s
    acc = w[:r]
    acc[:] = 0.0
    for t in range(s):  # column sweeps: contiguous, vectorised
        zt = z[t]
        col = f[t * m + s : (t + 1) * m]
        for a in range(r):
            acc[a] -= col[a] * zt
    for a in range(r):
        u[a + a * r] = acc[a]


@nb.njit(cache=True, nogil=True)
def _eliminate(f, m, s, u, small, gth, z):
    """One front, by the compiled loop or BLAS, with row-sum pivots if ``gth`` (``z``: scratch of >= 2 m)."""
    if not gth:
        if m < small:
            return _partial_cholesky_small(f, m, s, u)
        return partial_cholesky(f, m, s, u)
    if m < small:
        ok = _partial_cholesky_small_gth(f, m, s, u, z)
    else:
        ok = _partial_cholesky_gth(f, m, s, u, z)
    if ok:
        _excess_update(f, m, s, u, z, z[s:])
    return ok


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _node(k, fr, vals, lf, u, uc0, uc1, small, gth, z, ubuf):
    """Assemble node ``k`` from its matrix entries and its (at most two) children's updates, then eliminate.

    Children's contributions to the pivot columns go in first; their trailing parts are added after the
    elimination has overwritten ``u`` with ``-L21 L21^T``, so update blocks are never zeroed.
    """
    m, s = fr.m[k], fr.s[k]
    _init_pivots(k, lf, m, s, vals, fr.asm_ptr, fr.asm_src, fr.asm_dst)
    for phase in range(2):
        if phase == 1 and not _eliminate(lf, m, s, u, small, gth, z):
            return False
        for i in range(fr.kids_ptr[k], fr.kids_ptr[k + 1]):
            c = fr.kids[i]
            uc = uc0 if i == fr.kids_ptr[k] else uc1
            packed = fr.batch_u[c] >= 0  # eliminated in a batch: packed update in ubuf
            if packed:
                uc = ubuf[fr.batch_u[c] :]
            rc = fr.m[c] - fr.s[c]
            ra, rq = fr.run_a[fr.run_ptr[c] : fr.run_ptr[c + 1]], fr.run_q[fr.run_ptr[c] : fr.run_ptr[c + 1]]
            lo, hi = (0, fr.split[c]) if phase == 0 else (fr.split[c], rc)
            if rc < MAP_RING:
                _extend_add_map(uc, rc, fr.kid_q[fr.kq_off[c] : fr.kq_off[c] + rc], lo, hi, lf, m, s, u, packed)
            else:
                _extend_add(uc, rc, ra, rq, lo, hi, lf, m, s, u, packed)
    return True


@nb.njit(cache=True, parallel=True)
def _factor_all(vals, arenas, uarenas, lbuf, fr, sc, small, gth, ubufs):
    batch = vals.shape[0]
    nsub = len(sc.root)
    ok = np.ones(batch * nsub + batch, dtype=np.bool_)
    m_max = fr.m.max()
    for task in nb.prange(batch * nsub):
        b, t = task // nsub, task % nsub
        arena, lb, vb, ubuf = arenas[task], lbuf[b], vals[b], ubufs[b]
        z = np.empty(2 * m_max, dtype=np.float32)  # row-sum scratch, one per task
        good = True
        fw = np.empty((sc.batch_dims[0], CHUNK), dtype=np.float32)
        uw = np.empty((sc.batch_dims[1], CHUNK), dtype=np.float32)
        zw = np.empty((sc.batch_dims[2], CHUNK), dtype=np.float32)
        vw = np.empty((3, CHUNK), dtype=np.float32)
        for ch in range(sc.task_chunk[t], sc.task_chunk[t + 1]):
            good &= eliminate_batch(
                sc.chunk_ptr[ch], sc.chunk_ptr[ch + 1], sc.bottom, fr, vb, gth[b], lb, ubuf, fw, uw, zw, vw
            )
        d0 = sc.depth[sc.root[t]]
        for k in range(sc.first[t], sc.root[t] + 1):
            if fr.batch_u[k] >= 0:
                continue
            d = sc.depth[k] - d0
            u = arena[sc.slot[d] + (0 if k == sc.root[t] else sc.sib[k]) * sc.slot_len[d] :]
            uc0, uc1 = arena[sc.slot[d + 1] :], arena[sc.slot[d + 1] + sc.slot_len[d + 1] :]
            good &= _node(k, fr, vb, lb[fr.l_ptr[k] :], u, uc0, uc1, small, gth[b], z, ubuf)
        ok[task] = good
    for b in nb.prange(batch):  # the few nodes above the subtrees, per batch item
        good = True
        ua = uarenas[b]
        z = np.empty(2 * m_max, dtype=np.float32)
        for i in range(len(sc.upper)):
            k = sc.upper[i]
            kid_u = []
            for c in fr.kids[fr.kids_ptr[k] : fr.kids_ptr[k + 1]]:
                if sc.task_of[c] >= 0:
                    kid_u.append(arenas[b * nsub + sc.task_of[c]])
                else:
                    kid_u.append(ua[sc.upper_off[np.searchsorted(sc.upper, c)] :])
            while len(kid_u) < 2:
                kid_u.append(ua[:0])
            good &= _node(
                k, fr, vals[b], lbuf[b, fr.l_ptr[k] :], ua[sc.upper_off[i] :], kid_u[0], kid_u[1], small, gth[b], z,
                ubufs[b],
            )  # fmt: skip
        ok[batch * nsub + b] = good
    return ok.all()


_WORKSPACE: dict[tuple, np.ndarray] = {}


def _workspace(key: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 buffer kept between calls: fresh pages of a large array cost more than filling them."""
    buf = _WORKSPACE.pop(key, None)
    if buf is None or buf.shape != shape:
        buf = np.empty(shape, dtype=np.float32)
    return buf


def release(factor: CpuFactor) -> None:
    """Hand a factor's storage back for the next factorisation of the same shape (the factor is then void)."""
    _WORKSPACE[("lbuf",)] = factor.lbuf


@nb.njit(cache=True, parallel=True)
def _entries(coef, vals, row_sums):
    """The float32 matrix entries the fronts gather (``vals``, flat like ``coef``) and per batch item whether
    row-sum pivots apply.

    Row-sum pivots apply (if ``row_sums``) to a random-walk Laplacian, i.e. a diagonally dominant M-matrix:
    no positive off-diagonal and no negative row sum. The diagonal slot then holds the row's excess (its
    row sum, the coupling to the Dirichlet nodes, round-off clipped at 0) instead of the diagonal: the
    elimination rebuilds pivots from excesses. One table for both cases keeps the assembly a plain gather
    (a branch between two arrays there cost ~45 ns per entry: numba kept reference counting in the loop).
    """
    batch, n = coef.shape[0], coef.shape[1] // 9
    ok = np.zeros(batch, dtype=np.bool_)
    ex = np.empty(n)
    for b in range(batch):
        positive = 0
        for p in nb.prange(n):
            acc = 0.0
            for d in range(9):
                v = coef[b, p * 9 + d]
                vals[b, p * 9 + d] = v
                acc += v
                if d != 4 and v > 0.0:
                    positive += 1
            if acc < -1e-12 * abs(coef[b, p * 9 + 4]):  # not diagonally dominant: not a random walk
                positive += 1
            ex[p] = max(acc, 0.0)
        if row_sums and positive == 0:
            ok[b] = True
            for p in nb.prange(n):
                vals[b, p * 9 + 4] = ex[p]
    return ok


def factorize_cpu(
    coef: np.ndarray,
    shape: tuple[int, int],
    small: int = SMALL_FRONT,
    leaf_area: int = LEAF_AREA,
    row_sums: bool = True,
    batch_bottom: bool = True,
) -> CpuFactor | None:
    """float32 factor of a batch of SPD 9-point systems given as stencil coefficients ``(B, H * W, 9)``.

    Returns None when a pivot is not positive in float32 (the caller then factorises in float64).
    ``row_sums`` and ``batch_bottom`` switch off the row-sum pivots and the batched bottom (for checks).
    """
    batch = coef.shape[0]
    threads = nb.get_num_threads()
    plan = cpu_plan((int(shape[0]), int(shape[1])), max(1, -(-threads // batch)), leaf_area, batch_bottom)
    flat = np.ascontiguousarray(coef.reshape(batch, -1), dtype=np.float64)
    vals = _workspace(("vals",), flat.shape)
    gth = _entries(flat, vals, row_sums)
    arenas = _workspace(("arenas",), (batch * plan.nsub, max(plan.arena, 1)))
    uarenas = _workspace(("uarenas",), (batch, max(int(plan.sched.upper_off[-1]), 1)))
    lbuf = _workspace(("lbuf",), (batch, int(plan.fronts.l_ptr[-1])))
    ubufs = _workspace(("ubufs",), (batch, max(plan.batch_u_len, 1)))
    with single_threaded_blas():
        ok = _factor_all(vals, arenas, uarenas, lbuf, plan.fronts, plan.sched, small, gth, ubufs)
    _WORKSPACE[("arenas",)] = arenas
    _WORKSPACE[("ubufs",)] = ubufs
    _WORKSPACE[("uarenas",)] = uarenas
    _WORKSPACE[("vals",)] = vals
    return CpuFactor(plan, lbuf) if ok else None


# ------------------------------------------------------------------------------------------------- solve


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _forward_node(k, x, lb, fr, work, delta):
    """``x_e <- L11^-1 x_e``, ``x_ring -= L21 x_e``; ring updates of upper nodes go to ``delta``.

    Column-oriented substitution: pivot and ring values sit together in ``work``, so each column of
    ``[L11; L21]`` below its diagonal is one contiguous, vectorised update. A node whose values are all
    zero (children included, they came first) changes nothing and is skipped: the confidence map's
    right-hand side lives next to the source row, so the first solve's forward sweep skips most nodes.
    """
    s, m = fr.s[k], fr.m[k]
    off = fr.l_ptr[k]
    e0, r0 = fr.elim_ptr[k], fr.ring_ptr[k]
    elim, ring = fr.elim, fr.ring
    nonzero = False
    for i in range(s):
        v = x[elim[e0 + i]]
        work[i] = v
        nonzero |= v != 0.0
    if not nonzero:
        return
    work[s:m] = 0.0
    for j in range(s):
        xj = work[j] / lb[off + j * m + j]
        work[j] = xj
        col = lb[off + j * m + j + 1 : off + (j + 1) * m]
        w = work[j + 1 : m]
        for i in range(m - j - 1):
            w[i] -= col[i] * xj
    for i in range(s):
        x[elim[e0 + i]] = work[i]
    for a in range(m - s):
        g = ring[r0 + a]
        u = fr.upper_pos[g]
        if u >= 0 and delta.shape[0] > 0:
            delta[u] += work[s + a]
        else:
            x[g] += work[s + a]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _backward_node(k, x, lb, fr, work):
    """``x_e <- L11^-T (x_e - L21^T x_ring)``: one contiguous dot product per pivot, last pivot first."""
    s, m = fr.s[k], fr.m[k]
    off = fr.l_ptr[k]
    e0, r0 = fr.elim_ptr[k], fr.ring_ptr[k]
    elim, ring = fr.elim, fr.ring
    for a in range(m - s):
        work[s + a] = x[ring[r0 + a]]
    for j in range(s - 1, -1, -1):
        col = lb[off + j * m + j + 1 : off + (j + 1) * m]
        y = work[j + 1 : m]
        acc = np.float32(0.0)
        for i in range(m - j - 1):
            acc += col[i] * y[i]
        work[j] = (x[elim[e0 + j]] - acc) / lb[off + j * m + j]
    for j in range(s):
        x[elim[e0 + j]] = work[j]


@nb.njit(cache=True, parallel=True)
def _solve_all(x, lbuf, fr, sc, n_upper, max_m):
    batch = x.shape[0]
    first, root, upper = sc.first, sc.root, sc.upper
    nsub = len(root)
    delta = np.zeros((batch * nsub, n_upper), dtype=np.float32)
    for task in nb.prange(batch * nsub):
        b, t = task // nsub, task % nsub
        work = np.empty(max_m, dtype=np.float32)
        xb, lb, dt = x[b], lbuf[b], delta[task]  # views made once: each one made per node costs refcounting
        for k in range(first[t], root[t] + 1):
            _forward_node(k, xb, lb, fr, work, dt)
    empty = np.zeros(0, dtype=np.float32)
    for b in nb.prange(batch):
        work = np.empty(max_m, dtype=np.float32)
        xb = x[b]
        for i in range(len(upper)):
            k = upper[i]
            for j in range(fr.elim_ptr[k], fr.elim_ptr[k + 1]):
                g = fr.elim[j]
                u = fr.upper_pos[g]
                for t in range(nsub):
                    xb[g] += delta[b * nsub + t, u]
        for i in range(len(upper)):
            _forward_node(upper[i], xb, lbuf[b], fr, work, empty)
        for i in range(len(upper) - 1, -1, -1):
            _backward_node(upper[i], xb, lbuf[b], fr, work)
    for task in nb.prange(batch * nsub):
        b, t = task // nsub, task % nsub
        work = np.empty(max_m, dtype=np.float32)
        xb, lb = x[b], lbuf[b]
        for k in range(root[t], first[t] - 1, -1):
            _backward_node(k, xb, lb, fr, work)


def solve_cpu(factor: CpuFactor, b: np.ndarray) -> np.ndarray:
    """float32 solve ``L L^T x = b`` for ``b`` ``(B, H * W)``; returns a new float32 array."""
    plan = factor.plan
    x = np.array(b, dtype=np.float32, order="C", copy=True)
    _solve_all(x, factor.lbuf, plan.fronts, plan.sched, plan.n_upper_nodes, int(plan.fronts.m.max()))
    return x
