"""Encoder weights from any checkpoint this project writes or reads, for fine-tuning (``--pretrained``).

Sources, detected by content (never by file name):

* the pretraining bundle's checkpoint: ``{"network": UltraMAE state dict, "meta": {"format": "ultramae-pretrain",
  ...}}``, and the older trainer checkpoints holding the UltraMAE state dict under ``"model"``;
* the exported ``encoder.pt``: ``{"encoder": encoder state dict, "meta": ...}``;
* any state dict whose encoder keys carry an ``encoder.`` prefix (a fine-tuned classifier or segmenter), with
  ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes stripped;
* a bare :class:`UltraMAEEncoder` state dict;
* MONAI ``MaskedAutoEncoderViT`` weights and MAE / USF-MAE (timm layout) checkpoints, mapped by
  :mod:`ultramae_monai.networks.interop` (patch-kernel inflation, position tables).

Every file is read with ``torch.load(..., weights_only=True)``; the only non-tensor types allowed are NumPy
arrays, which older trainer checkpoints hold in their RNG state. A study comparing scratch against pretrained
must never compare scratch against scratch, so :func:`load_pretrained_encoder` raises, listing the missing keys,
unless every encoder weight was filled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultramae_monai.errors import IncompatibleCheckpointError, UnreadableFileError
from ultramae_monai.networks.interop import LoadReport, load_mae_weights, load_monai_mae_weights
from ultramae_monai.networks.tubelet_vit import UltraMAEEncoder

__all__ = [
    "FORMAT_ENCODER",
    "FORMAT_MAE",
    "FORMAT_MONAI_MAE",
    "FORMAT_ULTRAMAE",
    "SCRATCH",
    "encoder_meta",
    "is_scratch",
    "load_encoder_state",
    "load_pretrained_encoder",
    "read_checkpoint",
]

FORMAT_ULTRAMAE = "ultramae"  # UltraMAE encoder layout (from a pretraining checkpoint, encoder.pt, a fine-tune)
FORMAT_ENCODER = "ultramae-encoder"  # the pretraining bundle's encoder.pt
FORMAT_MONAI_MAE = "monai-mae"  # MONAI MaskedAutoEncoderViT
FORMAT_MAE = "mae"  # facebookresearch/mae, USF-MAE, timm ViT
SCRATCH = ("", "none", "scratch", "random")

_WRAPPERS = ("network", "model", "state_dict", "model_state_dict", "net")
_PREFIX = re.compile(r"^(module\.|_orig_mod\.)+")


def is_scratch(source: Any) -> bool:
    """True for ``None`` / ``"none"`` / ``"scratch"``: no pretrained weights, a random encoder."""
    return source is None or (isinstance(source, str) and source.strip().lower() in SCRATCH)


def _numpy_globals() -> list[Any]:
    """NumPy array types (plain data) that trainer RNG states pickle; nothing executable."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64))]


