"""Curation across machines: ``ultramae curate --shard I/N`` on 3 shards, merged by ``ultramae curate-merge``,
equals one run over the whole tree, record for record and byte for byte (arrays), with one patient-grouped split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ultramae_monai.cli import main
from ultramae_monai.curation.quarantine import read_failed_files, read_quarantine
from ultramae_monai.curation.shard import in_shard, merge_shards, shard_of
from ultramae_monai.data.manifest import read_manifest
from ultramae_monai.errors import InvalidInputError

SALT = "shard-test-salt-0123456789abcdef"
FLAGS = [
    "--salt",
    SALT,
    "--workers",
    "1",
    "--max_side",
    "48",
    "--frames_per_cine",
    "2",
    "--clips_per_cine",
    "1",
    "--clip_length",
    "4",
    "--val_fraction",
    "0.5",
    "--group_regex",
    r"(\d{3})_\d?HC\.png$",
    "--progress",
    "false",
    "--confidence",
    "false",  # the maps are deterministic per file; leaving them out halves the test's time
]


def test_shard_assignment_is_a_deterministic_partition() -> None:
    rels = [f"patient{i}/image_{j}.png" for i in range(20) for j in range(5)]
    for n in (1, 3, 7):
        owners = [[i for i in range(n) if in_shard(r, i, n)] for r in rels]
        assert all(len(o) == 1 for o in owners)
    assert [shard_of(r, 3) for r in rels[:6]] == [shard_of(r, 3) for r in rels[:6]]
    counts = np.bincount([shard_of(r, 3) for r in rels], minlength=3)
    assert counts.min() >= 20  # about a third each of 100 files
    assert shard_of("a/b.dcm", 3) == int.from_bytes(__import__("hashlib").sha256(b"a/b.dcm").digest()[:8]) % 3


def _tree(root: Path, shared: Path) -> None:
    (root / "hc18").mkdir(parents=True)
    for name in ("001_HC.png", "002_HC.png", "010_HC.png", "010_2HC.png", "013_HC.png"):
        shutil.copy(shared / "hc18" / "images" / name, root / "hc18" / name)
    (root / "busi").mkdir()
    for name in ("benign (3).png", "benign (7).png", "malignant (1).png", "normal (2).png"):
        kind = name.split(" ")[0]
        shutil.copy(shared / "busi" / kind / name, root / "busi" / name)
    videos = sorted((shared / "pocus" / "pocus_videos").rglob("*Basal-pneumonia-RUQ_crop.mp4"))
    if videos:
        (root / "pocus").mkdir()
        shutil.copy(videos[0], root / "pocus" / "clip.mp4")
    try:
        from pydicom.data import get_testdata_file

        cine = get_testdata_file("examples_ybr_color.dcm")
    except ImportError:
        cine = None
    if cine:
        (root / "dicom").mkdir()
        shutil.copy(cine, root / "dicom" / "cine.dcm")
    (root / "bad").mkdir()
    (root / "bad" / "empty.dcm").write_bytes(b"")


@pytest.mark.shared_data
def test_three_shards_merged_equal_one_run(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, shared_data)
    single = tmp_path / "single"
    assert main(["curate", str(src), str(single), *FLAGS]) == 0
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, out in enumerate(shards):
        assert main(["curate", str(src), str(out), *FLAGS, "--shard", f"{i}/3"]) == 0
    sizes = [len(read_manifest(s / "manifest.jsonl")) if (s / "manifest.jsonl").is_file() else 0 for s in shards]
    assert sum(1 for n in sizes if n) >= 2  # the work really was spread
    merged = tmp_path / "merged"
    assert main(["curate-merge", *map(str, shards), str(merged)]) == 0

    one = {r.id: r for r in read_manifest(single / "manifest.jsonl")}
    many = {r.id: r for r in read_manifest(merged / "manifest.jsonl")}
    assert len(one) > 10 and sorted(one) == sorted(many)
    for rid, rec in one.items():
        assert many[rid].to_json() == rec.to_json()
        for rel in (rec.path, rec.confidence, rec.fov_mask):
            if rel:
                assert (merged / rel).read_bytes() == (single / rel).read_bytes()
    splits: dict[str, set[str]] = {}
    for rec in many.values():
        splits.setdefault(rec.patient, set()).add(rec.split)
    assert all(len(s) == 1 for s in splits.values()) and {r.split for r in many.values()} == {"train", "val"}
    q_one = sorted(json.dumps(e.__dict__, sort_keys=True) for e in read_quarantine(single))
    q_many = sorted(json.dumps(e.__dict__, sort_keys=True) for e in read_quarantine(merged))
    assert q_one == q_many and len(q_one) == 1
    assert [row["path"] for row in read_failed_files(merged)] == ["bad/empty.dcm"]
    summary = json.loads((merged / "summary.json").read_text())
    single_summary = json.loads((single / "summary.json").read_text())
    for key in ("files_seen", "files_ignored", "curated", "quarantined", "samples", "splits", "patients"):
        assert summary[key] == single_summary[key], key


def test_merge_refuses_shards_of_different_salts(tmp_path: Path) -> None:
    for i, check in enumerate(("aaaa", "bbbb")):
        (tmp_path / f"s{i}" / "state").mkdir(parents=True)
        (tmp_path / f"s{i}" / "state" / "salt.check").write_text(check)
    with pytest.raises(InvalidInputError, match="different salts"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out")
    with pytest.raises(InvalidInputError, match="not a curated folder"):
        merge_shards([tmp_path / "s0", tmp_path], tmp_path / "out")


def test_shard_needs_an_explicit_salt(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("ULTRAMAE_SALT", raising=False)
    assert main(["curate", str(tmp_path), str(tmp_path / "out"), "--shard", "0/2"]) == 2
    assert "--salt" in capsys.readouterr().err and not (tmp_path / "out").exists()
