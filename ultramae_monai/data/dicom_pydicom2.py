"""The pydicom 2.x decoding path of the DICOM reader, for environments pinned below pydicom 3.

MONAI Label 0.8.5 requires ``pydicom<3``, which has no ``pydicom.pixels`` package (frame-level decoders). This
module gives :mod:`ultramae_monai.data.dicom_reader` the same three names on pydicom 2: ``get_decoder`` returns an
object with pydicom 3's ``is_available`` / ``missing_dependencies`` / ``iter_array`` interface built on the
pydicom 2 pixel-data handlers. Frame selection is kept, but every frame is decoded (``Dataset.pixel_array``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space
from pydicom.uid import UID

__all__ = ["Pydicom2Decoder", "apply_color_lut", "convert_color_space", "get_decoder"]


class Pydicom2Decoder:
    """pydicom 3's decoder interface on the pydicom 2 handlers that support ``tsyntax``."""

    def __init__(self, tsyntax: UID) -> None:
        self.tsyntax = UID(tsyntax)
        self.handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(self.tsyntax)]
        if not self.handlers:
            raise NotImplementedError(f"no pydicom 2 pixel data handler supports {self.tsyntax.name}")

    @property
    def is_available(self) -> bool:
        return any(h.is_available() for h in self.handlers)

    @property
    def missing_dependencies(self) -> list[str]:
        names = [h.__name__.rsplit(".", 1)[-1] for h in self.handlers]
        return [f"one of the pydicom 2 handlers {', '.join(names)} (their packages are not installed)"]

    def iter_array(self, ds: Dataset, indices: Sequence[int]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """``(frame, {"photometric_interpretation": ...})`` for each of ``indices``."""
        pixels = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames == 1:
            pixels = pixels[None]
        props = {"photometric_interpretation": str(ds.get("PhotometricInterpretation", ""))}
        for i in indices:
            yield pixels[int(i)], props


def get_decoder(tsyntax: UID) -> Pydicom2Decoder:
    """Raises ``NotImplementedError`` when no handler knows the transfer syntax, as pydicom 3 does."""
    return Pydicom2Decoder(tsyntax)
