"""Readers for ultrasound files and the array convention they all follow."""

from ultramae_monai.data.convention import (
    KIND_CINE,
    KIND_STILL,
    KIND_VOLUME,
    LAYOUTS,
    MetaKeys,
    kind_of,
    make_metatensor,
    spatial_affine,
)

__all__ = [
    "KIND_CINE",
    "KIND_STILL",
    "KIND_VOLUME",
    "LAYOUTS",
    "MetaKeys",
    "kind_of",
    "make_metatensor",
    "spatial_affine",
]
