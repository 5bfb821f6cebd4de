"""3D confidence maps on RESECT volumes: slice-preconditioned CG (``volume_solver``) vs SuperLU.

Times weights + assembly, slice factorisation and CG separately, with iterations, peak memory (RSS) and,
where SuperLU in nested-dissection order is feasible (small sizes), the max abs difference to it.

    .venv/bin/python benchmarks/bench_confmap_volume.py --sizes 64x64x72 128x128x144 256x256x288
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import zoom

from ultramae_monai.confmap.direct import solve_direct
from ultramae_monai.confmap.graph import attenuation, edge_weights, normalize
from ultramae_monai.confmap.seeds import make_seeds
from ultramae_monai.confmap.system import assemble_csr
from ultramae_monai.confmap.volume_solver import (
    _pcg,
    _preconditioner,
    factor_slices,
    from_slice_major,
    slice_matvec,
    slice_system,
    to_slice_major,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "resect_3dus"
DIRECT_MAX_NODES = 80**3  # SuperLU's dense 3D separator fronts grow as n^(4/3): beyond this, minutes and GBs


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run(case: str, size: tuple[int, int, int], args: argparse.Namespace) -> None:
    vol = np.asarray(nib.load(DATA / f"{case}_US-before.nii.gz").dataobj, dtype=np.float64)
    if vol.shape != size:
        vol = zoom(vol, [s / v for s, v in zip(size, vol.shape, strict=True)], order=1)
    t0 = time.perf_counter()
    data = normalize(vol)
    seeds = make_seeds(data)
    att = attenuation(vol.shape[0], 2.0)[:, None, None]
    weights = edge_weights(data * att, 90.0, 0.05, connectivity=args.connectivity)
    split, b = slice_system(weights, seeds)  # the split system straight from the weights, as the API does
    t_asm = time.perf_counter() - t0
    h, w, depth = vol.shape
    grid = assemble_csr(weights, seeds)[0] if h * w * depth <= DIRECT_MAX_NODES else None  # SuperLU's reference
    del weights, data
    t0 = time.perf_counter()
    factors = factor_slices(split.coef, (h, w), args.chunk, args.precision)
    t_fac = time.perf_counter() - t0
    matvec = slice_matvec(split, (h, w))
    precond = _preconditioner(factors, split.coupling, depth, args.precond)
    t0 = time.perf_counter()
    xs, iterations, residual = _pcg(
        matvec, precond, to_slice_major(b, vol.shape), np.zeros(b.size), args.tol, args.max_iter
    )
    t_cg = time.perf_counter() - t0
    x = from_slice_major(xs, vol.shape)
    diff = float("nan")
    if grid is not None:
        diff = float(np.abs(x - solve_direct(grid, b, vol.shape)).max())
    m = x.reshape(vol.shape)
    print(
        f"| {case} | {h}x{w}x{depth} | {args.precond} | {args.precision} | {t_asm:.1f} | {t_fac:.1f} | {t_cg:.1f} | "
        f"{t_asm + t_fac + t_cg:.1f} | {iterations} | {residual:.1e} | {factors.nbytes / 1e9:.2f} | "
        f"{peak_gb():.1f} | {diff:.1e} | {m.min():.3f}..{m.max():.3f} |",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="+", default=["64x64x72", "128x128x144", "256x256x288"])
    p.add_argument("--cases", nargs="+", default=["Case3", "Case4"])
    p.add_argument("--precond", nargs="+", default=["sgs"])
    p.add_argument("--connectivity", type=int, default=10)
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument(
        "--precision",
        nargs="+",
        default=["mixed"],
        help="slice factors: mixed (float32, the default) or exact (float64)",
    )
    args = p.parse_args()
    torch.set_num_threads(2)
    precs = list(args.precond)
    precisions = list(args.precision)
    print(
        "| case | size | precond | slice factors | weights+assembly s | factor s | CG s | total s | iterations | rel. residual "
        "| factor GB | peak RSS GB | max abs diff vs SuperLU | map range |"
    )
    print("|" + "---|" * 14, flush=True)
    for size in args.sizes:
        for case in args.cases:
            for pre in precs:
                for precision in precisions:
                    args.precond, args.precision = pre, precision
                    run(case, tuple(int(s) for s in size.split("x")), args)


if __name__ == "__main__":
    main()
