"""Batched 2D confidence maps where the images already are: assembly, factorisation and solve on one device.

The pipeline for a batch ``(B, H, W)`` never leaves the device: :func:`~.device_model.device_system`
assembles the 9-point systems, the level-batched multifrontal Cholesky (:mod:`.multifrontal`, every tree
level one batched dense kernel) factorises them, and the solve walks the levels down and up. Two
precisions:

* ``"float64"``: the factorisation is exact; no refinement.
* ``"mixed"``: a float32 factor (half the memory traffic, the faster arithmetic) used as the
  preconditioner of a fixed number of float64 conjugate-gradient steps (:func:`pcg_steps`), as on the CPU
  (:mod:`.refine`): residuals, products and iterates in float64. The remaining error is estimated from the
  last two corrections; should it exceed ``atol``, more steps run before the maps are returned.

On CUDA the whole pipeline for one ``(B, H, W)`` shape is captured once into a CUDA graph and replayed
(:class:`DeviceMapSolver`): the ~300 small kernels of a tree walk then cost no launch overhead. Capture is
attempted once per shape; if the device's libraries refuse it, the same code runs eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ultramae_monai.confmap.device_model import DeviceSystem, device_system, finish_maps
from ultramae_monai.confmap.multifrontal import factorize, solve_factored
from ultramae_monai.errors import InvalidInputError

__all__ = ["PRECISIONS", "DeviceMapSolver", "device_confidence_maps", "matvec_9pt_t", "pcg_steps"]

logger = logging.getLogger(__name__)

PRECISIONS = ("float64", "mixed")


def matvec_9pt_t(coef: torch.Tensor, x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``A x`` for 9-point stencils ``coef`` ``(B, H * W, 9)`` and ``x`` ``(B, H * W)`` (any device/dtype)."""
    h, w = shape
    b = x.shape[0]
    xp = F.pad(x.reshape(b, 1, h, w), (1, 1, 1, 1))[:, 0]
    c = coef.reshape(b, h, w, 9)
    out = c[..., 4] * x.reshape(b, h, w)
    for d in (0, 1, 2, 3, 5, 6, 7, 8):
        di, dj = d // 3 - 1, d % 3 - 1
        out = out + c[..., d] * xp[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
    return out.reshape(b, h * w)


def pcg_steps(
    coef: torch.Tensor, rhs: torch.Tensor, shape: tuple[int, int], precondition, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` preconditioned CG steps from 0 on a batch (each item its own recurrence), no host sync.

    Returns the iterate and each item's estimated remaining max-abs error (the last correction times the
    observed contraction, as :func:`ultramae_monai.confmap.refine.pcg_refine`; inf when unknown).
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(dim=1, keepdim=True)
    prev = torch.full_like(rz, torch.inf)
    est = torch.full_like(rz, torch.inf)
    for k in range(steps):
        ap = matvec_9pt_t(coef, p, shape)
        pap = (p * ap).sum(dim=1, keepdim=True)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        corr = alpha.abs() * p.abs().amax(dim=1, keepdim=True)
        rate = torch.clamp(corr / torch.where(prev > 0, prev, 1.0), max=0.5)
        est = torch.where(torch.isfinite(prev) & (prev > 0), corr * rate / (1.0 - rate), est)
        est = torch.where(corr == 0, 0.0, est)
        prev = corr
        if k + 1 == steps:
            break
        z = precondition(r)
        rz_new = (r * z).sum(dim=1, keepdim=True)
        p = z + torch.where(rz != 0, rz_new / torch.where(rz != 0, rz, 1.0), 0.0) * p
        rz = rz_new
    return x, est.squeeze(1)


def _solve_system(system: DeviceSystem, shape: tuple[int, int], precision: str, steps: int, invert_below: int = 0):
    """Raw solutions ``(B, H * W)`` float64, the error estimate ``(B,)`` and the factorisation's SPD flag."""
    if precision == "float64":
        factor = factorize(system.coef, shape, check=False, invert_below=invert_below)
        x = solve_factored(factor, system.rhs)
        return x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), factor.ok
    factor = factorize(system.coef.float(), shape, check=False, invert_below=invert_below)

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return solve_factored(factor, r.float()).double()

    x, est = pcg_steps(system.coef, system.rhs, shape, precondition, steps)
    return x, est, factor.ok


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    images: torch.Tensor
    fov: torch.Tensor | None
    maps: torch.Tensor
    est: torch.Tensor
    ok: torch.Tensor


@dataclass
class DeviceMapSolver:
    """Confidence maps of batches of one shape on one device, CUDA-graph captured where possible.

    Args:
        alpha, beta, gamma, sink_mode: the model (MONAI's defaults).
        precision: ``"float64"`` (exact factor, the default: on an H200 it ran 2.5x faster than the mixed
            precision, see docs/benchmarks.md) or ``"mixed"`` (float32 factor + float64 CG steps).
        steps: CG steps of the mixed precision; more run (eagerly) when the estimate exceeds ``atol``.
        atol: the max-abs error the mixed precision must reach (maps live in [0, 1]).
        graphs: capture CUDA graphs (CUDA only); ``refusal`` holds the reason when a capture was refused.
        invert_below: keep ``L11^-1`` for fronts eliminating at most this many nodes (:func:`factorize`).
    """

    alpha: float = 2.0
    beta: float = 90.0
    gamma: float = 0.05
    sink_mode: str = "all"
    precision: str = "float64"
    steps: int = 3
    atol: float = 1e-6
    graphs: bool = True
    max_steps: int = 30
    invert_below: int = 0
    refusal: str | None = None
    _captured: dict = field(default_factory=dict, repr=False)
    _refused: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sink_mode == "mask":
            raise InvalidInputError("DeviceMapSolver takes sink modes all/mid/min; use the API for sink masks")

    def _pipeline(self, images: torch.Tensor, fov: torch.Tensor | None):
        system = device_system(images, self.alpha, self.beta, self.gamma, self.sink_mode, fov_mask=fov, check=False)
        shape = (images.shape[1], images.shape[2])
        x, est, ok = _solve_system(system, shape, self.precision, self.steps, self.invert_below)
        return finish_maps(x, system), est, ok, system

    def _eager(self, images: torch.Tensor, fov: torch.Tensor | None) -> torch.Tensor:
        maps, est, ok, _ = self._pipeline(images, fov)
        if not bool(ok):
            raise InvalidInputError("the confidence-map system is not positive definite")
        if self.precision == "mixed" and bool((est > self.atol).any()):
            maps = self._refine_more(images, fov)
        return maps.float()

    def _refine_more(self, images: torch.Tensor, fov: torch.Tensor | None) -> torch.Tensor:
        """The mixed solve again with steps added until the estimate meets ``atol`` (rare: hard images)."""
        system = device_system(images, self.alpha, self.beta, self.gamma, self.sink_mode, fov_mask=fov, check=False)
        shape = (images.shape[1], images.shape[2])
        steps = self.steps
        while True:
            steps = min(2 * steps, self.max_steps)
            x, est, _ = _solve_system(system, shape, "mixed", steps)
            if bool((est <= self.atol).all()) or steps >= self.max_steps:
                break
        if bool((est > self.atol).any()):
            logger.warning("mixed-precision confidence maps stopped at an estimated error of %.1e", float(est.max()))
        return finish_maps(x, system)

    def _capture(self, key, images: torch.Tensor, fov: torch.Tensor | None) -> _Captured | None:
        static_in = images.clone()
        static_fov = None if fov is None else fov.clone()
        stream = torch.cuda.Stream(images.device)
        stream.wait_stream(torch.cuda.current_stream(images.device))
        try:
            with torch.cuda.stream(stream):
                for _ in range(2):  # library handles, workspaces and the symbolic maps exist before capture
                    self._pipeline(static_in, static_fov)
            torch.cuda.current_stream(images.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # captured on the warm-up stream, whose library handles and workspaces already exist; thread-local
            # so that a DataLoader's pin-memory thread touching CUDA meanwhile does not void the capture
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                maps, est, ok, _ = self._pipeline(static_in, static_fov)
        except RuntimeError as err:  # a library call that cannot be captured: run eagerly from now on
            self.refusal = str(err).splitlines()[0][:300]
            logger.warning("confidence maps of shape %s run without a CUDA graph: %s", tuple(images.shape), err)
            self._refused.add(key)
            torch.cuda.synchronize(images.device)
            return None
        return _Captured(graph, static_in, static_fov, maps, est, ok)

    def __call__(self, images: torch.Tensor, fov_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Maps ``(B, H, W)`` float32 of images ``(B, H, W)`` (beam along H), on their device."""
        if images.ndim != 3:
            raise InvalidInputError(f"expected a batch of 2D images (B, H, W), got shape {tuple(images.shape)}")
        if min(images.shape[1:]) < 3:
            raise InvalidInputError(
                f"every axis needs >= 3 pixels for a confidence map, got shape {tuple(images.shape)}"
            )
        if not bool(torch.isfinite(images).all()):
            raise InvalidInputError("image contains NaN or Inf")
        fov = None
        if fov_mask is not None:
            fov = torch.as_tensor(fov_mask, device=images.device).bool().expand(images.shape).contiguous()
        if not (self.graphs and images.is_cuda):
            return self._eager(images, fov)
        key = (tuple(images.shape), images.dtype, str(images.device), fov is None)
        cap = self._captured.get(key)
        if cap is None and key not in self._refused:
            cap = self._captured[key] = self._capture(key, images, fov)
            if cap is None:
                del self._captured[key]
        if cap is None:
            return self._eager(images, fov)
        cap.images.copy_(images)
        if fov is not None:
            cap.fov.copy_(fov)
        cap.graph.replay()
        if not bool(cap.ok):
            raise InvalidInputError("the confidence-map system is not positive definite")
        if self.precision == "mixed" and bool((cap.est > self.atol).any()):
            return self._refine_more(images, fov).float()
        return cap.maps.to(torch.float32, copy=True)


_SOLVERS: dict[tuple, DeviceMapSolver] = {}


def device_confidence_maps(
    images: torch.Tensor,
    fov_mask: torch.Tensor | None = None,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    sink_mode: str = "all",
    precision: str = "float64",
    graphs: bool = True,
) -> torch.Tensor:
    """Confidence maps of ``(B, H, W)`` images on their device (one cached :class:`DeviceMapSolver` per setting)."""
    key = (alpha, beta, gamma, sink_mode, precision, graphs)
    solver = _SOLVERS.get(key)
    if solver is None:
        solver = _SOLVERS[key] = DeviceMapSolver(alpha, beta, gamma, sink_mode, precision, graphs=graphs)
    return solver(images, fov_mask)
