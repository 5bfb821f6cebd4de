"""MONAI Label train task: fine-tune the segmentation bundle on the datastore's labels.

The training itself is the bundle's ``train.json`` read with ``ConfigParser``: the task only overrides its data
list (the datastore's image / label pairs), epochs, output folder, device and pretrained-encoder source, runs its
``train#trainer`` (a MONAI ``SupervisedTrainer``) and publishes the network's state dict to the app's model file,
which the infer task picks up on its next request. The first run starts from the pretrained encoder the bundle
(or the app's ``pretrained`` conf) names; later runs continue from the last published model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

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

    def overrides(self, request: dict[str, Any], datalist: list[dict[str, Any]], output_dir: Path) -> dict[str, Any]:
        """The ``train.json`` values this request sets."""
        ids = self.ids
        values: dict[str, Any] = {
            ids.datalist: datalist,
            ids.val_datalist: [],
            ids.max_epochs: int(request.get("max_epochs", self._config["max_epochs"])),
            ids.output_dir: str(output_dir),
            ids.device: f"$torch.device('{request.get('device', 'cpu')}')",
            **ids.extra,
        }
        if self.pretrained_source is not None:
            values[ids.pretrained] = self.pretrained_source
        return values

    def train(self, rank: int, world_size: int, request: dict[str, Any], datalist: list[dict[str, Any]]) -> dict:
        start = time.time()
        device = request.get("device", "cpu")
        device = device[0] if isinstance(device, list) else device
        request = {**request, "device": device if torch.cuda.is_available() else "cpu"}
        output_dir = Path(self._model_dir) / str(request.get("name", "ultramae_segmentation"))
        output_dir.mkdir(parents=True, exist_ok=True)
        parser = self.bundle.train_parser(self.overrides(request, datalist, output_dir))
        ids = self.ids
        network = parser.get_parsed_content(ids.network)
        resumed = False
        if request.get("pretrained", True) and self.model_file.is_file():
            network.load_state_dict(load_weights(self.model_file))  # continue from the last fine-tuned model
            resumed = True
        trainer = parser.get_parsed_content(ids.trainer)
        logger.info(f"fine-tuning on {len(datalist)} labelled images for {trainer.state.max_epochs} epochs")
        trainer.run()
        tmp = self.model_file.with_suffix(".tmp")
        self.model_file.parent.mkdir(parents=True, exist_ok=True)
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
            "resumed_from_model": resumed,
            "model_file": str(self.model_file),
            "start_ts": int(start),
        }
        Path(self._stats_path).write_text(json.dumps(stats, indent=2))
        return stats
