"""Which tokens the encoder sees: per-sample random, tube, FOV-aware and confidence-weighted masking.

Random masking keeps the ``K`` tokens with the smallest random key, as in MAE (He et al., CVPR 2022), so every
sample keeps ``K = int(N (1 - ratio))`` tokens (MAE's ``len_keep``). Two ultrasound-aware variants change the
keys:

* **FOV-aware**: tokens outside the scan region (a fan or a rectangle, ``fov_mask``) get an infinite key and are
  excluded from the reconstruction set, so they are neither seen nor predicted. Each sample keeps
  ``K_i = int(N_i (1 - ratio))`` of its own ``N_i`` FOV tokens, so the ratio holds per sample within one token
  even when random crops give a wide fan and a narrow one in one batch. ``ids_keep`` is padded to the largest
  ``K_i``; ``keep_valid`` marks the real entries, and the encoder masks the padding out of attention. A sample
  with no FOV token (a crop of pure background) keeps one token for attention and reconstructs nothing.
* **Confidence-weighted**: visible tokens are drawn without replacement with probability proportional to
  ``c ** gamma`` (``c`` = the token's mean ultrasound confidence), using exponential keys ``-log(u) / w``
  (Efraimidis & Spirakis, 2006). ``gamma > 0`` keeps confident tissue visible; ``gamma < 0`` hides it, so it
  is what gets reconstructed.

Tube masking (VideoMAE, Tong et al., NeurIPS 2022) draws one spatial pattern per clip and repeats it over time,
so a masked patch cannot be copied from the neighbouring frame. All randomness goes through an optional
``torch.Generator`` so masks are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ultramae_monai.errors import InvalidInputError

__all__ = ["MaskSample", "mask_slots", "sample_mask", "token_confidence", "token_validity", "visible_count"]


@dataclass
class MaskSample:
    """A batch of masks over ``N`` tokens.

    Attributes:
        ids_keep: ``(B, K)`` visible token indices, fed to the encoder (``K`` = the largest per-sample count).
        ids_restore: ``(B, N)`` permutation that puts ``[ids_keep, others]`` back into grid order.
        mask: ``(B, N)`` float, 1 = masked and reconstructed, 0 = visible or outside the FOV.
        valid: ``(B, N)`` bool, True = inside the FOV (all True without a FOV).
        keep_valid: ``(B, K)`` bool, False on the padding of samples that keep fewer than ``K`` tokens; None when
            every sample keeps ``K`` (no padding, no attention mask needed).
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    keep_valid: torch.Tensor | None = None


