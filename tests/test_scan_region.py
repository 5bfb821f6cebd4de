"""Scan-region (FOV) detection and transforms: hand-annotated real frames, synthetic probes, MONAI plumbing."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from ultramae_monai.data import MetaKeys, make_metatensor, read_video
from ultramae_monai.errors import InvalidInputError
from ultramae_monai.transforms import (
    REGIONS_META_KEY,
    ScanRegion,
    ScanRegiond,
    apply_fov,
    detect_fov_mask,
    regions_from_meta,
)

FOV_FIXTURES = sorted((Path(__file__).parent / "fixtures" / "fov").glob("*.json"))


def _deid_dir() -> Path:
    deid_data = pytest.importorskip("deid_data")
    return Path(deid_data.__file__).parent / "data"


def _dicom_array(path: Path, tmp_dir: Path) -> np.ndarray:
    """Channel-first frames straight from pydicom (the DICOM reader is tested elsewhere)."""
    if ".zip:" in str(path):
        archive, member = str(path).split(":")
        with zipfile.ZipFile(archive) as z:
            path = Path(z.extract(member, tmp_dir))
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float32)  # (H, W), (T, H, W) or with a trailing RGB axis
    return np.moveaxis(a, -1, 0) if ds.SamplesPerPixel == 3 else a[None]


def _load_fixture_image(fx: dict, shared: Path | None, tmp_dir: Path) -> np.ndarray:
    if fx["dataset"] == "deid-data":
        return _dicom_array(_deid_dir() / fx["path"], tmp_dir)
    if shared is None:
        pytest.skip("needs ../shared/data")
    if fx["dataset"] == "pocus":
        return read_video(shared / "pocus" / fx["path"], max_frames=16).numpy()
    if fx["dataset"] == "hc18":
        return np.asarray(Image.open(shared / "hc18" / fx["path"]).convert("L"), np.float32)[None]
    raise AssertionError(f"unknown dataset {fx['dataset']}")


def _fraction(mask: np.ndarray, box: list[int]) -> float:
    r0, c0, r1, c1 = box
    return float(mask[r0:r1, c0:c1].mean())


@pytest.mark.parametrize("fixture", FOV_FIXTURES, ids=lambda p: p.stem)
def test_detected_fov_against_hand_annotations(fixture: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fx = json.loads(fixture.read_text())
    shared = request.getfixturevalue("shared_data") if fx["dataset"] != "deid-data" else None
    image = _load_fixture_image(fx, shared, tmp_path)
    mask = detect_fov_mask(image)
    assert mask.shape == image.shape[-2:] and mask.dtype == bool
    for box in fx["outside"]:
        assert _fraction(mask, box) <= 0.01, f"{fixture.stem}: text/UI box {box} inside the mask"
    for box in fx["inside"]:
        assert _fraction(mask, box) >= 0.99, f"{fixture.stem}: tissue box {box} outside the mask"
    if image.ndim == 4:  # a cine's first frame alone (less evidence: no motion) must nearly agree
        still = detect_fov_mask(image[:, 0])
        for box in fx["outside"]:
            assert _fraction(still, box) <= 0.03, f"{fixture.stem} (first frame): {box}"
        for box in fx["inside"]:
            assert _fraction(still, box) >= 0.97, f"{fixture.stem} (first frame): {box}"


def _fan(
    h: int = 240, w: int = 320, seed: int = 0, t: int = 1, depth: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A sector (apex at the top centre, 60 degrees, ``depth`` rows) of speckle on black: (frames, truth)."""
    rr, cc = np.mgrid[0:h, 0:w]
    angle = np.degrees(np.arctan2(cc - w / 2, rr + 10))
    radius = np.hypot(rr + 10, cc - w / 2)
    truth = (np.abs(angle) < 30) & (radius < (depth or h - 10))
    rng = np.random.default_rng(seed)
    frames = np.where(truth, rng.rayleigh(40, (t, h, w)), 0.0).astype(np.float32)
    return frames, truth


