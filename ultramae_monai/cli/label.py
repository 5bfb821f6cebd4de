"""``ultramae label STUDIES``: serve the MONAI Label app, so 3D Slicer or OHIF users segment and train interactively.

A thin wrapper around the documented command (``docs/label.md``)::

    monailabel start_server --app ultramae_monai/label/app --studies STUDIES --conf bundle BUNDLE ...

It checks the inputs first (one clear line instead of a server traceback), fills in the app folder and the
bundle, and runs the server in the MONAI Label environment (``scripts/venv_label.sh`` builds ``.venv-label``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ultramae_monai.errors import InvalidInputError, UltraMAEError, UnreadableFileError

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "run", "server_command"]

NAME = "label"
SUMMARY = "Serve the MONAI Label app (segment and fine-tune from 3D Slicer / OHIF) on a folder of images."
EXAMPLE = "ultramae label studies/ --bundle bundles/ultramae_segmentation --pretrained encoder.pt --port 8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ultramae_monai.label import APP_DIR, DEFAULT_BUNDLE

    parser.add_argument("studies", help="folder of 2D ultrasound images / cines (labels go in STUDIES/labels/final)")
    parser.add_argument(
        "--bundle", default=str(DEFAULT_BUNDLE), help="segmentation bundle folder (default: %(default)s)"
    )
    parser.add_argument("--pretrained", default=None, help="pretrained encoder the first fine-tuning starts from")
    parser.add_argument("--model_dir", default=None, help="where fine-tuned weights go (default: APP_DIR/model)")
    parser.add_argument("--max_epochs", type=int, default=10, help="epochs per train request (default: %(default)s)")
    parser.add_argument(
        "--bundle_overrides", default=None, help="JSON config overrides, e.g. '{\"img_size\": [64, 64]}'"
    )
    parser.add_argument("--app_dir", default=str(APP_DIR), help="MONAI Label app folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for other machines")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="any other app conf entry"
    )
    parser.add_argument("--dry_run", action="store_true", help="print the monailabel command and exit")


def server_command(args: argparse.Namespace) -> list[str]:
    """The ``monailabel start_server`` command line these options stand for (inputs checked)."""
    studies, bundle, app_dir = Path(args.studies), Path(args.bundle), Path(args.app_dir)
    if not studies.is_dir():
        raise UnreadableFileError("studies folder not found", studies)
    if not (bundle / "configs" / "inference.json").is_file():
        raise UnreadableFileError("not a segmentation bundle (no configs/inference.json)", bundle)
    if not (app_dir / "main.py").is_file():
        raise UnreadableFileError("not a MONAI Label app folder (no main.py)", app_dir)
    if args.bundle_overrides:
        try:
            json.loads(args.bundle_overrides)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"--bundle_overrides is not JSON ({e})") from e
    conf: list[tuple[str, str]] = [("bundle", str(bundle.resolve())), ("max_epochs", str(args.max_epochs))]
    if args.pretrained:
        conf.append(("pretrained", args.pretrained))
    if args.model_dir:
        conf.append(("model_dir", str(Path(args.model_dir).resolve())))
    if args.bundle_overrides:
        conf.append(("bundle_overrides", args.bundle_overrides))
    conf.extend((str(k), str(v)) for k, v in args.conf)
    cmd = ["monailabel", "start_server", "--app", str(app_dir.resolve()), "--studies", str(studies.resolve())]
    cmd += ["--host", args.host, "--port", str(args.port)]
    for key, value in conf:
        cmd += ["--conf", key, value]
    return cmd


def _check_monailabel() -> None:
    try:
        import monailabel  # noqa: F401
    except ImportError as e:
        raise UltraMAEError(
            "MONAI Label is not installed in this environment: build it with 'bash scripts/venv_label.sh' and run "
            "'.venv-label/bin/ultramae label ...'"
        ) from e


def run(args: argparse.Namespace) -> int:
    cmd = server_command(args)
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    _check_monailabel()
    # the `monailabel` launcher is a shell script that splits arguments on spaces: run its module directly
    return subprocess.call([sys.executable, "-m", "monailabel.main", *cmd[1:]])
