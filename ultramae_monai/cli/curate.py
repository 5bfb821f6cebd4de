"""``ultramae curate SRC OUT``: a tree of ultrasound files to a de-identified pretraining set.

OUT is created (its parent must exist) and receives the arrays, ``manifest.jsonl``, ``quarantine.jsonl`` and
``summary.json``; the paths of failed files go to ``OUT/private/failed_files.jsonl``, the operator's own file
(see ``docs/curation.md``). ``--shard I/N`` curates a fixed 1/N of the files (by a hash of the relative path)
for one node of a cluster array; ``ultramae curate-merge`` joins the shard folders.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import Any

from ultramae_monai.cli.arguments import UsageError, add_option, check_output_folder

__all__ = ["EXAMPLE", "NAME", "SUMMARY", "add_arguments", "curate", "parse_shard", "run"]

NAME = "curate"
SUMMARY = "Turn a tree of ultrasound files into a de-identified pretraining set with a JSON Lines manifest."
EXAMPLE = "ultramae curate /data/pacs_export /data/curated --workers 8 --max_side 256"

# options that map one-to-one onto CurationOptions fields: (name, type, help)
_OPTIONS: list[tuple[str, Any, str]] = [
    ("workers", int, "worker processes (one thread each)"),
    ("fps", float, "clip frame rate (every round(source_fps / fps)-th frame)"),
    ("clip_length", int, "frames per clip"),
    ("clips_per_cine", int, "at most this many non-overlapping clips per cine"),
    ("frames_per_cine", int, "stills spread evenly over each cine"),
    ("max_side", int, "reduce the long side to this (0 keeps the native size)"),
    ("color", bool, "keep RGB instead of BT.601 grey"),
    ("confidence", bool, "compute and cache confidence maps"),
    ("dedup_threshold", int, "near-duplicate dHash bit distance (-1: off)"),
    ("val_fraction", float, "share of patients in the validation split"),
    ("group_by", str, "patient group of non-DICOM files: file or folder"),
    ("group_regex", str, "regex on the relative path whose first group names the patient"),
    ("volume_slices", int, "also export this many 2D planes per volume"),
    ("retry_quarantined", bool, "retry files an earlier run quarantined"),
]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) as ``(I, N)``; None stays None."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid shard {text!r}: expected I/N, e.g. 0/3") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"invalid shard {text!r}: need 0 <= I < N")
    return i, n


parse_shard.__name__ = "shard"


def curate(
    src: str,
    out: str,
    config: str | None = None,
    workers: int | None = None,
    fps: float | None = None,
    clip_length: int | None = None,
    clips_per_cine: int | None = None,
    frames_per_cine: int | None = None,
    max_side: int | None = None,
    color: bool | None = None,
    confidence: bool | None = None,
    dedup_threshold: int | None = None,
    val_fraction: float | None = None,
    group_by: str | None = None,
    group_regex: str | None = None,
    volume_slices: int | None = None,
    retry_quarantined: bool | None = None,
    salt: str | None = None,
    progress: bool = True,
    shard: tuple[int, int] | str | None = None,
) -> Any:
    """Curate ``src`` into ``out``: arrays, ``manifest.jsonl``, ``quarantine.jsonl``, ``summary.json``.

    Options left unset come from ``config`` (a YAML like ``configs/curation.yaml``), else the defaults
    of :class:`~ultramae_monai.curation.options.CurationOptions`. The salt comes from ``salt``,
    ``$ULTRAMAE_SALT`` or a secret generated into ``out/.salt``; it is never printed. Re-running
    skips finished files. ``shard=(i, n)`` curates only the files of shard ``i`` of ``n``. Returns the
    :class:`~ultramae_monai.curation.pipeline.CurationReport`, whose text form (what the command prints)
    holds counts only, and the relative paths of the files that failed (the operator's own tree).
    """
    from ultramae_monai.curation.options import load_options
    from ultramae_monai.curation.pipeline import run_curation

    opts = load_options(
        config,
        workers=workers,
        fps=fps,
        clip_length=clip_length,
        clips_per_cine=clips_per_cine,
        frames_per_cine=frames_per_cine,
        max_side=max_side,
        color=color,
        confidence=confidence,
        dedup_threshold=dedup_threshold,
        val_fraction=val_fraction,
        group_by=group_by,
        group_regex=group_regex,
        volume_slices=volume_slices,
        retry_quarantined=retry_quarantined,
    )
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    return run_curation(os.fspath(src), os.fspath(out), opts, salt=salt, progress=progress, shard=shard)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ultramae_monai.curation.options import CurationOptions

    defaults = {f.name: f.default for f in fields(CurationOptions)}
    parser.add_argument("src", metavar="SRC", help="folder of ultrasound files (any depth)")
    parser.add_argument("out", metavar="OUT", help="output folder (created; its parent must exist)")
    add_option(parser, "config", str, None, "YAML of options (like configs/curation.yaml); flags override it")
    for name, kind, text in _OPTIONS:
        add_option(
            parser,
            name,
            kind,
            None,
            text,
            shown_default=f"{'none' if defaults[name] is None else defaults[name]} or --config's value",
        )
    add_option(parser, "salt", str, None, "de-identification salt (else $ULTRAMAE_SALT, else OUT/.salt is generated)")
    add_option(parser, "progress", bool, True, "show a progress bar on stderr")
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="I/N",
        help="curate only shard I of N (0-based; a hash of each relative path decides), for one node of a "
        "cluster array; every shard needs the same --salt [shard, default: none (all files)]",
    )


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    if args.shard is not None and args.salt is None and not os.environ.get("ULTRAMAE_SALT"):
        raise UsageError("--shard needs the same --salt (or $ULTRAMAE_SALT) on every shard, so tokens agree")
    kwargs = {name: getattr(args, name) for name, _, _ in _OPTIONS}
    report = curate(
        args.src, args.out, config=args.config, salt=args.salt, progress=args.progress, shard=args.shard, **kwargs
    )
    print(report)
    return 0
