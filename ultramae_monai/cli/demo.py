"""``ultramae demo [OUT]``: the whole pipeline on real ultrasound installed with the project (no download).

Curation, confidence maps, pretraining (long enough to learn), reconstructions of held-out images, a
segmentation fine-tune, inference and a deploy-app run; pictures, ``summary.json`` and ``index.html`` in
``OUT`` (default ``demo_out``). The stages live in :mod:`ultramae_monai.demo` (see ``docs/demo.md``).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "demo", "run"]

NAME = "demo"
SUMMARY = "End-to-end demo on bundled real ultrasound: curate, confidence maps, pretrain, fine-tune, infer, deploy."
EXAMPLE = "ultramae demo demo_out"


def demo(
    out: str = "demo_out",
    steps: int | None = None,
    finetune_steps: int | None = None,
    seed: int = 0,
    deploy: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; ``steps`` / ``finetune_steps`` shorten it (tests), the defaults learn."""
    from ultramae_monai.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=seed, deploy=deploy)
    if steps is not None:
        settings.pretrain_steps = int(steps)
    if finetune_steps is not None:
        settings.finetune_steps = int(finetune_steps)
    return run_demo(out, settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ultramae_monai.cli.arguments import add_option

    parser.add_argument(
        "out", nargs="?", default="demo_out", metavar="OUT", help="results folder (created; default: demo_out)"
    )
    add_option(parser, "steps", int, None, "pretraining steps", shown_default="1000, the learning recipe")
    add_option(parser, "finetune_steps", int, None, "segmentation fine-tuning steps", shown_default="200")
    add_option(parser, "seed", int, 0, "random seed")
    add_option(parser, "deploy", bool, True, "run the deploy app at the end (needs .venv-deploy)")


def run(args: argparse.Namespace) -> int:
    from ultramae_monai.cli.arguments import check_output_folder

    check_output_folder(args.out)
    demo(args.out, steps=args.steps, finetune_steps=args.finetune_steps, seed=args.seed, deploy=args.deploy)
    return 0
