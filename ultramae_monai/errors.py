"""Exceptions raised by ultramae_monai.

Every error that comes from user data names the file (when there is one) and the cause, so a
curation run over ten thousand files can log one line per bad file and carry on. Third-party
exceptions (pydicom, PyAV, ITK, nibabel) are always wrapped into one of these, with the original
chained as ``__cause__``.
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "ConvergenceError",
    "IncompatibleCheckpointError",
    "InvalidInputError",
    "NotUltrasoundError",
    "UltraMAEError",
    "UnreadableFileError",
    "UnsupportedCodecError",
]


class UltraMAEError(Exception):
    """Base class: ``path`` is the offending file (or None), ``cause`` a short human reason."""

    def __init__(self, cause: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)


class UnreadableFileError(UltraMAEError, OSError):
    """The file is missing, empty, truncated or corrupt, or not in any supported format."""


class UnsupportedCodecError(UltraMAEError):
    """The file is valid but its compression needs a decoder that is not installed."""


class NotUltrasoundError(UltraMAEError, ValueError):
    """A DICOM object whose modality is not ultrasound (pass ``allow_any_modality=True`` to read it anyway)."""


class InvalidInputError(UltraMAEError, ValueError):
    """Array content or shape the operation cannot accept (NaN/Inf, wrong dimensionality, too small)."""


class ConvergenceError(UltraMAEError, RuntimeError):
    """An iterative solver hit its iteration cap before reaching the requested tolerance."""


class IncompatibleCheckpointError(UltraMAEError, ValueError):
    """A checkpoint whose weights do not fit the network (another architecture, or nothing matching)."""
