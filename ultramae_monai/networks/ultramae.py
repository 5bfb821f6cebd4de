"""UltraMAE: one masked autoencoder for ultrasound stills, clips and volumes, with confidence-weighted targets.

Laid out as facebookresearch/mae's ``models_mae.py`` (He et al., CVPR 2022): ``patchify`` / ``unpatchify``,
``random_masking``, ``forward_encoder``, ``forward_decoder``, ``forward_loss`` and ``forward``, in that order.
The encoder is the tubelet ViT of :mod:`.tubelet_vit`, run on the visible tokens only; the decoder a light
transformer (default 4 blocks x 384) over visible latents plus mask tokens, predicting one target vector per
tubelet.

Targets (``(B, N, patch_dim)`` tokens, float32):

* ``pixel``: raw tubelet pixels (USF-MAE, Megahed et al., 2025);
* ``norm_pixel``: pixels normalised per patch to zero mean / unit variance (MAE's ``norm_pix_loss``);
* ``cwus``: the confidence-weighted image ``x * c`` (UltraMAE), ``c`` the ultrasound confidence map (Karamalis et
  al., MedIA 2012), so the model spends its capacity on the tissue the probe saw;
* ``pixel+confidence``: two heads, pixels and the confidence map, concatenated along the last axis.

The confidence map is an *input*: the ``UltrasoundConfidenceMapd`` transform computes it in the data pipeline
(curation caches it), or the trainer on the device with ``ultramae_monai.confmap.api.batch_confidence_maps``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ultramae_monai.data.convention import KIND_CINE
from ultramae_monai.errors import InvalidInputError
from ultramae_monai.networks.layout import (
    as_plain_tensor,
    patchify,
    patchify_input,
    resolve_kind,
    to_frames,
    token_grid,
    unpatchify_input,
)
from ultramae_monai.networks.masking import MaskSample, mask_slots, sample_mask, token_confidence, token_validity
from ultramae_monai.networks.pos_embed import SpatioTemporalPosEmbed
from ultramae_monai.networks.presets import pretraining_recipe
from ultramae_monai.networks.tubelet_vit import Block, UltraMAEEncoder, init_vit_weights

__all__ = ["TARGETS", "TARGETS_NEEDING_CONFIDENCE", "UltraMAE", "make_target", "masked_mse", "normalize_patches"]

TARGETS = ("pixel", "norm_pixel", "cwus", "pixel+confidence")
TARGETS_NEEDING_CONFIDENCE = ("cwus", "pixel+confidence")
NEEDS_CONFIDENCE = (
    "target {target!r} needs confidence maps (confidence=): add UltrasoundConfidenceMapd to the data pipeline, "
    "or compute them with ultramae_monai.confmap.api.batch_confidence_maps"
)


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
            raise InvalidInputError(NEEDS_CONFIDENCE.format(target=name))
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


def masked_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None = None,
    feature_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over masked (and valid) tokens of the per-token MSE, in float32 (MAE's ``forward_loss``).

    Visible tokens contribute nothing (their gradient is exactly zero); with ``valid`` tokens outside the FOV are
    dropped too, so the black border around a fan never dominates the loss. ``feature_weights`` ``(P,)``
    weighs token features (the two heads of ``pixel+confidence``). A batch with nothing to reconstruct gives 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred.float() - target.float()) ** 2
    if feature_weights is None:
        per_token = err.mean(dim=-1)
    else:
        fw = feature_weights.to(err)
        per_token = (err * fw).sum(dim=-1) / fw.sum()
    weight = mask.float() if valid is None else mask.float() * valid.float()
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


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
        grad_checkpointing: recompute block activations (encoder and decoder) in backward.
        encoder: further :class:`UltraMAEEncoder` arguments over the preset (``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio``, ``qkv_bias``, ``cls_token``, ``norm_eps``), as a mapping or keywords.
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
        grad_checkpointing: bool = False,
        encoder: Mapping[str, Any] | None = None,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
        for name, r in (("mask_ratio_image", mask_ratio_image), ("mask_ratio_video", mask_ratio_video)):
            if not 0.0 < r < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {r}")
        overrides = {k: v for k, v in {**(encoder or {}), **encoder_kwargs}.items() if v is not None}
        self.preset = preset
        self.encoder = UltraMAEEncoder.from_preset(
            preset, in_channels=in_channels, tubelet=tubelet, grad_checkpointing=grad_checkpointing, **overrides
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

        # MAE decoder specifics
        norm_eps = self.encoder.norm_eps
        heads = decoder_num_heads or max(1, decoder_dim // 32)
        out_dim = self.encoder.patch_dim * (2 if target == "pixel+confidence" else 1)
        self.decoder_embed = nn.Linear(self.encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = SpatioTemporalPosEmbed(decoder_dim)
        mlp_ratio = self.encoder.config["mlp_ratio"]
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

    # ------------------------------------------------------------------ tokens
    def patchify(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """A batch in the package layout -> ``(B, N, t*p*p*C)`` tokens, in the encoder's order."""
        return patchify_input(x, kind, self.tubelet)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int], kind: str) -> torch.Tensor:
        """Tokens -> a batch in the package layout (a still's ``t`` frames averaged into one image)."""
        return unpatchify_input(tokens, grid, kind, self.tubelet, self.encoder.in_channels)

    def mask_slots(self, x: torch.Tensor, kind: str | None = None) -> int:
        """Length of one sample's mask noise for a batch like ``x`` (see ``noise`` in :meth:`forward`)."""
        kind = resolve_kind(x, kind)
        return mask_slots(token_grid(x.shape, kind, self.tubelet), kind == KIND_CINE and self.tube_masking)

    def random_masking(
        self,
        x: torch.Tensor,
        kind: str,
        grid: tuple[int, int, int],
        confidence: torch.Tensor | None,
        fov_mask: torch.Tensor | None,
        generator: torch.Generator | None,
        noise: torch.Tensor | None = None,
    ) -> MaskSample:
        """Per-sample masks (:func:`~.masking.sample_mask`): tube masking for clips, FOV-aware, confidence-weighted."""
        b, n = x.shape[0], grid[0] * grid[1] * grid[2]
        valid = None
        if fov_mask is not None:
            valid = token_validity(torch.as_tensor(fov_mask, device=x.device), grid, self.fov_threshold)
        weights = None
        if self.confidence_sampling != 0:
            if confidence is None:
                raise InvalidInputError("confidence_sampling needs confidence maps as input (confidence=)")
            conf_tok = token_confidence(confidence, n, partial(self.patchify, kind=kind))
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
            noise=noise,
        )
        if valid is not None and not self.fov_masking:
            masks.valid = valid  # uniform masking; the FOV still decides what the loss counts
        return masks

    # ------------------------------------------------------------------ encoder / decoder
    def forward_encoder(
        self, x: torch.Tensor, kind: str, masks_of: Any
    ) -> tuple[torch.Tensor, MaskSample, tuple[int, int, int]]:
        """Embed, mask (``masks_of(grid)`` draws the masks), run the blocks on the visible tokens."""
        tokens, grid = self.encoder.embed(x, kind)
        masks = masks_of(grid)
        d = tokens.shape[-1]
        visible = torch.gather(tokens, 1, masks.ids_keep.unsqueeze(-1).expand(-1, -1, d))
        return self.encoder.forward_tokens(visible, key_mask=masks.keep_valid), masks, grid

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

    # ------------------------------------------------------------------ loss
    def forward_target(self, x: torch.Tensor, kind: str, confidence: torch.Tensor | None) -> torch.Tensor:
        """What the decoder must reconstruct, ``(B, N, out_dim)`` float32 (see the module docstring)."""
        kt = self.tubelet[0]
        conf_frames = None if confidence is None else to_frames(confidence, kind, kt)
        return make_target(self.target, to_frames(x, kind, kt), self.tubelet, conf_frames)

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked MSE over the reconstructed tokens (``mask == 1``), the confidence head weighted."""
        weights = None
        if self.target == "pixel+confidence":
            pd = self.encoder.patch_dim
            weights = torch.cat([torch.ones(pd), torch.full((pd,), float(self.confidence_loss_weight))])
        return masked_mse(pred, target, mask, feature_weights=weights)

    def forward(
        self,
        x: torch.Tensor,
        confidence: torch.Tensor | None = None,
        fov_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        kind: str | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """One masked-autoencoding pass.

        Args:
            x: stills ``(B, C, H, W)`` or clips ``(B, C, T, H, W)``; volumes ``(B, C, H, W, D)`` with
                ``kind="volume"`` (or a MetaTensor whose metadata says so).
            confidence: confidence maps shaped like ``x`` (needed by ``cwus``, ``pixel+confidence`` and
                confidence-weighted sampling).
            fov_mask: ``(B, 1, H, W)`` bool scan region, or None.
            generator: randomness of the mask, for reproducible runs.
            noise: ``(B, mask_slots)`` uniform mask noise instead of drawing it (MAE's ``noise``).

        Returns:
            ``loss`` (scalar), ``pred`` and ``target`` ``(B, N, P)``, ``mask`` ``(B, N)`` (1 = reconstructed
            and counted in the loss), ``ids_restore``, ``ids_keep`` (with ``keep_valid``, False on padding, or
            None), ``valid`` (FOV tokens), ``grid``, ``kind``.
        """
        kind = resolve_kind(x, kind)
        x = as_plain_tensor(x)
        if not torch.is_floating_point(x):
            x = x.float()
        if confidence is not None:
            confidence = as_plain_tensor(torch.as_tensor(confidence, device=x.device))
            if confidence.shape != x.shape:
                raise InvalidInputError(
                    f"confidence shape {tuple(confidence.shape)} differs from the input {tuple(x.shape)}"
                )
        if self.target in TARGETS_NEEDING_CONFIDENCE and confidence is None:
            raise InvalidInputError(NEEDS_CONFIDENCE.format(target=self.target))
        latent, masks, grid = self.forward_encoder(
            x, kind, lambda grid: self.random_masking(x, kind, grid, confidence, fov_mask, generator, noise)
        )
        pred = self.forward_decoder(latent, masks.ids_restore, grid, masks.keep_valid)
        target = self.forward_target(x, kind, confidence)
        mask = masks.mask
        if fov_mask is not None and self.loss_in_fov:
            mask = mask * masks.valid
        return {
            "loss": self.forward_loss(pred, target, mask),
            "pred": pred,
            "target": target,
            "mask": mask,
            "ids_restore": masks.ids_restore,
            "ids_keep": masks.ids_keep,
            "keep_valid": masks.keep_valid,
            "valid": masks.valid,
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
        kind, grid = out["kind"], out["grid"]
        pd = self.encoder.patch_dim
        x_tok = self.patchify(x.float(), kind)
        pred = out["pred"][..., :pd].float()
        if self.target == "norm_pixel":
            mean = x_tok.mean(dim=-1, keepdim=True)
            std = (x_tok.var(dim=-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
            pred = pred * std + mean
        keep = torch.zeros(x_tok.shape[:2], device=x_tok.device)
        shown = out.get("keep_valid")
        keep.scatter_(1, out["ids_keep"], 1.0 if shown is None else shown.float())  # padding was not shown
        to_img = partial(self.unpatchify, grid=grid, kind=kind)
        target = out["target"][..., :pd].float() if self.target in ("cwus", "pixel+confidence") else x_tok
        views = {"masked": to_img(x_tok * keep.unsqueeze(-1)), "pred": to_img(pred), "target": to_img(target)}
        views["visible"] = to_img(keep.unsqueeze(-1).expand_as(x_tok))
        if self.target == "pixel+confidence":
            views["pred_confidence"] = to_img(out["pred"][..., pd:].float())
            views["confidence"] = to_img(out["target"][..., pd:].float())
        return views
