"""The default CPU solver: float32 BLAS-3 multifrontal factor, float64 CG refinement, one-pass stencil."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from test_confmap_multifrontal import _random_system

from ultramae_monai.confmap.blas import partial_cholesky, single_threaded_blas
from ultramae_monai.confmap.graph import attenuation, edge_weights, normalize
from ultramae_monai.confmap.multifrontal import csr_to_stencil, solve_multifrontal_batch
from ultramae_monai.confmap.multifrontal_blas import (
    MAP_RING,
    _entries,
    _excess_update,
    _extend_add,
    _extend_add_map,
    _partial_cholesky_gth,
    _partial_cholesky_small,
    _partial_cholesky_small_gth,
    cpu_plan,
    factorize_cpu,
    release,
    solve_cpu,
)
from ultramae_monai.confmap.multifrontal_bottom import CHUNK, _deinterleave, bottom_groups
from ultramae_monai.confmap.refine import matvec_9pt, pcg_refine
from ultramae_monai.confmap.seeds import make_seeds
from ultramae_monai.confmap.stencil import stencil_9pt
from ultramae_monai.confmap.system import assemble_csr
from ultramae_monai.errors import InvalidInputError

SHAPES = [(1, 9), (5, 3), (13, 17), (40, 33), (64, 64)]


def _front(m: int, s: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random diagonally dominant M-matrix of order m (float64) and its first s columns, column-major f32."""
    rng = np.random.default_rng(seed)
    a = -rng.random((m, m)) * (rng.random((m, m)) < 0.3)
    a = np.tril(a, -1)
    a = a + a.T
    a += np.diag(-a.sum(axis=1) + rng.random(m) * 0.1 + 1e-3)
    return a, np.asfortranarray(a[:, :s]).astype(np.float32).ravel(order="F")


@pytest.mark.parametrize(("m", "s"), [(28, 12), (39, 7), (100, 30), (300, 64), (150, 150), (90, 70)])
def test_front_elimination_blas_and_compiled_loop_agree_with_numpy(m: int, s: int) -> None:
    a, f = _front(m, s, m + s)
    l11 = np.linalg.cholesky(a[:s, :s])
    l21 = np.linalg.solve(l11, a[s:, :s].T).T
    r = m - s
    with single_threaded_blas():
        for kernel in (partial_cholesky, _partial_cholesky_small):
            ff, u = f.copy(), np.full(max(r * r, 1), np.nan, dtype=np.float32)
            assert kernel(ff, m, s, u)
            cols = ff.reshape(s, m).T  # column-major m x s
            np.testing.assert_allclose(np.tril(cols[:s]), l11, rtol=2e-4, atol=1e-5)
            np.testing.assert_allclose(cols[s:], l21, rtol=2e-4, atol=1e-5)
            if r:
                upd = u[: r * r].reshape(r, r).T
                np.testing.assert_allclose(np.tril(upd), np.tril(-l21 @ l21.T), rtol=2e-4, atol=1e-5)


def test_front_elimination_reports_indefinite_pivot() -> None:
    _, f = _front(40, 10, 3)
    f[0] = -1.0
    with single_threaded_blas():
        for kernel in (partial_cholesky, _partial_cholesky_small):
            assert not kernel(f.copy(), 40, 10, np.zeros(900, dtype=np.float32))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("signed", [False, True])
def test_float32_factor_preconditions_cg_to_float64_accuracy(shape: tuple[int, int], signed: bool) -> None:
    mat, b = _random_system(shape, seed=sum(shape), signed=signed)
    ref = spla.spsolve(sp.csc_matrix(mat), b)
    coef = csr_to_stencil(mat, shape)[None]
    factor = factorize_cpu(coef, shape)
    assert factor is not None
    x32 = solve_cpu(factor, b[None])[0]
    assert x32.dtype == np.float32
    assert np.abs(x32 - ref).max() <= 1e-2 * np.abs(ref).max()  # float32 alone: a good approximation
    x, info = pcg_refine(coef, b[None], shape, lambda r: solve_cpu(factor, r).astype(np.float64), atol=1e-9)
    release(factor)
    assert info.converged and info.iterations <= 6
    assert np.abs(x[0] - ref).max() <= 1e-8 * max(1.0, np.abs(ref).max())


