"""MONAI Label infer task: segment a 2D ultrasound image, or every frame of a cine, with the segmentation bundle.

The bundle's ``preprocessing`` loads the file (:class:`~ultramae_monai.data.UltrasoundReader`), then the rest of
it runs on each 2D frame, the bundle's ``inferer`` and ``network_def`` give logits, and its ``postprocessing``
brings the argmax back to the frame's geometry. Stills give a PNG mask ``(H, W)`` holding label values; cines a
NIfTI mask with axes (column, row, frame), as 3D Slicer lays out a stack of 2D frames. A request's ``frame``
(an index) segments one frame of a cine as a 2D PNG instead. Weights: the app's fine-tuned model file when
training has written one, else the bundle's ``models/model.pt``; a newer file is picked up on the next request.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from PIL import Image

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, MetaKeys, kind_of, make_metatensor
from ultramae_monai.data.load import load_ultrasound
from ultramae_monai.errors import InvalidInputError, UltraMAEError, UnreadableFileError
from ultramae_monai.label.bundle import BundleError, InferencePipeline, SegmentationBundle
from ultramae_monai.label.validation import check_ultrasound_file, single_instance

__all__ = ["UltraMAESegmentationInfer", "frames_of", "write_mask"]

logger = logging.getLogger(__name__)


def frames_of(image: MetaTensor) -> list[MetaTensor]:
    """A loaded still as one frame, a cine ``(C, T, H, W)`` as ``T`` stills ``(C, H, W)`` with the cine's metadata."""
    kind = kind_of(image)
    if kind == KIND_STILL:
        return [image]
    if kind != KIND_CINE:
        raise InvalidInputError(
            f"only 2D images and cines can be segmented, got a {kind} of shape {tuple(image.shape)}",
            image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None,
        )
    meta = {k: v for k, v in image.meta.items() if k not in ("affine", MetaKeys.SPACING, MetaKeys.ORIGINAL_SHAPE)}
    spacing = list(image.meta.get(MetaKeys.SPACING, [float("nan")] * 3))[-2:]
    meta.update({MetaKeys.SPACING: spacing, "original_channel_dim": 0})
    return [make_metatensor(image[:, t].as_tensor(), KIND_STILL, dict(meta)) for t in range(image.shape[1])]


def write_mask(mask: np.ndarray, kind: str, out_dir: str | None = None) -> str:
    """``(H, W)`` -> PNG, ``(T, H, W)`` -> NIfTI with axes (column, row, frame); label values as uint8."""
    mask = np.asarray(mask).astype(np.uint8)
    if kind == KIND_STILL:
        path = tempfile.NamedTemporaryFile(suffix=".png", dir=out_dir, delete=False).name
        Image.fromarray(mask).save(path)
        return path
    import nibabel as nib

    path = tempfile.NamedTemporaryFile(suffix=".nii.gz", dir=out_dir, delete=False).name
    nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)), np.eye(4)), path)
    return path


