"""Train / validation / test splits for fine-tuning: grouped by patient or exam, stratified by class, seeded.

Why grouped: two views of one exam (HC18's ``001_HC`` and ``001_2HC``) on both sides of a split inflate every
metric. Why the label fraction is taken after the split and per class: a label-efficiency study (10 % vs 100 %
of the labels) must test every arm on the same held-out exams and keep the class balance of the full set
(the protocol of the UltraMAE and USF-MAE papers' BUSI experiments).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from os import PathLike
from typing import Any

from ultramae_monai.data.labelled import (
    CLASSIFICATION,
    classification_items,
    detect_layout,
    json_items,
    segmentation_items,
)
from ultramae_monai.errors import InvalidInputError

__all__ = ["finetune_datalists", "grouped_split", "label_fraction_subset"]


def _stratum(item: dict[str, Any]) -> Any:
    label = item.get("label")
    return label if isinstance(label, int) else 0


def grouped_split(
    items: Sequence[dict[str, Any]], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """``{"train", "val", "test"}``: whole groups per side, each class split in the same proportions.

    A group's class is its first item's; each class with at least 3 groups gets at least one validation and
    (when ``test_fraction > 0``) one test group.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[str(it["group"])].append(it)
    by_class: dict[Any, list[str]] = defaultdict(list)
    for gid in sorted(groups):
        by_class[_stratum(groups[gid][0])].append(gid)
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for cls in sorted(by_class, key=str):
        gids = by_class[cls]
        rng.shuffle(gids)
        n = len(gids)
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 3 else 0
        for i, gid in enumerate(gids):
            side = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            out[side] += groups[gid]
    return out


def label_fraction_subset(items: Sequence[dict[str, Any]], fraction: float, seed: int = 0) -> list[dict[str, Any]]:
    """``ceil(fraction * n_c)`` items of each class ``c`` (at least one), drawn with ``seed``; order kept."""
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(items)
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_class[_stratum(it)].append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for cls in sorted(by_class, key=str):
        idx = by_class[cls]
        keep.update(rng.sample(idx, max(1, math.ceil(fraction * len(idx)))))
    return [it for i, it in enumerate(items) if i in keep]


def finetune_datalists(
    dataset_dir: str | PathLike,
    task: str = CLASSIFICATION,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    label_fraction: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything a fine-tuning bundle needs from ``dataset_dir``: ``train``, ``val``, ``test``, ``all``,
    ``class_names`` and ``layout``.

    The split depends on ``split_seed`` only (every run of a study is tested on the same exams); the label
    fraction is drawn from the training side with ``seed``. A JSON data list's own ``validation`` / ``test``
    sections are used as given.
    """
    layout = detect_layout(dataset_dir)
    if layout == "json":
        sections, names = json_items(dataset_dir, task, class_names)
        items = sections["training"]
        if sections["validation"] or sections["test"]:
            split = {"train": items, "val": sections["validation"], "test": sections["test"]}
        else:
            split = grouped_split(items, val_fraction, test_fraction, split_seed)
    else:
        if task == CLASSIFICATION:
            if layout != CLASSIFICATION:
                raise InvalidInputError(
                    "expected one sub-folder of images per class, found an image/mask layout", dataset_dir
                )
            items, names = classification_items(dataset_dir, class_names)
        else:
            items = segmentation_items(dataset_dir)
            names = list(class_names or ["background", "foreground"])
        split = grouped_split(items, val_fraction, test_fraction, split_seed)
    if not split["train"]:
        raise InvalidInputError("no training items after the split (too few images)", dataset_dir)
    all_items = split["train"] + split["val"] + split["test"]
    if not split["val"]:
        split["val"] = list(split["train"])  # tiny sets: validate on the training items rather than on nothing
    split["train"] = label_fraction_subset(split["train"], label_fraction, seed)
    return {**split, "all": all_items, "class_names": list(names), "layout": layout}
