"""DICOM ultrasound reader: every real US DICOM we can install matches pydicom, metadata, frame subsets, bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage, LoadImaged
from pydicom.data.data_manager import DATA_ROOT, get_external_sources
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundImageStorage, generate_uid

from ultramae_monai.data.dicom_reader import US_REGIONS, UltrasoundDicomReader, read_dicom
from ultramae_monai.errors import InvalidInputError, NotUltrasoundError, UnreadableFileError, UnsupportedCodecError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
FULL_COMPARE_MAX_PIXELS = 4_000_000  # larger cines are compared on 4 frames spread over the clip (keeps the suite fast)


def _roots() -> dict[str, Path]:
    roots = {"pydicom": Path(DATA_ROOT) / "test_files"}
    store = get_external_sources().get("pydicom-data")
    if store is not None:
        roots["pydicom-data"] = Path(store.data_path)
    try:
        import deid_data

        roots["deid-data"] = Path(deid_data.__file__).parent / "data" / "ultrasounds"
    except ImportError:
        pass
    return roots


def _is_us(path: Path) -> bool:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True).get("Modality") == "US"
    except Exception:  # not DICOM: not a candidate
        return False


# the files the issue names, so a missing package shows up as a skip with a reason rather than silently
EXPECTED = {
    "pydicom": ["examples_ybr_color.dcm", "examples_palette.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm"],
    "pydicom-data": [
        "US1_UNCR.dcm",
        "US1_J2KR.dcm",
        "US1_J2KI.dcm",
        "OBXXXX1A.dcm",
        "OBXXXX1A_expb_2frame.dcm",
        "OBXXXX1A_rle_2frame.dcm",
        "color3d_jpeg_baseline.dcm",
        "gdcm-US-ALOKA-16.dcm",
        "gdcm-US-ALOKA-16_big.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
    ],
    "deid-data": ["GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm", "ultrasound-multiframe.dcm"],
}
ZIPPED = ["GREYSCALE_CINE.zip", "RGB_CINE.zip"]


def _discover() -> list[tuple[str, str]]:
    found = {(src, name) for src, names in EXPECTED.items() for name in names}
    for src, root in _roots().items():
        found |= {(src, p.name) for p in root.glob("*.dcm") if _is_us(p)}
    found |= {("deid-data", name) for name in ZIPPED}
    return sorted(found)


US_FILES = _discover()


@pytest.fixture(scope="session")
def unzipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deid_cines")


def _resolve(src: str, name: str, unzipped: Path) -> Path:
    root = _roots().get(src)
    if root is None:
        pytest.skip(f"{src} is not installed")
    path = root / name
    if not path.is_file():
        pytest.skip(f"{name} not found in {root}")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            member = z.namelist()[0]
            target = unzipped / member
            if not target.is_file():
                z.extract(member, unzipped)
        return target
    return path


def _reference_rgb(path: Path, indices: list[int] | None) -> np.ndarray:
    """pydicom's ``pixel_array`` (YBR already converted to RGB by pydicom), palette applied, as (T, H, W, 3)."""
    ds = pydicom.dcmread(path)
    frames = [ds.pixel_array] if indices is None else [pixel_array(path, index=i) for i in indices]
    arr = np.stack(frames) if indices is not None else frames[0]
    if indices is None and int(ds.get("NumberOfFrames", 1) or 1) == 1:
        arr = arr[None]
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif pi == "MONOCHROME1":
        arr = (1 << ds.BitsStored) - 1 - arr.astype(np.int64)
    if arr.shape[-1] != 3 or (int(ds.SamplesPerPixel) == 1 and pi != "PALETTE COLOR"):
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr.astype(np.float32)


