"""Filled masks from outline annotations (HC18 draws each fetal skull as a 1-pixel ellipse outline).

Segmentation losses need the region, not its border: the outline's inside is filled with
``scipy.ndimage.binary_fill_holes`` (an outline that does not close is dilated by one pixel first, then
filled). The output is the image/mask layout the segmentation bundle reads: ``OUT/images`` (links to, or
copies of, the images) and ``OUT/masks`` (0/255 PNGs with the annotation's name).
"""

from __future__ import annotations

import os
import shutil
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ultramae_monai.data.labelled import segmentation_items
from ultramae_monai.errors import InvalidInputError

__all__ = ["fill_outline", "fill_outline_dataset"]


def fill_outline(outline: np.ndarray) -> np.ndarray:
    """Boolean mask of the region an outline (any non-zero pixels) encloses, outline included."""
    edge = np.asarray(outline) > 0
    if edge.ndim == 3:
        edge = edge.any(axis=-1)
    filled = ndimage.binary_fill_holes(edge)
    if filled.sum() <= edge.sum():  # an open outline: close one-pixel gaps, then fill
        filled = ndimage.binary_fill_holes(ndimage.binary_dilation(edge, iterations=1))
    return filled


def fill_outline_dataset(src: str | PathLike, out: str | PathLike, link: bool = True) -> int:
    """Turn an images + outline-annotations folder (any layout :func:`segmentation_items` reads) into
    ``out/images`` + ``out/masks`` with filled masks; returns the number of pairs written.

    Raises:
        InvalidInputError: an annotation that encloses no region, naming the file.
    """
    items = segmentation_items(src)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for it in items:
        img, ann = Path(it["image"]), Path(it["label"])
        mask = fill_outline(np.asarray(Image.open(ann)))
        if not mask.any():
            raise InvalidInputError("annotation holds no outline to fill", ann)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{ann.stem}.png")
        target = out / "images" / img.name
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            os.symlink(img.resolve(), target)
        else:
            shutil.copy2(img, target)
    return len(items)
