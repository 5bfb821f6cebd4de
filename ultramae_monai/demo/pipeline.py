"""The demo pipeline: curate -> confidence maps -> pretrain -> reconstruct -> fine-tune -> infer -> deploy.

Every stage runs the project's own code path on real ultrasound installed with the project
(:mod:`ultramae_monai.demo.samples`): ``ultramae curate``, the pretraining bundle's ``configs/train.json``
(small overrides so it learns in about two minutes on two CPU cores), the segmentation bundle and the deploy
app. Pictures of every stage, ``summary.json`` and an ``index.html`` linking them land in ``out``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultramae_monai.demo import figures
from ultramae_monai.demo import segmentation as seg
from ultramae_monai.demo.progress import Progress
from ultramae_monai.demo.recon_measure import reconstruction_score
from ultramae_monai.demo.samples import hc18_cases, sample_dicoms
from ultramae_monai.errors import UltraMAEError

__all__ = ["DemoSettings", "bundle_dir", "run_demo"]

SALT = "ultramae-demo-salt-not-secret"  # fixed, so the demo's curated ids are reproducible


@dataclass
class DemoSettings:
    """Knobs of the demo; the defaults are the recipe documented in ``docs/demo.md``.

    Pretraining: a ``micro`` UltraMAE (64-wide, 2 blocks; 1-block 64-wide decoder) on 64 px stills, 4 px
    patches, 75 % masking, pixel target, batch 32, peak LR 2e-3 (AdamW, 5 % warm-up then cosine),
    ``pretrain_steps`` optimiser steps.
    """

    pretrain_steps: int = 1000
    img_size: int = 64
    patch: int = 4
    preset: str = "micro"
    decoder_dim: int = 64
    decoder_depth: int = 1
    mask_ratio: float = 0.75
    target: str = "pixel"
    batch_size: int = 32
    peak_lr: float = 2e-3
    finetune_steps: int = 200
    curate_max_side: int = 160  # long side of the curated images (confidence maps cost grows with it)
    heldout_every: int = 6  # every 6th HC18 case is held out (8 of 48) for the scores and pictures
    seed: int = 0
    deploy: bool = True


def bundle_dir(name: str) -> Path:
    """The repository's ``bundles/<name>`` folder (the demo runs the bundles' own configs)."""
    path = Path(__file__).resolve().parents[2] / "bundles" / name
    if not (path / "configs").is_dir():
        raise UltraMAEError(f"bundle {name!r} not found (the demo runs from a source checkout)", path)
    return path


def _split_cases(settings: DemoSettings) -> tuple[list, list]:
    cases = hc18_cases()
    held = [c for i, c in enumerate(cases) if i % settings.heldout_every == settings.heldout_every - 1]
    train = [c for c in cases if c not in held]
    return train, held


def _assemble_archive(root: Path, train_cases: list, held_cases: list) -> dict[str, Any]:
    """An archive as a site would hand it over: DICOMs and PNG exports in folders (copies of the samples)."""
    archive, held = root / "archive", root / "heldout"
    for folder in (archive / "dicom", archive / "hc18", held):
        folder.mkdir(parents=True, exist_ok=True)
    dicoms = sample_dicoms()
    for i, (path, _) in enumerate(dicoms):
        shutil.copy(path, archive / "dicom" / f"us_{i:02d}.dcm")
    for c in train_cases:
        shutil.copy(c.image, archive / "hc18" / c.image.name)
    for c in held_cases:
        shutil.copy(c.image, held / c.image.name)
    return {
        "dicoms": [f"{p.name}: {what}" for p, what in dicoms],
        "hc18_train_images": len(train_cases),
        "hc18_heldout_images": [c.name for c in held_cases],
    }


def _curate(src: Path, dst: Path, max_side: int) -> str:
    from ultramae_monai.cli.curate import curate

    report = curate(
        str(src),
        str(dst),
        max_side=max_side,
        clips_per_cine=0,
        frames_per_cine=4,
        val_fraction=0.0,
        confidence=False,  # the pixel target needs none; stage 2 computes the maps it shows
        workers=1,
        salt=SALT,
        progress=False,
    )
    return str(report)


def _confidence_figure(curated: Path, out: Path, n: int = 4) -> dict[str, Any]:
    """Input | scan region | confidence map (Karamalis et al. 2012) for curated stills of different sources.

    Maps come from :class:`~ultramae_monai.transforms.UltrasoundConfidenceMap` on the curated image inside its
    scan region, as ``ultramae curate`` caches them for the confidence-weighted targets. The demo pretrains
    on the pixel target, so it curates without maps and computes only the ones shown here.
    """
    from ultramae_monai.data.manifest import read_manifest
    from ultramae_monai.transforms import UltrasoundConfidenceMap

    records = [r for r in read_manifest(curated / "manifest.jsonl") if r.kind == "still"]
    by_type: dict[str, list] = {}
    for r in records:  # one still per source file, two source files per type (DICOM, PNG export)
        group = by_type.setdefault(r.source_type, [])
        if len(group) < 2 and all(g.source != r.source for g in group):
            group.append(r)
    picked = [r for group in by_type.values() for r in group][:n]
    transform = UltrasoundConfidenceMap(alpha=2.0, beta=90.0, gamma=0.05)
    rows, stats = [], []
    for r in picked:
        img = np.asarray(np.load(curated / r.path), dtype=np.float32)
        grey = img.mean(axis=0)
        fov = np.load(curated / r.fov_mask)[0] > 0 if r.fov_mask else np.ones(grey.shape, dtype=bool)
        conf = transform(torch.from_numpy(grey[None]), fov_mask=torch.from_numpy(fov[None]))[0].numpy()
        grey = grey / max(float(grey.max()), 1e-6)
        rows.append(
            [figures.as_rgb(grey), figures.as_rgb(fov.astype(np.float32)), figures.as_rgb(conf, cmap="viridis")]
        )
        # confidence falls with depth: the mean of the top rows vs the bottom rows of the scan region
        h = conf.shape[0]
        stats.append(
            {
                "source": r.source_type,
                "shape": list(grey.shape),
                "top_quarter_mean": float(conf[: h // 4][fov[: h // 4]].mean()),
                "bottom_quarter_mean": float(conf[3 * h // 4 :][fov[3 * h // 4 :]].mean()),
            }
        )
    figures.grid(rows, out, titles=("input (curated)", "scan region", "confidence map"), height=180)
    return {"examples": stats}


def _train_stills(curated: Path) -> int:
    from ultramae_monai.data.manifest import read_manifest

    return sum(r.kind == "still" for r in read_manifest(curated / "manifest.jsonl", split="train"))


def _epoch_manifest(curated: Path, batch_size: int, steps_per_epoch: int = 50) -> tuple[Path, int]:
    """The training records repeated so one epoch is ~``steps_per_epoch`` steps; returns (path, records).

    The trainer checkpoints at every epoch end; with 48 stills and a batch of 32 an epoch would be one step.
    """
    from ultramae_monai.data.manifest import read_manifest, write_manifest

    records = [r for r in read_manifest(curated / "manifest.jsonl", split="train") if r.kind == "still"]
    repeats = max(1, -(-steps_per_epoch * batch_size // len(records)))
    path = curated / "manifest_epoch.jsonl"
    write_manifest(records * repeats, path)
    return path, len(records) * repeats


def _heldout_tensors(curated_held: Path, preprocessing: Any) -> dict[str, torch.Tensor]:
    """The held-out stills through the bundle's validation preprocessing (whole image resized, normalised)."""
    from ultramae_monai.data import ManifestDataset

    ds = ManifestDataset(dataset_dir=str(curated_held), split=None, num_frames=1, transform=preprocessing)
    items = [ds[i] for i in range(len(ds))]
    return {
        "image": torch.stack([torch.as_tensor(it["image"]).float() for it in items]),
        "fov_mask": torch.stack([torch.as_tensor(it["fov_mask"]) > 0 for it in items]),
    }


