"""The leaves of the CPU multifrontal factorisation, eliminated many at a time in an interleaved layout.

Half of the nested-dissection tree's nodes are leaves: small boxes of the grid (``s`` nodes, a ring of
``r``), each a dense front of order ``m = s + r`` of 20-80 unknowns. One front at a time, every inner loop
of their elimination runs over 3-60 elements, so loop set-up and remainders cost more than the
arithmetic (measured here: ~8000 cycles for the ~2500 flops of a 3x3 leaf). All leaves of one shape
perform the same operations on different numbers, so they are eliminated together: the fronts of a
chunk of ``C`` leaves are stored *interleaved*, entry ``q`` of leaf ``i`` at ``F[q, i]``, and every
operation of the dense elimination becomes one loop over the ``C`` leaves, contiguous and vectorised
(the layout of batched small-matrix kernels on GPUs and SIMD CPUs, e.g. Dongarra et al., "Batched
linear algebra", 2017). The results go to the same places as those of the front-by-front path: the
factor columns ``[L11; L21]`` to the factor, the update ``-L21 L21^T`` (lower triangle, packed by
columns, with the excess update on its diagonal when row-sum pivots are used) to a buffer the parents
read.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["CHUNK", "eliminate_leaves", "leaf_groups", "matrix_entry"]

CHUNK = 64  # leaves per interleaved block: F (m * s x CHUNK floats) stays in L2 for the leaf sizes used


def leaf_groups(
    leaves: np.ndarray, task: np.ndarray, s: np.ndarray, m: np.ndarray, ntask: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order ``leaves`` by task, then shape, and cut them into chunks of one shape and at most ``CHUNK``.

    Returns the reordered leaves, the chunk boundaries ``chunk_ptr`` (into the leaves), the first chunk
    of every task ``task_chunk`` (``ntask + 1`` entries) and each leaf's offset in the update buffer.
    """
    if len(leaves) == 0:
        empty = np.zeros(1, dtype=np.int64)
        return empty[:0], empty, np.zeros(ntask + 1, dtype=np.int64), empty
    order = np.lexsort((leaves, m[leaves], s[leaves], task))
    lv = leaves[order]
    tk, sk, mk = task[order], s[lv], m[lv]
    new = np.ones(len(lv), dtype=bool)
    new[1:] = (tk[1:] != tk[:-1]) | (sk[1:] != sk[:-1]) | (mk[1:] != mk[:-1])
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


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def matrix_entry(code, coef, ex, gth):
    """Stencil entry ``code`` (flat into ``(n, 9)``; ``-1 - i`` for node ``i``'s diagonal), whose diagonals
    are the rows' excesses ``ex`` with row-sum pivots (``gth``)."""
    if code >= 0:
        return coef[code]
    node = -1 - code
    return ex[node] if gth else coef[node * 9 + 4]


@nb.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def eliminate_leaves(
    lo, hi, leaves, s, m, coef, ex, gth, asm_ptr, asm_code, asm_dst, lbuf, l_ptr, ubuf, u_at, fw, uw, zw, vw
):
    """Eliminate leaves ``leaves[lo:hi]`` (one shape, at most ``CHUNK``) together; False on a bad pivot.

    Factor columns go to ``lbuf[l_ptr[k]:]``, updates to ``ubuf[u_at[k]:]`` (the lower triangle of the
    ``r x r`` update, packed column by column: entry ``(a, b)``, ``a >= b``, at ``b r - b (b + 1) / 2 + a``). ``fw``, ``uw``, ``zw``, ``vw``: interleaved scratch of at least
    ``(m * s, CHUNK)``, ``(r * r, CHUNK)``, ``(s, CHUNK)`` and ``(3, CHUNK)``.
    """
    c = hi - lo
    r = m - s
    for q in range(m * s):
        for i in range(c):
            fw[q, i] = 0.0
    for i in range(c):  # assembly: the leaf's matrix entries (excesses on the diagonal with row sums)
        k = leaves[lo + i]
        for e in range(asm_ptr[k], asm_ptr[k + 1]):
            fw[asm_dst[e], i] = matrix_entry(asm_code[e], coef, ex, gth)
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
    for a in range(r):  # update: lower triangle of -L21 L21^T, column a
        for b in range(a, r):
            q = b + a * r
            for i in range(c):
                uw[q, i] = 0.0
            for t in range(s):
                pa, pb = t * m + s + a, t * m + s + b
                for i in range(c):
                    uw[q, i] -= fw[pb, i] * fw[pa, i]
        if gth:  # the ring row's excess update -L21 z on the diagonal
            q = a + a * r
            for i in range(c):
                uw[q, i] = 0.0
            for t in range(s):
                pa = t * m + s + a
                for i in range(c):
                    uw[q, i] -= fw[pa, i] * zw[t, i]
    for i in range(c):  # back to one leaf at a time
        k = leaves[lo + i]
        lf = lbuf[l_ptr[k] : l_ptr[k] + m * s]
        for q in range(m * s):
            lf[q] = fw[q, i]
        uf = ubuf[u_at[k] : u_at[k] + r * (r + 1) // 2]
        o = 0
        for a in range(r):  # packed: column a's rows a..r-1, then the next column
            for b in range(a, r):
                uf[o] = uw[b + a * r, i]
                o += 1
    return ok
