"""The resume ledger of a curation run: which source files are finished, and in what state.

Curation of a large export takes hours and gets interrupted. Each finished file (curated, or
quarantined) gets one line in ``OUT/state/done.jsonl`` *after* its manifest records are appended,
so on restart the ledger is the truth: manifest records of a file missing from the ledger (a kill
between the two writes, or a torn last line) are dropped and the file is redone, and no file is
ever curated twice. Entries hold only salted tokens: the file's fingerprint (size and modification
time) is hashed too, as a modification time is a date.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ultramae_monai.curation.deid import Hasher
from ultramae_monai.data.manifest import ManifestRecord, write_manifest

__all__ = ["STATUS_CURATED", "STATUS_QUARANTINED", "CurationState", "LedgerEntry", "file_fingerprint"]

STATUS_CURATED = "curated"
STATUS_QUARANTINED = "quarantined"


@dataclass
class LedgerEntry:
    source: str  # salted token of the source path
    fingerprint: str  # salted token of (size, mtime): a changed file is curated again
    status: str  # "curated" | "quarantined"
    records: int = 0  # manifest records written
    dropped: int = 0  # samples dropped as near-duplicates


def file_fingerprint(path: str | os.PathLike, hasher: Hasher) -> str:
    st = Path(path).stat()
    return hasher(f"{st.st_size}:{st.st_mtime_ns}", "fingerprint")


class CurationState:
    """Reads and appends ``OUT/state/done.jsonl``."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out) / "state" / "done.jsonl"
        self.entries: dict[str, LedgerEntry] = {}
        if self.path.is_file():
            with self.path.open("r", encoding="utf-8") as f:
                for line in f:
                    try:
                        e = LedgerEntry(**json.loads(line))
                    except (json.JSONDecodeError, TypeError):
                        continue  # a torn last line from a kill: that file is simply redone
                    self.entries[e.source] = e

    def is_done(self, source: str, fingerprint: str) -> LedgerEntry | None:
        e = self.entries.get(source)
        return e if e is not None and e.fingerprint == fingerprint else None

    def mark(self, entry: LedgerEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(entry)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry.source] = entry

    def reconcile(self, manifest: str | os.PathLike, redo: set[str] | None = None) -> list[ManifestRecord]:
        """Keep the manifest records of finished files only (rewritten atomically if any were dropped).

        ``redo``: sources to curate again (changed since), whose old records go too.
        """
        p = Path(manifest)
        if not p.is_file():
            return []
        kept: list[ManifestRecord] = []
        dropped = 0
        curated = {s for s, e in self.entries.items() if e.status == STATUS_CURATED} - (redo or set())
        with p.open("r", encoding="utf-8") as f:
            for line in f:
                try:
                    rec = ManifestRecord.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    dropped += 1
                    continue
                if rec.source in curated:
                    kept.append(rec)
                else:
                    dropped += 1
        if dropped:
            write_manifest(kept, p)
        return kept
