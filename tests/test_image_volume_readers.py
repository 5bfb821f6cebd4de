"""Still-image and volume readers, and the dispatching loader: real HC18/BUSI/RESECT data plus edge cases."""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged
from PIL import Image

from ultramae_monai.data.image_reader import UltrasoundImageReader, read_image
from ultramae_monai.data.load import SUPPORTED_SUFFIXES, UltrasoundReader, load_ultrasound, source_type
from ultramae_monai.data.volume_reader import UltrasoundVolumeReader, read_volume
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---- stills -------------------------------------------------------------------------------------------------


def test_hc18_grey_png(shared_data: Path) -> None:
    path = shared_data / "hc18" / "images" / "001_HC.png"
    x = read_image(path)
    ref = np.asarray(Image.open(path))  # mode L, 800 wide x 540 high
    assert x.shape == (1, 540, 800) and x.meta["us_kind"] == "still" and x.meta["us_source"] == "image"
    np.testing.assert_array_equal(x.numpy()[0], ref)
    rgb = read_image(path, color=True)
    assert rgb.shape == (3, 540, 800) and np.array_equal(rgb[2], x[0])


def test_busi_rgb_png_luma_and_colour(shared_data: Path) -> None:
    path = next(iter(sorted((shared_data / "busi" / "malignant").glob("*.png"))))
    ref = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    rgb = read_image(path, color=True)
    np.testing.assert_array_equal(np.moveaxis(rgb.numpy(), 0, -1), ref)
    np.testing.assert_allclose(read_image(path).numpy()[0], ref @ LUMA, atol=1e-3)
    d = LoadImaged("img", reader=UltrasoundImageReader(color=True))({"img": str(path)})
    np.testing.assert_array_equal(d["img"].numpy(), rgb.numpy())


