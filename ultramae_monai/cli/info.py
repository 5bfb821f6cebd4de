"""``ultramae info FILE``: what an ultrasound file is, in a few lines.

Why a verb of its own: before curating ten thousand files a user wants to see, for one of them, what the readers
make of it (kind, frames, spacing, colour, where the scan region is) without writing code.
"""

from __future__ import annotations

import argparse
import math
from os import PathLike
from typing import TYPE_CHECKING, Any

from ultramae_monai.cli.arguments import add_option

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "FileInfo", "add_arguments", "info", "run"]

NAME = "info"
SUMMARY = "What a file is: kind, modality, frames, size, spacing, photometric, fps, scan-region box."
EXAMPLE = "ultramae info scan.dcm --allow_any_modality"

_FOV_FRAMES = 16  # frames of a cine read for the FOV (the detector uses what varies over them)


class FileInfo(dict):
    """The summary as a dict; ``str()`` is the compact text ``ultramae info`` prints."""

    def __str__(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return "unknown" if math.isnan(v) else f"{v:.4g}"
            if isinstance(v, (list, tuple)):
                return " x ".join(fmt(x) for x in v) if v else "none"
            return "unknown" if v is None else str(v)

        def line(key: str, v: Any) -> str:
            if key == "fov_box" and v is not None:
                return f"rows {v[0]}-{v[2]}, cols {v[1]}-{v[3]}"
            return fmt(v)

        width = max(len(k) for k in self)
        return "\n".join(f"{k:<{width}}  {line(k, v)}" for k, v in self.items())


def _fov_box(x: MetaTensor) -> tuple[list[int] | None, str | None]:
    """The scan region's ``[r0, c0, r1, c1)`` (None when the FOV detector is not available), and why the image
    has no detectable scan region (None when it has one)."""
    import numpy as np

    try:
        from ultramae_monai.transforms.fov_detect import scan_region_problem
        from ultramae_monai.transforms.scan_region import detect_fov_mask, fov_box, regions_from_meta
    except ImportError:
        return None, None
    mask = np.asarray(detect_fov_mask(x.as_tensor(), regions=regions_from_meta(x.meta)))
    return [int(v) for v in fov_box(mask)], scan_region_problem(x.as_tensor(), mask)


def info(path: str | PathLike, **kwargs: Any) -> FileInfo:
    """Read ``path`` (any supported format) and summarise it.

    Returns a :class:`FileInfo` with ``file``, ``kind``, ``source_type``, ``modality``, ``frames`` (in the
    file), ``size`` (``[H, W]`` or ``[H, W, D]``), ``spacing_mm``, ``photometric``, ``fps`` and ``fov_box``
    (``[r0, c0, r1, c1)``, None when unknown or for volumes), and ``warning`` when the image has no detectable
    scan region (noise, a photograph, a blank frame). Extra keyword arguments go to
    :func:`~ultramae_monai.data.load.load_ultrasound` (e.g. ``allow_any_modality=True``).
    """
    from ultramae_monai.data.convention import KIND_VOLUME, MetaKeys
    from ultramae_monai.data.load import load_ultrasound

    kwargs.setdefault("max_frames", _FOV_FRAMES)
    x = load_ultrasound(path, **kwargs)
    m = x.meta
    kind = str(m[MetaKeys.KIND])
    spatial = list(x.shape[1:]) if kind == KIND_VOLUME else list(x.shape[-2:])
    box, problem = (None, None) if kind == KIND_VOLUME else _fov_box(x)
    result = FileInfo(
        file=str(path),
        kind=kind,
        source_type=m.get(MetaKeys.SOURCE),
        modality=m.get(MetaKeys.MODALITY),
        frames=int(m.get(MetaKeys.SOURCE_FRAMES, 1)),
        size=[int(s) for s in spatial],
        spacing_mm=[float(s) for s in m.get(MetaKeys.SPACING, [])],
        photometric=m.get(MetaKeys.PHOTOMETRIC),
        fps=float(m.get(MetaKeys.FPS, float("nan"))),
        fov_box=box,
    )
    if problem is not None:
        result["warning"] = problem
    for extra in ("transfer_syntax", "orientation"):
        if extra in m:
            result[extra] = m[extra]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="any supported file (DICOM, video, PNG/JPEG, NIfTI/NRRD/MHA)")
    add_option(parser, "allow_any_modality", bool, False, "read DICOM objects whose modality is not US")
    add_option(parser, "color", bool, False, "keep RGB instead of converting to grey")


def run(args: argparse.Namespace) -> int:
    import sys

    summary = info(args.path, allow_any_modality=args.allow_any_modality, color=args.color)
    print(summary)
    if "warning" in summary:
        print(f"ultramae info: warning: {args.path}: {summary['warning']}", file=sys.stderr)
    return 0
