"""MONAI transforms for ultrasound confidence maps (Karamalis et al., "Ultrasound confidence maps using
random walks", Medical Image Analysis 16(6), 2012).

``UltrasoundConfidenceMap`` takes the constructor keywords of ``monai.transforms.UltrasoundConfidenceMapTransform``
(``alpha``, ``beta``, ``gamma``, ``mode``, ``sink_mode``; ``use_cg``/``cg_tol``/``cg_maxiter`` are accepted
for drop-in compatibility and ignored) and computes the same map, but keeps the channel axis, returns a
float32 ``MetaTensor`` with the input's metadata, and handles every layout of the project convention:

* still ``(C, H, W)``: one map per channel;
* cine ``(C, T, H, W)``: one map per frame (and channel), the frames factorised as one batch;
* volume ``(C, H, W, D)``: the 3D random walk (``ultramae_monai.confmap.edge_offsets``).

An optional field-of-view mask restricts the graph to the scan region (0 outside). A CUDA tensor is mapped
on its GPU (:func:`ultramae_monai.confmap.batch_confidence_maps`, ``volume_confidence_map``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ultramae_monai.confmap.api import (
    ConfMapParams,
    batch_confidence_maps,
    confidence_map,
    solve_confidence_map,
    solve_confidence_maps,
)
from ultramae_monai.data.convention import KIND_CINE, KIND_VOLUME, MetaKeys, kind_of
from ultramae_monai.errors import InvalidInputError

__all__ = ["UltrasoundConfidenceMap", "UltrasoundConfidenceMapd"]


def _numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class UltrasoundConfidenceMap(Transform):
    """Confidence map of a channel-first ultrasound image, cine or volume (Karamalis et al. 2012).

    Args:
        alpha, beta, gamma, mode, sink_mode: as in MONAI's ``UltrasoundConfidenceMapTransform``.
        beam_axis: spatial axis along which the beam travels (0 = rows, the convention's depth axis);
            the transducer is at index 0 of that axis.
        backend: ``"auto"``, ``"multifrontal"``, ``"direct"`` or ``"slices"`` (see :mod:`ultramae_monai.confmap.api`);
            cine frames are solved as one batch.
        connectivity: graph neighbourhood (2D: 8; 3D: 6, 10 or 14), default MONAI's 8 / 10 in 3D.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 90.0,
        gamma: float = 0.05,
        mode: str = "B",
        sink_mode: str = "all",
        use_cg: bool = False,
        cg_tol: float = 1.0e-6,
        cg_maxiter: int = 200,
        beam_axis: int = 0,
        backend: str = "auto",
        connectivity: int | None = None,
    ) -> None:
        self.params = ConfMapParams(alpha, beta, gamma, mode, sink_mode, backend, connectivity=connectivity)
        self.beam_axis = beam_axis

    def _one(self, img: np.ndarray, sink: np.ndarray | None, fov: np.ndarray | None) -> np.ndarray:
        ax = self.beam_axis

        def mv(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.moveaxis(a, ax, 0)

        out, _ = solve_confidence_map(np.moveaxis(img, ax, 0), self.params, mv(sink), mv(fov))
        return np.moveaxis(out, 0, ax)

    def _on_gpu(self, img: torch.Tensor, kind: str, fov: np.ndarray | None) -> torch.Tensor:
        """Maps of a CUDA tensor computed on its device (every channel; a cine's frames as one batch)."""
        p = self.params
        fov_t = None if fov is None else torch.as_tensor(fov, device=img.device)
        out = torch.zeros(img.shape, dtype=torch.float32, device=img.device)
        for c in range(img.shape[0]):
            if kind == KIND_CINE:
                frames = torch.movedim(img[c].double(), 1 + self.beam_axis % 2, 1)
                f = None if fov_t is None else torch.movedim(fov_t, self.beam_axis % 2, 0)
                maps = batch_confidence_maps(frames, f, p, on_device=True)
                out[c] = torch.movedim(maps, 1, 1 + self.beam_axis % 2)
            else:
                out[c] = confidence_map(
                    img[c], alpha=p.alpha, beta=p.beta, gamma=p.gamma, mode=p.mode, sink_mode=p.sink_mode,
                    fov_mask=fov_t, beam_axis=self.beam_axis, backend=p.backend, connectivity=p.connectivity,
                )  # fmt: skip
        return out

    def _frames(self, frames: np.ndarray, sink: np.ndarray | None, fov: np.ndarray | None) -> np.ndarray:
        """Maps of ``(T, H, W)`` frames with the beam along ``beam_axis`` of each frame."""
        ax = 1 + self.beam_axis % 2

        def mv(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.moveaxis(a, self.beam_axis, 0)

        out = solve_confidence_maps(np.moveaxis(frames, ax, 1), self.params, mv(sink), mv(fov))
        return np.moveaxis(out, 1, ax)

    def __call__(
        self,
        img: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray | None = None,
        fov_mask: torch.Tensor | np.ndarray | None = None,
    ) -> MetaTensor:
        """``mask``: sink mask (``sink_mode="mask"``), ``(1, *spatial)``; ``fov_mask``: scan region, same shape.

        Without ``fov_mask``, a MetaTensor's ``meta["fov_mask"]`` (stored by ``ScanRegion``) is used, so the
        two transforms compose without glue.
        """
        if fov_mask is None and isinstance(img, MetaTensor):
            fov_mask = img.meta.get(MetaKeys.FOV_MASK)
        kind = kind_of(img)
        shape = tuple(img.shape)
        if self.params.sink_mode == "mask" and mask is None:
            raise InvalidInputError("sink_mode='mask' needs a sink mask")
        spatial = shape[2:] if kind == KIND_CINE else shape[1:]
        if (kind == KIND_VOLUME and len(shape) != 4) or (kind != KIND_VOLUME and len(spatial) != 2):
            raise InvalidInputError(f"a {kind} must be channel-first with 2 spatial dims (3 for volumes), got {shape}")
        if not -len(spatial) <= self.beam_axis < len(spatial):
            raise InvalidInputError(f"beam_axis {self.beam_axis} out of range for spatial shape {spatial}")
        sink, fov = _numpy(mask), _numpy(fov_mask)
        for name, m in (("mask", sink), ("fov_mask", fov)):
            if m is not None and tuple(m.shape[-len(spatial) :]) != tuple(spatial):
                raise InvalidInputError(f"{name} has shape {m.shape}, expected (1, {', '.join(map(str, spatial))})")
        sink = None if sink is None else sink.reshape(spatial)
        fov = None if fov is None else fov.reshape(spatial).astype(bool)
        if isinstance(img, torch.Tensor) and img.is_cuda and self.params.sink_mode != "mask":
            result = self._on_gpu(torch.as_tensor(img), kind, fov)
        else:
            arr = _numpy(img).astype(np.float64)
            out = np.zeros(arr.shape, dtype=np.float32)
            for c in range(arr.shape[0]):
                if kind == KIND_CINE:  # all frames at once: one batched factorisation
                    out[c] = self._frames(arr[c], sink, fov)
                else:
                    out[c] = self._one(arr[c], sink, fov)
            result = torch.from_numpy(out)
        if isinstance(img, MetaTensor):
            return MetaTensor(result, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        if isinstance(img, torch.Tensor):
            return MetaTensor(result.to(img.device))
        return MetaTensor(result)


class UltrasoundConfidenceMapd(MapTransform):
    """Dictionary version of :class:`UltrasoundConfidenceMap`.

    The map replaces ``key`` (or is written to ``f"{key}{output_postfix}"`` when ``output_postfix`` is set);
    the FOV mask is read from ``f"{key}_fov_mask"`` (stored by the scan-region transform) when present,
    and the sink mask from ``sink_mask_key`` when given.
    """

    def __init__(
        self,
        keys: KeysCollection,
        alpha: float = 2.0,
        beta: float = 90.0,
        gamma: float = 0.05,
        mode: str = "B",
        sink_mode: str = "all",
        sink_mask_key: str | None = None,
        output_postfix: str | None = None,
        beam_axis: int = 0,
        backend: str = "auto",
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = UltrasoundConfidenceMap(
            alpha, beta, gamma, mode, sink_mode, beam_axis=beam_axis, backend=backend, connectivity=connectivity
        )
        self.sink_mask_key = sink_mask_key
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            fov = d.get(f"{key}_{MetaKeys.FOV_MASK}")
            sink = d.get(self.sink_mask_key) if self.sink_mask_key else None
            out = self.transform(d[key], mask=sink, fov_mask=fov)
            d[f"{key}{self.output_postfix}" if self.output_postfix else key] = out
        return d
