"""The ``ultramae`` command: one entry point that gathers every user-facing verb.

Each verb lives in its own module under ``ultramae_monai.cli`` and is imported lazily, so
``ultramae info`` does not pay for importing the network code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import fire

from ultramae_monai.errors import UltraMAEError

__all__ = ["UltraMAECLI", "main"]


def _verb(module: str, func: str) -> Any:
    return getattr(importlib.import_module(f"ultramae_monai.cli.{module}"), func)


class UltraMAECLI:
    """Ultrasound masked autoencoders on MONAI. Run ``ultramae VERB --help`` for a verb's options."""

    def info(self, path: str, **kwargs: Any) -> Any:
        """What a file is: modality, frames, size, spacing, photometric, FOV box."""
        return _verb("info", "info")(path, **kwargs)

    def convert(self, src: str, out: str, **kwargs: Any) -> Any:
        """Any supported input (DICOM, video, PNG/JPEG, NIfTI/NRRD/MHA) to NIfTI or PNG frames."""
        return _verb("convert", "convert")(src, out, **kwargs)

    def confmap(self, src: str, out: str, **kwargs: Any) -> Any:
        """Ultrasound confidence map (Karamalis et al. 2012) of a file or folder, to .npy/.nii.gz/.png."""
        return _verb("confmap", "confmap")(src, out, **kwargs)

    def curate(self, src: str, out: str, **kwargs: Any) -> Any:
        """Turn a tree of ultrasound files into a de-identified pretraining set with a JSON Lines manifest."""
        return _verb("curate", "curate")(src, out, **kwargs)

    def demo(self, out: str = "demo_out", **kwargs: Any) -> Any:
        """The end-to-end demo on sample ultrasound shipped with the dependencies (no download)."""
        _verb("demo", "demo")(out, **kwargs)  # the summary is in OUT/summary.json


def main(argv: list[str] | None = None) -> int:
    """Console entry point; user-data errors print one line (file: cause) and exit 2."""
    try:
        fire.Fire(UltraMAECLI, command=argv, name="ultramae")
    except UltraMAEError as err:
        print(f"ultramae: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
