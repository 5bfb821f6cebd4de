"""The segmentation bundle, read only through ``monai.bundle.ConfigParser`` on the model-zoo ids.

``configs/inference.json`` defines ``network_def`` (normalised ``(B, 1, H, W)`` at ``img_size`` -> logits
``(B, 2, H, W)``), ``preprocessing`` (a Compose on key ``"image"`` that starts by loading the file with
:class:`~ultramae_monai.data.UltrasoundReader`), ``inferer`` and ``postprocessing`` (on keys ``"image"`` and
``"pred"``: argmax, back to the input's geometry); the weights are ``models/model.pt``, a plain state dict of
``network_def``. ``configs/train.json`` fine-tunes the same network with MONAI engines; the label app runs its
``train#trainer`` with the datastore's labels as the data list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImage, LoadImaged

from ultramae_monai.errors import UltraMAEError

__all__ = ["ARCHITECTURE_KEYS", "BundleError", "InferencePipeline", "SegmentationBundle", "TrainIds", "load_weights"]


class BundleError(UltraMAEError):
    """The bundle folder, one of its configs or its weights are missing or do not fit together."""


@dataclass(frozen=True)
class TrainIds:
    """Config ids of ``train.json`` the label app sets or reads (the app's ``train_ids`` conf can rename them).

    ``data`` receives ``{"train": [...], "val": [...]}`` of ``{"image", "label"}`` items; ``extra`` holds any
    further values to set (for example ``{"batch_size": 2}``).
    """

    data: str = "data"
    trainer: str = "train#trainer"
    initialize: str = "initialize"
    network: str = "network"
    max_epochs: str = "max_epochs"
    output_dir: str = "output_dir"
    pretrained: str = "pretrained"
    num_workers: str = "num_workers"
    extra: dict[str, Any] = field(default_factory=dict)


#: settings of a trained model (``settings.json`` beside its weights) that fix the network's architecture and
#: input scaling: a fine-tuning run that starts from those weights must use the same values
ARCHITECTURE_KEYS = (
    "preset",
    "tubelet",
    "in_channels",
    "encoder_options",
    "img_size",
    "decoder",
    "class_names",
    "intensity",
)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``models/model.pt`` (plain) or a MONAI Label / ignite checkpoint (``{"model": ...}``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: one clear error naming it
        raise BundleError(f"cannot load weights ({type(e).__name__}: {e})", path) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError("not a state dict (expected a mapping of tensors, or one under 'model')", path)
    return dict(obj)


class SegmentationBundle:
    """The segmentation bundle's inference and training pieces.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/train.json``, ``models/model.pt``).
        overrides: config values set on both configs (for example ``{"img_size": [64, 64]}``).
    """

    def __init__(self, bundle_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.overrides = dict(overrides or {})
        self.inference_config = self.bundle_dir / "configs" / "inference.json"
        self.train_config = self.bundle_dir / "configs" / "train.json"
        self.metadata = self.bundle_dir / "configs" / "metadata.json"
        self.weights = self.bundle_dir / "models" / "model.pt"
        if not self.inference_config.is_file():
            raise BundleError("not a segmentation bundle: configs/inference.json is missing", self.bundle_dir)
        self.parser = self.inference_parser(self.weights)
        for key in ("network_def", "preprocessing", "inferer", "postprocessing"):
            if key not in self.parser:
                raise BundleError(f"inference.json defines no {key!r}", self.inference_config)

    def _parser(self, config: Path) -> ConfigParser:
        parser = ConfigParser()
        if self.metadata.is_file():
            parser.read_meta(str(self.metadata))
        parser.read_config([str(config)])
        parser["bundle_root"] = str(self.bundle_dir)
        parser.update(self.overrides)
        return parser

    def inference_parser(self, weights: str | os.PathLike) -> ConfigParser:
        """``inference.json`` for ``weights``: the bundle reads the architecture (``settings``) beside its ``ckpt``."""
        parser = self._parser(self.inference_config)
        if "ckpt" in parser:
            parser["ckpt"] = str(weights)
        return parser

    def get(self, key: str, default: Any = None) -> Any:
        """A parsed value of ``inference.json`` for the bundle's weights (``default`` when absent)."""
        return self.parser.get_parsed_content(key) if key in self.parser else default

    def settings(self, weights: str | os.PathLike | None = None) -> dict[str, Any]:
        """The architecture settings beside ``weights`` (default: the bundle's), ``{}`` when there are none."""
        parser = self.parser if weights is None else self.inference_parser(weights)
        settings = parser.get_parsed_content("settings") if "settings" in parser and "ckpt" in parser else {}
        return {k: v for k, v in dict(settings or {}).items() if k in ARCHITECTURE_KEYS}

    def labels(self) -> dict[str, int]:
        """Label name -> value from ``class_names`` / ``label_names`` (a list, background first, or a dict)."""
        names = self.get("class_names", self.get("label_names"))
        if isinstance(names, Mapping):
            return {str(k): int(v) for k, v in names.items() if int(v) != 0}
        if isinstance(names, Sequence) and not isinstance(names, str) and len(names) > 1:
            return {str(n): i for i, n in enumerate(names) if i > 0}
        return {"foreground": 1}

    def pipeline(self, weights: str | os.PathLike | None = None) -> InferencePipeline:
        """Everything inference needs for ``weights`` (default: the bundle's), parsed with their settings."""
        path = Path(weights) if weights else self.weights
        if not path.is_file():
            raise BundleError("weights file is missing", path)
        parser = self.inference_parser(path)
        net = parser.get_parsed_content("network_def")
        try:
            net.load_state_dict(load_weights(path))
        except RuntimeError as e:
            raise BundleError(f"weights do not fit network_def ({e})", path) from e
        pre = parser.get_parsed_content("preprocessing")
        transforms = list(pre.transforms) if isinstance(pre, Compose) else [pre]
        if not transforms or not isinstance(transforms[0], (LoadImaged, LoadImage)):
            raise BundleError("preprocessing must start with LoadImaged (the ultrasound reader)", self.inference_config)
        # one parser for all pieces, so an Invertd on @preprocessing inverts the very transforms that ran
        return InferencePipeline(
            network=net.eval(),
            loader=transforms[0],
            frame_preprocessing=Compose(transforms[1:]),
            inferer=parser.get_parsed_content("inferer"),
            postprocessing=parser.get_parsed_content("postprocessing"),
            weights=path,
        )

    def train_parser(self, overrides: Mapping[str, Any], weights: str | os.PathLike | None = None) -> ConfigParser:
        """``train.json`` with the architecture of ``weights`` (the run's starting point; ``None``: the pretrained
        encoder's, which the bundle reads itself), the bundle-wide overrides, then ``overrides``."""
        if not self.train_config.is_file():
            raise BundleError("the bundle has no configs/train.json: it cannot be fine-tuned", self.bundle_dir)
        parser = self._parser(self.train_config)
        arch = self.settings(weights) if weights is not None else {}
        parser.update({**{k: v for k, v in arch.items() if k in parser and k not in self.overrides}, **dict(overrides)})
        return parser


@dataclass
class InferencePipeline:
    """The inference pieces of one weights file: the loader (the first preprocessing transform) apart from the
    rest, so a cine is loaded once and each frame goes through the rest as a 2D image."""

    network: torch.nn.Module
    loader: Callable
    frame_preprocessing: Compose
    inferer: Callable
    postprocessing: Callable
    weights: Path
