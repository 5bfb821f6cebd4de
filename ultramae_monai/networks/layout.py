"""How batched stills, clips and volumes map onto one tubelet token grid ``(T', H', W')``.

The package's array convention (``docs/conventions.md``) batched: a still is ``(B, C, H, W)``, a clip
``(B, C, T, H, W)``, a volume ``(B, C, H, W, D)``. The tubelet ViT sees all three as frames ``(B, C, T, H, W)``:
a still is one image repeated to ``t`` frames (one temporal slot, as in OmniMAE, Girdhar et al., CVPR 2023), a
volume is sliced along ``D`` so its slabs play the role of frames (cubic patches when the tubelet is ``p x p x p``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, KIND_VOLUME, MetaKeys
from ultramae_monai.errors import InvalidInputError

__all__ = [
    "as_plain_tensor",
    "from_frames",
    "patchify",
    "patchify_input",
    "resolve_kind",
    "to_frames",
    "token_grid",
    "unpatchify",
    "unpatchify_input",
]


def as_plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """Drop MetaTensor metadata for the network's inner loop (indexing ops would carry it along, slowly)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def resolve_kind(x: torch.Tensor, kind: str | None = None) -> str:
    """``still``/``cine``/``volume`` for a batch: explicit ``kind``, else MetaTensor metadata, else 4D = still, 5D = cine."""
    if kind is None:
        meta = getattr(x, "meta", None) or {}
        found = meta.get(MetaKeys.KIND)
        if isinstance(found, (list, tuple)):  # collated batch: one entry per sample
            found = found[0] if len(set(found)) == 1 else None
        kind = found if isinstance(found, str) else (KIND_STILL if x.ndim == 4 else KIND_CINE)
    if kind not in (KIND_STILL, KIND_CINE, KIND_VOLUME):
        raise InvalidInputError(f"unknown input kind {kind!r}; expected still, cine or volume")
    want = 4 if kind == KIND_STILL else 5
    if x.ndim != want:
        layout = {KIND_STILL: "(B, C, H, W)", KIND_CINE: "(B, C, T, H, W)", KIND_VOLUME: "(B, C, H, W, D)"}[kind]
        raise InvalidInputError(f"a batch of {kind} inputs must be {layout}, got shape {tuple(x.shape)}")
    return kind


def token_grid(shape: Sequence[int], kind: str, tubelet: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(T', H', W')`` of a batch of the given shape; every axis must divide by its tubelet size."""
    kt, kh, kw = tubelet
    if kind == KIND_STILL:
        t, (h, w) = kt, shape[2:]
    elif kind == KIND_CINE:
        t, h, w = shape[2:]
    else:
        h, w, t = shape[2:]
    for name, size, k in (("frames/depth", t, kt), ("height", h, kh), ("width", w, kw)):
        if size < k or size % k:
            raise InvalidInputError(
                f"{kind} input of shape {tuple(shape)}: {name} {size} is not a positive multiple of the tubelet {k}"
            )
    return t // kt, h // kh, w // kw


def to_frames(x: torch.Tensor, kind: str, frames: int) -> torch.Tensor:
    """View as ``(B, C, T, H, W)``; a still is repeated to ``frames`` frames (an expand, no copy)."""
    if kind == KIND_STILL:
        return x.unsqueeze(2).expand(-1, -1, frames, -1, -1)
    if kind == KIND_VOLUME:
        return x.permute(0, 1, 4, 2, 3)
    return x


def from_frames(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Inverse of :func:`to_frames`; the repeated frames of a still are averaged back into one image."""
    if kind == KIND_STILL:
        return y.mean(dim=2)
    if kind == KIND_VOLUME:
        return y.permute(0, 1, 3, 4, 2)
    return y


def patchify(frames: torch.Tensor, tubelet: Sequence[int]) -> torch.Tensor:
    """``(B, C, T, H, W) -> (B, N, t*p*p*C)`` in the encoder's token order (MAE's ``patchify``, with time)."""
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


def patchify_input(x: torch.Tensor, kind: str, tubelet: Sequence[int]) -> torch.Tensor:
    """A batch in the package layout -> ``(B, N, t*p*p*C)`` tokens, in the encoder's order."""
    token_grid(x.shape, kind, tubelet)  # validates the shape with a message naming the kind
    return patchify(to_frames(x, kind, tubelet[0]), tubelet)


def unpatchify_input(
    tokens: torch.Tensor, grid: Sequence[int], kind: str, tubelet: Sequence[int], channels: int
) -> torch.Tensor:
    """Tokens -> a batch in the package layout (a still's ``t`` frames averaged into one image)."""
    return from_frames(unpatchify(tokens, grid, tubelet, channels), kind)
