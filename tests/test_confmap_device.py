"""Confidence maps computed as torch ops on the images' device: the same systems and maps as the CPU path.

Everything runs on the CPU here (``device="cpu"``: the code path a GPU runs); the ``gpu`` tests repeat the
checks on CUDA, with CUDA-graph replay, when a GPU is present.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ultramae_monai.confmap.api import (
    ConfMapParams,
    _prepare,
    batch_confidence_maps,
    confidence_map,
    solve_confidence_map,
    solve_confidence_maps,
)
from ultramae_monai.confmap.device_model import device_system
from ultramae_monai.confmap.device_solver import DeviceMapSolver, matvec_9pt_t
from ultramae_monai.confmap.refine import matvec_9pt
from ultramae_monai.confmap.stencil import stencil_9pt
from ultramae_monai.confmap.volume_device import volume_confidence_map
from ultramae_monai.errors import InvalidInputError


def _speckle(batch: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Rayleigh speckle with a bright band and a shadow: edge weights spanning 1e-5..1 as in real B-mode."""
    rng = np.random.default_rng(seed)
    img = rng.rayleigh(40.0, (batch, *shape))
    img[:, shape[0] // 3 : shape[0] // 3 + 3] += 150
    img[:, shape[0] // 2 :, shape[1] // 3 : shape[1] // 2] *= 0.1
    return np.clip(img, 0, 255)


def _fan(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - shape[1] / 2) ** 2 + (yy + shape[0] / 4) ** 2 < (1.2 * shape[0]) ** 2) & (yy > 2)


@pytest.mark.parametrize("sink_mode", ["all", "mid", "min", "mask"])
@pytest.mark.parametrize("with_fov", [False, True])
def test_device_system_equals_numpy_assembly(sink_mode: str, with_fov: bool) -> None:
    shape = (21, 18)
    imgs = _speckle(3, shape, 0)
    fov = _fan(shape) if with_fov else None
    sink = None
    if sink_mode == "mask":
        sink = np.zeros(shape)
        sink[16, 4:11] = 1
    system = device_system(
        torch.from_numpy(imgs), sink_mode=sink_mode, sink_mask=None if sink is None else torch.from_numpy(sink),
        fov_mask=None if fov is None else torch.from_numpy(fov),
    )  # fmt: skip
    for i in range(3):
        problem = _prepare(imgs[i], ConfMapParams(sink_mode=sink_mode), sink, fov)
        coef, rhs = stencil_9pt(problem.weights, problem.seeds, problem.fov)
        np.testing.assert_array_equal(system.fixed[i].numpy(), problem.seeds.fixed)
        np.testing.assert_allclose(system.coef[i].numpy(), coef, rtol=0, atol=1e-14)
        np.testing.assert_allclose(system.rhs[i].numpy(), rhs, rtol=0, atol=1e-14)


def test_torch_matvec_equals_numba() -> None:
    rng = np.random.default_rng(1)
    coef, x = rng.standard_normal((2, 13 * 11, 9)), rng.standard_normal((2, 13 * 11))
    coef.reshape(2, 13, 11, 9)[:, 0, :, :3] = 0  # no couplings off the grid, as in a real stencil
    coef.reshape(2, 13, 11, 9)[:, -1, :, 6:] = 0
    coef.reshape(2, 13, 11, 9)[:, :, 0, ::3] = 0
    coef.reshape(2, 13, 11, 9)[:, :, -1, 2::3] = 0
    got = matvec_9pt_t(torch.from_numpy(coef), torch.from_numpy(x), (13, 11)).numpy()
    np.testing.assert_allclose(got, matvec_9pt(coef, x, (13, 11)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_device_maps_equal_cpu_maps(precision: str) -> None:
    imgs = _speckle(3, (40, 33), 2)
    fov = _fan((40, 33))
    solver = DeviceMapSolver(precision=precision)
    for f in (None, fov):
        cpu = solve_confidence_maps(imgs, ConfMapParams(), fov_mask=f)
        got = solver(torch.from_numpy(imgs), None if f is None else torch.from_numpy(f)).numpy()
        assert got.dtype == np.float32 and got.shape == imgs.shape
        np.testing.assert_allclose(got, cpu, rtol=0, atol=1e-6)


def test_mixed_precision_takes_more_steps_when_the_estimate_says_so() -> None:
    imgs = torch.from_numpy(_speckle(2, (30, 28), 3))
    cpu = solve_confidence_maps(imgs.numpy(), ConfMapParams())
    one_step = DeviceMapSolver(precision="mixed", steps=1, atol=1e-9)  # 1 step cannot meet 1e-9: more run
    np.testing.assert_allclose(one_step(imgs).numpy(), cpu, rtol=0, atol=1e-6)


def test_real_image_on_the_device_path(shared_data) -> None:
    img = np.asarray(Image.open(shared_data / "confmap_reference" / "femur_input.png")).astype(np.float64)
    ref = np.load(shared_data / "confmap_reference" / "femur_result.npy")  # the MATLAB implementation's map
    crop = img[:160, 100:260]
    maps = DeviceMapSolver(gamma=0.06)(torch.from_numpy(np.stack([crop, crop[:, ::-1].copy()]))).numpy()
    cpu = solve_confidence_maps(np.stack([crop, crop[:, ::-1]]), ConfMapParams(gamma=0.06))
    np.testing.assert_allclose(maps, cpu, rtol=0, atol=1e-6)
    full = DeviceMapSolver(gamma=0.06, precision="float64")(torch.from_numpy(img)[None])[0].numpy()
    assert np.abs(full - ref).max() <= 1e-4


def test_batch_confidence_maps_device_and_host_paths_agree() -> None:
    imgs = torch.from_numpy(_speckle(3, (24, 20), 4)).float()
    fovs = torch.from_numpy(np.stack([_fan((24, 20)), np.ones((24, 20), bool), _fan((24, 20))[:, ::-1].copy()]))
    on_dev = batch_confidence_maps(imgs, fovs, on_device=True)
    on_host = batch_confidence_maps(imgs, fovs, on_device=False)
    assert on_dev.dtype == on_host.dtype == torch.float32
    torch.testing.assert_close(on_dev, on_host, rtol=0, atol=1e-6)
    assert bool((on_dev[0][~fovs[0]] == 0).all())


def test_device_path_rejects_bad_input_and_maps_an_empty_fov_to_zero() -> None:
    imgs = torch.from_numpy(_speckle(2, (12, 12), 5))
    bad = imgs.clone()
    bad[1, 3, 3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        DeviceMapSolver()(bad)
    with pytest.raises(InvalidInputError, match="2D images"):
        DeviceMapSolver()(imgs[0])
    fov = torch.zeros(2, 12, 12, dtype=torch.bool)
    fov[0, 2:, 3:9] = True
    maps = DeviceMapSolver()(imgs, fov)
    assert bool((maps[1] == 0).all()) and float(maps[0].max()) == 1.0


@pytest.mark.parametrize("connectivity", [None, 6, 14])
def test_volume_on_the_device_path_equals_the_cpu_solve(connectivity: int | None) -> None:
    rng = np.random.default_rng(6)
    vol = np.clip(rng.rayleigh(40.0, (16, 13, 9)), 0, 255)
    hh, ww, dd = np.mgrid[:16, :13, :9]
    fov = ((ww - 6) ** 2 + (dd - 4) ** 2 + (hh + 3) ** 2 < 180) & (hh > 1)
    for f in (None, fov):
        ref, _ = solve_confidence_map(vol, ConfMapParams(connectivity=connectivity, backend="direct"), fov_mask=f)
        got = volume_confidence_map(
            torch.from_numpy(vol), connectivity=connectivity, fov_mask=None if f is None else torch.from_numpy(f)
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_cuda_maps_graphs_and_volume(cuda_device: torch.device) -> None:
    imgs = _speckle(4, (64, 48), 7)
    cpu = solve_confidence_maps(imgs, ConfMapParams())
    x = torch.from_numpy(imgs).to(cuda_device)
    for precision in ("mixed", "float64"):
        graphed = DeviceMapSolver(precision=precision, graphs=True)
        first, again = graphed(x), graphed(x)  # capture, then replay
        eager = DeviceMapSolver(precision=precision, graphs=False)(x)
        assert first.device.type == "cuda"
        np.testing.assert_allclose(again.cpu().numpy(), cpu, rtol=0, atol=1e-6)
        torch.testing.assert_close(first, eager, rtol=0, atol=1e-7)
    one = confidence_map(x[0].float())
    np.testing.assert_allclose(one.cpu().numpy(), cpu[0], rtol=0, atol=1e-6)
    vol = np.clip(np.random.default_rng(8).rayleigh(40.0, (20, 17, 11)), 0, 255)
    ref, _ = solve_confidence_map(vol, ConfMapParams(backend="direct"))
    got = confidence_map(torch.from_numpy(vol).to(cuda_device))
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=0, atol=1e-6)


def test_maps_fall_back_to_the_torch_factorisation_when_the_cpu_engine_cannot_load(tmp_path) -> None:
    """A numba/LLVM binding that fails to load (simulated) leaves every map computable, through torch."""
    script = tmp_path / "fallback.py"
    script.write_text(
        "import sys, numpy as np\n"
        "class Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ultramae_monai.confmap.blas':\n"
        "            raise ImportError('simulated: numba LLVM symbol binding failed')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "from ultramae_monai.confmap import cpu_engine\n"
        "from ultramae_monai.confmap.api import ConfMapParams, solve_confidence_maps\n"
        "assert cpu_engine.ENGINE is None and 'simulated' in str(cpu_engine.LOAD_ERROR)\n"
        "rng = np.random.default_rng(0)\n"
        "img = np.clip(rng.rayleigh(40.0, (2, 30, 26)), 0, 255)\n"
        "np.save(sys.argv[1], solve_confidence_maps(img, ConfMapParams()))\n"
    )
    out = tmp_path / "maps.npy"
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "using the torch factorisation" in done.stderr
    img = np.clip(np.random.default_rng(0).rayleigh(40.0, (2, 30, 26)), 0, 255)
    np.testing.assert_allclose(np.load(out), solve_confidence_maps(img, ConfMapParams()), rtol=0, atol=1e-6)
