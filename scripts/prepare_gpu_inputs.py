"""Make the inputs of ``benchmarks/gpu_session.sh`` in ``.gpu/`` from ``../shared/data`` (run on a CPU machine).

Usage: ``python scripts/prepare_gpu_inputs.py [--out .gpu] [--volume-reference]``

* ``us224.npy``: 64 real grey images (HC18 and BUSI, 32 each) resized to 224 x 224, float32 in [0, 255];
* ``us224_cpu_maps.npy``: their confidence maps from the CPU solver (the error reference of the GPU maps);
* ``us256_pool.npz``: 400 real stills at 256 x 256, uint8, from which the end-to-end benchmark synthesizes a set;
* ``Case3_US-before.nii.gz``: the RESECT volume (CC BY 4.0, Xiao et al. 2017), copied;
* with ``--volume-reference``: ``resect_case3_map_sub4.npy``, its CPU map at every 4th voxel (40 minutes on
  2 cores);
* ``before/``: the package at ``--before`` (default ``897a9f5``, the device solver before the two-block
  fronts), unpacked from git, for ``bench_confmap_before_after.py --before-tree`` on the GPU machine.

The folder is git-ignored (list it in ``.git/info/exclude``) and travels to the GPU machine with ``carry``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _grey(path: Path, size: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((size, size), Image.BILINEAR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    ap.add_argument("--volume-reference", action="store_true", help="also compute the 3D CPU reference (slow)")
    ap.add_argument("--before", default="897a9f5", help="git revision unpacked into OUT/before")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"error: {DATA} not found: the inputs are made from ../shared/data")
    from ultramae_monai.confmap.api import confidence_map

    args.out.mkdir(parents=True, exist_ok=True)
    hc = sorted((DATA / "hc18" / "images").glob("*_HC.png"))
    busi = sorted((DATA / "busi").glob("*/*).png"))
    picks = hc[:: max(1, len(hc) // 32)][:32] + busi[:: max(1, len(busi) // 32)][:32]
    images = np.stack([_grey(p, 224) for p in picks]).astype(np.float32)
    np.save(args.out / "us224.npy", images)
    np.save(args.out / "us224_cpu_maps.npy", np.stack([confidence_map(im) for im in images]))
    pool = sorted(hc + busi)[:: max(1, (len(hc) + len(busi)) // 400)][:400]
    np.savez(args.out / "us256_pool.npz", images=np.stack([_grey(p, 256) for p in pool]))
    volume = DATA / "resect_3dus" / "Case3_US-before.nii.gz"
    shutil.copy(volume, args.out / volume.name)
    if args.volume_reference:
        import nibabel as nib

        vol = np.asarray(nib.load(str(volume)).dataobj, dtype=np.float32)
        np.save(args.out / "resect_case3_map_sub4.npy", confidence_map(vol)[::4, ::4, ::4])
    archive = subprocess.run(["git", "archive", args.before, "ultramae_monai"], capture_output=True, check=True)
    shutil.rmtree(args.out / "before", ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(args.out / "before", filter="data")
    print(f"wrote {sorted(p.name for p in args.out.iterdir())} to {args.out}")


if __name__ == "__main__":
    main()
