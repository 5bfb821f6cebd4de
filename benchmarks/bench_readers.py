"""Decoding speed of the ultrasound readers, side by side with MONAI's ``PydicomReader`` on the same file.

Files: the 120-frame JPEG-baseline YBR_FULL_422 cine ``color3d_jpeg_baseline.dcm`` (pydicom-data) and a POCUS mp4
(``../shared/data/pocus``). Every method runs once per round, rounds interleave the methods (so a busy neighbour
on the shared CPU slows all of them alike), and the table reports the median over rounds and ratios to MONAI.

    .venv/bin/python benchmarks/bench_readers.py --rounds 5 --write-docs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.data import PydicomReader
from monai.transforms import LoadImage
from pydicom.data import get_testdata_file

from ultramae_monai.data.dicom_reader import read_dicom
from ultramae_monai.data.video_reader import probe_video, read_video

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
BLOCK = ("<!-- readers:dicom -->", "<!-- /readers:dicom -->")
SECTION_END = "<!-- /section: readers -->"
NOTE = (
    "Full decodes run at parity with MONAI (both spend the time in pydicom + pylibjpeg's JPEG decoder; the ratio"
    " moves by about +-15% between runs on the shared CPU). The clip row is the point of the reader: it decompresses"
    " 16 of the 120 frames, where `PydicomReader` must decode all of them to return any."
)


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def _pocus_mp4() -> Path | None:
    root = REPO.parent / "shared" / "data" / "pocus"
    mp4s = sorted(root.rglob("*.mp4"), key=lambda p: p.stat().st_size) if root.is_dir() else []
    return mp4s[len(mp4s) // 2] if mp4s else None  # a typical (median-size) clip


def _time(fn: Callable[[], torch.Tensor]) -> tuple[float, tuple[int, ...]]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, tuple(out.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()

    dcm = get_testdata_file("color3d_jpeg_baseline.dcm")
    if dcm is None:
        raise SystemExit("color3d_jpeg_baseline.dcm not found: pip install pydicom-data")
    monai_load = LoadImage(reader=PydicomReader(), image_only=True)
    cases: dict[str, tuple[str, int, Callable[[], torch.Tensor]]] = {
        # name: (file label, frames decoded, call)
        "MONAI LoadImage(PydicomReader), all 120 frames": ("dicom", 120, lambda: monai_load(dcm)),
        "ultramae read_dicom, all 120 frames, RGB": ("dicom", 120, lambda: read_dicom(dcm, color=True)),
        "ultramae read_dicom, all 120 frames, grey": ("dicom", 120, lambda: read_dicom(dcm)),
        "ultramae read_dicom, 16-frame clip (start 50), grey": (
            "dicom",
            16,
            lambda: read_dicom(dcm, start=50, clip_length=16),
        ),
    }
    mp4 = _pocus_mp4()
    if mp4 is not None:
        middle = int(probe_video(mp4)["frames"]) // 2
        cases["ultramae read_video, all frames, grey"] = ("mp4", -1, lambda: read_video(mp4))
        cases["ultramae read_video, 16-frame clip (middle), grey"] = (
            "mp4",
            16,
            lambda: read_video(mp4, start=middle, clip_length=16),
        )

    for _, _, fn in cases.values():  # warm-up: imports, plugin discovery, page cache
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(args.rounds):
        for name, (_, _, fn) in cases.items():
            dt, shapes[name] = _time(fn)
            times[name].append(dt)

    base = statistics.median(times["MONAI LoadImage(PydicomReader), all 120 frames"])
    rows = []
    for name, (label, frames, _) in cases.items():
        med = statistics.median(times[name])
        n = frames if frames > 0 else shapes[name][1]
        ratio = f"{base / med:.2f}x" if label == "dicom" else "n/a"
        rows.append(f"| {label} | {name} | {shapes[name]} | {med * 1000:.0f} | {n / med:.1f} | {ratio} |")
    mp4_name = mp4.name if mp4 is not None else "(no POCUS mp4 found)"
    text = "\n".join(
        [
            BLOCK[0],
            "### DICOM and POCUS mp4 decoding (`benchmarks/bench_readers.py`)",
            "",
            f"Machine: {_cpu()}, 2 cores, torch {torch.__version__}; CPU shared with other jobs during the run,"
            " so read the ratios rather than the absolute times. "
            f"Median of {args.rounds} interleaved rounds after one warm-up. "
            f"Files: `color3d_jpeg_baseline.dcm` (120 frames, 480 x 640, JPEG baseline YBR_FULL_422) and POCUS "
            f"`{mp4_name}`. Shapes are what each call returns: MONAI's `PydicomReader` gives a multi-frame US as "
            "(rows, frames, cols, RGB)-ordered axes, ultramae gives `(C, T, H, W)`.",
            "",
            "| file | method | output shape | median ms | frames/s | speed vs MONAI |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            NOTE,
            BLOCK[1],
        ]
    )
    print(text)
    if args.write_docs:
        doc = DOCS.read_text()
        if BLOCK[0] in doc:
            head, rest = doc.split(BLOCK[0], 1)
            doc = head + text + rest.split(BLOCK[1], 1)[1]
        else:
            doc = doc.replace(SECTION_END, text + "\n" + SECTION_END, 1)
        DOCS.write_text(doc)


if __name__ == "__main__":
    main()
