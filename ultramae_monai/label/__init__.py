"""MONAI Label integration: an app that segments ultrasound with the segmentation bundle and fine-tunes it.

The app (:mod:`ultramae_monai.label.app`) runs in the environment built by ``scripts/venv_label.sh``, where
``monailabel`` is installed; this package itself imports nothing from ``monailabel`` so the rest of the library
(and ``ultramae label --help``) works without it. ``APP_DIR`` is the folder to pass to
``monailabel start_server --app``.
"""

from pathlib import Path

__all__ = ["APP_DIR", "DEFAULT_BUNDLE"]

APP_DIR = Path(__file__).resolve().parent / "app"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "ultramae_segmentation"
