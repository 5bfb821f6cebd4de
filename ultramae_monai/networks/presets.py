"""Named encoder sizes and pretraining recipes, so configs say ``preset: base`` instead of five numbers.

Sizes follow the ViT family (Dosovitskiy et al., ICLR 2021; Touvron et al., DeiT, ICML 2021 for Tiny/Small);
``micro`` is a CI-sized model that trains on a CPU in seconds. Recipes bundle the masking and target choices of
the papers this package reproduces: UltraMAE (CWUS target, 0.90 image / 0.95 video masking), USF-MAE (pixel
target, 0.75) and the original MAE (per-patch normalised pixels, 0.75).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENCODER_PRESETS", "PRETRAINING_RECIPES", "encoder_preset", "pretraining_recipe"]

ENCODER_PRESETS: dict[str, dict[str, int]] = {
    "micro": {"embed_dim": 64, "depth": 2, "num_heads": 4},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}

PRETRAINING_RECIPES: dict[str, dict[str, Any]] = {
    "ultramae": {"target": "cwus", "mask_ratio_image": 0.90, "mask_ratio_video": 0.95},
    "usf-mae": {"target": "pixel", "mask_ratio_image": 0.75, "mask_ratio_video": 0.75},
    "mae": {"target": "norm_pixel", "mask_ratio_image": 0.75, "mask_ratio_video": 0.90},
}


def _lookup(table: dict[str, dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    key = name.lower()
    if key not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    return dict(table[key])


def encoder_preset(name: str) -> dict[str, int]:
    """``embed_dim``, ``depth`` and ``num_heads`` of a named encoder size."""
    return _lookup(ENCODER_PRESETS, name, "encoder preset")


def pretraining_recipe(name: str) -> dict[str, Any]:
    """Target and masking ratios of a named pretraining recipe."""
    return _lookup(PRETRAINING_RECIPES, name, "pretraining recipe")
