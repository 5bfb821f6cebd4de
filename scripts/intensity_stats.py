"""Mean and standard deviation of the intensities (in [0, 1]) of a curated set: the bundles' normalisation.

Usage: ``python scripts/intensity_stats.py CURATED_DIR`` (a folder holding ``manifest.jsonl``). Every pixel of
every still and clip frame counts once, as the pretraining batches see them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ultramae_monai.data.manifest import read_manifest


def intensity_stats(root: Path) -> tuple[float, float, int]:
    """``(mean, std, records)`` over the manifest's stills and clips; uint8 arrays are scaled by 1/255."""
    total = total_sq = count = 0.0
    records = [r for r in read_manifest(root / "manifest.jsonl") if r.kind in ("still", "cine")]
    for rec in records:
        arr = np.load(root / rec.path, mmap_mode="r")
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        a = np.asarray(arr, dtype=np.float64) / scale
        total += a.sum()
        total_sq += np.square(a).sum()
        count += a.size
    mean = total / count
    return mean, float(np.sqrt(total_sq / count - mean * mean)), len(records)


if __name__ == "__main__":
    m, s, n = intensity_stats(Path(sys.argv[1]))
    print(f"{n} records: intensity_mean {m:.3f} intensity_std {s:.3f}")
