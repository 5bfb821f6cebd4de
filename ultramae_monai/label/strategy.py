"""Active-learning strategy: label next the unlabelled image the current model is least sure about.

Uses the scores :class:`~ultramae_monai.label.scoring.UncertaintyScoring` stored for the current weights; images
not scored yet (or scored with older weights) come after the scored ones, in id order, so the choice is
deterministic. MONAI Label's ``random`` strategy is offered next to it.
"""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ultramae_monai.label.scoring import SCORE_KEY, UncertaintyScoring

__all__ = ["MostUncertain"]


class MostUncertain(Strategy):
    """The unlabelled image with the highest uncertainty score of the current model."""

    def __init__(self, scoring: UncertaintyScoring) -> None:
        super().__init__("Most uncertain unlabelled image first (run the 'uncertainty' scoring to refresh)")
        self.scoring = scoring

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        version = self.scoring.model_version()

        def score(image_id: str) -> float | None:
            info = datastore.get_image_info(image_id).get(SCORE_KEY, {})
            current = info.get("mtime") == version["mtime"] and info.get("weights") == version["weights"]
            return float(info["score"]) if current and "score" in info else None

        scored = {i: score(i) for i in images}
        best = min(images, key=lambda i: (scored[i] is None, -(scored[i] or 0.0), i))
        return {"id": best, "score": scored[best], "scored": sum(s is not None for s in scored.values())}
