"""``ultramae info`` and ``ultramae convert``: summaries, NIfTI/PNG round trips, one-line errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ultramae_monai.cli import main
from ultramae_monai.cli.convert import convert
from ultramae_monai.cli.info import info
from ultramae_monai.data.dicom_reader import read_dicom
from ultramae_monai.data.load import load_ultrasound
from ultramae_monai.data.volume_reader import read_volume


def _dcm(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return Path(path)


def test_info_on_a_dicom_cine(capsys: pytest.CaptureFixture[str]) -> None:
    summary = info(_dcm("examples_ybr_color.dcm"))
    assert summary["kind"] == "cine" and summary["source_type"] == "dicom" and summary["modality"] == "US"
    assert summary["frames"] == 30 and summary["size"] == [240, 320]
    assert summary["spacing_mm"] == pytest.approx([0.5104970559477806] * 2)
    assert summary["photometric"] == "YBR_FULL_422" and summary["fps"] == pytest.approx(30.0, abs=1e-3)
    r0, c0, r1, c1 = summary["fov_box"]
    # the FOV lies inside the image and inside the DICOM ultrasound region [31, 84, 415, 596)
    assert 31 <= r0 < r1 <= 415 and 84 <= c0 < c1 <= 596
    assert "cine" in str(summary) and "YBR_FULL_422" in str(summary)
    assert main(["info", str(_dcm("examples_ybr_color.dcm"))]) == 0
    out = capsys.readouterr().out
    assert out.count("photometric") == 1 and "fov_box" in out


def test_info_on_a_volume(shared_data: Path) -> None:
    summary = info(shared_data / "resect_3dus" / "Case4_US-before.nii.gz")
    assert summary["kind"] == "volume" and summary["size"] == [256, 288, 256] and summary["fov_box"] is None
    assert summary["orientation"] == "RAS" and summary["spacing_mm"] == pytest.approx([0.426] * 3, abs=1e-5)


def test_convert_cine_to_nifti_round_trip(tmp_path: Path) -> None:
    src = _dcm("examples_ybr_color.dcm")
    written = convert(src, tmp_path / "cine.nii.gz", clip_length=6, stride=2)
    assert written == [str(tmp_path / "cine.nii.gz")]
    cine = read_dicom(src, clip_length=6, stride=2)  # (1, 6, 240, 320)
    back = read_volume(tmp_path / "cine.nii.gz")  # (1, H, W, T), RAS already: spacing on the diagonal
    assert back.shape == (1, 240, 320, 6)
    np.testing.assert_allclose(back.numpy()[0], np.moveaxis(cine.numpy()[0], 0, -1), atol=1e-4)
    assert back.meta["spacing"][:2] == pytest.approx(cine.meta["spacing"])
    assert "fps=30.000" in str(nib.load(tmp_path / "cine.nii.gz").header["descrip"])


def test_convert_still_and_volume_round_trip(tmp_path: Path) -> None:
    src = _dcm("examples_palette.dcm")
    convert(src, tmp_path / "pal.nii", color=True)
    rgb = read_dicom(src, color=True)
    img = nib.load(tmp_path / "pal.nii")
    assert img.shape == (350, 800, 1, 1, 3) and rgb.max() > 255  # its LUT has 16-bit entries
    assert img.get_data_dtype() == np.uint16  # integer data keeps an exact integer type
    np.testing.assert_array_equal(np.asanyarray(img.dataobj)[:, :, 0, 0], np.moveaxis(rgb.numpy(), 0, -1))
    assert np.diag(img.affine)[:2] == pytest.approx([0.26228787661969977] * 2)
    lip = np.diag([-0.426, -0.426, -0.426, 1.0])[:, [0, 2, 1, 3]]  # L I P voxel axes, as RESECT Case4
    vol_src = tmp_path / "lip.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 7, 8)).astype(np.float32), lip), vol_src)
    convert(vol_src, tmp_path / "ras.nii.gz")
    back, orig = read_volume(tmp_path / "ras.nii.gz"), read_volume(vol_src)
    assert orig.meta["source_orientation"] == "LIP" and back.meta["source_orientation"] == "RAS"
    np.testing.assert_array_equal(back.numpy(), orig.numpy())
    np.testing.assert_allclose(back.affine.numpy(), orig.affine.numpy(), atol=1e-5)


def test_convert_to_png_frames(tmp_path: Path) -> None:
    src = _dcm("examples_ybr_color.dcm")
    written = convert(src, tmp_path / "frames", clip_length=3, color=True)
    assert [Path(p).name for p in written] == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    cine = read_dicom(src, clip_length=3, color=True)
    for t, p in enumerate(written):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.moveaxis(cine.numpy()[:, t], 0, -1))


def test_convert_16_bit_grey_to_png(tmp_path: Path) -> None:
    grey = convert(_dcm("gdcm-US-ALOKA-16.dcm"), tmp_path / "aloka.png")
    assert grey == [str(tmp_path / "aloka.png")]
    still = load_ultrasound(_dcm("gdcm-US-ALOKA-16.dcm"))  # 16-bit palette: luma beyond 255, kept as 16-bit PNG
    png = np.asarray(Image.open(grey[0]))
    assert still.max() > 255 and png.dtype.itemsize == 2
    np.testing.assert_array_equal(png, np.round(still.numpy()[0]).astype(png.dtype))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert main(["convert", str(tmp_path / "empty.dcm"), str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ultramae: error: {tmp_path / 'empty.dcm'}: empty file (0 bytes)"
    assert main(["info", str(_dcm("CT_small.dcm"))]) == 2
    assert "not ultrasound" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
