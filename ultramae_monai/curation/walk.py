"""Finding the curatable files of a source tree, and what kind of source each one is.

A PACS export mixes DICOM files without any suffix, videos, PNG/JPEG screenshots, volumes and
non-image files (reports, CSVs, label masks). A file is taken when the project's readers support
its suffix, or when it is DICOM by content (the ``DICM`` preamble), whatever its name; the source
type decides how a cine is probed before decoding. Label masks and hidden files are excluded by
name patterns (``exclude``), matched case-insensitively against the path relative to the root.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ultramae_monai.errors import UnreadableFileError

__all__ = ["SOURCE_DICOM", "SOURCE_IMAGE", "SOURCE_VIDEO", "SOURCE_VOLUME", "SourceFile", "classify", "find_sources"]

SOURCE_DICOM = "dicom"
SOURCE_VIDEO = "video"
SOURCE_IMAGE = "image"
SOURCE_VOLUME = "volume"


@dataclass(frozen=True)
class SourceFile:
    path: Path
    rel: str  # posix path relative to the source root: hashed, never written
    source_type: str  # "dicom" | "video" | "image" | "volume"


def _suffix_table() -> dict[str, str]:
    """Suffix -> source type, from the suffixes each reader declares."""
    from ultramae_monai.data.dicom_reader import DICOM_SUFFIXES
    from ultramae_monai.data.image_reader import IMAGE_SUFFIXES
    from ultramae_monai.data.video_reader import VIDEO_SUFFIXES
    from ultramae_monai.data.volume_reader import VOLUME_SUFFIXES

    return {
        **dict.fromkeys(IMAGE_SUFFIXES, SOURCE_IMAGE),
        **dict.fromkeys(VOLUME_SUFFIXES, SOURCE_VOLUME),
        **dict.fromkeys(VIDEO_SUFFIXES, SOURCE_VIDEO),
        **dict.fromkeys(DICOM_SUFFIXES, SOURCE_DICOM),
    }


def classify(path: str | os.PathLike, table: dict[str, str] | None = None) -> str | None:
    """Source type of a file from its suffix (DICOM also by content), or None when no reader takes it.

    Only the suffix and 132 bytes are looked at: walking a large export must not open every file twice.
    The readers check the content again (and quarantine what is not what its suffix claims).
    """
    from ultramae_monai.data.dicom_reader import is_dicom_file
    from ultramae_monai.data.reader_base import suffix_of

    kind = (table or _suffix_table()).get(suffix_of(path))
    if kind is not None:
        return kind
    return SOURCE_DICOM if Path(path).is_file() and is_dicom_file(path) else None


def find_sources(src: str | os.PathLike, exclude: Sequence[str] = ()) -> tuple[list[SourceFile], int]:
    """Curatable files under ``src`` in a stable (sorted) order, and how many other files were passed over."""
    root = Path(src)
    if not root.is_dir():
        raise UnreadableFileError("source folder not found", root)
    table = _suffix_table()
    patterns = [p.lower() for p in exclude]
    found: list[SourceFile] = []
    ignored = 0
    seen_dirs: set[tuple[int, int]] = set()
    # archives are often assembled from symlinked folders or mounts: follow links, but never into a loop
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames.clear()
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(rel.lower(), pat) for pat in patterns):
                ignored += 1
                continue
            kind = classify(path, table)
            if kind is None:
                ignored += 1
            else:
                found.append(SourceFile(path, rel, kind))
    return found, ignored
