"""``ultramae demo``: the whole pipeline on a real ultrasound cine that ships inside pydicom (no download).

The sample is pydicom's ``examples_ybr_color.dcm`` (MIT): a 30-frame, JPEG-baseline, YBR_FULL_422 ultrasound
cine. Each stage is the project's real code path, not a shortcut: the reader, the scan-region detector, the
confidence map, ``ultramae curate`` and the pretraining bundle's own ``configs/train.json`` (with small
overrides so it finishes in about a minute on a laptop CPU). Pictures of every stage and ``summary.json``
land in ``out``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ultramae_monai.errors import UltraMAEError

__all__ = ["SAMPLE_FILE", "bundle_dir", "demo"]

SAMPLE_FILE = "examples_ybr_color.dcm"


def bundle_dir(name: str = "ultramae_pretrain") -> Path:
    """The repository's ``bundles/<name>`` folder (the demo runs the bundle's own config)."""
    path = Path(__file__).resolve().parents[2] / "bundles" / name
    if not (path / "configs" / "train.json").is_file():
        raise UltraMAEError(f"bundle {name!r} not found (the demo runs from a source checkout)", path)
    return path


def _to_png(arr: np.ndarray | torch.Tensor, path: Path, vmax: float | None = None) -> None:
    a = np.asarray(arr.detach().cpu() if isinstance(arr, torch.Tensor) else arr, dtype=np.float64)
    top = float(a.max()) if vmax is None else vmax
    Image.fromarray(np.clip(a / max(top, 1e-12) * 255.0, 0, 255).astype(np.uint8)).save(path)


def _panel(images: list[np.ndarray], path: Path) -> None:
    """Side-by-side strip of equally tall grey images in [0, 1]."""
    h = max(i.shape[0] for i in images)
    cols = [np.pad(i, ((0, h - i.shape[0]), (0, 4)), constant_values=1.0) for i in images]
    _to_png(np.concatenate(cols, axis=1), path, vmax=1.0)


def demo(out: str = "demo_out", steps: int = 30, img_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """Read -> scan region -> confidence map -> curate -> pretrain (bundle) -> reconstruct, on a real cine."""
    from monai.bundle import ConfigParser
    from pydicom.data import get_testdata_file

    from ultramae_monai.cli.curate import curate
    from ultramae_monai.data.load import load_ultrasound
    from ultramae_monai.engines import seed_everything
    from ultramae_monai.transforms import ScanRegion, UltrasoundConfidenceMap

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = Path(get_testdata_file(SAMPLE_FILE))
    summary: dict[str, Any] = {"sample": f"pydicom test file {SAMPLE_FILE} (MIT)"}

    # 1. read: (1, T, H, W) grey, metadata kept
    t0 = time.perf_counter()
    cine = load_ultrasound(src)
    summary["read"] = {"shape": list(cine.shape), "fps": cine.meta["fps"], "seconds": time.perf_counter() - t0}
    frame0 = cine[0, 0].numpy() / 255.0

    # 2. scan region: blank text/border, crop to the fan
    t0 = time.perf_counter()
    region = ScanRegion(blank=True, crop=True)(cine)
    summary["scan_region"] = {"fov_box": region.meta["fov_box"], "seconds": time.perf_counter() - t0}
    mask = np.zeros(frame0.shape)
    r0, c0, r1, c1 = region.meta["fov_box"]
    mask[r0:r1, c0:c1] = region.meta["fov_mask"][0].numpy()

    # 3. confidence maps of every frame (UltraMAE's reconstruction weights)
    t0 = time.perf_counter()
    conf = UltrasoundConfidenceMap(alpha=2.0, beta=90.0, gamma=0.05)(region)
    summary["confidence_map"] = {
        "frames": int(conf.shape[1]),
        "seconds_per_frame": (time.perf_counter() - t0) / conf.shape[1],
    }
    _panel([frame0, mask, region[0, 0].numpy() / 255.0, conf[0, 0].numpy()], out_dir / "1_read_fov_confidence.png")

    # 4. curate the file into a pretraining set (arrays + manifest.jsonl)
    raw = out_dir / "archive"
    raw.mkdir(exist_ok=True)
    shutil.copy(src, raw / "cine.dcm")
    report = curate(
        str(raw),
        str(out_dir / "curated"),
        max_side=img_size * 2,
        clip_length=8,
        clips_per_cine=2,
        frames_per_cine=16,
        val_fraction=0.0,
        salt="ultramae-demo-salt-not-secret",
        progress=False,
    )
    summary["curate"] = str(report)

    # 5. pretrain with the bundle's own config, small enough for a CPU minute
    parser = ConfigParser()
    parser.read_config(str(bundle_dir() / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(bundle_dir()),
            "dataset_dir": str(out_dir / "curated"),
            "output_dir": str(out_dir / "pretrain"),
            "seed": seed,
            "preset": "micro",
            "img_size": img_size,
            "num_frames": 8,
            "decoder_depth": 1,
            "decoder_dim": 64,
            "batch_size": 8,
            "clip_batch_size": 2,
            "max_epochs": 1000,
            "max_steps": steps,
            "warmup_epochs": 0,
            "base_lr": 0.01,
            "num_workers": 0,
            "log_every": max(steps // 5, 1),
            "preview_every": 0,
            "checkpoint_every": 0,
            "resume": False,
            "tensorboard": False,
            "device": "cpu",
        }
    )
    parser.parse()
    seed_everything(seed)
    t0 = time.perf_counter()
    trainer = parser.get_parsed_content("trainer")
    result = trainer.run()
    summary["pretrain"] = {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        **{k: v for k, v in result.items() if isinstance(v, (int, float, str))},
    }

    # 6. reconstruct one still with the trained model
    model = parser.get_parsed_content("network").eval()
    sample = parser.get_parsed_content("train#dataset")
    item = next(sample[i] for i in range(len(sample)) if sample[i]["kind"] == "still")
    x = item["image"][None]
    kwargs = {"confidence": item["confidence"][None]} if "confidence" in item else {}
    with torch.no_grad():
        rec = model.reconstruct(x, model(x, **kwargs, generator=torch.Generator().manual_seed(seed)))
    _panel(
        [
            x[0, 0].numpy(),
            rec["masked"][0, 0].numpy(),
            (rec["masked"] + (1 - rec["visible"]) * rec["pred"])[0, 0].clamp(0, 1).numpy(),
            rec["target"][0, 0].numpy(),
        ],
        out_dir / "2_reconstruction.png",
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"pictures and summary.json in {out_dir.resolve()}")
    return summary


NAME = "demo"
SUMMARY = "The end-to-end demo on a sample ultrasound cine shipped with pydicom (no download)."
EXAMPLE = "ultramae demo demo_out --steps 30 --img_size 64"


def add_arguments(parser: Any) -> None:
    from ultramae_monai.cli.arguments import add_option

    parser.add_argument(
        "out", nargs="?", default="demo_out", metavar="OUT", help="output folder (created; default: demo_out)"
    )
    add_option(parser, "steps", int, 30, "pretraining steps")
    add_option(parser, "img_size", int, 64, "image side the demo pretrains at")
    add_option(parser, "seed", int, 0, "random seed")


def run(args: Any) -> int:
    from ultramae_monai.cli.arguments import check_output_folder

    check_output_folder(args.out)
    summary = demo(args.out, steps=args.steps, img_size=args.img_size, seed=args.seed)
    print(json.dumps(summary, indent=2, default=str))
    return 0
