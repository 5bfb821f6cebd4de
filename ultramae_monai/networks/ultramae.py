"""UltraMAE: one masked autoencoder for ultrasound stills, clips and volumes, with confidence-weighted targets.

Encoder: the tubelet ViT of :mod:`.tubelet_vit`, run on the visible tokens only (MAE, He et al., CVPR 2022).
Decoder: a light transformer (default 4 blocks x 384) over visible latents plus mask tokens, predicting one
target vector per tubelet. The default target is UltraMAE's CWUS (image x confidence map), so the model spends
its capacity on the tissue the probe actually saw; ``pixel`` (USF-MAE), ``norm_pixel`` (MAE) and
``pixel+confidence`` (two heads) are also available, see :mod:`ultramae_monai.losses.targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ultramae_monai.data.convention import KIND_CINE
from ultramae_monai.errors import InvalidInputError
from ultramae_monai.losses.masked_recon import masked_mse
from ultramae_monai.losses.targets import TARGETS, TARGETS_NEEDING_CONFIDENCE, make_target
from ultramae_monai.networks.layout import (
    as_plain_tensor,
    from_frames,
    patchify_input,
    resolve_kind,
    to_frames,
    unpatchify_input,
)
from ultramae_monai.networks.masking import sample_mask, token_confidence, token_validity
from ultramae_monai.networks.pos_embed import SpatioTemporalPosEmbed
from ultramae_monai.networks.presets import encoder_preset, pretraining_recipe
from ultramae_monai.networks.tubelet_vit import Block, UltraMAEEncoder, init_vit_weights

__all__ = ["UltraMAE"]


class UltraMAE(nn.Module):
    """Masked autoencoder: tubelet ViT encoder + light decoder + masking + reconstruction target.

    Args:
        preset: encoder size, ``micro`` / ``tiny`` / ``small`` / ``base`` / ``large``.
        in_channels: input channels.
        img_size: nominal input size (checked against the tubelet; any divisible size runs).
        tubelet: ``(t, p, p)`` tubelet.
        num_frames: nominal clip length (checked against ``t``; any multiple of ``t`` runs).
        target: ``pixel``, ``norm_pixel``, ``cwus`` or ``pixel+confidence``.
        mask_ratio_image: masking ratio for stills and volumes.
        mask_ratio_video: masking ratio for clips.
        decoder_depth, decoder_dim, decoder_num_heads: decoder size (heads default to ``decoder_dim // 32``).
        tube_masking: one spatial mask shared by all time slots of a clip.
        fov_masking: when ``fov_mask`` is given, tokens outside the FOV are neither visible nor reconstructed.
        fov_threshold: fraction of a token's pixels that must lie in the FOV for it to count as inside.
        loss_in_fov: when ``fov_mask`` is given, drop out-of-FOV tokens from the loss even without FOV masking.
        confidence_sampling: exponent ``gamma`` of confidence-weighted visible-token sampling (0 = uniform).
        confidence_loss_weight: weight of the confidence head in ``pixel+confidence``.
        embed_dim, depth, num_heads: override the preset's encoder size.
        mlp_ratio, qkv_bias, cls_token, norm_eps, grad_checkpointing: see :class:`UltraMAEEncoder`.
    """

    def __init__(
        self,
        preset: str = "base",
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        tubelet: Sequence[int] = (2, 16, 16),
        num_frames: int = 16,
        target: str = "cwus",
        mask_ratio_image: float = 0.90,
        mask_ratio_video: float = 0.95,
        decoder_depth: int = 4,
        decoder_dim: int = 384,
        decoder_num_heads: int | None = None,
        tube_masking: bool = True,
        fov_masking: bool = True,
        fov_threshold: float = 0.5,
        loss_in_fov: bool = True,
        confidence_sampling: float = 0.0,
        confidence_loss_weight: float = 1.0,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cls_token: bool = False,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
        for name, r in (("mask_ratio_image", mask_ratio_image), ("mask_ratio_video", mask_ratio_video)):
            if not 0.0 < r < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {r}")
        self.preset = preset
        size = encoder_preset(preset)
        size.update({k: v for k, v in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)) if v})
        self.encoder = UltraMAEEncoder(
            in_channels=in_channels,
            tubelet=tubelet,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            cls_token=cls_token,
            norm_eps=norm_eps,
            grad_checkpointing=grad_checkpointing,
            **size,
        )
        self.tubelet = self.encoder.tubelet
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(self.img_size) != 2:
            raise ValueError(f"img_size is (H, W) or one int, got {img_size}")
        self.num_frames = num_frames
        if any(s % p for s, p in zip(self.img_size, self.tubelet[1:], strict=True)) or num_frames % self.tubelet[0]:
            raise ValueError(f"img_size {self.img_size} / num_frames {num_frames} must divide by tubelet {tubelet}")
        self.target = target
        self.mask_ratio_image = mask_ratio_image
        self.mask_ratio_video = mask_ratio_video
        self.tube_masking = tube_masking
        self.fov_masking = fov_masking
        self.fov_threshold = fov_threshold
        self.loss_in_fov = loss_in_fov
        self.confidence_sampling = confidence_sampling
        self.confidence_loss_weight = confidence_loss_weight
        self.grad_checkpointing = grad_checkpointing

        heads = decoder_num_heads or max(1, decoder_dim // 32)
        out_dim = self.encoder.patch_dim * (2 if target == "pixel+confidence" else 1)
        self.decoder_embed = nn.Linear(self.encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = SpatioTemporalPosEmbed(decoder_dim)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, heads, mlp_ratio, True, norm_eps) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, out_dim)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_vit_weights(m)
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def from_recipe(cls, recipe: str = "ultramae", **kwargs: Any) -> UltraMAE:
        """Model with a named recipe's target and masking (``ultramae``, ``usf-mae``, ``mae``); kwargs override."""
        return cls(**{**pretraining_recipe(recipe), **kwargs})

    def architecture(self) -> dict[str, Any]:
        """Encoder kwargs, preset and ``img_size``: what a checkpoint's ``meta["architecture"]`` records."""
        return {"preset": self.preset, **self.encoder.config, "img_size": list(self.img_size)}

    # ------------------------------------------------------------------ pieces
    def compute_confidence(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Confidence maps (MONAI's defaults) of every frame of a batch, factorised together on ``x``'s device.

        Precomputing maps in the data pipeline (``ultramae curate``) is cheaper; this path is for convenience,
        previews and small batches. Volumes are mapped slice by slice along their depth axis.
        """
        from ultramae_monai.confmap.api import ConfMapParams, solve_confidence_maps

        frames = to_frames(x, kind, 1)  # (B, C, T, H, W); a still has T = 1
        b, c, t, h, w = frames.shape
        grey = frames.detach().float().mean(dim=1).reshape(b * t, h, w).cpu().double().numpy()
        maps = solve_confidence_maps(grey, ConfMapParams(), device=x.device)  # beam = rows (the convention)
        conf = torch.from_numpy(maps).to(device=x.device, dtype=torch.float32)
        conf = conf.reshape(b, t, 1, h, w).transpose(1, 2).expand(b, c, t, h, w)
        return from_frames(conf, kind)

    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        grid: tuple[int, int, int],
        keep_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Visible latents ``(B, [1+]K, D)`` -> predictions for every token ``(B, N, out_dim)``.

        ``keep_valid`` ``(B, K)`` marks padding latents (False), which are replaced by the mask token.
        """
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent).float()  # the decoder's residual stream is float32 too
        cls_tok, x = x[:, :prefix], x[:, prefix:]
        b, k, d = x.shape
        n = ids_restore.shape[1]
        if keep_valid is not None:
            x = torch.where(keep_valid[..., None], x, self.mask_token)
        x = torch.cat([x, self.mask_token.expand(b, n - k, d)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = x + self.decoder_pos_embed(grid, x.device)
        x = torch.cat([cls_tok, x], dim=1)
        for blk in self.decoder_blocks:
            use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def _feature_weights(self, device: torch.device) -> torch.Tensor | None:
        if self.target != "pixel+confidence":
            return None
        pd = self.encoder.patch_dim
        return torch.cat([torch.ones(pd), torch.full((pd,), float(self.confidence_loss_weight))]).to(device)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        confidence: torch.Tensor | None = None,
        fov_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        kind: str | None = None,
    ) -> dict[str, Any]:
        """One masked-autoencoding pass.

        Args:
            x: stills ``(B, C, H, W)`` or clips ``(B, C, T, H, W)``; volumes ``(B, C, H, W, D)`` with
                ``kind="volume"`` (or a MetaTensor whose metadata says so).
            confidence: confidence maps shaped like ``x``; computed on the fly when needed and None.
            fov_mask: ``(B, 1, H, W)`` bool scan region, or None.
            generator: randomness of the mask, for reproducible runs.

        Returns:
            ``loss`` (scalar), ``pred`` and ``target`` ``(B, N, P)``, ``mask`` ``(B, N)`` (1 = reconstructed
            and counted in the loss), ``ids_restore``, ``ids_keep``, ``valid`` (FOV tokens), ``grid``, ``kind``.
        """
        kind = resolve_kind(x, kind)
        x = as_plain_tensor(x)
        if not torch.is_floating_point(x):
            x = x.float()
        tokens, grid = self.encoder.embed(x, kind)
        b, n, d = tokens.shape
        need_conf = self.target in TARGETS_NEEDING_CONFIDENCE or self.confidence_sampling != 0
        if need_conf and confidence is None:
            confidence = self.compute_confidence(x, kind)
        if confidence is not None:
            confidence = as_plain_tensor(torch.as_tensor(confidence, device=x.device))
            if confidence.shape != x.shape:
                raise InvalidInputError(
                    f"confidence shape {tuple(confidence.shape)} differs from the input {tuple(x.shape)}"
                )
        valid = None
        if fov_mask is not None:
            valid = token_validity(torch.as_tensor(fov_mask, device=x.device), grid, self.fov_threshold)
        weights = None
        if self.confidence_sampling != 0:
            conf_tok = token_confidence(confidence, n, partial(patchify_input, kind=kind, tubelet=self.tubelet))
            weights = conf_tok.clamp_min(1e-6) ** self.confidence_sampling
        video = kind == KIND_CINE
        masks = sample_mask(
            b,
            grid,
            self.mask_ratio_video if video else self.mask_ratio_image,
            device=x.device,
            valid=valid if self.fov_masking else None,
            weights=weights,
            tube=video and self.tube_masking,
            generator=generator,
        )
        visible = torch.gather(tokens, 1, masks.ids_keep.unsqueeze(-1).expand(-1, -1, d))
        latent = self.encoder.forward_tokens(visible, key_mask=masks.keep_valid)
        pred = self.forward_decoder(latent, masks.ids_restore, grid, masks.keep_valid)
        kt = self.tubelet[0]
        conf_frames = None if confidence is None else to_frames(confidence, kind, kt)
        target = make_target(self.target, to_frames(x, kind, kt), self.tubelet, conf_frames)
        mask = masks.mask
        if valid is not None and self.loss_in_fov:
            mask = mask * valid
        loss = masked_mse(pred, target, mask, feature_weights=self._feature_weights(x.device))
        return {
            "loss": loss,
            "pred": pred,
            "target": target,
            "mask": mask,
            "ids_restore": masks.ids_restore,
            "ids_keep": masks.ids_keep,
            "valid": masks.valid if valid is None else valid,
            "grid": grid,
            "kind": kind,
        }

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Image-shaped views of one pass, in ``x``'s layout, for TensorBoard grids.

        ``masked``: the input with everything but the visible tokens zeroed; ``pred``: the prediction for
        every token (de-normalised with each patch's own statistics for ``norm_pixel``); ``target``: what the
        model was asked to reconstruct (x, or x * confidence for ``cwus``). ``pixel+confidence`` adds
        ``pred_confidence`` and ``confidence``. ``visible`` is 1 on the tokens the encoder saw (the MAE
        picture pastes the input there over the prediction).
        """
        kind, grid, c = out["kind"], out["grid"], self.encoder.in_channels
        pd = self.encoder.patch_dim
        x_tok = patchify_input(x.float(), kind, self.tubelet)
        pred = out["pred"][..., :pd].float()
        if self.target == "norm_pixel":
            mean = x_tok.mean(dim=-1, keepdim=True)
            std = (x_tok.var(dim=-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
            pred = pred * std + mean
        keep = torch.zeros(x_tok.shape[:2], device=x_tok.device)
        keep.scatter_(1, out["ids_keep"], 1.0)
        to_img = partial(unpatchify_input, grid=grid, kind=kind, tubelet=self.tubelet, channels=c)
        target = out["target"][..., :pd].float() if self.target in ("cwus", "pixel+confidence") else x_tok
        views = {"masked": to_img(x_tok * keep.unsqueeze(-1)), "pred": to_img(pred), "target": to_img(target)}
        views["visible"] = to_img(keep.unsqueeze(-1).expand_as(x_tok))
        if self.target == "pixel+confidence":
            views["pred_confidence"] = to_img(out["pred"][..., pd:].float())
            views["confidence"] = to_img(out["target"][..., pd:].float())
        return views
