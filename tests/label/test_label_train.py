"""The label app's train task in process: the first fine-tuning starts from the pretrained encoder it is given,
the fine-tuned model is served with the architecture it was trained with, a pretrained file that is no
checkpoint and a request without labels are refused with one clear line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monailabel", reason="MONAI Label is installed by scripts/venv_label.sh (.venv-label) only")

from PIL import Image

from ultramae_monai.errors import UltraMAEError
from ultramae_monai.label.bundle import SegmentationBundle, TrainIds
from ultramae_monai.label.infer import UltraMAESegmentationInfer
from ultramae_monai.label.train import NoLabelsError, UltraMAESegmentationTrain
from ultramae_monai.networks import UltraMAEEncoder

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fixture import BUNDLE, MICRO

pytestmark = pytest.mark.skipif(
    not BUNDLE.is_dir(), reason=f"the segmentation bundle is not in this checkout ({BUNDLE})"
)


class ListDatastore:
    """The one datastore method a train task reads."""

    def __init__(self, items: list[dict[str, str]]) -> None:
        self.items = items

    def datalist(self) -> list[dict[str, str]]:
        return self.items


def pairs(root: Path, n: int = 2) -> list[dict[str, str]]:
    """``n`` synthetic 48x64 speckle images, each with a bright disc and its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :64]
    items = []
    for i in range(n):
        disc = (yy - 24) ** 2 + (xx - 20 - 10 * i) ** 2 < 12**2
        image = (rng.rayleigh(40, (48, 64)) + 120 * disc).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{i}.png")
        Image.fromarray(disc.astype(np.uint8)).save(root / f"lbl{i}.png")
        items.append({"image": str(root / f"img{i}.png"), "label": str(root / f"lbl{i}.png")})
    return items


def task(tmp: Path, pretrained: str | None, lr: float = 0.0) -> UltraMAESegmentationTrain:
    bundle = tmp / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")  # no models/model.pt: start from the encoder
    return UltraMAESegmentationTrain(
        SegmentationBundle(bundle, overrides=MICRO),
        model_dir=tmp / "model",
        model_file=tmp / "model" / "ultramae_segmentation.pt",
        pretrained=pretrained,
        ids=TrainIds(extra={"learning_rate": lr}),
        max_epochs=1,
    )


def test_first_fine_tuning_starts_from_the_pretrained_encoder(tmp_path):
    torch.manual_seed(7)
    encoder = UltraMAEEncoder.from_preset("micro", tubelet=[2, 16, 16])
    torch.save({"encoder": encoder.state_dict(), "meta": {}}, tmp_path / "encoder.pt")
    t = task(tmp_path, str(tmp_path / "encoder.pt"))  # learning rate 0: the published encoder is the loaded one
    stats = t({"max_epochs": 1, "device": "cpu"}, ListDatastore(pairs(tmp_path)))
    assert stats["start_weights"] == f"pretrained encoder: {tmp_path / 'encoder.pt'}"
    assert stats["epochs"] == 1 and stats["images"] == 2
    published = torch.load(t.model_file, weights_only=True)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(published[f"encoder.{key}"], value, rtol=0, atol=0)


def test_the_fine_tuned_model_is_served_with_its_own_architecture(tmp_path):
    """A pretrained encoder with 8-px patches that records its architecture makes the bundle build that encoder; the
    app's infer task then reads the run's settings beside the published model and serves it, though the bundle's
    default patch is 16 px."""
    encoder = UltraMAEEncoder.from_preset("micro", tubelet=[2, 8, 8])
    meta = {"architecture": {"preset": "micro", **encoder.config}}
    torch.save({"encoder": encoder.state_dict(), "meta": meta}, tmp_path / "p8.pt")
    t = task(tmp_path, str(tmp_path / "p8.pt"), lr=1e-3)
    items = pairs(tmp_path)
    t({"max_epochs": 1, "device": "cpu"}, ListDatastore(items))
    assert json.loads((t.model_file.parent / "settings.json").read_text())["tubelet"] == [2, 8, 8]
    path, result = UltraMAESegmentationInfer(t.bundle, t.model_file)({"image": items[0]["image"]})
    assert result["weights"] == t.model_file.name
    assert np.asarray(Image.open(path)).shape == (48, 64)


def test_a_pretrained_file_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    t = task(tmp_path, str(tmp_path / "junk.pt"))
    with pytest.raises(UltraMAEError, match=r"junk\.pt") as err:
        t({"max_epochs": 1, "device": "cpu"}, ListDatastore(pairs(tmp_path)))
    assert "\n" not in str(err.value)
    assert not t.model_file.exists()


def test_no_labels_no_training(tmp_path):
    t = task(tmp_path, None)
    with pytest.raises(NoLabelsError, match="no labelled images"):
        t({"max_epochs": 1, "device": "cpu"}, ListDatastore([]))
    assert not t.model_file.exists()
