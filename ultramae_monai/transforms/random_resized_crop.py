"""Random-resized crop of stills and clips, as MAE's ``RandomResizedCrop`` (He et al., CVPR 2022), one box per item.

A random area fraction ``scale`` and aspect ratio ``ratio`` of the image is cropped, then resized to
``spatial_size`` squared (bilinear with antialiasing; ``nearest`` for masks). Every key of an item gets the same
box, so an image, its confidence map and its FOV mask stay aligned. Inputs are channel-first ``(C, H, W)`` stills or
``(C, T, H, W)`` clips (the last two axes are cropped), as tensors or NumPy arrays, memory maps included: the box is
sliced *before* anything is read, so only the window is paged in from a cached ``.npy`` (what keeps a GPU fed from
a few workers). ``scale=(1, 1), ratio=None`` takes the whole image (evaluation).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import ensure_tuple_rep

from ultramae_monai.data.crop_window import crop_resize, random_resized_box

__all__ = ["RandResizedCrop", "RandResizedCropd", "random_resized_box"]


class RandResizedCrop(Randomizable, Transform):
    """Random-resized crop of one channel-first still or clip to ``spatial_size`` squared.

    Args:
        spatial_size: output side (or ``(H, W)``).
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height); None keeps the image's.
        mode: ``bilinear`` (antialiased) or ``nearest`` (masks: the output is bool).
    """

    def __init__(
        self,
        spatial_size: int | Sequence[int],
        scale: Sequence[float] = (0.4, 1.0),
        ratio: Sequence[float] | None = (3 / 4, 4 / 3),
        mode: str = "bilinear",
    ) -> None:
        self.spatial_size = tuple(ensure_tuple_rep(spatial_size, 2))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = None if ratio is None else (float(ratio[0]), float(ratio[1]))
        self.mode = mode
        self.box: tuple[int, int, int, int] | None = None

    def randomize(self, data: Any) -> None:
        height, width = data.shape[-2:]
        self.box = random_resized_box(int(height), int(width), self.R, self.scale, self.ratio)

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        if randomize or self.box is None:
            self.randomize(img)
        return crop_resize(img, self.box, self.spatial_size, self.mode)


class RandResizedCropd(Randomizable, MapTransform):
    """Dictionary form of :class:`RandResizedCrop`: one box for all ``keys`` (image, confidence map, FOV mask).

    Args:
        keys: keys to crop; the first present one sets the image size.
        spatial_size, scale, ratio: see :class:`RandResizedCrop`.
        mode: one mode, or one per key (``bilinear`` for images and maps, ``nearest`` for masks).
        allow_missing_keys: skip absent keys (an item without a confidence map).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int],
        scale: Sequence[float] = (0.4, 1.0),
        ratio: Sequence[float] | None = (3 / 4, 4 / 3),
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = RandResizedCrop(spatial_size, scale, ratio)
        self.mode = ensure_tuple_rep(mode, len(self.keys))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, data: Any) -> None:
        self.cropper.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next((d[k] for k in self.key_iterator(d)), None)
        if first is None:
            return d
        self.randomize(first)
        for key, mode in self.key_iterator(d, self.mode):
            self.cropper.mode = mode
            d[key] = self.cropper(d[key], randomize=False)
        return d
