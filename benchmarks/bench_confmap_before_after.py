"""Confidence maps before and after a change, side by side in one run: the same code path of two trees.

Usage: ``python benchmarks/bench_confmap_before_after.py [--before REV] [--rounds N] [--write]``
or, for the batched device pipeline, ``... --device-batch B [--device cuda] [--before REV] [--write]``.

``REV`` is checked out into a temporary git worktree. Each round times the path once in a child process
importing the old tree and once in one importing this tree, alternating which goes first, so a busy
shared machine affects both alike. Reports the median seconds, the ratio after/before, and the largest
difference between the two trees' maps. The paths:

* default: ``ultramae_monai.confmap.confidence_map`` on every benchmark image (``REV`` default ``89843ea``,
  main before the solver clean-up); ``--write`` puts the table under ``### Before and after the solver
  clean-up`` in docs/benchmarks.md;
* ``--device-batch B``: ``DeviceMapSolver`` (the exact float64 factorisation on the images' device, what
  training uses for on-the-fly maps) on ``B`` real images at 224 px on ``--device`` (``REV`` default
  ``897a9f5``, before the two-block fronts); ``--write`` puts the table under ``### Device pipeline before
  and after``.
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
from confmap_cases import device_batch  # benchmarks/ is on sys.path when a script here runs
from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
HEADING = "### Before and after the solver clean-up"
DEVICE_HEADING = "### Device pipeline before and after"
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
DEVICE_CHILD = r"""
import json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from ultramae_monai.confmap.device_solver import DeviceMapSolver
device = torch.device(sys.argv[5])
x = torch.from_numpy(np.load(sys.argv[4])).to(device)
batch = x.shape[0]
solver = DeviceMapSolver(precision="float64")
def run():
    m = solver(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return m
run()  # warm: symbolic plan, index maps on the device, CUDA-graph capture
times = []
for _ in range(3):
    t0 = time.perf_counter()
    m = run()
    times.append(time.perf_counter() - t0)
np.save(sys.argv[3] + "/batch.npy", m.cpu().numpy())
print(json.dumps({f"batch {batch} at 224 px ({device.type})": sorted(times)[1]}))
"""


def _time_tree(tree: Path, maps: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": ""}
    child = DEVICE_CHILD if args.device_batch else CHILD
    cmd = [sys.executable, "-c", child, str(REPO / "benchmarks"), str(tree), str(maps)]
    if args.device_batch:
        cmd += [str(maps.parent / "input_batch.npy"), args.device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", help="git revision to compare against (default 89843ea; 897a9f5 with --device-batch)"
    )
    parser.add_argument("--device-batch", type=int, default=0, help="time the device pipeline on a batch this large")
    parser.add_argument("--device", default="cpu", help="device of --device-batch (cpu or cuda)")
    parser.add_argument("--images", type=Path, help="(N, 224, 224) images of --device-batch, .npy (default: HC18/BUSI)")
    parser.add_argument("--before-tree", type=Path, help="an unpacked old tree instead of --before (no git needed)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    args.before = args.before or ("897a9f5" if args.device_batch else "89843ea")
    heading = DEVICE_HEADING if args.device_batch else HEADING

    with tempfile.TemporaryDirectory() as tmp:
        if args.device_batch:
            np.save(Path(tmp) / "input_batch.npy", device_batch(args.device_batch, args.images))
        old = args.before_tree.resolve() if args.before_tree else Path(tmp) / "before"
        if not args.before_tree:
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
                    times[k].append(_time_tree(trees[k], maps[k], args))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {sum(times[k][-1].values()):.2f} s" for k in order), flush=True)  # fmt: skip
            diffs = {
                p.stem: float(np.abs(np.load(p) - np.load(maps["after"] / p.name)).max())
                for p in sorted(maps["before"].glob("*.npy"))
            }
        finally:
            if not args.before_tree:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)

    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    after = rev.stdout.strip() or "this tree"
    if args.device_batch:
        command = f"--device-batch {args.device_batch} --device {args.device}"
        what = ("`DeviceMapSolver` (exact float64 factorisation) on a batch of real HC18/BUSI images at 224 px, "
                "warm, middle of 3 runs per round, median of the interleaved rounds:")  # fmt: skip
    else:
        command, what = "", "Whole default map (`confidence_map`), warm, median of the interleaved rounds:"
    if args.device_batch and args.device.startswith("cuda"):
        import torch

        machine = f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}"
    else:
        machine = f"{cpu_name()}, {os.cpu_count()} cores"
    lines = [
        heading,
        "",
        f"`python benchmarks/bench_confmap_before_after.py {command + ' ' if command else ''}--before {args.before} "
        f"--rounds {args.rounds}` on {machine} (after = {after}). {what}",
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
        pattern = re.compile(rf"{re.escape(heading)}\n.*?(?=\n### |\n## |\Z)", re.S)
        anchor = "### 3D confidence map on the GPU" if args.device_batch else "### Multifrontal solver"
        text = pattern.sub(table.rstrip("\n") + "\n", text) if pattern.search(text) else text.replace(
            anchor, table + "\n" + anchor, 1)  # fmt: skip
        doc.write_text(text)


if __name__ == "__main__":
    main()
