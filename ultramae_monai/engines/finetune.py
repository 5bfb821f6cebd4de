"""What the fine-tuning bundles' configs call: data lists, weights in and out, the run's settings file.

Each function is a thin, checked entry point so a config stays a recipe. Bad input (a class folder without
images, a mask of the wrong size, a checkpoint of another architecture, a label outside the classes) ends the
run before training with one line naming the file (``SystemExit``, so ``python -m monai.bundle run`` prints
the line, not a traceback).

The settings file (``settings.json`` beside ``model.pt`` in the training run's ``output_dir``) records what
evaluation and inference need to rebuild the network and its preprocessing (preset, tubelet, image size,
classes, intensity statistics, split seed, data folder), so ``evaluate.json --ckpt RUN/model.pt`` needs nothing
else.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ultramae_monai.data.convention import INTENSITY_MEAN, INTENSITY_STD
from ultramae_monai.data.splits import finetune_datalists
from ultramae_monai.errors import IncompatibleCheckpointError, UltraMAEError, UnreadableFileError
from ultramae_monai.networks.pretrained import encoder_meta, is_scratch, load_pretrained_encoder

__all__ = [
    "DEFAULT_INTENSITY",
    "SETTINGS_NAME",
    "class_weights",
    "default_checkpoint",
    "encoder_options",
    "exit_on_input_error",
    "init_encoder",
    "intensity_of",
    "load_network_weights",
    "prepare_data",
    "pretrained_architecture",
    "read_settings",
    "write_settings",
]

logger = logging.getLogger("ultramae_monai.finetune")
SETTINGS_NAME = "settings.json"
DEFAULT_INTENSITY = {"mean": INTENSITY_MEAN, "std": INTENSITY_STD}
F = TypeVar("F", bound=Callable[..., Any])


def exit_on_input_error(fn: F) -> F:
    """Turn an :class:`UltraMAEError` into ``SystemExit("error: <file>: <cause>")``: one line, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UltraMAEError as err:
            raise SystemExit(f"error: {err}") from err

    return wrapper  # type: ignore[return-value]


@exit_on_input_error
def prepare_data(dataset_dir: str | os.PathLike, task: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`~ultramae_monai.data.splits.finetune_datalists`, logged, exiting cleanly on bad input."""
    lists = finetune_datalists(dataset_dir, task, **kwargs)
    logger.info(
        "%s data (%s layout) in %s: train %d, val %d, test %d; classes %s",
        task,
        lists["layout"],
        dataset_dir,
        len(lists["train"]),
        len(lists["val"]),
        len(lists["test"]),
        lists["class_names"],
    )
    return lists


@exit_on_input_error
def init_encoder(network: nn.Module, pretrained: str | os.PathLike | None) -> str:
    """Fill ``network.encoder`` from ``pretrained`` (or keep it random for ``none``); returns the report text."""
    report = load_pretrained_encoder(network.encoder, pretrained)  # type: ignore[arg-type]
    text = str(report).replace("\n", "; ")
    logger.info("encoder weights: %s", text)
    return text


@functools.lru_cache(maxsize=8)
def _cached_meta(path: str, mtime: float) -> dict[str, Any]:
    return encoder_meta(path)


def _meta(pretrained: str | os.PathLike | None) -> dict[str, Any]:
    if is_scratch(pretrained):
        return {}
    p = Path(pretrained)  # type: ignore[arg-type]
    return exit_on_input_error(_cached_meta)(str(p), p.stat().st_mtime if p.exists() else 0.0)


def pretrained_architecture(pretrained: str | os.PathLike | None) -> dict[str, Any]:
    """The encoder kwargs a pretraining checkpoint records (``preset``, ``tubelet``, ...); ``{}`` for scratch.

    Configs default ``preset`` and ``tubelet`` to these, so ``--pretrained PATH`` alone builds a matching encoder.
    """
    return dict(_meta(pretrained).get("architecture") or {})


ENCODER_OPTIONS = ("mlp_ratio", "qkv_bias", "cls_token", "norm_eps")  # size comes from the preset


def encoder_options(pretrained: str | os.PathLike | None, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Encoder kwargs beyond preset and tubelet that a checkpoint needs (e.g. MONAI MAE: no qkv bias, a class
    token, eps 1e-5): a training run's settings, else what the pretraining checkpoint records or implies."""
    if settings and "encoder_options" in settings:
        return dict(settings["encoder_options"])
    arch = pretrained_architecture(pretrained)
    return {k: arch[k] for k in ENCODER_OPTIONS if arch.get(k) is not None}


def intensity_of(pretrained: str | os.PathLike | None, settings: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Intensity mean/std: a training run's settings, else the pretraining checkpoint's meta, else the default."""
    if settings and "intensity" in settings:
        return dict(settings["intensity"])
    stats = _meta(pretrained).get("intensity") or {}
    return {
        "mean": float(stats.get("mean", DEFAULT_INTENSITY["mean"])),
        "std": float(stats.get("std", DEFAULT_INTENSITY["std"])),
    }


def write_settings(output_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write ``settings.json`` into the training run's folder (created if needed)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS_NAME
    path.write_text(json.dumps(settings, indent=2, default=str))
    return path


def read_settings(ckpt_or_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The settings written beside a checkpoint (or in a run folder); ``{}`` when there are none."""
    if not ckpt_or_dir:
        return {}
    p = Path(ckpt_or_dir)
    path = p / SETTINGS_NAME if p.is_dir() else p.parent / SETTINGS_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def default_checkpoint(output_dir: str | os.PathLike, bundle_root: str | os.PathLike) -> str:
    """``output_dir/model.pt`` when a training run wrote it there, else the bundle's ``models/model.pt``."""
    run = Path(output_dir) / "model.pt"
    return str(run if run.is_file() else Path(bundle_root) / "models" / "model.pt")


@exit_on_input_error
def load_network_weights(network: nn.Module, ckpt: str | os.PathLike) -> nn.Module:
    """Load a fine-tuned ``model.pt`` (a plain state dict, ``weights_only=True``) strictly into ``network``."""
    path = Path(ckpt)
    if not path.is_file():
        raise UnreadableFileError("checkpoint not found (train first, or pass --ckpt)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors from torch.load
        raise UnreadableFileError(f"not a loadable weights-only checkpoint ({type(err).__name__})", path) from err
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    own = network.state_dict()
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        detail = (f"missing {', '.join(missing[:8])}" if missing else "") + (
            f" shape differs for {', '.join(wrong[:8])}" if wrong else ""
        )
        raise IncompatibleCheckpointError(f"checkpoint of another architecture: {detail.strip()}", path)
    network.load_state_dict({k: state[k] for k in own}, strict=True)
    return network


def class_weights(items: list[dict[str, Any]], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights for cross-entropy, normalised to mean 1 (a class absent from ``items`` gets 1)."""
    counts = torch.zeros(num_classes)
    for it in items:
        counts[int(it["label"])] += 1
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.ones(num_classes))
    return weights / weights.mean()