class UltraMAESegmentationInfer(BasicInferTask):
    """Segment 2D ultrasound stills and cine frames with the segmentation bundle.

    Args:
        bundle: the segmentation bundle.
        model_file: the app's fine-tuned weights (used once they exist).
        batch_frames: frames of a cine run through the network at once.
    """

    def __init__(self, bundle: SegmentationBundle, model_file: str | os.PathLike, batch_frames: int = 8) -> None:
        self.bundle = bundle
        self.model_file = Path(model_file)
        self.batch_frames = batch_frames
        super().__init__(
            path=[str(bundle.weights), str(self.model_file)],
            network=None,
            type=InferType.SEGMENTATION,
            labels=bundle.labels(),
            dimension=2,
            description="UltraMAE segmentation of 2D ultrasound images and cine frames",
            config={"frame": ""},
        )
        self._pipeline: tuple[InferencePipeline, float] | None = None
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        """Always listed, so a client can train it; a request before any weights exist gets a clear error."""
        return True

    def weights_path(self) -> Path:
        """The app's fine-tuned model when training has written one, else the bundle's weights."""
        return self.model_file if self.model_file.is_file() else self.bundle.weights

    def pipeline(self) -> InferencePipeline:
        """The bundle's inference pieces for the newest weights, parsed again when the weights file changes (a
        fine-tuned model may carry other settings, e.g. the pretrained encoder's intensity statistics)."""
        path = self.weights_path()
        if not path.is_file():
            raise BundleError(
                "no segmentation weights yet (the bundle has no models/model.pt and the app has not trained): "
                "save labels and run training first",
                path,
            )
        mtime = path.stat().st_mtime
        with self._lock:
            if self._pipeline is None or (self._pipeline[0].weights, self._pipeline[1]) != (path, mtime):
                logger.info(f"loading segmentation weights {path}")
                self._pipeline = (self.bundle.pipeline(path), mtime)
            return self._pipeline[0]

    def load_network(self, device: torch.device) -> torch.nn.Module:
        """The network with the newest weights, on ``device``."""
        return self.pipeline().network.to(device)

    # BasicInferTask hooks: this task runs its own pipeline in __call__, frame by frame.
    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [self.pipeline().loader]

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return []

    def probabilities(
        self, image_path: str, device: torch.device, frame: int | None = None
    ) -> tuple[Any, list, InferencePipeline]:
        """Load and preprocess ``image_path``; per frame, the preprocessed dict with ``"pred"`` logits ``(K, h, w)``;
        and the pipeline that made them."""
        image_path = single_instance(image_path)
        check_ultrasound_file(image_path)
        pipe = self.pipeline()
        try:
            loaded = pipe.loader({"image": image_path})
        except UltraMAEError:
            raise
        except Exception as e:  # LoadImage hides the ultrasound reader's error: ask the reader for its one line
            try:
                load_ultrasound(image_path)
            except UltraMAEError as err:
                raise err from e
            raise UnreadableFileError(f"the bundle's loader cannot read it ({type(e).__name__})", image_path) from e
        image = loaded["image"]
        frames = frames_of(image)
        if frame is not None:
            if not -len(frames) <= frame < len(frames):
                raise InvalidInputError(f"frame {frame} is out of range: the file has {len(frames)}", image_path)
            frames = [frames[frame]]
        net = pipe.network.to(device)
        out = []
        for start in range(0, len(frames), self.batch_frames):
            items = [
                pipe.frame_preprocessing({**loaded, "image": f}) for f in frames[start : start + self.batch_frames]
            ]
            batch = torch.stack([torch.as_tensor(d["image"]) for d in items]).to(device)
            with torch.no_grad():
                logits = pipe.inferer(batch, net)
            for d, lg in zip(items, logits, strict=True):
                d["pred"] = lg.cpu()
                out.append(d)
        return image, out, pipe

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str, dict[str, Any]]:
        req = {**self._config, **request}
        device = torch.device("cuda" if torch.cuda.is_available() and "cuda" in str(req.get("device")) else "cpu")
        frame = req.get("frame")
        frame = int(frame) if frame not in (None, "") else None
        image, items, pipe = self.probabilities(str(req["image"]), device, frame)
        masks = []
        for d in items:
            d["pred"] = MetaTensor(d["pred"], meta=dict(d["image"].meta) if isinstance(d["image"], MetaTensor) else {})
            if isinstance(d["image"], MetaTensor):
                d["pred"].applied_operations = list(d["image"].applied_operations)
            pred = pipe.postprocessing(d)["pred"]
            masks.append(np.asarray(torch.as_tensor(pred).detach().cpu()).reshape(pred.shape[-2:]))
        size = tuple(image.shape[-2:])
        if any(m.shape != size for m in masks):
            raise InvalidInputError(
                f"the bundle's postprocessing gave masks of shape {masks[0].shape}, not the image's {size}",
                str(req["image"]),
            )
        still = frame is not None or kind_of(image) == KIND_STILL
        mask = masks[0] if still else np.stack(masks)
        path = write_mask(mask, KIND_STILL if still else KIND_CINE)
        result = {
            "kind": KIND_STILL if still else KIND_CINE,
            "shape": list(mask.shape),
            "foreground_fraction": float((mask > 0).mean()),
            "weights": pipe.weights.name,
            "label_names": self.labels,
        }
        return path, result
