"""Tubelet ViT encoder shared by stills, clips and volumes (UltraMAE's backbone).

Tokens are ``t x p x p`` tubelets (ViViT, Arnab et al., ICCV 2021; VideoMAE, Tong et al., NeurIPS 2022) with
separable fixed sin-cos position codes (:mod:`.pos_embed`). Blocks are pre-norm ViT blocks (Dosovitskiy et al.,
ICLR 2021) whose attention goes through ``F.scaled_dot_product_attention``, so flash / memory-efficient kernels
run on GPU. Parameter names follow the MAE / timm layout (``patch_embed.proj``, ``blocks.N.attn.qkv`` ...), so
public 2D checkpoints map onto it with only the patch kernel inflated (:mod:`.interop`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ultramae_monai.data.convention import KIND_STILL
from ultramae_monai.networks.layout import as_plain_tensor, resolve_kind, to_frames, token_grid
from ultramae_monai.networks.pos_embed import SpatioTemporalPosEmbed
from ultramae_monai.networks.presets import encoder_preset

__all__ = ["Attention", "Block", "Mlp", "TubeletEmbed", "UltraMAEEncoder", "init_vit_weights"]


class TubeletEmbed(nn.Module):
    """Linear projection of non-overlapping ``t x p x p`` tubelets (a strided Conv3d)."""

    def __init__(self, in_channels: int, embed_dim: int, tubelet: Sequence[int]) -> None:
        super().__init__()
        self.tubelet = tuple(int(k) for k in tubelet)
        if len(self.tubelet) != 3 or min(self.tubelet) < 1:
            raise ValueError(f"tubelet must be three positive sizes (t, p, p), got {tubelet}")
        self.in_channels = in_channels
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.tubelet, stride=self.tubelet)

    def forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Batch in the package layout -> ``(B, N, D)`` tokens, ``t``-major then rows then columns."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got shape {tuple(x.shape)}")
        if kind == KIND_STILL:
            # an image repeated to t frames through a t-deep kernel == one 2D conv with the kernel summed over t
            w = self.proj.weight.sum(dim=2)
            y = F.conv2d(x, w, self.proj.bias, stride=self.tubelet[1:])
        else:
            y = self.proj(to_frames(x, kind, self.tubelet[0]))
        return y.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (fused kernels where available)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask``: optional ``(B, N)`` bool, False = a padding token no query attends to."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears (and the patch kernel seen as a linear), unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv3d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UltraMAEEncoder(nn.Module):
    """Tubelet ViT encoder for stills ``(B,C,H,W)``, clips ``(B,C,T,H,W)`` and volumes ``(B,C,H,W,D)``.

    Args:
        in_channels: input channels (1 for grey B-mode).
        tubelet: ``(t, p, p)`` tubelet size; a volume is cut into ``t``-slice slabs along ``D`` (use
            ``(p, p, p)`` for cubic patches).
        embed_dim, depth, num_heads, mlp_ratio: ViT size (see :meth:`from_preset`).
        qkv_bias: bias on the qkv projection (True in MAE/timm, False in MONAI's ViT).
        cls_token: prepend a class token (off by default: UltraMAE pools tokens instead).
        norm_eps: LayerNorm epsilon (1e-6 as MAE; MONAI uses 1e-5).
        grad_checkpointing: recompute block activations in backward to save memory while training.
    """

    def __init__(
        self,
        in_channels: int = 1,
        tubelet: Sequence[int] = (2, 16, 16),
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cls_token: bool = False,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": int(in_channels),
            "tubelet": [int(k) for k in tubelet],
            "embed_dim": int(embed_dim),
            "depth": int(depth),
            "num_heads": int(num_heads),
            "mlp_ratio": float(mlp_ratio),
            "qkv_bias": bool(qkv_bias),
            "cls_token": bool(cls_token),
            "norm_eps": float(norm_eps),
        }  # what rebuilds this encoder (checkpoint metadata)
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.norm_eps = norm_eps
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = TubeletEmbed(in_channels, embed_dim, tubelet)
        self.tubelet = self.patch_embed.tubelet
        self.pos_embed = SpatioTemporalPosEmbed(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        init_vit_weights(self)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @classmethod
    def from_preset(cls, preset: str = "base", **kwargs) -> UltraMAEEncoder:
        """Encoder of a named size (``micro``, ``tiny``, ``small``, ``base``, ``large``); kwargs override."""
        return cls(**{**encoder_preset(preset), **kwargs})

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    @property
    def patch_dim(self) -> int:
        """Values per tubelet: ``C * t * p * p``."""
        kt, kh, kw = self.tubelet
        return self.in_channels * kt * kh * kw

    def grid(self, x: torch.Tensor, kind: str | None = None) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a batch."""
        return token_grid(x.shape, resolve_kind(x, kind), self.tubelet)

    def embed(self, x: torch.Tensor, kind: str | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Tubelet tokens plus position codes, ``(B, N, D)``, and their grid (no class token, no masking)."""
        kind = resolve_kind(x, kind)
        grid = token_grid(x.shape, kind, self.tubelet)
        tokens = self.patch_embed(as_plain_tensor(x), kind)
        # the residual stream starts in float32 even under autocast (as MAE / timm): position codes added in fp32
        return tokens.float() + self.pos_embed(grid, tokens.device), grid

    def forward_tokens(self, tokens: torch.Tensor, return_hidden: bool = False, key_mask: torch.Tensor | None = None):
        """Run the blocks on (already embedded, possibly masked) tokens; prepends the class token if any.

        ``key_mask`` ``(B, K)`` bool marks the real tokens of a padded batch (False = padding, kept out of
        every attention). Returns the normed tokens, and with ``return_hidden`` also every block's (un-normed)
        output, which is what UNETR-style decoders tap.
        """
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
            if key_mask is not None:
                key_mask = F.pad(key_mask, (1, 0), value=True)
        hidden = []
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(blk, tokens, key_mask, use_reentrant=False)
            else:
                tokens = blk(tokens, key_mask)
            if return_hidden:
                hidden.append(tokens)
        out = self.norm(tokens)
        return (out, hidden) if return_hidden else out

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None, kind: str | None = None) -> torch.Tensor:
        """Encode the tokens listed in ``ids_keep`` ``(B, K)`` (all tokens when None) -> ``(B, [1+]K, D)``."""
        tokens, _ = self.embed(x, kind)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.forward_tokens(tokens)

    def forward_features(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """All tokens (class token first if enabled), no masking: the input to downstream heads."""
        return self.forward(x, None, kind)
