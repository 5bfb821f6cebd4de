"""How far the 2D CPU confidence map is from this machine's limits, and from the best library solver.

Usage: ``python benchmarks/bench_confmap_limits.py [--write]``. Issue 3 asks for 100x MONAI's time on the
two MATLAB reference images. This measures, per image, in one process per thread count (the solvers
interleaved, medians):

* the default map's stages (model, float32 factorisation, float64 CG refinement) and MONAI's transform;
* a roofline floor for the factor-and-solve approach: the factorisation's flops at this machine's measured
  ``sgemm`` peak, plus writing the factor once and reading it in the two sweeps of each of the two solves
  at its measured memory bandwidth;
* Intel MKL PARDISO (supernodal, METIS ordering; analysis done once, as our symbolic phase is per shape),
  float64 and float32-with-refinement, when ``pypardiso`` and ``mkl`` are installed (``pip install pypardiso
  mkl``; not a project dependency). Each thread count runs in its own process: changing MKL's thread count
  between PARDISO calls gave wrong solutions here.

``--write`` puts the table in the ``### Limits of the 2D CPU solve`` subsection of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch
from bench_confmap_multifrontal import _model, _threads, machine, map_default, write_section
from confmap_cases import cases
from monai.transforms import UltrasoundConfidenceMapTransform
from scipy.linalg.blas import sgemm
from threadpoolctl import threadpool_limits

from ultramae_monai.confmap.multifrontal_blas import cpu_plan
from ultramae_monai.confmap.system import assemble_csr

HEADING = "### Limits of the 2D CPU solve"
IMAGES = ("femur 512x476", "neck 597x568")
REPS = 7


def factor_flops(shape: tuple[int, int], parts: int) -> tuple[float, int]:
    """Flops of the multifrontal factorisation (each front eliminates ``s`` of ``m`` unknowns: a scaled
    column and a symmetric rank-1 update of the lower trailing triangle per pivot) and its float32 bytes."""
    plan = cpu_plan(shape, parts)
    m, lo = plan.fronts.m.astype(np.float64), (plan.fronts.m - plan.fronts.s).astype(np.float64)

    def upto(n: np.ndarray) -> np.ndarray:  # sum of k^2 + 2k over k < n
        return (n - 1) * n * (2 * n - 1) / 6 + n * (n - 1)

    # a pivot with k unknowns after it: k scalings and k (k + 1) / 2 multiply-adds; k runs over m-s .. m-1
    return float((upto(m) - upto(lo)).sum()), int(plan.fronts.l_ptr[-1]) * 4


def peak_sgemm(threads: int, n: int = 2048) -> float:
    """Best of 5 ``sgemm`` runs on ``n x n`` matrices with ``threads`` BLAS threads, in flop/s."""
    a = np.asfortranarray(np.random.default_rng(0).random((n, n), dtype=np.float32))
    best = np.inf
    with threadpool_limits(limits=threads, user_api="blas"):
        for _ in range(5):
            t0 = time.perf_counter()
            sgemm(1.0, a, a)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def bandwidth(threads: int, nbytes: int = 1 << 28) -> tuple[float, float]:
    """Best-of-5 read and write bandwidth (bytes/s) over ``nbytes`` of float32 with ``threads`` threads."""
    torch.set_num_threads(threads)
    x = torch.ones(nbytes // 4)
    reads, writes = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        reads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        x.fill_(1.0)
        writes.append(time.perf_counter() - t0)
    return nbytes / min(reads), nbytes / min(writes)


class Pardiso:
    """MKL PARDISO on the upper triangle of an SPD matrix (mtype 2), one factorisation kept."""

    def __init__(self, lib: ctypes.CDLL, mat: sp.csr_matrix, single: bool) -> None:
        upper = sp.triu(mat, format="csr")
        upper.sort_indices()
        self.lib, self.n, self.dtype = lib, mat.shape[0], np.float32 if single else np.float64
        self.data = upper.data.astype(self.dtype)
        self.ia, self.ja = (upper.indptr + 1).astype(np.int32), (upper.indices + 1).astype(np.int32)
        self.pt, self.iparm = np.zeros(64, dtype=np.int64), np.zeros(64, dtype=np.int32)
        self.iparm[[0, 1, 7, 9, 27]] = (1, 2, 2, 8, int(single))  # own iparm, METIS, 2 refinements, eps 1e-8
        self.perm = np.zeros(self.n, dtype=np.int32)

    def __call__(self, phase: int, b: np.ndarray | None = None) -> np.ndarray:
        b = np.zeros(self.n, self.dtype) if b is None else np.ascontiguousarray(b, dtype=self.dtype)
        x, err = np.zeros_like(b), ctypes.c_int32(0)

        def i32(v: int) -> ctypes.c_int32:
            return ctypes.byref(ctypes.c_int32(v))

        ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in (self.pt, self.data, self.ia, self.ja, self.perm, self.iparm)]
        self.lib.pardiso(
            ptr[0], i32(1), i32(1), i32(2), i32(phase), i32(self.n), *ptr[1:5], i32(1), ptr[5], i32(0),
            b.ctypes.data_as(ctypes.c_void_p), x.ctypes.data_as(ctypes.c_void_p), ctypes.byref(err),
        )  # fmt: skip
        if err.value:
            raise RuntimeError(f"PARDISO error {err.value} in phase {phase}")
        return x

    def solve(self, b: np.ndarray) -> np.ndarray:
        self(22)
        return self(33, b)


def mkl() -> ctypes.CDLL | None:
    """MKL's runtime through pypardiso's search, or None when pypardiso is not installed."""
    try:
        import pypardiso
    except ImportError:
        return None
    lib = pypardiso.PyPardisoSolver(mtype=2).libmkl
    lib.pardiso.argtypes = None  # pypardiso types the float64 arguments; float32 data goes through too
    return lib


def measure(threads: int) -> dict:
    """All timings of one thread count (run in a process of its own)."""
    _threads(threads)
    lib = mkl()
    if lib is not None:
        lib.MKL_Set_Num_Threads(ctypes.c_int(threads))
    out: dict = {"threads": threads, "sgemm": peak_sgemm(threads), "bandwidth": bandwidth(threads), "images": {}}
    for name, img, gamma in cases():
        if name not in IMAGES:
            continue
        ew, seeds = _model(img, gamma)
        mat, b, fixed = assemble_csr(ew, seeds)
        ref = sla.spsolve(mat.tocsc(), b)[~fixed]
        solvers = (
            {"pardiso float64": Pardiso(lib, mat, False), "pardiso float32": Pardiso(lib, mat, True)} if lib else {}
        )
        for s in solvers.values():
            s(11)
        map_default(img, gamma)  # warm-up
        times: dict[str, list[float]] = {}
        split: dict[str, list[float]] = {}
        row: dict = {"errors": {}}
        for rep in range(REPS):
            t0 = time.perf_counter()
            x = map_default(img, gamma, split)
            times.setdefault("default map", []).append(time.perf_counter() - t0)
            row["errors"]["default map"] = float(np.abs(x.ravel()[~fixed] - ref).max())
            for key, s in solvers.items():
                t0 = time.perf_counter()
                x = s.solve(b)
                times.setdefault(key, []).append(time.perf_counter() - t0)
                row["errors"][key] = float(np.abs(x[~fixed] - ref).max())
            if rep == REPS // 2:
                monai = UltrasoundConfidenceMapTransform(alpha=2.0, beta=90.0, gamma=gamma, sink_mode="all")
                t0 = time.perf_counter()
                monai(img.copy()[None])
                row["monai"] = time.perf_counter() - t0
        row["times"] = {k: float(np.median(v)) for k, v in times.items()}
        row["split"] = {k: float(np.median(v)) for k, v in split.items() if k != "steps"}
        row["flops"], row["factor_bytes"] = factor_flops(img.shape, threads)
        out["images"][name] = row
    return out


def table(results: list[dict]) -> list[str]:
    rows = [
        "| image | threads | MONAI (s) | 100x target (ms) | default map (ms) | model / factor / CG (ms) | floor: "
        "factor flops at sgemm peak + factor traffic (ms) | MKL PARDISO float64 factor+solve (ms) | PARDISO "
        "float32 + 2 refinements (ms) | max abs error vs SuperLU: default / PARDISO 64 / 32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        read, write = res["bandwidth"]
        for name, r in res["images"].items():
            t, e = r["times"], r["errors"]
            flop_ms = 1e3 * r["flops"] / res["sgemm"]
            traffic_ms = 1e3 * r["factor_bytes"] * (1 / write + 4 / read)
            split = " / ".join(f"{1e3 * r['split'][k]:.0f}" for k in ("model", "factor", "refine"))
            pard = [f"{1e3 * t[k]:.0f}" if k in t else "not installed" for k in ("pardiso float64", "pardiso float32")]
            errs = " / ".join(
                f"{e[k]:.1e}" if k in e else "-" for k in ("default map", "pardiso float64", "pardiso float32")
            )
            rows.append(
                f"| {name} | {res['threads']} | {r['monai']:.2f} | {10 * r['monai']:.0f} | "
                f"**{1e3 * t['default map']:.0f}** | {split} | {flop_ms + traffic_ms:.0f} ({r['flops'] / 1e9:.2f} "
                f"Gflop at {res['sgemm'] / 1e9:.0f} Gflop/s = {flop_ms:.0f}; {r['factor_bytes'] / 1e6:.0f} MB "
                f"written once, read 4x at {write / 1e9:.1f} / {read / 1e9:.1f} GB/s = {traffic_ms:.0f}) | "
                f"{pard[0]} | {pard[1]} | {errs} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--threads", type=int, help="measure one thread count and print JSON (internal)")
    args = parser.parse_args()
    if args.threads:
        print(json.dumps(measure(args.threads)))
        return
    env = {**os.environ, "KMP_BLOCKTIME": "0"}  # MKL's OpenMP threads must not spin against numba's
    results = []
    for threads in sorted({1, os.cpu_count() or 1}):
        proc = subprocess.run(
            [sys.executable, __file__, "--threads", str(threads)], capture_output=True, text=True, env=env, check=True
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    head = (
        f"{machine()}. `python benchmarks/bench_confmap_limits.py`: one process per thread count, solvers "
        f"interleaved ({REPS} runs, medians), MONAI once per image in the same process."
    )
    body = [head, "", *table(results)]
    print("\n".join(body))
    if args.write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
