"""The segmentation bundle's inference config as Deploy / Label load it, and MONAI's bundle tools on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from PIL import Image
from pydicom.data import get_testdata_file

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultramae_segmentation"
MICRO = {"preset": "micro", "img_size": 64}


def _parser(bundle: Path, config: str = "inference.json", **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_meta(bundle / "configs" / "metadata.json")
    parser.read_config(bundle / "configs" / config)
    parser["bundle_root"] = str(bundle)
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of the bundle with random-init ``models/model.pt`` of the micro network (as the zoo ships weights)."""
    root = tmp_path / "ultramae_segmentation"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    torch.manual_seed(0)
    net = _parser(root, **MICRO).get_parsed_content("network_def")
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def test_contract_ids_give_a_working_pipeline(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    parser = _parser(bundle, **MICRO, output_dir=str(tmp_path / "out"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    inferer = parser.get_parsed_content("inferer")
    src = shared_data / "hc18" / "images" / "001_HC.png"
    item = pre({"image": str(src)})
    assert item["image"].shape == (1, 64, 64) and abs(float(item["image"].mean())) < 5
    with torch.no_grad():
        item["pred"] = inferer(item["image"][None], net)[0]
    assert item["pred"].shape == (2, 64, 64)
    out = post(item)
    w, h = Image.open(src).size
    assert out["pred"].shape == (1, h, w)  # back on the file's pixel grid
    assert set(np.unique(out["pred"].numpy())) <= {0.0, 1.0}


def test_inference_run_writes_masks_of_the_input_size(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "held out"
    data.mkdir()
    shutil.copy(shared_data / "hc18" / "images" / "002_HC.png", data / "002_HC.png")
    shutil.copy(shared_data / "busi" / "benign" / "benign (12).png", data / "benign (12).png")
    shutil.copy(get_testdata_file("examples_palette.dcm"), data / "palette still.dcm")
    out = tmp_path / "out"
    parser = _parser(bundle, **MICRO, dataset_dir=str(data), output_dir=str(out))
    for expr in parser.get("initialize", []):
        parser.get_parsed_content(f"initialize#{parser.get('initialize').index(expr)}")
    parser.get_parsed_content("evaluator").run()
    for name in ("002_HC", "benign (12)"):
        src = next(data.glob(f"{name}.png"))
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.size == Image.open(src).size
        assert Image.open(out / f"{name}_overlay.png").size == mask.size
    nifti = nib.load(out / "palette still_mask.nii.gz")  # DICOM in, NIfTI out, with the pixel spacing
    assert nifti.shape == (350, 800, 1)
    np.testing.assert_allclose(nifti.header.get_zooms()[:2], [0.26228787661969977] * 2, rtol=1e-5)
    assert Image.open(out / "palette still_overlay.png").size == (800, 350)


def test_verify_net_in_out_and_torchscript_export(bundle: Path, tmp_path: Path) -> None:
    configs = bundle / "configs"
    verify_net_in_out(
        "network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        preset="micro",
    )
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        "network_def",
        filepath=str(ts_path),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        use_trace=True,
        input_shape=[1, 1, 64, 64],
        preset="micro",
    )
    scripted = torch.jit.load(str(ts_path))
    net = _parser(bundle, **MICRO).get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net.eval()(x), rtol=1e-5, atol=1e-5)


def test_evaluation_scores_masks_in_the_input_geometry(bundle: Path, tmp_path: Path) -> None:
    """A perfect network-size prediction of a thin structure is not perfect on the original mask: metrics see that."""
    rng = np.random.default_rng(0)
    image = (rng.random((97, 131)) * 200).astype(np.uint8)
    mask = np.zeros((97, 131), dtype=np.uint8)
    mask[40:42, 10:120] = 255  # a 2-px line, 97/64 px per network pixel
    Image.fromarray(image).save(tmp_path / "scan (1).png")
    Image.fromarray(mask).save(tmp_path / "scan (1)_mask.png")
    parser = _parser(
        bundle,
        "evaluate.json",
        **MICRO,
        crop_scan_region=False,
        fill_outlines="never",
        ckpt=str(bundle / "models" / "model.pt"),
    )
    item = parser.get_parsed_content("preprocessing")(
        {"image": str(tmp_path / "scan (1).png"), "label": str(tmp_path / "scan (1)_mask.png")}
    )
    low = item["label"]
    assert low.shape == (1, 64, 64)
    item["pred"] = torch.cat([1 - low, low]) * 10  # logits whose argmax is the network-size label
    out = parser.get_parsed_content("postprocessing")(item)
    assert out["pred"].shape == out["label_original"].shape == (2, 97, 131)
    np.testing.assert_array_equal(out["label_original"][1].numpy(), mask > 0)  # the file's mask, as stored
    dice = parser.get_parsed_content("key_metric#mean_dice")
    dice.metric_fn([out["pred"]], [out["label_original"]])
    full = float(dice.metric_fn.aggregate())
    hd = parser.get_parsed_content("additional_metrics#hd95")
    hd.metric_fn([out["pred"]], [out["label_original"]])
    assert 0.3 < full < 0.99  # at 64 px the same prediction scores 1.0
    assert float(hd.metric_fn.aggregate()) >= 1.0  # in pixels of the 97 x 131 original
    hd_mm = parser.get_parsed_content("additional_metrics#hd95_mm").metric_fn
    spaced = out["pred"].clone()
    spaced.meta["spacing"] = [0.5, 0.5]
    assert float(hd_mm([spaced], [out["label_original"]]).mean()) == pytest.approx(
        float(hd.metric_fn.aggregate()) * 0.5
    )
    hd_mm.reset()
    assert torch.isnan(hd_mm([out["pred"]], [out["label_original"]])).all()  # a PNG carries no spacing
    assert torch.isnan(hd_mm.aggregate())  # so metrics.json says null, not 0


def test_inference_segments_every_frame_of_a_cine(bundle: Path, tmp_path: Path) -> None:
    """A real 30-frame ultrasound cine DICOM gives a (H, W, 30) NIfTI mask on its grid and one overlay per frame."""
    data = tmp_path / "cines"
    data.mkdir()
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), data / "heart (1).dcm")
    out = tmp_path / "out"
    parser = _parser(bundle, **MICRO, dataset_dir=str(data), output_dir=str(out))
    for i in range(len(parser.get("initialize", []))):
        parser.get_parsed_content(f"initialize#{i}")
    parser.get_parsed_content("evaluator").run()
    nifti = nib.load(out / "heart (1)_mask.nii.gz")
    assert nifti.shape == (240, 320, 30)
    np.testing.assert_allclose(nifti.header.get_zooms()[:2], [0.5104970559477806] * 2, rtol=1e-5)
    assert set(np.unique(np.asarray(nifti.dataobj))) <= {0, 1}
    overlays = sorted(out.glob("heart (1)_overlay_t*.png"))
    assert len(overlays) == 30 and Image.open(overlays[-1]).size == (320, 240)