def _burn_text(frames: np.ndarray, boxes: list[list[int]]) -> None:
    """Static 'text': thin bright strokes, two pixels wide, in each box."""
    for r0, c0, r1, c1 in boxes:
        frames[:, r0:r1:4, c0:c1] = 255.0
        frames[:, r0:r1, c0:c1:5] = 255.0


def test_synthetic_sector_with_text_outside() -> None:
    frames, truth = _fan()
    text = [[5, 5, 40, 90], [205, 270, 235, 315], [100, 290, 180, 300]]
    _burn_text(frames, text)
    mask = detect_fov_mask(frames[None, 0])
    for box in text:
        assert _fraction(mask, box) == 0.0
    assert (mask & truth).sum() / truth.sum() > 0.95  # recall
    assert (mask & truth).sum() / mask.sum() > 0.95  # precision


def test_synthetic_linear_rectangle_with_black_border() -> None:
    rng = np.random.default_rng(1)
    img = np.zeros((1, 300, 400), np.float32)
    img[0, 30:280, 60:340] = rng.rayleigh(50, (250, 280))
    _burn_text(img, [[5, 100, 25, 300]])
    mask = detect_fov_mask(torch.from_numpy(img))
    truth = np.zeros((300, 400), bool)
    truth[30:280, 60:340] = True
    assert (mask ^ truth).sum() / truth.sum() < 0.03
    assert _fraction(mask, [5, 100, 25, 300]) == 0.0


def test_cine_uses_what_varies() -> None:
    """A static textured panel below the fan looks like tissue in one frame, not over time."""
    frames, truth = _fan(h=320, w=320, t=8, seed=2, depth=200)
    panel = [250, 130, 310, 190]
    frames[:, 250:310, 130:190] = np.random.default_rng(3).rayleigh(40, (60, 60))  # identical in every frame
    still_mask = detect_fov_mask(frames[None, 0])
    cine_mask = detect_fov_mask(frames[None])
    assert _fraction(still_mask, panel) > 0.9  # a still has no way to tell
    assert _fraction(cine_mask, panel) == 0.0
    assert (cine_mask & truth).sum() / truth.sum() > 0.95
    assert (cine_mask & truth).sum() / cine_mask.sum() > 0.95


def test_blank_frame_falls_back_to_regions_or_whole_frame() -> None:
    blank = np.zeros((1, 64, 80), np.float32)
    assert detect_fov_mask(blank).all()
    mask = detect_fov_mask(blank, regions=[[10, 20, 50, 60]])
    assert mask.sum() == 40 * 40 and mask[10:50, 20:60].all()


def test_dicom_regions_restrict_the_evidence() -> None:
    frames, _ = _fan()
    frames[0, :, :40] = np.random.default_rng(4).rayleigh(40, (240, 40))  # a second textured area, left
    image = make_metatensor(frames[None, 0], "still", {REGIONS_META_KEY: [[0, 60, 240, 320]]})
    assert regions_from_meta(image.meta) == [[0, 60, 240, 320]]
    mask = ScanRegion(crop=False).detect(image)
    assert not mask[:, :60].any()
    dicom_style = {REGIONS_META_KEY: [{"RegionLocationMinX0": 60, "RegionLocationMinY0": 0,
                                       "RegionLocationMaxX1": 319, "RegionLocationMaxY1": 239}]}  # fmt: skip
    assert regions_from_meta(dicom_style) == [[0, 60, 240, 320]]