@pytest.mark.parametrize(("src", "name"), US_FILES, ids=[f"{s}:{n}" for s, n in US_FILES])
def test_every_us_dicom_matches_pydicom(src: str, name: str, unzipped: Path) -> None:
    path = _resolve(src, name, unzipped)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    kw = {} if n * ds.Rows * ds.Columns <= FULL_COMPARE_MAX_PIXELS else {"max_frames": 4}
    rgb = read_dicom(path, color=True, **kw)
    grey = read_dicom(path, **kw)
    indices = None if not kw else rgb.meta["frame_indices"]
    ref = _reference_rgb(path, indices)  # (T, H, W, 3)
    if n == 1:
        assert rgb.shape == (3, ds.Rows, ds.Columns) and grey.shape == (1, ds.Rows, ds.Columns)
        assert rgb.meta["us_kind"] == "still"
        ref = ref[0]
        got_rgb = np.moveaxis(rgb.numpy(), 0, -1)
    else:
        t = n if not kw else 4
        assert rgb.shape == (3, t, ds.Rows, ds.Columns) and grey.shape == (1, t, ds.Rows, ds.Columns)
        assert rgb.meta["us_kind"] == "cine" and rgb.meta["source_num_frames"] == n
        got_rgb = np.moveaxis(rgb.numpy(), 0, -1)
    np.testing.assert_array_equal(got_rgb, ref)
    np.testing.assert_allclose(grey.numpy()[0], ref @ LUMA, rtol=0, atol=1e-3 * max(1.0, float(ref.max()) / 255))
    assert rgb.meta["photometric"] == ds.PhotometricInterpretation and rgb.meta["modality"] == "US"


