"""Slice-preconditioned CG for 3D confidence maps: exact against SuperLU, 2D-consistent, real RESECT crops."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ultramae_monai.confmap.direct import solve_direct
from ultramae_monai.confmap.graph import EdgeWeights, attenuation, edge_offsets, edge_weights, normalize
from ultramae_monai.confmap.multifrontal_blas import CpuFactor
from ultramae_monai.confmap.seeds import Seeds, make_seeds
from ultramae_monai.confmap.system import assemble_csr
from ultramae_monai.confmap.volume_solver import (
    factor_slices,
    slice_matvec,
    slice_system,
    solve_volume,
    split_slices,
    to_slice_major,
)
from ultramae_monai.errors import ConvergenceError, InvalidInputError


def _system(image: np.ndarray, connectivity: int | None = None, drop_d: bool = False):
    """The confidence-map system of ``image`` (beam on axis 0); ``drop_d`` removes every edge along D."""
    data = normalize(image)
    seeds = make_seeds(data)
    att = attenuation(image.shape[0], 2.0).reshape((-1,) + (1,) * (image.ndim - 1))
    weights = edge_weights(data * att, 90.0, 0.05, connectivity=connectivity)
    if drop_d:
        weights = EdgeWeights(
            weights.offsets,
            tuple(np.zeros_like(w) if off[2] else w for off, w in zip(weights.offsets, weights.weights, strict=True)),
        )
    mat, b, _ = assemble_csr(weights, seeds)
    return mat, b


def _random_graph(
    shape: tuple[int, int, int], connectivity: int, seed: int, cut: float = 0.0, fixed_frac: float = 0.05
) -> tuple[EdgeWeights, Seeds, np.random.Generator]:
    """Log-uniform weights 1e-5..1 (a random-conductance medium; a fraction ``cut`` of edges removed) and
    random Dirichlet nodes (the first beam row included)."""
    rng = np.random.default_rng(seed)
    offsets = edge_offsets(3, connectivity)
    idx = np.indices(shape)
    weights = []
    for off in offsets:
        on = np.ones(shape, dtype=bool)
        for ax, o in enumerate(off):
            on &= (idx[ax] + o >= 0) & (idx[ax] + o < shape[ax])
        weights.append(np.where(on & (rng.random(shape) >= cut), 10.0 ** rng.uniform(-5, 0, shape), 0.0))
    fixed = rng.random(shape) < fixed_frac
    fixed[0] = True
    return EdgeWeights(offsets, tuple(weights)), Seeds(fixed=fixed, value=np.where(fixed, rng.random(shape), 0.0)), rng


def _random_system(shape: tuple[int, int, int], connectivity: int, seed: int):
    ew, seeds, _ = _random_graph(shape, connectivity, seed)
    return assemble_csr(ew, seeds)[:2]


@pytest.fixture(scope="module")
def resect_crop(shared_data: Path) -> np.ndarray:
    vol = np.asarray(nib.load(shared_data / "resect_3dus" / "Case3_US-before.nii.gz").dataobj, dtype=np.float64)
    return vol[60:84, 100:116, 130:142]  # beam 24 x W 16 x D 12, through tissue


@pytest.mark.parametrize("connectivity", [6, 10, 14])
def test_random_system_equals_direct(connectivity: int) -> None:
    shape = (9, 7, 8)
    mat, b = _random_system(shape, connectivity, seed=connectivity)
    x, iterations, residual = solve_volume(mat, b, shape, tol=1e-13)
    assert np.abs(x - solve_direct(mat, b, shape)).max() <= 1e-6
    assert residual <= 1e-13 and iterations >= 2  # slices interact: more than one step


@pytest.mark.parametrize("preconditioner", ["sgs", "jacobi"])
@pytest.mark.parametrize("precision", ["exact", "mixed"])
def test_resect_crop_equals_direct(resect_crop: np.ndarray, preconditioner: str, precision: str) -> None:
    mat, b = _system(resect_crop)
    x, _iterations, residual = solve_volume(
        mat, b, resect_crop.shape, tol=1e-12, preconditioner=preconditioner, chunk=32, precision=precision
    )
    assert np.abs(x - solve_direct(mat, b, resect_crop.shape)).max() <= 1e-6
    assert residual <= 1e-12


def test_mixed_slice_factors_solve_like_exact_ones(resect_crop: np.ndarray) -> None:
    """float32 slice factors: one float32 solve is the exact block inverse to ~1e-6, in half the bytes."""
    split = split_slices(_system(resect_crop)[0], resect_crop.shape)
    shape = resect_crop.shape[:2]
    exact, mixed = factor_slices(split.coef, shape, 4, precision="exact"), factor_slices(split.coef, shape, 4)
    assert all(isinstance(f, CpuFactor) for f in mixed.chunks) and mixed.nbytes < exact.nbytes
    rhs = np.random.default_rng(0).random(split.coef.shape[:2])
    out_e, out_m = np.zeros_like(rhs), np.zeros_like(rhs)
    every = np.arange(rhs.shape[0])
    exact.solve(rhs, out_e, every)
    mixed.solve(rhs, out_m, every)
    err = np.abs(out_m - out_e).max() / np.abs(out_e).max()
    assert 0.0 < err <= 1e-5  # float32, not float64, and still close
    with pytest.raises(InvalidInputError, match="precision"):
        factor_slices(split.coef, shape, 4, precision="half")


def test_slice_matvec_equals_grid_matrix() -> None:
    """The slice-major product (stencils minus couplings) is the grid matrix's, permuted."""
    shape = (9, 7, 8)
    for connectivity in (6, 10, 14):
        mat, _ = _random_system(shape, connectivity, seed=3)
        split = split_slices(mat, shape)
        x = np.random.default_rng(1).random(mat.shape[0])
        got = slice_matvec(split, shape[:2])(to_slice_major(x, shape))
        np.testing.assert_allclose(got, to_slice_major(mat @ x, shape), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("precision", "steps"), [("exact", 1), ("mixed", 3)])
