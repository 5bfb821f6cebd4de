"""Symbolic phase of the multifrontal Cholesky for a 9-point stencil on an ``H x W`` grid (C order).

On a grid the elimination tree is known in closed form: recursive bisection of the rectangle along its
longer side by one grid line (a row or column separates the two halves even for 8-neighbour couplings),
down to small leaf boxes (George, SIAM J. Numer. Anal. 10(2), 1973). A tree node eliminates its leaf box
or its separator line; its front is that set followed by the *ring* of its box (the grid nodes around the
box, which all lie on ancestor separators). The child's ring is a subset of the parent's front, so
extend-add is a fixed scatter. Everything here depends on the grid shape only (fixed nodes are ordinary
nodes with identity rows), is computed once per shape and cached.

Nodes are grouped into *levels* by height in the tree (leaves 0), so that a level's fronts are
independent and can be factorised as one batched tensor operation. Within a level every front is padded
to ``S`` eliminated and ``R`` ring slots; padded eliminated slots get identity pivots, padded ring slots
stay zero. Only the lower triangle of a front is ever assembled or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

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


@dataclass
class _Node:
    box: tuple[int, int, int, int]
    elim: np.ndarray
    ring: np.ndarray
    children: list[int]
    height: int = 0


def _build_tree(shape: tuple[int, int], leaf_area: int) -> list[_Node]:
    """Nodes in post-order (children before parents) of the recursive bisection of the grid."""
    h_all, w_all = shape
    idx = np.arange(h_all * w_all).reshape(shape)
    nodes: list[_Node] = []

    def ring_of(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        ra, rb, ca, cb = max(r0 - 1, 0), min(r1 + 1, h_all), max(c0 - 1, 0), min(c1 + 1, w_all)
        keep = np.ones((rb - ra, cb - ca), dtype=bool)
        keep[r0 - ra : r1 - ra, c0 - ca : c1 - ca] = False
        return idx[ra:rb, ca:cb][keep]  # C order, i.e. sorted

    def visit(r0: int, r1: int, c0: int, c1: int) -> int:
        h, w = r1 - r0, c1 - c0
        if h * w <= leaf_area or max(h, w) < 3:
            elim, kids = idx[r0:r1, c0:c1].ravel(), []
        elif h >= w:
            mid = r0 + h // 2
            kids = [visit(r0, mid, c0, c1), visit(mid + 1, r1, c0, c1)]
            elim = idx[mid, c0:c1]
        else:
            mid = c0 + w // 2
            kids = [visit(r0, r1, c0, mid), visit(r0, r1, mid + 1, c1)]
            elim = idx[r0:r1, mid]
        height = 1 + max((nodes[k].height for k in kids), default=-1)
        nodes.append(_Node((r0, r1, c0, c1), elim, ring_of(r0, r1, c0, c1), kids, height))
        return len(nodes) - 1

    visit(0, h_all, 0, w_all)
    # order every ring as its nodes sit in the parent's front (parents first): a child's update then
    # maps to increasing parent positions, so extend-add writes each column in order without branches
    pos = np.empty(h_all * w_all, dtype=np.int64)
    parent = {c: k for k, nd in enumerate(nodes) for c in nd.children}
    for k in range(len(nodes) - 2, -1, -1):
        par = nodes[parent[k]]
        pos[par.elim] = np.arange(len(par.elim))
        pos[par.ring] = len(par.elim) + np.arange(len(par.ring))
        nodes[k].ring = nodes[k].ring[np.argsort(pos[nodes[k].ring], kind="stable")]
    return nodes


def _ptr(lengths: np.ndarray) -> np.ndarray:
    ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(lengths)
    return ptr


def _tree(shape: tuple[int, int], nodes: list[_Node]) -> Tree:
    """Flat per-node arrays and all front positions, vectorised over the whole tree."""
    h_all, w_all = shape
    n = h_all * w_all
    nn = len(nodes)
    s_k = np.array([len(nd.elim) for nd in nodes], dtype=np.int64)
    r_k = np.array([len(nd.ring) for nd in nodes], dtype=np.int64)
    box = np.array([nd.box for nd in nodes], dtype=np.int64).reshape(nn, 4)
    parent = np.full(nn, -1, dtype=np.int64)
    for k, nd in enumerate(nodes):
        parent[nd.children] = k
    elim_ptr, ring_ptr = _ptr(s_k), _ptr(r_k)
    elim = np.concatenate([nd.elim for nd in nodes]).astype(np.int64)
    ring = np.concatenate([nd.ring for nd in nodes]).astype(np.int64) if r_k.sum() else np.zeros(0, np.int64)
    elim_owner = np.repeat(np.arange(nn), s_k)
    ring_owner = np.repeat(np.arange(nn), r_k)
    owner = np.empty(n, dtype=np.int64)
    owner[elim] = elim_owner
    elim_pos = np.empty(n, dtype=np.int64)
    elim_pos[elim] = np.arange(n) - elim_ptr[elim_owner]
    ring_key = ring_owner * n + ring
    key_order = np.argsort(ring_key, kind="stable")
    sorted_key = ring_key[key_order]

    def front_pos(k: np.ndarray, glob: np.ndarray) -> np.ndarray:
        if len(sorted_key) == 0:  # a single leaf: no rings
            return elim_pos[glob]
        at = np.minimum(np.searchsorted(sorted_key, k * n + glob), len(sorted_key) - 1)
        in_ring = key_order[at] - ring_ptr[k] + s_k[k]
        return np.where(owner[glob] == k, elim_pos[glob], in_ring)

    # stencil entry (i, j) belongs to the front of i's owner when j is in that front
    i = np.repeat(np.arange(n), 9)
    d = np.tile(np.arange(9), n)
    ri, ci = i // w_all + d // 3 - 1, i % w_all + d % 3 - 1
    ok = (ri >= 0) & (ri < h_all) & (ci >= 0) & (ci < w_all)
    i, d, ri, ci = i[ok], d[ok], ri[ok], ci[ok]
    j = ri * w_all + ci
    k = owner[i]
    bk = box[k]
    inside = (ri >= bk[:, 0]) & (ri < bk[:, 1]) & (ci >= bk[:, 2]) & (ci < bk[:, 3])
    ok = ~inside | (owner[j] == k)
    i, d, j, k = i[ok], d[ok], j[ok], k[ok]
    order = np.argsort(k, kind="stable")
    i, d, j, k = i[order], d[order], j[order], k[order]
    p, q = elim_pos[i], front_pos(k, j)
    asm_ptr = _ptr(np.bincount(k, minlength=nn))
    # children's ring positions in the parent's front, grouped by parent, children in order
    has_parent = parent[ring_owner] >= 0
    kid_node, kid_glob = ring_owner[has_parent], ring[has_parent]
    kid_par = parent[kid_node]
    order = np.argsort(kid_par, kind="stable")
    kid_q = front_pos(kid_par[order], kid_glob[order])
    kid_ptr = _ptr(np.bincount(kid_par, minlength=nn))
    nkids = np.array([len(nd.children) for nd in nodes], dtype=np.int64)
    height = np.array([nd.height for nd in nodes], dtype=np.int64)
    level_pos = np.zeros(nn, dtype=np.int64)
    for h in range(height.max() + 1):
        at = height == h
        level_pos[at] = np.arange(at.sum())
    return Tree(
        parent, height, level_pos, elim_ptr, elim, ring_ptr, ring, asm_ptr, i * 9 + d,
        np.maximum(p, q), np.minimum(p, q), kid_ptr, kid_q, nkids,
    )  # fmt: skip


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


@lru_cache(maxsize=8)
def symbolic(shape: tuple[int, int], leaf_area: int = LEAF_AREA) -> Symbolic:
    """Elimination tree and index maps for an ``H x W`` grid (cached per shape); levels are built lazily."""
    shape = (int(shape[0]), int(shape[1]))
    nodes = _build_tree(shape, leaf_area)
    tree = _tree(shape, nodes)
    return Symbolic(shape, tree)
