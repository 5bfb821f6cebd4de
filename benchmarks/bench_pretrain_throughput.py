"""End-to-end pretraining throughput (data pipeline + model) versus model-only throughput.

The question (issue 5, item 6): does the input pipeline keep the accelerator busy? Model-only feeds the
same pre-built batch to forward + backward + AdamW step; end-to-end pulls every batch from the real
pipeline (``ManifestDataset`` memory maps -> crop -> resize, ``KindBatchSampler``, DataLoader worker
processes, pinned memory on GPU). Both run in the same process, interleaved in rounds, so machine noise
hits both alike; the ratio end-to-end / model-only is the figure of merit (target >= 90 %).

    python benchmarks/bench_pretrain_throughput.py --data /tmp/ultramae_real --presets tiny small --img_size 112
    python benchmarks/bench_pretrain_throughput.py --data DIR --presets base --img_size 224 --batch 64 --workers 8  # GPU, bf16

``--data`` is a manifest folder (``scripts/prepare_pretrain_data.py`` or ``ultramae curate``); stills only,
so both sides see identical shapes. ``--pool IMAGES.npz --count N`` instead writes a manifest of ``N`` stills
(random crops and flips of the real images in the ``images`` array of the file, uint8 ``(M, H, W)``) into
``--data`` first, for a machine that holds no curated set.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, ScaleIntensityRanged

from ultramae_monai.data import KindBatchSampler, ManifestDataset, ManifestRecord, write_manifest
from ultramae_monai.engines import build_optimizer
from ultramae_monai.networks import UltraMAE
from ultramae_monai.transforms import RandResizedCropd


def _step(model: UltraMAE, opt: torch.optim.Optimizer, batch: dict, device: torch.device, amp: bool) -> None:
    x = batch["image"].to(device, non_blocking=True)
    fov = batch["fov_mask"].to(device, non_blocking=True)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        loss = model(x, fov_mask=fov)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _timed(steps: int, fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def synthesize(pool: Path, count: int, out: Path, size: int = 240) -> None:
    """``count`` stills of ``size`` px cut from the real images in ``pool`` (random crops, flips), as a manifest."""
    images = np.load(pool)["images"]
    rng = np.random.default_rng(0)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        img = images[rng.integers(len(images))]
        r, c = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
        crop = img[r : r + size, c : c + size]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        rel = f"samples/{i:06d}.npy"
        np.save(out / rel, np.ascontiguousarray(crop)[None])
        records.append(ManifestRecord(id=f"s{i}", path=rel, kind="still", shape=[1, size, size]))
    write_manifest(records, out / "manifest.jsonl")


def bench(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = UltraMAE(preset=preset, img_size=args.img_size, target="pixel", mask_ratio_image=0.75).to(device)
    opt = build_optimizer(model, effective_batch=args.batch)
    crop = Compose([
        RandResizedCropd(["image", "fov_mask"], args.img_size, mode=["bilinear", "nearest"]),
        ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0, b_max=1),
    ])  # fmt: skip
    ds = ManifestDataset(dataset_dir=args.data, kinds=("still",), transform=crop)
    sampler = KindBatchSampler(ds.kinds, batch_size=args.batch, seed=0)
    if len(sampler) == 0:  # every epoch would be empty: the batch stream below would never yield
        raise SystemExit(f"{args.data}: {len(ds)} stills, fewer than one batch of {args.batch}: lower --batch")
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers else None,
        pin_memory=device.type == "cuda",
    )

    def batches():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    stream = batches()
    fixed = next(stream)
    amp = device.type == "cuda"
    for _ in range(args.warmup):  # allocator, worker start-up, first prefetch
        _step(model, opt, next(stream), device, amp)
        _step(model, opt, fixed, device, amp)
    e2e, only = [], []
    for _ in range(args.rounds):
        only.append(args.batch * args.steps / _timed(args.steps, lambda: _step(model, opt, fixed, device, amp), device))
        e2e.append(
            args.batch * args.steps / _timed(args.steps, lambda: _step(model, opt, next(stream), device, amp), device)
        )
    ratios = [a / b for a, b in zip(e2e, only, strict=True)]
    return {
        "preset": preset,
        "img_size": args.img_size,
        "batch": args.batch,
        "workers": args.workers,
        "device": str(device),
        "bf16": amp,
        "model_only_samples_per_s": statistics.median(only),
        "end_to_end_samples_per_s": statistics.median(e2e),
        "ratio_median": statistics.median(ratios),
        "ratio_per_round": ratios,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--img_size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pool", type=Path, help="synthesize --count stills from this .npz into --data first")
    ap.add_argument("--count", type=int, default=2000)
    args = ap.parse_args()
    if args.pool:
        synthesize(args.pool, args.count, args.data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    rows = [bench(p, args, device) for p in args.presets]
    print(
        "| preset | px | batch | workers | device | model-only samples/s | end-to-end samples/s | ratio (median; per round) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rounds = ", ".join(f"{x:.2f}" for x in r["ratio_per_round"])
        print(
            f"| {r['preset']} | {r['img_size']} | {r['batch']} | {r['workers']} | {r['device']}{' bf16' if r['bf16'] else ''} "
            f"| {r['model_only_samples_per_s']:.1f} | {r['end_to_end_samples_per_s']:.1f} | {r['ratio_median']:.2f} ({rounds}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