def test_frame_inferer_matches_the_network_frame_by_frame() -> None:
    from ultramae_monai.engines import FrameInferer

    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    cine = torch.rand(2, 1, 5, 16, 16)
    out = FrameInferer(frames_per_batch=3)(cine, net)
    assert out.shape == (2, 2, 5, 16, 16)
    torch.testing.assert_close(out[1, :, 4], net(cine[1, :, 4][None])[0])
    torch.testing.assert_close(FrameInferer()(cine[:, :, 0], net), net(cine[:, :, 0]))


def _infer_folder(bundle: Path, data: Path, out: Path, **overrides) -> None:
    parser = _parser(bundle, **MICRO, dataset_dir=str(data), output_dir=str(out), **overrides)
    for i in range(len(parser.get("initialize", []))):
        parser.get_parsed_content(f"initialize#{i}")
    parser.get_parsed_content("evaluator").run()


def test_multi_frame_nifti_is_segmented_frame_by_frame(bundle: Path, tmp_path: Path) -> None:
    """A (1, T, H, W) DICOM cine and a multi-frame NIfTI give a mask per frame on the input's grid (a NIfTI with T
    frames) and an overlay per frame; each frame's mask is the one that frame gets when segmented alone."""
    rng = np.random.default_rng(0)
    h, w, t = 70, 90, 4
    frames = rng.uniform(0, 60, (h, w, t)).astype(np.float32)
    for k in range(t):
        frames[10 + 8 * k : 40 + 8 * k, 20:60, k] += 150  # a bright region moving down
    affine = np.diag([0.3, 0.3, 1.0, 1.0])
    data, alone = tmp_path / "cines", tmp_path / "frames"
    data.mkdir()
    alone.mkdir()
    nib.save(nib.Nifti1Image(frames, affine), str(data / "clip (1).nii.gz"))
    for k in range(t):
        nib.save(nib.Nifti1Image(frames[..., k : k + 1], affine), str(alone / f"frame {k}.nii.gz"))
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), data / "cine (2).dcm")  # a real 30-frame US cine
    out, out_alone = tmp_path / "out", tmp_path / "out alone"
    _infer_folder(bundle, data, out, crop_scan_region=False)
    _infer_folder(bundle, alone, out_alone, crop_scan_region=False)

    clip = nib.load(out / "clip (1)_mask.nii.gz")
    assert clip.shape == (h, w, t) and np.allclose(clip.affine, affine)
    masks = np.asarray(clip.dataobj)
    assert 0 < masks.sum() < masks.size
    for k in range(t):
        single = np.asarray(nib.load(out_alone / f"frame {k}_mask.nii.gz").dataobj)[..., 0]
        assert (masks[..., k] == single).mean() > 0.999
        assert Image.open(out / f"clip (1)_overlay_t{k:04d}.png").size == (w, h)
    assert not np.array_equal(masks[..., 0], masks[..., -1])  # each frame gets its own mask

    cine = nib.load(out / "cine (2)_mask.nii.gz")  # DICOM in: NIfTI out, (H, W, T) with the pixel spacing
    assert cine.shape == (240, 320, 30)
    np.testing.assert_allclose(cine.header.get_zooms()[:2], [0.5104970559477806] * 2, rtol=1e-5)
    assert len(list(out.glob("cine (2)_overlay_t*.png"))) == 30
