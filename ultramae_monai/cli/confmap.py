"""``ultramae confmap SRC OUT``: confidence maps (Karamalis et al. 2012) of a file or a folder of files.

Any input the project reads (DICOM, video, PNG/JPEG, NIfTI/NRRD/MHA) becomes a float32 map written by
OUT's suffix: ``.npy`` (the channel-first array), ``.nii.gz`` (spatial axes, cine frames last, with the
input's affine) or ``.png`` (stills only, 8-bit ``round(255 * map)``). A folder SRC maps every supported
file to ``OUT/<name><fmt>``; cines and folders show a progress bar, a 3D volume its solver's progress
(every 10th CG iteration) on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ultramae_monai.cli.arguments import UsageError, add_option, check_output_file, check_output_folder
from ultramae_monai.errors import InvalidInputError

if TYPE_CHECKING:
    from monai.data import MetaTensor

    from ultramae_monai.transforms.confidence_map import UltrasoundConfidenceMap

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "confmap", "run", "write_map"]

NAME = "confmap"
SUMMARY = "Ultrasound confidence map (Karamalis et al. 2012) of a file or a folder, to .npy, .nii.gz or .png."
EXAMPLE = "ultramae confmap scan.png scan_conf.npy --alpha 2 --beta 90 --gamma 0.05"
OUT_SUFFIXES = (".npy", ".nii.gz", ".png")
BACKENDS = ("auto", "multifrontal", "direct", "slices")  # as ultramae_monai.confmap.api.BACKENDS
SINK_MODES = ("all", "mid", "min")  # ultramae_monai.confmap.seeds.SINK_MODES but "mask" (needs a mask array)


def _out_suffix(path: Path) -> str:
    name = path.name.lower()
    for s in OUT_SUFFIXES:
        if name.endswith(s):
            return s
    raise InvalidInputError(f"output suffix must be one of {OUT_SUFFIXES}", path)


def write_map(cmap: MetaTensor, out: str | PathLike) -> Path:
    """Write a channel-first float32 map by OUT's suffix (see the module docstring)."""
    import nibabel as nib
    from monai.data import MetaTensor
    from PIL import Image

    from ultramae_monai.data.convention import KIND_CINE, MetaKeys

    out = Path(out)
    suffix = _out_suffix(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(cmap.detach().cpu().numpy(), dtype=np.float32)
    kind = cmap.meta.get(MetaKeys.KIND) if isinstance(cmap, MetaTensor) else None
    if suffix == ".npy":
        np.save(out, arr)
    elif suffix == ".nii.gz":
        data = np.moveaxis(arr, 1, -1) if kind == KIND_CINE else arr  # (C, H, W, T)
        data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
        affine = np.eye(4)
        if isinstance(cmap, MetaTensor) and kind != KIND_CINE:
            aff = np.asarray(cmap.affine, dtype=np.float64)
            affine[: aff.shape[0] - 1, : aff.shape[1] - 1] = aff[:-1, :-1]
            affine[: aff.shape[0] - 1, 3] = aff[:-1, -1]
        nib.save(nib.Nifti1Image(data, affine), str(out))
    else:
        if arr.ndim != 3 or arr.shape[0] != 1:
            raise InvalidInputError(f"PNG output holds one grey still, the map has shape {arr.shape}; use .npy", out)
        Image.fromarray(np.round(np.clip(arr[0], 0, 1) * 255).astype(np.uint8)).save(out)
    return out


@contextmanager
def _solver_progress() -> Iterator[None]:
    """Show the confidence-map solvers' INFO lines (a 3D volume's CG progress: minutes at full size) on
    stderr while the CLI runs, unless the caller has configured logging for them already."""
    log = logging.getLogger("ultramae_monai.confmap")
    if log.handlers or log.level != logging.NOTSET or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ultramae confmap: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)


def _map_file(src: Path, transform: UltrasoundConfidenceMap, show_frames: bool) -> MetaTensor:
    from monai.data import MetaTensor
    from tqdm import tqdm

    from ultramae_monai.data.convention import KIND_CINE, MetaKeys
    from ultramae_monai.data.load import load_ultrasound

    img = load_ultrasound(src)
    if img.meta.get(MetaKeys.KIND) == KIND_CINE and show_frames:
        frames = []
        for t in tqdm(range(img.shape[1]), desc=src.name, unit="frame"):
            frames.append(transform(img[:, t].as_tensor()).as_tensor())
        out = MetaTensor(np.stack([f.numpy() for f in frames], axis=1), meta=dict(img.meta))
        return out
    try:
        return transform(img)
    except InvalidInputError as err:
        raise InvalidInputError(err.cause, src) from err


def confmap(
    src: str | PathLike,
    out: str | PathLike,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    sink_mode: str = "all",
    mode: str = "B",
    backend: str = "auto",
    fmt: str = ".npy",
) -> list[str]:
    """Confidence map of SRC (file or folder) to OUT (file, or folder with ``fmt`` suffix); returns written paths."""
    from tqdm import tqdm

    from ultramae_monai.data.load import SUPPORTED_SUFFIXES
    from ultramae_monai.transforms.confidence_map import UltrasoundConfidenceMap

    src, out = Path(src), Path(out)
    transform = UltrasoundConfidenceMap(alpha, beta, gamma, mode, sink_mode, backend=backend)
    if not src.exists():
        raise InvalidInputError("no such file or folder", src)
    if src.is_file():
        with _solver_progress():
            return [str(write_map(_map_file(src, transform, True), out))]
    files = sorted(
        p for p in src.rglob("*") if p.is_file() and p.name.lower().endswith(tuple("." + x for x in SUPPORTED_SUFFIXES))
    )
    if not files:
        raise InvalidInputError(f"no supported ultrasound files ({', '.join(SUPPORTED_SUFFIXES)})", src)
    written = []
    for f in tqdm(files, desc="confmap", unit="file"):
        target = out / f.relative_to(src).parent / (f.name.split(".")[0] + fmt)
        written.append(str(write_map(_map_file(f, transform, False), target)))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a supported file, or a folder (every supported file under it)")
    parser.add_argument(
        "out",
        metavar="OUT",
        help="for a file SRC: OUT.npy, OUT.nii.gz or OUT.png (its folder must exist); for a folder SRC: a folder "
        "(created, its parent must exist) receiving OUT/<name><fmt>",
    )
    add_option(parser, "alpha", float, 2.0, "attenuation coefficient")
    add_option(parser, "beta", float, 90.0, "edge-weight sensitivity to intensity differences")
    add_option(parser, "gamma", float, 0.05, "penalty on horizontal edges")
    add_option(parser, "sink_mode", str, "all", "where the bottom sinks are", choices=SINK_MODES)
    add_option(parser, "mode", str, "B", "B-mode image or RF data", choices=("B", "RF"))
    add_option(parser, "backend", str, "auto", "linear solver", choices=BACKENDS)
    add_option(parser, "fmt", str, ".npy", "output suffix of each map when SRC is a folder", choices=OUT_SUFFIXES)


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise UsageError("no such file or folder", src)
    if src.is_dir():
        check_output_folder(out)
    else:
        check_output_file(out, OUT_SUFFIXES)
    written = confmap(src, out, args.alpha, args.beta, args.gamma, args.sink_mode, args.mode, args.backend, args.fmt)
    print(f"wrote {len(written)} map(s)" + (f": {written[0]}" if len(written) == 1 else f" under {out}"))
    return 0
