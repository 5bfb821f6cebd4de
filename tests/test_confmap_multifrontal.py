"""Multifrontal Cholesky for 9-point grid systems: exact against SuperLU, on random and real confidence maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from PIL import Image

from ultramae_monai.confmap.direct import solve_direct
from ultramae_monai.confmap.graph import EdgeWeights, attenuation, edge_weights, normalize
from ultramae_monai.confmap.multifrontal import (
    csr_to_stencil,
    factorize,
    solve_factored,
    solve_multifrontal,
    solve_multifrontal_batch,
)
from ultramae_monai.confmap.multifrontal_symbolic import symbolic
from ultramae_monai.confmap.seeds import Seeds, make_seeds
from ultramae_monai.confmap.stencil import stencil_9pt
from ultramae_monai.confmap.system import assemble_csr
from ultramae_monai.errors import InvalidInputError

OFFSETS = ((1, 0), (0, 1), (1, 1), (1, -1))


def _random_system(shape: tuple[int, int], seed: int, signed: bool = False) -> tuple[sp.csr_matrix, np.ndarray]:
    """A confidence-map-like system: log-uniform weights 1e-5..1, random fixed nodes with identity rows.

    ``signed`` flips the sign of random couplings and makes the matrix diagonally dominant instead, so
    the solver is also tested on SPD matrices that are not M-matrices.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    ii, jj = np.indices(shape)
    weights = []
    for di, dj in OFFSETS:
        on_grid = (ii + di < h) & (jj + dj >= 0) & (jj + dj < w)
        weights.append(np.where(on_grid, 10.0 ** rng.uniform(-5, 0, shape), 0.0))
    fixed = rng.random(shape) < 0.05
    fixed[0] = True
    value = np.where(fixed, rng.random(shape), 0.0)
    mat, b, _ = assemble_csr(EdgeWeights(OFFSETS, tuple(weights)), Seeds(fixed=fixed, value=value))
    if signed:
        upper = sp.triu(mat, 1).tocoo()
        sign = np.where(rng.random(upper.nnz) < 0.5, -1.0, 1.0)
        a = sp.csr_matrix((upper.data * sign, (upper.row, upper.col)), shape=mat.shape)
        a = a + a.T
        mat = (a + sp.diags(np.asarray(abs(a).sum(axis=1)).ravel() + 0.1)).tocsr()
    return mat, b + rng.standard_normal(b.shape) * 0.1


def _rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (6, 1), (2, 2), (3, 3), (3, 40), (40, 3), (5, 4), (7, 9), (16, 16), (33, 20), (61, 47)]
)
def test_random_systems_equal_spsolve(shape: tuple[int, int]) -> None:
    for seed, signed in ((0, False), (1, True)):
        mat, b = _random_system(shape, seed, signed)
        ref = spla.spsolve(mat.tocsc(), b)
        assert _rel_err(solve_multifrontal(mat, b, shape), ref) < 1e-10


def test_small_fronts_kept_inverted_solve_the_same_systems() -> None:
    shape = (37, 29)
    mat, b = _random_system(shape, 3)
    ref = spla.spsolve(mat.tocsc(), b)
    coef = torch.from_numpy(csr_to_stencil(mat, shape))[None]
    b_t = torch.from_numpy(b)[None]
    for invert_below in (0, 8, 32, 10**6):  # never, the leaves, most levels, every level
        factor = factorize(coef, shape, invert_below=invert_below)
        assert any(factor.inverted) == (invert_below > 0)
        assert _rel_err(solve_factored(factor, b_t)[0].numpy(), ref) < 1e-9, invert_below


def test_symbolic_eliminates_every_node_once() -> None:
    sym = symbolic((23, 31))
    elim = np.concatenate([lv.elim.ravel() for lv in sym.levels])
    assert np.array_equal(np.sort(elim[elim < 23 * 31]), np.arange(23 * 31))
    assert np.array_equal(np.sort(sym.tree.elim), np.arange(23 * 31))
    assert sym.levels[-1].nb == 1 and sym.levels[-1].R == 0  # a single root with an empty ring


