"""Confidence maps on a GPU: 2D img/s by batch (device pipeline vs host assembly), their error, and a 3D volume.

Rows, all timed in one process on the same images (real ultrasound at 224 px), interleaved per batch size:

* ``host assembly``: the model and the 9-point systems assembled in float64 NumPy on the host, copied to the
  device and factorised there exactly (the GPU path before :mod:`ultramae_monai.confmap.device_solver`);
* ``device mixed`` / ``device float64``: the whole map on the device (assembly, float32 factor + float64 CG
  steps, or the exact float64 factor), replayed from a CUDA graph, and the same run eagerly.

Errors are the max abs difference to maps computed by the CPU default solver (``--reference``). With
``--vit-batch`` a UltraMAE ViT-B/16 training step (bf16, 224 px, 75 % masking) is timed too, so the cost of
on-the-fly CWUS is stated as a fraction of a step. ``--volume`` times the full 3D map on the device
(:func:`~ultramae_monai.confmap.volume_device.volume_confidence_map`) and compares it with a CPU map sampled
every 4th voxel (``--volume-reference``); host memory is the process's peak RSS.

    python benchmarks/bench_confmap_gpu.py --images IMGS.npy --reference MAPS.npy --batches 1 16 64 128 \
        --vit-batch 64 --volume Case3.nii.gz --volume-reference MAP_SUB4.npy --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ultramae_monai.confmap.api import ConfMapParams, _finish, _prepare
from ultramae_monai.confmap.device_solver import DeviceMapSolver
from ultramae_monai.confmap.multifrontal import solve_multifrontal_batch
from ultramae_monai.confmap.stencil import stencil_9pt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, budget_s: float, min_runs: int = 3) -> float:
    """Median seconds of ``fn`` after one warm-up call, repeated until ``budget_s`` or ``min_runs``."""
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def host_assembly(images: np.ndarray, device: torch.device) -> np.ndarray:
    """The map with the model assembled on the host and the exact factorisation on ``device``."""
    params = ConfMapParams()
    problems = [_prepare(img, params, None, None) for img in images]
    h, w = images.shape[1:]
    coef, rhs = np.empty((len(images), h * w, 9)), np.empty((len(images), h * w))
    for i, p in enumerate(problems):
        coef[i], rhs[i] = stencil_9pt(p.weights, p.seeds, p.fov)
    x = solve_multifrontal_batch(coef, rhs, (h, w), device=device, mixed=False).cpu().numpy()
    return np.stack([_finish(x[i].reshape(h, w), p) for i, p in enumerate(problems)])


def vit_step_seconds(batch: int, device: torch.device, budget_s: float) -> float:
    """One UltraMAE ViT-B/16 pretraining step (bf16 autocast on CUDA, fused AdamW) at 224 px."""
    from ultramae_monai.networks import UltraMAE

    model = UltraMAE(preset="base", img_size=224, tubelet=(2, 16, 16), target="pixel", mask_ratio_image=0.75)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.rand(batch, 1, 224, 224, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(x)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, device, budget_s)


def bench_2d(args: argparse.Namespace, device: torch.device) -> list[dict]:
    pool = np.load(args.images).astype(np.float64)  # (N, 224, 224) grey in [0, 255]
    ref = np.load(args.reference) if args.reference else None
    rows = []
    graphs = (False, True) if device.type == "cuda" else (False,)  # eager first: a refused capture comes last
    solvers = {
        f"device {p}{' graph' if g else ''}": DeviceMapSolver(precision=p, graphs=g)
        for g in graphs
        for p in ("mixed", "float64")
    }
    solvers["device mixed 2 steps" + (" graph" if device.type == "cuda" else "")] = DeviceMapSolver(
        precision="mixed", steps=2, graphs=device.type == "cuda"
    )
    for batch in args.batches:
        reps = -(-batch // len(pool))
        imgs = np.concatenate([pool] * reps)[:batch]
        x = torch.from_numpy(imgs).to(device)
        row: dict = {"batch": batch}
        for name, solver in solvers.items():
            try:
                maps = solver(x).cpu().numpy()
                sec = _time(lambda s=solver, x=x: s(x), device, args.budget)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                row[name] = {"error": str(err).splitlines()[0][:200]}
                continue
            entry = {"img_per_s": batch / sec, "seconds": sec}
            if ref is not None:
                k = min(batch, len(ref))
                entry["max_abs_err"] = float(np.abs(maps[:k] - ref[:k]).max())
            row[name] = entry
        if batch <= args.host_max_batch:
            maps = host_assembly(imgs, device)
            sec = _time(lambda imgs=imgs: host_assembly(imgs, device), device, args.budget, min_runs=2)
            entry = {"img_per_s": batch / sec, "seconds": sec}
            if ref is not None:
                k = min(batch, len(ref))
                entry["max_abs_err"] = float(np.abs(maps[:k] - ref[:k]).max())
            row["host assembly"] = entry
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def profile_2d(args: argparse.Namespace, device: torch.device) -> dict:
    """Where the time of one float64 batch goes: the top CUDA kernels, and whether CUDA-graph capture took."""
    from torch.profiler import ProfilerActivity, profile

    pool = np.load(args.images).astype(np.float64)
    x = torch.from_numpy(np.concatenate([pool] * -(-args.profile_batch // len(pool)))[: args.profile_batch]).to(device)
    out: dict = {"batch": args.profile_batch}
    for invert in args.invert_below:
        solver = DeviceMapSolver(precision="float64", graphs=False, invert_below=invert)
        sec = _time(lambda s=solver: s(x), device, args.budget)
        out[f"eager invert_below={invert} img/s"] = args.profile_batch / sec
    graphed = DeviceMapSolver(precision="float64", graphs=True)
    graphed(x)
    out["graph captured"] = bool(graphed._captured)
    out["graph refusal"] = graphed.refusal
    solver = DeviceMapSolver(precision="float64", graphs=False)
    solver(x)
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        solver(x)
        _sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    out["top"] = prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows)
    print(json.dumps({k: v for k, v in out.items() if k != "top"}), flush=True)
    print(out["top"], flush=True)
    return out


def bench_3d(args: argparse.Namespace, device: torch.device) -> dict:
    import nibabel as nib

    from ultramae_monai.confmap.volume_device import volume_confidence_map

    vol = torch.from_numpy(np.asarray(nib.load(str(args.volume)).dataobj, dtype=np.float32)).to(device)
    out: dict = {"shape": list(vol.shape)}
    for attempt in ("first", "second"):  # the first includes the per-shape symbolic analysis and library set-up
        _sync(device)
        t0 = time.perf_counter()
        cmap = volume_confidence_map(vol)
        _sync(device)
        out[f"{attempt}_s"] = time.perf_counter() - t0
    sub4 = cmap[::4, ::4, ::4].cpu().numpy()
    if args.volume_reference and args.volume_reference.is_file():
        out["max_abs_err_sub4"] = float(np.abs(sub4 - np.load(args.volume_reference)).max())
    if args.save_volume_sub4:
        np.save(args.save_volume_sub4, sub4)
    out["host_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.type == "cuda":
        out["device_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps({"volume": out}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="(N, H, W) grey images in [0, 255], .npy")
    ap.add_argument("--reference", type=Path, help="(N, H, W) CPU maps of those images, .npy")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64, 128])
    ap.add_argument("--host-max-batch", type=int, default=64, help="largest batch timed with host assembly")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per row")
    ap.add_argument("--vit-batch", type=int, default=0)
    ap.add_argument("--profile-batch", type=int, default=0, help="profile one float64 batch of this size")
    ap.add_argument("--profile-rows", type=int, default=18)
    ap.add_argument("--invert-below", type=int, nargs="+", default=[0, 16, 64], help="variants timed when profiling")
    ap.add_argument("--volume", type=Path)
    ap.add_argument("--volume-reference", type=Path, help="the CPU map of --volume, every 4th voxel, .npy")
    ap.add_argument("--save-volume-sub4", type=Path, help="write the device map, every 4th voxel, here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result: dict = {"device": name, "torch": torch.__version__}
    print(json.dumps(result), flush=True)
    if args.images and args.batches:
        result["2d"] = bench_2d(args, device)
    if args.profile_batch:
        result["profile"] = profile_2d(args, device)
    if args.vit_batch:
        result["vit_step_s"] = vit_step_seconds(args.vit_batch, device, args.budget)
        result["vit_batch"] = args.vit_batch
        print(json.dumps({"vit_step_s": result["vit_step_s"], "batch": args.vit_batch}), flush=True)
    if args.volume:
        result["3d"] = bench_3d(args, device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
