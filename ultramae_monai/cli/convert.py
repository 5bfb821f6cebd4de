"""``ultramae convert SRC OUT``: any supported ultrasound file to NIfTI or PNG frames.

Why: labelling tools, viewers and other pipelines take NIfTI or PNG; converting through the project's readers
gives them the same pixels (palette applied, YBR converted, MONOCHROME1 inverted, RAS volumes) and keeps the
physical spacing in the NIfTI affine.

NIfTI layout: a still is ``(H, W)``, a cine ``(H, W, T)`` (time on the third axis, unit spacing; the frame rate
goes into the header's ``descrip``), a volume ``(H, W, D)`` with its RAS affine; RGB adds a 5th axis of 3
components (NIfTI's vector convention). PNG: one file per frame (``frame_0000.png``, ...) or per slice of a
volume, 8-bit, or 16-bit grey when the values need it.
"""

from __future__ import annotations

import argparse
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ultramae_monai.cli.arguments import add_option, check_output_file, check_output_folder
from ultramae_monai.errors import InvalidInputError

if TYPE_CHECKING:
    from monai.data import MetaTensor
    from PIL import Image

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "convert", "run", "to_nifti", "to_png_frames"]

NAME = "convert"
SUMMARY = "Any supported input (DICOM, video, PNG/JPEG, NIfTI/NRRD/MHA) to NIfTI, or to PNG frames."
EXAMPLE = "ultramae convert cine.dcm cine.nii.gz --clip_length 16 --stride 2"
FILE_SUFFIXES = (".nii", ".nii.gz", ".png")


def _compact(a: np.ndarray) -> np.ndarray:
    """The smallest exact dtype: uint8/uint16 for integer data in range, float32 otherwise."""
    if a.size and np.all(a == np.round(a)) and a.min() >= 0:
        if a.max() <= 255:
            return a.astype(np.uint8)
        if a.max() <= 65535:
            return a.astype(np.uint16)
    return a.astype(np.float32)


def _nifti_affine(x: MetaTensor) -> np.ndarray:
    """4 x 4 voxel-to-world: the volume's own, or the 2D pixel spacing with unit spacing on the 3rd axis."""
    from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, MetaKeys

    aff = np.asarray(x.affine, dtype=np.float64)
    if x.meta[MetaKeys.KIND] == KIND_STILL:  # 3 x 3 (row, col)
        out = np.eye(4)
        out[:2, :2], out[:2, 3] = aff[:2, :2], aff[:2, 2]
        return out
    if x.meta[MetaKeys.KIND] == KIND_CINE:  # 4 x 4 (time, row, col): time goes last
        out = np.eye(4)
        out[:2, :2], out[:2, 3] = aff[1:3, 1:3], aff[1:3, 3]
        return out
    return aff


def to_nifti(x: MetaTensor, out: Path) -> list[Path]:
    """Write a still, cine or volume as one NIfTI file (layout in the module docstring)."""
    import nibabel as nib

    from ultramae_monai.data.convention import KIND_CINE, MetaKeys

    kind = x.meta[MetaKeys.KIND]
    a = x.numpy()
    if kind == KIND_CINE:
        a = np.moveaxis(a, 1, -1)  # (C, T, H, W) -> (C, H, W, T)
    a = np.moveaxis(a, 0, -1)  # channels last
    if a.shape[-1] == 1:
        a = a[..., 0]
    else:  # NIfTI vector image: components on the 5th axis
        a = a.reshape(a.shape[:-1] + (1,) * (5 - a.ndim) + (a.shape[-1],))
    img = nib.Nifti1Image(_compact(a), _nifti_affine(x))
    img.header.set_xyzt_units("mm", "msec")
    fps = x.meta.get(MetaKeys.FPS)
    img.header["descrip"] = f"ultramae {kind}" + (f" fps={fps:.3f}" if fps is not None and np.isfinite(fps) else "")
    if a.ndim == 5:
        img.header.set_intent("vector")
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return [out]


