"""``confidence_map``: ultrasound confidence maps (Karamalis et al., MedIA 2012) on 2D images and 3D volumes.

The model is MONAI's ``UltrasoundConfidenceMap`` (same normalisation, attenuation, edge weights and
seeds), so with default arguments a 2D map equals MONAI's to solver round-off. What is added: a choice
of beam axis, a field-of-view mask (graph restricted to the FOV, 0 outside), 3D volumes (see
:func:`ultramae_monai.confmap.graph.edge_offsets` for the neighbourhoods), input checks, and solvers:

One solver per situation (each justified by a row of ``docs/benchmarks.md``):

* 2D on a CPU (``multifrontal``, the ``auto`` choice): multifrontal Cholesky on the grid's
  nested-dissection tree with float32 BLAS-3 fronts (:mod:`.cpu_engine`), refined to float64 by a few
  preconditioned CG steps (:mod:`.refine`); the exact level-batched torch factorisation
  (:mod:`.multifrontal`) is its fallback. Batches of frames factorise together.
* 2D on a GPU (CUDA tensors, :func:`batch_confidence_maps`): model, systems, factorisation and solve as
  batched torch kernels on the device (:mod:`.device_solver`).
* 3D, small volumes (``direct``, ``auto`` up to 200k voxels), and the reference everywhere: SuperLU in
  geometric nested-dissection order (:mod:`.direct`).
* 3D, large volumes (``slices``): CG preconditioned by a symmetric red-black Gauss-Seidel sweep over
  exactly factorised (beam, W) slices, on the CPU (:mod:`.volume_solver`) or on a GPU
  (:mod:`.volume_device`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import hilbert

from ultramae_monai.confmap.device_solver import device_confidence_maps
from ultramae_monai.confmap.direct import solve_direct
from ultramae_monai.confmap.graph import EdgeWeights, attenuation, edge_weights, normalize
from ultramae_monai.confmap.multifrontal import solve_multifrontal_batch
from ultramae_monai.confmap.seeds import SINK_MODES, Seeds, column_fill, make_seeds
from ultramae_monai.confmap.stencil import stencil_9pt
from ultramae_monai.confmap.system import assemble_csr
from ultramae_monai.confmap.volume_device import volume_confidence_map
from ultramae_monai.confmap.volume_solver import slice_system, solve_volume
from ultramae_monai.errors import InvalidInputError

__all__ = [
    "BACKENDS",
    "ConfMapParams",
    "SolveInfo",
    "batch_confidence_maps",
    "confidence_map",
    "resolve_backend",
    "solve_confidence_map",
    "solve_confidence_maps",
]

BACKENDS = ("auto", "multifrontal", "direct", "slices")

# above this many voxels SuperLU-ND needs tens of GB (dense separator fronts): use slice-preconditioned CG
_DIRECT_MAX_VOXELS = 200_000


@dataclass(frozen=True)
class SolveInfo:
    """Outcome of a solve: iterations used (1 for a direct solve) and the final relative residual ``|b - Ax| / |b|``."""

    iterations: int
    residual: float


@dataclass(frozen=True)
class ConfMapParams:
    """Model and solver parameters (MONAI's defaults); validated on construction."""

    alpha: float = 2.0
    beta: float = 90.0
    gamma: float = 0.05
    mode: str = "B"
    sink_mode: str = "all"
    backend: str = "auto"
    tol: float = 1e-10
    max_iter: int = 2000
    connectivity: int | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "tol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v):
                raise InvalidInputError(f"{name} must be a finite number, got {v!r}")
        if self.alpha <= 0 or self.beta <= 0:
            raise InvalidInputError(f"alpha and beta must be > 0, got alpha={self.alpha}, beta={self.beta}")
        if self.gamma < 0:
            raise InvalidInputError(f"gamma must be >= 0, got {self.gamma}")
        if self.mode not in ("B", "RF"):
            raise InvalidInputError(f"mode must be 'B' or 'RF', got {self.mode!r}")
        if self.sink_mode not in SINK_MODES:
            raise InvalidInputError(f"sink_mode must be one of {SINK_MODES}, got {self.sink_mode!r}")
        if self.backend not in BACKENDS:
            raise InvalidInputError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be >= 1, got {self.max_iter}")


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class _Problem:
    """One image's random-walk graph: edge weights, Dirichlet seeds and the (column-filled) FOV."""

    weights: EdgeWeights
    seeds: Seeds
    fov: np.ndarray | None


def _prepare(
    image: np.ndarray, params: ConfMapParams, sink_mask: np.ndarray | None, fov_mask: np.ndarray | None
) -> _Problem | None:
    """Checks, normalisation, attenuation, seeds and weights (MONAI's model); None for an empty FOV."""
    if image.ndim not in (2, 3):
        raise InvalidInputError(f"a confidence map needs a 2D image or 3D volume, got shape {image.shape}")
    if min(image.shape) < 3:
        raise InvalidInputError(f"every axis needs >= 3 pixels for a confidence map, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise InvalidInputError("image contains NaN or Inf")
    fov = None
    if fov_mask is not None:
        fov_mask = np.asarray(fov_mask, dtype=bool)
        if fov_mask.shape != image.shape:
            raise InvalidInputError(f"fov_mask has shape {fov_mask.shape}, the image {image.shape}")
        fov = column_fill(fov_mask)
        if not fov.any():
            return None
    data = normalize(image, fov)
    if params.mode == "RF":
        data = np.abs(hilbert(data, axis=0)).astype(np.float64)
    try:
        seeds = make_seeds(data, params.sink_mode, sink_mask, fov)
    except ValueError as err:
        raise InvalidInputError(str(err)) from err
    att = attenuation(image.shape[0], params.alpha).reshape((-1,) + (1,) * (image.ndim - 1))
    return _Problem(edge_weights(data * att, params.beta, params.gamma, fov, params.connectivity), seeds, fov)


def _finish(x: np.ndarray, problem: _Problem) -> np.ndarray:
    """Seeds keep their values, outside the FOV is 0, and nothing non-finite leaves."""
    seeds, fov = problem.seeds, problem.fov
    x[seeds.fixed] = seeds.value[seeds.fixed]
    if fov is not None:
        x[~fov] = 0.0
    if not np.isfinite(x).all():  # cannot happen for a valid SPD system; never hand NaN downstream
        warnings.warn("confidence map solve produced non-finite values; they were set to 0", stacklevel=3)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def resolve_backend(backend: str, ndim: int, size: int = 0) -> str:
    """``auto``: the exact multifrontal Cholesky in 2D (batched, any torch device); in 3D SuperLU-ND for
    small volumes and CG preconditioned by exact slice solves (:mod:`.volume_solver`) for large ones."""
    if backend != "auto":
        return backend
    if ndim == 2:
        return "multifrontal"
    return "direct" if size <= _DIRECT_MAX_VOXELS else "slices"


def _is_8_connected_2d(problem: _Problem) -> bool:
    return problem.weights.offsets == ((1, 0), (0, 1), (1, 1), (1, -1))


def _solve_multifrontal(problems: list[_Problem], shape: tuple[int, ...]) -> np.ndarray:
    """Raw solutions ``(B, H, W)`` of 8-connected 2D problems of one shape, factorised as one batch (CPU)."""
    h, w = int(shape[0]), int(shape[1])
    coef, rhs = np.empty((len(problems), h * w, 9)), np.empty((len(problems), h * w))
    for i, p in enumerate(problems):
        coef[i], rhs[i] = stencil_9pt(p.weights, p.seeds, p.fov)
    x = solve_multifrontal_batch(coef, rhs, tuple(shape)).numpy()
    return x.reshape(len(problems), *shape)


def _on_device(params: ConfMapParams) -> bool:
    """Whether the model and solver run as torch ops on the images' device (:mod:`.device_solver`)."""
    return params.mode == "B" and params.sink_mode != "mask" and params.backend in ("auto", "multifrontal")


def batch_confidence_maps(
    images: torch.Tensor,
    fov_mask: torch.Tensor | np.ndarray | None = None,
    params: ConfMapParams | None = None,
    on_device: bool | None = None,
) -> torch.Tensor:
    """Confidence maps ``(B, H, W)`` float32 of grey images ``(B, H, W)`` (beam along H), on the images' device.

    ``fov_mask`` is ``(H, W)`` or one mask per image ``(B, H, W)``. ``on_device`` (default: on CUDA) runs
    the whole computation there (:func:`~.device_solver.device_confidence_maps`: assembly, exact float64
    factorisation and solve, batched); otherwise on the CPU with the fastest CPU solver.
    Both give MONAI's maps to well under 1e-4.
    """
    params = params or ConfMapParams()
    if images.ndim != 3:
        raise InvalidInputError(f"expected a batch of 2D images (B, H, W), got shape {tuple(images.shape)}")
    on_device = images.is_cuda if on_device is None else on_device
    if on_device and _on_device(params):
        fov = None if fov_mask is None else torch.as_tensor(fov_mask, device=images.device)
        return device_confidence_maps(images, fov, params.alpha, params.beta, params.gamma, params.sink_mode)
    grey = _as_float64(images)
    fov = None if fov_mask is None else np.asarray(_as_float64(fov_mask)) > 0
    if fov is not None and fov.ndim == 3:
        maps = np.stack([solve_confidence_maps(g[None], params, fov_mask=f)[0] for g, f in zip(grey, fov, strict=True)])
    else:
        maps = solve_confidence_maps(grey, params, fov_mask=fov)
    return torch.from_numpy(maps).float().to(images.device)


def solve_confidence_maps(
    images: np.ndarray,
    params: ConfMapParams,
    sink_mask: np.ndarray | None = None,
    fov_mask: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Maps of a batch of 2D images ``(B, H, W)`` (beam along axis 1) of one shape, sharing masks.

    With the ``multifrontal`` backend (the ``auto`` choice) the batch is factorised together; with a CUDA
    ``device`` the whole computation runs there (:func:`batch_confidence_maps`). The ``direct`` backend
    solves the images one after the other.
    """
    if images.ndim != 3:
        raise InvalidInputError(f"expected a batch of 2D images (B, H, W), got shape {images.shape}")
    backend = resolve_backend(params.backend, 2)
    if device is not None and torch.device(device).type != "cpu" and _on_device(params):
        x = torch.as_tensor(np.asarray(images, dtype=np.float64), device=device)
        return batch_confidence_maps(x, fov_mask, params, on_device=True).double().cpu().numpy()
    if backend != "multifrontal":
        return np.stack([solve_confidence_map(img, params, sink_mask, fov_mask)[0] for img in images])
    problems = [_prepare(img, params, sink_mask, fov_mask) for img in images]
    todo = [i for i, p in enumerate(problems) if p is not None]
    out = np.zeros(images.shape)
    if not todo:
        return out
    x = _solve_multifrontal([problems[i] for i in todo], images.shape[1:])
    for k, i in enumerate(todo):
        out[i] = _finish(x[k], problems[i])
    return out


def solve_confidence_map(
    image: np.ndarray,
    params: ConfMapParams,
    sink_mask: np.ndarray | None = None,
    fov_mask: np.ndarray | None = None,
    x0: np.ndarray | None = None,
) -> tuple[np.ndarray, SolveInfo]:
    """Core solve on a float64 array with the beam along axis 0; returns the float64 map and solver info.

    ``x0`` (a previous map of the same shape) warm-starts the ``slices`` backend.
    """
    problem = _prepare(image, params, sink_mask, fov_mask)
    if problem is None:
        return np.zeros(image.shape), SolveInfo(iterations=0, residual=0.0)
    weights, seeds, fov = problem.weights, problem.seeds, problem.fov
    backend = resolve_backend(params.backend, image.ndim, image.size)
    if backend == "slices" and image.ndim != 3:
        raise InvalidInputError("the slices backend handles 3D volumes only")
    if backend == "multifrontal" and not (image.ndim == 2 and _is_8_connected_2d(problem)):
        raise InvalidInputError(f"the {backend} backend handles 8-connected 2D images only")
    info = SolveInfo(iterations=1, residual=0.0)
    if backend == "multifrontal":
        x = _solve_multifrontal([problem], image.shape)[0]
    elif backend == "slices":
        split, b = slice_system(weights, seeds, fov)  # no grid matrix: it was the peak memory at full size
        start = None if x0 is None or x0.shape != image.shape else x0.ravel()
        x, iterations, residual = solve_volume(
            split, b, image.shape, tol=params.tol, max_iter=params.max_iter, x0=start
        )
        x, info = x.reshape(image.shape), SolveInfo(iterations, residual)
    else:
        mat, b, _ = assemble_csr(weights, seeds, fov)
        x = solve_direct(mat, b, image.shape).reshape(image.shape)
    return _finish(x, problem), info


def confidence_map(
    image: np.ndarray | torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    mode: str = "B",
    sink_mode: str = "all",
    sink_mask: np.ndarray | torch.Tensor | None = None,
    fov_mask: np.ndarray | torch.Tensor | None = None,
    beam_axis: int = 0,
    backend: str = "auto",
    tol: float = 1e-10,
    max_iter: int = 2000,
    connectivity: int | None = None,
) -> np.ndarray | torch.Tensor:
    """Confidence map of one 2D image ``(H, W)`` or 3D volume ``(H, W, D)`` (no channel axis).

    Returns float32, a tensor on the input's device for tensor input, else a numpy array. Raises
    :class:`~ultramae_monai.errors.InvalidInputError` for NaN/Inf, < 3 px along an axis, wrong
    dimensionality or invalid parameters, and :class:`~ultramae_monai.errors.ConvergenceError` when the
    ``slices`` backend does not reach ``tol`` within ``max_iter`` iterations.
    """
    params = ConfMapParams(alpha, beta, gamma, mode, sink_mode, backend, tol, max_iter, connectivity)
    if image.ndim not in (2, 3):
        raise InvalidInputError(f"a confidence map needs a 2D image or 3D volume, got shape {tuple(image.shape)}")
    if not -image.ndim <= beam_axis < image.ndim:
        raise InvalidInputError(f"beam_axis {beam_axis} out of range for a {image.ndim}D image")
    if isinstance(image, torch.Tensor) and image.is_cuda:
        mapped = _confidence_map_cuda(image, params, fov_mask, beam_axis)
        if mapped is not None:
            return mapped

    def move(a: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
        return None if a is None else np.moveaxis(_as_float64(a), beam_axis, 0)

    result, _ = solve_confidence_map(move(image), params, move(sink_mask), move(fov_mask))
    out = np.ascontiguousarray(np.moveaxis(result, 0, beam_axis), dtype=np.float32)
    if isinstance(image, torch.Tensor):
        return torch.from_numpy(out).to(image.device)
    return out


def _confidence_map_cuda(
    image: torch.Tensor, params: ConfMapParams, fov_mask: np.ndarray | torch.Tensor | None, beam_axis: int
) -> torch.Tensor | None:
    """The map of a CUDA tensor computed on its GPU (:mod:`.device_solver`, :mod:`.volume_device`), or None
    when the parameters need the CPU path (RF mode, sink masks, other backends)."""
    fov = None if fov_mask is None else torch.movedim(torch.as_tensor(fov_mask, device=image.device) != 0, beam_axis, 0)
    moved = torch.movedim(image.detach(), beam_axis, 0)
    if image.ndim == 2 and _on_device(params):
        maps = batch_confidence_maps(moved.double()[None], fov, params, on_device=True)[0]
    elif image.ndim == 3 and params.mode == "B" and params.sink_mode == "all" and params.backend in ("auto", "slices"):
        maps = volume_confidence_map(
            moved, params.alpha, params.beta, params.gamma, fov, params.connectivity, params.tol, params.max_iter
        )
    else:
        return None
    return torch.movedim(maps, 0, beam_axis).contiguous()
