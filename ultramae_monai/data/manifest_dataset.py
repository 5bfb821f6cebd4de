"""The pretraining dataset: curated arrays of a manifest, as memory maps, for the bundle's transforms to crop.

Items hold *lazy* arrays: the memory-mapped still, the clip's frames as a strided view, the FOV mask and the
confidence map. The transforms declared in the bundle config (``RandResizedCropd``, then ``RandFlipd`` ...) slice
their window before anything is read, so only the crop is paged in from the ``.npy`` (a 16-frame clip out of a
long cached one reads 16 frames, a 60 % crop 60 % of the pixels): this is what lets a couple of worker processes
keep a GPU fed. Randomness comes from the per-sample seed given by
:class:`~ultramae_monai.data.batch_sampler.KindBatchSampler` (it seeds the clip's first frame and the transforms),
never from worker state, so a resumed run sees exactly the crops an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL
from ultramae_monai.data.crop_window import crop_resize
from ultramae_monai.data.manifest import ManifestRecord, read_manifest
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["ManifestDataset"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as the readers (docs/conventions.md)


class ManifestDataset(torch.utils.data.Dataset):
    """Stills and clips of a curated manifest as ``{"image", "fov_mask", "kind"[, "confidence", "seed"]}`` dicts.

    Items are indexed by ``(index, aug_seed)`` (what :class:`KindBatchSampler` yields) or by a plain
    ``index`` (the first clip; transforms keep their own random state). Before ``transform``, ``image`` is the
    cached array as stored (curation writes uint8), ``(C, H, W)`` for stills and ``(C, T, H, W)`` for clips with
    ``T = num_frames``, ``fov_mask`` ``(1, H, W)`` and ``confidence`` like ``image``: lazy views of memory maps,
    which the transforms crop (``RandResizedCropd``) before reading. After it, NumPy and MetaTensor values come
    out as plain tensors.

    Args:
        manifest: the manifest file, or None for ``dataset_dir/manifest.jsonl``.
        dataset_dir: folder the manifest's relative paths start from (default: the manifest's folder).
        split: ``"train"``, ``"val"`` or None for all records.
        num_frames: frames per clip.
        frame_stride: take every ``frame_stride``-th cached frame of a clip. Curation already samples clips at
            its ``fps``, so 1 reads them at that rate; a cached clip shorter than
            ``(num_frames - 1) * frame_stride + 1`` frames is an error naming the record (never padded with
            repeated frames, which would teach frozen motion).
        in_channels: 1 (RGB arrays are converted to BT.601 luma) or 3 (grey arrays are repeated).
        load_confidence: also return the cached confidence map (needed by confidence-weighted targets);
            a record without one is an error.
        transform: MONAI dictionary transforms applied to each item (the bundle's crop, scaling, flip and
            normalisation); random transforms are seeded from the item's augmentation seed.
        img_size: for evaluation without a crop transform: resize every item whole to this side and scale uint8
            images to ``[0, 1]`` before ``transform`` (what the bundle's ``validate#preprocessing`` does).
        kinds: which record kinds to use; volumes are left out of 2D/clip pretraining.
        allow_empty: accept a split with no records (an optional validation set); otherwise that is an error.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | None = None,
        dataset_dir: str | os.PathLike | None = None,
        split: str | None = "train",
        num_frames: int = 16,
        frame_stride: int = 1,
        in_channels: int = 1,
        load_confidence: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        kinds: Sequence[str] = (KIND_STILL, KIND_CINE),
        allow_empty: bool = False,
        img_size: int | None = None,
    ) -> None:
        if manifest is None and dataset_dir is None:
            raise ValueError("give a manifest file or a dataset_dir holding manifest.jsonl")
        self.manifest = Path(manifest) if manifest is not None else Path(dataset_dir) / MANIFEST_NAME  # type: ignore[arg-type]
        self.root = Path(dataset_dir) if dataset_dir is not None else self.manifest.parent
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.in_channels = in_channels
        self.load_confidence = load_confidence
        self.transform = transform
        self.img_size = None if img_size is None else (int(img_size), int(img_size))
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

    def _channels(self, x: np.ndarray, path: str) -> np.ndarray:
        """Convert channels without reading: grey repeated to RGB is a broadcast view; RGB to grey (BT.601) reads."""
        c = x.shape[0]
        if c == self.in_channels:
            return x
        if c == 3 and self.in_channels == 1:
            w = np.asarray(_LUMA, dtype=np.float32).reshape((3,) + (1,) * (x.ndim - 1))
            return (np.asarray(x, dtype=np.float32) * w).sum(0, keepdims=True)
        if c == 1 and self.in_channels == 3:
            return np.broadcast_to(x, (3, *x.shape[1:]))
        raise InvalidInputError(f"cannot turn {c} channels into {self.in_channels}", self.root / path)

    def _whole(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item resized whole to ``img_size``, uint8 images scaled to [0, 1] (evaluation without a crop)."""
        height, width = item["image"].shape[-2:]
        box = (0, 0, int(height), int(width))
        out = dict(item)
        for key, mode in (("image", "bilinear"), ("confidence", "bilinear"), ("fov_mask", "nearest")):
            if key in item:
                out[key] = crop_resize(item[key], box, self.img_size, mode)
        if item["image"].dtype == np.uint8:
            out["image"] = out["image"] / 255.0
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (key, None) if isinstance(key, int) else (int(key[0]), int(key[1]))
        rec = self.records[index]
        is_clip = rec.kind == KIND_CINE
        img = self._open(rec.path, 4 if is_clip else 3)
        frames: slice | None = None
        if is_clip:
            n = img.shape[1]
            if n < self.clip_span:
                raise InvalidInputError(self._short_clip(rec, n), self.root / rec.path)
            start = int(np.random.default_rng(seed).integers(0, n - self.clip_span + 1)) if seed is not None else 0
            frames = slice(start, start + self.clip_span, self.frame_stride)  # a view: nothing read yet
        out: dict[str, Any] = {"kind": rec.kind}
        if seed is not None:
            out["seed"] = seed  # the sample's own randomness (e.g. its mask), whatever batch or rank it lands in
        out["image"] = self._channels(img[:, frames] if is_clip else img, rec.path)
        height, width = img.shape[-2:]
        if rec.fov_mask:
            out["fov_mask"] = self._open(rec.fov_mask, 3)
        else:  # no mask: the whole image
            out["fov_mask"] = np.broadcast_to(np.True_, (1, height, width))
        if self.load_confidence:
            conf = self._open(str(rec.confidence), img.ndim)[:1]
            conf = conf[:, frames] if is_clip else conf
            out["confidence"] = np.broadcast_to(conf, (self.in_channels, *conf.shape[1:]))
        if self.img_size is not None:
            out = self._whole(out)
        if self.transform is not None:
            if seed is not None and isinstance(self.transform, Randomizable):
                self.transform.set_random_state(seed=seed)
            out = self.transform(out)
        return {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else _plain(v) for k, v in out.items()}


def _plain(v: Any) -> Any:
    """MetaTensor -> tensor (cheap collation); anything else unchanged."""
    return v.as_tensor() if hasattr(v, "as_tensor") else v
