"""The bottom of the CPU multifrontal tree: small fronts eliminated many at a time, interleaved.

Most of the nested-dissection tree's nodes are small: leaves (3x3 and 3x4 boxes of the grid) and the
short separators just above them, dense fronts of order ``m = s + r`` of 20-60 unknowns. One front at a
time, every inner loop of their elimination runs over a handful of elements, so loop set-up and
remainders cost more than the arithmetic (measured here: ~8000 cycles for the ~2500 flops of a 3x3
leaf). Fronts of one shape at one height perform the same operations on different numbers, so they are
eliminated together: the fronts of a chunk of ``C`` nodes are stored *interleaved*, entry ``q`` of node
``i`` at ``F[q, i]``, and every operation of the dense elimination becomes one loop over the ``C`` nodes,
contiguous and vectorised (the layout of batched small-matrix kernels on GPUs and SIMD CPUs, e.g.
Dongarra et al., "Batched linear algebra", 2017). Heights are processed in order, so children are done
before their parents. Results go where the front-by-front path puts them: factor columns ``[L11; L21]``
to the factor; the update ``-L21 L21^T`` (lower triangle packed by columns, with the excess update on
its diagonal when row-sum pivots are used) to a buffer the parents read.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["CHUNK", "bottom_groups", "eliminate_batch", "packed_col"]

CHUNK = 64  # leaves per interleaved block: F (m * s x CHUNK floats) stays in L2 for the leaf sizes used


def bottom_groups(
    nodes: np.ndarray, task: np.ndarray, height: np.ndarray, s: np.ndarray, m: np.ndarray, ntask: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order ``nodes`` by task, height and shape, and cut them into chunks of one height and shape and at
    most ``CHUNK`` nodes (``task`` and ``height`` are per entry of ``nodes``; ``s``, ``m`` per tree node).

    Returns the reordered nodes, the chunk boundaries ``chunk_ptr`` (into the nodes), the first chunk of
    every task ``task_chunk`` (``ntask + 1`` entries) and each node's offset in the packed update buffer.
    """
    if len(nodes) == 0:
        empty = np.zeros(1, dtype=np.int64)
        return empty[:0], empty, np.zeros(ntask + 1, dtype=np.int64), empty
    order = np.lexsort((nodes, m[nodes], s[nodes], height, task))
    lv = nodes[order]
    tk, hk, sk, mk = task[order], height[order], s[lv], m[lv]
    new = np.ones(len(lv), dtype=bool)
    new[1:] = (tk[1:] != tk[:-1]) | (hk[1:] != hk[:-1]) | (sk[1:] != sk[:-1]) | (mk[1:] != mk[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(lv))
    bounds = [np.arange(a, b, CHUNK) for a, b in zip(starts, ends, strict=True)]
    chunk_ptr = np.append(np.concatenate(bounds), len(lv))
    chunk_task = tk[chunk_ptr[:-1]]
    task_chunk = np.searchsorted(chunk_task, np.arange(ntask + 1)).astype(np.int64)
    rk = mk - sk
    u_off = np.zeros(len(lv) + 1, dtype=np.int64)
    u_off[1:] = np.cumsum(rk * (rk + 1) // 2)
    return lv.astype(np.int64), chunk_ptr.astype(np.int64), task_chunk, u_off


@nb.njit(cache=True, nogil=True)
def packed_col(b, r):
    """Offset of column ``b`` of an ``r x r`` lower triangle packed by columns (entry ``(a, b)`` at
    ``packed_col(b, r) + a``, ``a >= b``): the layout of every update a batched front passes up."""
    return b * r - b * (b + 1) // 2


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _add_child(uc, rc, pos, b_lo, b_hi, fw, uw, i, m, s):
    """Add columns ``b_lo:b_hi`` of a child's packed update ``uc`` into interleaved front ``i``: pivot
    columns into ``fw`` (``q + p m``), trailing block into ``uw`` (packed like ``uc``, ``r = m - s``).

    The interleaved twin of the front-by-front path's entry-wise extend-add (``_extend_add_map`` in
    :mod:`.multifrontal_blas`). Routing both through one function on strided or flattened views of the
    batch was measured 4-7% slower in the whole factorisation (one thread, femur and neck), so they stay
    apart.
    """
    r = m - s
    for b in range(b_lo, b_hi):
        qb = pos[b]
        base = packed_col(b, rc)
        if qb < s:
            col = qb * m
            for a in range(b, rc):
                fw[col + pos[a], i] += uc[base + a]
        else:
            col = packed_col(qb - s, r) - s
            for a in range(b, rc):
                uw[col + pos[a], i] += uc[base + a]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def eliminate_batch(lo, hi, nodes, fr, vals, gth, lbuf, ubuf, fw, uw, zw, vw):
    """Eliminate ``nodes[lo:hi]`` (one shape, at most ``CHUNK``) together; False on a bad pivot.

    ``fr`` holds the fronts' arrays (:class:`ultramae_monai.confmap.multifrontal_blas.Fronts`).

    Children (all already done, packed updates at ``ubuf[fr.batch_u[c]:]``) are added as in the front-by-front
    path: their parts in the pivot columns before the elimination, the rest after it. Factor columns go
    to ``lbuf[fr.l_ptr[k]:]``, updates to ``ubuf[fr.batch_u[k]:]`` (the lower triangle of the ``r x r`` update,
    packed column by column: entry ``(a, b)``, ``a >= b``, at ``b r - b (b + 1) / 2 + a``). ``fw``, ``uw``,
    ``zw``, ``vw``: interleaved scratch of at least ``(m * s, CHUNK)``, ``(r (r + 1) / 2, CHUNK)``, ``(s, CHUNK)``
    and ``(3, CHUNK)``.
    """
    s_all, m_all, kids_ptr, kids, split, kid_q, kq_off = fr.s, fr.m, fr.kids_ptr, fr.kids, fr.split, fr.kid_q, fr.kq_off
    asm_ptr, asm_src, asm_dst, l_ptr, u_at = fr.asm_ptr, fr.asm_src, fr.asm_dst, fr.l_ptr, fr.batch_u
    c = hi - lo
    s, m = s_all[nodes[lo]], m_all[nodes[lo]]
    r = m - s
    for q in range(m * s):
        for i in range(c):
            fw[q, i] = 0.0
    for i in range(c):  # assembly: matrix entries (excesses on the diagonal with row sums), children
        k = nodes[lo + i]
        for e in range(asm_ptr[k], asm_ptr[k + 1]):
            fw[asm_dst[e], i] = vals[asm_src[e]]
        for ki in range(kids_ptr[k], kids_ptr[k + 1]):
            ch = kids[ki]
            rc = m_all[ch] - s_all[ch]  # the child's ring
            pos = kid_q[kq_off[ch] : kq_off[ch] + rc]
            _add_child(ubuf[u_at[ch] :], rc, pos, 0, split[ch], fw, uw, i, m, s)
    ok = True
    acc, exj, inv = vw[0], vw[1], vw[2]
    for j in range(s):  # left-looking columns, as _gth_panel / _partial_cholesky_small
        jj = j * m + j
        for i in range(c):
            exj[i] = fw[jj, i]
        for t in range(j):
            tj = t * m + j
            if gth:
                for i in range(c):
                    exj[i] -= fw[tj, i] * zw[t, i]
                first = 1
            else:
                first = 0
            for p in range(first, m - j):
                for i in range(c):
                    fw[jj + p, i] -= fw[tj + p, i] * fw[tj, i]
        if gth:
            for i in range(c):
                acc[i] = exj[i]
            for p in range(1, m - j):
                for i in range(c):
                    acc[i] += abs(fw[jj + p, i])
        else:
            for i in range(c):
                acc[i] = fw[jj, i]
        for i in range(c):
            if not acc[i] > 0.0:
                ok = False
                acc[i] = 1.0
            acc[i] = np.sqrt(acc[i])
            inv[i] = np.float32(1.0) / acc[i]
        for p in range(1, m - j):
            for i in range(c):
                fw[jj + p, i] *= inv[i]
        for i in range(c):
            fw[jj, i] = acc[i]
            if gth:
                zw[j, i] = exj[i] * inv[i]
    for a in range(r):  # update: lower triangle of -L21 L21^T, column a, packed
        col = packed_col(a, r)
        for b in range(a, r):
            q = col + b
            for i in range(c):
                uw[q, i] = 0.0
            for t in range(s):
                pa, pb = t * m + s + a, t * m + s + b
                for i in range(c):
                    uw[q, i] -= fw[pb, i] * fw[pa, i]
        if gth:  # the ring row's excess update -L21 z on the diagonal
            q = col + a
            for i in range(c):
                uw[q, i] = 0.0
            for t in range(s):
                pa = t * m + s + a
                for i in range(c):
                    uw[q, i] -= fw[pa, i] * zw[t, i]
    for i in range(c):  # the children's trailing parts
        k = nodes[lo + i]
        for ki in range(kids_ptr[k], kids_ptr[k + 1]):
            ch = kids[ki]
            rc = m_all[ch] - s_all[ch]
            pos = kid_q[kq_off[ch] : kq_off[ch] + rc]
            _add_child(ubuf[u_at[ch] :], rc, pos, split[ch], rc, fw, uw, i, m, s)
    _deinterleave(fw, m * s, c, lbuf, l_ptr, nodes, lo)  # back to one node at a time
    _deinterleave(uw, r * (r + 1) // 2, c, ubuf, u_at, nodes, lo)
    return ok


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _deinterleave(w, n, c, out, at, nodes, lo):
    """``out[at[nodes[lo + i]] + q] = w[q, i]`` for ``q < n``, ``i < c``: a transpose in blocks of 16 rows,
    so that reads stay in a few cache lines and each node's writes are contiguous (1.9x faster than node
    by node, which reads one line per entry)."""
    for q0 in range(0, n, 16):
        q1 = min(q0 + 16, n)
        for i in range(c):
            o = at[nodes[lo + i]]
            for q in range(q0, q1):
                out[o + q] = w[q, i]
