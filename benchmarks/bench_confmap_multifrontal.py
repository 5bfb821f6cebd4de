"""Confidence maps: the default CPU solver vs exact float64 multifrontal vs SuperLU-ND vs MONAI, side by side.

Usage: ``python benchmarks/bench_confmap_multifrontal.py [--write]``. For every image the whole map
(normalisation, weights, seeds, system, factorisation, solve) is timed with each solver, interleaved
(the default, a float32 BLAS-3 multifrontal factor refined to float64 by CG, 5x with 1 thread and 5x with
all cores; the exact float64 multifrontal solver, SuperLU 2x each; MONAI once; medians), so a busy shared
CPU affects all alike. ``--write`` puts the table in the ``### Multifrontal solver`` subsection of the
``confmap`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from confmap_cases import cases  # benchmarks/ is on sys.path when a script here runs
from monai.transforms import UltrasoundConfidenceMapTransform

from ultramae_monai.confmap.direct import solve_direct
from ultramae_monai.confmap.graph import EdgeWeights, attenuation, edge_weights, normalize
from ultramae_monai.confmap.multifrontal import solve_multifrontal_batch
from ultramae_monai.confmap.multifrontal_blas import cpu_plan, factorize_cpu, release
from ultramae_monai.confmap.refine import pcg_refine
from ultramae_monai.confmap.seeds import Seeds, make_seeds
from ultramae_monai.confmap.stencil import stencil_9pt
from ultramae_monai.confmap.system import assemble_csr

REPO = Path(__file__).resolve().parents[1]
HEADING = "### Multifrontal solver"


def _model(img: np.ndarray, gamma: float) -> tuple[EdgeWeights, Seeds]:
    """MONAI's model: normalised image, edge weights and seeds (beam along axis 0, sink 'all')."""
    data = normalize(img.astype(np.float64))
    ew = edge_weights(data * attenuation(img.shape[0], 2.0)[:, None], 90.0, gamma)
    return ew, make_seeds(data, "all")


def _finish(x: np.ndarray, seeds: Seeds) -> np.ndarray:
    x = x.reshape(seeds.fixed.shape).copy()
    x[seeds.fixed] = seeds.value[seeds.fixed]
    return x.astype(np.float32)


def map_default(img: np.ndarray, gamma: float, split: dict | None = None) -> np.ndarray:
    """The whole map with the default CPU solver: float32 factor, float64 CG refinement."""
    t0 = time.perf_counter()
    ew, seeds = _model(img, gamma)
    coef, b = stencil_9pt(ew, seeds)
    coef, b = coef[None], b[None]
    t1 = time.perf_counter()
    factor = factorize_cpu(coef, img.shape)
    t2 = time.perf_counter()
    x, info = pcg_refine(coef, b, img.shape, factor.precondition)
    release(factor)
    t3 = time.perf_counter()
    if split is not None:
        for key, dt in (("model", t1 - t0), ("factor", t2 - t1), ("refine", t3 - t2), ("steps", info.iterations)):
            split.setdefault(key, []).append(dt)
    return _finish(x[0], seeds)


def map_exact(img: np.ndarray, gamma: float) -> np.ndarray:
    """The whole map with the exact float64 multifrontal solver (the previous default)."""
    ew, seeds = _model(img, gamma)
    coef, b = stencil_9pt(ew, seeds)
    return _finish(solve_multifrontal_batch(coef[None], b[None], img.shape, mixed=False)[0].numpy(), seeds)


def map_direct(img: np.ndarray, gamma: float) -> np.ndarray:
    ew, seeds = _model(img, gamma)
    mat, b, _ = assemble_csr(ew, seeds)
    return _finish(solve_direct(mat, b, img.shape), seeds)


def _timed(fn: Callable, *args: object) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _threads(n: int) -> None:
    torch.set_num_threads(n)
    numba.set_num_threads(n)


def bench(cores: int) -> list[str]:
    rows = [
        "| image | MONAI (s) | SuperLU-ND (s) | exact multifrontal (s) | default, 1 thread (s) | default, "
        f"{cores} threads (s) | best vs MONAI | vs SuperLU | vs exact multifrontal | max abs diff vs MONAI | "
        "1 thread: model / factor / CG (ms) | CG steps | symbolic, once per shape (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, img, gamma in cases():
        t_sym = _timed(cpu_plan, img.shape, cores)[0] + _timed(cpu_plan, img.shape, 1)[0]
        map_default(img, gamma)  # warm-up: numba kernels, per-shape caches, workspace
        map_exact(img, gamma)
        monai_t = UltrasoundConfidenceMapTransform(alpha=2.0, beta=90.0, gamma=gamma, sink_mode="all")
        one, many, exact, direct, monai, split = [], [], [], [], [], {}
        ref = out = None
        for rep in range(5):
            _threads(1)
            t, out = _timed(map_default, img, gamma, split)
            one.append(t)
            _threads(cores)
            many.append(_timed(map_default, img, gamma)[0])
            if rep in (1, 3):
                exact.append(_timed(map_exact, img, gamma)[0])
                direct.append(_timed(map_direct, img, gamma)[0])
            if rep == 2:
                t, ref = _timed(monai_t, img[None])
                monai.append(t)
        t_1, t_n, t_e, t_d, t_m = (float(np.median(v)) for v in (one, many, exact, direct, monai))
        best = min(t_1, t_n)
        diff = float(np.abs(out - np.asarray(ref).reshape(out.shape)).max())
        parts = " / ".join(f"{1e3 * float(np.median(split[k])):.0f}" for k in ("model", "factor", "refine"))
        line = (
            f"| {name} | {t_m:.2f} | {t_d:.2f} | {t_e:.3f} | {t_1:.3f} | {t_n:.3f} | **{t_m / best:.0f}x** "
            f"| {t_d / best:.1f}x | {t_e / best:.1f}x | {diff:.1e} | {parts} | {int(np.median(split['steps']))} "
            f"| {t_sym:.1f} |"
        )
        print(line, flush=True)
        rows.append(line)
    return rows


def write_section(heading: str, body: list[str]) -> None:
    """Put ``body`` under ``heading`` in the confmap section of docs/benchmarks.md (replacing the old one)."""
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text()
    end = "<!-- /section: confmap -->"
    j = text.index(end)
    i = text.find(heading, text.index("<!-- section: confmap -->"), j)
    i = j if i < 0 else i
    nxt = text.find("\n### ", i + len(heading), j)  # keep the subsections that follow this one
    k = j if nxt < 0 else nxt + 1
    doc.write_text(text[:i].rstrip("\n") + "\n\n" + heading + "\n\n" + "\n".join(body) + "\n\n" + text[k:])


def machine() -> str:
    """The machine, versions and current load, for a table's header."""
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.*)", cpu)
    return (
        f"Machine: {model.group(1) if model else platform.processor()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; numba {numba.__version__}. The CPU was shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the start), so absolute times are inflated"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    head = (
        f"{machine()}; the solvers ran interleaved on the same images, read the ratios. Times are the whole "
        "map (normalisation, weights, seeds, system, factorisation, solve), medians."
    )
    print(head)
    body = [head, "", *bench(cores)]
    if args.write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
