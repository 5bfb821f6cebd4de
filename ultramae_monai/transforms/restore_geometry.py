"""Put a network-sized prediction back onto the input image's pixel grid (undo scan-region crop and resize).

Inference preprocessing crops a still to its scan region (:class:`~ultramae_monai.transforms.ScanRegiond`, which
records ``meta["fov_box"]``) and resizes it to the network's size; the reader recorded the file's shape in
``meta["original_shape"]``. :class:`RestoreGeometryd` resizes the prediction to the box and pads it into the
original frame, so a mask overlays the file it came from pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ultramae_monai.data.convention import MetaKeys

__all__ = ["RestoreGeometryd", "restore_geometry"]


def _frame_size(meta: Mapping[str, Any], pred: torch.Tensor) -> tuple[int, int]:
    shape = meta.get(MetaKeys.ORIGINAL_SHAPE)
    return (int(shape[-2]), int(shape[-1])) if shape is not None else tuple(pred.shape[-2:])


def restore_geometry(pred: torch.Tensor, meta: Mapping[str, Any], mode: str = "nearest") -> torch.Tensor:
    """``(K, h, w)`` prediction -> ``(K, H, W)`` on the original still's grid; zeros outside the scan region.

    A cine's ``(K, T, h, w)`` is restored frame by frame to ``(K, T, H, W)``; a volume ``(K, h, w, d)`` is resized back to the file's ``(H, W, D)``.
    """
    shape = meta.get(MetaKeys.ORIGINAL_SHAPE)
    if pred.ndim == 4 and meta.get(MetaKeys.KIND) == "cine":  # (K, T, h, w): each frame like a still
        k, t = pred.shape[:2]
        return restore_geometry(pred.reshape(k * t, *pred.shape[-2:]), meta, mode).reshape(
            k, t, *_frame_size(meta, pred)
        )
    if pred.ndim == 4:
        size = tuple(int(v) for v in shape[-3:]) if shape is not None else tuple(pred.shape[1:])
        x = torch.as_tensor(pred).float()[None]
        kwargs = {"align_corners": False} if mode in ("bilinear", "trilinear") else {}
        return F.interpolate(x, size=size, mode="trilinear" if mode == "bilinear" else mode, **kwargs)[0]
    height, width = (int(shape[-2]), int(shape[-1])) if shape is not None else tuple(pred.shape[-2:])
    box = meta.get(MetaKeys.FOV_BOX) or [0, 0, height, width]
    r0, c0, r1, c1 = (int(v) for v in box)
    x = torch.as_tensor(pred).float()[None]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    inside = F.interpolate(x, size=(r1 - r0, c1 - c0), mode=mode, **kwargs)[0]
    out = torch.zeros((pred.shape[0], height, width), dtype=inside.dtype)
    out[:, r0:r1, c0:c1] = inside
    return out


class RestoreGeometryd(MapTransform):
    """Dictionary transform: ``d[key]`` back onto the geometry recorded in ``d[ref_key].meta``.

    Args:
        keys: predictions ``(K, h, w)`` (discrete labels: keep ``mode="nearest"``).
        ref_key: the preprocessed image whose metadata holds ``original_shape`` and ``fov_box``.
        mode: interpolation (``nearest`` for labels, ``bilinear`` for probabilities).
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "image", mode: str = "nearest", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        meta = dict(ref.meta) if isinstance(ref, MetaTensor) else dict(d.get(f"{self.ref_key}_meta_dict", {}))
        for key in self.key_iterator(d):
            restored = restore_geometry(d[key], meta, self.mode)
            out_meta = {k: v for k, v in meta.items() if k not in (MetaKeys.FOV_MASK,)}
            out_meta["spatial_shape"] = list(restored.shape[1:])
            d[key] = MetaTensor(restored, meta=out_meta)
        return d