def _get(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return Path(path)


def test_frame_subset_equals_slice_of_full_read() -> None:
    path = _get("examples_ybr_color.dcm")
    full = read_dicom(path, color=True)
    for kw, idx in [
        ({"start": 3, "stride": 4, "clip_length": 5}, [3, 7, 11, 15, 19]),
        ({"start": 27, "clip_length": 5}, [27, 28, 29, 29, 29]),
        ({"max_frames": 4}, [0, 10, 19, 29]),
        ({"start": -2}, [28, 29]),
    ]:
        clip = read_dicom(path, color=True, **kw)
        assert clip.meta["frame_indices"] == idx
        np.testing.assert_array_equal(clip.numpy(), full.numpy()[:, idx])


def test_clip_decodes_only_requested_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    path = _get("color3d_jpeg_baseline.dcm")
    decoder = get_decoder(JPEGBaseline8Bit)
    asked: list[int] = []
    original = decoder.iter_array

    def spy(src, *, indices=None, **kw):
        asked.extend(indices)
        return original(src, indices=indices, **kw)

    monkeypatch.setattr(decoder, "iter_array", spy)
    clip = read_dicom(path, start=100, stride=2, clip_length=4)
    assert asked == [100, 102, 104, 106] and clip.shape == (1, 4, 480, 640)


def test_spacing_and_timing_from_the_header() -> None:
    # examples_ybr_color: region PhysicalDeltaX = PhysicalDeltaY = 0.05104970559477806 cm, FrameTime 33.333 ms
    x = read_dicom(_get("examples_ybr_color.dcm"), max_frames=2)
    assert x.meta["spacing"] == pytest.approx([0.5104970559477806, 0.5104970559477806])
    assert x.meta["frame_time_ms"] == pytest.approx(33.333) and x.meta["fps"] == pytest.approx(1000 / 33.333)
    assert x.meta[US_REGIONS] == [[31, 84, 415, 596]]  # MinY0 31, MinX0 84, MaxY1 414, MaxX1 595 (inclusive)
    assert x.affine[1, 1].item() == pytest.approx(0.5104970559477806)


def test_timing_from_the_frame_time_vector(unzipped: Path) -> None:
    # RGB_CINE (deid-data): no FrameTime, FrameTimeVector [0, 57.9671, ...]; deltas X 0.006768174 cm, Y 0.006767122 cm
    cine = read_dicom(_resolve("deid-data", "RGB_CINE.zip", unzipped), clip_length=2)
    assert cine.meta["frame_time_ms"] == pytest.approx(57.9671) and cine.meta["fps"] == pytest.approx(1000 / 57.9671)
    assert cine.meta["spacing"] == pytest.approx([0.067671221588146225, 0.06768174349098055])


def test_spacing_of_the_tissue_region_or_unknown() -> None:
    # palette still with two regions: the 2D tissue one gives the spacing (0.026228787661969977 cm)
    pal = read_dicom(_get("examples_palette.dcm"))
    assert pal.meta["spacing"] == pytest.approx([0.26228787661969977] * 2)
    assert pal.meta["us_region_box"] == [60, 120, 519, 801] and len(pal.meta[US_REGIONS]) == 2
    # no regions, no PixelSpacing: unknown
    assert np.isnan(read_dicom(_get("examples_rgb_color.dcm")).meta["spacing"]).all()


def _write_us(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.set_pixel_data(arr, photometric, arr.dtype.itemsize * 8)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_inverted_and_fallback_metadata(tmp_path: Path) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4
    path = _write_us(tmp_path / "m1.dcm", arr, "MONOCHROME1", CineRate=25, PixelSpacing=[0.2, 0.3])
    x = read_dicom(path)
    np.testing.assert_array_equal(x.numpy()[0], 255 - arr.astype(np.float32))
    assert x.meta["fps"] == pytest.approx(25.0) and x.meta["frame_time_ms"] == pytest.approx(40.0)
    assert x.meta["spacing"] == pytest.approx([0.2, 0.3])
    rgb = read_dicom(path, color=True)
    assert rgb.shape == (3, 3, 4, 5) and all(np.array_equal(rgb[c], x[0]) for c in range(3))
    still = _write_us(tmp_path / "fps.dcm", arr[:1][0], RecommendedDisplayFrameRate=12)
    assert read_dicom(still).shape == (1, 4, 5)


def test_monai_load_image_and_dict_and_suffixless_file(tmp_path: Path) -> None:
    path = _get("OBXXXX1A_2frame.dcm")
    direct = read_dicom(path, color=True)
    via = LoadImage(reader=UltrasoundDicomReader(color=True), image_only=True)(path)
    np.testing.assert_array_equal(via.numpy(), direct.numpy())
    assert via.shape == (3, 2, 600, 800) and via.meta["spacing"] == direct.meta["spacing"]
    bare = tmp_path / "IM0001"  # PACS files often have no suffix: found by the DICM preamble
    bare.write_bytes(path.read_bytes())
    reader = UltrasoundDicomReader()
    assert reader.verify_suffix(str(bare)) and not reader.verify_suffix(str(tmp_path / "x.png"))
    d = LoadImaged("img", reader=reader)({"img": str(bare)})
    assert d["img"].shape == (1, 2, 600, 800)


def test_bad_files_raise_errors_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.dcm"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    src = _get("examples_ybr_color.dcm").read_bytes()
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(src[:400])
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(_get("US1_UNCR.dcm").read_bytes()[:500_000])
    for path in (empty, noise, cut_header, cut_pixels, tmp_path / "missing.dcm"):
        with pytest.raises(UnreadableFileError, match=path.name):
            read_dicom(path)


def test_corrupt_jpeg_stream_is_unreadable(tmp_path: Path) -> None:
    data = bytearray(_get("examples_ybr_color.dcm").read_bytes())
    start = data.find(b"\xff\xd8\xff")  # first JPEG frame: scramble its entropy-coded data
    data[start + 700 : start + 3000] = bytes(2300)
    data[start + 2 : start + 40] = b"\x00" * 38
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableFileError, match=r"corrupt.dcm"):
        read_dicom(path, clip_length=1)


def test_missing_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_get("examples_palette.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(UnreadableFileError, match="no pixel data"):
        read_dicom(tmp_path / "nopix.dcm")


def test_non_ultrasound_modality() -> None:
    ct = _get("CT_small.dcm")
    with pytest.raises(NotUltrasoundError, match=r"CT_small.dcm.*'CT'"):
        read_dicom(ct)
    with pytest.raises(NotUltrasoundError, match=r"MR_small.dcm"):
        read_dicom(_get("MR_small.dcm"))
    x = read_dicom(ct, allow_any_modality=True)
    np.testing.assert_array_equal(x.numpy()[0], pydicom.dcmread(ct).pixel_array)


def test_missing_decoder_is_unsupported_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {})  # as if no JPEG plugin were installed
    with pytest.raises(UnsupportedCodecError, match=r"examples_ybr_color.dcm: .*JPEG Baseline"):
        read_dicom(_get("examples_ybr_color.dcm"))


def test_bad_frame_selection() -> None:
    with pytest.raises(InvalidInputError, match=r"OBXXXX1A_2frame.dcm"):
        read_dicom(_get("OBXXXX1A_2frame.dcm"), start=5)
