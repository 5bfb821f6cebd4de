"""Every knob of a curation run in one dataclass, with defaults mirrored by ``configs/curation.yaml``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["CurationOptions", "load_options"]


@dataclass
class CurationOptions:
    """What ``ultramae curate`` does to each file; see ``docs/curation.md`` for the reasoning."""

    workers: int = 2  # worker processes (each single-threaded)
    fps: float | None = 10.0  # clip frame rate: every round(source_fps / fps)-th frame; None = native
    clip_length: int = 16  # frames per clip
    clips_per_cine: int = 4  # at most this many non-overlapping clips per cine
    frames_per_cine: int = 8  # stills spread evenly over each cine
    max_side: int | None = 512  # reduce the long side to this (area mean); None/0 = keep
    color: bool = False  # keep RGB (3 channels) instead of BT.601 grey
    confidence: bool = True  # compute and cache confidence maps (Karamalis et al. 2012)
    alpha: float = 2.0  # confidence-map parameters, as ultramae_monai.confmap
    beta: float = 90.0
    gamma: float = 0.05
    dedup_threshold: int = 10  # max dHash bit distance (of 256) to call two frames near-duplicates; -1 = off
    hash_size: int = 16  # dHash side: size*size bits
    val_fraction: float = 0.1  # share of patients in the validation split
    group_by: str = "file"  # patient group of non-DICOM files: "file" or "folder"
    group_regex: str | None = None  # or a regex on the relative path whose first group names the patient
    volume_slices: int = 0  # also export this many 2D slices per volume (rows x columns planes), 0 = none
    retry_quarantined: bool = False  # re-run files quarantined before (unchanged files are otherwise skipped)
    exclude: list[str] = field(default_factory=lambda: ["*annotation*", "*_mask.*", "*_mask_*", ".*", "*/.*"])

    def __post_init__(self) -> None:
        if self.workers < 1 or self.clip_length < 1 or self.clips_per_cine < 0 or self.frames_per_cine < 0:
            raise InvalidInputError("workers and clip_length must be >= 1; clips/frames per cine >= 0")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise InvalidInputError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.group_by not in ("file", "folder"):
            raise InvalidInputError(f"group_by must be 'file' or 'folder', got {self.group_by!r}")
        if self.fps is not None and self.fps <= 0:
            raise InvalidInputError(f"fps must be > 0 (or None for the native rate), got {self.fps}")


def load_options(config: str | os.PathLike | None = None, **overrides: Any) -> CurationOptions:
    """Defaults, then a YAML file's values, then ``overrides`` (keyword arguments that are not None)."""
    values: dict[str, Any] = {}
    if config is not None:
        p = Path(config)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UnreadableFileError(f"curation config unreadable ({err})", p) from err
        if not isinstance(loaded, dict):
            raise InvalidInputError("curation config must be a mapping", p)
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(CurationOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"unknown curation options {unknown}; known: {sorted(known)}")
    return CurationOptions(**values)
