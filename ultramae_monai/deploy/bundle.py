"""A fine-tuned bundle as the deploy app sees it: ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``.

The bundle is read only through ``monai.bundle.ConfigParser`` on the model-zoo ids above (docs/architecture.md),
never by importing bundle code, so any bundle that follows it (segmentation: logits ``(B, K, H, W)``;
classification: logits ``(B, K)`` and ``class_names``) runs here unchanged.

Why not ``MonaiBundleInferenceOperator``: it expects a TorchScript model and runs one whole image per call. A cine
is segmented frame by frame (the network takes stills ``(B, 1, H, W)``), so this runner loads the file once with the
bundle's own loader, then sends every frame as a still through the rest of the bundle's ``preprocessing``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, MetaKeys, make_metatensor
from ultramae_monai.errors import InvalidInputError, UltraMAEError, UnreadableFileError

__all__ = [
    "CONFIG_PATH",
    "TASK_CLASSIFICATION",
    "TASK_SEGMENTATION",
    "WEIGHTS_PATH",
    "BundleError",
    "BundleRunner",
    "FramePrediction",
    "find_bundles",
]

CONFIG_PATH = Path("configs") / "inference.json"
WEIGHTS_PATH = Path("models") / "model.pt"
TASK_SEGMENTATION = "segmentation"
TASK_CLASSIFICATION = "classification"
_REQUIRED_IDS = ("network_def", "preprocessing", "inferer", "postprocessing")


class BundleError(UltraMAEError):
    """The bundle folder does not follow the bundle contract (missing config, ids or weights)."""


def find_bundles(path: str | Path) -> list[Path]:
    """The bundle folders at ``path``: itself when it holds ``configs/inference.json``, else its sub-folders that do.

    Raises:
        BundleError: no folder there, or no bundle in it.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError("bundle folder not found", root)
    if (root / CONFIG_PATH).is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if (p / CONFIG_PATH).is_file())
    if not found:
        raise BundleError(f"no {CONFIG_PATH} here nor in any sub-folder: not a MONAI bundle", root)
    return found


@dataclass
class FramePrediction:
    """The bundle's output for one frame: a label map ``(H, W)`` in the source pixels, or class probabilities."""

    frame: int
    mask: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _paste(label: torch.Tensor, meta: dict[str, Any], shape: tuple[int, int], source: str) -> np.ndarray:
    """The postprocessed label map in the source image's ``(H, W)``.

    A bundle whose ``postprocessing`` inverts its resize but not its scan-region crop returns the map in the
    cropped box; it is pasted back at ``meta["fov_box"]`` (zero outside the scan region).
    """
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr
    if arr.ndim != 2:
        raise InvalidInputError(f"the bundle's postprocessing gave a label map of shape {arr.shape}, not (1, H, W)")
    out = np.rint(arr).astype(np.uint8)
    if out.shape == tuple(shape):
        return out
    box = meta.get(MetaKeys.FOV_BOX)
    if box is not None and (box[2] - box[0], box[3] - box[1]) == out.shape:
        full = np.zeros(shape, np.uint8)
        full[box[0] : box[2], box[1] : box[3]] = out
        return full
    raise InvalidInputError(
        f"the bundle's label map {out.shape} matches neither the image {tuple(shape)} nor its scan-region box {box}",
        source,
    )


