"""Both fine-tuning bundles end to end on a few real images, as ``python -m monai.bundle run`` runs them.

Train (micro encoder, 32 px, 1 epoch) from a pretraining checkpoint made here, then evaluate with only
``--ckpt`` and infer with only the held-out overrides; bad input ends the run before training with one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.bundle import run as bundle_run
from PIL import Image

from ultramae_monai.data.outline_masks import fill_outline_dataset
from ultramae_monai.networks import UltraMAE, UltraMAEEncoder, load_pretrained_encoder

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
CLS, SEG = BUNDLES / "ultramae_classification", BUNDLES / "ultramae_segmentation"
TINY = {"preset": "micro", "tubelet": [2, 8, 8], "img_size": 32, "batch_size": 4, "num_workers": 0}


def _run(bundle: Path, config: str, **overrides) -> None:
    bundle_run(
        config_file=str(bundle / "configs" / config),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretraining checkpoint (network + meta layout) of a micro UltraMAE after two optimiser steps."""
    torch.manual_seed(0)
    model = UltraMAE(preset="micro", tubelet=(2, 8, 8), img_size=32, target="pixel", decoder_depth=1, decoder_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = model(torch.rand(2, 1, 32, 32))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    arch = {"preset": "micro", "embed_dim": 64, "depth": 2, "num_heads": 4, "tubelet": [2, 8, 8], "in_channels": 1}
    meta = {"format": "ultramae-pretrain", "version": 1, "architecture": {**arch, "img_size": [32, 32]}}
    meta["intensity"] = {"mean": 0.25, "std": 0.2}
    path = tmp_path_factory.mktemp("pretrain") / "checkpoint.pt"
    torch.save({"network": model.state_dict(), "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def busi_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busi small")
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir()
        for src in sorted((shared_data / "busi" / cls).glob("*.png"))[:4]:
            shutil.copy(src, root / cls / src.name)  # names like "benign (12).png"
    return root


@pytest.fixture(scope="module")
def hc18_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("hc18 src")
    (src / "images").mkdir()
    (src / "annotations").mkdir()
    for name in ("001_HC", "002_HC", "003_HC", "006_HC", "007_HC", "008_HC"):
        if (shared_data / "hc18" / "images" / f"{name}.png").exists():
            shutil.copy(shared_data / "hc18" / "images" / f"{name}.png", src / "images")
            shutil.copy(shared_data / "hc18" / "annotations" / f"{name}_Annotation.png", src / "annotations")
    out = tmp_path_factory.mktemp("hc18 masks")
    assert fill_outline_dataset(src, out) >= 4
    return out


def test_classification_train_evaluate_infer(busi_small: Path, pretrain_ckpt: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(CLS, "train.json", dataset_dir=str(busi_small), pretrained=str(pretrain_ckpt), max_epochs=1,
         output_dir=str(run), mode="linear", **TINY)  # fmt: skip
    state = torch.load(run / "model.pt", weights_only=True)
    pretrained = torch.load(pretrain_ckpt, weights_only=True)["network"]
    enc = {k: v for k, v in state.items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(v, pretrained[k]) for k, v in enc.items())  # probed encoder = pretraining's
    settings = json.loads((run / "settings.json").read_text())
    assert settings["class_names"] == ["benign", "malignant", "normal"]
    assert settings["intensity"] == {"mean": 0.25, "std": 0.2}  # from the checkpoint's meta

    _run(CLS, "evaluate.json", ckpt=str(run / "model.pt"), num_workers=0)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "per_class_recall", "confusion_matrix"):
        assert key in metrics
    assert metrics["num_samples"] == 3  # the test split: one exam per class
    assert Image.open(run / "confusion_matrix.png").size[0] > 100

    _run(CLS, "inference.json", dataset_dir=str(busi_small), output_dir=str(run))
    rows = (run / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 12 and "benign (" in rows[0]
    assert np.allclose([sum(map(float, r.split(",")[1:])) for r in rows], 1.0, atol=1e-4)


def test_segmentation_train_evaluate_infer(hc18_small: Path, pretrain_ckpt: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    no_arch = {k: v for k, v in TINY.items() if k not in ("preset", "tubelet")}  # taken from the checkpoint
    _run(SEG, "train.json", dataset_dir=str(hc18_small), pretrained=str(pretrain_ckpt), max_epochs=2,
         output_dir=str(run), **no_arch)  # fmt: skip
    assert (run / "model.pt").is_file()
    settings = json.loads((run / "settings.json").read_text())
    assert settings["preset"] == "micro" and settings["tubelet"] == [2, 8, 8]
    _run(SEG, "evaluate.json", ckpt=str(run / "model.pt"), num_workers=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mean_dice", "mean_iou", "hd95", "hd95_mm"} <= set(metrics) and 0 <= metrics["mean_dice"] <= 1
    assert metrics["hd95_mm"] is None  # PNG masks carry no pixel spacing
    assert metrics["geometry"] == "input" and metrics["hd95_unit"] == "pixels of the original image"

    images = tmp_path / "held out"
    images.mkdir()
    for p in sorted((hc18_small / "images").iterdir())[:2]:
        shutil.copy(p, images / p.name.replace("_", " ("))
    out = tmp_path / "pred"
    shutil.copy(run / "model.pt", out.mkdir() or out / "model.pt")
    shutil.copy(run / "settings.json", out / "settings.json")
    _run(SEG, "inference.json", dataset_dir=str(images), output_dir=str(out))
    for src in images.iterdir():
        mask = Image.open(out / f"{src.stem}_mask.png")
        assert mask.size == Image.open(src).size
        assert (out / f"{src.stem}_overlay.png").is_file()


def _expect_exit(match: str, bundle: Path, **overrides) -> None:
    with pytest.raises(SystemExit, match=match):
        _run(bundle, "train.json", max_epochs=1, **{**TINY, **overrides})


def test_bad_input_stops_before_training_naming_the_file(
    busi_small: Path, hc18_small: Path, pretrain_ckpt: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "classes"
    shutil.copytree(busi_small, empty)
    (empty / "cysts").mkdir()
    _expect_exit(r"^error: .*cysts: class folder 'cysts' holds no images", CLS, dataset_dir=str(empty),
                 output_dir=str(tmp_path / "a"))  # fmt: skip
    _expect_exit(r"normal: label 'normal' is not one of the declared classes", CLS, dataset_dir=str(busi_small),
                 class_names=["benign", "malignant"], output_dir=str(tmp_path / "b"))  # fmt: skip
    _expect_exit(r"checkpoint\.pt: checkpoint of another architecture: embed_dim 64 \(encoder: 192\)", CLS,
                 dataset_dir=str(busi_small), pretrained=str(pretrain_ckpt), output_dir=str(tmp_path / "c"),
                 **{**TINY, "preset": "tiny"})  # fmt: skip
    wrong = tmp_path / "pairs"
    shutil.copytree(hc18_small, wrong, symlinks=False)
    mask = next((wrong / "masks").iterdir())
    Image.open(mask).resize((40, 30)).save(mask)
    _expect_exit(rf"{mask.name}: mask is 40x30 but its image", SEG, dataset_dir=str(wrong),
                 output_dir=str(tmp_path / "d"))  # fmt: skip
    assert not (tmp_path / "d" / "model.pt").exists()


def test_classification_network_passes_monai_tools(tmp_path: Path) -> None:
    configs = CLS / "configs"
    verify_net_in_out(
        "network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
        preset="micro",
    )  # fmt: skip
    parser = ConfigParser()
    parser.read_config(configs / "inference.json")
    parser.update({"preset": "micro", "img_size": 32, "tubelet": [2, 8, 8]})
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    ckpt_export(
        "network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"), use_trace=True, input_shape=[1, 1, 32, 32],
        preset="micro", tubelet=[2, 8, 8],
    )  # fmt: skip
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net(x), rtol=1e-5, atol=1e-5)


def test_classification_of_clips_through_the_same_encoder(tmp_path: Path) -> None:
    """Cine DICOMs in class folders, read as 4-frame clips: train, evaluate with only --ckpt, infer."""
    from pydicom.data import get_testdata_file

    cine = Path(get_testdata_file("examples_ybr_color.dcm"))  # a real 30-frame ultrasound cine
    data = tmp_path / "clips"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            shutil.copy(cine, data / cls / f"{cls} ({i}).dcm")
    run = tmp_path / "run"
    clip = {**TINY, "num_frames": 4, "frame_stride": 2, "batch_size": 2, "val_fraction": 0.0, "test_fraction": 0.0}
    _run(CLS, "train.json", dataset_dir=str(data), max_epochs=1, output_dir=str(run), **clip)
    assert json.loads((run / "settings.json").read_text())["num_frames"] == 4
    _run(CLS, "evaluate.json", ckpt=str(run / "model.pt"), num_workers=0)
    assert json.loads((run / "metrics.json").read_text())["num_samples"] == 6
    _run(CLS, "inference.json", dataset_dir=str(data), output_dir=str(run))
    assert len((run / "predictions.csv").read_text().strip().splitlines()) == 6


def test_finetune_from_a_pretraining_bundle_checkpoint(busi_small: Path, tmp_path: Path) -> None:
    """The pretraining bundle runs a few steps; its checkpoint and its exported ``encoder.pt`` fill a fresh encoder
    exactly, and ``encoder.pt`` initialises the classifier's encoder (architecture and intensity from its meta)."""
    from test_pretrain_data import make_manifest

    pre = BUNDLES / "ultramae_pretrain"
    data = make_manifest(tmp_path / "curated", stills=8, clips=2)
    out = tmp_path / "pretrain"
    bundle_run(
        config_file=str(pre / "configs" / "train.json"), meta_file=str(pre / "configs" / "metadata.json"),
        logging_file=str(pre / "configs" / "logging.conf"), bundle_root=str(pre), dataset_dir=str(data),
        output_dir=str(out), preset="micro", target="pixel", img_size=32, tubelet=[2, 8, 8], num_frames=4,
        frame_stride=1, decoder_depth=1, decoder_dim=32, batch_size=4, clip_batch_size=2, max_steps=2,
        max_epochs=1, checkpoint_every=2, num_workers=0, preview_every=0, tensorboard=False,
    )  # fmt: skip
    ckpt = max(out.rglob("*.pt"), key=lambda p: p.stat().st_mtime)
    network = torch.load(ckpt, weights_only=True)["network"]  # weights-only loadable, RNG state included
    encoder_pt = tmp_path / "encoder.pt"
    bundle_run(config_file=str(pre / "configs" / "inference.json"), bundle_root=str(pre), output_dir=str(out),
               export_path=str(encoder_pt), preset="micro", tubelet=[2, 8, 8])  # fmt: skip
    x = torch.rand(2, 1, 32, 32)
    outputs = []
    for source in (ckpt, encoder_pt):  # the checkpoint and the exported encoder fill a fresh encoder alike
        enc = UltraMAEEncoder.from_preset("micro", tubelet=(2, 8, 8)).eval()
        report = load_pretrained_encoder(enc, source)
        assert not report.missing and len(report.matched) == len(enc.state_dict())
        assert all(torch.equal(v, network[f"encoder.{k}"]) for k, v in enc.state_dict().items())
        with torch.no_grad():
            outputs.append(enc(x))
    assert torch.equal(*outputs)
    run = tmp_path / "run"
    _run(CLS, "train.json", dataset_dir=str(busi_small), pretrained=str(encoder_pt), max_epochs=1,
         output_dir=str(run), mode="linear", img_size=32, batch_size=4, num_workers=0)  # fmt: skip
    state = torch.load(run / "model.pt", weights_only=True)
    enc_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    assert enc_state and all(torch.equal(v, network[f"encoder.{k}"]) for k, v in enc_state.items())


def test_monai_mae_weights_build_a_matching_encoder(busi_small: Path, tmp_path: Path) -> None:
    """MONAI MaskedAutoEncoderViT weights: no qkv bias, a class token, eps 1e-5, taken from the checkpoint."""
    from monai.networks.nets import MaskedAutoEncoderViT

    torch.manual_seed(0)
    mae = MaskedAutoEncoderViT(
        in_channels=1, img_size=32, patch_size=8, hidden_size=64, mlp_dim=256, num_layers=2, num_heads=4,
        spatial_dims=2, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
    )  # fmt: skip
    ckpt = tmp_path / "monai_mae.pt"
    torch.save(mae.state_dict(), ckpt)
    run = tmp_path / "run"
    _run(CLS, "train.json", dataset_dir=str(busi_small), pretrained=str(ckpt), max_epochs=1, output_dir=str(run),
         preset="micro", mode="linear", img_size=32, batch_size=4, num_workers=0)  # fmt: skip
    settings = json.loads((run / "settings.json").read_text())
    assert settings["tubelet"] == [2, 8, 8]
    assert settings["encoder_options"] == {"mlp_ratio": 4.0, "qkv_bias": False, "cls_token": True, "norm_eps": 1e-5}
    state = torch.load(run / "model.pt", weights_only=True)
    assert torch.equal(state["encoder.cls_token"], mae.state_dict()["cls_token"])
    _run(CLS, "evaluate.json", ckpt=str(run / "model.pt"), num_workers=0)  # rebuilt from the settings
    assert (run / "metrics.json").is_file()


def test_multi_gpu_config_trains_under_torchrun(busi_small: Path, tmp_path: Path) -> None:
    """``train.json`` + ``multi_gpu_train.json`` with 2 CPU processes (gloo): one plain model.pt, same metric."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "monai.bundle", "run",
        "--config_file", json.dumps(["configs/train.json", "configs/multi_gpu_train.json"]),
        "--dataset_dir", str(busi_small), "--output_dir", str(out), "--preset", "micro", "--tubelet", "[2,8,8]",
        "--img_size", "32", "--max_epochs", "1", "--batch_size", "2", "--num_workers", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BUNDLES.parent)}
    proc = subprocess.run(cmd, cwd=CLS, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)
    best = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "best metric" in line]
    assert len(best) == 2 and len({line.rsplit(":", 1)[1] for line in best}) == 1  # both ranks agree


def _volumes(root: Path, n: int = 4) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    affine = np.diag([0.5, 0.5, 0.8, 1.0])
    for i in range(n):
        vol = rng.uniform(0, 80, (24, 20, 12)).astype(np.float32)
        mask = np.zeros(vol.shape, np.uint8)
        mask[6 + i : 16, 5:15, 3:9] = 1
        vol[mask > 0] += 120
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol, affine), str(root / "images" / f"vol ({i}).nii.gz"))
        nib.save(nib.Nifti1Image(mask, affine), str(root / "masks" / f"vol ({i})_mask.nii.gz"))
    return root


def test_segmentation_of_volumes_through_the_same_encoder(tmp_path: Path) -> None:
    """``volume.json`` on top of each config: 3D UNETR-style decoder, NIfTI masks in the file's space."""
    import nibabel as nib

    data = _volumes(tmp_path / "volumes")
    run = tmp_path / "run"
    vol = {"img_size": 16, "volume_depth": 16, "tubelet": [8, 8, 8], "preset": "micro", "batch_size": 2}
    both = lambda cfg: [f"{SEG}/configs/{cfg}.json", f"{SEG}/configs/volume.json"]  # noqa: E731
    bundle_run(config_file=both("train"), bundle_root=str(SEG), dataset_dir=str(data), output_dir=str(run),
               max_epochs=1, num_workers=0, val_fraction=0.0, test_fraction=0.0, **vol)  # fmt: skip
    settings = json.loads((run / "settings.json").read_text())
    assert settings["spatial_dims"] == 3
    bundle_run(config_file=both("evaluate"), bundle_root=str(SEG), ckpt=str(run / "model.pt"), num_workers=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["mean_dice"] <= 1 and metrics["hd95_unit"] == "voxels of the original volume"
    bundle_run(config_file=both("inference"), bundle_root=str(SEG), dataset_dir=str(data / "images"),
               output_dir=str(run))  # fmt: skip
    src = nib.load(data / "images" / "vol (0).nii.gz")
    mask = nib.load(run / "vol (0)_mask.nii.gz")
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    assert (run / "vol (0)_overlay.png").is_file()
