"""The array convention, frame sampling, the manifest format and the error types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ultramae_monai import UnreadableFileError
from ultramae_monai.data import MetaKeys, kind_of, make_metatensor
from ultramae_monai.data.frame_selection import frame_indices
from ultramae_monai.data.manifest import ManifestRecord, append_records, read_manifest, write_manifest


def test_make_metatensor_layouts_and_affine():
    still = make_metatensor(np.zeros((1, 8, 6), np.uint8), "still", {MetaKeys.SPACING: [0.2, 0.3]})
    assert still.dtype == torch.float32 and still.meta[MetaKeys.LAYOUT] == "CHW"
    assert torch.allclose(torch.diag(still.affine), torch.tensor([0.2, 0.3, 1.0], dtype=torch.float64))
    cine = make_metatensor(np.zeros((1, 5, 8, 6)), "cine")
    assert cine.affine.shape == (4, 4) and cine.meta[MetaKeys.NUM_FRAMES] == 5
    assert kind_of(cine) == "cine" and kind_of(torch.zeros(1, 4, 4)) == "still"
    with pytest.raises(ValueError, match="CHWD"):
        make_metatensor(np.zeros((1, 4, 4)), "volume")


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, list(range(10))),
        ({"stride": 3}, [0, 3, 6, 9]),
        ({"start": 2, "clip_length": 4, "stride": 2}, [2, 4, 6, 8]),
        ({"start": 8, "clip_length": 4}, [8, 9, 9, 9]),
        ({"max_frames": 3}, [0, 4, 9]),
        ({"start": -2}, [8, 9]),
    ],
)
def test_frame_indices(kw, expected):
    assert frame_indices(10, **kw).tolist() == expected


def test_frame_indices_rejects_bad_arguments():
    for kw in ({"stride": 0}, {"start": 10}, {"clip_length": 0}):
        with pytest.raises(ValueError):
            frame_indices(10, **kw)


def test_manifest_roundtrip_and_append(tmp_path):
    recs = [ManifestRecord(id=f"s{i}", path=f"a/{i}.npy", kind="still", shape=[1, 4, 4], patient="p") for i in range(3)]
    m = tmp_path / "manifest.jsonl"
    write_manifest(recs[:2], m)
    append_records(recs[2:], m)
    back = read_manifest(m)
    assert [r.id for r in back] == ["s0", "s1", "s2"] and back[0].shape == [1, 4, 4]
    assert not list(tmp_path.glob(".*.tmp"))


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(UnreadableFileError, match="not found"):
        read_manifest(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "path": "x", "kind": "still", "shape": [1]}\nnot json\n')
    with pytest.raises(UnreadableFileError, match=r"bad.jsonl: line 2"):
        read_manifest(bad)
