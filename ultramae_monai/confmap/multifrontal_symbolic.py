"""Symbolic phase of the multifrontal Cholesky for a 9-point stencil on an ``H x W`` grid (C order).

On a grid the elimination tree is known in closed form: recursive bisection of the rectangle along its
longer side by one grid line (a row or column separates the two halves even for 8-neighbour couplings),
down to small leaf boxes (George, SIAM J. Numer. Anal. 10(2), 1973). A tree node eliminates its leaf box
or its separator line; its front is that set followed by the *ring* of its box (the grid nodes around the
box, which all lie on ancestor separators), ordered as those nodes sit in the parent's front. The
child's ring is a subset of the parent's front, so extend-add is a fixed scatter, to increasing
positions. Everything here depends on the grid shape only (fixed nodes are ordinary nodes with identity
rows), is computed once per shape in compiled passes (~0.1 s at 512x476) and cached.

Nodes are grouped into *levels* by height in the tree (leaves 0), so that a level's fronts are
independent and can be factorised as one batched tensor operation. Within a level every front is padded
to ``S`` eliminated and ``R`` ring slots; padded eliminated slots get identity pivots, padded ring slots
stay zero. Only the lower triangle of a front is ever assembled or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numba as nb
import numpy as np

__all__ = ["DIRECTIONS", "Level", "Symbolic", "Tree", "symbolic"]

#: the 9 stencil directions ``(di, dj)``; direction ``d`` of node ``i`` is ``(d // 3 - 1, d % 3 - 1)``
DIRECTIONS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))
LEAF_AREA = 12  # boxes of at most this many nodes are eliminated whole


@dataclass(frozen=True, eq=False)
class Level:
    """Index maps of one level of ``nb`` fronts, each padded to ``S`` eliminated + ``R`` ring slots.

    ``elim``/``ring`` hold global node numbers, ``n`` (a dummy slot) where padded. ``asm_dst`` are flat
    positions in the level's ``(nb, S + R, S + R)`` fronts receiving stencil entries ``asm_src`` (flat
    into an ``(n, 9)`` coefficient array). ``pad_diag`` are the padded pivots set to 1. ``children``
    lists ``(child level, src, dst)``: lower-triangle entries of that level's ``(nb_c, R_c, R_c)`` update
    matrices and their flat targets here.
    """

    S: int
    R: int
    elim: np.ndarray
    ring: np.ndarray
    asm_src: np.ndarray
    asm_dst: np.ndarray
    pad_diag: np.ndarray
    children: tuple[tuple[int, np.ndarray, np.ndarray], ...]

    @property
    def nb(self) -> int:
        return self.elim.shape[0]

    def flops(self) -> float:
        """Dense flops of the level: Cholesky S^3/3, triangular solve S^2 R, update S R^2 (per front)."""
        s, r = float(self.S), float(self.R)
        return self.nb * (s**3 / 3 + s * s * r + s * r * r)


@dataclass(frozen=True, eq=False)
class Tree:
    """The tree node by node in post-order (children first), unpadded, as flat CSR-style int64 arrays.

    Node ``k`` eliminates ``elim[elim_ptr[k]:elim_ptr[k + 1]]``; its ring is ``ring[ring_ptr[k]:...]``;
    front position ``p < s`` is the ``p``-th eliminated node, ``s + a`` the ``a``-th ring node. Stencil
    entry ``asm_src[e]`` (flat into ``(n, 9)``) goes to front ``(asm_p[e], asm_q[e])``, lower triangle.
    ``kid_q[kid_ptr[k]:...]`` are the front positions of the rings of its ``nkids[k]`` children, in order.
    """

    parent: np.ndarray
    height: np.ndarray
    level_pos: np.ndarray
    elim_ptr: np.ndarray
    elim: np.ndarray
    ring_ptr: np.ndarray
    ring: np.ndarray
    asm_ptr: np.ndarray
    asm_src: np.ndarray
    asm_p: np.ndarray
    asm_q: np.ndarray
    kid_ptr: np.ndarray
    kid_q: np.ndarray
    nkids: np.ndarray


@dataclass(frozen=True, eq=False)
class Symbolic:
    """Per-shape structure: the unpadded ``tree`` and, built on first use, the padded ``levels``.

    The levels serve the batched tensor kernels (GPU, float64 path); the CPU path needs the tree only.
    """

    shape: tuple[int, int]
    tree: Tree

    @cached_property
    def levels(self) -> tuple[Level, ...]:
        n = self.shape[0] * self.shape[1]
        return tuple(_level(self.tree, h, n) for h in range(int(self.tree.height.max()) + 1))

    def flops(self) -> float:
        return sum(lv.flops() for lv in self.levels)


def _ptr(lengths: np.ndarray) -> np.ndarray:
    ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(lengths)
    return ptr


def _level(tr: Tree, h: int, n: int) -> Level:
    """The padded layout of the fronts at height ``h``, vectorised over the level."""
    s_k, r_k = np.diff(tr.elim_ptr), np.diff(tr.ring_ptr)
    ks = np.flatnonzero(tr.height == h)
    nb_ = len(ks)
    s_max, r_max = int(s_k[ks].max()), int(r_k[ks].max())
    m = s_max + r_max
    shift = np.zeros(len(s_k), dtype=np.int64)
    shift[ks] = s_max - s_k[ks]  # ring slots of node k start at S instead of s_k

    def padded(k: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.where(x >= s_k[k], x + shift[k], x)

    def rect(ptr: np.ndarray, vals: np.ndarray, width: int) -> np.ndarray:
        out = np.full((nb_, width), n, dtype=np.int64)
        lens = ptr[ks + 1] - ptr[ks]
        rows = np.repeat(np.arange(nb_), lens)
        cols = np.arange(lens.sum()) - np.repeat(_ptr(lens)[:-1], lens)
        out[rows, cols] = vals[np.repeat(ptr[ks], lens) + cols]
        return out

    elim, ring = rect(tr.elim_ptr, tr.elim, s_max), rect(tr.ring_ptr, tr.ring, r_max)
    lens = tr.asm_ptr[ks + 1] - tr.asm_ptr[ks]
    e = np.repeat(tr.asm_ptr[ks] - _ptr(lens)[:-1], lens) + np.arange(lens.sum())
    k_of = np.repeat(ks, lens)
    t_of = tr.level_pos[k_of]
    dst = (t_of * m + padded(k_of, tr.asm_p[e])) * m + padded(k_of, tr.asm_q[e])
    tt, pp = np.nonzero(np.arange(s_max)[None, :] >= s_k[ks][:, None])
    pad = tt * m * m + pp * (m + 1)
    # extend-add maps, grouped by child height and then by ring size (one tril pattern per group)
    kids = np.flatnonzero((tr.parent >= 0) & (tr.height[np.maximum(tr.parent, 0)] == h))
    offset = np.zeros(len(s_k), dtype=np.int64)  # start of each child's block in its parent's kid_q
    children = []
    if len(kids):
        par = tr.parent[kids]
        # children of one parent are consecutive in kid_q, in increasing node order
        order = np.lexsort((kids, par))
        kids, par = kids[order], par[order]
        first = np.r_[True, par[1:] != par[:-1]]
        within = np.cumsum(r_k[kids]) - r_k[kids]
        block_start = np.maximum.accumulate(np.where(first, within, 0))
        offset[kids] = tr.kid_ptr[par] + within - block_start
        groups: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for r in np.unique(r_k[kids]):
            sel = kids[r_k[kids] == r]
            a, b = np.tril_indices(int(r))
            for hc in np.unique(tr.height[sel]):
                cs = sel[tr.height[sel] == hc]
                rc_pad = int(r_k[tr.height == hc].max())
                par_c = tr.parent[cs]
                q = padded(par_c[:, None], tr.kid_q[offset[cs][:, None] + np.arange(r)[None, :]])
                qa, qb = q[:, a], q[:, b]
                src = (tr.level_pos[cs][:, None] * rc_pad + a) * rc_pad + b
                dst_c = (tr.level_pos[par_c][:, None] * m + np.maximum(qa, qb)) * m + np.minimum(qa, qb)
                groups.setdefault(int(hc), []).append((src.ravel(), dst_c.ravel()))
        children = [
            (hc, np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v]))
            for hc, v in sorted(groups.items())
        ]
    return Level(s_max, r_max, elim, ring, tr.asm_src[e], dst, pad, tuple(children))


@nb.njit(cache=True)
def _bisect(h_all: int, w_all: int, leaf_area: int):
    """Post-order nodes of the recursive bisection: boxes, kind (0 leaf, 1 row separator, 2 column), cut, children."""
    cap = 2 * h_all * w_all + 1
    box = np.empty((cap, 4), dtype=np.int64)
    kind = np.empty(cap, dtype=np.int64)
    cut = np.empty(cap, dtype=np.int64)
    kids = np.full((cap, 2), -1, dtype=np.int64)
    height = np.zeros(cap, dtype=np.int64)
    stack = np.empty((64 + 2 * (h_all + w_all), 5), dtype=np.int64)  # r0, r1, c0, c1, expanded
    done = np.empty(64 + 2 * (h_all + w_all), dtype=np.int64)  # emitted subtree roots awaiting a parent
    sp, dp, nn = 0, 0, 0
    stack[0] = (0, h_all, 0, w_all, 0)
    sp = 1
    while sp > 0:
        sp -= 1
        r0, r1, c0, c1, expanded = stack[sp]
        h, w = r1 - r0, c1 - c0
        leaf = h * w <= leaf_area or max(h, w) < 3
        if not leaf and not expanded:
            stack[sp] = (r0, r1, c0, c1, 1)
            if h >= w:
                mid = r0 + h // 2
                stack[sp + 1] = (mid + 1, r1, c0, c1, 0)
                stack[sp + 2] = (r0, mid, c0, c1, 0)
            else:
                mid = c0 + w // 2
                stack[sp + 1] = (r0, r1, mid + 1, c1, 0)
                stack[sp + 2] = (r0, r1, c0, mid, 0)
            sp += 3
            continue
        box[nn] = (r0, r1, c0, c1)
        if leaf:
            kind[nn], cut[nn] = 0, -1
        else:
            kind[nn] = 1 if h >= w else 2
            cut[nn] = r0 + h // 2 if h >= w else c0 + w // 2
            kids[nn, 1] = done[dp - 1]
            kids[nn, 0] = done[dp - 2]
            dp -= 2
            height[nn] = 1 + max(height[kids[nn, 0]], height[kids[nn, 1]])
        done[dp] = nn
        dp += 1
        nn += 1
    return box[:nn].copy(), kind[:nn].copy(), cut[:nn].copy(), kids[:nn].copy(), height[:nn].copy()


@nb.njit(cache=True)
def _sets(h_all: int, w_all: int, box, kind, cut, kids):
    """Eliminated sets (C order) and rings (ordered as in the parent's front) of every node, CSR-style."""
    nn = box.shape[0]
    s = np.empty(nn, dtype=np.int64)
    r = np.empty(nn, dtype=np.int64)
    for k in range(nn):
        r0, r1, c0, c1 = box[k]
        if kind[k] == 0:
            s[k] = (r1 - r0) * (c1 - c0)
        else:
            s[k] = (c1 - c0) if kind[k] == 1 else (r1 - r0)
        ra, rb, ca, cb = max(r0 - 1, 0), min(r1 + 1, h_all), max(c0 - 1, 0), min(c1 + 1, w_all)
        r[k] = (rb - ra) * (cb - ca) - (r1 - r0) * (c1 - c0)
    elim_ptr = np.zeros(nn + 1, dtype=np.int64)
    ring_ptr = np.zeros(nn + 1, dtype=np.int64)
    for k in range(nn):
        elim_ptr[k + 1] = elim_ptr[k] + s[k]
        ring_ptr[k + 1] = ring_ptr[k] + r[k]
    elim = np.empty(elim_ptr[-1], dtype=np.int64)
    ring = np.empty(ring_ptr[-1], dtype=np.int64)
    for k in range(nn):
        r0, r1, c0, c1 = box[k]
        o = elim_ptr[k]
        if kind[k] == 0:
            for i in range(r0, r1):
                for j in range(c0, c1):
                    elim[o] = i * w_all + j
                    o += 1
        elif kind[k] == 1:
            for j in range(c0, c1):
                elim[o] = cut[k] * w_all + j
                o += 1
        else:
            for i in range(r0, r1):
                elim[o] = i * w_all + cut[k]
                o += 1
        o = ring_ptr[k]
        for i in range(max(r0 - 1, 0), min(r1 + 1, h_all)):
            for j in range(max(c0 - 1, 0), min(c1 + 1, w_all)):
                if not (r0 <= i < r1 and c0 <= j < c1):
                    ring[o] = i * w_all + j
                    o += 1
    # rings in parent-front order, parents first (reverse post-order)
    parent = np.full(nn, -1, dtype=np.int64)
    for k in range(nn):
        for c in kids[k]:
            if c >= 0:
                parent[c] = k
    pos = np.empty(h_all * w_all, dtype=np.int64)
    for k in range(nn - 2, -1, -1):
        p = parent[k]
        for a in range(elim_ptr[p], elim_ptr[p + 1]):
            pos[elim[a]] = a - elim_ptr[p]
        for a in range(ring_ptr[p], ring_ptr[p + 1]):
            pos[ring[a]] = s[p] + a - ring_ptr[p]
        seg = ring[ring_ptr[k] : ring_ptr[k + 1]]
        keys = np.empty(len(seg), dtype=np.int64)
        for a in range(len(seg)):
            keys[a] = pos[seg[a]]
        ring[ring_ptr[k] : ring_ptr[k + 1]] = seg[np.argsort(keys, kind="mergesort")]
    return parent, elim_ptr, elim, ring_ptr, ring


@nb.njit(cache=True)
def _maps(h_all: int, w_all: int, box, kids, parent, elim_ptr, elim, ring_ptr, ring):
    """Assembly entries (stencil entry -> lower-triangle front position) and children's ring positions."""
    nn = len(parent)
    n = h_all * w_all
    owner = np.empty(n, dtype=np.int64)
    for k in range(nn):
        for a in range(elim_ptr[k], elim_ptr[k + 1]):
            owner[elim[a]] = k
    pos = np.full(n, -1, dtype=np.int64)
    cnt = np.zeros(nn, dtype=np.int64)
    for pass_ in range(2):  # count, then fill
        if pass_ == 1:
            asm_ptr = np.zeros(nn + 1, dtype=np.int64)
            for k in range(nn):
                asm_ptr[k + 1] = asm_ptr[k] + cnt[k]
            total = asm_ptr[-1]
            asm_src = np.empty(total, dtype=np.int64)
            asm_p = np.empty(total, dtype=np.int64)
            asm_q = np.empty(total, dtype=np.int64)
        for k in range(nn):
            s = elim_ptr[k + 1] - elim_ptr[k]
            for a in range(elim_ptr[k], elim_ptr[k + 1]):
                pos[elim[a]] = a - elim_ptr[k]
            for a in range(ring_ptr[k], ring_ptr[k + 1]):
                pos[ring[a]] = s + a - ring_ptr[k]
            r0, r1, c0, c1 = box[k]
            o = 0 if pass_ == 0 else asm_ptr[k]
            for a in range(elim_ptr[k], elim_ptr[k + 1]):
                i = elim[a]
                ii, ij = i // w_all, i % w_all
                for d in range(9):
                    ri, ci = ii + d // 3 - 1, ij + d % 3 - 1
                    if ri < 0 or ri >= h_all or ci < 0 or ci >= w_all:
                        continue
                    j = ri * w_all + ci
                    inside = r0 <= ri < r1 and c0 <= ci < c1
                    if inside and owner[j] != k:
                        continue
                    if pass_ == 0:
                        cnt[k] += 1
                    else:
                        p, q = pos[i], pos[j]
                        asm_src[o] = i * 9 + d
                        asm_p[o] = max(p, q)
                        asm_q[o] = min(p, q)
                        o += 1
            for a in range(elim_ptr[k], elim_ptr[k + 1]):
                pos[elim[a]] = -1
            for a in range(ring_ptr[k], ring_ptr[k + 1]):
                pos[ring[a]] = -1
    # children's rings in their parent's front, grouped by parent, children in node order
    kid_cnt = np.zeros(nn, dtype=np.int64)
    for c in range(nn):
        if parent[c] >= 0:
            kid_cnt[parent[c]] += ring_ptr[c + 1] - ring_ptr[c]
    kid_ptr = np.zeros(nn + 1, dtype=np.int64)
    for k in range(nn):
        kid_ptr[k + 1] = kid_ptr[k] + kid_cnt[k]
    kid_q = np.empty(kid_ptr[-1], dtype=np.int64)
    for k in range(nn):
        if kids[k, 0] < 0:
            continue
        s = elim_ptr[k + 1] - elim_ptr[k]
        for a in range(elim_ptr[k], elim_ptr[k + 1]):
            pos[elim[a]] = a - elim_ptr[k]
        for a in range(ring_ptr[k], ring_ptr[k + 1]):
            pos[ring[a]] = s + a - ring_ptr[k]
        o = kid_ptr[k]
        for c in kids[k]:
            for a in range(ring_ptr[c], ring_ptr[c + 1]):
                kid_q[o] = pos[ring[a]]
                o += 1
        for a in range(elim_ptr[k], elim_ptr[k + 1]):
            pos[elim[a]] = -1
        for a in range(ring_ptr[k], ring_ptr[k + 1]):
            pos[ring[a]] = -1
    return asm_ptr, asm_src, asm_p, asm_q, kid_ptr, kid_q


def _tree(shape: tuple[int, int], leaf_area: int) -> Tree:
    """The whole tree in three compiled passes: bisection, sets and rings, assembly and extend-add maps."""
    h_all, w_all = shape
    box, kind, cut, kids, height = _bisect(h_all, w_all, leaf_area)
    parent, elim_ptr, elim, ring_ptr, ring = _sets(h_all, w_all, box, kind, cut, kids)
    asm_ptr, asm_src, asm_p, asm_q, kid_ptr, kid_q = _maps(
        h_all, w_all, box, kids, parent, elim_ptr, elim, ring_ptr, ring
    )
    nkids = (kids >= 0).sum(axis=1).astype(np.int64)
    level_pos = np.zeros(len(parent), dtype=np.int64)
    for h in range(int(height.max()) + 1):
        at = height == h
        level_pos[at] = np.arange(at.sum())
    return Tree(
        parent, height, level_pos, elim_ptr, elim, ring_ptr, ring, asm_ptr, asm_src, asm_p, asm_q, kid_ptr, kid_q,
        nkids,
    )  # fmt: skip


@lru_cache(maxsize=8)
def symbolic(shape: tuple[int, int], leaf_area: int = LEAF_AREA) -> Symbolic:
    """Elimination tree and index maps for an ``H x W`` grid (cached per shape); levels are built lazily."""
    shape = (int(shape[0]), int(shape[1]))
    return Symbolic(shape, _tree(shape, leaf_area))