def test_uncoupled_identical_slices_equal_2d(resect_crop: np.ndarray, precision: str, steps: int) -> None:
    """No edges across slices: exact slice factors are the exact inverse (one step); float32 ones are
    within ~1e-6 of it, so CG needs a few steps and lands on the same map."""
    image = resect_crop[:, :, 0]
    vol = np.repeat(image[:, :, None], 5, axis=2)
    mat, b = _system(vol, drop_d=True)
    x, iterations, _residual = solve_volume(mat, b, vol.shape, tol=1e-12, precision=precision)
    assert 1 <= iterations <= steps
    mat2, b2 = _system(image)
    ref = solve_direct(mat2, b2, image.shape).reshape(image.shape)
    assert np.abs(x.reshape(vol.shape) - ref[:, :, None]).max() <= 1e-9


def test_resect_map_properties(resect_crop: np.ndarray) -> None:
    mat, b = _system(resect_crop)
    x, _, _ = solve_volume(mat, b, resect_crop.shape)
    seeds = make_seeds(normalize(resect_crop))
    m = np.where(seeds.fixed, seeds.value, x.reshape(resect_crop.shape))  # seeds keep identity rows
    assert m.min() >= -1e-9 and m.max() <= 1 + 1e-9
    np.testing.assert_allclose(m[0], 1.0)
    np.testing.assert_allclose(m[-1], 0.0, atol=1e-12)
    depth_mean = m.mean(axis=(1, 2))
    assert np.all(np.diff(depth_mean) < 0)


def test_warm_start_and_non_convergence(resect_crop: np.ndarray) -> None:
    mat, b = _system(resect_crop)
    x, _, _ = solve_volume(mat, b, resect_crop.shape, tol=1e-11)
    _, iterations, _residual = solve_volume(mat, b, resect_crop.shape, tol=1e-10, x0=x)
    assert iterations == 0
    with pytest.raises(ConvergenceError, match="relative residual"):
        solve_volume(mat, b, resect_crop.shape, tol=1e-12, max_iter=2)


def test_bad_input() -> None:
    mat, b = _random_system((4, 4, 4), 10, seed=0)
    with pytest.raises(InvalidInputError, match="does not match"):
        split_slices(mat, (4, 4, 5))
    with pytest.raises(InvalidInputError, match="preconditioner"):
        solve_volume(mat, b, (4, 4, 4), preconditioner="ilu")


