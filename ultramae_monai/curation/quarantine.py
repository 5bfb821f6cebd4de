"""The quarantine report: one JSON line per source file that could not be curated, and why.

A curation run over a PACS export meets truncated transfers, unsupported codecs and stray
non-image files; each is recorded here and the run goes on. The report is inside the curated set,
so it obeys the same rule as the manifest: no source path or name (they can carry PHI), only the
salted source token, the file's suffix and a scrubbed cause.

The operator must still find every failed file: each is also named, by its path relative to SRC, in
``OUT/private/failed_files.jsonl`` (folder mode 0700, file 0600), the operator's own file, which is never
shared with the curated set (file and folder names can carry PHI). :func:`locate` maps tokens back to paths
too, given the source tree and the salt.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ultramae_monai.curation.deid import Hasher, redact_quoted, scrub
from ultramae_monai.errors import UltraMAEError

__all__ = [
    "FAILED_FILES_NAME",
    "PRIVATE_DIR",
    "QUARANTINE_NAME",
    "QuarantineEntry",
    "append_failed_file",
    "append_quarantine",
    "locate",
    "quarantine_entry",
    "read_failed_files",
    "read_quarantine",
]

QUARANTINE_NAME = "quarantine.jsonl"
PRIVATE_DIR = "private"  # the operator's own files: never part of the shared curated set
FAILED_FILES_NAME = "failed_files.jsonl"


@dataclass
class QuarantineEntry:
    source: str  # salted token of the source path (ManifestRecord.source)
    suffix: str  # e.g. ".dcm": says which reader failed without naming the file
    error: str  # exception class
    cause: str  # the reason, with every path and name of the source scrubbed out, and quoted values redacted
    where: str = ""  # innermost code location (module file and line), for bug reports


def quarantine_entry(
    err: BaseException, path: str | os.PathLike, root: str | os.PathLike, source: str
) -> QuarantineEntry:
    """Describe a failure without the source path: the project's errors carry ``cause`` apart from the path."""
    cause = err.cause if isinstance(err, UltraMAEError) else str(err) or type(err).__name__
    inner = err.__cause__
    if inner is not None and isinstance(err, UltraMAEError) and str(inner) not in cause:
        cause = f"{cause} <- {type(inner).__name__}: {inner}"
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    suffix = "".join(Path(path).suffixes[-2:]).lower() if Path(path).suffix else ""
    return QuarantineEntry(
        source, suffix[:12], type(err).__name__, redact_quoted(scrub(cause, path, root))[:500], where
    )


def append_quarantine(entries: Iterable[QuarantineEntry], out: str | os.PathLike) -> None:
    p = Path(out) / QUARANTINE_NAME
    with p.open("a", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(asdict(e)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_failed_file(out: str | os.PathLike, rel: str, entry: QuarantineEntry) -> None:
    """Name a failed file (path relative to SRC) with its cause in ``OUT/private/failed_files.jsonl``."""
    folder = Path(out) / PRIVATE_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / FAILED_FILES_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps({"path": rel, "source": entry.source, "error": entry.error, "cause": entry.cause}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_failed_files(out: str | os.PathLike) -> list[dict[str, str]]:
    """The private failed-file report (latest entry per path, in first-failure order)."""
    path = Path(out) / PRIVATE_DIR / FAILED_FILES_NAME
    if not path.is_file():
        return []
    rows: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a kill
        rows[row["path"]] = row
    return list(rows.values())


def read_quarantine(out: str | os.PathLike) -> list[QuarantineEntry]:
    p = Path(out) / QUARANTINE_NAME
    if not p.is_file():
        return []
    return [QuarantineEntry(**json.loads(line)) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def locate(src: str | os.PathLike, tokens: Iterable[str], salt: bytes, paths: Iterable[Path]) -> dict[str, Path]:
    """Source paths (under ``src``) of the given source tokens, by re-hashing ``paths`` with the salt."""
    wanted = set(tokens)
    hasher = Hasher(salt)
    found: dict[str, Path] = {}
    for p in paths:
        t = hasher(Path(p).relative_to(src).as_posix(), "source")
        if t in wanted:
            found[t] = Path(p)
    return found
