"""Draw a pretraining run's loss curve (``metrics.jsonl``) as a PNG with Pillow (matplotlib is not a dependency).

python scripts/render_pretrain_results.py RUN_DIR DATA_DIR docs/images --target cwus --title "..."
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from monai.transforms import Compose, ScaleIntensityRanged
from PIL import Image, ImageDraw

from ultramae_monai.data import ManifestDataset
from ultramae_monai.engines import CheckpointManager, reconstruction_grid, save_grid_png
from ultramae_monai.networks import UltraMAE
from ultramae_monai.transforms import RandResizedCropd

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 400, 70, 20, 40, 50


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot(metrics: Path, out: Path, title: str) -> None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    val = {r["step"]: r["val/loss"] for r in rows if r.get("val/loss") is not None}
    steps = sorted(train)
    losses = [train[s] for s in steps]
    lo, hi = 0.0, max(losses) * 1.05
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = LEFT + (step - steps[0]) / max(steps[-1] - steps[0], 1) * (W - LEFT - RIGHT)
        return x, TOP + (1 - (loss - lo) / (hi - lo)) * (H - TOP - BOTTOM)

    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        y = xy(steps[0], v)[1]
        d.line([LEFT - 4, y, LEFT, y], fill="black")
        d.text((5, y - 6), f"{v:.3f}", fill="black")
    tick = 10 ** math.floor(math.log10(max(steps[-1], 10)))
    for s in range(0, steps[-1] + 1, tick):
        x = xy(s, lo)[0]
        d.line([x, H - BOTTOM, x, H - BOTTOM + 4], fill="black")
        d.text((x - 8, H - BOTTOM + 8), str(s), fill="black")
    d.line([xy(s, v) for s, v in zip(steps, losses, strict=True)], fill=(170, 190, 230), width=1)
    d.line([xy(s, v) for s, v in zip(steps, _ema(losses), strict=True)], fill=(20, 60, 160), width=2)
    for s, v in val.items():
        x, y = xy(s, v)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(200, 40, 40))
    d.text((LEFT, 12), title, fill="black")
    d.text((W // 2 - 60, H - 22), "optimiser step", fill="black")
    d.text((W - 330, TOP + 6), "light: per step, dark: EMA(0.1), red: validation", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def _val_dataset(model: UltraMAE, data: Path) -> ManifestDataset:
    """The validation split, with the curated confidence maps when the target uses them."""
    whole = Compose([
        RandResizedCropd(["image", "confidence", "fov_mask"], model.img_size[0], scale=(1, 1), ratio=None,
                         mode=["bilinear", "bilinear", "nearest"], allow_missing_keys=True),
        ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0, b_max=1),
    ])  # fmt: skip
    return ManifestDataset(
        dataset_dir=data, split="val", num_frames=model.num_frames,
        load_confidence=model.target in ("cwus", "pixel+confidence"), transform=whole,
    )  # fmt: skip


def _extras(batch: dict) -> dict:
    return {k: batch[k] for k in ("fov_mask", "confidence") if k in batch}


def reconstructions(run: Path, data: Path, out: Path, model: UltraMAE, samples: int, seed: int) -> list[Path]:
    """Grids of the first validation stills and clips, final checkpoint, fixed masks."""
    state = CheckpointManager(run / "checkpoints").load()
    model.load_state_dict(state["network"])
    model.eval()
    ds = _val_dataset(model, data)
    written = []
    for kind in ("still", "cine"):
        idx = [i for i, k in enumerate(ds.kinds) if k == kind][::3][:samples]  # spread over the split
        if not idx:
            continue
        batch = torch.utils.data.default_collate([ds[i] for i in idx])
        x = batch["image"]
        with torch.no_grad():
            res = model(x, **_extras(batch), generator=torch.Generator().manual_seed(seed))
            images = {"input": x, **model.reconstruct(x, res)}
        path = out / f"pretrain_recon_{kind}_step{state['step']}.png"
        written.append(save_grid_png(reconstruction_grid(images, samples), path))
    return written


def val_loss(model: UltraMAE, data: Path, batch: int = 16, seed: int = 1) -> dict[str, float]:
    """Mean masked-reconstruction loss per kind over the validation split, fixed masks, no augmentation."""
    model.eval()
    ds = _val_dataset(model, data)
    gen, result = torch.Generator().manual_seed(seed), {}
    for kind in ("still", "cine"):
        idx = [i for i, k in enumerate(ds.kinds) if k == kind]
        total = 0.0
        for b in range(0, len(idx), batch):
            items = torch.utils.data.default_collate([ds[i] for i in idx[b : b + batch]])
            with torch.no_grad():
                out = model(items["image"], **_extras(items), generator=gen)
            total += float(out["loss"]) * len(items["image"])
        if idx:
            result[kind] = total / len(idx)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run's output_dir (metrics.jsonl, checkpoints/)")
    ap.add_argument("data", type=Path, help="the manifest folder it trained on")
    ap.add_argument("out", type=Path, help="where the PNGs go")
    ap.add_argument("--title", default="pretraining loss")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--img_size", type=int, default=96)
    ap.add_argument("--num_frames", type=int, default=16)
    ap.add_argument("--target", default="pixel")
    ap.add_argument("--decoder_depth", type=int, default=2)
    ap.add_argument("--decoder_dim", type=int, default=192)
    ap.add_argument("--mask_ratio_image", type=float, default=0.75)
    ap.add_argument("--mask_ratio_video", type=float, default=0.9)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    plot(args.run / "metrics.jsonl", args.out / "pretrain_loss.png", args.title)
    model = UltraMAE(
        preset=args.preset, img_size=args.img_size, num_frames=args.num_frames, target=args.target,
        decoder_depth=args.decoder_depth, decoder_dim=args.decoder_dim,
        mask_ratio_image=args.mask_ratio_image, mask_ratio_video=args.mask_ratio_video,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    print("validation loss, untrained:", val_loss(model, args.data))
    for p in reconstructions(args.run, args.data, args.out, model, args.samples, args.seed):
        print(p)
    print("validation loss, final checkpoint:", val_loss(model, args.data))


if __name__ == "__main__":
    main()
