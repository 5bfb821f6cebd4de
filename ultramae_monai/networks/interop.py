"""Weight interop: MONAI ``MaskedAutoEncoderViT`` and MAE / timm checkpoints in, MONAI ``ViT`` / ``UNETR`` out.

Patch kernels are mapped so that the function the checkpoint computes on a still image is preserved:

* a 2D ``p x p`` kernel becomes a ``t x p x p`` tubelet by repeating it over ``t`` and dividing by ``t``
  (weight inflation, as in I3D, Carreira & Zisserman, CVPR 2017, and OmniMAE, Girdhar et al., CVPR 2023):
  a still repeated to ``t`` frames then gives exactly the 2D convolution, and a clip of identical frames too;
* a MONAI 3D kernel over ``(H, W, D)`` is permuted to the encoder's ``(D, H, W)`` order;
* an RGB kernel loaded into a grey encoder is summed over colours (a grey image is R = G = B).

Input intensity is part of a checkpoint's function: MAE / timm ImageNet weights expect each RGB channel
normalised with :data:`IMAGENET_INTENSITY`, this package's encoders grey inputs in ``[0, 1]`` normalised with the
bundle's ``intensity_mean`` / ``intensity_std``. :func:`load_mae_weights` states the convention in its report,
and given both the source's and the target's (``source_intensity``, ``target_intensity``) folds the change into
the patch embedding (kernel scaled, bias shifted), so features are identical on each side's normalised input.

Position tables that equal the fixed 2D sin-cos (MAE, USF-MAE, MONAI ``sincos``) need nothing; other tables
(learned) are installed as the encoder's spatial table. Every loader returns a :class:`LoadReport`; files are
read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike

import torch

from ultramae_monai.errors import UnreadableFileError
from ultramae_monai.networks.pos_embed import sincos_2d
from ultramae_monai.networks.tubelet_vit import UltraMAEEncoder

__all__ = [
    "IMAGENET_INTENSITY",
    "LoadReport",
    "fold_intensity",
    "load_mae_weights",
    "load_monai_mae_weights",
    "mae_state_dict",
    "monai_vit_state_dict",
    "read_state_dict",
    "to_monai_unetr",
    "to_monai_vit",
]

StateDict = Mapping[str, torch.Tensor]
Intensity = Mapping[str, float | Sequence[float]]

IMAGENET_INTENSITY: dict[str, tuple[float, ...]] = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
"""Per-channel input normalisation of MAE / timm ImageNet checkpoints (inputs in ``[0, 1]`` first)."""


@dataclass
class LoadReport:
    """What a loader did: encoder keys filled, encoder keys left untouched, checkpoint keys not used, notes."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"matched {len(self.matched)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}"]
        if self.missing:
            lines.append("missing: " + ", ".join(self.missing))
        if self.unexpected:
            lines.append("unexpected: " + ", ".join(self.unexpected))
        lines += self.notes
        return "\n".join(lines)


def read_state_dict(source: str | PathLike | StateDict) -> dict[str, torch.Tensor]:
    """A state dict from a mapping or a file (``weights_only=True``), unwrapping ``model`` / ``state_dict``."""
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        try:
            sd = torch.load(source, map_location="cpu", weights_only=True)
        except FileNotFoundError as err:
            raise UnreadableFileError("checkpoint not found", source) from err
        except Exception as err:  # pickle / zip errors from torch.load
            raise UnreadableFileError(f"not a loadable weights-only checkpoint ({err})", source) from err
    for key in ("model", "state_dict", "model_state_dict"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = dict(sd[key])
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UnreadableFileError("checkpoint holds non-tensor entries where a state dict was expected", None)
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in sd.items()}


def _per_channel(values: float | Sequence[float], channels: int, what: str) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 1:
        v = v.expand(channels)
    if v.numel() != channels:
        raise ValueError(f"{what} has {v.numel()} values for a kernel of {channels} input channels")
    return v


