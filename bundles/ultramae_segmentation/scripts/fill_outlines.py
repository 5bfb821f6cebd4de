"""Prepare outline-annotated data (HC18) for the segmentation bundle: fill each outline into a mask.

    python scripts/fill_outlines.py ../shared/data/hc18 /data/hc18_masks   # images/ + annotations/ in
    python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/hc18_masks

Writes ``OUT/images`` (symbolic links; ``--copy`` copies) and ``OUT/masks`` (filled 0/255 PNGs).
"""

from __future__ import annotations

import argparse
import sys

from ultramae_monai.data.outline_masks import fill_outline_dataset
from ultramae_monai.errors import UltraMAEError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder with images and outline annotations (e.g. hc18 with images/, annotations/)")
    parser.add_argument("out", help="output folder (images/ + masks/)")
    parser.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    args = parser.parse_args(argv)
    try:
        n = fill_outline_dataset(args.src, args.out, link=not args.copy)
    except UltraMAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{n} image/mask pairs written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
