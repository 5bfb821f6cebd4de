"""Bad input says what is wrong and names the file: truncated DICOMs, images without a scan region; and a
grey PNG reads without PyTorch's "NumPy array is not writable" warning."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ultramae_monai.cli import main
from ultramae_monai.data.load import load_ultrasound
from ultramae_monai.errors import UnreadableFileError
from ultramae_monai.transforms.fov_detect import scan_region_problem

REPO = Path(__file__).resolve().parents[1]


def _speckle_sector(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A B-mode-like still: spatially correlated speckle (smoothed Rayleigh) inside a sector, black outside."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    speckle = ndimage.gaussian_filter(rng.rayleigh(40.0, (h, w)), 1.5) * 3
    r, c = np.mgrid[:h, :w]
    sector = (np.abs(c - w / 2) < 0.6 * r + 4) & (r > 4)
    return np.clip(speckle * sector, 0, 255).astype(np.uint8)


def test_grey_png_reads_without_the_not_writable_warning(tmp_path: Path) -> None:
    png = tmp_path / "grey.png"
    Image.fromarray(_speckle_sector()).save(png)
    code = f"from ultramae_monai.data.load import load_ultrasound; print(load_ultrasound({str(png)!r}).shape)"
    # a fresh interpreter: torch emits this warning once per process, so an earlier test could hide it
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "not writable" not in res.stderr and "[1, 96, 128]" in res.stdout


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (0.5, "truncated DICOM: the pixel data is cut off"),  # JPEG-baseline cine, encapsulated fragments cut
        (224, "truncated DICOM: the file ends after the preamble"),  # preamble and file meta only
    ],
)
def test_truncated_dicom_says_truncated_and_names_the_file(tmp_path: Path, keep: float, expected: str) -> None:
    data = Path(get_testdata_file("examples_ybr_color.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    with warnings.catch_warnings(), pytest.raises(UnreadableFileError) as info:
        warnings.simplefilter("ignore")  # pydicom's own "End of file reached before delimiter"
        load_ultrasound(cut)
    assert str(info.value).startswith(f"{cut}: {expected}") and "DICM preamble" not in str(info.value)


def test_truncated_native_pixel_data_says_truncated(tmp_path: Path) -> None:
    src = get_testdata_file("US1_UNCR.dcm") or get_testdata_file("examples_rgb_color.dcm")
    data = Path(src).read_bytes()
    cut = tmp_path / "cut_native.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match="truncated DICOM: the pixel data is cut off") as info:
        load_ultrasound(cut)
    assert info.value.path == str(cut)


def test_noise_flat_and_photograph_have_no_scan_region() -> None:
    rng = np.random.default_rng(0)
    assert scan_region_problem(_speckle_sector()[None].astype(np.float32)) is None
    noise = rng.integers(0, 256, (1, 96, 128)).astype(np.float32)
    assert "noise" in scan_region_problem(noise)
    assert "flat" in scan_region_problem(np.full((1, 64, 64), 7.0, np.float32))
    r, c = np.mgrid[:96, :128] / 128.0
    photo = np.stack([255 * r, 255 * (1 - c), 128 + 100 * np.sin(6 * c)]).astype(np.float32)  # smooth, colourful
    assert "photograph" in scan_region_problem(photo)
    cine = np.stack([_speckle_sector(seed=s) for s in range(3)])[None].astype(np.float32)  # (1, T, H, W)
    assert scan_region_problem(cine) is None


def test_real_ultrasound_has_a_scan_region() -> None:
    for name in ("examples_ybr_color.dcm", "US1_UNCR.dcm"):
        path = get_testdata_file(name)
        if path is not None:
            x = load_ultrasound(path, max_frames=2)
            assert scan_region_problem(x) is None, name


def test_info_warns_naming_the_file_without_a_scan_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noise = tmp_path / "static.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 80), dtype=np.uint8)).save(noise)
    assert main(["info", str(noise)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {noise}: no scan region detected" in captured.err and "warning" in captured.out