def fold_intensity(
    weight: torch.Tensor, bias: torch.Tensor, source: Intensity, target: Intensity
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch kernel and bias that give on ``target``-normalised input what the originals gave on ``source``'s.

    A pixel ``v`` in ``[0, 1]`` reaches channel ``c`` of the source as ``(v - m_c) / s_c``; the target feeds
    ``x = (v - m'_c) / s'_c``, so ``(v - m_c) / s_c = x s'_c / s_c + (m'_c - m_c) / s_c``: the kernel of
    channel ``c`` is scaled by ``s'_c / s_c`` and the bias gains ``sum W_c (m'_c - m_c) / s_c``. Exact.
    """
    c = weight.shape[1]
    m, s = _per_channel(source["mean"], c, "source mean"), _per_channel(source["std"], c, "source std")
    mt, st = _per_channel(target["mean"], c, "target mean"), _per_channel(target["std"], c, "target std")
    w = weight.double()
    shape = (1, c) + (1,) * (w.ndim - 2)
    new_bias = bias.double() + (w * ((mt - m) / s).view(shape)).flatten(1).sum(1)
    return (w * (st / s).view(shape)).to(weight.dtype), new_bias.to(bias.dtype)


def _patch_kernel(weight: torch.Tensor, encoder: UltraMAEEncoder, layout: str, notes: list[str]) -> torch.Tensor:
    """Checkpoint patch kernel -> the encoder's ``(D, C, t, p, p)``; ``layout`` 'monai3d' = spatial (H, W, D)."""
    kt, kh, kw = encoder.tubelet
    if weight.ndim == 4:
        weight = weight.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
        notes.append(f"patch kernel inflated 2D -> {kt}x{kh}x{kw} (repeat over time, divided by {kt})")
    elif layout == "monai3d":
        weight = weight.permute(0, 1, 4, 2, 3)
    c = encoder.in_channels
    if weight.shape[1] != c:
        if c == 1:
            notes.append(f"patch kernel summed over {weight.shape[1]} input channels for a grey encoder")
            weight = weight.sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"checkpoint has {weight.shape[1]} input channels, the encoder {c}")
    want = encoder.patch_embed.proj.weight.shape
    if weight.shape != want:
        raise ValueError(f"patch kernel {tuple(weight.shape)} does not fit the encoder's {tuple(want)}")
    return weight


def _position_table(
    table: torch.Tensor, encoder: UltraMAEEncoder, notes: list[str], grid_hw: Sequence[int] | None
) -> None:
    """Keep the fixed sin-cos if the checkpoint's 2D table equals it, else install the loaded table."""
    n = table.shape[0]
    if grid_hw is None:
        side = math.isqrt(n)
        grid_hw = (side, side)
    h, w = grid_hw
    if h * w != n:
        notes.append(f"position table of {n} tokens does not fit grid {tuple(grid_hw)} (pass grid_hw=): ignored")
        return
    if torch.allclose(table.float(), sincos_2d((h, w), encoder.embed_dim), atol=1e-4):
        notes.append("position table is the fixed 2D sin-cos: nothing to load")
        return
    encoder.pos_embed.set_spatial_table(table, (h, w))
    notes.append(f"learned position table {h}x{w} installed (resized bicubically for other grids)")


def _load(encoder: UltraMAEEncoder, mapped: dict[str, torch.Tensor], report: LoadReport) -> LoadReport:
    own = encoder.state_dict()
    for key, value in mapped.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)}, encoder {tuple(own[key].shape)}")
    usable = {k: v for k, v in mapped.items() if k in own}
    encoder.load_state_dict(usable, strict=False)
    report.matched = sorted(usable)
    report.missing = sorted(k for k in own if k not in usable and not k.startswith("pos_embed."))
    return report


def load_mae_weights(
    encoder: UltraMAEEncoder,
    source: str | PathLike | StateDict,
    grid_hw: Sequence[int] | None = None,
    source_intensity: Intensity | None = None,
    target_intensity: Intensity | None = None,
) -> LoadReport:
    """Load an MAE / timm ViT checkpoint (public ImageNet MAE, USF-MAE) into the encoder.

    Encoder keys (``patch_embed.proj``, ``blocks.N.*``, ``norm``, ``cls_token``) map one to one; ``pos_embed`` is
    checked against the fixed sin-cos; decoder (``decoder_*``, ``mask_token``) and classifier keys are reported
    as unexpected. ``grid_hw`` is the checkpoint's token grid (default: square).

    ``source_intensity`` (``{"mean", "std"}``, per channel or one value; :data:`IMAGENET_INTENSITY` for ImageNet
    MAE) is the input normalisation the checkpoint was trained with; with ``target_intensity`` (this encoder's,
    e.g. the bundle's ``intensity_mean`` / ``intensity_std``) it is folded into the patch embedding
    (:func:`fold_intensity`). The report's notes state the convention either way.
    """
    sd = read_state_dict(source)
    report = LoadReport()
    if source_intensity is not None and target_intensity is not None:
        w, b = fold_intensity(
            sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], source_intensity, target_intensity
        )
        sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = w, b
        report.notes.append(
            f"input normalisation folded into the patch embedding: source mean {source_intensity['mean']} std "
            f"{source_intensity['std']} -> inputs normalised with mean {target_intensity['mean']} std "
            f"{target_intensity['std']}"
        )
    elif source_intensity is not None:
        report.notes.append(
            f"feed inputs normalised as the source was: mean {source_intensity['mean']}, std {source_intensity['std']}"
        )
    else:
        report.notes.append(
            "source input normalisation not stated: ImageNet MAE expects IMAGENET_INTENSITY; pass source_intensity "
            "and target_intensity to fold it into the patch embedding"
        )
    mapped: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "patch_embed.proj.weight":
            mapped[key] = _patch_kernel(value, encoder, "mae", report.notes)
        elif key == "pos_embed":
            table = value.reshape(-1, value.shape[-1])
            n = math.prod(grid_hw) if grid_hw is not None else math.isqrt(table.shape[0]) ** 2
            _position_table(table[table.shape[0] - n :], encoder, report.notes, grid_hw)  # drop the class slot
        elif key == "cls_token" and encoder.cls_token is None:
            report.unexpected.append(key)
        else:
            mapped[key] = value
    return _load(encoder, mapped, report)


