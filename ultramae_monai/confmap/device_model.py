"""The confidence-map model as batched torch operations on the images' own device (CUDA or CPU).

The same equations as the NumPy path (:mod:`.graph`, :mod:`.seeds`, :mod:`.stencil`), which follow MONAI's
``UltrasoundConfidenceMap`` (Karamalis et al., MedIA 2012): per image, min-max normalisation (over the
field of view when there is one), transducer row as source and the bottom row (``sink_mode``) as sinks,
Beer-Lambert attenuation ``1 - exp(-alpha * depth)``, 8-neighbour weights
``exp(-beta * s) + 1e-5`` with the two normalisations and the lateral penalty ``gamma``, and the
Dirichlet-reduced 9-point system in which seeds (and nodes outside the FOV) keep identity rows. Only the
summation order differs from the NumPy assembly, so systems agree to float64 round-off. Nothing leaves the
device: a batch of frames on a GPU becomes a batch of stencils on that GPU in a few dozen element-wise
kernels, instead of a host assembly and a copy of ``9 x H x W`` float64 numbers per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ultramae_monai.confmap.graph import EPS, WEIGHT_FLOOR
from ultramae_monai.confmap.seeds import SINK_MODES
from ultramae_monai.errors import InvalidInputError

__all__ = ["DeviceSystem", "column_fill_t", "device_system", "edge_weights_t", "finish_maps"]

# (di, dj) of the four stored edge directions: down (the beam), right, down-right, down-left
_DIRS = ((1, 0), (0, 1), (1, 1), (1, -1))


@dataclass(frozen=True)
class DeviceSystem:
    """A batch of 9-point systems on one device.

    ``coef`` ``(B, H * W, 9)``: row ``p`` column ``d`` couples node ``p`` to its neighbour
    ``(d // 3 - 1, d % 3 - 1)`` away (the layout of :func:`~ultramae_monai.confmap.stencil.stencil_9pt`);
    ``rhs`` ``(B, H * W)``; ``fixed`` and ``value`` ``(B, H, W)`` the Dirichlet nodes and their values;
    ``fov`` ``(B, H, W)`` the column-filled field of view (None: everywhere); ``empty`` ``(B,)`` marks
    images whose FOV is empty (their map is 0).
    """

    coef: torch.Tensor
    rhs: torch.Tensor
    fixed: torch.Tensor
    value: torch.Tensor
    fov: torch.Tensor | None
    empty: torch.Tensor


def column_fill_t(fov: torch.Tensor) -> torch.Tensor:
    """Fill every scanline (axis 1 of ``(B, H, W)``) between its first and last FOV pixel (as ``column_fill``)."""
    f = fov.to(torch.uint8)
    from_top = torch.cummax(f, dim=1).values
    from_bottom = torch.cummax(f.flip(1), dim=1).values.flip(1)
    return (from_top & from_bottom).bool()


def _shift(x: torch.Tensor, di: int, dj: int, fill: float | bool = 0) -> torch.Tensor:
    """``out[:, i, j] = x[:, i + di, j + dj]`` (``fill`` off the grid)."""
    pad = F.pad(x.unsqueeze(1).float() if x.dtype == torch.bool else x.unsqueeze(1), (1, 1, 1, 1), value=float(fill))
    out = pad[:, 0, 1 + di : 1 + di + x.shape[1], 1 + dj : 1 + dj + x.shape[2]]
    return out.bool() if x.dtype == torch.bool else out


def edge_weights_t(
    att: torch.Tensor, beta: float, gamma: float, fov: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights of the down, right, down-right and down-left edges of each node, ``(B, H, W)`` each.

    ``att`` is the attenuated, normalised image; an edge exists when both ends lie on the grid (and in the
    FOV); absent edges weigh 0.
    """
    b, h, w = att.shape
    diffs, valid = [], []
    for di, dj in _DIRS:
        partner = _shift(att, di, dj)
        on = torch.ones(b, h, w, dtype=torch.bool, device=att.device)
        on = on & _shift(on, di, dj, False)
        if fov is not None:
            on = on & fov & _shift(fov, di, dj, False)
        diffs.append(torch.where(on, (att - partner).abs(), 0.0))
        valid.append(on)
    d = torch.stack(diffs)  # (4, B, H, W)
    v = torch.stack(valid)
    m1 = d.amax(dim=(0, 2, 3)).view(1, b, 1, 1)
    d = d / (m1 + EPS)
    d[1:] = torch.where(v[1:], d[1:] + gamma, d[1:])  # the lateral penalty on every non-beam edge
    m2 = d.amax(dim=(0, 2, 3)).view(1, b, 1, 1)
    wts = torch.where(v, torch.exp(-beta * (d / (m2 + EPS))) + WEIGHT_FLOOR, 0.0)
    return wts[0], wts[1], wts[2], wts[3]


def _seeds(
    data: torch.Tensor, fov: torch.Tensor | None, sink_mode: str, sink_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fixed`` and ``value`` ``(B, H, W)``: sources on each scanline's first FOV pixel, sinks by ``sink_mode``."""
    b, h, w = data.shape
    dev = data.device
    if fov is None:
        has = torch.ones(b, w, dtype=torch.bool, device=dev)
        top = torch.zeros(b, w, dtype=torch.int64, device=dev)
        bottom = torch.full((b, w), h - 1, dtype=torch.int64, device=dev)
    else:
        f = fov.to(torch.uint8)
        has = fov.any(dim=1)
        top = torch.argmax(f, dim=1)
        bottom = h - 1 - torch.argmax(f.flip(1), dim=1)
    count = has.sum(dim=1, keepdim=True)
    rank = torch.cumsum(has.to(torch.int64), dim=1) - 1  # position among the non-empty scanlines
    if sink_mode == "all":
        sink = has
    elif sink_mode == "mid":
        sink = has & (rank == count // 2)
    elif sink_mode == "min":
        ten = (count.double() * 0.1).floor().long()  # MONAI: int(10% of the scanlines) left out at each side
        keep = has & (rank >= ten) & (rank < count - ten)
        vals = torch.gather(data, 1, bottom.unsqueeze(1)).squeeze(1)
        low = torch.where(keep, vals, torch.inf).amin(dim=1, keepdim=True)
        sink = keep & (vals == low)
    else:
        sink = torch.zeros_like(has)
    fixed = torch.zeros(b, h, w, dtype=torch.bool, device=dev)
    fixed.scatter_(1, bottom.unsqueeze(1), sink.unsqueeze(1))
    if sink_mode == "mask":
        if sink_mask is None:
            raise InvalidInputError("sink_mode='mask' needs a sink_mask")
        extra = sink_mask.to(dev).expand(b, h, w) != 0
        fixed |= extra if fov is None else extra & fov
    source = torch.zeros_like(fixed).scatter_(1, top.unsqueeze(1), has.unsqueeze(1))
    return fixed | source, source.to(data.dtype)


def device_system(
    images: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    sink_mode: str = "all",
    sink_mask: torch.Tensor | None = None,
    fov_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    check: bool = True,
) -> DeviceSystem:
    """Assemble the confidence-map systems of a batch of B-mode images ``(B, H, W)`` (beam along H) on their device.

    ``fov_mask`` (``(H, W)`` or ``(B, H, W)``, bool) restricts each graph to the scan region. ``check``
    rejects NaN/Inf (one wait for the device; off inside CUDA-graph capture, where the caller checks).
    """
    if images.ndim != 3:
        raise InvalidInputError(f"expected a batch of 2D images (B, H, W), got shape {tuple(images.shape)}")
    if min(images.shape[1:]) < 3:
        raise InvalidInputError(f"every axis needs >= 3 pixels for a confidence map, got shape {tuple(images.shape)}")
    if sink_mode not in SINK_MODES:
        raise InvalidInputError(f"sink_mode must be one of {SINK_MODES}, got {sink_mode!r}")
    x = images.to(dtype)
    if check and not bool(torch.isfinite(x).all()):
        raise InvalidInputError("image contains NaN or Inf")
    b, h, w = x.shape
    fov = None
    if fov_mask is not None:
        fm = torch.as_tensor(fov_mask, device=x.device).bool()
        if fm.shape[-2:] != (h, w):
            raise InvalidInputError(f"fov_mask has shape {tuple(fm.shape)}, the images {(h, w)}")
        fov = column_fill_t(fm.expand(b, h, w))
    empty = torch.zeros(b, dtype=torch.bool, device=x.device) if fov is None else ~fov.flatten(1).any(dim=1)
    # min-max normalisation over the FOV (MONAI's (x - min) / (ptp + eps))
    lo = x.flatten(1).amin(dim=1) if fov is None else torch.where(fov, x, torch.inf).flatten(1).amin(dim=1)
    hi = x.flatten(1).amax(dim=1) if fov is None else torch.where(fov, x, -torch.inf).flatten(1).amax(dim=1)
    lo, hi = torch.where(empty, 0.0, lo).view(b, 1, 1), torch.where(empty, 0.0, hi).view(b, 1, 1)
    data = (x - lo) / ((hi - lo) + EPS)
    fixed, value = _seeds(data, fov, sink_mode, sink_mask)
    depth = torch.linspace(0, 1, h, dtype=dtype, device=x.device)
    att = data * (1.0 - torch.exp(-alpha * depth)).view(1, h, 1)
    down, right, dr, dl = edge_weights_t(att, beta, gamma, fov)

    held = fixed if fov is None else fixed | ~fov
    # the weight towards each of the 9 neighbours (d = 3 (di + 1) + (dj + 1)); every edge is stored at its
    # upper (or left) end, so the couplings towards up and left are the partner's stored weights
    toward = {
        0: _shift(dr, -1, -1), 1: _shift(down, -1, 0), 2: _shift(dl, -1, 1), 3: _shift(right, 0, -1),
        5: right, 6: dl, 7: down, 8: dr,
    }  # fmt: skip
    coef = torch.zeros(b, h, w, 9, dtype=dtype, device=x.device)
    deg = torch.zeros(b, h, w, dtype=dtype, device=x.device)
    rhs = torch.zeros(b, h, w, dtype=dtype, device=x.device)
    for d, wt in toward.items():
        di, dj = d // 3 - 1, d % 3 - 1
        nb_held = _shift(held, di, dj, True)
        deg += wt
        rhs += torch.where(nb_held, wt * _shift(value, di, dj), 0.0)
        coef[..., d] = torch.where(nb_held, 0.0, -wt)
    coef[..., 4] = deg
    coef = torch.where(held.unsqueeze(-1), 0.0, coef)
    coef[..., 4] = torch.where(held, 1.0, deg)
    rhs = torch.where(held, 0.0, rhs)
    return DeviceSystem(coef.reshape(b, h * w, 9), rhs.reshape(b, h * w), fixed, value, fov, empty)


def finish_maps(x: torch.Tensor, system: DeviceSystem) -> torch.Tensor:
    """Solutions ``(B, H * W)`` -> maps ``(B, H, W)``: seeds keep their values, 0 outside the FOV, finite."""
    b, h, w = system.fixed.shape
    maps = torch.where(system.fixed, system.value, x.reshape(b, h, w).to(system.value.dtype))
    if system.fov is not None:
        maps = torch.where(system.fov, maps, 0.0)
    maps = torch.where(system.empty.view(b, 1, 1), 0.0, maps)
    return torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
