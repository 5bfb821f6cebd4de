"""Exceptions raised by ultramae_monai.

Every error that comes from user data names the file (when there is one) and the cause, so a
curation run over ten thousand files can log one line per bad file and carry on. Third-party
exceptions (pydicom, PyAV, ITK, nibabel) are always wrapped into one of these, with the original
chained as ``__cause__``.
"""

from __future__ import annotations

import os
import sys
from os import PathLike
from types import TracebackType

__all__ = [
    "ConvergenceError",
    "IncompatibleCheckpointError",
    "InvalidInputError",
    "NotUltrasoundError",
    "UltraMAEError",
    "UnreadableFileError",
    "UnsupportedCodecError",
    "find_ultramae_error",
    "install_one_line_errors",
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


class NoScanRegionError(UltraMAEError, ValueError):
    """An image in which no ultrasound scan region can be found (random noise, a photograph, a blank frame)."""


class NotUltrasoundError(UltraMAEError, ValueError):
    """A DICOM object whose modality is not ultrasound (pass ``allow_any_modality=True`` to read it anyway)."""


class InvalidInputError(UltraMAEError, ValueError):
    """Array content or shape the operation cannot accept (NaN/Inf, wrong dimensionality, too small)."""


class ConvergenceError(UltraMAEError, RuntimeError):
    """An iterative solver hit its iteration cap before reaching the requested tolerance."""


class IncompatibleCheckpointError(UltraMAEError, ValueError):
    """A checkpoint whose weights do not fit the network (another architecture, or nothing matching)."""


def find_ultramae_error(err: BaseException | None) -> UltraMAEError | None:
    """The :class:`UltraMAEError` behind ``err``: itself or one in its ``__cause__`` / ``__context__`` chain
    (MONAI's ``ConfigParser`` wraps a component's error in a ``RuntimeError``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UltraMAEError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def install_one_line_errors() -> None:
    """An uncaught :class:`UltraMAEError` (or one MONAI wrapped) ends the process with ``error: <cause>`` as its
    last line and exit status 2; other exceptions keep their traceback. ``ULTRAMAE_TRACEBACK=1`` keeps it always.

    For ``python -m monai.bundle run``: a bundle's ``initialize`` calls it first. Returns None, so it can stand in
    a config expression.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        err = find_ultramae_error(value)
        if err is None or os.environ.get("ULTRAMAE_TRACEBACK", "") not in ("", "0"):
            previous(kind, value, tb)
            return
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        sys.stderr.flush()
        import atexit
        import logging

        atexit._run_exitfuncs()  # what a normal exit runs (loggers, TensorBoard writers), then status 2
        logging.shutdown()
        os._exit(2)

    sys.excepthook = hook
