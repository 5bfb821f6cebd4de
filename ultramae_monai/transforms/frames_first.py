"""Give a 2D network the frames of a multi-frame NIfTI/NRRD/MHA: ``(C, H, W, T)`` -> the cine layout ``(C, T, H, W)``.

The volume reader returns every such file as ``(C, H, W, D)``. A 2D segmentation network sees each slice along the
last axis as a frame, as it sees the frames of a DICOM cine, so the array is moved into the cine layout and marked
``us_kind = "cine"``; ``meta["original_shape"]`` follows, so the prediction is restored frame by frame, and
``meta["us_frames_axis"] = "last"`` tells :class:`~ultramae_monai.data.SaveMaskd` to write the mask in the file's
own ``(H, W, T)`` order. Stills and cines pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.data import MetaTensor
from monai.transforms import MapTransform

from ultramae_monai.data.convention import KIND_CINE, KIND_VOLUME, LAYOUTS, MetaKeys

__all__ = ["FramesFirstd"]


class FramesFirstd(MapTransform):
    """Dictionary transform: a volume ``(C, H, W, T)`` becomes the frames ``(C, T, H, W)`` of a cine."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or img.meta.get(MetaKeys.KIND) != KIND_VOLUME:
                continue
            meta = dict(img.meta)
            frames = img.as_tensor().permute(0, 3, 1, 2).contiguous()
            meta[MetaKeys.KIND], meta[MetaKeys.LAYOUT] = KIND_CINE, LAYOUTS[KIND_CINE]
            meta[MetaKeys.ORIGINAL_SHAPE] = list(frames.shape)
            meta[MetaKeys.NUM_FRAMES] = int(frames.shape[1])
            meta[MetaKeys.SPACING] = list(meta.get(MetaKeys.SPACING, [1.0, 1.0, 1.0]))[:2]
            meta[MetaKeys.FRAMES_AXIS] = "last"
            d[key] = MetaTensor(frames, meta=meta)
        return d
