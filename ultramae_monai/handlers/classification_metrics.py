"""Classification metrics for the fine-tuning bundles: accuracy, balanced accuracy, macro-F1, per-class recall,
one-vs-rest ROC-AUC, and the confusion matrix as a PNG.

Balanced accuracy and macro-F1 are what the UltraMAE / USF-MAE papers report on the imbalanced BUSI set (benign
437, malignant 210, normal 133), where plain accuracy rewards predicting "benign". ROC-AUC is computed exactly
from ranks (Mann-Whitney U, ties averaged), one class against the rest, then averaged over the classes present.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from PIL import Image, ImageDraw

__all__ = ["ClassificationMetric", "ClassificationReport", "classification_metrics", "confusion_matrix_png"]


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # average ranks of ties
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """All metrics from ``(N, K)`` class probabilities and ``(N,)`` integer labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = probs.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.full(k, np.nan), where=support > 0)
    predicted = cm.sum(axis=0)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + np.nan_to_num(recall)
    f1 = np.divide(2 * precision * np.nan_to_num(recall), denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    aucs = [_auc(probs[:, c], labels == c) for c in range(k)]
    valid_auc = [a for a in aucs if np.isfinite(a)]
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall[present])) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "roc_auc": float(np.mean(valid_auc)) if valid_auc else float("nan"),
        "per_class_recall": {names[c]: float(recall[c]) for c in range(k)},
        "per_class_roc_auc": {names[c]: aucs[c] for c in range(k)},
        "confusion_matrix": cm.tolist(),
        "class_names": names,
        "num_samples": len(labels),
    }


def confusion_matrix_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> Path:
    """Draw the confusion matrix (rows: truth, columns: prediction) as a PNG, counts in each cell."""
    m = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    cell, left, top = 72, 120, 40
    img = Image.new("RGB", (left + k * cell + 10, top + k * cell + 30), "white")
    draw = ImageDraw.Draw(img)
    peak = max(int(m.max()), 1)
    for i in range(k):
        draw.text((4, top + i * cell + cell // 2 - 6), str(class_names[i])[:18], fill="black")
        draw.text((left + i * cell + 4, top - 16), str(class_names[i])[:10], fill="black")
        for j in range(k):
            shade = int(255 - 200 * m[i, j] / peak)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=(shade, shade, 255))
            draw.text((x0 + cell // 2 - 8, y0 + cell // 2 - 6), str(int(m[i, j])), fill="black")
    draw.text((left, top + k * cell + 8), "rows: truth, columns: prediction", fill="black")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def _stack(output: Any) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = output
    p = torch.stack([torch.as_tensor(x).reshape(-1) for x in preds]).float().cpu().numpy()
    y = torch.stack([torch.as_tensor(x).reshape(-1)[:1] for x in labels]).long().cpu().numpy().reshape(-1)
    return p, y


def _gathered(probs: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """This rank's predictions, or every rank's under ``torch.distributed`` (uneven shards allowed)."""
    p = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    y = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return p, y
    from monai.utils import evenly_divisible_all_gather

    p = evenly_divisible_all_gather(torch.as_tensor(p, dtype=torch.float32), concat=True).numpy()
    y = evenly_divisible_all_gather(torch.as_tensor(y, dtype=torch.int64), concat=True).numpy()
    return p, y


class ClassificationMetric(Metric):
    """One scalar of :func:`classification_metrics` as an ignite metric (usable as the key validation metric).

    Args:
        metric: ``accuracy``, ``balanced_accuracy``, ``macro_f1`` or ``roc_auc``.
        output_transform: engine output -> ``(list of (K,) probabilities, list of labels)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
    """

    def __init__(self, metric: str = "balanced_accuracy", output_transform: Callable = lambda x: x) -> None:
        if metric not in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
            raise ValueError(f"unknown classification metric {metric!r}")
        self.metric = metric
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, output: Any) -> None:
        p, y = _stack(output)
        self._probs.append(p)
        self._labels.append(y)

    def compute(self) -> float:
        probs, labels = _gathered(self._probs, self._labels)
        if not len(labels):
            return float("nan")
        return classification_metrics(probs, labels)[self.metric]


class ClassificationReport:
    """Handler: at the end of an evaluation, write ``metrics.json`` (every metric, per-class recall, the confusion
    matrix, plus the engine's own metrics) and ``confusion_matrix.png`` into ``output_dir``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        output_transform: Callable = lambda x: x,
        filename: str = "metrics.json",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.output_transform = output_transform
        self.filename = filename
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._probs, self._labels = [], []

    def _update(self, engine: Engine) -> None:
        p, y = _stack(self.output_transform(engine.state.output))
        self._probs.append(p)
        self._labels.append(y)

    def _write(self, engine: Engine) -> None:
        probs, labels = _gathered(self._probs, self._labels)
        report = classification_metrics(probs, labels, self.class_names)
        scalars = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        report = {**scalars, **report}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / self.filename).write_text(json.dumps(report, indent=2))
        confusion_matrix_png(report["confusion_matrix"], self.class_names, self.output_dir / "confusion_matrix.png")