def read_checkpoint(path: str | PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with NumPy arrays allowed; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableFileError("checkpoint not found", p)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors and non-allowed globals from torch.load
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableFileError(f"not a loadable weights-only checkpoint ({first})", p) from err
    if not isinstance(obj, Mapping):
        raise UnreadableFileError(f"checkpoint holds a {type(obj).__name__}, not a dict", p)
    return dict(obj)


def _tensors(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {_PREFIX.sub("", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _unwrap(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if key in obj and isinstance(obj[key], Mapping):
            return _unwrap(obj[key])
    return _tensors(obj)


def _infer_architecture(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the weights themselves say about the encoder (heads are not visible in shapes)."""
    arch: dict[str, Any] = {}
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 5:
        arch.update(embed_dim=int(kernel.shape[0]), in_channels=int(kernel.shape[1]), tubelet=list(kernel.shape[2:]))
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        arch["depth"] = max(blocks) + 1
    arch["cls_token"] = "cls_token" in sd
    return arch


def _foreign_architecture(sd: Mapping[str, torch.Tensor], fmt: str) -> dict[str, Any]:
    """Encoder kwargs that reproduce an MAE-layout or MONAI MAE encoder (heads are not visible in shapes).

    MONAI's ViT blocks have no qkv bias and LayerNorm eps 1e-5, MAE's have both a bias and eps 1e-6; both put a
    class token first. The tubelet keeps the checkpoint's patch, 2 frames deep for clips.
    """
    monai = fmt == FORMAT_MONAI_MAE
    kernel = sd.get("patch_embedding.patch_embeddings.weight" if monai else "patch_embed.proj.weight")
    if kernel is None:
        return {}
    fc1 = "blocks.0.mlp.linear1.weight" if monai else "blocks.0.mlp.fc1.weight"
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 - (1 if monai and f"blocks.{max(blocks)}.weight" in sd else 0) if blocks else None
    p = int(kernel.shape[-1])
    arch: dict[str, Any] = {
        "embed_dim": int(kernel.shape[0]),
        "tubelet": [p if monai and kernel.ndim == 5 else 2, p, p],
        "cls_token": "cls_token" in sd,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "norm_eps": 1e-5 if monai else 1e-6,
    }
    if depth:
        arch["depth"] = depth
    if fc1 in sd:
        arch["mlp_ratio"] = sd[fc1].shape[0] / kernel.shape[0]
    return arch


def load_encoder_state(
    source: str | PathLike | Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The encoder's weights and the checkpoint's meta from any supported checkpoint (see the module docstring).

    Returns ``(state, meta)``. For this project's checkpoints ``state`` has :class:`UltraMAEEncoder` keys (no
    prefix, decoder dropped). MAE-layout and MONAI ``MaskedAutoEncoderViT`` weights are returned in their own
    key layout (their patch kernels only map onto a given encoder's tubelet), with ``meta["format"]`` set to
    ``"mae"`` or ``"monai-mae"``; :func:`load_pretrained_encoder` maps them. ``meta["architecture"]`` holds the
    encoder kwargs when the checkpoint records them, else what the weight shapes imply.

    Raises:
        UnreadableFileError: missing file, not a weights-only checkpoint, or no recognisable encoder weights.
    """
    path = None if isinstance(source, Mapping) else Path(source)
    obj = dict(source) if isinstance(source, Mapping) else read_checkpoint(source)
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
    if isinstance(obj.get("encoder"), Mapping):  # encoder.pt
        state, fmt = _tensors(obj["encoder"]), FORMAT_ULTRAMAE
    else:
        sd = _unwrap(obj)
        prefixed = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
        if prefixed:
            state, fmt = prefixed, FORMAT_ULTRAMAE
        elif "patch_embedding.patch_embeddings.weight" in sd:
            state, fmt = sd, FORMAT_MONAI_MAE
        elif "patch_embed.proj.weight" in sd and sd["patch_embed.proj.weight"].ndim == 5 and "pos_embed" not in sd:
            state, fmt = sd, FORMAT_ULTRAMAE
        elif "patch_embed.proj.weight" in sd:
            state, fmt = sd, FORMAT_MAE
        else:
            some = ", ".join(list(sd)[:5]) or "no tensors"
            raise UnreadableFileError(f"no encoder weights recognised in the checkpoint (keys: {some} ...)", path)
    meta.setdefault("source_format", meta.get("format", fmt))
    meta["format"] = fmt
    if fmt == FORMAT_ULTRAMAE:
        meta["architecture"] = {**_infer_architecture(state), **dict(meta.get("architecture") or {})}
    else:
        meta["architecture"] = _foreign_architecture(state, fmt)
    return state, meta


def encoder_meta(source: str | PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's meta (``{}`` for scratch): configs read ``intensity`` and ``architecture`` from it."""
    if is_scratch(source):
        return {}
    return load_encoder_state(source)[1]


def _check_architecture(encoder: UltraMAEEncoder, arch: Mapping[str, Any], path: Path | None) -> None:
    """Fail on what the weight shapes cannot reveal (heads) or would reveal less clearly (tubelet, depth)."""
    own = {
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        "in_channels": encoder.in_channels,
        "tubelet": list(encoder.tubelet),
        "cls_token": encoder.cls_token is not None,
    }
    diffs = []
    for key, mine in own.items():
        if key in arch and arch[key] is not None:
            theirs = list(arch[key]) if isinstance(arch[key], (list, tuple)) else arch[key]
            if theirs != mine:
                diffs.append(f"{key} {theirs} (encoder: {mine})")
    if diffs:
        preset = arch.get("preset")
        hint = f"; build the encoder with preset {preset!r} and the same tubelet" if preset else ""
        raise IncompatibleCheckpointError("checkpoint of another architecture: " + ", ".join(diffs) + hint, path)


def load_pretrained_encoder(
    encoder: UltraMAEEncoder,
    source: str | PathLike | Mapping[str, Any] | None,
    grid_hw: tuple[int, int] | None = None,
) -> LoadReport:
    """Fill ``encoder`` from ``source`` (a path, a loaded checkpoint dict, or ``"none"`` for scratch).

    Returns the :class:`LoadReport` (matched, missing, unexpected keys, notes). ``grid_hw`` is the token grid of
    a foreign 2D checkpoint's position table (MAE / MONAI; default square).

    Raises:
        IncompatibleCheckpointError: a checkpoint of another architecture (shape, depth, heads or tubelet
            differ) or one that leaves any encoder weight unfilled; the message lists the missing keys.
        UnreadableFileError: see :func:`load_encoder_state`.
    """
    if is_scratch(source):
        return LoadReport(notes=["no pretrained weights: encoder randomly initialised (scratch)"])
    path = None if isinstance(source, Mapping) else Path(source)
    state, meta = load_encoder_state(source)
    fmt = meta["format"]
    try:
        if fmt == FORMAT_MAE:
            report = load_mae_weights(encoder, state, grid_hw)
        elif fmt == FORMAT_MONAI_MAE:
            report = load_monai_mae_weights(encoder, state, grid_hw)
        else:
            _check_architecture(encoder, meta.get("architecture", {}), path)
            report = _load_native(encoder, state)
    except ValueError as err:
        if isinstance(err, IncompatibleCheckpointError):
            raise
        raise IncompatibleCheckpointError(f"checkpoint of another architecture: {err}", path) from err
    if report.missing or not report.matched:
        shown = ", ".join(report.missing[:12]) + (" ..." if len(report.missing) > 12 else "")
        raise IncompatibleCheckpointError(
            f"{len(report.missing)} of {len(report.missing) + len(report.matched)} encoder weights missing "
            f"from the {fmt} checkpoint: {shown}",
            path,
        )
    report.notes.insert(0, f"{fmt} checkpoint{'' if path is None else ' ' + str(path)}")
    return report


def _load_native(encoder: UltraMAEEncoder, state: Mapping[str, torch.Tensor]) -> LoadReport:
    own = encoder.state_dict()
    table_key = "pos_embed.spatial_table"  # a loaded position table: the buffer is allocated on load
    report = LoadReport()
    for key, value in state.items():
        if key not in own and key != table_key:
            report.unexpected.append(key)
        elif key in own and own[key].shape != value.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)}, encoder {tuple(own[key].shape)}")
    usable = {k: v for k, v in state.items() if k in own or k == table_key}
    encoder.load_state_dict(usable, strict=False)
    report.matched = sorted(usable)
    report.missing = sorted(k for k in own if k not in state)
    return report
