"""UltraMAE-MONAI: ultrasound masked-autoencoder foundation models built on MONAI.

Sub-packages hold one concept each: ``data`` (readers and the array convention), ``transforms``
(scan region, confidence map), ``confmap`` (the random-walk solvers), ``networks``, ``losses``,
``engines`` (training loops), ``curation`` and ``cli``.
"""

from ultramae_monai.errors import (
    ConvergenceError,
    InvalidInputError,
    NotUltrasoundError,
    UltraMAEError,
    UnreadableFileError,
    UnsupportedCodecError,
)

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "InvalidInputError",
    "NotUltrasoundError",
    "UltraMAEError",
    "UnreadableFileError",
    "UnsupportedCodecError",
    "__version__",
]
