"""3D confidence maps on the volume's own device: slice-preconditioned CG with every slice factor on the device.

The method of :mod:`.volume_solver` (float64 conjugate gradients on ``A = blockdiag(S_d) - N``, preconditioned
by one symmetric red-black Gauss-Seidel sweep of exact (beam, W) slice solves), with everything a torch tensor
on one device: the model (normalisation over the FOV, per-scanline seeds, the 10-neighbourhood weights of
:func:`~ultramae_monai.confmap.graph.edge_offsets`), the slice stencils and the cross-slice couplings (one
weight array per offset, never a sparse matrix), the float32 factors of all even and all odd slices (two
batched level-walk factorisations, :mod:`.multifrontal`) and the CG vectors. Nothing of the volume's size is
held in host memory, and on a GPU a full 256 x 256 x 288 volume solves in seconds.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ultramae_monai.confmap.device_model import column_fill_t
from ultramae_monai.confmap.device_solver import matvec_9pt_t
from ultramae_monai.confmap.graph import EPS, WEIGHT_FLOOR, edge_offsets
from ultramae_monai.confmap.multifrontal import factorize, solve_factored
from ultramae_monai.errors import ConvergenceError, InvalidInputError

__all__ = ["volume_confidence_map"]

logger = logging.getLogger(__name__)


def _shift3(x: torch.Tensor, off: tuple[int, int, int], fill: float = 0.0) -> torch.Tensor:
    """``out[d, i, j] = x[d + off[0], i + off[1], j + off[2]]`` (``fill`` off the grid), for ``(D, H, W)``."""
    is_bool = x.dtype == torch.bool
    xp = F.pad((x.to(torch.float32) if is_bool else x)[None, None], (1, 1, 1, 1, 1, 1), value=fill)[0, 0]
    d, h, w = x.shape
    out = xp[1 + off[0] : 1 + off[0] + d, 1 + off[1] : 1 + off[1] + h, 1 + off[2] : 1 + off[2] + w]
    return out.bool() if is_bool else out


def _slice_major(off: tuple[int, int, int]) -> tuple[int, int, int]:
    """An ``(H, W, D)`` offset as ``(D, H, W)``."""
    return off[2], off[0], off[1]


class _System:
    """The slice-split system ``A = blockdiag(S_d) - N`` of a ``(D, H, W)`` volume, on its device."""

    def __init__(
        self,
        vol: torch.Tensor,
        alpha: float,
        beta: float,
        gamma: float,
        fov: torch.Tensor | None,
        connectivity: int | None,
    ) -> None:
        d, h, w = vol.shape
        self.shape = (d, h, w)
        self.fov = None if fov is None else column_fill_t(fov)
        valid = self.fov
        lo = vol.min() if valid is None else torch.where(valid, vol, torch.inf).min()
        hi = vol.max() if valid is None else torch.where(valid, vol, -torch.inf).max()
        data = (vol - lo) / ((hi - lo) + EPS)
        # sources: each scanline's first FOV voxel along the beam (axis 1 here); sinks: its last
        if valid is None:
            top = torch.zeros(d, w, dtype=torch.int64, device=vol.device)
            bottom = torch.full((d, w), h - 1, dtype=torch.int64, device=vol.device)
            has = torch.ones(d, w, dtype=torch.bool, device=vol.device)
        else:
            f = valid.to(torch.uint8)
            has = valid.any(dim=1)
            top, bottom = torch.argmax(f, dim=1), h - 1 - torch.argmax(f.flip(1), dim=1)
        sink = torch.zeros(d, h, w, dtype=torch.bool, device=vol.device).scatter_(1, bottom[:, None], has[:, None])
        source = torch.zeros_like(sink).scatter_(1, top[:, None], has[:, None])
        self.fixed = sink | source
        self.value = source.to(vol.dtype)
        held = self.fixed if valid is None else self.fixed | ~valid
        free = ~held
        att = data * (1.0 - torch.exp(-alpha * torch.linspace(0, 1, h, dtype=vol.dtype, device=vol.device))).view(
            1, h, 1
        )
        offsets = [_slice_major(o) for o in edge_offsets(3, connectivity)]
        diffs, ons = [], []
        ones = torch.ones_like(held)
        for off in offsets:
            on = ones & _shift3(ones, off).bool()
            if valid is not None:
                on = on & valid & _shift3(valid, off).bool()
            diffs.append(torch.where(on, (att - _shift3(att, off)).abs(), 0.0))
            ons.append(on)
        m1 = max(float(x.max()) for x in diffs)
        for k, off in enumerate(offsets):
            diffs[k] = diffs[k] / (m1 + EPS)
            if off[0] != 0 or off[2] != 0:  # every direction but the beam gets the lateral penalty
                diffs[k] = torch.where(ons[k], diffs[k] + gamma, diffs[k])
        m2 = max(float(x.max()) for x in diffs)
        weights = [
            torch.where(on, torch.exp(-beta * (x / (m2 + EPS))) + WEIGHT_FLOOR, 0.0)
            for x, on in zip(diffs, ons, strict=True)
        ]
        del diffs, ons

        coef = torch.zeros(d, h, w, 9, dtype=vol.dtype, device=vol.device)
        deg = torch.zeros(d, h, w, dtype=vol.dtype, device=vol.device)
        rhs = torch.zeros(d, h, w, dtype=vol.dtype, device=vol.device)
        self.cross: list[tuple[tuple[int, int, int], torch.Tensor]] = []
        for off, wt in zip(offsets, weights, strict=True):
            back = (-off[0], -off[1], -off[2])
            partner_w = _shift3(wt, back)  # the same edges, seen from their far end
            deg += wt + partner_w
            nb_held, nb_val = _shift3(held, off, 1.0).bool(), _shift3(self.value, off)
            rhs += torch.where(nb_held, wt * nb_val, 0.0)
            bk_held, bk_val = _shift3(held, back, 1.0).bool(), _shift3(self.value, back)
            rhs += torch.where(bk_held, partner_w * bk_val, 0.0)
            both_free = free & _shift3(free, off).bool()
            coupled = torch.where(both_free, wt, 0.0)
            if off[0] == 0:  # in-slice: both stencil rows of the 9-point slice block
                di, dj = off[1], off[2]
                coef[..., (di + 1) * 3 + dj + 1] -= coupled
                coef[..., (1 - di) * 3 + 1 - dj] -= _shift3(coupled, back)
            else:
                self.cross.append((off, coupled))
        coef[..., 4] = deg
        coef = torch.where(held.unsqueeze(-1), 0.0, coef)
        coef[..., 4] = torch.where(held, 1.0, deg)
        self.coef = coef.reshape(d, h * w, 9)
        self.rhs = torch.where(held, 0.0, rhs).reshape(d, h * w)

    def couple(self, x: torch.Tensor) -> torch.Tensor:
        """``N x`` for ``(D, H * W)`` vectors (the magnitudes of the cross-slice entries of ``A``)."""
        d, h, w = self.shape
        xg = x.reshape(d, h, w)
        out = torch.zeros_like(xg)
        for off, wt in self.cross:
            out += wt * _shift3(xg, off)
            out += _shift3(wt * xg, (-off[0], -off[1], -off[2]))
        return out.reshape(d, h * w)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return matvec_9pt_t(self.coef, x, self.shape[1:]) - self.couple(x)


def volume_confidence_map(
    volume: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    fov_mask: torch.Tensor | None = None,
    connectivity: int | None = None,
    tol: float = 1e-10,
    max_iter: int = 500,
) -> torch.Tensor:
    """Confidence map ``(H, W, D)`` float32 of a volume ``(H, W, D)`` (beam along H, ``sink_mode="all"``) on its device.

    CG stops at relative residual ``tol`` (1e-10 keeps the map's max abs error well under 1e-4, as on the
    CPU); :class:`~ultramae_monai.errors.ConvergenceError` after ``max_iter`` iterations.
    """
    if volume.ndim != 3 or min(volume.shape) < 3:
        raise InvalidInputError(f"expected a volume (H, W, D) with >= 3 voxels per axis, got {tuple(volume.shape)}")
    vol = volume.detach().to(torch.float64).permute(2, 0, 1).contiguous()
    if not bool(torch.isfinite(vol).all()):
        raise InvalidInputError("volume contains NaN or Inf")
    fov = None
    if fov_mask is not None:
        fov = torch.as_tensor(fov_mask, device=vol.device).bool()
        if fov.shape != volume.shape:
            raise InvalidInputError(f"fov_mask has shape {tuple(fov.shape)}, the volume {tuple(volume.shape)}")
        fov = fov.permute(2, 0, 1).contiguous()
        if not bool(fov.any()):
            return torch.zeros(volume.shape, dtype=torch.float32, device=volume.device)
    system = _System(vol, alpha, beta, gamma, fov, connectivity)
    depth, h, w = system.shape
    even, odd = torch.arange(0, depth, 2, device=vol.device), torch.arange(1, depth, 2, device=vol.device)
    factors = [(idx, factorize(system.coef[idx].float(), (h, w))) for idx in (even, odd) if len(idx)]

    def block_solve(rhs: torch.Tensor, z: torch.Tensor, which: int) -> None:
        idx, f = factors[which]
        z[idx] = solve_factored(f, rhs[idx].float()).double()

    def precondition(r: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(r)
        block_solve(r, z, 0)
        if len(factors) > 1:  # A = S - N: the updated right-hand side is r + N z
            block_solve(r + system.couple(z), z, 1)
            block_solve(r + system.couple(z), z, 0)
        return z

    x, iters, res = _flexible_pcg(system.matvec, precondition, system.rhs, tol, max_iter)
    logger.info("3D confidence map %dx%dx%d on %s: %d CG iterations", h, w, depth, vol.device, iters)
    if not res <= tol:
        raise ConvergenceError(
            f"slice-preconditioned CG stopped after {iters} iterations at relative residual {res:.2e} > tol {tol:.1e}"
        )
    maps = torch.where(system.fixed, system.value, x.reshape(depth, h, w))
    if system.fov is not None:
        maps = torch.where(system.fov, maps, 0.0)
    return maps.permute(1, 2, 0).contiguous().float()


def _flexible_pcg(matvec, precond, b: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int, float]:
    """Flexible (Polak-Ribiere) preconditioned CG from 0 in ``b``'s dtype; one host read per iteration."""
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        return torch.zeros_like(b), 0, 0.0
    x = torch.zeros_like(b)
    r = b.clone()
    z = precond(r)
    p = z.clone()
    rz = torch.sum(r * z)
    res, it = 1.0, 0
    while it < max_iter:
        it += 1
        q = matvec(p)
        alpha = rz / torch.sum(p * q)
        x += alpha * p
        r -= alpha * q
        res = float(torch.linalg.vector_norm(r)) / bnorm
        if res <= tol:
            break
        z_old = z
        z = precond(r)
        rz_new = torch.sum(r * z)
        p = z + ((rz_new - torch.sum(r * z_old)) / rz) * p
        rz = rz_new
    res = float(torch.linalg.vector_norm(b - matvec(x))) / bnorm
    return x, it, res
