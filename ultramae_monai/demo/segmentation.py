"""The demo's downstream stages: fine-tune the segmentation bundle from the pretraining checkpoint, infer, score.

Both run the bundle's own configs (``bundles/ultramae_segmentation/configs/{train,inference}.json``) through
``monai.bundle.ConfigParser`` with small overrides. The fine-tuned run is laid out as a bundle folder
(``configs/`` copied from the repository, ``models/model.pt`` and ``models/settings.json`` written by training),
which is what the deploy app and MONAI Label load.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["dice", "finetune_segmentation", "infer_segmentation", "make_bundle_folder", "write_pairs"]


def write_pairs(cases: Sequence[Any], folder: Path) -> Path:
    """Copy HC18 sample cases into the ``images/`` + ``masks/`` layout the segmentation bundle detects."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        shutil.copy(c.image, folder / "images" / c.image.name)
        shutil.copy(c.mask, folder / "masks" / c.mask.name)
    return folder


def make_bundle_folder(source: Path, dest: Path) -> Path:
    """``dest/configs`` from the repository's bundle (the weights land in ``dest/models`` when training)."""
    shutil.copytree(source / "configs", dest / "configs", dirs_exist_ok=True)
    (dest / "models").mkdir(parents=True, exist_ok=True)
    return dest


def finetune_segmentation(
    bundle: Path,
    dataset_dir: Path,
    pretrained: Path,
    arch: dict[str, Any],
    steps: int,
    seed: int = 0,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``configs/train.json`` of ``bundle`` for about ``steps`` iterations; weights to ``bundle/models``."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(bundle),
            "dataset_dir": str(dataset_dir),
            "output_dir": str(bundle / "models"),
            "pretrained": str(pretrained),
            "preset": arch["preset"],
            "tubelet": list(arch["tubelet"]),
            "img_size": arch["img_size"],
            "seed": seed,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "num_workers": 0,
            "device": "cpu",
            "amp": False,
        }
    )
    parser["max_epochs"] = f"$max(1, -(-{int(steps)} // len(@train#dataloader)))"  # epochs covering ``steps``
    parser.parse()
    parser.get_parsed_content("initialize")  # seeds, data lists, encoder from the checkpoint, settings.json
    data = parser.get_parsed_content("data")
    trainer = parser.get_parsed_content("train#trainer")
    per_epoch = len(parser.get_parsed_content("train#dataloader"))
    evaluator = parser.get_parsed_content("validate#evaluator")
    losses: list[tuple[float, float]] = []
    val_dice: list[tuple[float, float]] = []
    log_every = max(steps // 8, 1)

    def on_iteration(engine: Any) -> None:
        out = engine.state.output
        loss = float(out[0]["loss"] if isinstance(out, list) else out["loss"])
        losses.append((float(engine.state.iteration), loss))
        if engine.state.iteration % log_every == 0:
            say(f"fine-tune step {engine.state.iteration}/{engine.state.max_epochs * per_epoch} loss {loss:.4f}")

    def on_validation(engine: Any) -> None:
        d = float(engine.state.metrics.get("val_mean_dice", float("nan")))
        val_dice.append((float(trainer.state.iteration), d))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, on_validation)
    trainer.run()
    say(f"validation Dice after fine-tuning: {val_dice[-1][1]:.3f}" if val_dice else "no validation ran")
    return {
        "train_images": len(data["train"]),
        "val_images": len(data["val"]),
        "epochs": int(trainer.state.max_epochs),
        "iterations": int(trainer.state.iteration),
        "losses": losses,
        "val_dice": val_dice,
        "best_val_dice": max((d for _, d in val_dice), default=float("nan")),
    }


def infer_segmentation(bundle: Path, images: Path, output_dir: Path) -> list[Path]:
    """Run ``configs/inference.json`` of ``bundle`` on a folder of images; returns the written masks."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(images), "output_dir": str(output_dir)})
    parser["device"] = "cpu"
    parser.parse()
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluator").run()
    return sorted(output_dir.glob("*_mask.*"))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def load_mask(path: Path) -> np.ndarray:
    """A written mask (PNG 0/255) as bool."""
    return np.asarray(Image.open(path).convert("L")) > 0