def test_batch_and_thread_count_do_not_change_the_solution() -> None:
    shape = (37, 45)
    systems = [_random_system(shape, seed=s) for s in range(3)]
    coef = np.stack([csr_to_stencil(m, shape) for m, _ in systems])
    bs = np.stack([b for _, b in systems])
    exact = solve_multifrontal_batch(coef, bs, shape, mixed=False).numpy()
    batch = solve_multifrontal_batch(coef, bs, shape).numpy()
    np.testing.assert_allclose(batch, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = solve_multifrontal_batch(coef[:1], bs[:1], shape).numpy()
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_allclose(one[0], exact[0], rtol=0, atol=1e-6 * np.abs(exact).max())


def test_workspace_reuse_across_shapes_keeps_results_right() -> None:
    for shape in [(30, 31), (12, 50), (30, 31)]:
        mat, b = _random_system(shape, seed=7)
        ref = spla.spsolve(sp.csc_matrix(mat), b)
        x = solve_multifrontal_batch(csr_to_stencil(mat, shape)[None], b[None], shape).numpy()[0]
        assert np.abs(x - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


def test_not_positive_definite_falls_back_and_raises() -> None:
    mat, b = _random_system((9, 8), seed=1)
    neg = mat.tolil()
    neg[20, 20] = -5.0
    coef = csr_to_stencil(neg.tocsr(), (9, 8))[None]
    assert factorize_cpu(coef, (9, 8)) is None
    with pytest.raises(InvalidInputError, match="positive definite"):
        solve_multifrontal_batch(coef, b[None], (9, 8))


def test_plan_splits_the_tree_into_independent_subtrees() -> None:
    plan = cpu_plan((50, 47), 2)
    assert plan.nsub >= 2
    tr = plan.sym.tree
    covered = np.zeros(len(tr.parent), dtype=int)
    for a, z in zip(plan.sched.first, plan.sched.root, strict=True):
        covered[a : z + 1] += 1
    covered[plan.sched.upper] += 1
    assert (covered == 1).all()  # every node in exactly one subtree or above them
    # ring maps are increasing, so extend-add needs no sorting; runs tile each child's ring
    for c in range(len(tr.parent)):
        blk = slice(plan.fronts.run_ptr[c], plan.fronts.run_ptr[c + 1])
        if plan.fronts.run_ptr[c + 1] > plan.fronts.run_ptr[c]:
            assert plan.fronts.run_a[blk][0] == 0 and plan.fronts.run_a[blk][-1] == plan.fronts.m[c] - plan.fronts.s[c]
            assert (np.diff(plan.fronts.run_q[blk][:-1]) > 0).all()


def test_pcg_reports_non_convergence() -> None:
    shape = (30, 30)
    mat, b = _random_system(shape, seed=2)
    coef = csr_to_stencil(mat, shape)[None]
    x, info = pcg_refine(coef, b[None], shape, lambda r: r.copy(), atol=1e-12, max_iter=3)
    assert not info.converged and info.iterations == 3 and np.isfinite(x).all()


def test_matvec_matches_the_csr_matrix() -> None:
    shape = (23, 19)
    mat, _ = _random_system(shape, seed=4, signed=True)
    x = np.random.default_rng(0).standard_normal((2, shape[0] * shape[1]))
    coef = np.stack([csr_to_stencil(mat, shape)] * 2)
    np.testing.assert_allclose(matvec_9pt(coef, x, shape), (mat @ x.T).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_fov", [False, True])
def test_one_pass_stencil_equals_the_csr_assembly(with_fov: bool) -> None:
    rng = np.random.default_rng(5)
    img = rng.random((31, 27)) * 255
    data = normalize(img)
    fov = None
    if with_fov:
        fov = np.ones(img.shape, dtype=bool)
        fov[:, :4] = False
        fov[20:, 22:] = False
    seeds = make_seeds(data, "all", None, fov)
    ew = edge_weights(data * attenuation(img.shape[0], 2.0)[:, None], 90.0, 0.05, fov)
    mat, b_csr, _ = assemble_csr(ew, seeds, fov)
    coef, b = stencil_9pt(ew, seeds, fov)
    np.testing.assert_allclose(coef, csr_to_stencil(mat, img.shape), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(b, b_csr, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(("m", "s"), [(28, 12), (61, 23), (300, 64), (150, 150), (200, 130)])
def test_row_sum_pivot_elimination_matches_cholesky_and_carries_the_excess(m: int, s: int) -> None:
    a, f = _front(m, s, m * s)
    ex = a.sum(axis=1)  # the rows' excess: coupling to Dirichlet nodes
    cols = f.reshape(s, m).T
    cols[np.arange(s), np.arange(s)] = ex[:s]  # the GTH kernels expect excesses on the diagonal
    f = np.asfortranarray(cols).ravel(order="F")
    l11 = np.linalg.cholesky(a[:s, :s])
    l21 = np.linalg.solve(l11, a[s:, :s].T).T
    z_ref = np.linalg.solve(l11, ex[:s])
    r = m - s
    with single_threaded_blas():
        for kernel in (_partial_cholesky_small_gth, _partial_cholesky_gth):
            ff, u = f.copy(), np.zeros(max(r * r, 1), dtype=np.float32)
            z = np.zeros(2 * m, dtype=np.float32)  # the kernels' scratch contract: z[:s] out, the rest scratch
            assert kernel(ff, m, s, u, z)
            out = ff.reshape(s, m).T
            np.testing.assert_allclose(np.tril(out[:s]), l11, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(out[s:], l21, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(z[:s], z_ref, rtol=1e-4, atol=1e-7)
            if r:
                _excess_update(ff, m, s, u, z[:s], np.empty(r, dtype=np.float32))
                upd = u[: r * r].reshape(r, r).T
                off = np.tril(np.ones((r, r), dtype=bool), -1)
                np.testing.assert_allclose(upd[off], (-l21 @ l21.T)[off], rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(np.diag(upd), -l21 @ z_ref, rtol=1e-4, atol=1e-7)


def test_row_sum_pivots_make_one_float32_solve_accurate() -> None:
    shape = (48, 41)
    mat, b = _random_system(shape, seed=11)
    ref = spla.spsolve(sp.csc_matrix(mat), b)
    coef = csr_to_stencil(mat, shape)[None]
    errs = {}
    for row_sums in (False, True):
        factor = factorize_cpu(coef, shape, row_sums=row_sums)
        errs[row_sums] = np.abs(solve_cpu(factor, b[None])[0] - ref).max() / np.abs(ref).max()
        release(factor)
    assert errs[True] <= 1e-5 and errs[True] < errs[False]


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_bottom_gives_the_front_by_front_factor(signed: bool, threads: int) -> None:
    """Small fronts eliminated height by height in interleaved batches (row-sum pivots for M-matrices,
    plain Cholesky for the signed systems) store the same factor as the one-front-at-a-time path, and
    solve the same; the batches include parents of batched children."""
    shape = (61, 47)
    mat, b = _random_system(shape, seed=5, signed=signed)
    coef = csr_to_stencil(mat, shape)[None]
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        one = factorize_cpu(coef, shape, batch_bottom=False)
        assert len(one.plan.sched.bottom) == 0
        lone, xone = one.lbuf.copy(), solve_cpu(one, b[None])[0]
        batched = factorize_cpu(coef, shape)
        plan = batched.plan
        kids_batched = [
            plan.fronts.batch_u[plan.fronts.kids[plan.fronts.kids_ptr[k] : plan.fronts.kids_ptr[k + 1]]]
            for k in plan.sched.bottom
        ]
        assert len(plan.sched.bottom) > 200 and sum(len(kb) > 0 for kb in kids_batched) > 50
        assert all((kb >= 0).all() for kb in kids_batched)  # batches only wait for batches
        np.testing.assert_allclose(batched.lbuf, lone, rtol=1e-5, atol=1e-6 * np.abs(lone).max())
        np.testing.assert_allclose(solve_cpu(batched, b[None])[0], xone, rtol=1e-5, atol=1e-6 * np.abs(xone).max())
    finally:
        numba.set_num_threads(old)


def test_batched_bottom_reports_a_bad_pivot() -> None:
    shape = (30, 30)
    mat, _ = _random_system(shape, seed=2, signed=True)
    good = factorize_cpu(csr_to_stencil(mat, shape)[None], shape)
    tr = good.plan.sym.tree
    k = int(np.searchsorted(tr.elim_ptr, np.flatnonzero(tr.elim == 0)[0], side="right") - 1)
    assert good.plan.fronts.batch_u[k] >= 0  # grid node 0 is eliminated in a batch
    bad = mat.tolil()
    bad[0, 0] = -1.0
    coef = csr_to_stencil(bad.tocsr(), shape)[None]
    assert factorize_cpu(coef, shape) is None


def test_bottom_groups_cut_one_height_and_shape_per_chunk_and_cover_every_node() -> None:
    rng = np.random.default_rng(0)
    n = 700
    s, m = rng.integers(2, 4, n), rng.integers(10, 12, n)
    nodes = np.sort(rng.choice(n, 500, replace=False))
    task = np.minimum(nodes // 300, 2)
    height = rng.integers(0, 2, len(nodes))
    lv, ptr, task_chunk, u_off = bottom_groups(nodes, task, height, s, m, 3)
    assert sorted(lv) == sorted(nodes) and ptr[0] == 0 and ptr[-1] == len(lv)
    t_of = dict(zip(nodes.tolist(), task.tolist(), strict=True))
    h_of = dict(zip(nodes.tolist(), height.tolist(), strict=True))
    for c in range(len(ptr) - 1):
        chunk = lv[ptr[c] : ptr[c + 1]]
        assert 0 < len(chunk) <= CHUNK
        assert len({(s[k], m[k], t_of[k], h_of[k]) for k in chunk}) == 1
    for t in range(3):  # each task's chunks are contiguous, hold exactly its nodes, lower heights first
        mine = lv[ptr[task_chunk[t]] : ptr[task_chunk[t + 1]]]
        assert sorted(mine) == sorted(nodes[task == t])
        assert np.all(np.diff([h_of[k] for k in mine]) >= 0)
    r = m[lv] - s[lv]
    np.testing.assert_array_equal(np.diff(u_off), r * (r + 1) // 2)  # packed lower triangles
    lv0, ptr0, tc0, u0 = bottom_groups(nodes[:0], task[:0], height[:0], s, m, 2)
    assert len(lv0) == 0 and list(ptr0) == [0] and list(tc0) == [0, 0, 0] and list(u0) == [0]


def test_small_ring_extend_add_matches_the_run_version() -> None:
    plan = cpu_plan((40, 37), 1, batch_bottom=False)
    rng = np.random.default_rng(1)
    r = plan.fronts.m - plan.fronts.s
    checked = 0
    for c in np.flatnonzero((plan.fronts.kq_off >= 0) & (r > 0) & (r < MAP_RING))[:50]:
        k = plan.sym.tree.parent[c]
        mp, sp, rc = plan.fronts.m[k], plan.fronts.s[k], r[c]
        uc = rng.random(rc * rc).astype(np.float32)
        ra = plan.fronts.run_a[plan.fronts.run_ptr[c] : plan.fronts.run_ptr[c + 1]]
        rq = plan.fronts.run_q[plan.fronts.run_ptr[c] : plan.fronts.run_ptr[c + 1]]
        pos = plan.fronts.kid_q[plan.fronts.kq_off[c] : plan.fronts.kq_off[c] + rc]
        lower = np.tril(uc.reshape(rc, rc).T)
        packed = lower.T[np.triu(np.ones((rc, rc), dtype=bool))]  # column by column from the diagonal
        outs = []
        for variant in range(4):  # runs / entry by entry, full / packed update
            lp, up = np.zeros(mp * sp, dtype=np.float32), np.zeros(max((mp - sp) ** 2, 1), dtype=np.float32)
            src, pk = (packed, True) if variant >= 2 else (uc, False)
            for lo, hi in ((0, plan.fronts.split[c]), (plan.fronts.split[c], rc)):
                if variant % 2:
                    _extend_add_map(src, rc, pos, lo, hi, lp, mp, sp, up, pk)
                else:
                    _extend_add(src, rc, ra, rq, lo, hi, lp, mp, sp, up, pk)
            outs.append((lp, up))
        for lp, up in outs[1:]:
            np.testing.assert_array_equal(lp, outs[0][0])
            np.testing.assert_array_equal(up, outs[0][1])
        assert outs[0][0].any() or outs[0][1].any()
        checked += 1
    assert checked == 50


def test_refinement_relative_tolerance_scales_with_the_solution() -> None:
    """``rtol`` stops CG relative to the solution's size, whatever the right-hand side's scale."""
    shape = (20, 23)
    mat, b = _random_system(shape, seed=4)
    coef = csr_to_stencil(mat, shape)[None]
    factor = factorize_cpu(coef, shape)
    ref = spla.spsolve(sp.csc_matrix(mat), b)
    for scale in (1e-8, 1.0, 1e6):
        x, info = pcg_refine(
            coef, scale * b[None], shape, lambda r: solve_cpu(factor, r).astype(np.float64), atol=0.0, rtol=1e-12
        )
        assert info.converged and info.iterations >= 2
        assert np.abs(x[0] - scale * ref).max() <= 1e-10 * scale * np.abs(ref).max()
    release(factor)


def test_entry_table_holds_float32_entries_and_excess_pivots_for_random_walks_only() -> None:
    shape = (9, 7)
    ew = edge_weights(normalize(np.random.default_rng(3).random(shape)), 90.0, 0.05)
    coef, _ = stencil_9pt(ew, make_seeds(np.ones(shape), "all"))
    signed = coef.copy()
    signed[20, 1] = abs(signed[20, 1]) + 0.1  # a positive coupling: not a random-walk Laplacian
    flat = np.stack([coef.ravel(), signed.ravel()])
    vals = np.empty(flat.shape, dtype=np.float32)
    assert _entries(flat, vals, True).tolist() == [True, False]
    ex = np.maximum(np.cumsum(coef, axis=1)[:, -1], 0.0)  # summed in stencil order, as the kernel does
    want = coef.astype(np.float32)
    want[:, 4] = ex.astype(np.float32)
    np.testing.assert_array_equal(vals[0].reshape(-1, 9), want)
    np.testing.assert_array_equal(vals[1], signed.ravel().astype(np.float32))  # plain pivots: diagonal kept
    assert _entries(flat, vals, False).tolist() == [False, False]
    np.testing.assert_array_equal(vals[0], coef.ravel().astype(np.float32))


@pytest.mark.parametrize("n", [1, 15, 16, 40])
def test_deinterleave_puts_every_lane_back_at_its_node(n: int) -> None:
    rng = np.random.default_rng(n)
    c = 37
    w = rng.random((n, CHUNK)).astype(np.float32)
    nodes = np.arange(100, 100 + c + 3)  # lanes 0..c-1 are nodes[3:3 + c]
    at = np.zeros(200, dtype=np.int64)
    at[nodes] = rng.permutation(len(nodes)) * n + 5
    out = np.full(5 + len(nodes) * n, -1.0, dtype=np.float32)
    _deinterleave(w, n, c, out, at, nodes, 3)
    for i in range(c):
        np.testing.assert_array_equal(out[at[nodes[3 + i]] : at[nodes[3 + i]] + n], w[:n, i])
    for k in nodes[:3]:  # nodes outside the chunk are left alone
        assert (out[at[k] : at[k] + n] == -1.0).all()