def test_array_transform_blanks_crops_and_keeps_metadata() -> None:
    frames, _ = _fan()
    _burn_text(frames, [[5, 5, 40, 90]])
    image = make_metatensor(frames[None, 0], "still", {"filename_or_obj": "fan.png", MetaKeys.SPACING: [0.2, 0.3]})
    out = ScanRegion()(image)
    box = out.meta[MetaKeys.FOV_BOX]
    mask = out.meta[MetaKeys.FOV_MASK]
    assert isinstance(out, MetaTensor) and out.shape == (1, box[2] - box[0], box[3] - box[1])
    assert mask.shape == (1, *out.shape[1:]) and mask.dtype == torch.bool
    assert torch.all(out[~mask] == 0)  # blanked outside
    assert torch.equal(out[mask], image[:, box[0] : box[2], box[1] : box[3]][mask])
    assert out.meta["filename_or_obj"] == "fan.png" and out.meta[MetaKeys.SPACING] == [0.2, 0.3]
    # the crop moved the origin by the box corner, in mm (MONAI's SpatialCrop keeps the affine right)
    torch.testing.assert_close(out.affine[:2, 2], torch.tensor([box[0] * 0.2, box[1] * 0.3], dtype=torch.float64))
    uncropped = ScanRegion(crop=False)(image)
    assert uncropped.shape == image.shape and uncropped.meta[MetaKeys.FOV_MASK].shape == (1, 240, 320)
    untouched = ScanRegion(blank=False, crop=False)(image)
    assert torch.equal(untouched.as_tensor(), image.as_tensor())
    margin = ScanRegion(margin=5)(image).meta[MetaKeys.FOV_BOX]
    assert margin == [max(box[0] - 5, 0), box[1] - 5, min(box[2] + 5, 240), box[3] + 5]


def test_cine_crop_keeps_all_frames() -> None:
    frames, _ = _fan(t=5)
    out = ScanRegion()(make_metatensor(frames[None], "cine", {MetaKeys.FPS: 20.0}))
    box = out.meta[MetaKeys.FOV_BOX]
    assert out.shape == (1, 5, box[2] - box[0], box[3] - box[1])
    assert out.meta[MetaKeys.FPS] == 20.0 and out.meta[MetaKeys.KIND] == "cine"


def test_dict_transform_in_compose_crops_image_label_and_mask_consistently() -> None:
    frames, truth = _fan(t=4)
    image = make_metatensor(frames[None], "cine")
    label = make_metatensor(np.broadcast_to(truth, (1, 240, 320)).astype(np.float32), "still")
    data = Compose([ScanRegiond(["image", "label"], source_key="image")])({"image": image, "label": label})
    box = data["image"].meta[MetaKeys.FOV_BOX]
    assert data["label"].meta[MetaKeys.FOV_BOX] == box
    assert data["image_fov_mask"].shape == data["label_fov_mask"].shape == (1, box[2] - box[0], box[3] - box[1])
    assert torch.equal(data["image_fov_mask"], data["label_fov_mask"])
    assert data["image"].shape[-2:] == data["label"].shape[-2:] == data["image_fov_mask"].shape[-2:]
    assert torch.equal(data["label"][0].bool(), torch.from_numpy(truth)[box[0] : box[2], box[1] : box[3]])
    alone = ScanRegiond("image", mask_key_postfix="roi")({"image": image})
    assert "image_roi" in alone and torch.equal(alone["image_roi"], data["image_fov_mask"])
    with pytest.raises(KeyError):
        ScanRegiond("missing")({"image": image})
    assert ScanRegiond("missing", allow_missing_keys=True)({"image": image})["image"] is image


def test_apply_fov_and_bad_input() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:9] = True
    out = apply_fov(np.ones((2, 10, 12), np.float32), mask)
    assert out.shape == (2, 4, 6) and out.meta[MetaKeys.FOV_BOX] == [2, 3, 6, 9]
    with pytest.raises(InvalidInputError, match="does not match"):
        apply_fov(np.ones((1, 10, 13)), mask)
    with pytest.raises(InvalidInputError, match="NaN"):
        detect_fov_mask(np.full((1, 10, 12), np.nan))
    with pytest.raises(InvalidInputError, match=r"\(C, H, W\)"):
        detect_fov_mask(np.ones((10, 12)))
