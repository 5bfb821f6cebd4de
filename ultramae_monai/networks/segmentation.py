"""Segmentation networks on the UltraMAE encoder: a UNETR-style convolutional decoder and the light decoder.

:class:`UltraMAEUNETR` follows UNETR (Hatamizadeh et al., WACV 2022): hidden states of evenly spaced blocks
are reshaped to feature maps, brought to finer resolutions by transposed convolutions and fused top-down with
MONAI's UNETR blocks; a convolutional stem on the input gives full-resolution detail. Unlike MONAI's ``UNETR``
(12 blocks and 16-pixel patches only, see :func:`~ultramae_monai.networks.interop.to_monai_unetr`) it runs on
any encoder depth and any power-of-two patch, so micro and tiny encoders fine-tune too.
:func:`segmentation_network` picks it or the light transformer decoder (:class:`UltraMAESegmenter`).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from ultramae_monai.networks.heads import UltraMAESegmenter
from ultramae_monai.networks.layout import as_plain_tensor
from ultramae_monai.networks.tubelet_vit import UltraMAEEncoder

__all__ = ["SEGMENTATION_DECODERS", "UltraMAEUNETR", "segmentation_network"]

SEGMENTATION_DECODERS = ("auto", "unetr", "light")


class UltraMAEUNETR(nn.Module):
    """UNETR-style decoder on an :class:`UltraMAEEncoder`: stills ``(B, C, H, W)`` -> ``(B, K, H, W)``, or with
    ``spatial_dims=3`` volumes ``(B, C, H, W, D)`` -> ``(B, K, H, W, D)``.

    Args:
        encoder: the (pretrained) encoder; its patch size must be a power of two (8, 16, ...), and cubic
            (``tubelet = (p, p, p)``) for volumes.
        out_channels: output logits (background included).
        feature_size: channels of the full-resolution level (doubled at each coarser level, as in UNETR).
        norm_name: normalisation of the convolutional blocks (MONAI names: ``instance``, ``batch``).
        res_block: residual convolutional blocks.
        spatial_dims: 2 (stills) or 3 (volumes).
    """

    def __init__(
        self,
        encoder: UltraMAEEncoder,
        out_channels: int,
        feature_size: int = 16,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        kt, kh, kw = encoder.tubelet
        levels = round(math.log2(kh))
        if kh != kw or 2**levels != kh or levels < 1 or (spatial_dims == 3 and kt != kh):
            shape = "cubic" if spatial_dims == 3 else "square"
            raise ValueError(f"the UNETR decoder needs {shape} power-of-two patches, encoder tubelet {encoder.tubelet}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.kind = "still" if spatial_dims == 2 else "volume"
        self.encoder = encoder
        self.out_channels = out_channels
        self.levels = levels
        hidden = encoder.embed_dim
        # level l (1 .. levels-1) sits at H / 2**l and is fed by the block at depth * l / levels (deeper = coarser)
        self.taps = [max(1, round(encoder.depth * lvl / levels)) - 1 for lvl in range(1, levels)]
        nd = spatial_dims
        self.stem = UnetrBasicBlock(nd, encoder.in_channels, feature_size, 3, 1, norm_name, res_block)
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(nd, hidden, feature_size * 2**lvl, levels - lvl - 1, 3, 1, 2, norm_name, False, res_block)
            for lvl in range(1, levels)
        )
        ups = []
        in_ch = hidden
        for lvl in range(levels - 1, -1, -1):
            ups.append(UnetrUpBlock(nd, in_ch, feature_size * 2**lvl, 3, 2, norm_name, res_block))
            in_ch = feature_size * 2**lvl
        self.ups = nn.ModuleList(ups)
        self.head = UnetOutBlock(nd, feature_size, out_channels)

    def _as_map(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Tokens ``(B, [1+]N, D)`` -> a feature map in the input's layout (volumes: tokens are depth-major)."""
        b, _, d = tokens.shape
        maps = tokens[:, self.encoder.num_prefix_tokens :].transpose(1, 2)
        if self.spatial_dims == 2:
            return maps.reshape(b, d, grid[1], grid[2])
        return maps.reshape(b, d, *grid).permute(0, 1, 3, 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_plain_tensor(x)
        tokens, grid = self.encoder.embed(x, self.kind)
        out, hidden = self.encoder.forward_tokens(tokens, return_hidden=True)
        y = self._as_map(out, grid)
        skips = {
            lvl: skip(self._as_map(hidden[tap], grid))
            for lvl, skip, tap in zip(range(1, self.levels), self.skips, self.taps, strict=True)
        }
        skips[0] = self.stem(x)
        for lvl, up in zip(range(self.levels - 1, -1, -1), self.ups, strict=True):
            y = up(y, skips[lvl])
        return self.head(y)


class _FixedKindSegmenter(UltraMAESegmenter):
    """The light decoder with one fixed layout, so TorchScript and ``verify_net_in_out`` see one signature."""

    def __init__(self, *args, kind: str = "still", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(as_plain_tensor(x), self.kind)


def segmentation_network(
    encoder: UltraMAEEncoder,
    out_channels: int = 2,
    decoder: str = "unetr",
    feature_size: int = 16,
    light_decoder_depth: int = 2,
    light_decoder_dim: int = 256,
    spatial_dims: int = 2,
) -> nn.Module:
    """The segmentation network a bundle's ``network_def`` names: ``decoder`` ``unetr``, ``light`` or ``auto``
    (UNETR when the patch allows it: square, or cubic for volumes, power of two), for stills
    (``spatial_dims=2``) or volumes ``(B, C, H, W, D)`` (``spatial_dims=3``).

    Both keep the encoder under ``.encoder`` (state-dict keys ``encoder.*``), so
    :func:`~ultramae_monai.networks.pretrained.load_pretrained_encoder` fills it and a fine-tuned checkpoint
    is itself a valid encoder source.
    """
    if decoder == "auto":  # UNETR where its upsampling path fits the patch, else the light decoder
        kt, kh, kw = encoder.tubelet
        fits = kh == kw and kh >= 2 and kh & (kh - 1) == 0 and (spatial_dims == 2 or kt == kh)
        decoder = "unetr" if fits else "light"
    if decoder == "unetr":
        return UltraMAEUNETR(encoder, out_channels, feature_size, spatial_dims=spatial_dims)
    if decoder == "light":
        kind = "still" if spatial_dims == 2 else "volume"
        return _FixedKindSegmenter(encoder, out_channels, light_decoder_depth, light_decoder_dim, kind=kind)
    raise ValueError(f"decoder must be one of {SEGMENTATION_DECODERS}, got {decoder!r}")
