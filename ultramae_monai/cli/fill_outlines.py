"""``ultramae fill-outlines SRC OUT``: outline annotations (HC18's ellipses) into filled masks.

Why a verb: segmentation losses need regions, and HC18 (like many challenge sets) draws each structure as a
1-pixel outline. SRC is any image/mask layout the segmentation bundle reads (``images/`` + ``annotations/``,
or images and ``*_Annotation.png`` side by side); OUT gets ``images/`` (links, or copies with ``--copy``) and
``masks/`` (filled 0/255 PNGs), ready for ``bundles/ultramae_segmentation``.
"""

from __future__ import annotations

import argparse

from ultramae_monai.cli.arguments import add_option

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "run"]

NAME = "fill-outlines"
SUMMARY = "Turn outline annotations (e.g. HC18 ellipses) into filled masks for segmentation fine-tuning."
EXAMPLE = "ultramae fill-outlines ../shared/data/hc18 /data/hc18_masks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="folder with images and outline annotations")
    parser.add_argument("out", metavar="OUT", help="output folder (images/ + masks/)")
    add_option(parser, "copy", bool, False, "copy the images instead of linking them")


def run(args: argparse.Namespace) -> int:
    from ultramae_monai.data.outline_masks import fill_outline_dataset

    n = fill_outline_dataset(args.src, args.out, link=not args.copy)
    print(f"{n} image/mask pairs written to {args.out}")
    return 0
