"""``ultramae curate-merge SHARD_DIR... OUT``: join the folders of ``ultramae curate --shard I/N`` runs.

The shards must share one salt (and the same options); OUT is created (its parent must exist) and must not
hold a manifest yet. Arrays are hard-linked when OUT is on the same file system, else copied. The result
equals one run over the whole tree, record for record (``docs/curation.md``, "Curation across machines").
"""

from __future__ import annotations

import argparse
import json

from ultramae_monai.cli.arguments import check_output_folder

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "run"]

NAME = "curate-merge"
SUMMARY = "Join the output folders of sharded 'ultramae curate --shard I/N' runs into one curated set."
EXAMPLE = "ultramae curate-merge /data/curated_shard_0 /data/curated_shard_1 /data/curated_shard_2 /data/curated"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="output folders of the shard runs")
    parser.add_argument("out", metavar="OUT", help="merged output folder (created; its parent must exist)")


def run(args: argparse.Namespace) -> int:
    from ultramae_monai.curation.shard import merge_shards

    check_output_folder(args.out)
    summary = merge_shards(args.shards, args.out)
    print(json.dumps(summary, indent=2))
    return 0
