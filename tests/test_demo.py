"""The README's demo: every stage runs on the bundled real ultrasound, and the model measurably learns.

A shortened recipe (fewer steps, smaller curated images) with fixed seeds, so the run is deterministic; the
masked-patch error must still beat the mean-of-visible baseline on held-out images (ratio < 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ultramae_monai.cli import main
from ultramae_monai.demo import reconstruction_score
from ultramae_monai.demo.samples import hc18_cases, sample_dicoms, write_us_dicom
from ultramae_monai.networks import UltraMAE


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The README's command, shortened: 300 pretraining and 24 fine-tuning steps, no deploy app."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    argv = ["demo", str(out), "--steps", "300", "--finetune_steps", "24", "--deploy", "false"]
    assert main(argv) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_demo_learns_and_writes_pictures(demo_run: tuple[Path, dict]) -> None:
    out, summary = demo_run
    rec = summary["reconstruction"]
    assert rec["ratio"] < 1.0, rec  # learned more than the image's visible mean, on held-out images
    assert rec["ratio"] < rec["ratio_before_training"]
    assert rec["heldout"]["images"] == 8 and rec["heldout"]["masked_tokens"] > 0
    assert summary["pretrain"]["step"] == 300 and np.isfinite(summary["pretrain"]["loss"])
    assert Path(summary["pretrain"]["checkpoint"]).is_file()
    assert "quarantined 0" in summary["curate"]
    assert len(summary["data"]["hc18_heldout_images"]) == 8
    for ex in summary["confidence_maps"]["examples"]:  # confidence falls with depth on every example
        assert ex["top_quarter_mean"] > ex["bottom_quarter_mean"]
    seg = summary["segmentation"]
    assert seg["iterations"] >= 24 and len(seg["dice_per_case"]) == 8
    assert 0.3 < seg["dice"] <= 1.0  # the overlay lands on the head even after a short fine-tune
    assert (out / "segmentation_bundle" / "models" / "model.pt").is_file()
    assert summary["deploy"]["status"] == "skipped: disabled"
    html = (out / "index.html").read_text()
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert len(pictures) == 5 and all(name in html for name in pictures)
    for name in pictures:
        img = np.asarray(Image.open(out / name).convert("L"), dtype=np.float64)
        assert img.std() > 10, name  # not blank


def test_deploy_stage_says_how_to_enable_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ultramae_monai.demo import deploy_run

    monkeypatch.setenv("ULTRAMAE_DEPLOY_PYTHON", str(tmp_path / "missing" / "python"))
    lines: list[str] = []
    result = deploy_run.run_deploy_app(tmp_path, hc18_cases()[0], tmp_path / "d", tmp_path / "f.png", say=lines.append)
    assert result["status"] == "skipped: .venv-deploy not installed"
    assert "scripts/venv_deploy.sh" in lines[0] and not (tmp_path / "d").exists()


def test_reconstruction_score_baseline_is_one_for_mean_predictor() -> None:
    """A model whose prediction is the visible mean scores exactly 1; a perfect one 0."""
    torch.manual_seed(0)
    model = UltraMAE(preset="micro", img_size=16, tubelet=(1, 4, 4), num_frames=1, target="pixel",
                     mask_ratio_image=0.75, decoder_depth=1, decoder_dim=32)  # fmt: skip
    x = torch.rand(3, 1, 16, 16)

    class Oracle(torch.nn.Module):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode, self.encoder = mode, model.encoder

        def forward(self, images: torch.Tensor, **kwargs: object) -> dict:
            out = model(images, **kwargs)
            target = out["target"]
            if self.mode == "perfect":
                out["pred"] = target.clone()
            else:
                keep = torch.zeros(target.shape[:2]).scatter_(1, out["ids_keep"], 1.0)
                mean = (target * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None]
                out["pred"] = mean.expand_as(target).clone()
            return out

    assert reconstruction_score(Oracle("mean"), x).ratio == pytest.approx(1.0, abs=1e-6)
    assert reconstruction_score(Oracle("perfect"), x).ratio == pytest.approx(0.0, abs=1e-9)


def test_samples_are_installed_and_paired(tmp_path: Path) -> None:
    cases = hc18_cases()
    assert len(cases) == 48 and len({c.name[:3] for c in cases}) == 48  # one image per exam
    img, mask = cases[0].load()
    assert img.shape == mask.shape and img.shape[1] == 256 and 0.03 < mask.mean() < 0.6
    assert any(p.name == "examples_ybr_color.dcm" for p, _ in sample_dicoms())
    from ultramae_monai.data import load_ultrasound

    path = write_us_dicom(img, tmp_path / "case.dcm", cases[0].pixel_mm)
    back = load_ultrasound(path)
    assert tuple(back.shape) == (1, *img.shape)
    assert np.abs(back[0].numpy() / 255.0 - img).max() < 1 / 255 + 1e-6


def test_deploy_stage_waits_for_the_background_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ultramae_monai.demo.deploy_run import BUILD_STATUS_ENV, _wait_for_build

    status = tmp_path / "status"
    monkeypatch.delenv(BUILD_STATUS_ENV, raising=False)
    assert _wait_for_build(print)  # not started by demo.sh: nothing to wait for
    monkeypatch.setenv(BUILD_STATUS_ENV, str(status))
    assert not _wait_for_build(print, wait_s=0)  # still building
    status.write_text("1\n")
    assert not _wait_for_build(print)  # the build failed
    status.write_text("0\n")
    assert _wait_for_build(print)
