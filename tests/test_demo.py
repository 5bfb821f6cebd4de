"""The README's demo command runs the whole pipeline on the cine shipped inside pydicom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ultramae_monai.cli import main


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--steps", "4", "--img_size", "32"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"]["shape"] == [1, 30, 240, 320]
    r0, c0, r1, c1 = summary["scan_region"]["fov_box"]
    assert 0 <= r0 < r1 <= 240 and 0 <= c0 < c1 <= 320 and (r1 - r0) * (c1 - c0) < 240 * 320
    assert summary["confidence_map"]["frames"] == 30
    assert summary["pretrain"]["step"] == 4 and np.isfinite(summary["pretrain"]["loss"])
    assert "curated 1" in summary["curate"] and "quarantined 0" in summary["curate"]
    manifest = [json.loads(line) for line in (out / "curated" / "manifest.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in manifest} == {"still", "cine"}
    for name in ("1_read_fov_confidence.png", "2_reconstruction.png"):
        img = np.asarray(Image.open(out / name))
        assert img.ndim == 2 and img.std() > 0
