"""The pretraining dataset: curated arrays of a manifest, read through memory maps, cropped and resized.

The crop is chosen *before* reading, so only the window is paged in from the ``.npy`` memory map
(a 16-frame crop out of a long cached clip reads 16 frames, a 60 % crop reads 60 % of the pixels):
this is what lets a couple of worker processes keep a GPU fed. Augmentation randomness comes from
the per-sample seed given by :class:`~ultramae_monai.data.batch_sampler.KindBatchSampler`, never from
worker state, so a resumed run sees exactly the crops an uninterrupted run would have seen.

The crop follows MAE's ``RandomResizedCrop`` (He et al. 2022): a random area fraction ``scale`` and
aspect ratio ``ratio`` of the (FOV-cropped) image, resized to ``img_size`` squared.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL
from ultramae_monai.data.frame_selection import frame_indices
from ultramae_monai.data.manifest import ManifestRecord, read_manifest
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["ManifestDataset", "random_resized_box"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as the readers (docs/conventions.md)


def random_resized_box(
    height: int,
    width: int,
    rng: np.random.Generator | None,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(row0, col0, rows, cols)`` of a random crop; the whole image when ``rng`` is None (evaluation)."""
    if rng is None:
        return 0, 0, height, width
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width  # fall back to the whole image, as torchvision does


class ManifestDataset(torch.utils.data.Dataset):
    """Stills and clips of a curated manifest as ``{"image", "fov_mask", "kind"[, "confidence", "seed"]}`` dicts.

    Items are indexed by ``(index, aug_seed)`` (what :class:`KindBatchSampler` yields) or by a plain
    ``index`` (no augmentation: whole image, first clip). Images come out float32 in ``[0, 1]``,
    ``(C, S, S)`` for stills and ``(C, T, S, S)`` for clips, ``S = img_size``, ``T = num_frames``.

    Args:
        manifest: the manifest file, or None for ``dataset_dir/manifest.jsonl``.
        dataset_dir: folder the manifest's relative paths start from (default: the manifest's folder).
        split: ``"train"``, ``"val"`` or None for all records.
        img_size: output side in pixels.
        num_frames: frames per clip.
        frame_stride: take every ``frame_stride``-th cached frame of a clip. Curation already samples clips at
            its ``fps``, so 1 reads them at that rate; a cached clip shorter than
            ``(num_frames - 1) * frame_stride + 1`` frames is an error naming the record (never padded with
            repeated frames, which would teach frozen motion).
        in_channels: 1 (RGB arrays are converted to BT.601 luma) or 3 (grey arrays are repeated).
        scale, ratio: random-resized-crop area fraction and aspect ratio range.
        load_confidence: also return the cached confidence map (needed by confidence-weighted targets);
            a record without one is an error.
        transform: optional MONAI dictionary transform (e.g. ``RandFlipd``) applied to each item; random
            transforms are seeded from the item's augmentation seed.
        kinds: which record kinds to use; volumes are left out of 2D/clip pretraining.
        allow_empty: accept a split with no records (an optional validation set); otherwise that is an error.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | None = None,
        dataset_dir: str | os.PathLike | None = None,
        split: str | None = "train",
        img_size: int = 224,
        num_frames: int = 16,
        frame_stride: int = 1,
        in_channels: int = 1,
        scale: Sequence[float] = (0.4, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        load_confidence: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        kinds: Sequence[str] = (KIND_STILL, KIND_CINE),
        allow_empty: bool = False,
    ) -> None:
        if manifest is None and dataset_dir is None:
            raise ValueError("give a manifest file or a dataset_dir holding manifest.jsonl")
        self.manifest = Path(manifest) if manifest is not None else Path(dataset_dir) / MANIFEST_NAME  # type: ignore[arg-type]
        self.root = Path(dataset_dir) if dataset_dir is not None else self.manifest.parent
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.img_size = int(img_size)
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.in_channels = in_channels
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.load_confidence = load_confidence
        self.transform = transform
        if not self.manifest.is_file():
            raise UnreadableFileError(f"manifest not found: {self.manifest}")
        everything = read_manifest(self.manifest)
        records = [r for r in everything if split is None or r.split == split]
        self.records: list[ManifestRecord] = [r for r in records if r.kind in kinds]
        skipped = len(records) - len(self.records)
        if skipped:
            logger.info("%s: left out %d records whose kind is not in %s", self.manifest, skipped, list(kinds))
        if not self.records and not allow_empty:
            raise InvalidInputError(self._empty_split(everything, split, kinds))
        self._check_clip_lengths()
        if load_confidence:
            missing = [r.path for r in self.records if not r.confidence]
            if missing:
                raise InvalidInputError(
                    f"{len(missing)} records have no cached confidence map (first: {missing[0]}); "
                    "curate with confidence maps or choose a target that needs none",
                    self.manifest,
                )

    @staticmethod
    def _empty_split(records: list[ManifestRecord], split: str | None, kinds: Sequence[str]) -> str:
        usable = [r for r in records if r.kind in kinds]
        what = " or ".join(kinds)
        if not usable:
            return f"no {what} records in the manifest ({len(records)} records of other kinds)"
        elsewhere = sorted({str(r.split) for r in usable})
        return (
            f"no {what} records in split {split!r} ({len(usable)} records, all in {' / '.join(map(repr, elsewhere))}): "
            "lower val_fraction or add patients"
        )

    @property
    def clip_span(self) -> int:
        """Cached frames one clip reads: ``(num_frames - 1) * frame_stride + 1``."""
        return (self.num_frames - 1) * self.frame_stride + 1

    def _check_clip_lengths(self) -> None:
        """Refuse, before training, a stride that a cached clip cannot serve (from the manifest's shapes)."""
        for r in self.records:
            if r.kind == KIND_CINE and r.shape and len(r.shape) == 4 and r.shape[1] < self.clip_span:
                raise InvalidInputError(self._short_clip(r, r.shape[1]), self.root / r.path)

    def _short_clip(self, rec: ManifestRecord, frames: int) -> str:
        return (
            f"record {rec.id!r} caches {frames} frames, fewer than the {self.clip_span} that num_frames "
            f"{self.num_frames} x frame_stride {self.frame_stride} read: lower frame_stride (curation already "
            "sets the clip frame rate) or re-curate with a longer clip_length"
        )

    @property
    def kinds(self) -> list[str]:
        """Kind of every item, for :class:`KindBatchSampler`."""
        return [r.kind for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _open(self, rel: str, ndim: int) -> np.ndarray:
        path = self.root / rel
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise UnreadableFileError(f"cannot read cached array ({err})", path) from err
        if arr.ndim != ndim:
            raise InvalidInputError(f"expected {ndim} dims, got shape {arr.shape}", path)
        return arr

    def _window(self, arr: np.ndarray, frames: np.ndarray | None, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Read the crop (and frames) from the memory map as float32 ``(N, C, h, w)``, N = frames or 1."""
        r0, c0, h, w = box
        if frames is None:
            win = np.asarray(arr[:, r0 : r0 + h, c0 : c0 + w])[None]
        else:
            win = np.asarray(arr[:, frames, r0 : r0 + h, c0 : c0 + w]).transpose(1, 0, 2, 3)
        return torch.from_numpy(win.astype(np.float32, copy=False))

    def _resize(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        size = (self.img_size, self.img_size)
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _channels(self, x: torch.Tensor, path: str) -> torch.Tensor:
        c = x.shape[1]
        if c == self.in_channels:
            return x
        if c == 3 and self.in_channels == 1:
            w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
            return (x * w).sum(1, keepdim=True)
        if c == 1 and self.in_channels == 3:
            return x.expand(-1, 3, -1, -1)
        raise InvalidInputError(f"cannot turn {c} channels into {self.in_channels}", self.root / path)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (key, None) if isinstance(key, int) else (int(key[0]), int(key[1]))
        rec = self.records[index]
        rng = None if seed is None else np.random.default_rng(seed)
        is_clip = rec.kind == KIND_CINE
        img = self._open(rec.path, 4 if is_clip else 3)
        height, width = img.shape[-2:]
        frames = None
        if is_clip:
            n = img.shape[1]
            if n < self.clip_span:
                raise InvalidInputError(self._short_clip(rec, n), self.root / rec.path)
            start = int(rng.integers(0, n - self.clip_span + 1)) if rng is not None else 0
            frames = frame_indices(n, start=start, stride=self.frame_stride, clip_length=self.num_frames)
        box = random_resized_box(height, width, rng, self.scale, self.ratio)

        image = self._resize(self._channels(self._window(img, frames, box), rec.path), "bilinear")
        image = image.div_(255.0) if img.dtype == np.uint8 else image
        out: dict[str, Any] = {"kind": rec.kind}
        if seed is not None:
            out["seed"] = seed  # the sample's own randomness (e.g. its mask), whatever batch or rank it lands in
        out["image"] = image.transpose(0, 1).contiguous() if is_clip else image[0]
        if rec.fov_mask:
            fov = self._resize(self._window(self._open(rec.fov_mask, 3), None, box), "nearest")[0] > 0
        else:
            fov = torch.ones(1, self.img_size, self.img_size, dtype=torch.bool)  # no mask: the whole image
        out["fov_mask"] = fov
        if self.load_confidence:
            conf = self._open(str(rec.confidence), img.ndim)
            c = self._resize(self._window(conf, frames, box)[:, :1], "bilinear").expand(-1, self.in_channels, -1, -1)
            out["confidence"] = c.transpose(0, 1).contiguous() if is_clip else c[0]
        if self.transform is not None:
            if seed is not None and isinstance(self.transform, Randomizable):
                self.transform.set_random_state(seed=seed)
            out = self.transform(out)
            out = {k: v.as_tensor() if hasattr(v, "as_tensor") else v for k, v in out.items()}
        return out
