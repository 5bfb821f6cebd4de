"""UltrasoundConfidenceMap(d): layouts, metadata, FOV, cine, volumes, bad input, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, UltrasoundConfidenceMapTransform

from ultramae_monai.cli.confmap import confmap
from ultramae_monai.confmap import confidence_map
from ultramae_monai.data.convention import KIND_VOLUME, make_metatensor
from ultramae_monai.errors import ConvergenceError, InvalidInputError
from ultramae_monai.transforms import UltrasoundConfidenceMap, UltrasoundConfidenceMapd


def _speckle(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    depth = np.linspace(1.0, 0.3, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return (rng.rayleigh(40.0, shape) * depth).clip(0, 255).astype(np.uint8).astype(np.float32)


def test_swaps_for_monai_and_keeps_channel_and_meta() -> None:
    img = _speckle((1, 30, 24))
    ref = UltrasoundConfidenceMapTransform(gamma=0.05)(img)
    mt = make_metatensor(img, "still", meta={"filename_or_obj": "x.png"})
    out = UltrasoundConfidenceMap(gamma=0.05)(mt)
    assert out.shape == (1, 30, 24) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "x.png" and out.meta["us_kind"] == "still"
    assert np.abs(out[0].numpy() - ref).max() <= 1e-4


def test_dict_compose_output_postfix_and_fov_key() -> None:
    img = make_metatensor(_speckle((1, 30, 24)), "still")
    fov = torch.zeros(1, 30, 24, dtype=torch.bool)
    fov[:, :, 4:20] = True
    t = Compose([UltrasoundConfidenceMapd("image", output_postfix="_conf")])
    out = t({"image": img, "image_fov_mask": fov})
    conf = out["image_conf"]
    assert torch.equal(out["image"], img) and conf.shape == img.shape
    assert (conf[0, :, :4] == 0).all() and (conf[0, :, 20:] == 0).all()
    # inside a rectangular FOV the map is the map of the crop
    crop = confidence_map(img[0, :, 4:20].numpy())
    np.testing.assert_allclose(conf[0, :, 4:20].numpy(), crop, atol=1e-6)


def test_sector_fov_map_is_defined_and_zero_outside() -> None:
    img = _speckle((1, 40, 40), seed=1)
    yy, xx = np.mgrid[:40, :40]
    fov = (np.hypot(yy + 5, xx - 20) < 44) & (np.abs(xx - 20) < (yy + 5) * 0.8)
    out = UltrasoundConfidenceMap()(img, fov_mask=fov[None]).numpy()[0]
    assert np.isfinite(out).all() and (out[~fov] == 0).all()
    assert out.max() == 1.0 and out[fov].min() >= 0.0


def test_cine_every_frame_matches_and_backends_agree() -> None:
    frames = np.stack([_speckle((24, 20), seed=s) for s in range(3)])[None]
    out = UltrasoundConfidenceMap(gamma=0.3)(frames)
    assert out.shape == frames.shape
    for t in range(3):
        np.testing.assert_allclose(out[0, t].numpy(), confidence_map(frames[0, t], gamma=0.3), atol=1e-6)
    direct = UltrasoundConfidenceMap(gamma=0.3, backend="direct")(frames)
    np.testing.assert_allclose(direct.numpy(), out.numpy(), atol=1e-6)


@pytest.mark.parametrize("beam_axis", [0, 1])
def test_cine_frames_batched_equal_frame_by_frame(beam_axis: int) -> None:
    frames = np.stack([_speckle((24, 20), seed=s) for s in range(4)])[None]  # (1, T, H, W)
    fov = np.zeros((1, 24, 20), bool)
    fov[:, 2:22, 3:18] = True
    batched = UltrasoundConfidenceMap(gamma=0.1, beam_axis=beam_axis)(frames, fov_mask=fov)  # auto: multifrontal
    for t in range(4):
        ref = confidence_map(frames[0, t], gamma=0.1, beam_axis=beam_axis, fov_mask=fov[0], backend="direct")
        np.testing.assert_allclose(batched[0, t].numpy(), ref, atol=1e-6)


def test_fov_mask_from_scan_region_metadata() -> None:
    img = make_metatensor(_speckle((24, 20))[None] * 255, "still")
    fov = np.zeros((1, 24, 20), bool)
    fov[:, :, 4:16] = True
    img.meta["fov_mask"] = torch.from_numpy(fov)
    out = UltrasoundConfidenceMap()(img)
    assert float(out[0][~torch.from_numpy(fov[0])].abs().max()) == 0.0
    torch.testing.assert_close(out, UltrasoundConfidenceMap()(img.as_tensor(), fov_mask=fov))


def test_volume_of_identical_slices_reproduces_2d() -> None:
    sl = _speckle((16, 14), seed=2)
    vol = np.repeat(sl[:, :, None], 5, axis=2)[None]
    out = UltrasoundConfidenceMap()(make_metatensor(vol, KIND_VOLUME))
    ref = confidence_map(sl)
    for d in range(5):
        np.testing.assert_allclose(out[0, :, :, d].numpy(), ref, atol=1e-6)


def test_volume_properties_on_resect(shared_data) -> None:
    import nibabel as nib

    vol = np.asarray(nib.load(shared_data / "resect_3dus" / "Case3_US-before.nii.gz").dataobj, dtype=np.float32)
    sub = vol[60:200:4, 60:200:4, 100:240:4]  # 35^3 block, the beam along axis 0
    out = confidence_map(sub, gamma=0.05, connectivity=14)
    assert np.isfinite(out).all() and out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert np.allclose(out[0], 1.0) and np.allclose(out[-1], 0.0)
    depth_mean = out.mean(axis=(1, 2))
    assert (np.diff(depth_mean) <= 1e-6).mean() > 0.9


@pytest.mark.parametrize(
    ("img", "kwargs"),
    [
        (np.full((10, 10), np.nan), {}),
        (np.ones((2, 10)), {}),
        (np.ones((10,)), {}),
        (np.ones((10, 10)), {"alpha": 0.0}),
        (np.ones((10, 10)), {"beta": -1.0}),
        (np.ones((10, 10)), {"gamma": -0.1}),
        (np.ones((10, 10)), {"sink_mode": "mask"}),
        (np.ones((10, 10)), {"backend": "cuda-magic"}),
    ],
)
def test_bad_input_raises_clear_error(img: np.ndarray, kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        confidence_map(img, **kwargs)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_image_is_defined(value: float) -> None:
    out = confidence_map(np.full((12, 9), value))
    assert np.isfinite(out).all() and np.allclose(out[0], 1) and np.allclose(out[-1], 0)


def test_slices_iteration_cap_raises() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConvergenceError, match="iterations"):
        confidence_map(np.clip(rng.rayleigh(40.0, (16, 12, 6)), 0, 255), backend="slices", max_iter=1, tol=1e-14)


def test_transform_rejects_wrong_layout() -> None:
    with pytest.raises(InvalidInputError):
        UltrasoundConfidenceMap()(np.ones((10, 10)))


def test_cli_png_npy_nifti_and_folder(tmp_path) -> None:
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    img = _speckle((20, 16)).astype(np.uint8)
    Image.fromarray(img).save(src / "a.png")
    Image.fromarray(img[::-1].copy()).save(src / "b.png")
    ref = confidence_map(img.astype(np.float64))
    npy = confmap(src / "a.png", tmp_path / "a.npy")[0]
    np.testing.assert_allclose(np.load(npy)[0], ref, atol=1e-6)
    import nibabel as nib

    nii = confmap(src / "a.png", tmp_path / "a.nii.gz")[0]
    np.testing.assert_allclose(np.asarray(nib.load(nii).dataobj), ref, atol=1e-6)
    png = confmap(src / "a.png", tmp_path / "a_map.png")[0]
    assert np.abs(np.asarray(Image.open(png)) / 255.0 - ref).max() <= 0.5 / 255 + 1e-6
    written = confmap(src, tmp_path / "out")
    assert sorted(p.split("/")[-1] for p in written) == ["a.npy", "b.npy"]
    with pytest.raises(InvalidInputError):
        confmap(tmp_path / "missing.png", tmp_path / "x.npy")
    with pytest.raises(InvalidInputError):
        confmap(src / "a.png", tmp_path / "x.jpg")


@pytest.mark.parametrize("sink_mode", ["mid", "min"])
@pytest.mark.parametrize("connectivity", [6, 14])
def test_volume_sink_modes_and_connectivities(sink_mode: str, connectivity: int) -> None:
    vol = _speckle((8, 7, 6), seed=4)
    out = confidence_map(vol, sink_mode=sink_mode, connectivity=connectivity)
    assert np.isfinite(out).all() and np.allclose(out[0], 1.0)
    zeros = np.isclose(out[-1], 0.0)
    assert zeros.sum() >= 1 and not zeros.all()  # one sink scanline (or the darkest ones), not the whole plane
    assert (out >= -1e-7).all() and (out <= 1 + 1e-7).all()
