"""Stage-by-stage progress lines of the demo, with the time each stage took (kept in ``summary.json``)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Prints ``[k/N] stage: what`` when a stage starts and ``done in Ns`` when it ends.

    Library log records (the trainer's step lines, curation notes) are forwarded to the same stream, indented,
    so a person watching sees the pretraining loss fall.
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.k = 0
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._handler = logging.StreamHandler(self.stream)
        self._handler.setFormatter(logging.Formatter("      %(message)s"))
        self._handler.setLevel(logging.INFO)
        self._handler.addFilter(lambda record: not record.getMessage().startswith("checkpoint "))

    def say(self, text: str) -> None:
        print(f"      {text}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.k += 1
        print(f"[{self.k}/{self.total}] {name}: {what}", file=self.stream, flush=True)
        log = logging.getLogger("ultramae_monai")
        old_level = log.level
        log.addHandler(self._handler)
        log.setLevel(logging.INFO)
        stats = logging.getLogger("monai.handlers.StatsHandler")  # the bundles' per-iteration lines: the demo
        old_stats = stats.level  # prints its own, fewer
        stats.setLevel(logging.WARNING)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            log.removeHandler(self._handler)
            log.setLevel(old_level)
            stats.setLevel(old_stats)
            self.seconds[name] = round(time.perf_counter() - t0, 1)
            total = time.perf_counter() - self._t0
            print(f"      done in {self.seconds[name]:.0f} s ({total:.0f} s so far)", file=self.stream, flush=True)
