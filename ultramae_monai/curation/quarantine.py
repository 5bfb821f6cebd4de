"""The quarantine report: one JSON line per source file that could not be curated, and why.

A curation run over a PACS export meets truncated transfers, unsupported codecs and stray
non-image files; each is recorded here and the run goes on. The report is inside the curated set,
so it obeys the same rule as the manifest: no source path or name (they can carry PHI), only the
salted source token, the file's suffix and a scrubbed cause. :func:`locate` maps tokens back to
paths for the operator, who has the source tree and the salt anyway.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ultramae_monai.curation.deid import Hasher, scrub
from ultramae_monai.errors import UltraMAEError

__all__ = ["QUARANTINE_NAME", "QuarantineEntry", "append_quarantine", "locate", "quarantine_entry", "read_quarantine"]

QUARANTINE_NAME = "quarantine.jsonl"


@dataclass
class QuarantineEntry:
    source: str  # salted token of the source path (ManifestRecord.source)
    suffix: str  # e.g. ".dcm": says which reader failed without naming the file
    error: str  # exception class
    cause: str  # the reason, with every path and name of the source scrubbed out
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
    return QuarantineEntry(source, suffix[:12], type(err).__name__, scrub(cause, path, root)[:500], where)


def append_quarantine(entries: Iterable[QuarantineEntry], out: str | os.PathLike) -> None:
    p = Path(out) / QUARANTINE_NAME
    with p.open("a", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(asdict(e)) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
