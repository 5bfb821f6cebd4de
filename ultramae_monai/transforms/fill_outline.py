"""Fill outline annotations into region masks inside a pipeline (HC18 draws each skull as a 1-pixel ellipse).

:class:`FillOutlined` fills a label only when it looks like an outline (filling at least doubles its
foreground), so filled masks pass through unchanged; ``always=True`` fills every label. The preparation script
``bundles/ultramae_segmentation/scripts/fill_outlines.py`` writes the same masks to disk.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ultramae_monai.data.outline_masks import fill_outline

__all__ = ["FillOutlined"]


class FillOutlined(MapTransform):
    """Dictionary transform: ``(1, H, W)`` outline labels -> filled 0/1 masks (see the module docstring)."""

    def __init__(
        self, keys: KeysCollection, always: bool = False, min_gain: float = 2.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.always = always
        self.min_gain = min_gain

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            arr = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
            edge = arr.reshape(arr.shape[-2:]) > 0
            if not edge.any():
                continue
            filled = fill_outline(edge)
            if self.always or filled.sum() >= self.min_gain * edge.sum():
                out = torch.as_tensor(filled[None].astype(np.float32))
                d[key] = MetaTensor(out, meta=dict(label.meta)) if isinstance(label, MetaTensor) else out
        return d
