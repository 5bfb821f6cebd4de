"""``ultramae deploy -i IN -o OUT -m BUNDLE_DIR``: the MONAI Deploy app over a folder of DICOM ultrasound.

Also ``python -m ultramae_monai.deploy`` (the MAP's entry point). Without ``-i/-o/-m`` the paths come from the
MAP's environment (``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``). Exit status: 0 all
instances done, 3 done but some input files skipped (named on stderr and in ``result.json``), 2 bad input or
bundle (one line, nothing published), 4 the ``deploy`` extra is not installed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

from ultramae_monai.cli.arguments import add_option
from ultramae_monai.errors import UltraMAEError

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "main", "run"]

NAME = "deploy"
SUMMARY = "Run the MONAI Deploy app: DICOM ultrasound in; DICOM SEG, classification JSON and PNG overlays out."
EXAMPLE = "ultramae deploy -i dicom_in/ -o results/ -m bundles/ultramae_segmentation"
EXIT_OK, EXIT_BAD_INPUT, EXIT_SKIPPED, EXIT_NO_SDK = 0, 2, 3, 4
_STACK_BYTES = 32 * 1024 * 1024
_REEXEC_ENV = "ULTRAMAE_DEPLOY_STACK_RAISED"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    for short, name, variable, fallback, what in (
        ("-i", "input", "HOLOSCAN_INPUT_PATH", "input", "folder of DICOM files (any tree)"),
        ("-o", "output", "HOLOSCAN_OUTPUT_PATH", "output", "folder for the results"),
        ("-m", "model", "HOLOSCAN_MODEL_PATH", "models", "a bundle folder, or a folder of bundle folders"),
    ):
        parser.add_argument(
            short,
            f"--{name}",
            default=env(variable, fallback),
            metavar=name.upper(),
            help=f"{what} [path, default: ${variable} or {fallback}]",
        )
    add_option(parser, "device", str, "auto", "auto (the GPU when there is one), cpu, cuda, cuda:1, ...")
    add_option(parser, "max-overlay-frames", int, 16, "PNG overlays per cine (evenly spread frames)")
    add_option(parser, "sr", bool, True, "also write the classification as a DICOM Comprehensive SR")
    parser.set_defaults(stack_reexec=True)


def _raise_stack_limit(allow_reexec: bool) -> None:
    """Holoscan wants a 32 MB stack: raise the soft limit and restart this command once, so it applies.

    Not done inside a test process (the restart would replace it) or when the hard limit forbids it; Holoscan's
    own warning then says what to do (``ulimit -s 32768``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= _STACK_BYTES:
        return
    if hard != resource.RLIM_INFINITY and hard < _STACK_BYTES:
        return
    if not allow_reexec or os.environ.get(_REEXEC_ENV) or "pytest" in sys.modules:
        return
    resource.setrlimit(resource.RLIMIT_STACK, (_STACK_BYTES, hard))
    os.environ[_REEXEC_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run(args: argparse.Namespace) -> int:
    _raise_stack_limit(getattr(args, "stack_reexec", False))
    try:
        from ultramae_monai.deploy.app import run_deploy
    except ImportError as e:
        print(
            f"ultramae deploy: error: the deploy extra is not installed ({e}); "
            "run scripts/venv_deploy.sh or pip install -e .[deploy]",
            file=sys.stderr,
        )
        return EXIT_NO_SDK
    try:
        result = run_deploy(
            args.input, args.output, args.model, args.device, args.max_overlay_frames, getattr(args, "sr", True)
        )
    except UltraMAEError as err:
        print(f"ultramae deploy: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    done = len(result["instances"])
    print(f"ultramae deploy: {done} instance(s) processed, results in {args.output}")
    for s in result["skipped"]:
        print(f"ultramae deploy: skipped {s['file']}: {s['cause']}", file=sys.stderr)
    return EXIT_SKIPPED if result["skipped"] else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ultramae_monai.deploy", description=SUMMARY, epilog=EXAMPLE)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.stack_reexec = argv is None  # only a real command line is restarted with the larger stack
    return run(args)
