"""Profile a curation run: files/s, the share of worker time per stage, output size (docs/curation.md).

    python scripts/curation_profile.py SRC OUT [--workers 2] [--max_side 256] [--config FILE]

Runs ``ultramae curate`` into OUT (resuming if OUT holds a run; a fresh OUT measures a full run),
then prints a Markdown table from OUT/summary.json. Stage times are summed over the worker
processes (CPU-seconds of wall time inside workers), so their shares are comparable across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import torch

from ultramae_monai.curation.options import load_options
from ultramae_monai.curation.pipeline import SUMMARY_NAME, run_curation


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max_side", type=int, default=256)
    ap.add_argument("--config", default=None)
    ap.add_argument("--salt", default=None)
    a = ap.parse_args()
    opts = load_options(a.config, workers=a.workers, max_side=a.max_side)
    report = run_curation(a.src, a.out, opts, salt=a.salt)
    print(report)
    summary = json.loads((Path(a.out) / SUMMARY_NAME).read_text())
    stages = summary["stage_seconds"]
    total = sum(stages.values()) or 1.0
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    print(f"\nmachine: {model}, {a.workers} workers, torch {torch.__version__}, Python {platform.python_version()}")
    print(
        f"files/s: {report.files_per_second:.2f} ({report.curated} curated + {report.quarantined} quarantined "
        f"in {report.seconds:.0f} s); output {_size_mb(Path(a.out)):.0f} MiB\n"
    )
    print("| stage | worker seconds | share |\n|---|---|---|")
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.1f} | {100 * v / total:.0f} % |")


if __name__ == "__main__":
    main()
