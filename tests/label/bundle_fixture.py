"""A micro segmentation bundle following contract 4, for tests while (or where) the real bundle is absent.

Same ids as ``bundles/ultramae_segmentation``: ``network_def``, ``preprocessing`` (UltrasoundReader, [0, 1],
resize, normalise), ``inferer``, ``postprocessing`` (argmax, ``Invertd`` back to the input's geometry),
``models/model.pt`` as a plain state dict; ``train.json`` with a ``SupervisedTrainer`` on ``train_datalist``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMG_SIZE = [32, 32]
NETWORK_DEF = {
    "_target_": "ultramae_monai.networks.UltraMAESegmenter",
    "encoder": {
        "_target_": "ultramae_monai.networks.UltraMAEEncoder",
        "tubelet": [2, 16, 16],
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
    },
    "out_channels": 2,
    "decoder_depth": 1,
    "decoder_dim": 32,
}
COMMON = {
    "imports": [
        "$import torch",
        "$import ultramae_monai",
        "$import ultramae_monai.data",
        "$import ultramae_monai.networks",
    ],
    "bundle_root": ".",
    "img_size": IMG_SIZE,
    "intensity_mean": 0.276,
    "intensity_std": 0.210,
    "label_names": ["background", "fetal head"],
    "device": "$torch.device('cpu')",
    "network_def": NETWORK_DEF,
}


def _pre(keys: list[str]) -> list[dict]:
    return [
        {"_target_": "LoadImaged", "keys": keys, "reader": "$ultramae_monai.data.UltrasoundReader()"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0},
        {
            "_target_": "Resized",
            "keys": keys,
            "spatial_size": "@img_size",
            "mode": ["bilinear", "nearest"][: len(keys)],
        },
        {
            "_target_": "NormalizeIntensityd",
            "keys": "image",
            "subtrahend": "@intensity_mean",
            "divisor": "@intensity_std",
        },
    ]


INFERENCE = {
    **COMMON,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": _pre(["image"])},
    "inferer": {"_target_": "SimpleInferer"},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": True,
            },
        ],
    },
}
TRAIN = {
    **COMMON,
    "max_epochs": 1,
    "learning_rate": 0.001,
    "batch_size": 2,
    "train_datalist": [],
    "val_datalist": [],
    "output_dir": "$@bundle_root + '/runs'",
    "pretrained": "none",
    "network": "$@network_def.to(@device) if @pretrained == 'none' else "
    "(lambda n: (n.encoder.load_state_dict(torch.load(@pretrained, weights_only=True)['encoder']), n)[1])"
    "(@network_def.to(@device))",
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
    "optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()", "lr": "@learning_rate"},
    "train": {
        "preprocessing": {"_target_": "Compose", "transforms": _pre(["image", "label"])},
        "dataset": {"_target_": "Dataset", "data": "@train_datalist", "transform": "@train#preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@train#dataset",
            "batch_size": "@batch_size",
            "shuffle": True,
            "num_workers": 0,
        },
        "inferer": {"_target_": "SimpleInferer"},
        "trainer": {
            "_target_": "SupervisedTrainer",
            "device": "@device",
            "max_epochs": "@max_epochs",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": "@optimizer",
            "loss_function": "@loss",
            "inferer": "@train#inferer",
            "amp": False,
        },
    },
}


def write_micro_bundle(root: Path, seed: int = 0) -> Path:
    """Write the micro bundle under ``root`` with weights from ``seed``; returns the bundle folder."""
    from monai.bundle import ConfigParser

    bundle = root / "ultramae_segmentation_micro"
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=2))
    (bundle / "configs" / "train.json").write_text(json.dumps(TRAIN, indent=2))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.0.1", "name": "micro test bundle"}))
    torch.manual_seed(seed)
    parser = ConfigParser(INFERENCE)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle
