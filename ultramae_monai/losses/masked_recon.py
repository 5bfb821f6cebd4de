"""Masked reconstruction loss: mean squared error over the masked tokens only (MAE, He et al., CVPR 2022).

Visible tokens contribute nothing (their gradient is exactly zero), and with a field-of-view mask tokens outside
the scan region are dropped as well, so the black border around an ultrasound fan never dominates the loss.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedReconstructionLoss", "masked_mse"]


def masked_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None = None,
    feature_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over masked (and valid) tokens of the per-token MSE, computed in float32.

    Args:
        pred, target: ``(B, N, P)`` tokens.
        mask: ``(B, N)``, 1 = masked (reconstructed), 0 = visible.
        valid: optional ``(B, N)`` bool, False = outside the FOV (excluded).
        feature_weights: optional ``(P,)`` weights of the token features (e.g. to balance two heads);
            the per-token error is their weighted mean.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred.float() - target.float()) ** 2
    if feature_weights is None:
        per_token = err.mean(dim=-1)
    else:
        fw = feature_weights.to(err)
        per_token = (err * fw).sum(dim=-1) / fw.sum()
    weight = mask.float()
    if valid is not None:
        weight = weight * valid.float()
    # a batch with nothing to reconstruct gives 0 (and keeps the graph) instead of NaN
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


class MaskedReconstructionLoss(nn.Module):
    """Module form of :func:`masked_mse`; ``in_fov_only`` decides whether ``valid`` is applied."""

    def __init__(self, in_fov_only: bool = True) -> None:
        super().__init__()
        self.in_fov_only = in_fov_only

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        valid: torch.Tensor | None = None,
        feature_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return masked_mse(pred, target, mask, valid if self.in_fov_only else None, feature_weights)
