"""MONAI Label train task: fine-tune the segmentation bundle on the datastore's labels.

The training itself is the bundle's ``train.json`` read with ``ConfigParser``: the task only overrides its data
list (the datastore's image / label pairs), epochs, output folder, device and pretrained-encoder source, runs its
``train#trainer`` (a MONAI ``SupervisedTrainer``) and publishes the network's state dict to the app's model file,
which the infer task picks up on its next request. A run starts from the app's last fine-tuned model, else from
the bundle's ``models/model.pt``, else from the pretrained encoder the bundle's ``initialize`` loads (the
bundle's ``pretrained`` value, or the app's ``pretrained`` conf).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from ultramae_monai.engines.finetune import SETTINGS_NAME
from ultramae_monai.errors import InvalidInputError
from ultramae_monai.label.bundle import SegmentationBundle, TrainIds, load_weights

__all__ = ["NoLabelsError", "UltraMAESegmentationTrain"]

logger = logging.getLogger(__name__)


class NoLabelsError(InvalidInputError):
    """A train request while the datastore holds no final labels."""


class UltraMAESegmentationTrain(BasicTrainTask):
    """Fine-tune the segmentation bundle from the datastore's final labels.

    Args:
        bundle: the segmentation bundle (its ``configs/train.json`` is what runs).
        model_dir: the app's model folder (run outputs and ``train_stats.json``).
        model_file: where the fine-tuned state dict is published (read by the infer task).
        pretrained: pretrained-encoder source for the first run (``None`` keeps the bundle's own setting).
        ids: the ``train.json`` ids this task sets.
        max_epochs: default epochs per train request.
    """

    def __init__(
        self,
        bundle: SegmentationBundle,
        model_dir: str | os.PathLike,
        model_file: str | os.PathLike,
        pretrained: str | None = None,
        ids: TrainIds | None = None,
        max_epochs: int = 10,
    ) -> None:
        self.bundle = bundle
        self.model_file = Path(model_file)
        self.pretrained_source = pretrained
        self.ids = ids or TrainIds()
        super().__init__(
            model_dir=str(model_dir),
            description="Fine-tune the UltraMAE segmentation bundle on the datastore's labels",
            config={
                "name": "ultramae_segmentation",
                "max_epochs": max_epochs,
                "val_split": 0.0,
                "multi_gpu": False,
                "pretrained": True,
                "dataset": ["Dataset"],
                "dataloader": ["DataLoader"],
                "tracking": ["None"],
            },
            amp=False,
            publish_path=str(self.model_file),
            labels=list(bundle.labels()),
            tracking=None,
        )

    # BasicTrainTask's own engine builders are not used: train() runs the bundle's trainer instead.
    def network(self, context: Context) -> torch.nn.Module:
        raise NotImplementedError("the network comes from the bundle's train.json")

    def optimizer(self, context: Context) -> Any:
        raise NotImplementedError("the optimizer comes from the bundle's train.json")

    def loss_function(self, context: Context) -> Any:
        raise NotImplementedError("the loss comes from the bundle's train.json")

    def train_pre_transforms(self, context: Context) -> Any:
        raise NotImplementedError("the transforms come from the bundle's train.json")

    def train_post_transforms(self, context: Context) -> Any:
        raise NotImplementedError("the transforms come from the bundle's train.json")

    def val_inferer(self, context: Context) -> Any:
        raise NotImplementedError("the inferer comes from the bundle's train.json")

    def pre_process(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        datalist = datastore.datalist()
        if not datalist:
            raise NoLabelsError("no labelled images in the datastore: save at least one final label before training")
        return datalist

    def check_trainable(self, datastore: Datastore) -> None:
        """Raise :class:`NoLabelsError` before a train request is dispatched when there is nothing to learn from."""
        self.pre_process({}, datastore)

    @staticmethod
    def split(datalist: list[dict[str, Any]], val_fraction: float = 0.2) -> dict[str, list[dict[str, Any]]]:
        """Train / validation lists: the last ``val_fraction`` of the labels (by image id) once there are 5 or more;
        with fewer, validation runs on the training labels (it then measures fit, not generalisation)."""
        items = sorted(datalist, key=lambda d: str(d["image"]))
        n_val = round(len(items) * val_fraction) if len(items) >= 5 else 0
        if n_val == 0:
            return {"train": items, "val": list(items)}
        return {"train": items[:-n_val], "val": items[-n_val:]}

    def overrides(self, request: dict[str, Any], datalist: list[dict[str, Any]], output_dir: Path) -> dict[str, Any]:
        """The ``train.json`` values this request sets."""
        ids = self.ids
        values: dict[str, Any] = {
            ids.data: self.split(datalist, float(request.get("val_split", 0.2) or 0.0)),
            ids.max_epochs: int(request.get("max_epochs", self._config["max_epochs"])),
            ids.output_dir: str(output_dir),
            ids.num_workers: 0,  # the server's process: no DataLoader workers forked from its threads
            **ids.extra,
        }
        if self.pretrained_source is not None:
            values[ids.pretrained] = self.pretrained_source
        return values

    def start_weights(self, request: dict[str, Any]) -> Path | None:
        """Weights the run starts from: the app's last fine-tuned model, else the bundle's model; ``None`` (the
        pretrained encoder the bundle's ``initialize`` loads) when neither exists or the request says
        ``"pretrained": false``."""
        if not request.get("pretrained", True):
            return None
        for path in (self.model_file, self.bundle.weights):
            if path.is_file():
                return path
        return None

    def train(self, rank: int, world_size: int, request: dict[str, Any], datalist: list[dict[str, Any]]) -> dict:
        start = time.time()
        output_dir = Path(self._model_dir) / str(request.get("name", "ultramae_segmentation"))
        output_dir.mkdir(parents=True, exist_ok=True)
        ids = self.ids
        source = self.start_weights(request)
        parser = self.bundle.train_parser(self.overrides(request, datalist, output_dir), weights=source)
        try:
            network = parser.get_parsed_content(ids.network)
            if ids.initialize in parser:
                parser.get_parsed_content(ids.initialize)  # determinism, data, pretrained encoder, settings.json
            trainer = parser.get_parsed_content(ids.trainer)
        except SystemExit as e:  # the bundle's entry points exit with "error: <file>: <cause>" on bad input
            raise InvalidInputError(str(e.code).removeprefix("error: ")) from e
        encoder = parser[ids.pretrained] if ids.pretrained in parser else "none"
        if source is not None:
            network.load_state_dict(load_weights(source))
        logger.info(f"fine-tuning on {len(datalist)} labelled images from {source or f'the encoder {encoder}'}")
        trainer.run()
        self.model_file.parent.mkdir(parents=True, exist_ok=True)
        settings = output_dir / SETTINGS_NAME  # the run's architecture, read beside the weights at inference
        if settings.is_file():
            shutil.copyfile(settings, self.model_file.parent / SETTINGS_NAME)
        tmp = self.model_file.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, tmp)
        os.replace(tmp, self.model_file)  # atomic: the infer task never sees half a file
        output = trainer.state.output
        loss = (output[0] if isinstance(output, list) and output else output or {}).get("loss")
        stats = {
            "total_time": round(time.time() - start, 2),
            "epochs": int(trainer.state.epoch),
            "iterations": int(trainer.state.iteration),
            "images": len(datalist),
            "loss": float(loss) if loss is not None else None,
            "start_weights": str(source) if source else f"pretrained encoder: {encoder}",
            "model_file": str(self.model_file),
            "start_ts": int(start),
        }
        Path(self._stats_path).write_text(json.dumps(stats, indent=2))
        return stats
