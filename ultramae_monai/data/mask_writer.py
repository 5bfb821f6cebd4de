"""Write predicted masks next to nothing but the output folder: the mask in the input's format, plus an overlay.

PNG/JPEG/BMP/TIFF input gives a PNG mask (label ``k`` stored as ``k * (255 // (K - 1))`` so a binary mask is
0/255 and viewable); DICOM input gives a NIfTI mask carrying the pixel spacing; a volume (NIfTI, NRRD, MHA)
gives a NIfTI mask with the file's affine, and the overlay shows its middle slice. Every
input also gets ``<name>_overlay.png``: the grey image with the foreground tinted red. Names keep the input's
stem (spaces and parentheses included).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image

from ultramae_monai.data.convention import MetaKeys, spatial_affine

__all__ = ["SaveMaskd", "overlay_rgb", "write_mask"]

_PNG_INPUT = ("image",)
_OVERLAY_RGB = np.array([255, 40, 40], dtype=np.float32)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nrrd", ".mha"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def overlay_rgb(grey: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``(H, W)`` grey image (any range) and ``(H, W)`` labels -> ``(H, W, 3)`` uint8 with the foreground red."""
    g = grey.astype(np.float32)
    lo, hi = float(g.min()), float(g.max())
    g = (g - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(g)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    fg = mask > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * _OVERLAY_RGB
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _nifti_affine(meta: Mapping[str, Any]) -> np.ndarray:
    """4x4 affine of a still or cine plane: the pixel spacing in-plane, unit steps along the third (frame) axis."""
    spacing = [float(s) for s in meta.get(MetaKeys.SPACING, [1.0, 1.0])][-2:]
    affine = spatial_affine(tuple(spacing)).numpy()
    aff3 = np.eye(4)
    aff3[:2, :2], aff3[:2, 3] = affine[:2, :2], affine[:2, 2]
    return aff3


def _write_cine(
    labels: np.ndarray,
    src: Path,
    out: Path,
    stem: str,
    num_classes: int,
    meta: Mapping[str, Any],
    image: np.ndarray | None,
) -> dict[str, Any]:
    """``(T, H, W)`` labels of a cine: one NIfTI ``(H, W, T)`` (DICOM / NIfTI input) or one PNG per frame (video),
    and one overlay PNG per frame (``<stem>_overlay_t0000.png``)."""
    written: dict[str, Any] = {}
    if str(meta.get(MetaKeys.SOURCE)) in ("dicom", "volume"):
        import nibabel as nib

        path = out / f"{stem}_mask.nii.gz"
        affine = meta["affine"] if meta.get(MetaKeys.FRAMES_AXIS) == "last" else _nifti_affine(meta)  # file's own
        nib.save(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(1, 2, 0)), np.asarray(affine)), str(path))
        written["mask"] = str(path)
    else:
        scale = 255 // max(num_classes - 1, 1)
        frames = [out / f"{stem}_mask_t{t:04d}.png" for t in range(labels.shape[0])]
        for t, path in enumerate(frames):
            Image.fromarray((labels[t] * scale).astype(np.uint8)).save(path)
        written["mask"] = [str(p) for p in frames]
    if image is not None:
        grey = np.asarray(image, dtype=np.float32)
        grey = grey.reshape(-1, *grey.shape[-3:]).mean(axis=0)  # (T, H, W), colour channels averaged
        overlays = []
        for t in range(min(len(grey), labels.shape[0])):
            ov = out / f"{stem}_overlay_t{t:04d}.png"
            Image.fromarray(overlay_rgb(grey[t], labels[t])).save(ov)
            overlays.append(str(ov))
        written["overlay"] = overlays
    return written


def write_mask(
    mask: np.ndarray | torch.Tensor,
    source: str | Path,
    output_dir: str | Path,
    num_classes: int = 2,
    meta: Mapping[str, Any] | None = None,
    image: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``(H, W)`` labels (or a cine's ``(1, T, H, W)``) for the input file ``source``; returns the paths written.

    ``mask`` and ``overlay`` name one file, or for a cine a list of per-frame files where there are several.
    """
    src = Path(source)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.uint8)
    meta = dict(meta or {})
    stem = _stem(src)
    written: dict[str, Any] = {}
    if meta.get(MetaKeys.KIND) == "cine" and labels.ndim == 4:
        return _write_cine(labels[0], src, out, stem, num_classes, meta, image)
    if labels.ndim == 4 or meta.get(MetaKeys.KIND) == "volume":  # (1, H, W, D): a NIfTI in the file's space
        import nibabel as nib

        labels = labels.reshape(labels.shape[-3:])
        affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
        path = out / f"{stem}_mask.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), str(path))
        written["mask"] = str(path)
        if image is not None:
            mid = labels.shape[-1] // 2
            grey = np.asarray(image, dtype=np.float32).reshape(-1, *labels.shape)[0][..., mid]
            ov = out / f"{stem}_overlay.png"
            Image.fromarray(overlay_rgb(grey, labels[..., mid])).save(ov)
            written["overlay"] = str(ov)
        return written
    labels = labels.reshape(labels.shape[-2:])
    if str(meta.get(MetaKeys.SOURCE, "image")) in _PNG_INPUT:
        scale = 255 // max(num_classes - 1, 1)
        path = out / f"{stem}_mask.png"
        Image.fromarray((labels * scale).astype(np.uint8)).save(path)
    else:
        import nibabel as nib

        path = out / f"{stem}_mask.nii.gz"
        nib.save(nib.Nifti1Image(labels[..., None], _nifti_affine(meta)), str(path))
    written["mask"] = str(path)
    if image is not None:
        grey = np.asarray(image, dtype=np.float32)
        grey = grey.reshape(-1, *grey.shape[-2:]).mean(axis=0) if grey.ndim > 2 else grey
        if grey.shape == labels.shape:
            ov = out / f"{stem}_overlay.png"
            Image.fromarray(overlay_rgb(grey, labels)).save(ov)
            written["overlay"] = str(ov)
    return written


class SaveMaskd(MapTransform):
    """Dictionary transform writing ``d[key]`` (``(1, H, W)`` labels on the input's grid) with an overlay.

    The source file and its format come from ``d[ref_key].meta``; the overlay re-reads the source file's first
    frame, so it shows the image as stored, not as normalised for the network.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        ref_key: str = "image",
        num_classes: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.ref_key = ref_key
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from ultramae_monai.data.load import load_ultrasound

        d = dict(data)
        meta = dict(getattr(d[self.ref_key], "meta", {}))
        source = Path(str(meta.get("filename_or_obj", "prediction")))
        image = None
        if source.is_file():
            cine = meta.get(MetaKeys.KIND) == "cine"
            raw = load_ultrasound(source) if cine else load_ultrasound(source, max_frames=1)
            if raw.meta.get(MetaKeys.KIND) == "volume":  # write in the file's own space
                meta["affine"] = np.asarray(raw.meta["affine"], dtype=np.float64)
                meta[MetaKeys.KIND] = "cine" if cine else "volume"
            if cine and meta.get(MetaKeys.FRAMES_AXIS) == "last":  # (C, H, W, T) -> the frames segmented
                raw = raw.permute(0, 3, 1, 2)
            image = raw.numpy()
            image = image[:, 0] if image.ndim == 4 and raw.meta.get(MetaKeys.KIND) == "cine" and not cine else image
        for key in self.key_iterator(d):
            d[f"{key}_files"] = write_mask(d[key], source, self.output_dir, self.num_classes, meta, image)
        return d
