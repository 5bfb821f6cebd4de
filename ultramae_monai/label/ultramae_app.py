"""The UltraMAE MONAI Label app: interactive segmentation of 2D ultrasound, trained from the clinician's labels.

Started by ``monailabel start_server --app <ultramae_monai/label/app> --studies DIR --conf KEY VALUE ...`` (or
``ultramae label DIR``). Conf keys (all optional):

* ``bundle``: the segmentation bundle folder (default: the repository's ``bundles/ultramae_segmentation``);
* ``bundle_overrides``: JSON of config values set on the bundle (for example ``{"img_size": [64, 64]}``);
* ``pretrained``: pretrained-encoder source the first fine-tuning starts from (default: the bundle's own);
* ``model_dir``: where fine-tuned weights and training runs go (default: the app folder's ``model/``);
* ``max_epochs``: epochs per train request (default 10);
* ``train_ids``: JSON renaming the ``train.json`` ids the train task sets (see :class:`TrainIds`).

Tasks: infer and train ``ultramae_segmentation``, scoring ``uncertainty``, strategies ``uncertainty`` and
``random``. Bad input (unreadable or non-ultrasound images, labels of the wrong size, training without
labels) is answered with an HTTP 4xx naming the file and the cause; the server keeps running.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

from ultramae_monai.label import DEFAULT_BUNDLE
from ultramae_monai.label.bundle import SegmentationBundle, TrainIds
from ultramae_monai.label.datastore import UltrasoundDatastore
from ultramae_monai.label.http_errors import as_http
from ultramae_monai.label.infer import UltraMAESegmentationInfer
from ultramae_monai.label.scoring import UncertaintyScoring
from ultramae_monai.label.strategy import MostUncertain
from ultramae_monai.label.train import UltraMAESegmentationTrain

__all__ = ["MODEL_NAME", "UltraMAELabelApp"]

logger = logging.getLogger(__name__)

MODEL_NAME = "ultramae_segmentation"


class UltraMAELabelApp(MONAILabelApp):
    """MONAI Label app on the UltraMAE segmentation bundle (see the module docstring for its conf keys)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundle = SegmentationBundle(
            conf.get("bundle") or DEFAULT_BUNDLE, overrides=json.loads(conf.get("bundle_overrides") or "{}")
        )
        self.model_dir = Path(conf.get("model_dir") or os.path.join(app_dir, "model"))
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.model_file = self.model_dir / f"{MODEL_NAME}.pt"
        self.train_ids = TrainIds(**json.loads(conf.get("train_ids") or "{}"))
        self.segmentation = UltraMAESegmentationInfer(self.bundle, self.model_file)
        self.uncertainty = UncertaintyScoring(self.segmentation)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="UltraMAE ultrasound segmentation",
            description="Segments 2D ultrasound images and cine frames with a fine-tuned UltraMAE encoder, "
            "and fine-tunes it from the labels saved in the datastore.",
            version="1",
            labels=self.bundle.labels(),
        )

    def init_datastore(self) -> Any:
        if self.studies.startswith(("http://", "https://")):  # DICOMweb (OHIF) and other remote stores
            return super().init_datastore()
        return UltrasoundDatastore(
            self.studies,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, Any]:
        return {MODEL_NAME: self.segmentation}

    def init_trainers(self) -> dict[str, Any]:
        return {
            MODEL_NAME: UltraMAESegmentationTrain(
                self.bundle,
                model_dir=self.model_dir,
                model_file=self.model_file,
                pretrained=self.conf.get("pretrained"),
                ids=self.train_ids,
                max_epochs=int(self.conf.get("max_epochs", 10)),
            )
        }

    def init_strategies(self) -> dict[str, Any]:
        return {"uncertainty": MostUncertain(self.uncertainty), "random": Random()}

    def init_scoring_methods(self) -> dict[str, Any]:
        return {"uncertainty": self.uncertainty}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        image = request.get("image")
        missing = (
            isinstance(image, str)
            and not os.path.exists(image)
            and not (datastore or self.datastore()).get_image_uri(image)
        )
        with as_http(not_found=missing, what=f"image {image!r}"):
            return super().infer(request, datastore)

    def train(self, request: dict[str, Any]) -> Any:
        with as_http():
            return super().train(request)

    def bundle_path(self, model: str) -> str | None:
        """Called by MONAI Label right before it dispatches a train request (in process or in the background):
        a request that cannot train (no labels yet) is refused here, with an HTTP error, before anything starts."""
        task = self._trainers.get(model) if model else None
        if isinstance(task, UltraMAESegmentationTrain):
            with as_http():
                task.check_trainable(self.datastore())
        return super().bundle_path(model)
