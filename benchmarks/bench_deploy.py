"""Time of the deploy app per ultrasound still and per cine frame, with the segmentation bundle at its own size.

The bundle is ``bundles/ultramae_segmentation`` as shipped (its defaults: ViT-B, 224 px) with random weights made
from its ``network_def`` (timing does not depend on the weights). Measured through the app's ``BundleRunner``
(the bundle's loader, scan region, resize, network, postprocessing back to the source pixels) on the pydicom
palette still (350x800) and YBR cine (30 frames, 240x320), then the whole app (Holoscan graph, DICOM SEG, PNG
overlays) once over both. Writes the ``deploy`` section of ``docs/benchmarks.md``.

Run (in .venv-deploy): ``OMP_NUM_THREADS=2 .venv-deploy/bin/python benchmarks/bench_deploy.py [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/ is on sys.path when a script here runs
from monai.bundle import ConfigParser
from pydicom.data import get_testdata_file

from ultramae_monai.deploy import operators  # noqa: F401  (imported now, not mid-run by the app's compose)
from ultramae_monai.deploy.app import run_deploy
from ultramae_monai.deploy.bundle import BundleRunner

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"


def make_bundle(root: Path) -> Path:
    bundle = root / "ultramae_segmentation"
    shutil.copytree(REPO / "bundles" / "ultramae_segmentation" / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = make_bundle(root)
        runner = BundleRunner(bundle, args.device)
        size = runner.parser.get_parsed_content("img_size")
        preset = runner.parser.get_parsed_content("preset")
        still, cine = get_testdata_file("examples_palette.dcm"), get_testdata_file("examples_ybr_color.dcm")
        runner.predict(runner.load(still))  # warm-up
        per_still, per_frame = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            runner.predict(runner.load(still))
            per_still.append(time.perf_counter() - t)
            t = time.perf_counter()
            image = runner.load(cine)
            preds = runner.predict(image)
            per_frame.append((time.perf_counter() - t) / len(preds))
        print(f"per still {min(per_still):.3f} s, per cine frame {min(per_frame):.3f} s", flush=True)
        src = root / "in"
        src.mkdir()
        shutil.copy(still, src / "still.dcm")
        shutil.copy(cine, src / "cine.dcm")
        t = time.perf_counter()
        run_deploy(src, root / "out", bundle, device=args.device)
        app_s = time.perf_counter() - t
    machine = (
        f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
        if args.device == "cpu"
        else torch.cuda.get_device_name(0)
    )
    rows = {
        "device": args.device,
        "machine": machine,
        "bundle": f"{preset}, {size} px",
        "per_still_s": min(per_still),
        "per_cine_frame_s": min(per_frame),
        "app_run_s": app_s,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    print(json.dumps(rows, indent=2))
    if args.no_write:
        return
    section = (
        "<!-- section: deploy -->\n"
        "### Deploy app (`benchmarks/bench_deploy.py`)\n\n"
        f"Segmentation bundle as shipped ({rows['bundle']}, random weights), device `{args.device}`: {machine}. "
        f"Best of {args.repeats}; load + scan region + resize + network + postprocessing back to the source pixels. "
        f"1-minute load average at the end: {rows['load_average_1min_at_end']:.1f} (other jobs on the machine inflate "
        "the seconds).\n\n"
        "| input | time |\n|---|---|\n"
        f"| per still (palette, 350x800) | {rows['per_still_s']:.2f} s |\n"
        f"| per cine frame (YBR JPEG, 30 frames 240x320) | {rows['per_cine_frame_s']:.2f} s |\n"
        f"| whole app over both (Holoscan graph, SEGs, overlays; one run) | {rows['app_run_s']:.1f} s |\n"
        "<!-- /section: deploy -->\n"
    )
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(r"<!-- section: deploy -->.*?<!-- /section: deploy -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


if __name__ == "__main__":
    main()