_MONAI_BLOCK = {"attn.out_proj": "attn.proj", "mlp.linear1": "mlp.fc1", "mlp.linear2": "mlp.fc2"}


def load_monai_mae_weights(
    encoder: UltraMAEEncoder, source: str | PathLike | StateDict, grid_hw: Sequence[int] | None = None
) -> LoadReport:
    """Load the encoder half of MONAI's ``MaskedAutoEncoderViT`` (2D or 3D, ``conv`` patch embedding).

    MONAI keeps the final LayerNorm as the last entry of ``blocks`` (``blocks.<depth>``), mapped to ``norm``;
    its per-block ``norm_cross_attn`` (unused without cross-attention) and the decoder are reported as unexpected. Build the encoder with MONAI's settings (``qkv_bias=False``,
    ``norm_eps=1e-5``, ``mlp_ratio = mlp_dim / hidden_size``, ``cls_token=True``) for identical outputs.
    ``grid_hw`` is the 2D model's token grid ``img_size / patch_size`` (default: square).
    """
    sd = read_state_dict(source)
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    depth = encoder.depth
    for key, value in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", key)
        if key == "patch_embedding.patch_embeddings.weight":
            layout = "monai3d" if value.ndim == 5 else "monai2d"
            mapped["patch_embed.proj.weight"] = _patch_kernel(value, encoder, layout, report.notes)
        elif key == "patch_embedding.patch_embeddings.bias":
            mapped["patch_embed.proj.bias"] = value
        elif key == "patch_embedding.position_embeddings":
            if sd["patch_embedding.patch_embeddings.weight"].ndim == 4:
                _position_table(value[0], encoder, report.notes, grid_hw)
            else:
                report.notes.append("3D position table not loaded: the separable fixed sin-cos is used")
        elif key == "cls_token" and encoder.cls_token is not None:
            mapped[key] = value
        elif m and int(m.group(1)) == depth:  # MONAI's trailing LayerNorm inside nn.Sequential
            mapped[f"norm.{m.group(2)}"] = value
        elif m and int(m.group(1)) < depth and not m.group(2).startswith("norm_cross_attn"):
            sub = m.group(2)
            for old, new in _MONAI_BLOCK.items():
                sub = sub.replace(old, new)
            mapped[f"blocks.{m.group(1)}.{sub}"] = value
        else:
            report.unexpected.append(key)
    return _load(encoder, mapped, report)


def mae_state_dict(encoder: UltraMAEEncoder, grid_hw: Sequence[int] = (14, 14), as_2d: bool = False) -> dict:
    """The encoder in the MAE / timm key layout, with a ``pos_embed`` for ``grid_hw`` (class slot first).

    ``as_2d`` sums the tubelet kernel over time, the 2D kernel a still-image ViT needs (the inverse of
    inflation up to the ``1/t`` scale: a still gives the same tokens in both).
    """
    sd = {k: v.detach().clone() for k, v in encoder.state_dict().items() if not k.startswith("pos_embed.")}
    if as_2d:
        sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].sum(dim=2)
    table = encoder.pos_embed((1, *grid_hw))[0]
    sd["pos_embed"] = torch.cat([torch.zeros(1, encoder.embed_dim), table], dim=0)[None]
    return sd


def _monai_vit(encoder: UltraMAEEncoder, img_size: Sequence[int], spatial_dims: int):
    from monai.networks.nets import ViT

    kt, kh, kw = encoder.tubelet
    return ViT(
        in_channels=encoder.in_channels,
        img_size=tuple(img_size),
        patch_size=(kh, kw) if spatial_dims == 2 else (kh, kw, kt),
        hidden_size=encoder.embed_dim,
        mlp_dim=encoder.blocks[0].mlp.fc1.out_features,
        num_layers=encoder.depth,
        num_heads=encoder.num_heads,
        proj_type="conv",
        pos_embed_type="learnable",
        classification=encoder.cls_token is not None,
        spatial_dims=spatial_dims,
        qkv_bias=encoder.qkv_bias,
    )