def test_batch_equals_single_and_stencil_path_equals_csr() -> None:
    shape = (26, 35)
    systems = [_random_system(shape, s) for s in range(3)]
    coef = np.stack([csr_to_stencil(m, shape) for m, _ in systems])
    bs = np.stack([b for _, b in systems])
    xb = solve_multifrontal_batch(coef, bs, shape, mixed=False).numpy()
    for k, (m, b) in enumerate(systems):
        np.testing.assert_allclose(xb[k], solve_multifrontal(m, b, shape), rtol=0, atol=1e-12)
    # the default CPU path: float32 factor refined by float64 CG
    xm = solve_multifrontal_batch(coef, bs, shape).numpy()
    np.testing.assert_allclose(xm, xb, rtol=0, atol=1e-6 * np.abs(xb).max())
    # the torch factorisation (the GPU path) on a batch
    x0 = solve_factored(factorize(torch.from_numpy(coef), shape), torch.from_numpy(bs)).numpy()
    np.testing.assert_allclose(x0, xb, rtol=0, atol=1e-11)


def _real_system(shared_data: Path, name: str, gamma: float) -> tuple[tuple[int, int], EdgeWeights, Seeds]:
    img = np.asarray(Image.open(shared_data / "confmap_reference" / f"{name}_input.png")).astype(np.float64)
    data = normalize(img)
    ew = edge_weights(data * attenuation(img.shape[0], 2.0)[:, None], 90.0, gamma)
    seeds = make_seeds(data, "all")
    return img.shape, ew, seeds


@pytest.mark.parametrize(("name", "gamma"), [("femur", 0.06), ("neck", 0.03)])
def test_real_confidence_maps(shared_data, name: str, gamma: float) -> None:
    shape, ew, seeds = _real_system(shared_data, name, gamma)
    mat, b, _ = assemble_csr(ew, seeds)
    x = solve_multifrontal(mat, b, shape)
    np.testing.assert_allclose(x, solve_direct(mat, b, shape), rtol=0, atol=1e-9)
    cmap = x.reshape(shape)
    cmap[seeds.fixed] = seeds.value[seeds.fixed]
    ref = np.load(shared_data / "confmap_reference" / f"{name}_result.npy")
    assert np.abs(cmap - ref).max() <= 1e-4
    # the compiled stencil assembly gives the same system without CSR assembly
    coef, rhs = stencil_9pt(ew, seeds)
    np.testing.assert_array_equal(coef, csr_to_stencil(mat, shape))
    np.testing.assert_allclose(rhs, b, rtol=0, atol=1e-15)


def test_bad_input_raises() -> None:
    mat, b = _random_system((6, 7), 0)
    with pytest.raises(InvalidInputError, match="does not match"):
        solve_multifrontal(mat, b, (7, 7))
    with pytest.raises(InvalidInputError, match="2D"):
        solve_multifrontal(mat, b, (6, 7, 1))
    far = mat.tolil()
    far[0, 20] = far[20, 0] = -0.1  # (0, 0) and (2, 6) are not stencil neighbours
    with pytest.raises(InvalidInputError, match="stencil"):
        solve_multifrontal(far.tocsr(), b, (6, 7))
    neg = mat.tolil()
    neg[10, 10] = -1.0
    with pytest.raises(InvalidInputError, match="positive definite"):
        solve_multifrontal(neg.tocsr(), b, (6, 7))
    with pytest.raises(InvalidInputError, match="expected coef"):
        solve_multifrontal_batch(np.zeros((1, 42, 8)), np.zeros((1, 42)), (6, 7))


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda_device: torch.device) -> None:
    shape = (45, 38)
    systems = [_random_system(shape, s) for s in range(2)]
    coef = np.stack([csr_to_stencil(m, shape) for m, _ in systems])
    bs = np.stack([b for _, b in systems])
    x_gpu = solve_multifrontal_batch(coef, bs, shape, device=cuda_device)
    assert x_gpu.device.type == "cuda"
    np.testing.assert_allclose(x_gpu.cpu().numpy(), solve_multifrontal_batch(coef, bs, shape).numpy(), atol=1e-11)