def test_public_api_slices_backend_equals_direct_and_auto_picks_by_size() -> None:
    from ultramae_monai.confmap import confidence_map
    from ultramae_monai.confmap.api import resolve_backend

    rng = np.random.default_rng(3)
    vol = rng.random((12, 10, 6)) * np.linspace(1, 0.3, 12)[:, None, None]
    a = confidence_map(vol, backend="direct")
    b = confidence_map(vol, backend="slices")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert resolve_backend("auto", 3, 50_000) == "direct"
    assert resolve_backend("auto", 3, 256 * 256 * 288) == "slices"
    assert resolve_backend("auto", 2) == "multifrontal"


def test_progress_is_logged(resect_crop: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """A full-size volume takes minutes: the factorisation and every 10th CG iteration are logged."""
    mat, b = _system(resect_crop)
    with caplog.at_level(logging.INFO, logger="ultramae_monai.confmap.volume_solver"):
        _, iterations, _residual = solve_volume(mat, b, resect_crop.shape, tol=1e-12)
    text = caplog.text
    assert iterations >= 10
    assert "12 slices factorised (mixed" in text and "CG iteration 10: relative residual" in text
    assert f"{iterations} CG iterations in" in text


def test_cli_shows_3d_progress(resect_crop: np.ndarray, tmp_path: Path) -> None:
    """``ultramae confmap`` on a volume prints the solver's progress on stderr and writes the map."""
    src = tmp_path / "crop.nii.gz"
    nib.save(nib.Nifti1Image(resect_crop.astype(np.float32), np.eye(4)), str(src))
    out = tmp_path / "map.npy"
    run = subprocess.run(
        [sys.executable, "-m", "ultramae_monai.cli", "confmap", str(src), str(out), "--backend=slices"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "ultramae confmap: 3D confidence map 24x16x12" in run.stderr
    assert "ultramae confmap: CG iteration 10" in run.stderr
    cmap = np.load(out)
    assert cmap.shape == (1, *resect_crop.shape) and 0.0 <= cmap.min() and cmap.max() <= 1.0


def test_mixed_falls_back_to_exact_factors_per_chunk(resect_crop: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk whose float32 factorisation meets a non-positive pivot is factorised in float64 instead,
    and the volume still solves exactly."""
    from ultramae_monai.confmap.cpu_engine import ENGINE

    real, calls = ENGINE.factorize_cpu, []

    def flaky(coef: np.ndarray, shape: tuple[int, int]) -> CpuFactor | None:
        calls.append(coef.shape[0])
        return None if len(calls) % 3 == 1 else real(coef, shape)  # every third chunk "fails", the first one too

    monkeypatch.setattr(ENGINE, "factorize_cpu", flaky)
    mat, b = _system(resect_crop)
    split = split_slices(mat, resect_crop.shape)
    factors = factor_slices(split.coef, resect_crop.shape[:2], 4)
    kinds = [isinstance(f, CpuFactor) for f in factors.chunks]
    assert kinds == [k % 3 != 0 for k in range(len(kinds))] and len(kinds) >= 3
    x, _iterations, residual = solve_volume(mat, b, resect_crop.shape, tol=1e-12, chunk=4)
    assert np.abs(x - solve_direct(mat, b, resect_crop.shape)).max() <= 1e-6 and residual <= 1e-12


@pytest.mark.parametrize("connectivity", [6, 10, 14])
def test_slice_system_equals_split_grid_matrix(connectivity: int) -> None:
    """Built straight from the weights, the split system is the grid matrix's, seeds and field of view
    included (identity rows, couplings to seeds on the right-hand side)."""
    shape = (9, 7, 8)
    ew, seeds, rng = _random_graph(shape, connectivity, seed=connectivity, cut=0.1, fixed_frac=0.1)
    fov = rng.random(shape) > 0.15
    mat, b, _ = assemble_csr(ew, seeds, fov)
    ref = split_slices(mat, shape)
    split, b2 = slice_system(ew, seeds, fov)
    np.testing.assert_array_equal(b2, b)
    np.testing.assert_allclose(split.coef, ref.coef, rtol=1e-15, atol=0)
    assert abs(split.coupling - ref.coupling).max() == 0.0
    assert split.coupling.nnz == ref.coupling.nnz > 0
    x, _, _ = solve_volume(split, b2, shape, tol=1e-13)
    np.testing.assert_allclose(x, solve_direct(mat, b, shape), atol=1e-6)
    with pytest.raises(InvalidInputError, match="do not match"):
        solve_volume(split, b2, (9, 7, 4))
