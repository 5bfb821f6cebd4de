"""Build a small pretraining manifest from the shared real data (HC18 + BUSI stills, POCUS clips).

A stop-gap for ``docs/results.md`` and ``bench_pretrain_throughput.py`` while ``ultramae curate`` cannot yet
read this tree; it writes the same manifest format (``ultramae_monai.data.manifest``): uint8 ``.npy``
arrays, long side reduced to ``--max_side``, POCUS videos cut into non-overlapping 16-frame clips at ~10 fps
plus stills spread over each video, and a 10 % validation split grouped by exam (HC18 ``NNN``) or file.
No confidence maps or FOV masks (the run uses a pixel target). Nothing here leaves the output folder.

    python scripts/prepare_pretrain_data.py /work/shared/data /tmp/ultramae_real --max_side 128
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ultramae_monai.data.manifest import ManifestRecord, write_manifest
from ultramae_monai.data.video_reader import probe_video, read_video
from ultramae_monai.errors import UltraMAEError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif"}


def _shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W) uint8 with the long side reduced to ``max_side`` (box filter = area mean)."""
    h, w = frame.shape
    s = max_side / max(h, w)
    if s >= 1:
        return frame
    return np.asarray(Image.fromarray(frame).resize((max(round(w * s), 1), max(round(h * s), 1)), Image.BOX))


def _split(group: str, val_fraction: float) -> str:
    return "val" if int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 2**32 < val_fraction else "train"


def _record(
    out: Path, name: str, arr: np.ndarray, kind: str, group: str, source_type: str, val: float
) -> ManifestRecord:
    np.save(out / "arrays" / f"{name}.npy", arr)
    gid = hashlib.sha256(group.encode()).hexdigest()[:16]
    return ManifestRecord(
        id=name, path=f"arrays/{name}.npy", kind=kind, shape=list(arr.shape), split=_split(group, val),
        source_type=source_type, patient=gid, study=gid, source=gid,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--max_side", type=int, default=128)
    ap.add_argument("--clip_length", type=int, default=16)
    ap.add_argument("--clips_per_video", type=int, default=4)
    ap.add_argument("--stills_per_video", type=int, default=8)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--val_fraction", type=float, default=0.1)
    args = ap.parse_args()
    (args.out / "arrays").mkdir(parents=True, exist_ok=True)
    t0, records, failed = time.perf_counter(), [], 0

    images = [
        (p, "hc18:" + re.match(r"(\d+)", p.stem).group(1)) for p in sorted((args.data / "hc18/images").glob("*.png"))
    ]
    images += [(p, f"busi:{p.name}") for p in sorted((args.data / "busi").rglob("*.png")) if "_mask" not in p.name]
    for i, (p, group) in enumerate(images):
        grey = np.asarray(Image.open(p).convert("L"))
        records.append(
            _record(
                args.out, f"img{i:05d}", _shrink(grey, args.max_side)[None], "still", group, "image", args.val_fraction
            )
        )

    videos = sorted(p for p in (args.data / "pocus/pocus_videos").rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    for i, p in enumerate(videos):
        try:
            info = probe_video(p)
            stride = max(round(info["fps"] / args.fps), 1) if np.isfinite(info["fps"]) else 1
            n = min(info["frames"] // stride, args.clip_length * args.clips_per_video)
            cine = read_video(p, stride=stride, clip_length=max(n, 1)).numpy()[0]
        except UltraMAEError as err:
            failed += 1
            print(f"skip {p.name}: {err.cause}")
            continue
        frames = np.stack([_shrink(f.round().clip(0, 255).astype(np.uint8), args.max_side) for f in cine])
        group = f"pocus:{p.name}"
        for c in range(len(frames) // args.clip_length):
            clip = frames[c * args.clip_length : (c + 1) * args.clip_length][None]
            records.append(_record(args.out, f"vid{i:04d}_clip{c}", clip, "cine", group, "video", args.val_fraction))
        for j, t in enumerate(
            np.linspace(0, len(frames) - 1, min(args.stills_per_video, len(frames))).round().astype(int)
        ):
            records.append(
                _record(args.out, f"vid{i:04d}_still{j}", frames[t][None], "still", group, "video", args.val_fraction)
            )

    write_manifest(records, args.out / "manifest.jsonl")
    kinds = {k: sum(r.kind == k for r in records) for k in ("still", "cine")}
    val = sum(r.split == "val" for r in records)
    print(f"{len(records)} records ({kinds}), {val} val, {failed} videos skipped, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
