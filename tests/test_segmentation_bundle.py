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
