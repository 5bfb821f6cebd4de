"""Confidence maps before and after a change, side by side in one run: the default public API of two trees.

Usage: ``python benchmarks/bench_confmap_before_after.py [--before REV] [--rounds N] [--write]``.
``REV`` (default ``89843ea``, main before the solver clean-up) is checked out into a temporary git
worktree. Each round times ``ultramae_monai.confmap.confidence_map`` on every benchmark image, once in a
child process importing the old tree and once in one importing this tree, alternating which goes first,
so a busy shared CPU affects both alike. Reports the median seconds per image, the ratio after/before,
and the largest difference between the two maps. ``--write`` puts the table under ``### Before and after
the solver clean-up`` in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
HEADING = "### Before and after the solver clean-up"
CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from confmap_cases import cases
from ultramae_monai.confmap.api import confidence_map
out = {}
for name, img, gamma in cases():
    confidence_map(img, gamma=gamma)  # warm: compiled kernels and cached symbolic plans
    t0 = time.perf_counter()
    m = confidence_map(img, gamma=gamma)
    out[name] = time.perf_counter() - t0
    np.save(sys.argv[3] + "/" + name.split()[0] + ".npy", m)
print(json.dumps(out))
"""


def _time_tree(tree: Path, maps: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": ""}
    cmd = [sys.executable, "-c", CHILD, str(REPO / "benchmarks"), str(tree), str(maps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="89843ea", help="git revision to compare against (default 89843ea)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.before], check=True,
                       capture_output=True)  # fmt: skip
        try:
            trees = {"before": old, "after": REPO}
            maps = {k: Path(tmp) / f"maps_{k}" for k in trees}
            for m in maps.values():
                m.mkdir()
            times: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
            for r in range(args.rounds):
                order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                for k in order:
                    times[k].append(_time_tree(trees[k], maps[k]))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {sum(times[k][-1].values()):.2f} s" for k in order), flush=True)  # fmt: skip
            diffs = {
                p.stem: float(np.abs(np.load(p) - np.load(maps["after"] / p.name)).max())
                for p in sorted(maps["before"].glob("*.npy"))
            }
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)

    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lines = [
        HEADING,
        "",
        f"`python benchmarks/bench_confmap_before_after.py --before {args.before} --rounds {args.rounds}` on "
        f"{cpu_name()}, {os.cpu_count()} cores, shared (after = {rev.stdout.strip()}). Whole default map "
        "(`confidence_map`), warm, median of the interleaved rounds:",
        "",
        "| image | before (s) | after (s) | after / before | max abs diff of maps |",
        "|---|---|---|---|---|",
    ]
    for name in times["after"][0]:
        b = float(np.median([t[name] for t in times["before"]]))
        a = float(np.median([t[name] for t in times["after"]]))
        lines.append(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.2f} | {diffs.get(name.split()[0], float('nan')):.1e} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text()
        pattern = re.compile(rf"{re.escape(HEADING)}\n.*?(?=\n### |\n## |\Z)", re.S)
        text = pattern.sub(table.rstrip("\n"), text) if pattern.search(text) else text.replace(
            "### Multifrontal solver", table + "\n### Multifrontal solver", 1)  # fmt: skip
        doc.write_text(text)


if __name__ == "__main__":
    main()
