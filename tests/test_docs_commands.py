"""Every command block the docs mark ``runnable`` runs as written from the repository root.

A block is marked by its info string: a fenced block opening with a backtick fence followed by
``bash runnable``. Its lines run in one ``bash -euo pipefail`` with ``ultramae`` and ``python``
resolving to this interpreter and this checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```bash[ \t]+runnable[ \t]*\n(.*?)^```", re.M | re.S)


def runnable_blocks() -> list[tuple[str, int, str]]:
    """``(doc name, block number, commands)`` of every runnable block under ``docs/``."""
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for i, m in enumerate(FENCE.finditer(doc.read_text(encoding="utf-8"))):
            found.append((doc.name, i, m.group(1)))
    return found


BLOCKS = runnable_blocks()


def test_docs_have_runnable_blocks() -> None:
    names = {name for name, _, _ in BLOCKS}
    assert {"architecture.md", "data_preparation.md", "demo.md"} <= names
    assert all(cmd.strip() for _, _, cmd in BLOCKS)


def test_fence_parser_reads_only_marked_blocks() -> None:
    text = "```bash\nrm -rf /\n```\n\n```bash runnable\necho one\necho two\n```\n```python runnable\nx\n```\n"
    assert [m.group(1) for m in FENCE.finditer(text)] == ["echo one\necho two\n"]


@pytest.mark.parametrize(("doc", "index", "commands"), BLOCKS, ids=[f"{d}#{i}" for d, i, _ in BLOCKS])
def test_runnable_block(doc: str, index: int, commands: str, tmp_path: Path) -> None:
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "ultramae").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ultramae_monai.cli "$@"\n')
    (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{doc} block {index} failed:\n{commands}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr
