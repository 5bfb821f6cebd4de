"""The repository's segmentation bundle, copied with micro weights, for tests of the label app.

The configs are ``bundles/ultramae_segmentation``'s own; :data:`MICRO` overrides make its network a micro
encoder at 32 px so a CPU trains it in seconds, and ``models/model.pt`` holds that network's initial state dict
(as a released bundle ships its trained one). Tests pass the same overrides to the app (``bundle_overrides``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "ultramae_segmentation"
MICRO = {"preset": "micro", "img_size": 32, "batch_size": 2, "class_names": ["background", "fetal_head"]}


def micro_bundle(root: Path, seed: int = 0) -> Path:
    """Copy the bundle under ``root`` and write micro weights from ``seed``; returns the copy's folder."""
    from monai.bundle import ConfigParser

    bundle = root / BUNDLE.name
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), **MICRO})
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def micro_overrides() -> str:
    """Compact JSON: the `monailabel` launcher splits arguments on spaces."""
    return json.dumps(MICRO, separators=(",", ":"))
