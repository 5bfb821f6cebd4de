"""Scan-region (field-of-view) transforms: blank everything outside the ultrasound image and crop to it.

Why: burned-in text, calipers, ECG traces, logos and the black border are not anatomy, and a masked
autoencoder happily learns to reconstruct them. The mask is kept (in ``meta`` and, for the dictionary
version, under ``<key>_fov_mask``) so masking, confidence maps and losses can ignore the outside too.
The detection itself lives in :mod:`ultramae_monai.transforms.fov_detect`.

DICOM prior: if the image's ``meta["us_regions"]`` holds the SequenceOfUltrasoundRegions as a list of
``[r0, c0, r1, c1)`` boxes (or dicts with a ``"box"`` entry, or the DICOM attributes
``RegionLocationMinX0/MinY0/MaxX1/MaxY1``), detection is restricted to them and falls back to them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialCrop, Transform

from ultramae_monai.data.convention import MetaKeys
from ultramae_monai.errors import InvalidInputError
from ultramae_monai.transforms.fov_detect import detect_fov_mask, fov_box

__all__ = ["REGIONS_META_KEY", "ScanRegion", "ScanRegiond", "apply_fov", "regions_from_meta"]

REGIONS_META_KEY = MetaKeys.US_REGIONS


def regions_from_meta(meta: Mapping[str, Any]) -> list[list[int]] | None:
    """``[r0, c0, r1, c1)`` boxes from ``meta["us_regions"]`` in any of the accepted spellings, else None."""
    regions = meta.get(REGIONS_META_KEY)
    if not regions:
        return None
    boxes = []
    for region in regions:
        if isinstance(region, Mapping) and "box" in region:
            region = region["box"]
        if isinstance(region, Mapping):
            x0, y0 = int(region["RegionLocationMinX0"]), int(region["RegionLocationMinY0"])
            x1, y1 = int(region["RegionLocationMaxX1"]), int(region["RegionLocationMaxY1"])
            region = [y0, x0, y1 + 1, x1 + 1]  # DICOM max corners are inclusive
        boxes.append([int(v) for v in region])
    return boxes


def _mask_2d(mask: np.ndarray | torch.Tensor, spatial: tuple[int, int]) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:]) if m.ndim == 3 and m.shape[0] == 1 else m
    if m.shape != spatial:
        raise InvalidInputError(f"FOV mask of shape {m.shape} does not match the image's (H, W) = {spatial}")
    return m.astype(bool)


def apply_fov(
    x: torch.Tensor | np.ndarray,
    mask: np.ndarray | torch.Tensor,
    blank: bool = True,
    crop: bool = True,
    margin: int = 0,
    fill_value: float = 0.0,
) -> MetaTensor:
    """Apply a known FOV mask to a still ``(C, H, W)`` or cine ``(C, T, H, W)`` (image, label, confidence map).

    Blanks outside the mask to ``fill_value`` and/or crops to the mask's box grown by ``margin`` (MONAI's
    ``SpatialCrop``, so the affine follows and the crop is invertible). The returned MetaTensor carries
    ``meta["fov_box"]`` (in the input's pixel coordinates) and the cropped ``(1, h, w)`` mask under
    ``meta["fov_mask"]``.
    """
    img = x if isinstance(x, MetaTensor) else MetaTensor(torch.as_tensor(x))
    if img.ndim not in (3, 4):
        raise InvalidInputError(f"expected (C, H, W) or (C, T, H, W), got shape {tuple(img.shape)}")
    h, w = img.shape[-2:]
    m = _mask_2d(mask, (h, w))
    box = fov_box(m)
    if crop and margin:
        box = [max(box[0] - margin, 0), max(box[1] - margin, 0), min(box[2] + margin, h), min(box[3] + margin, w)]
    out = img
    if blank:
        keep = torch.as_tensor(m, device=img.device)
        out = torch.where(keep, img, torch.as_tensor(fill_value, dtype=img.dtype, device=img.device))
    mask_t = MetaTensor(torch.as_tensor(m)[None], meta=dict(img.meta))
    if crop:
        lead = [0] * (img.ndim - 3)  # a cine's time axis is spatial to MONAI: keep all frames
        ends = list(img.shape[1:-2])
        crop_t = SpatialCrop(roi_start=[*lead, box[0], box[1]], roi_end=[*ends, box[2], box[3]])
        out = crop_t(out)
        mask_t = SpatialCrop(roi_start=box[:2], roi_end=box[2:])(mask_t)
    out.meta[MetaKeys.FOV_BOX] = box
    out.meta[MetaKeys.FOV_MASK] = mask_t.as_tensor().bool()
    return out


class ScanRegion(Transform):
    """Detect the ultrasound field of view, blank outside it and crop to it (array version).

    No single paper is implemented: masked-image pretraining on ultrasound needs the non-image content
    removed, and the detection (:func:`~ultramae_monai.transforms.fov_detect.detect_fov_mask`: texture,
    temporal variation, morphology, convex hull) is this project's own, described in ``docs/scan_region.md``.

    Args:
        blank: set pixels outside the FOV to ``fill_value``.
        crop: crop to the FOV bounding box (grown by ``margin`` pixels).
        margin: pixels added around the box before cropping.
        fill_value: value written outside the FOV.
        use_regions: use ``meta["us_regions"]`` (DICOM ultrasound regions) as a prior when present.
        detect_kwargs: passed to ``detect_fov_mask`` (thresholds, analysis size, frames used).
    """

    def __init__(
        self,
        blank: bool = True,
        crop: bool = True,
        margin: int = 0,
        fill_value: float = 0.0,
        use_regions: bool = True,
        **detect_kwargs: Any,
    ) -> None:
        self.blank, self.crop, self.margin, self.fill_value = blank, crop, margin, fill_value
        self.use_regions = use_regions
        self.detect_kwargs = detect_kwargs

    def detect(self, img: torch.Tensor | np.ndarray) -> np.ndarray:
        """The boolean ``(H, W)`` FOV mask of ``img``."""
        meta = img.meta if isinstance(img, MetaTensor) else {}
        regions = regions_from_meta(meta) if self.use_regions else None
        return detect_fov_mask(img, regions=regions, **self.detect_kwargs)

    def __call__(self, img: torch.Tensor | np.ndarray) -> MetaTensor:
        return apply_fov(img, self.detect(img), self.blank, self.crop, self.margin, self.fill_value)


class ScanRegiond(MapTransform):
    """Dictionary version of :class:`ScanRegion`; writes the (cropped) mask to ``data[f"{key}_{postfix}"]``.

    With ``source_key`` the mask is detected once on that image and applied to every key (labels,
    confidence maps), so all are blanked and cropped by the same box.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key_postfix: str = MetaKeys.FOV_MASK,
        blank: bool = True,
        crop: bool = True,
        margin: int = 0,
        fill_value: float = 0.0,
        source_key: Hashable | None = None,
        use_regions: bool = True,
        allow_missing_keys: bool = False,
        **detect_kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key_postfix = mask_key_postfix
        self.source_key = source_key
        self.region = ScanRegion(blank, crop, margin, fill_value, use_regions, **detect_kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shared = self.region.detect(d[self.source_key]) if self.source_key is not None else None
        for key in self.key_iterator(d):
            mask = shared if shared is not None else self.region.detect(d[key])
            r = self.region
            d[key] = apply_fov(d[key], mask, r.blank, r.crop, r.margin, r.fill_value)
            d[f"{key}_{self.mask_key_postfix}"] = d[key].meta[MetaKeys.FOV_MASK]
        return d
