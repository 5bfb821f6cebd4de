"""Fine-tuning step throughput: the classification bundle's MONAI ``SupervisedTrainer`` vs a plain PyTorch loop.

Both run the same network (built by the bundle's ``network_def``, same initial weights), the same data loader
(the bundle's cached dataset with its random augmentation), the same loss, AdamW with layer-wise LR decay and
the same per-iteration LR schedule. The bundle's run includes everything its handlers do per iteration (stats,
TensorBoard, LR schedule); validation is off in both. Runs are interleaved and repeated; the median of each
is reported with the ratio bundle / plain (target: within 5 %).

    python benchmarks/bench_finetune_step.py --preset tiny --img_size 112 --batch_size 16 --epochs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/ is on sys.path when a script here runs
from monai.bundle import ConfigParser
from PIL import Image

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultramae_classification"


def synthetic_class_folders(root: Path, per_class: int = 32, size: int = 160) -> Path:
    """Three class folders of smooth random PNGs (deterministic)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for c, name in enumerate(("benign", "malignant", "normal")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = 120 + 60 * np.sin(xx / (4 + c) + yy / (5 + i % 7)) + rng.normal(0, 10, (size, size))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{name} ({i}).png")
    return root


def build(data: Path, out: Path, args: argparse.Namespace) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(data),
            "output_dir": str(out),
            "preset": args.preset,
            "img_size": args.img_size,
            "batch_size": args.batch_size,
            "num_workers": 0,
            "max_epochs": args.epochs,
            "val_interval": 10**6,
            "crop_scan_region": False,
            "val_fraction": 0.1,
            "test_fraction": 0.0,
        }
    )
    return parser


def run_bundle(parser: ConfigParser, state: dict) -> tuple[float, int]:
    parser.get_parsed_content("network").load_state_dict(state)
    trainer = parser.get_parsed_content("train#trainer", instantiate=True)
    iters = len(trainer.data_loader) * trainer.state.max_epochs
    t0 = time.perf_counter()
    trainer.run()
    return time.perf_counter() - t0, iters


def run_plain(parser: ConfigParser, state: dict, epochs: int) -> tuple[float, int]:
    """The same step written by hand: forward, loss, backward, AdamW step, LR schedule step."""
    from monai.optimizers import WarmupCosineSchedule

    from ultramae_monai.engines import layer_decay_param_groups

    net = copy.deepcopy(parser.get_parsed_content("network"))
    net.load_state_dict(state)
    loader = parser.get_parsed_content("train#dataloader")
    loss_fn = parser.get_parsed_content("loss")
    lr, wd, decay = (parser.get_parsed_content(k) for k in ("learning_rate", "weight_decay", "layer_decay"))
    opt = torch.optim.AdamW(layer_decay_param_groups(net, lr, wd, decay), lr=lr)
    sched = WarmupCosineSchedule(opt, warmup_steps=len(loader), t_total=epochs * len(loader))
    device = parser.get_parsed_content("device")
    net.train()
    iters = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
            iters += 1
    return time.perf_counter() - t0, iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--img_size", type=int, default=112)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per_class", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_class_folders(Path(tmp) / "data", args.per_class)
        parser = build(data, Path(tmp) / "run", args)
        parser.get_parsed_content("data")
        state = copy.deepcopy(parser.get_parsed_content("network").state_dict())
        bundle_t, plain_t = [], []
        for _ in range(args.repeats):
            parser = build(data, Path(tmp) / "run", args)  # fresh engine, optimizer and schedule
            t, n = run_bundle(parser, state)
            bundle_t.append(n * args.batch_size / t)
            t, n = run_plain(parser, state, args.epochs)
            plain_t.append(n * args.batch_size / t)
    b, p = statistics.median(bundle_t), statistics.median(plain_t)
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"config: preset {args.preset}, img {args.img_size}, batch {args.batch_size}, epochs {args.epochs}, repeats {args.repeats}"
    )
    print(f"bundle SupervisedTrainer: {b:.1f} img/s (runs {', '.join(f'{v:.1f}' for v in bundle_t)})")
    print(f"plain PyTorch loop:       {p:.1f} img/s (runs {', '.join(f'{v:.1f}' for v in plain_t)})")
    print(f"ratio bundle/plain: {b / p:.3f}")


if __name__ == "__main__":
    main()
