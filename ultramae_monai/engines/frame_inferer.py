"""Run a 2D segmentation network on every frame of a cine batch ``(B, C, T, h, w)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["FrameInferer"]


class FrameInferer(Inferer):
    """Stills ``(B, C, h, w)`` go through the network as they are; a cine's frames go through it as one batch each.

    Args:
        spatial_dims: the network's; a 3D network gets its ``(B, C, H, W, D)`` volumes whole.
        frames_per_batch: frames per network call (bounds memory on long cines).
    """

    def __init__(self, spatial_dims: int = 2, frames_per_batch: int = 32) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.frames_per_batch = frames_per_batch

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim != 5 or self.spatial_dims != 2:
            return network(inputs, *args, **kwargs)
        b, c, t, h, w = inputs.shape
        frames = inputs.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        out = torch.cat([network(chunk, *args, **kwargs) for chunk in frames.split(self.frames_per_batch)])
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, K, T, h, w)
