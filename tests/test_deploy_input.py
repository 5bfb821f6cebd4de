"""The deploy app's input scan and output staging, which need no MONAI Deploy SDK (they run in the main suite)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ultramae_monai.deploy.dicom_input import is_ultrasound_image, list_files, read_headers, source_header
from ultramae_monai.deploy.results import RESULT_FILE, STAGING_DIR, InstanceResult, OutputStage, RunState


def test_read_headers_names_unreadable_files_and_keeps_the_rest(tmp_path: Path) -> None:
    good = Path(get_testdata_file("examples_palette.dcm")).read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good").write_bytes(good)  # no suffix, in a sub-folder: PACS exports
    (tmp_path / "header_cut.dcm").write_bytes(good[:200])
    (tmp_path / "notes.txt").write_text("not DICOM")
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")  # a CD's index: neither used nor "skipped"
    datasets, skipped = read_headers(list_files(tmp_path))
    assert [Path(d.filename).name for d in datasets] == ["good"]
    assert sorted(Path(s.path).name for s in skipped) == ["header_cut.dcm", "notes.txt"]
    causes = {Path(s.path).name: s.cause for s in skipped}
    assert causes["notes.txt"].startswith("not a readable DICOM file (InvalidDicomError")
    assert causes["header_cut.dcm"].startswith("DICOM without StudyInstanceUID")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("examples_palette.dcm", True),
        ("examples_ybr_color.dcm", True),
        ("CT_small.dcm", False),
        ("MR_small.dcm", False),
    ],
)
def test_is_ultrasound_image(name: str, expected: bool) -> None:
    assert is_ultrasound_image(pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)) is expected


def test_enhanced_us_volume_is_not_a_2d_ultrasound_image() -> None:
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"), stop_before_pixels=True)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.2"
    ds.PixelData = b"\0"
    assert not is_ultrasound_image(ds)


def test_source_header_fills_missing_type2_attributes() -> None:
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"), stop_before_pixels=True)
    del ds.StudyTime
    header = source_header(ds, drop=("NumberOfFrames",))
    assert header.StudyTime == "" and "NumberOfFrames" not in header and "PixelData" not in header
    assert header.SOPInstanceUID == ds.SOPInstanceUID


def test_stage_publishes_only_on_commit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULT_FILE).write_text("{}")  # an older run's marker
    stage = OutputStage(out).open()
    assert not (out / RESULT_FILE).exists()
    stage.path("uid", "b", "seg.dcm").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == [STAGING_DIR]
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"), stop_before_pixels=True)
    state = RunState()
    state.instances.append(InstanceResult(path="a.dcm", header=ds, outputs=["uid/b/seg.dcm"]))
    result = stage.commit(state)
    stage.discard()
    assert sorted(p.name for p in out.iterdir()) == [RESULT_FILE, "uid"]
    assert json.loads((out / RESULT_FILE).read_text()) == result
    assert result["status"] == "complete" and result["instances"][0]["kind"] == "still"


def test_stage_discard_leaves_no_marker(tmp_path: Path) -> None:
    stage = OutputStage(tmp_path / "out").open()
    stage.path("uid", "seg.dcm").write_bytes(b"x")
    stage.discard()
    assert list((tmp_path / "out").iterdir()) == []