def token_validity(fov_mask: torch.Tensor, grid: tuple[int, int, int], threshold: float = 0.5) -> torch.Tensor:
    """``(B, N)`` bool: a token is inside the FOV when at least ``threshold`` of its pixels are.

    ``fov_mask`` is the ``(B, 1, H, W)`` scan region; it is 2D, so every frame of a clip (or slab of a volume)
    shares it.
    """
    if fov_mask.ndim != 4 or fov_mask.shape[1] != 1:
        raise InvalidInputError(f"fov_mask must be (B, 1, H, W), got shape {tuple(fov_mask.shape)}")
    t, h, w = grid
    if fov_mask.shape[-2] % h or fov_mask.shape[-1] % w:
        raise InvalidInputError(f"fov_mask of shape {tuple(fov_mask.shape)} does not tile the token grid {grid}")
    frac = F.avg_pool2d(fov_mask.float(), (fov_mask.shape[-2] // h, fov_mask.shape[-1] // w))
    valid = (frac[:, 0] >= threshold).flatten(1)  # (B, H'W')
    return valid.repeat(1, t)


def token_confidence(confidence: torch.Tensor, num_tokens: int, patchify) -> torch.Tensor:
    """``(B, N)`` mean confidence per token, from maps laid out like the input (``patchify`` maps them)."""
    tokens = patchify(confidence.float())
    if tokens.shape[1] != num_tokens:
        raise InvalidInputError(f"confidence maps give {tokens.shape[1]} tokens, the input {num_tokens}")
    return tokens.mean(dim=-1)


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def mask_slots(grid: tuple[int, int, int], tube: bool) -> int:
    """Positions one mask draws over: ``H' W'`` with tube masking (repeated over time), else every token."""
    t, h, w = grid
    return h * w if tube else t * h * w


def visible_count(num_tokens: int, ratio: float) -> int:
    """Tokens kept visible out of ``num_tokens``: ``int(num_tokens * (1 - ratio))`` as MAE's ``len_keep``, at least 1."""
    return max(1, int(num_tokens * (1.0 - ratio)))


def sample_mask(
    batch: int,
    grid: tuple[int, int, int],
    ratio: float,
    device: torch.device | str = "cpu",
    valid: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    tube: bool = False,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> MaskSample:
    """Draw one mask per sample over the ``T' x H' x W'`` grid.

    Args:
        batch: number of samples.
        grid: token grid ``(T', H', W')``; ``N = T' H' W'``.
        ratio: fraction of (FOV) tokens to mask, in ``(0, 1)``.
        valid: ``(B, N)`` bool FOV tokens (see :func:`token_validity`); None = all tokens.
        weights: ``(B, N)`` non-negative sampling weights for *visible* tokens (None = uniform).
        tube: share one spatial pattern across the ``T'`` slots (video tube masking).
        generator: source of randomness, for reproducible masks.
        noise: ``(B, S)`` uniform noise in ``[0, 1)`` to use instead of drawing it (MAE's ``noise``), ``S`` =
            :func:`mask_slots`; e.g. drawn per sample from its own seed, so a sample's mask does not depend on
            the batch or the rank it lands in.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    device = torch.device(device)
    t, h, w = grid
    n = t * h * w
    # with tubes the draw happens over the H'W' spatial positions and is repeated over time
    slots, reps = mask_slots(grid, tube), (t if tube else 1)

    def per_slot(v: torch.Tensor, reduce: str) -> torch.Tensor:
        v = v.reshape(batch, reps, slots)
        return v.all(dim=1) if reduce == "all" else v.float().mean(dim=1)

    slot_valid = None if valid is None else per_slot(valid.to(device), "all")
    if noise is None:
        noise = _uniform((batch, slots), device, generator)
    elif tuple(noise.shape) != (batch, slots):
        raise InvalidInputError(f"mask noise of shape {tuple(noise.shape)}, expected {(batch, slots)}")
    keys = -torch.log(noise.to(device).clamp_min(1e-12))  # Exp(1) keys
    if weights is not None:
        keys = keys / per_slot(weights.to(device), "mean").clamp_min(1e-6)
    if slot_valid is None:
        keep = visible_count(slots, ratio)
        counts = torch.full((batch,), keep, device=device)
    else:
        keys = keys.masked_fill(~slot_valid, float("inf"))
        # each sample's own FOV sets its count; a sample with no FOV token keeps one (attention needs a key)
        counts = (slot_valid.sum(dim=1).float() * (1.0 - ratio)).long().clamp_min(1)
        keep = int(counts.max())

    order = torch.argsort(keys, dim=1)  # (B, slots): visible first, out-of-FOV last
    slot_kept = torch.arange(keep, device=device)[None] < counts[:, None]  # (B, keep): False on padding
    if tube:
        offsets = torch.arange(t, device=device) * slots
        ids_keep = (order[:, :keep, None] + offsets).transpose(1, 2).reshape(batch, keep * t)
        ids_rest = (order[:, keep:, None] + offsets).transpose(1, 2).reshape(batch, (slots - keep) * t)
        keep_valid = slot_kept[:, None, :].expand(-1, t, -1).reshape(batch, keep * t)
    else:
        ids_keep, ids_rest, keep_valid = order[:, :keep], order[:, keep:], slot_kept
    ids_shuffle = torch.cat([ids_keep, ids_rest], dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)

    full_valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    if slot_valid is not None:
        full_valid = slot_valid.repeat(1, reps)
    mask = torch.ones(batch, n, device=device)
    mask.scatter_(1, ids_keep, (~keep_valid).float())  # padding entries stay masked
    mask = mask * full_valid
    return MaskSample(
        ids_keep=ids_keep,
        ids_restore=ids_restore,
        mask=mask,
        valid=full_valid,
        keep_valid=None if bool(keep_valid.all()) else keep_valid,
    )
