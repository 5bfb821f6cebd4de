"""Curation across machines: which shard a file belongs to, and joining shard folders into one curated set.

``ultramae curate SRC OUT_i --shard i/N --salt S`` on N nodes (a Slurm array, a Kubernetes indexed Job) each
curates the files whose relative path hashes to shard ``i``; ``ultramae curate-merge OUT_0 ... OUT_N-1 OUT``
joins them. Every token, and so the patient-grouped split (a pure function of the patient token), depends on
the salt alone, so shards curated with one salt merge into the set one machine would have written, record for
record. The shard hash is SHA-256 of the relative path (unsalted: any node computes it, nothing is stored).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["OPTIONS_NAME", "in_shard", "merge_shards", "shard_of"]

OPTIONS_NAME = "options.json"  # under OUT/state: the options a run used (merge checks that shards agree)
_RUN_ONLY_OPTIONS = ("workers", "retry_quarantined")  # options that do not change what is written


def shard_of(rel: str, num_shards: int) -> int:
    """Shard (0 <= s < num_shards) of a source file, from its posix path relative to SRC."""
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def in_shard(rel: str, index: int, num_shards: int) -> bool:
    return shard_of(rel, num_shards) == index


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UnreadableFileError(f"curation state unreadable ({type(err).__name__})", path) from err


def _place(src: Path, dst: Path) -> None:
    """Hard-link (same file system) or copy an array into the merged set."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _concat(paths: Sequence[Path], dst: Path, mode: int | None = None) -> None:
    parts = [p.read_text(encoding="utf-8") for p in paths if p.is_file()]
    if not parts:
        return
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode is not None else 0o777)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode if mode is not None else 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for text in parts:
            f.write(text if text.endswith("\n") or not text else text + "\n")


def merge_shards(shard_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Join shard folders of one salt into ``out``: manifest, arrays, quarantine, private failed-file report,
    ledger and a summary. Near-duplicates across shards are dropped as one run drops them across files
    (a record within the dHash threshold of a record kept from an earlier shard). Returns the summary dict.
    """
    from ultramae_monai.curation.dedup import DuplicateIndex
    from ultramae_monai.curation.pipeline import LOG_NAME, MANIFEST_NAME, SUMMARY_NAME, summarise_manifest
    from ultramae_monai.curation.quarantine import FAILED_FILES_NAME, PRIVATE_DIR, QUARANTINE_NAME
    from ultramae_monai.data.manifest import iter_manifest, write_manifest

    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise InvalidInputError("no shard folders given")
    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        raise InvalidInputError("the merge output already holds a manifest; merge into a new folder", out)
    checks, options = set(), []
    for d in dirs:
        if not (d / "state" / "salt.check").is_file():
            raise InvalidInputError("not a curated folder (no state/salt.check)", d)
        checks.add((d / "state" / "salt.check").read_text().strip())
        opts_path = d / "state" / OPTIONS_NAME
        if opts_path.is_file():
            opts = _read_json(opts_path)
            options.append({k: v for k, v in opts.items() if k not in _RUN_ONLY_OPTIONS})
    if len(checks) != 1:
        raise InvalidInputError("the shards were curated with different salts; curate every shard with one --salt")
    if any(o != options[0] for o in options[1:]):
        raise InvalidInputError("the shards were curated with different options; curate every shard alike")
    opts = options[0] if options else {}
    threshold, hash_size = int(opts.get("dedup_threshold", 10)), int(opts.get("hash_size", 16))
    index = {k: DuplicateIndex(threshold, hash_size**2 // 8) for k in ("still", "cine")}

    out.mkdir(parents=True, exist_ok=True)
    records, dropped, seen = [], 0, set()
    for d in dirs:
        manifest = d / MANIFEST_NAME
        kept_here = []
        for rec in iter_manifest(manifest) if manifest.is_file() else []:
            if rec.id in seen:
                raise InvalidInputError(f"record {rec.id} is in two shards (the same files curated twice?)", d)
            seen.add(rec.id)
            h = rec.extra.get("dhash")
            idx = index.get(rec.kind)
            if idx is not None and h and len(h) * 4 == hash_size**2:
                vec = np.frombuffer(bytes.fromhex(h), dtype=np.uint8)
                if idx.is_duplicate(vec):
                    dropped += 1
                    continue
                kept_here.append((rec.kind, vec))
            for p in (rec.path, rec.confidence, rec.fov_mask):
                if p:
                    _place(d / p, out / p)
            records.append(rec)
        for kind, vec in kept_here:  # a shard is de-duplicated within itself already
            index[kind].add(vec)
    by_patient: dict[str, set[str]] = {}
    for rec in records:
        by_patient.setdefault(rec.patient, set()).add(rec.split)
    if any(len(s) > 1 for s in by_patient.values()):
        raise InvalidInputError("a patient is in two splits across shards (different val_fraction?)")
    write_manifest(records, out / MANIFEST_NAME)
    _concat([d / QUARANTINE_NAME for d in dirs], out / QUARANTINE_NAME)
    _concat([d / PRIVATE_DIR / FAILED_FILES_NAME for d in dirs], out / PRIVATE_DIR / FAILED_FILES_NAME, mode=0o600)
    _concat([d / "state" / "done.jsonl" for d in dirs], out / "state" / "done.jsonl")
    _concat([d / LOG_NAME for d in dirs], out / LOG_NAME)
    (out / "state" / "salt.check").write_text(checks.pop())
    if options:
        shutil.copy2(dirs[0] / "state" / OPTIONS_NAME, out / "state" / OPTIONS_NAME)

    counts = ("files_seen", "files_ignored", "curated", "skipped_done", "quarantined", "no_scan_region")
    summary: dict = dict.fromkeys(counts, 0)
    for d in dirs:
        shard_summary = _read_json(d / SUMMARY_NAME) if (d / SUMMARY_NAME).is_file() else {}
        for k in counts:  # every shard walks the whole tree: its ignored files are the same in each
            value = int(shard_summary.get(k, 0))
            summary[k] = max(summary[k], value) if k == "files_ignored" else summary[k] + value
    summary.update(shards=len(dirs), duplicates_dropped_across_shards=dropped, records=len(records))
    summary.update(summarise_manifest(out / MANIFEST_NAME))
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    return summary
