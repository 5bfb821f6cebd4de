"""HD95 in millimetres: MONAI's Hausdorff distance with each image's own pixel spacing.

The spacing comes from the prediction's ``meta["spacing"]`` (the image's, carried by
:class:`~ultramae_monai.transforms.RestoreGeometryd`). An image without a known spacing (NaN, as for PNG) scores NaN,
which the mean leaves out; a dataset with no spacing at all reports ``None`` in ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric

from ultramae_monai.data.convention import MetaKeys

__all__ = ["PhysicalHausdorffDistance", "PhysicalHausdorffDistanceMetric"]


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """:class:`HausdorffDistanceMetric` in mm, reading the spacing from ``y_pred.meta`` (one image per call)."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:  # type: ignore[override]
        spacing = y_pred.meta.get(MetaKeys.SPACING) if isinstance(y_pred, MetaTensor) else None
        values = [float(s) for s in torch.as_tensor(spacing).flatten().tolist()] if spacing is not None else []
        ndim = y_pred.ndim - 2
        if len(values) < ndim or any(math.isnan(v) for v in values[-ndim:]):
            return torch.full((y_pred.shape[0], y_pred.shape[1] - (0 if self.include_background else 1)), math.nan)
        return super()._compute_tensor(y_pred, y, spacing=values[-ndim:], **kwargs)

    def aggregate(self, reduction: str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As MONAI's, but NaN (not MONAI's 0) when no image had a spacing."""
        data = self.get_buffer()
        result = super().aggregate(reduction)
        if isinstance(data, torch.Tensor) and data.numel() and torch.isnan(data).all():
            return torch.full_like(result, math.nan) if isinstance(result, torch.Tensor) else result
        return result


class PhysicalHausdorffDistance(IgniteMetricHandler):
    """Ignite handler of :class:`PhysicalHausdorffDistanceMetric` (HD at ``percentile``, in mm)."""

    def __init__(
        self,
        include_background: bool = False,
        percentile: float | None = 95,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = PhysicalHausdorffDistanceMetric(include_background=include_background, percentile=percentile)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
