"""Training-step throughput, model FLOP utilisation and peak memory: UltraMAE vs MONAI's MaskedAutoEncoderViT.

Both models are ViT-B/16 encoders on 224 x 224 stills with a 4 x 384 decoder (MLP ratio 4, qkv bias, 12
decoder heads, as MAE), mask ratio 0.75 and a pixel L2 loss on masked tokens; one step = forward + backward
+ AdamW. Every configuration runs in its own subprocess (peak memory is its own; a crash or an
out-of-memory error is reported, not fatal). A configuration is ``model:precision:batch[:options]``:

* precision ``bf16`` (autocast) or ``fp32``; MONAI's model crashes under bf16 autocast on CUDA (an
  ``index_put`` dtype mismatch), so a failed bf16 MONAI run is reported and retried in fp32, marked as such;
* options ``fused`` (fused AdamW) and ``compile`` (``torch.compile`` of the model; the visible-token count
  is fixed for a given input size, so the graph compiles once).

MFU is the FLOPs counted by ``torch.utils.flop_counter`` per step over the step time, against the
datasheet dense bf16 peak (``--peak-tflops``, 989 for an H100/H200 SXM) and against a large bf16 matrix
product measured in the same run. On a CPU, fp32 only and no MFU.

Without ``--configs`` a CUDA run measures the table of docs/benchmarks.md (:data:`CUDA_CONFIGS`: fp32 against
fp32 first, then bf16 by batch, then compiled); the summary names both comparisons with MONAI, **fp32 against
fp32** (same precision, same options) and **best against best** (each model's fastest configuration).

    python benchmarks/bench_network.py --device cpu --configs ultramae:fp32:8 monai:fp32:8 --steps 3
    python benchmarks/bench_network.py --device cuda --json network.json
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
from pathlib import Path

import torch

CPU_CONFIGS = ["ultramae:fp32:8", "monai:fp32:8"]
CUDA_CONFIGS = [
    "ultramae:fp32:128:fused", "monai:fp32:128:fused",  # fp32 against fp32: same batch, same optimiser
    "ultramae:bf16:128", "ultramae:bf16:128:fused", "ultramae:bf16:512:fused", "ultramae:bf16:1024:fused",
    "monai:bf16:128:fused",  # fails under autocast; retried in fp32 and marked
    "ultramae:bf16:512:fused:compile", "ultramae:bf16:1024:fused:compile",
]  # fmt: skip


def build(name: str, size: str) -> torch.nn.Module:
    dims = {"base": (768, 12, 12), "small": (384, 12, 6), "tiny": (192, 12, 3), "micro": (64, 2, 4)}[size]
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


def loss_fn(name: str, model: torch.nn.Module):
    if name == "ultramae":
        return lambda x: model(x)["loss"]

    def monai_loss(x: torch.Tensor) -> torch.Tensor:
        pred, mask = model(x)
        b, c, h, w = x.shape
        target = x.reshape(b, c, h // 16, 16, w // 16, 16).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, 256 * c)
        per_token = ((pred.float() - target) ** 2).mean(-1)
        return (per_token * mask).sum() / mask.sum()

    return monai_loss


def worker(args: argparse.Namespace) -> None:
    name, precision, batch, *options = args.worker.split(":")
    batch = int(batch)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(name, args.size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused="fused" in options)
    x = torch.rand(batch, 1, 224, 224, device=device)
    fn = loss_fn(name, torch.compile(model) if "compile" in options else model)
    use_bf16 = precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = fn(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # allocator, optimiser state, kernel selection, compilation
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    )
    from torch.utils.flop_counter import FlopCounterMode

    eager = loss_fn(name, model)
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, torch.bfloat16, enabled=use_bf16):
        eager(x).backward()
    opt.zero_grad(set_to_none=True)
    print(json.dumps({"step_s": statistics.median(times), "flops": counter.get_total_flops(), "peak_mib": peak,
                      "warmup_s": warm_s}))  # fmt: skip


def matmul_peak_tflops(device: torch.device) -> float:
    """bf16 TFLOP/s of an 8192^3 matrix product on random data (mean of 10 after 3 warm-ups)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12


