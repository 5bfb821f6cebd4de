"""What machine a benchmark ran on, for the line every table in docs/benchmarks.md starts with."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """``"<CPU>, <N> cores"``."""
    return f"{cpu_name()}, {os.cpu_count()} cores"