class BundleRunner:
    """Runs one bundle on ultrasound files: stills as they are, cines frame by frame.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``models/model.pt``).
        device: torch device; the bundle's ``device`` id is not used, so one bundle runs on CPU or GPU.

    Raises:
        BundleError: a missing config or weights, a config without the contract's ids, or weights that do not fit
            ``network_def``.
    """

    def __init__(self, bundle_dir: str | Path, device: str | torch.device = "cpu") -> None:
        self.bundle_dir = Path(bundle_dir)
        self.device = torch.device(device)
        config, weights = self.bundle_dir / CONFIG_PATH, self.bundle_dir / WEIGHTS_PATH
        if not config.is_file():
            raise BundleError(f"no {CONFIG_PATH}: not a MONAI bundle", self.bundle_dir)
        if not weights.is_file():
            raise BundleError(
                f"no weights at {WEIGHTS_PATH} (train the bundle or copy model.pt there)", self.bundle_dir
            )
        parser = ConfigParser()
        try:
            parser.read_config(str(config))
        except Exception as e:  # malformed JSON
            raise BundleError(f"cannot read {CONFIG_PATH} ({type(e).__name__}: {e})", self.bundle_dir) from e
        parser["bundle_root"] = str(self.bundle_dir)
        missing = [k for k in _REQUIRED_IDS if k not in parser]
        if missing:
            raise BundleError(f"{CONFIG_PATH} lacks {', '.join(missing)} (the bundle contract)", self.bundle_dir)
        self.parser = parser
        try:
            self.network: torch.nn.Module = parser.get_parsed_content("network_def", instantiate=True)
            self.preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
            self.inferer = parser.get_parsed_content("inferer", instantiate=True)
            self.postprocessing = parser.get_parsed_content("postprocessing", instantiate=True)
        except Exception as e:
            raise BundleError(f"cannot build the bundle's components ({type(e).__name__}: {e})", config) from e
        self._load_weights(weights)
        self.task = self._probe_task(parser)
        names = [str(c) for c in parser.get_parsed_content("class_names")] if "class_names" in parser else None
        self.class_names: list[str] = names or []
        # a segmentation bundle's class_names start with the background; the SEG's segments are the rest
        self.segment_names: list[str] = names[1:] if names and self.task == TASK_SEGMENTATION else []
        if self.task == TASK_CLASSIFICATION and not self.class_names:
            raise BundleError("a classification bundle must define class_names", config)
        self.loader, self.frame_transforms = self._split_loader(self.preprocessing)

    @property
    def name(self) -> str:
        return self.bundle_dir.name

    def _load_weights(self, weights: Path) -> None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BundleError(f"cannot load weights ({type(e).__name__}: {e})", weights) from e
        if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
            state = state["network"]  # a training checkpoint instead of the plain state dict
        try:
            self.network.load_state_dict(state, strict=True)
        except Exception as e:
            raise BundleError(f"weights do not fit network_def ({str(e).splitlines()[0]})", weights) from e
        self.network.to(self.device).eval()

    @torch.no_grad()
    def _probe_task(self, parser: ConfigParser) -> str:
        """Segmentation when the network maps a still to a map ``(B, K, H, W)``, classification for ``(B, K)``."""
        size = int(parser.get_parsed_content("img_size")) if "img_size" in parser else 224
        channels = int(parser.get_parsed_content("in_channels")) if "in_channels" in parser else 1
        probe = torch.zeros(1, channels, size, size, device=self.device)
        try:
            out = self.network(probe)
        except Exception as e:
            raise BundleError(f"network_def fails on a {tuple(probe.shape)} still ({type(e).__name__}: {e})") from e
        return TASK_SEGMENTATION if out.ndim == 4 else TASK_CLASSIFICATION

    @staticmethod
    def _split_loader(preprocessing: Any) -> tuple[Compose, Compose]:
        """The leading ``LoadImaged`` (the bundle's reader and its options) and the transforms after it."""
        transforms = list(preprocessing.transforms) if isinstance(preprocessing, Compose) else [preprocessing]
        if not transforms or not isinstance(transforms[0], LoadImaged):
            raise BundleError("the bundle's preprocessing must start with LoadImaged on 'image' (the bundle contract)")
        return Compose(transforms[:1]), Compose(transforms[1:])

    def load(self, path: str | Path) -> MetaTensor:
        """The file through the bundle's own loader: a still ``(C, H, W)`` or a cine ``(C, T, H, W)``.

        Raises:
            UltraMAEError: the reader's own error (file: cause) when the file cannot be read.
        """
        try:
            return self.loader({"image": str(path)})["image"]
        except Exception as e:
            # MONAI's LoadImage falls back to its other readers and reports theirs; ask the bundle's reader again
            raise self._read_error(path, e) from e

    def _read_error(self, path: str | Path, error: Exception) -> UltraMAEError:
        found: BaseException | None = error
        while found is not None and not isinstance(found, UltraMAEError):
            found = found.__cause__
        if isinstance(found, UltraMAEError):
            return found
        readers = self.loader.transforms[0]._loader.readers
        try:
            readers[-1].read(str(path))  # the reader the bundle names is registered last
        except UltraMAEError as own:
            return own
        except Exception:  # not our reader: fall through to the generic message
            pass
        root: BaseException = error
        while root.__cause__ is not None:
            root = root.__cause__
        return UnreadableFileError(f"the bundle's loader cannot read it ({type(root).__name__}: {root})", path)

    @staticmethod
    def frames(image: MetaTensor) -> list[MetaTensor]:
        """A still as is; a cine as one still per frame, each with the file's metadata (regions, spacing)."""
        if image.meta.get(MetaKeys.KIND) != KIND_CINE and image.ndim == 3:
            return [image]
        meta = {k: v for k, v in image.meta.items() if k not in ("affine", MetaKeys.ORIGINAL_SHAPE)}
        out = []
        for t in range(image.shape[1]):
            frame_meta = copy.deepcopy(meta)
            frame_meta["frame_index"] = t
            out.append(make_metatensor(image.as_tensor()[:, t], KIND_STILL, frame_meta))
        return out

    @torch.no_grad()
    def predict_frame(self, frame: MetaTensor, index: int = 0) -> FramePrediction:
        """One still ``(C, H, W)`` through the rest of ``preprocessing``, ``inferer`` and ``postprocessing``."""
        data = self.frame_transforms({"image": frame})
        x = data["image"][None].to(self.device)
        data["pred"] = self.inferer(x, self.network)[0].detach().cpu()
        data = self.postprocessing(data)
        pred = data["pred"]
        meta = dict(data["image"].meta) if isinstance(data["image"], MetaTensor) else {}
        source = str(frame.meta.get("filename_or_obj", ""))
        if self.task == TASK_CLASSIFICATION:
            logits = torch.as_tensor(pred).float().reshape(-1)
            probs = logits if _is_distribution(logits) else torch.softmax(logits, 0)
            if probs.numel() != len(self.class_names):
                raise BundleError(
                    f"the bundle gave {probs.numel()} class scores for {len(self.class_names)} class_names",
                    self.bundle_dir,
                )
            return FramePrediction(index, probabilities=probs.numpy(), meta=meta)
        shape = tuple(frame.shape[-2:])
        return FramePrediction(index, mask=_paste(pred, meta, shape, source), meta=meta)

    def predict(self, image: MetaTensor) -> list[FramePrediction]:
        """Every frame of a loaded still or cine."""
        return [self.predict_frame(f, i) for i, f in enumerate(self.frames(image))]


def _is_distribution(x: torch.Tensor) -> bool:
    """Probabilities already (a postprocessing with softmax), rather than logits."""
    return bool((x >= 0).all() and (x <= 1).all() and torch.isclose(x.sum(), torch.tensor(1.0), atol=1e-4))
