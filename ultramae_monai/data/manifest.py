"""The one manifest format: JSON Lines, one sample per line.

Written by ``ultramae curate``, read by the pretraining and fine-tuning bundles. Paths are relative
to the manifest's folder so a curated set can be moved or mounted elsewhere. No field may hold
protected health information: patient and study are salted hashes, and ``source`` is a salted hash
of the source path (file names often carry patient names).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultramae_monai.errors import UnreadableFileError

__all__ = ["ManifestRecord", "append_records", "iter_manifest", "read_manifest", "write_manifest"]

SCHEMA_VERSION = 1


@dataclass
class ManifestRecord:
    """One curated sample (a still, a clip, or a volume) and where its arrays are."""

    id: str  # stable sample id: hash of (source, sample index); the resume key
    path: str  # array file relative to the manifest folder, channel-first (docs/conventions.md)
    kind: str  # "still" | "cine" | "volume"
    shape: list[int]
    split: str = "train"  # "train" | "val" (grouped by patient)
    source_type: str = ""  # "dicom" | "video" | "image" | "volume"
    modality: str = "US"
    spacing: list[float] = field(default_factory=list)  # mm per spatial axis, NaN unknown
    fps: float | None = None
    patient: str = ""  # salted hash of PatientID (or of the source folder when there is none)
    study: str = ""  # salted hash of StudyInstanceUID (or of the source file)
    source: str = ""  # salted hash of the source path
    confidence: str | None = None  # cached confidence map, same layout as ``path``
    fov_mask: str | None = None  # (1, H, W) scan-region mask
    label: str | None = None  # class label, for fine-tuning manifests
    mask: str | None = None  # segmentation mask, for fine-tuning manifests
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestRecord:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        extra = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__}
        rec = cls(**known)
        rec.extra.update(extra)
        return rec


def iter_manifest(path: str | os.PathLike) -> Iterator[ManifestRecord]:
    """Records of a manifest; a malformed line raises with its line number."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableFileError("manifest not found", p)
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield ManifestRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError) as err:
                raise UnreadableFileError(f"line {lineno} is not a manifest record ({err})", p) from err


def read_manifest(path: str | os.PathLike, split: str | None = None) -> list[ManifestRecord]:
    """All records, optionally only one split."""
    return [r for r in iter_manifest(path) if split is None or r.split == split]


def write_manifest(records: Iterable[ManifestRecord], path: str | os.PathLike) -> None:
    """Write atomically (temporary file, then rename): a reader never sees half a manifest."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(r.to_json() + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_records(records: Iterable[ManifestRecord], path: str | os.PathLike) -> None:
    """Append (for resumable curation); each line is flushed whole."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
