"""Downstream heads on a pretrained :class:`UltraMAEEncoder`: classification and segmentation.

* :class:`UltraMAEClassifier`: mean-pooled tokens + linear layer (MAE's fine-tuning head), or attentive
  pooling (a learned query cross-attending to the tokens, as in V-JEPA / AIM probes), for stills and clips.
* :class:`UltraMAESegmenter`: a light transformer decoder like UltraMAE's pretraining decoder that predicts
  per-tubelet logits and folds them back into the input's layout (2D, clips and 3D).
* :func:`ultramae_monai.networks.interop.to_monai_unetr`: MONAI ``UNETR`` initialised with the encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ultramae_monai.networks.layout import resolve_kind, unpatchify_input
from ultramae_monai.networks.pos_embed import SpatioTemporalPosEmbed
from ultramae_monai.networks.tubelet_vit import Block, UltraMAEEncoder, init_vit_weights

__all__ = ["AttentivePooler", "UltraMAEClassifier", "UltraMAESegmenter"]


class AttentivePooler(nn.Module):
    """One learned query attends over all tokens: a pooling that learns where the evidence is."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        init_vit_weights(self)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, D) -> (B, D)``."""
        b, n, d = tokens.shape
        h = self.num_heads
        x = self.norm(tokens)
        q = self.q(self.query.expand(b, -1, -1)).reshape(b, 1, h, d // h).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)
        return self.proj(out)


class UltraMAEClassifier(nn.Module):
    """Image / clip classifier on the encoder's tokens.

    Args:
        encoder: a (pretrained) :class:`UltraMAEEncoder`.
        num_classes: output logits.
        pooling: ``mean`` (mean of patch tokens, then LayerNorm) or ``attentive``.
        dropout: dropout before the linear layer.
        freeze_encoder: linear / attentive probing: the encoder gets no gradient.
    """

    def __init__(
        self,
        encoder: UltraMAEEncoder,
        num_classes: int,
        pooling: str = "mean",
        dropout: float = 0.0,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "attentive"):
            raise ValueError(f"pooling must be 'mean' or 'attentive', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.freeze_encoder = freeze_encoder
        dim = encoder.embed_dim
        self.pool: nn.Module = nn.LayerNorm(dim) if pooling == "mean" else AttentivePooler(dim, encoder.num_heads)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning init: start near uniform logits
        nn.init.zeros_(self.head.bias)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """Stills ``(B, C, H, W)`` or clips ``(B, C, T, H, W)`` -> logits ``(B, num_classes)``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            tokens = self.encoder.forward_features(x, kind)[:, self.encoder.num_prefix_tokens :]
        pooled = self.pool(tokens.mean(dim=1)) if self.pooling == "mean" else self.pool(tokens)
        return self.head(self.dropout(pooled))


class UltraMAESegmenter(nn.Module):
    """Encoder + light transformer decoder that predicts ``t x p x p`` logit tubelets (2D, clips, 3D).

    The decoder mirrors UltraMAE's pretraining decoder, so segmentation fine-tuning starts from the same
    token geometry; each token's logits are folded back to pixels, then optionally smoothed by a 3x3 conv.
    """

    def __init__(
        self,
        encoder: UltraMAEEncoder,
        out_channels: int,
        decoder_depth: int = 2,
        decoder_dim: int = 256,
        decoder_num_heads: int | None = None,
        refine: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_channels = out_channels
        kt, kh, kw = encoder.tubelet
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.decoder_pos_embed = SpatioTemporalPosEmbed(decoder_dim)
        heads = decoder_num_heads or max(1, decoder_dim // 32)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, out_channels * kt * kh * kw)
        init_vit_weights(self.decoder_blocks)
        for m in (self.decoder_embed, self.decoder_norm, self.decoder_pred):
            init_vit_weights(m)
        self.refine = refine
        self.refine2d = nn.Conv2d(out_channels, out_channels, 3, padding=1) if refine else None
        self.refine3d = nn.Conv3d(out_channels, out_channels, 3, padding=1) if refine else None

    def forward(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """Logits in the input's layout with ``out_channels`` channels."""
        kind = resolve_kind(x, kind)
        grid = self.encoder.grid(x, kind)
        tokens = self.encoder.forward_features(x, kind)[:, self.encoder.num_prefix_tokens :]
        y = self.decoder_embed(tokens)
        y = y + self.decoder_pos_embed(grid, y.device).to(y.dtype)
        for blk in self.decoder_blocks:
            y = blk(y)
        y = self.decoder_pred(self.decoder_norm(y))
        logits = unpatchify_input(y, grid, kind, self.encoder.tubelet, self.out_channels)
        if self.refine:
            conv = self.refine2d if logits.ndim == 4 else self.refine3d
            logits = logits + conv(logits)
        return logits
