"""Video decoding speed: full decode vs a 16-frame clip at the end of a POCUS mp4, with and without seeking.

Run: ``.venv/bin/python benchmarks/bench_video.py [VIDEO]``; prints a markdown table for docs/benchmarks.md.
All variants run side by side in one process (best of ``--repeats``), so compare the ratios, not the absolute
numbers, on a shared machine. imageio / OpenCV rows appear only when those packages are installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from collections.abc import Callable
from pathlib import Path

import av
import torch

from ultramae_monai.data import probe_video, read_video

DEFAULT = (
    Path(__file__).resolve().parents[2] / "shared/data/pocus/pocus_videos/convex/Reg_Image_181602_trimmed_crop.mp4"
)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def pyav_decode_only(path: Path) -> int:
    """Lower bound: PyAV decoding every frame, no pixel conversion."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("video", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    info = probe_video(args.video)
    n = info["frames"]
    rows: list[tuple[str, int, float]] = [
        (
            "PyAV decode only (no conversion), all frames",
            n,
            best_of(lambda: pyav_decode_only(args.video), args.repeats),
        ),
        ("read_video, all frames (grey)", n, best_of(lambda: read_video(args.video), args.repeats)),
        (
            "read_video, last 16 frames, seek",
            16,
            best_of(lambda: read_video(args.video, start=-16, clip_length=16), args.repeats),
        ),
        (
            "read_video, last 16 frames, decode from start",
            16,
            best_of(lambda: read_video(args.video, start=-16, clip_length=16, seek=False), args.repeats),
        ),
        ("probe_video (packet count, no decode)", 0, best_of(lambda: probe_video(args.video), args.repeats)),
    ]
    if importlib.util.find_spec("imageio"):
        import imageio.v3 as iio

        rows.append(("imageio.v3.imread (all frames)", n, best_of(lambda: iio.imread(args.video), args.repeats)))
    if importlib.util.find_spec("cv2"):
        import cv2

        def cv2_all() -> int:
            cap = cv2.VideoCapture(str(args.video))
            k = 0
            while cap.read()[0]:
                k += 1
            return k

        rows.append(("OpenCV VideoCapture (all frames)", n, best_of(cv2_all, args.repeats)))
    ref = rows[1][2]
    print(
        f"file: {args.video.name} ({n} frames, {info['height']}x{info['width']}, {info['codec']}, {info['fps']:.2f} fps)"
    )
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, PyAV {av.__version__}")
    print("| variant | frames returned | time (s) | frames/s | time vs full read |")
    print("|---|---|---|---|---|")
    for name, frames, t in rows:
        fps = f"{frames / t:.0f}" if frames else "-"
        print(f"| {name} | {frames} | {t:.3f} | {fps} | {t / ref:.2f} |")
    seek, noseek = rows[2][2], rows[3][2]
    print(f"\nseek speed-up for the end clip: {noseek / seek:.1f}x; imageio installed: "
          f"{bool(importlib.util.find_spec('imageio'))}, cv2 installed: {bool(importlib.util.find_spec('cv2'))}")  # fmt: skip


if __name__ == "__main__":
    main()
