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
from functools import lru_cache

import numpy as np

__all__ = ["DIRECTIONS", "Level", "Symbolic", "Tree", "symbolic"]

#: the 9 stencil directions ``(di, dj)``; direction ``d`` of node ``i`` is ``(d // 3 - 1, d % 3 - 1)``
DIRECTIONS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))
LEAF_AREA = 12  # boxes of at most this many nodes are eliminated whole


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Symbolic:
    """Per-shape structure: padded ``levels`` (for batched tensor kernels) and the unpadded ``tree``."""

    shape: tuple[int, int]
    levels: tuple[Level, ...]
    tree: Tree

    def flops(self) -> float:
        return sum(lv.flops() for lv in self.levels)


@dataclass
class _Node:
    box: tuple[int, int, int, int]
    elim: np.ndarray
    ring: np.ndarray
    children: list[int]
    height: int = 0
    level_pos: int = 0  # index within its level


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
    return nodes


def _front_maps(shape: tuple[int, int], nodes: list[_Node]) -> list[tuple[np.ndarray, ...]]:
    """Per node, in unpadded front positions: stencil entries ``(src, p, q)`` (``p >= q``) and children maps.

    ``src`` indexes an ``(n, 9)`` coefficient array; the entry goes to front row ``p``, column ``q``.
    The children map lists, for each child in order, the positions of its ring nodes in this front.
    """
    h_all, w_all = shape
    n = h_all * w_all
    owner = np.empty(n, dtype=np.int64)  # tree node eliminating each grid node
    elim_pos = np.empty(n, dtype=np.int64)
    for k, node in enumerate(nodes):
        owner[node.elim] = k
        elim_pos[node.elim] = np.arange(len(node.elim))
    rows, cols = np.divmod(np.arange(n), w_all)
    out = []
    for k, node in enumerate(nodes):
        s = len(node.elim)

        def front_pos(glob: np.ndarray, k: int = k, node: _Node = node, s: int = s) -> np.ndarray:
            return np.where(owner[glob] == k, elim_pos[glob], s + np.searchsorted(node.ring, glob))

        r0, r1, c0, c1 = node.box
        i = np.repeat(node.elim, 9)
        d = np.tile(np.arange(9), s)
        ri, ci = rows[i] + d // 3 - 1, cols[i] + d % 3 - 1
        ok = (ri >= 0) & (ri < h_all) & (ci >= 0) & (ci < w_all)
        i, d, ri, ci = i[ok], d[ok], ri[ok], ci[ok]
        j = ri * w_all + ci
        # j is in this front unless it lies in the box and is eliminated by a descendant
        ok = ~((ri >= r0) & (ri < r1) & (ci >= c0) & (ci < c1)) | (owner[j] == k)
        i, d, j = i[ok], d[ok], j[ok]
        p, q = elim_pos[i], front_pos(j)
        kid_maps = [front_pos(nodes[c].ring) for c in node.children]
        out.append((i * 9 + d, np.maximum(p, q), np.minimum(p, q), kid_maps))
    return out


def _levels(nodes: list[_Node], maps: list[tuple[np.ndarray, ...]], n: int) -> tuple[Level, ...]:
    by_level: list[list[int]] = [[] for _ in range(nodes[-1].height + 1)]
    for k, node in enumerate(nodes):
        node.level_pos = len(by_level[node.height])
        by_level[node.height].append(k)
    sizes = [(max(len(nodes[k].elim) for k in ks), max(len(nodes[k].ring) for k in ks)) for ks in by_level]

    levels = []
    for lv, ks in enumerate(by_level):
        s_max, r_max = sizes[lv]
        m = s_max + r_max
        elim = np.full((len(ks), s_max), n, dtype=np.int64)
        ring = np.full((len(ks), r_max), n, dtype=np.int64)
        src, dst, pad, kids = [], [], [], {}
        for t, k in enumerate(ks):
            node = nodes[k]
            s = len(node.elim)
            elim[t, :s] = node.elim
            ring[t, : len(node.ring)] = node.ring
            pad.append(t * m * m + np.arange(s, s_max) * (m + 1))
            a_src, a_p, a_q, kid_maps = maps[k]
            shift = s_max - s  # ring slots start at S in the padded front

            def padded(x: np.ndarray, s: int = s, shift: int = shift) -> np.ndarray:
                return np.where(x >= s, x + shift, x)

            src.append(a_src)
            dst.append((t * m + padded(a_p)) * m + padded(a_q))
            for c, q in zip(node.children, kid_maps, strict=True):
                child = nodes[c]
                r_c = sizes[child.height][1]
                q = padded(q)
                a, b = np.tril_indices(len(child.ring))
                csrc = (child.level_pos * r_c + a) * r_c + b
                cdst = (t * m + np.maximum(q[a], q[b])) * m + np.minimum(q[a], q[b])
                kids.setdefault(child.height, []).append((csrc, cdst))
        children = tuple(
            (c, np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])) for c, v in sorted(kids.items())
        )
        levels.append(
            Level(s_max, r_max, elim, ring, np.concatenate(src), np.concatenate(dst), np.concatenate(pad), children)
        )
    return tuple(levels)


def _ptr(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """CSR-style ``(pointers, concatenation)`` of a list of int arrays."""
    ptr = np.zeros(len(parts) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(x) for x in parts])
    cat = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return ptr, cat


def _tree(nodes: list[_Node], maps: list[tuple[np.ndarray, ...]]) -> Tree:
    parent = np.full(len(nodes), -1, dtype=np.int64)
    for k, node in enumerate(nodes):
        parent[node.children] = k
    elim_ptr, elim = _ptr([nd.elim for nd in nodes])
    ring_ptr, ring = _ptr([nd.ring for nd in nodes])
    asm_ptr, asm_src = _ptr([m[0] for m in maps])
    _, asm_p = _ptr([m[1] for m in maps])
    _, asm_q = _ptr([m[2] for m in maps])
    kid_ptr, kid_q = _ptr([np.concatenate(m[3]) if m[3] else np.zeros(0, np.int64) for m in maps])
    nkids = np.array([len(nd.children) for nd in nodes], dtype=np.int64)
    height = np.array([nd.height for nd in nodes], dtype=np.int64)
    level_pos = np.array([nd.level_pos for nd in nodes], dtype=np.int64)
    return Tree(
        parent, height, level_pos, elim_ptr, elim, ring_ptr, ring, asm_ptr, asm_src, asm_p, asm_q, kid_ptr, kid_q, nkids
    )


@lru_cache(maxsize=8)
def symbolic(shape: tuple[int, int], leaf_area: int = LEAF_AREA) -> Symbolic:
    """Elimination tree, padded level layout and index maps for an ``H x W`` grid (cached per shape)."""
    shape = (int(shape[0]), int(shape[1]))
    nodes = _build_tree(shape, leaf_area)
    maps = _front_maps(shape, nodes)
    levels = _levels(nodes, maps, shape[0] * shape[1])
    return Symbolic(shape, levels, _tree(nodes, maps))