def _vit_mapping(encoder: UltraMAEEncoder, img_size: Sequence[int], spatial_dims: int) -> dict[str, torch.Tensor]:
    """MONAI ViT keys -> tensors. 2D: the kernel summed over time (stills). 3D: ``(H, W, D)`` order."""
    kt, kh, kw = encoder.tubelet
    w = encoder.patch_embed.proj.weight.detach()
    if spatial_dims == 2:
        h, wd = img_size
        kernel, grid, order = w.sum(dim=2), (1, h // kh, wd // kw), None
    else:
        h, wd, d = img_size
        kernel, grid = w.permute(0, 1, 3, 4, 2), (d // kt, h // kh, wd // kw)
        order = (1, 2, 0)  # our tokens are (d, h, w); MONAI's conv flattens (h, w, d)
    table = encoder.pos_embed(grid)[0]
    if order is not None:
        table = table.reshape(*grid, -1).permute(*order, 3).reshape(-1, table.shape[-1])
    out = {
        "patch_embedding.patch_embeddings.weight": kernel,
        "patch_embedding.patch_embeddings.bias": encoder.patch_embed.proj.bias.detach(),
        "patch_embedding.position_embeddings": table[None],
        "norm.weight": encoder.norm.weight.detach(),
        "norm.bias": encoder.norm.bias.detach(),
    }
    if encoder.cls_token is not None:
        out["cls_token"] = encoder.cls_token.detach()
    for key, value in encoder.blocks.state_dict().items():
        for new, old in _MONAI_BLOCK.items():
            key = key.replace(old, new)
        out[f"blocks.{key}"] = value
    return out


def monai_vit_state_dict(encoder: UltraMAEEncoder, img_size: Sequence[int], spatial_dims: int = 2) -> dict:
    """A complete, strict-loadable state dict for MONAI ``ViT`` (``pos_embed_type='learnable'``, ``conv``).

    2D: for stills ``(B, C, H, W)``; 3D: for volumes ``(B, C, H, W, D)`` with patch ``(p, p, t)``.
    Keys MONAI has but the encoder does not (``norm_cross_attn``, the classification head) keep the fresh
    ViT's values. MONAI's LayerNorm eps is 1e-5: outputs match exactly for an encoder built with that eps.
    """
    vit = _monai_vit(encoder, img_size, spatial_dims)
    sd = vit.state_dict()
    for key, value in _vit_mapping(encoder, img_size, spatial_dims).items():
        if sd[key].shape != value.shape:
            raise ValueError(f"{key}: export shape {tuple(value.shape)}, MONAI ViT {tuple(sd[key].shape)}")
        sd[key] = value.clone()
    return sd


def to_monai_vit(encoder: UltraMAEEncoder, img_size: Sequence[int], spatial_dims: int = 2):
    """MONAI ``ViT`` carrying the encoder's weights (loaded with ``strict=True``)."""
    vit = _monai_vit(encoder, img_size, spatial_dims)
    vit.load_state_dict(monai_vit_state_dict(encoder, img_size, spatial_dims), strict=True)
    return vit


def to_monai_unetr(
    encoder: UltraMAEEncoder,
    out_channels: int,
    img_size: Sequence[int],
    spatial_dims: int = 2,
    feature_size: int = 16,
    norm_name: str | tuple = "instance",
):
    """MONAI ``UNETR`` whose ViT carries the encoder's weights (the decoder stays freshly initialised).

    UNETR fixes 12 layers and 16-pixel patches: the encoder needs ``depth=12`` and tubelet ``(t, 16, 16)`` for
    2D, ``(16, 16, 16)`` for 3D.
    """
    from monai.networks.nets import UNETR

    kt, kh, kw = encoder.tubelet
    if encoder.depth != 12 or (kh, kw) != (16, 16) or (spatial_dims == 3 and kt != 16):
        raise ValueError(
            f"UNETR needs depth 12 and 16-voxel patches; encoder has depth {encoder.depth}, tubelet {encoder.tubelet}"
        )
    if encoder.cls_token is not None:
        raise ValueError("UNETR's ViT has no class token; build the encoder with cls_token=False")
    net = UNETR(
        in_channels=encoder.in_channels,
        out_channels=out_channels,
        img_size=tuple(img_size),
        feature_size=feature_size,
        hidden_size=encoder.embed_dim,
        mlp_dim=encoder.blocks[0].mlp.fc1.out_features,
        num_heads=encoder.num_heads,
        proj_type="conv",
        norm_name=norm_name,
        spatial_dims=spatial_dims,
        qkv_bias=encoder.qkv_bias,
    )
    sd = net.state_dict()
    for key, value in monai_vit_state_dict(encoder, img_size, spatial_dims).items():
        sd[f"vit.{key}"] = value
    net.load_state_dict(sd, strict=True)
    return net
