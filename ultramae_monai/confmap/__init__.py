"""Ultrasound confidence maps (Karamalis et al., MedIA 2012): MONAI's model, exact, on 2D/3D grids."""

from ultramae_monai.confmap.api import (
    BACKENDS,
    ConfMapParams,
    batch_confidence_maps,
    confidence_map,
    solve_confidence_map,
    solve_confidence_maps,
)

__all__ = [
    "BACKENDS",
    "ConfMapParams",
    "batch_confidence_maps",
    "confidence_map",
    "solve_confidence_map",
    "solve_confidence_maps",
]
