"""Drop metadata entries that cannot be batched, such as the scan-region mask whose size differs per image."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ultramae_monai.data.convention import MetaKeys

__all__ = ["DropMetad"]


class DropMetad(MapTransform):
    """Remove ``meta_keys`` (default: the FOV mask :class:`ScanRegiond` stores) from each key's ``MetaTensor``.

    ``ScanRegiond`` keeps the cropped ``(1, h, w)`` FOV mask in ``meta["fov_mask"]``; its size differs from one
    image to the next, so a ``DataLoader`` cannot collate it. The box (``meta["fov_box"]``) stays.
    """

    def __init__(
        self, keys: KeysCollection, meta_keys: Sequence[str] = (MetaKeys.FOV_MASK,), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_keys = tuple(meta_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                for mk in self.meta_keys:
                    d[key].meta.pop(mk, None)
        return d