def _png_ready(frame: np.ndarray, path: Path) -> Image.Image:
    """A ``(C, H, W)`` frame as a Pillow image: 8-bit, or 16-bit for grey beyond 255 (RGB is scaled to 8-bit)."""
    from PIL import Image

    a = np.clip(np.round(frame), 0, 65535)
    if a.shape[0] == 3:
        if a.max() > 255:
            a = a / 257.0  # 16-bit RGB (e.g. 16-bit palette LUTs): PNG via Pillow is 8-bit RGB
        return Image.fromarray(np.moveaxis(np.round(a), 0, -1).astype(np.uint8), mode="RGB")
    if a.shape[0] != 1:
        raise InvalidInputError(f"cannot write {a.shape[0]} channels as PNG", path)
    if a.max() > 255:
        return Image.fromarray(a[0].astype(np.uint16))
    return Image.fromarray(a[0].astype(np.uint8), mode="L")


def to_png_frames(x: MetaTensor, out: Path) -> list[Path]:
    """PNG per frame (cine), per slice along D (volume) or one file (still); ``out`` is a folder or a .png path."""
    from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, MetaKeys

    kind = x.meta[MetaKeys.KIND]
    a = x.numpy()
    frames = [a] if kind == KIND_STILL else list(np.moveaxis(a, 1, 0) if kind == KIND_CINE else np.moveaxis(a, -1, 0))
    if out.suffix.lower() == ".png":
        folder = out.parent
        names = [out.name] if len(frames) == 1 else [f"{out.stem}_{i:04d}.png" for i in range(len(frames))]
    else:
        folder = out
        prefix = "slice" if kind not in (KIND_STILL, KIND_CINE) else "frame"
        names = [f"{prefix}_{i:04d}.png" for i in range(len(frames))]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for frame, name in zip(frames, names, strict=True):
        _png_ready(frame, folder / name).save(folder / name)
        written.append(folder / name)
    return written


def convert(src: str | PathLike, out: str | PathLike, **kwargs: Any) -> list[str]:
    """Convert ``src`` (any supported input) to ``out``: ``.nii``/``.nii.gz``, a ``.png`` path, or a folder of PNGs.

    Keyword arguments go to :func:`~ultramae_monai.data.load.load_ultrasound`: ``color``, ``start``, ``stride``,
    ``clip_length``, ``max_frames``, ``allow_any_modality``. Returns the written paths.
    """
    from ultramae_monai.data.load import load_ultrasound

    x = load_ultrasound(src, **kwargs)
    dst = Path(out)
    name = dst.name.lower()
    written = to_nifti(x, dst) if name.endswith((".nii", ".nii.gz")) else to_png_frames(x, dst)
    return [str(p) for p in written]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="any supported file")
    parser.add_argument(
        "out",
        metavar="OUT",
        help="OUT.nii / OUT.nii.gz, OUT.png (one file per frame: OUT_0000.png, ...), or a folder of PNG frames "
        "(created, its parent must exist)",
    )
    add_option(parser, "color", bool, False, "keep RGB instead of converting to grey")
    add_option(parser, "start", int, 0, "first frame of a cine")
    add_option(parser, "stride", int, 1, "take every stride-th frame")
    add_option(parser, "clip_length", int, None, "number of frames to convert (none: all)")
    add_option(parser, "max_frames", int, None, "at most this many frames spread over the cine (none: all)")
    add_option(parser, "allow_any_modality", bool, False, "read DICOM objects whose modality is not US")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix:
        check_output_file(out, FILE_SUFFIXES)
    else:
        check_output_folder(out)
    written = convert(
        args.src,
        out,
        color=args.color,
        start=args.start,
        stride=args.stride,
        clip_length=args.clip_length,
        max_frames=args.max_frames,
        allow_any_modality=args.allow_any_modality,
    )
    print("\n".join(written))
    return 0
