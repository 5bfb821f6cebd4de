"""The curation run: find files, farm them out to worker processes, collect, resume, report.

Order of writes per finished file (what makes a killed run resumable without duplicates): the
worker writes its arrays atomically; the parent drops cross-dataset near-duplicates, appends the
manifest records, then marks the file in the ledger (:mod:`~ultramae_monai.curation.state`). On
restart, manifest records of files not in the ledger are dropped and those files are redone; files
in the ledger with an unchanged fingerprint are skipped. Only the in-flight files are lost to a kill.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ultramae_monai.curation.dedup import DuplicateIndex
from ultramae_monai.curation.deid import Hasher, resolve_salt
from ultramae_monai.curation.options import CurationOptions
from ultramae_monai.curation.quarantine import QuarantineEntry, append_failed_file, append_quarantine
from ultramae_monai.curation.shard import OPTIONS_NAME, in_shard
from ultramae_monai.curation.state import (
    STATUS_CURATED,
    STATUS_QUARANTINED,
    CurationState,
    LedgerEntry,
    file_fingerprint,
)
from ultramae_monai.curation.walk import SourceFile, find_sources
from ultramae_monai.curation.worker import STAGES, FileResult, curate_file
from ultramae_monai.data.manifest import ManifestRecord, append_records
from ultramae_monai.errors import InvalidInputError

__all__ = ["LOG_NAME", "MANIFEST_NAME", "SUMMARY_NAME", "CurationReport", "run_curation", "summarise_manifest"]

MANIFEST_NAME = "manifest.jsonl"
LOG_NAME = "curate.log"
SUMMARY_NAME = "summary.json"
_CRASH = "the worker process died while reading this file (a crash or out-of-memory in a decoder)"
FAILED_SHOWN = 20  # failed files named in the printed summary (all are in OUT/private/failed_files.jsonl)


@dataclass
class CurationReport:
    """Counts of one run (this run's work) and of the whole curated set (the manifest after the run)."""

    files_seen: int = 0
    files_ignored: int = 0  # not a supported file, or excluded by pattern
    curated: int = 0
    skipped_done: int = 0  # finished by an earlier run (curated, or quarantined and not retried)
    quarantined: int = 0
    no_scan_region: int = 0  # of the quarantined: images without a detectable scan region (noise, photos)
    failed: dict[str, str] = field(default_factory=dict)  # this run's failed files (relative to SRC) -> error
    duplicates_dropped: int = 0
    samples_written: int = 0
    samples: dict[str, int] = field(default_factory=dict)  # whole set: still / cine / volume
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # whole set: split -> kind -> n
    patients: dict[str, int] = field(default_factory=dict)  # whole set: split -> patients
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def files_per_second(self) -> float:
        return (self.curated + self.quarantined) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        """The end-of-run summary the command prints: counts, and the first failed files (paths relative to
        SRC, for the operator's terminal: they never reach OUT's shared files or its log)."""
        lines = [
            f"files seen {self.files_seen} (ignored {self.files_ignored}) | curated {self.curated} | "
            f"skipped as done {self.skipped_done} | quarantined {self.quarantined} "
            f"(no scan region {self.no_scan_region}) | "
            f"near-duplicates dropped {self.duplicates_dropped} | {self.seconds:.1f} s "
            f"({self.files_per_second:.2f} files/s)",
            "set: " + (", ".join(f"{k} {v}" for k, v in sorted(self.samples.items())) or "empty"),
        ]
        for split, kinds in self.splits.items():
            per = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            lines.append(f"  {split}: {per} ({self.patients.get(split, 0)} patients)")
        if self.failed:
            shown = list(self.failed)[:FAILED_SHOWN]
            more = f", first {len(shown)} shown" if len(self.failed) > len(shown) else ""
            lines.append(f"failed files: {len(self.failed)}{more} (all in OUT/private/failed_files.jsonl):")
            width = max(len(rel) for rel in shown)
            lines.extend(f"  {rel:<{width}}  {self.failed[rel]}" for rel in shown)
        return "\n".join(lines)


def _init_worker() -> None:
    """One thread per worker (the pool is the parallelism) and no third-party chatter on the terminal:
    C libraries print file names to stderr, and file names can carry PHI."""
    import torch

    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _mp_context() -> multiprocessing.context.BaseContext:
    """Never fork the (threaded: tqdm, torch) parent. A forkserver that has imported the worker code once
    starts workers in milliseconds instead of re-importing torch and MONAI in each (spawn, non-POSIX)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["ultramae_monai.curation.worker"])
        return ctx
    return multiprocessing.get_context("spawn")


def _log(out: Path) -> logging.Logger:
    logger = logging.getLogger(f"ultramae_monai.curation.run.{out}")
    logger.propagate = False
    if not logger.handlers:
        h = logging.FileHandler(out / LOG_NAME, encoding="utf-8")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)
        logger.setLevel(logging.INFO)
    return logger


class _Run:
    """The parent's bookkeeping: ledger, manifest, cross-dataset dedup index, counters."""

    def __init__(self, out: Path, opts: CurationOptions, salt: bytes) -> None:
        self.out, self.opts, self.salt = out, opts, salt
        self.state = CurationState(out)
        self.manifest = out / MANIFEST_NAME
        self.log = _log(out)
        self.report = CurationReport()
        self.stage = dict.fromkeys(STAGES, 0.0)
        nbytes = opts.hash_size**2 // 8
        self.index = {k: DuplicateIndex(opts.dedup_threshold, nbytes) for k in ("still", "cine")}

    def load_index(self, records: list[ManifestRecord]) -> None:
        for r in records:
            h = r.extra.get("dhash")
            if h and r.kind in self.index and len(h) * 4 == self.opts.hash_size**2:
                self.index[r.kind].add(np.frombuffer(bytes.fromhex(h), dtype=np.uint8))

    def _drop_files(self, rec: ManifestRecord) -> None:
        for p in (rec.path, rec.confidence, rec.fov_mask):
            if p:
                (self.out / p).unlink(missing_ok=True)

    def finish(self, res: FileResult, rel: str) -> None:
        for stage, s in res.seconds.items():
            self.stage[stage] = self.stage.get(stage, 0.0) + s
        for m in res.messages:
            self.log.warning("source %s: %s", res.source, m)
        if res.quarantine is not None:
            self.quarantine(res.quarantine, res.fingerprint, rel)
            return
        kept: list[ManifestRecord] = []
        dropped = res.dropped
        for rec in res.records:
            idx = self.index.get(rec.kind)
            h = rec.extra.get("dhash")
            if idx is not None and h and not idx.add_if_new(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)):
                self._drop_files(rec)
                dropped += 1
                continue
            kept.append(rec)
        append_records(kept, self.manifest)
        self.state.mark(LedgerEntry(res.source, res.fingerprint, STATUS_CURATED, len(kept), dropped))
        self.report.curated += 1
        self.report.samples_written += len(kept)
        self.report.duplicates_dropped += dropped

    def quarantine(self, entry: QuarantineEntry, fingerprint: str, rel: str) -> None:
        append_quarantine([entry], self.out)
        append_failed_file(self.out, rel, entry)
        self.state.mark(LedgerEntry(entry.source, fingerprint, STATUS_QUARANTINED))
        self.log.error("quarantined source %s (%s): %s: %s", entry.source, entry.suffix, entry.error, entry.cause)
        self.report.quarantined += 1
        self.report.no_scan_region += entry.error == "NoScanRegionError"
        self.report.failed[rel] = entry.error


