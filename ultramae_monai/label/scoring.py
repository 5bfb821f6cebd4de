"""Scoring that ranks unlabelled images by how unsure the current model is about them.

Uncertainty by test-time augmentation (Wang et al., Neurocomputing 2019): each image is segmented as is and
mirrored left-right (a plausible second view of the same anatomy), the two softmax maps are averaged, and the
score is the mean per-pixel entropy of that average, in bits (0 = certain, 1 = a coin toss for 2 classes).
Disagreement between the views and confidently split pixels both raise it. Scores are stored in each image's
info under ``"ultramae_uncertainty"`` with the weights they were computed with, so the strategy
(:class:`~ultramae_monai.label.strategy.MostUncertain`) ignores scores of an older model.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ultramae_monai.errors import UltraMAEError
from ultramae_monai.label.infer import UltraMAESegmentationInfer

__all__ = ["SCORE_KEY", "UncertaintyScoring", "tta_entropy"]

logger = logging.getLogger(__name__)

SCORE_KEY = "ultramae_uncertainty"


def tta_entropy(network: torch.nn.Module, inferer: Any, batch: torch.Tensor) -> torch.Tensor:
    """Per-image mean entropy (bits) of the softmax averaged over the image and its left-right mirror."""
    with torch.no_grad():
        p = torch.softmax(inferer(batch, network).float(), dim=1)
        p_flip = torch.softmax(inferer(torch.flip(batch, dims=[-1]), network).float(), dim=1)
    mean = 0.5 * (p + torch.flip(p_flip, dims=[-1]))
    entropy = -(mean * torch.log2(mean.clamp_min(1e-12))).sum(dim=1)
    return entropy.flatten(1).mean(dim=1)


class UncertaintyScoring(ScoringMethod):
    """Score every unlabelled image (all frames of a cine, averaged) with :func:`tta_entropy`."""

    def __init__(self, infer: UltraMAESegmentationInfer) -> None:
        super().__init__("Test-time-augmentation entropy of the current model's segmentation (higher = label first)")
        self.infer = infer

    def model_version(self) -> dict[str, Any]:
        path = self.infer.weights_path()
        return {"weights": path.name, "mtime": path.stat().st_mtime}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        device = torch.device("cuda" if torch.cuda.is_available() and "cuda" in str(request.get("device")) else "cpu")
        version = self.model_version()

        scores: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for image_id in datastore.get_unlabeled_images():
            stored = datastore.get_image_info(image_id).get(SCORE_KEY, {})
            if stored.get("mtime") == version["mtime"] and stored.get("weights") == version["weights"]:
                scores[image_id] = float(stored["score"])
                continue
            try:
                _, items, pipe = self.infer.probabilities(datastore.get_image_uri(image_id), device)
            except UltraMAEError as e:  # one bad file is reported, the others are still scored
                skipped[image_id] = str(e)
                continue
            batch = torch.stack([torch.as_tensor(d["image"]) for d in items]).to(device)
            score = float(tta_entropy(pipe.network, pipe.inferer, batch).mean())
            if not math.isfinite(score):
                skipped[image_id] = "non-finite score"
                continue
            scores[image_id] = score
            datastore.update_image_info(image_id, {SCORE_KEY: {"score": score, **version, "ts": int(time.time())}})
        ranking = sorted(scores, key=lambda k: (-scores[k], k))
        logger.info(f"uncertainty scores of {len(scores)} unlabelled images; skipped {len(skipped)}")
        return {"method": SCORE_KEY, "scores": scores, "ranking": ranking, "skipped": skipped, **version}
