"""The CPU float32 factorisation with and without its two switchable choices, side by side.

Usage: ``python benchmarks/bench_confmap_factor_ablation.py [--write]``. On the real reference images,
the factorisation alone (``factorize_cpu``, no model, no solve) is timed for the default (row-sum
pivots, the small fronts at the bottom of the tree eliminated in interleaved batches), with them one
front at a time, and with plain
Cholesky pivots, interleaved round by round (11 rounds, the first discarded), with 1 thread and with all
cores. It also reports how far one float32 solve of each variant is from the exact float64 map.
``--write`` puts the table in the ``### CPU factor ablations`` subsection of the ``confmap`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from bench_confmap_multifrontal import _model, machine, write_section
from confmap_cases import cases  # benchmarks/ is on sys.path when a script here runs

from ultramae_monai.confmap.multifrontal import solve_multifrontal_batch
from ultramae_monai.confmap.multifrontal_blas import factorize_cpu, release, solve_cpu
from ultramae_monai.confmap.stencil import stencil_9pt

HEADING = "### CPU factor ablations"
VARIANTS = {
    "default": {},
    "small fronts one by one": {"batch_bottom": False},
    "plain pivots": {"row_sums": False},
}


def bench(cores: int, rounds: int = 11) -> list[str]:
    rows = [
        "| image | threads | " + " | ".join(f"{v} (ms)" for v in VARIANTS) + " | "
        + " | ".join(f"{v} / default" for v in list(VARIANTS)[1:]) + " | "
        + " | ".join(f"1 solve error, {v}" for v in VARIANTS) + " |",
        "|---|---|" + "---|" * (3 * len(VARIANTS) - 1),
    ]  # fmt: skip
    for name, img, gamma in cases()[1:3]:
        ew, seeds = _model(img, gamma)
        coef, b = stencil_9pt(ew, seeds)
        coef, b = coef[None], b[None]
        exact = solve_multifrontal_batch(coef, b, img.shape, mixed=False).numpy()[0]
        for threads in sorted({1, cores}):
            numba.set_num_threads(threads)
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            errors = {}
            for rnd in range(rounds):
                for v, kw in VARIANTS.items():
                    t0 = time.perf_counter()
                    factor = factorize_cpu(coef, img.shape, **kw)
                    dt = time.perf_counter() - t0
                    if rnd:
                        times[v].append(dt)
                    if rnd == 1:
                        errors[v] = float(np.abs(solve_cpu(factor, b)[0] - exact).max())
                    release(factor)
            med = {v: 1e3 * float(np.median(t)) for v, t in times.items()}
            line = (
                f"| {name} | {threads} | " + " | ".join(f"{med[v]:.0f}" for v in VARIANTS) + " | "
                + " | ".join(f"{med[v] / med['default']:.2f}" for v in list(VARIANTS)[1:]) + " | "
                + " | ".join(f"{errors[v]:.1e}" for v in VARIANTS) + " |"
            )  # fmt: skip
            print(line, flush=True)
            rows.append(line)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    cores = numba.config.NUMBA_NUM_THREADS
    header = f"{machine()}; the variants ran interleaved, read the ratios. Factorisation only, medians of 10 rounds."
    print(header, flush=True)
    rows = bench(cores)
    if args.write:
        write_section(HEADING, [header, "", *rows])


if __name__ == "__main__":
    main()
