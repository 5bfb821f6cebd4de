"""``ultramae curate SRC OUT``: a tree of ultrasound files to a de-identified pretraining set."""

from __future__ import annotations

import os
from typing import Any

from ultramae_monai.curation.options import load_options

__all__ = ["curate"]


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
) -> Any:
    """Curate ``src`` into ``out``: arrays, ``manifest.jsonl``, ``quarantine.jsonl``, ``summary.json``.

    Options left unset come from ``config`` (a YAML like ``configs/curation.yaml``), else the defaults
    of :class:`~ultramae_monai.curation.options.CurationOptions`. The salt comes from ``salt``,
    ``$ULTRAMAE_SALT`` or a secret generated into ``out/.salt``; it is never printed. Re-running
    skips finished files. Returns the :class:`~ultramae_monai.curation.pipeline.CurationReport`,
    whose text form (what the command prints) holds counts only, never a name or path.
    """
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
    return run_curation(os.fspath(src), os.fspath(out), opts, salt=salt, progress=progress)
