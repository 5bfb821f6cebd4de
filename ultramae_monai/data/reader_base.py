"""The MONAI ``ImageReader`` plumbing shared by the ultrasound readers.

Why a base class: each ultrasound reader is one ``read_*`` function returning a convention-following
``MetaTensor`` (``docs/conventions.md``); wrapping it for ``LoadImage``/``LoadImaged`` is the same every time
(options from the constructor, per-call overrides, several files stacked on the channel axis), so it lives here
once instead of in every reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, MetaTensor
from monai.utils import ensure_tuple

from ultramae_monai.data.convention import MetaKeys
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = [
    "LUMA_BT601",
    "DicomCapableReader",
    "FunctionImageReader",
    "channels_first",
    "existing_file",
    "suffix_of",
]

LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def existing_file(path: str | PathLike) -> Path:
    """``path`` as a Path, or UnreadableFileError when it is missing, not a file, or empty."""
    p = Path(path)
    if not p.exists():
        raise UnreadableFileError("no such file", p)
    if not p.is_file():
        raise UnreadableFileError("not a regular file (a folder?)", p)
    if p.stat().st_size == 0:
        raise UnreadableFileError("empty file (0 bytes)", p)
    return p


def suffix_of(path: str | PathLike) -> str:
    """Lower-case suffix without the dot; ``nii.gz`` counts as one suffix."""
    name = str(path).lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1] if "." in base else ""


def channels_first(pixels: np.ndarray, is_rgb: bool, color: bool) -> np.ndarray:
    """Grey ``(..., H, W)`` or RGB ``(..., H, W, 3)`` pixels to channel-first ``(C, ..., H, W)``.

    ``color=False`` gives one channel: grey input as is, RGB input as ITU-R BT.601 luma (float32), the
    convention's one grey. ``color=True`` gives three: RGB input as is, grey input repeated.
    """
    if is_rgb:
        if color:
            return np.moveaxis(pixels, -1, 0)
        return np.tensordot(pixels.astype(np.float32, copy=False), LUMA_BT601, axes=([-1], [0]))[None]
    return np.repeat(pixels[None], 3, axis=0) if color else pixels[None]


class FunctionImageReader(ImageReader):
    """An ``ImageReader`` around one ``read_fn(path, **options) -> MetaTensor``.

    Subclasses set ``suffixes`` (for ``LoadImage``'s automatic reader choice) and ``read_fn`` (a
    ``staticmethod`` of the module's ``read_*`` function); the constructor's keyword arguments are the reader's default options, ``read(..., **kwargs)`` overrides them.
    """

    suffixes: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def read_fn(self, path: str | PathLike, **options: Any) -> MetaTensor:
        raise NotImplementedError(f"{type(self).__name__} must define read_fn")

    def matches_content(self, path: str | PathLike) -> bool:
        """Whether the file is this reader's format by its bytes, whatever its suffix (none by default)."""
        return False

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(suffix_of(f) in self.suffixes or self.matches_content(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> MetaTensor | list[MetaTensor]:
        opts = {**self.options, **kwargs}
        images = [self.read_fn(p, **opts) for p in ensure_tuple(data)]
        return images[0] if len(images) == 1 else images

    def get_data(self, img: MetaTensor | list[MetaTensor]) -> tuple[np.ndarray, dict]:
        """The array (several files stacked on channels, as MONAI's readers do) and its metadata."""
        images = list(img) if isinstance(img, list) else [img]  # ensure_tuple would split a tensor
        shapes = {tuple(i.shape[1:]) for i in images}
        if len(shapes) > 1:
            names = [i.meta.get("filename_or_obj") for i in images]
            raise InvalidInputError(f"cannot stack files of different shapes {sorted(shapes)}: {names}")
        meta = dict(images[0].meta)
        meta["affine"] = images[0].affine.clone()
        meta["original_channel_dim"] = 0
        array = np.concatenate([i.numpy() for i in images], axis=0)
        meta[MetaKeys.ORIGINAL_SHAPE] = list(array.shape)
        return array, meta


class DicomCapableReader(FunctionImageReader):
    """A reader whose options are colour, frame selection and the DICOM modality check.

    Shared by the DICOM reader and the dispatching ``UltrasoundReader``, which take the same options.
    """

    def __init__(
        self,
        color: bool = False,
        start: int = 0,
        stride: int = 1,
        clip_length: int | None = None,
        max_frames: int | None = None,
        allow_any_modality: bool = False,
    ) -> None:
        super().__init__(
            color=color,
            start=start,
            stride=stride,
            clip_length=clip_length,
            max_frames=max_frames,
            allow_any_modality=allow_any_modality,
        )
