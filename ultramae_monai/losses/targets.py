"""Reconstruction targets of masked-autoencoder pretraining, as ``(B, N, patch_dim)`` token tensors.

* ``pixel``: raw tubelet pixels (USF-MAE, Megahed et al., 2025).
* ``norm_pixel``: pixels normalised per patch to zero mean / unit variance (MAE, He et al., CVPR 2022).
* ``cwus``: the confidence-weighted image ``x * c`` (UltraMAE), where ``c`` is the ultrasound confidence map
  (Karamalis et al., MedIA 2012): shadows and far-field noise carry little weight, the tissue the probe saw a lot.
* ``pixel+confidence``: two heads, pixels and the confidence map, concatenated along the last axis.

Everything here works on the frames view ``(B, C, T, H, W)`` that the encoder sees (stills repeated to ``t``
frames, volumes sliced into slabs: :mod:`ultramae_monai.networks.layout` converts). Token values are ordered
``(t, p, p, C)`` per tubelet, as MAE's ``(p, q, c)``, and tokens ``t``-major then rows then columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ultramae_monai.errors import InvalidInputError

__all__ = ["TARGETS", "TARGETS_NEEDING_CONFIDENCE", "make_target", "normalize_patches", "patchify", "unpatchify"]

TARGETS = ("pixel", "norm_pixel", "cwus", "pixel+confidence")
TARGETS_NEEDING_CONFIDENCE = ("cwus", "pixel+confidence")


def patchify(frames: torch.Tensor, tubelet: Sequence[int]) -> torch.Tensor:
    """``(B, C, T, H, W) -> (B, N, t*p*p*C)`` in the encoder's token order."""
    kt, kh, kw = tubelet
    if frames.ndim != 5 or any(s % k for s, k in zip(frames.shape[2:], tubelet, strict=True)):
        raise InvalidInputError(f"frames of shape {tuple(frames.shape)} do not tile into {tuple(tubelet)} tubelets")
    b, c, t, h, w = frames.shape
    gt, gh, gw = t // kt, h // kh, w // kw
    f = frames.reshape(b, c, gt, kt, gh, kh, gw, kw).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return f.reshape(b, gt * gh * gw, kt * kh * kw * c)


def unpatchify(tokens: torch.Tensor, grid: Sequence[int], tubelet: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, t*p*p*C)`` on grid ``(T', H', W')`` -> ``(B, C, T, H, W)``."""
    kt, kh, kw = tubelet
    gt, gh, gw = grid
    b = tokens.shape[0]
    f = tokens.reshape(b, gt, gh, gw, kt, kh, kw, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return f.reshape(b, channels, gt * kt, gh * kh, gw * kw)


def normalize_patches(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-token zero mean, unit variance (MAE's ``norm_pix_loss``), in float32."""
    tokens = tokens.float()
    mean = tokens.mean(dim=-1, keepdim=True)
    var = tokens.var(dim=-1, keepdim=True, unbiased=True)
    return (tokens - mean) / (var + eps).sqrt()


def make_target(
    name: str, frames: torch.Tensor, tubelet: Sequence[int], confidence: torch.Tensor | None = None
) -> torch.Tensor:
    """Target tokens ``(B, N, patch_dim)`` (``2 * patch_dim`` for ``pixel+confidence``) in float32.

    ``frames`` and ``confidence`` are ``(B, C, T, H, W)`` frames views of the input and its confidence maps.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {TARGETS}")
    if name in TARGETS_NEEDING_CONFIDENCE:
        if confidence is None:
            raise InvalidInputError(f"target {name!r} needs a confidence map")
        if confidence.shape != frames.shape:
            raise InvalidInputError(
                f"confidence map shape {tuple(confidence.shape)} differs from the input {tuple(frames.shape)}"
            )
    frames = frames.float()
    if name == "pixel":
        return patchify(frames, tubelet)
    if name == "norm_pixel":
        return normalize_patches(patchify(frames, tubelet))
    conf = confidence.float()
    if name == "cwus":
        return patchify(frames * conf, tubelet)
    return torch.cat([patchify(frames, tubelet), patchify(conf, tubelet)], dim=-1)
