"""Optimiser parameter groups for fine-tuning: layer-wise learning-rate decay, or a frozen encoder (probing).

Layer-wise decay follows BEiT (Bao et al., ICLR 2022) and MAE's fine-tuning recipe (He et al., CVPR 2022):
block ``i`` of a depth-``L`` encoder learns at ``lr * decay ** (L + 1 - (i + 1))``, the patch embedding at
``lr * decay ** (L + 1)``, and the head / decoder at ``lr``. Biases, norms and tokens get no weight decay.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["encoder_layer_id", "layer_decay_param_groups"]


def encoder_layer_id(name: str, depth: int) -> int:
    """0 for the embedding, ``i + 1`` for block ``i``, ``depth + 1`` for the final norm and everything else."""
    if not name.startswith("encoder."):
        return depth + 1
    sub = name[len("encoder.") :]
    if sub.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    m = re.match(r"blocks\.(\d+)\.", sub)
    return int(m.group(1)) + 1 if m else depth + 1


def layer_decay_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    freeze_encoder: bool = False,
) -> list[dict]:
    """Param groups for ``torch.optim.AdamW`` on a model holding its encoder at ``model.encoder``.

    ``freeze_encoder`` (linear probing) turns the encoder's gradients off and leaves it out of the optimiser.
    Each group carries ``lr_scale`` too, the factor applied to ``lr``.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    encoder = getattr(model, "encoder", None)
    depth = int(getattr(encoder, "depth", 0))
    if freeze_encoder and encoder is not None:
        encoder.requires_grad_(False)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = encoder_layer_id(name, depth)
        no_decay = param.ndim <= 1 or name.endswith(("cls_token", "mask_token", "query"))
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
    if not groups:
        raise ValueError("no trainable parameters")
    return [groups[k] for k in sorted(groups)]
