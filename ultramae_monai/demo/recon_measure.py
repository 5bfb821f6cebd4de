"""Did the masked autoencoder learn? Its masked-patch error relative to a trivial in-painter.

The baseline predicts every masked patch as the mean of the visible patches of the same image (the best
constant guess from what the encoder saw). A ratio of 1 is a model that learned nothing beyond the image's
average; MAE's pictures (He et al., CVPR 2022) start to resemble the input well below that. Errors are
measured in the space of the model's reconstruction target (pixels for ``pixel``, image x confidence for
``cwus``, per-patch normalised pixels for ``norm_pixel``) over the tokens the loss counts (masked, inside the
scan region), summed over images and several fixed mask draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ReconstructionScore", "reconstruction_score"]


@dataclass
class ReconstructionScore:
    """Masked-patch mean squared errors of the model and of the mean-of-visible baseline, and their ratio."""

    model_mse: float
    baseline_mse: float
    ratio: float
    images: int
    mask_draws: int
    masked_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def reconstruction_score(
    model: nn.Module,
    images: torch.Tensor,
    fov_mask: torch.Tensor | None = None,
    confidence: torch.Tensor | None = None,
    seeds: Sequence[int] = (100, 101, 102, 103),
) -> ReconstructionScore:
    """Score ``model`` (an :class:`~ultramae_monai.networks.UltraMAE`) on stills ``(B, C, H, W)`` in eval mode.

    Each seed draws one mask per image (``torch.Generator().manual_seed(seed)``), so the score is reproducible.
    """
    was_training = model.training
    model.eval()
    err_sum = base_sum = 0.0
    count = 0
    try:
        for seed in seeds:
            out = model(images, confidence=confidence, fov_mask=fov_mask, generator=torch.Generator().manual_seed(seed))
            pd = model.encoder.patch_dim
            pred, target = out["pred"][..., :pd].float(), out["target"][..., :pd].float()
            visible = torch.zeros(target.shape[:2], device=target.device)
            shown = out.get("keep_valid")  # False on padding of per-sample visible counts
            visible.scatter_(1, out["ids_keep"], 1.0 if shown is None else shown.float())
            n_visible = visible.sum(1).clamp_min(1)[:, None, None]
            mean_visible = (target * visible[..., None]).sum(1, keepdim=True) / n_visible
            masked = out["mask"].float()
            err_sum += float((((pred - target) ** 2).mean(-1) * masked).sum())
            base_sum += float((((mean_visible - target) ** 2).mean(-1) * masked).sum())
            count += int(masked.sum())
    finally:
        model.train(was_training)
    n = max(count, 1)
    return ReconstructionScore(
        model_mse=err_sum / n,
        baseline_mse=base_sum / n,
        ratio=err_sum / max(base_sum, 1e-12),
        images=int(images.shape[0]),
        mask_draws=len(seeds),
        masked_tokens=count,
    )