def summarise_manifest(manifest: Path) -> dict[str, dict]:
    """Samples per kind, per split and kind, and patients per split, of a manifest."""
    kinds: Counter[str] = Counter()
    splits: dict[str, Counter[str]] = {}
    patients: dict[str, set[str]] = {}
    if manifest.is_file():
        from ultramae_monai.data.manifest import iter_manifest

        for r in iter_manifest(manifest):
            kinds[r.kind] += 1
            splits.setdefault(r.split, Counter())[r.kind] += 1
            patients.setdefault(r.split, set()).add(r.patient)
    return {
        "samples": dict(kinds),
        "splits": {s: dict(c) for s, c in sorted(splits.items())},
        "patients": {s: len(p) for s, p in sorted(patients.items())},
    }


def run_curation(
    src: str | os.PathLike,
    out: str | os.PathLike,
    opts: CurationOptions | None = None,
    salt: str | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> CurationReport:
    """Curate every supported file under ``src`` into ``out`` (see ``docs/curation.md``).

    ``shard=(i, n)``: only the files whose relative path hashes to shard ``i`` of ``n``
    (:func:`~ultramae_monai.curation.shard.in_shard`); ``ultramae curate-merge`` joins the shards' folders.
    """
    from tqdm import tqdm

    opts = opts or CurationOptions()
    t0 = time.perf_counter()
    sources, ignored = find_sources(src, opts.exclude)
    if not sources:
        raise InvalidInputError(f"no supported ultrasound files in the source folder ({ignored} other files)", src)
    if shard is not None:
        sources = [sf for sf in sources if in_shard(sf.rel, *shard)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = resolve_salt(out, salt)
    hasher = Hasher(key)
    run = _Run(out, opts, key)
    (out / "state" / OPTIONS_NAME).write_text(json.dumps(asdict(opts), indent=2))
    run.report.files_seen, run.report.files_ignored = len(sources), ignored
    run.log.info(
        "run start: %d files (%d ignored)%s, options %s",
        len(sources),
        ignored,
        f", shard {shard[0]}/{shard[1]}" if shard else "",
        json.dumps(asdict(opts)),
    )

    todo: list[tuple[SourceFile, str]] = []
    redo: set[str] = set()
    for sf in sources:
        token, fp = hasher(sf.rel, "source"), file_fingerprint(sf.path, hasher)
        done = run.state.is_done(token, fp)
        if done is not None and not (opts.retry_quarantined and done.status == STATUS_QUARANTINED):
            run.report.skipped_done += 1
            continue
        if token in run.state.entries:
            redo.add(token)
        todo.append((sf, fp))
    run.load_index(run.state.reconcile(run.manifest, redo))

    bar = tqdm(total=len(todo), unit="file", desc="curate", disable=not progress, file=sys.stderr)
    ctx = _mp_context()
    pending = list(reversed(todo))
    suspects: list[tuple[SourceFile, str]] = []
    while pending or suspects:
        isolated = not pending  # after a worker crash: the files it had in flight, one at a time
        queue = pending if pending else suspects
        workers = 1 if isolated else opts.workers
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            inflight: dict[Future[FileResult], tuple[SourceFile, str]] = {}
            try:
                while queue or inflight:
                    while queue and len(inflight) < (1 if isolated else 2 * workers):
                        sf, fp = queue.pop()
                        fut = pool.submit(curate_file, sf, opts, key, str(out), str(src), fp)
                        inflight[fut] = (sf, fp)
                    done_set, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in done_set:
                        res = fut.result()  # raises BrokenProcessPool when a worker died
                        done_sf, _ = inflight.pop(fut)
                        run.finish(res, done_sf.rel)
                        bar.update(1)
                        bar.set_postfix(curated=run.report.curated, quarantined=run.report.quarantined)
                    if isolated:
                        break  # a fresh pool per suspect, so a second crash names its file
            except BrokenProcessPool:
                lost = list(inflight.values())
                if isolated:
                    for sf, fp in lost:
                        entry = QuarantineEntry(hasher(sf.rel, "source"), sf.path.suffix.lower(), "WorkerCrash", _CRASH)
                        run.quarantine(entry, fp, sf.rel)
                        bar.update(1)
                else:
                    suspects.extend(lost)
                    run.log.warning("a worker process died; retrying its %d in-flight files one by one", len(lost))
    bar.close()

    report = run.report
    report.seconds = time.perf_counter() - t0
    report.stage_seconds = {k: round(v, 3) for k, v in run.stage.items()}
    whole = summarise_manifest(run.manifest)
    report.samples, report.splits, report.patients = whole["samples"], whole["splits"], whole["patients"]
    summary = {**asdict(report), "files_per_second": report.files_per_second}
    summary["failed"] = len(report.failed)  # the paths go to the operator's private report only
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    run.log.info("run end: %s", json.dumps(summary))
    return report