def _pretrain_parser(settings: DemoSettings, curated: Path, out: Path, steps_per_epoch: int) -> Any:
    from monai.bundle import ConfigParser

    root = bundle_dir("ultramae_pretrain")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    warmup_steps = max(1, settings.pretrain_steps // 20)
    parser.update(
        {
            "bundle_root": str(root),
            "dataset_dir": str(curated),
            "output_dir": str(out),
            "seed": settings.seed,
            "preset": settings.preset,
            "target": settings.target,
            "img_size": settings.img_size,
            "tubelet": [1, settings.patch, settings.patch],
            "num_frames": 1,
            "mask_ratio_image": settings.mask_ratio,
            "decoder_depth": settings.decoder_depth,
            "decoder_dim": settings.decoder_dim,
            "crop_scale": [0.5, 1.0],
            "batch_size": settings.batch_size,
            "clip_batch_size": 1,
            "max_epochs": settings.pretrain_steps,  # at least one step per epoch
            "max_steps": settings.pretrain_steps,
            "warmup_epochs": warmup_steps / steps_per_epoch,
            # the bundle scales base_lr by effective_batch / 256 (MAE's rule)
            "base_lr": settings.peak_lr * 256 / settings.batch_size,
            "num_workers": 0,
            "log_every": max(settings.pretrain_steps // 10, 1),
            "preview_every": 0,
            "checkpoint_every": 0,
            "keep_last": 1,
            "resume": False,
            "tensorboard": False,
            "device": "cpu",
        }
    )
    return parser


def _reconstruction_figure(
    model: torch.nn.Module, held: dict[str, torch.Tensor], path: Path, seed: int, rows_shown: int = 6
) -> None:
    """Rows of held-out images: masked input | reconstruction (the visible patches pasted, as MAE shows) | target."""
    x, fov = held["image"], held["fov_mask"]
    model.eval()
    with torch.no_grad():
        out = model(x, fov_mask=fov, generator=torch.Generator().manual_seed(seed))
        rec = model.reconstruct(x, out)
    mean, std = held["intensity"]  # back from the network's normalised intensities to [0, 1]
    x = x * std + mean
    rec = {"masked": rec["masked"] * std + mean, "pred": rec["pred"] * std + mean, "visible": rec["visible"]}
    vis = rec["visible"]
    rec["masked"] = rec["masked"] * vis
    pasted = (vis * x + (1 - vis) * rec["pred"]).clamp(0, 1)
    rows = [
        [
            figures.as_rgb(rec["masked"][i, 0] + (1 - vis[i, 0]) * 0.25),  # masked patches shown mid-grey-dark
            figures.as_rgb(pasted[i, 0]),
            figures.as_rgb(x[i, 0]),
        ]
        for i in range(min(x.shape[0], rows_shown))
    ]
    figures.grid(rows, path, titles=("masked input (75 % hidden)", "reconstruction", "target"), height=160)


def _loss_figure(metrics: Path, path: Path) -> list[tuple[float, float]]:
    points = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if "train/loss" in rec:
                points.append((float(rec["step"]), float(rec["train/loss"])))
    figures.line_plot({"training loss (masked patches)": points}, path, "pretraining loss", log_y=True)
    return points


def run_demo(out: str | Path = "demo_out", settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run every stage into ``out``; returns (and writes) the summary."""
    from ultramae_monai.demo.report import write_index
    from ultramae_monai.engines import seed_everything

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(total=7)
    summary: dict[str, Any] = {"settings": asdict(settings)}
    figs: dict[str, str] = {}
    train_cases, held_cases = _split_cases(settings)

    with progress.stage("curate", "sample DICOMs and HC18 images -> de-identified pretraining set"):
        summary["data"] = _assemble_archive(out, train_cases, held_cases)
        summary["curate"] = _curate(out / "archive", out / "curated", settings.curate_max_side)
        summary["curate_heldout"] = _curate(out / "heldout", out / "curated_heldout", settings.curate_max_side)
        progress.say(summary["curate"])

    with progress.stage("confidence maps", "Karamalis et al. 2012, on curated stills, beside their inputs"):
        summary["confidence_maps"] = _confidence_figure(out / "curated", out / "1_confidence_maps.png")
        figs["confidence maps beside their inputs"] = "1_confidence_maps.png"

    with progress.stage("pretrain", f"UltraMAE {settings.preset}, {settings.pretrain_steps} steps, pretraining bundle"):
        manifest, n_train = _epoch_manifest(out / "curated", settings.batch_size)
        steps_per_epoch = max(n_train // settings.batch_size, 1)
        parser = _pretrain_parser(settings, out / "curated", out / "pretrain", steps_per_epoch)
        parser["manifest"] = str(manifest)
        seed_everything(settings.seed)
        model = parser.get_parsed_content("network")
        held = _heldout_tensors(out / "curated_heldout", parser.get_parsed_content("validate#preprocessing"))
        held["intensity"] = (float(parser["intensity_mean"]), float(parser["intensity_std"]))
        before = reconstruction_score(model, held["image"], held["fov_mask"])
        progress.say(f"held-out reconstruction error / mean-of-visible baseline before training: {before.ratio:.3f}")
        trainer = parser.get_parsed_content("train#trainer")
        trainer.run()
        after = reconstruction_score(model, held["image"], held["fov_mask"])
        progress.say(f"held-out reconstruction error / mean-of-visible baseline after training: {after.ratio:.3f}")
        summary["pretrain"] = {
            "train_stills": _train_stills(out / "curated"),
            "step": int(trainer.state.iteration),
            "loss": float(trainer.state.output["loss"]),
            "checkpoint": str(_latest_checkpoint(out / "pretrain")),
        }
        summary["reconstruction"] = {
            "ratio": after.ratio,
            "ratio_before_training": before.ratio,
            "heldout": after.as_dict(),
            "definition": "mean squared error on masked patches (held-out HC18 images, fixed mask seeds) divided by "
            "that of predicting each masked patch as the mean of the image's visible patches",
        }
        _loss_figure(out / "pretrain" / "metrics.jsonl", out / "2_pretraining_loss.png")
        figs["pretraining loss"] = "2_pretraining_loss.png"

    with progress.stage("reconstruct", "held-out images: masked input / reconstruction / target"):
        _reconstruction_figure(model, held, out / "3_reconstructions.png", settings.seed)
        figs[f"reconstructions of held-out images (ratio {after.ratio:.2f})"] = "3_reconstructions.png"

    bundle = seg.make_bundle_folder(bundle_dir("ultramae_segmentation"), out / "segmentation_bundle")
    with progress.stage(
        "fine-tune", f"segmentation bundle from the pretrained encoder, ~{settings.finetune_steps} steps"
    ):
        seg_data = seg.write_pairs(train_cases, out / "segmentation_data")
        arch = {
            "preset": settings.preset,
            "tubelet": [1, settings.patch, settings.patch],
            "img_size": settings.img_size,
        }
        ft = seg.finetune_segmentation(
            bundle,
            seg_data,
            _latest_checkpoint(out / "pretrain"),
            arch,
            settings.finetune_steps,
            seed=settings.seed,
            say=progress.say,
        )
        figures.line_plot(
            {"training loss (Dice + CE)": ft.pop("losses"), "validation Dice": ft["val_dice"]},
            out / "4_finetune_curves.png",
            "segmentation fine-tuning",
            xlabel="iteration",
        )
        figs["segmentation fine-tuning: loss and validation Dice"] = "4_finetune_curves.png"
        summary["segmentation"] = ft

    with progress.stage("infer", "segmentation bundle's inference.json on the held-out images"):
        masks = seg.infer_segmentation(bundle, out / "heldout", out / "inference")
        summary["segmentation"].update(_segmentation_figure(held_cases, out / "inference", out / "5_segmentation.png"))
        figs[f"segmentation of held-out images (Dice {summary['segmentation']['dice']:.2f})"] = "5_segmentation.png"
        progress.say(f"{len(masks)} masks; held-out Dice {summary['segmentation']['dice']:.3f}")

    with progress.stage("deploy", "MONAI Deploy app on a held-out image written as an ultrasound DICOM"):
        from ultramae_monai.demo.deploy_run import run_deploy_app

        summary["deploy"] = run_deploy_app(
            bundle, held_cases[2], out / "deploy", out / "6_deploy.png", enabled=settings.deploy, say=progress.say
        )
        if summary["deploy"].get("figure"):
            figs["deploy app: DICOM in, segmentation out"] = summary["deploy"]["figure"]

    summary["seconds"] = progress.seconds
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_index(out, summary, figs)
    print(f"results: {(out / 'index.html').resolve()}")
    return summary


def _segmentation_figure(cases: list, masks_dir: Path, path: Path) -> dict[str, Any]:
    """Held-out image | reference mask | predicted mask, as overlays; Dice per case and mean."""
    rows, scores = [], {}
    for c in cases:
        found = sorted(masks_dir.glob(f"{c.name}_mask.*"))
        if not found:
            raise UltraMAEError("inference wrote no mask for this image", c.image)
        img, truth = c.load()
        pred = seg.load_mask(found[0])
        scores[c.name] = seg.dice(pred, truth)
        rows.append([figures.as_rgb(img), figures.overlay(img, truth, (60, 140, 255)), figures.overlay(img, pred)])
    figures.grid(rows[:6], path, titles=("held-out image", "reference (HC18)", "prediction"), height=150)
    return {"dice": float(np.mean(list(scores.values()))), "dice_per_case": scores}


def _latest_checkpoint(folder: Path) -> Path:
    ckpts = sorted((folder / "checkpoints").glob("checkpoint_step*.pt"))
    if not ckpts:
        raise UltraMAEError("pretraining wrote no checkpoint", folder)
    return ckpts[-1]