def run_config(args: argparse.Namespace, config: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", config, "--device", args.device, "--size", args.size]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"config": config, "error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {"config": config, "error": lines[-1][:300] if lines else f"exit {done.returncode}"}
    return {"config": config, **json.loads(done.stdout.strip().splitlines()[-1])}


def compare(rows: list[dict]) -> list[str]:
    """UltraMAE against MONAI, said twice: fp32 against fp32 (same batch and options), and best against best.

    A MONAI row that ran in fp32 after bf16 failed counts as fp32 (its config says bf16, its note says why).
    """

    def key(row: dict) -> tuple[str, str, int, tuple[str, ...]]:
        name, precision, batch, *options = row["config"].split(":")
        return name, "fp32" if "note" in row else precision, int(batch), tuple(sorted(options))

    def line(reading: str, ours: dict, theirs: dict) -> str:
        fallback = " run in fp32" if "note" in theirs else ""
        a, b = ours["images_per_s"], theirs["images_per_s"]
        return (
            f"{reading} ({ours['config']} vs {theirs['config']}{fallback}): {a:.1f} / {b:.1f} images/s = {a / b:.2f}x"
        )

    done = [r for r in rows if "images_per_s" in r]
    fp32 = {key(r)[2:]: r for r in done if key(r)[:2] == ("monai", "fp32")}
    lines = [
        line("fp32 against fp32", ours, fp32[key(ours)[2:]])
        for ours in done
        if key(ours)[:2] == ("ultramae", "fp32") and key(ours)[2:] in fp32
    ]
    best = {m: max((r for r in done if key(r)[0] == m), key=lambda r: r["images_per_s"], default=None)
            for m in ("ultramae", "monai")}  # fmt: skip
    if best["ultramae"] and best["monai"]:
        lines.append(line("best against best", best["ultramae"], best["monai"]))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="base", choices=["base", "small", "tiny", "micro"])
    p.add_argument("--configs", nargs="+", help="model:precision:batch[:options] (default: by device, see above)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--worker")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu")
    cuda = args.device == "cuda"
    args.configs = args.configs or (CUDA_CONFIGS if cuda else CPU_CONFIGS)
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    measured_peak = matmul_peak_tflops(torch.device("cuda")) if cuda else None
    rows = []
    for config in args.configs:
        row = run_config(args, config)
        if "error" in row and config.startswith("monai:bf16"):
            # MONAI's MAE fails under bf16 autocast: report it, and run fp32 instead, marked as such
            fallback = run_config(args, config.replace(":bf16:", ":fp32:"))
            fallback["note"] = f"bf16 failed ({row['error']}); fp32 instead"
            rows.append(row)
            row = fallback
        if "step_s" in row:
            batch = int(config.split(":")[2])
            row["images_per_s"] = batch / row["step_s"]
            if cuda:
                row["mfu_datasheet"] = row["flops"] / row["step_s"] / (args.peak_tflops * 1e12)
                row["mfu_measured_peak"] = row["flops"] / row["step_s"] / (measured_peak * 1e12)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"device: {device_name}, torch {torch.__version__}, ViT-{args.size} 224 px, {args.steps} steps")
    if measured_peak:
        print(f"bf16 8192^3 matmul: {measured_peak:.0f} TFLOP/s (datasheet {args.peak_tflops:.0f})")
    print("| config | images/s | step (s) | peak mem (MiB) | TFLOP/step | MFU (datasheet / measured) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | failed: {r['error']} | | | | |")
            continue
        mfu = f"{100 * r['mfu_datasheet']:.1f}% / {100 * r['mfu_measured_peak']:.1f}%" if cuda else "-"
        print(
            f"| {r['config']}{' (' + r['note'] + ')' if 'note' in r else ''} | {r['images_per_s']:.1f} | "
            f"{r['step_s']:.4f} | {r['peak_mib']:.0f} | {r['flops'] / 1e12:.3f} | {mfu} |"
        )
    summary = compare(rows)
    for line in summary:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                         "matmul_peak_tflops": measured_peak, "rows": rows, "comparison": summary},
                                        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
