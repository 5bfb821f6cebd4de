"""Training-step throughput and peak memory: UltraMAE vs MONAI's MaskedAutoEncoderViT, same size.

Both models are ViT-B/16 encoders on 224 x 224 stills with a 4 x 384 decoder (MLP ratio 4, qkv bias, 12 decoder
heads, as MAE), mask ratio 0.75 and a pixel L2 loss on masked tokens; one step = forward + backward + AdamW.
Each model runs in its own subprocess (so peak RSS is its own), alternating ``--rounds`` times; the report gives
medians and ratios. On a CUDA machine ``--device cuda`` runs bf16 autocast and adds model FLOP utilisation from
FLOPs counted with ``torch.utils.flop_counter`` (peak: ``--peak-tflops``, 989 for an H100 SXM dense bf16).

    python benchmarks/bench_network.py --device cpu --batch 8 --steps 3 --rounds 3
    python benchmarks/bench_network.py --device cuda --batch 128 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def build(name: str, size: str) -> torch.nn.Module:
    dims = {"base": (768, 12, 12), "tiny": (192, 12, 3), "micro": (64, 2, 4)}[size]
    if name == "ultramae":
        from ultramae_monai.networks import UltraMAE

        return UltraMAE(
            preset=size, img_size=224, tubelet=(2, 16, 16), target="pixel", mask_ratio_image=0.75,
            decoder_depth=4, decoder_dim=384, decoder_num_heads=12,
        )  # fmt: skip
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(
        in_channels=1, img_size=224, patch_size=16, hidden_size=dims[0], mlp_dim=4 * dims[0], num_layers=dims[1],
        num_heads=dims[2], masking_ratio=0.75, decoder_hidden_size=384, decoder_mlp_dim=1536, decoder_num_layers=4,
        decoder_num_heads=12, spatial_dims=2, qkv_bias=True,
    )  # fmt: skip


def step_fn(name: str, model: torch.nn.Module, x: torch.Tensor):
    if name == "ultramae":
        return lambda: model(x)["loss"]

    def monai_loss() -> torch.Tensor:
        pred, mask = model(x)
        b, c, h, w = x.shape
        target = x.reshape(b, c, h // 16, 16, w // 16, 16).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, 256 * c)
        per_token = ((pred.float() - target) ** 2).mean(-1)
        return (per_token * mask).sum() / mask.sum()

    return monai_loss


def worker(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args.worker, args.size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 1, 224, 224, device=device)
    loss_fn = step_fn(args.worker, model, x)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def step() -> None:
        with amp:
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, optimizer state, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024 + 0.0
    )
    print(json.dumps({"step_s": statistics.median(times), "flops": counter.get_total_flops(), "peak_mib": peak}))


def run_worker(args: argparse.Namespace, name: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--device", args.device, "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps), "--size", args.size]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="base", choices=["base", "tiny", "micro"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--worker", choices=["ultramae", "monai"])
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu")
    results: dict[str, list[dict]] = {"ultramae": [], "monai": []}
    for _ in range(args.rounds):  # interleaved, so load changes hit both models alike
        for name in results:
            results[name].append(run_worker(args, name))
    summary = {}
    for name, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        summary[name] = {
            "images_per_s": args.batch / step,
            "step_s": step,
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
            "gflops_per_step": runs[0]["flops"] / 1e9,
        }
        if args.device == "cuda":
            summary[name]["mfu"] = runs[0]["flops"] / step / (args.peak_tflops * 1e12)
    u, m = summary["ultramae"], summary["monai"]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, device {args.device}")
    print(f"ViT-{args.size} 224 px, batch {args.batch}, {args.steps} steps x {args.rounds} interleaved rounds")
    print("| model | images/s | step (s) | peak mem (MiB) | GFLOP/step |" + (" MFU |" if args.device == "cuda" else ""))
    print("|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for name, s in summary.items():
        row = f"| {name} | {s['images_per_s']:.2f} | {s['step_s']:.3f} | {s['peak_mib']:.0f} | {s['gflops_per_step']:.1f} |"
        print(row + (f" {100 * s['mfu']:.1f}% |" if "mfu" in s else ""))
    print(f"throughput ratio UltraMAE / MONAI: {u['images_per_s'] / m['images_per_s']:.2f}x; "
          f"peak memory ratio: {u['peak_mib'] / max(m['peak_mib'], 1e-9):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
