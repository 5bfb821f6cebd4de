"""Fine-tuning data lists, splits, label fractions, outline filling, metrics and optimiser groups (in-process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ultramae_monai.data.labelled import classification_items, detect_layout, inference_items, segmentation_items
from ultramae_monai.data.outline_masks import fill_outline
from ultramae_monai.data.splits import finetune_datalists, grouped_split, label_fraction_subset
from ultramae_monai.engines.layer_decay import layer_decay_param_groups
from ultramae_monai.errors import InvalidInputError
from ultramae_monai.handlers import classification_metrics
from ultramae_monai.networks import UltraMAEClassifier, UltraMAEEncoder


def _png(path: Path, size: tuple[int, int] = (20, 16), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def test_class_folders_with_odd_names_and_mask_files(tmp_path: Path) -> None:
    for cls, n in (("benign", 5), ("malignant", 3)):
        for i in range(n):
            _png(tmp_path / cls / f"{cls} ({i}).png")
            _png(tmp_path / cls / f"{cls} ({i})_mask.png")  # BUSI's masks beside the images: not samples
    _png(tmp_path / "malignant" / "sub dir" / "x [1] & y.png")
    assert detect_layout(tmp_path) == "classification"
    items, names = classification_items(tmp_path)
    assert names == ["benign", "malignant"] and len(items) == 9
    assert {it["label"] for it in items if "x [1] & y" in it["image"]} == {1}
    with pytest.raises(InvalidInputError, match=r"malignant: label 'malignant' is not one of the declared"):
        classification_items(tmp_path, ["benign", "normal"])
    (tmp_path / "normal").mkdir()
    with pytest.raises(InvalidInputError, match=r"normal: class folder 'normal' holds no images"):
        classification_items(tmp_path)


@pytest.mark.parametrize("layout", ["folders", "side_by_side"])
def test_image_mask_pairs_any_names(tmp_path: Path, layout: str) -> None:
    names = ["001_HC", "001_2HC", "case (3)", "a b"]
    for n in names:
        if layout == "folders":
            _png(tmp_path / "images" / f"{n}.png")
            _png(tmp_path / "annotations" / f"{n}_Annotation.png")
        else:
            _png(tmp_path / f"{n}.png")
            _png(tmp_path / f"{n}_mask.png")
    assert detect_layout(tmp_path) == "segmentation"
    items = segmentation_items(tmp_path)
    assert sorted(Path(it["image"]).stem for it in items) == sorted(names)
    for it in items:
        assert Path(it["label"]).stem.startswith(Path(it["image"]).stem)
    groups = {Path(it["image"]).stem: it["group"] for it in items}
    assert groups["001_HC"] == groups["001_2HC"] != groups["a b"]  # one exam, two views
    assert len(inference_items(tmp_path)) == 4  # masks are not inputs


def test_mask_of_another_size_and_missing_mask_name_the_file(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", (20, 16))
    _png(tmp_path / "masks" / "a_mask.png", (10, 8))
    with pytest.raises(InvalidInputError, match=r"a_mask\.png: mask is 10x8 but its image 'a.png' is 20x16"):
        segmentation_items(tmp_path)
    _png(tmp_path / "images" / "b.png")
    (tmp_path / "masks" / "a_mask.png").unlink()
    with pytest.raises(InvalidInputError, match=r"a\.png: image has no mask"):
        segmentation_items(tmp_path)


def _items(n_per_class: dict[int, int], views: int = 1) -> list[dict]:
    out = []
    for label, n in n_per_class.items():
        for i in range(n):
            out += [{"image": f"{label}_{i}_{v}", "label": label, "group": f"{label}/{i}"} for v in range(views)]
    return out


def test_split_is_grouped_stratified_and_seeded() -> None:
    items = _items({0: 40, 1: 20, 2: 10}, views=2)
    split = grouped_split(items, 0.15, 0.15, seed=0)
    sides = {name: {it["group"] for it in rows} for name, rows in split.items()}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    for label, n in ((0, 40), (1, 20), (2, 10)):
        test_groups = {g for g in sides["test"] if g.startswith(f"{label}/")}
        assert len(test_groups) == max(1, round(n * 0.15))
    assert split == grouped_split(items, 0.15, 0.15, seed=0)
    assert split["test"] != grouped_split(items, 0.15, 0.15, seed=1)["test"]


def test_label_fraction_per_class_after_the_split() -> None:
    train = _items({0: 30, 1: 9, 2: 1})
    sub = label_fraction_subset(train, 0.1, seed=3)
    counts = {c: sum(it["label"] == c for it in sub) for c in (0, 1, 2)}
    assert counts == {0: 3, 1: math.ceil(0.9), 2: 1}
    assert sub == label_fraction_subset(train, 0.1, seed=3) and sub != label_fraction_subset(train, 0.1, seed=4)
    assert label_fraction_subset(train, 1.0) == train
    with pytest.raises(InvalidInputError, match="label_fraction"):
        label_fraction_subset(train, 0.0)


def test_split_seed_fixes_the_test_set_across_seeds_and_fractions(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        for i in range(12):
            _png(tmp_path / cls / f"{cls} ({i}).png")
    runs = [finetune_datalists(tmp_path, label_fraction=f, seed=s) for f in (0.25, 1.0) for s in (0, 1)]
    assert all(r["test"] == runs[0]["test"] and r["val"] == runs[0]["val"] for r in runs)
    full = runs[2]["train"]  # label_fraction 1.0: per class, a quarter (rounded up) is kept
    assert len(runs[0]["train"]) == 2 * math.ceil(0.25 * len([i for i in full if i["label"] == 0]))


def test_json_datalist_with_names_and_declared_classes(tmp_path: Path) -> None:
    for i in range(6):
        _png(tmp_path / "img" / f"{i}.png")
    rows = [{"image": f"img/{i}.png", "label": "cyst" if i % 2 else "solid", "patient": f"p{i // 2}"} for i in range(6)]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": rows, "class_names": ["solid", "cyst"]}))
    lists = finetune_datalists(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert lists["layout"] == "json" and lists["class_names"] == ["solid", "cyst"]
    assert {it["label"] for it in lists["all"]} == {0, 1}
    rows[0]["label"] = "mixed"
    (tmp_path / "datalist.json").write_text(json.dumps({"training": rows, "class_names": ["solid", "cyst"]}))
    with pytest.raises(InvalidInputError, match=r"0\.png: label 'mixed' is not one of the declared classes"):
        finetune_datalists(tmp_path)


def test_outline_is_filled() -> None:
    img = Image.new("L", (80, 60), 0)
    ImageDraw.Draw(img).ellipse([10, 8, 70, 50], outline=255, width=1)
    mask = fill_outline(np.asarray(img))
    area = math.pi * 30 * 21
    assert abs(mask.sum() - area) / area < 0.08 and mask[29, 40] and not mask[2, 2]


def test_classification_metrics_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 0, 2]] * 0.8 + 0.2 / 3
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    f1_a, f1_b, f1_c = 2 * (2 / 3) * (2 / 3) / (4 / 3), 2 * 0.5 * 0.5 / 1.0, 1.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class_roc_auc"]["c"] == 1.0
    # class a vs rest: positives score high, high, low; negatives low, high, low; ties count one half
    assert m["per_class_roc_auc"]["a"] == pytest.approx((2.5 + 2.5 + 1.0) / 9)


def test_layer_decay_and_linear_probe_groups() -> None:
    enc = UltraMAEEncoder.from_preset("micro", tubelet=(2, 8, 8))
    net = UltraMAEClassifier(enc, 3)
    groups = layer_decay_param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert scale_of[id(net.head.weight)] == 1.0
    assert scale_of[id(enc.blocks[1].attn.qkv.weight)] == 0.5
    assert scale_of[id(enc.blocks[0].attn.qkv.weight)] == 0.25
    assert scale_of[id(enc.patch_embed.proj.weight)] == 0.125
    assert all(g["weight_decay"] == 0.0 for g in groups for p in g["params"] if p.ndim == 1)
    probe = UltraMAEClassifier(UltraMAEEncoder.from_preset("micro", tubelet=(2, 8, 8)), 3)
    groups = layer_decay_param_groups(probe, lr=1.0, freeze_encoder=True)
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in (*probe.head.parameters(), *probe.pool.parameters())}
    clip = torch.rand(2, 1, 4, 32, 32)  # the same classifier takes clips
    assert probe(clip).shape == (2, 3)


def test_fill_outlined_fills_outlines_and_keeps_masks() -> None:
    from ultramae_monai.transforms import FillOutlined

    img = Image.new("L", (80, 60), 0)
    ImageDraw.Draw(img).ellipse([10, 8, 70, 50], outline=255, width=1)
    outline = torch.as_tensor(np.asarray(img, dtype=np.float32))[None]
    filled = FillOutlined("label")({"label": outline})["label"]
    assert filled.sum() > 5 * (outline > 0).sum() and set(np.unique(filled.numpy())) == {0.0, 1.0}
    solid = torch.zeros(1, 60, 80)
    solid[:, 10:30, 20:40] = 1
    solid[:, 18:22, 28:32] = 0  # a small hole in a real mask stays: filling gains far less than 2x
    assert torch.equal(FillOutlined("label")({"label": solid})["label"], solid)
    assert FillOutlined("label", always=True)({"label": solid})["label"].sum() == 400


def test_fill_outlines_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ultramae_monai.cli import main

    img = Image.new("L", (40, 30), 0)
    ImageDraw.Draw(img).ellipse([5, 5, 35, 25], outline=255)
    img.save(_png(tmp_path / "src" / "images" / "001_HC.png", (40, 30)).parent.parent / "001_HC_Annotation.png")
    (tmp_path / "src" / "annotations").mkdir()
    (tmp_path / "src" / "001_HC_Annotation.png").rename(tmp_path / "src" / "annotations" / "001_HC_Annotation.png")
    assert main(["fill-outlines", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "001_HC_Annotation.png"))
    assert mask[15, 20] == 255 and mask[1, 1] == 0
    assert main(["fill-outlines", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    assert "nowhere: dataset folder not found" in capsys.readouterr().err
