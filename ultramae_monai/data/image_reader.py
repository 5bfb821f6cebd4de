"""Ultrasound stills exported as PNG, JPEG, BMP or TIFF, as ``(C, H, W)`` ``MetaTensor``s.

Why not MONAI's ``PILReader``: it returns ``(W, H[, C])`` (columns first), keeps palette indices and alpha
channels, and gives 16-bit PNGs, RGBA screenshots and palette exports different channel counts, so one
``Compose`` cannot handle them all. Here every still becomes grey (BT.601 luma, the default) or RGB, rows first,
in the file's native intensity range (0..255, or 0..65535 for 16-bit), after the EXIF orientation.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
from monai.data import MetaTensor
from PIL import Image, ImageOps, UnidentifiedImageError

from ultramae_monai.data.convention import KIND_STILL, MetaKeys, make_metatensor
from ultramae_monai.data.reader_base import FunctionImageReader, channels_first, existing_file
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["IMAGE_SUFFIXES", "UltrasoundImageReader", "read_image"]

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "jpe", "bmp", "tif", "tiff")
_GREY_MODES = frozenset({"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _pixels(img: Image.Image) -> tuple[np.ndarray, bool]:
    """Grey ``(H, W)`` or RGB ``(H, W, 3)`` pixels of a decoded image: ``(pixels, is_rgb)``.

    Alpha is dropped (ultrasound exports are opaque; a transparent border is background either way), palette and
    other colour modes (CMYK, YCbCr, LAB) go through Pillow's RGB conversion, 1-bit becomes 0/255.
    """
    mode = img.mode
    if mode in _GREY_MODES:
        return np.asarray(img), False
    if mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L")), False
    if mode == "P" and img.palette is not None and img.palette.mode in ("L", "LA"):
        return np.asarray(img.convert("L")), False
    return np.asarray(img.convert("RGB")), True


def read_image(path: str | PathLike, *, color: bool = False) -> MetaTensor:
    """Read a PNG/JPEG/BMP/TIFF still as ``(C, H, W)``: grey (BT.601 luma) by default, RGB with ``color=True``.

    A multi-page TIFF gives its first page (``source_num_frames`` says how many there are).

    Raises:
        UnreadableFileError: missing, empty, truncated, corrupt or not an image Pillow can decode.
        InvalidInputError: a floating-point image holding NaN or Inf.
    """
    p = existing_file(path)
    try:
        with Image.open(p) as img:
            pages = int(getattr(img, "n_frames", 1))
            img.load()
            fmt = str(img.format)
            mode = img.mode
            pixels, is_rgb = _pixels(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as e:
        raise UnreadableFileError("not an image Pillow can identify", p) from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableFileError(f"corrupt or truncated image ({type(e).__name__}: {e})", p) from e
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise InvalidInputError("image holds NaN or Inf values", p)
    meta = {
        "filename_or_obj": str(p),
        MetaKeys.SOURCE: "image",
        MetaKeys.MODALITY: "US",
        MetaKeys.PHOTOMETRIC: f"{fmt}:{mode}",
        MetaKeys.COLOR: "rgb" if color else "grey",
        MetaKeys.SOURCE_FRAMES: pages,
        MetaKeys.FRAME_INDICES: [0],
        MetaKeys.NUM_FRAMES: 1,
    }
    return make_metatensor(channels_first(pixels, is_rgb, color), KIND_STILL, meta)


class UltrasoundImageReader(FunctionImageReader):
    """MONAI reader for PNG/JPEG/BMP/TIFF stills: ``LoadImage(reader=UltrasoundImageReader())`` gives ``(C, H, W)``."""

    suffixes = IMAGE_SUFFIXES
    read_fn = staticmethod(read_image)

    def __init__(self, color: bool = False) -> None:
        super().__init__(color=color)