def test_rgba_palette_16bit_and_bilevel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 10, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.moveaxis(read_image(tmp_path / "a.png", color=True).numpy(), 0, -1), rgb)
    pal = Image.fromarray(rgb, "RGB").quantize(8)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB")).astype(np.float32)
    np.testing.assert_allclose(read_image(tmp_path / "p.png").numpy()[0], expected @ LUMA, atol=1e-3)
    deep = (rng.integers(0, 65536, (5, 4))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    x = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(x.numpy()[0], deep)  # native 16-bit range kept
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "b.png")
    assert set(np.unique(read_image(tmp_path / "b.png").numpy())) <= {0.0, 255.0}
    Image.fromarray(rgb).save(tmp_path / "j.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "m.bmp")
    np.testing.assert_array_equal(np.moveaxis(read_image(tmp_path / "m.bmp", color=True).numpy(), 0, -1), rgb)
    assert read_image(tmp_path / "j.jpg").shape == (1, 6, 7)


def test_bad_images(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tiff")
    with pytest.raises(InvalidInputError, match=r"nan.tiff: .*NaN"):
        read_image(tmp_path / "nan.tiff")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    (tmp_path / "noise.png").write_bytes(b"not a png at all" * 20)
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.png", "noise.png", "empty.png", "missing.png"):
        with pytest.raises(UnreadableFileError, match=name):
            read_image(tmp_path / name)


# ---- volumes ------------------------------------------------------------------------------------------------


def test_resect_volumes_reoriented_to_ras(shared_data: Path) -> None:
    case3 = read_volume(shared_data / "resect_3dus" / "Case3_US-before.nii.gz")
    assert case3.shape == (1, 256, 256, 288) and case3.meta["source_orientation"] == "RAS"
    assert case3.meta["spacing"] == pytest.approx([0.4, 0.4, 0.4], abs=1e-5)
    assert nib.aff2axcodes(case3.affine.numpy()) == ("R", "A", "S")
    path4 = shared_data / "resect_3dus" / "Case4_US-before.nii.gz"
    case4 = read_volume(path4)
    assert case4.meta["source_orientation"] == "LIP" and case4.meta["orientation"] == "RAS"
    assert case4.shape == (1, 256, 288, 256)  # L I P (256, 256, 288) -> R A S: axes (0, 2, 1), all flipped
    assert case4.meta["spacing"] == pytest.approx([0.426] * 3, abs=1e-5)
    raw = nib.load(path4)
    data = np.asanyarray(raw.dataobj)
    np.testing.assert_array_equal(case4.numpy()[0], data[::-1, ::-1, ::-1].transpose(0, 2, 1))
    # the same voxel lands at the same world point before and after the reorientation
    ijk = np.array([10, 20, 30, 1.0])
    new_ijk = np.array([255 - 10, 287 - 30, 255 - 20, 1.0])
    np.testing.assert_allclose(raw.affine @ ijk, case4.affine.numpy() @ new_ijk, atol=1e-4)


def test_nrrd_and_mha_lps_to_ras(tmp_path: Path) -> None:
    zyx = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    img = itk.image_from_array(zyx)
    img.SetSpacing([0.5, 0.6, 0.7])
    img.SetOrigin([1.0, 2.0, 3.0])
    for suffix in ("nrrd", "mha"):
        itk.imwrite(img, str(tmp_path / f"v.{suffix}"))
        v = read_volume(tmp_path / f"v.{suffix}")
        assert v.meta["source_orientation"] == "LPS" and v.shape == (1, 7, 6, 5)
        assert v.meta["spacing"] == pytest.approx([0.5, 0.6, 0.7])
        np.testing.assert_array_equal(v.numpy()[0], zyx.transpose(2, 1, 0)[::-1, ::-1, :])
        # voxel (x=0, y=0, z=0) of the file is at LPS (1, 2, 3) = RAS (-1, -2, 3); after the flips it is (6, 5, 0)
        np.testing.assert_allclose(v.affine.numpy() @ [6, 5, 0, 1], [-1.0, -2.0, 3.0, 1.0], atol=1e-6)


def test_bad_volumes(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.float32)
    a[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InvalidInputError, match=r"nan.nii.gz: volume holds 1 NaN"):
        read_volume(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(InvalidInputError, match=r"4d.nii"):
        read_volume(tmp_path / "4d.nii")
    nib.save(nib.Nifti1Image(np.ones((40, 40, 40), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "ok.nii.gz").read_bytes()[:100])
    with pytest.raises(UnreadableFileError, match=r"cut.nii.gz"):
        read_volume(tmp_path / "cut.nii.gz")
    x = LoadImaged("v", reader=UltrasoundVolumeReader())({"v": str(tmp_path / "ok.nii.gz")})["v"]
    assert x.shape == (1, 40, 40, 40) and x.meta["us_kind"] == "volume"


# ---- dispatch -----------------------------------------------------------------------------------------------


def test_dispatch_by_content_then_suffix(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    dcm = Path(get_testdata_file("examples_palette.dcm"))
    (tmp_path / "IMG0001").write_bytes(dcm.read_bytes())  # no suffix: DICM preamble
    (tmp_path / "shot.dcm").write_bytes(b"")  # wrong suffix, empty
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(tmp_path / "really_png.jpg", format="PNG")
    assert source_type(tmp_path / "IMG0001") == "dicom"
    assert source_type(tmp_path / "really_png.jpg") == "image"
    assert load_ultrasound(tmp_path / "really_png.jpg").shape == (1, 5, 6)
    np.testing.assert_array_equal(load_ultrasound(tmp_path / "IMG0001").numpy(), load_ultrasound(dcm).numpy())
    (tmp_path / "notes.txt").write_text("a report, not an image")
    with pytest.raises(UnreadableFileError, match=r"notes.txt: unknown format"):
        load_ultrasound(tmp_path / "notes.txt")
    with pytest.raises(UnreadableFileError, match=r"shot.dcm"):
        load_ultrasound(tmp_path / "shot.dcm")
    for s in ("dcm", "png", "jpg", "nii.gz", "nrrd", "mha", "mp4", "avi", "mov", "mpeg", "gif"):
        assert s in SUPPORTED_SUFFIXES


def test_one_reader_for_every_format(tmp_path: Path, shared_data: Path) -> None:
    from pydicom.data import get_testdata_file

    video = next(iter(sorted((shared_data / "pocus" / "pocus_videos").rglob("*.mp4"))))
    files = {
        "dicom": get_testdata_file("examples_ybr_color.dcm"),
        "image": str(shared_data / "hc18" / "images" / "001_HC.png"),
        "volume": str(shared_data / "resect_3dus" / "Case3_US-before.nii.gz"),
        "video": str(video),
    }
    load = LoadImaged(list(files), reader=UltrasoundReader(clip_length=3))
    out = load(files)
    assert out["dicom"].shape == (1, 3, 240, 320) and out["video"].shape[:2] == (1, 3)
    assert out["image"].shape == (1, 540, 800) and out["volume"].shape == (1, 256, 256, 288)
    assert {k: out[k].meta["us_source"] for k in files} == {k: k for k in files}
    assert out["video"].meta["fps"] > 0
