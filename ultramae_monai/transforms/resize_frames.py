"""Resize the in-plane axes of a still ``(C, H, W)`` or of every frame of a cine ``(C, T, H, W)``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["ResizeFramesd"]


class ResizeFramesd(MapTransform):
    """Dictionary transform: the last two axes to ``spatial_size``, the frame axis of a cine kept as it is.

    Args:
        keys: images ``(C, H, W)`` or cines ``(C, T, H, W)``.
        spatial_size: ``(h, w)``.
        mode: ``bilinear`` (images) or ``nearest`` (labels), one per key or one for all.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.modes):
            img = d[key]
            x = torch.as_tensor(img).float()
            frames = x.reshape(-1, 1, *x.shape[-2:])  # every (channel, frame) plane resized alike
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            out = F.interpolate(frames, size=self.spatial_size, mode=mode, **kwargs).reshape(
                *x.shape[:-2], *self.spatial_size
            )
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            meta["spatial_shape"] = list(out.shape[1:])
            d[key] = MetaTensor(out, meta=meta) if isinstance(img, MetaTensor) else out
        return d
