"""The MAE optimisation recipe: AdamW (0.9, 0.95), weight-decay exclusions, linear LR scaling, warm-up + cosine.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (appendix A.1): AdamW with
``betas = (0.9, 0.95)``, weight decay 0.05 on weights only, ``lr = base_lr x effective_batch / 256``,
linear warm-up then a half-cycle cosine to ``min_lr``. The schedule is stepped once per optimiser step
(not per epoch), so gradient accumulation and resume mid-epoch need no special cases.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "no_decay",
    "param_groups",
    "scaled_lr",
    "warmup_steps",
]

_NO_DECAY_NAMES = ("pos_embed", "token", "bias")  # "token": cls_token, mask_token, ...


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm scales (all 1-D parameters), position embeddings and learned tokens get no decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or any(key in leaf for key in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the exclusions of :func:`no_decay` (frozen params left out)."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (skip if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``base_lr x effective_batch / 256``."""
    return base_lr * effective_batch / 256


def build_optimizer(
    model: nn.Module,
    base_lr: float = 1.5e-4,
    effective_batch: int = 256,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW at the scaled LR; ``effective_batch`` = per-GPU batch x GPUs x accumulation steps."""
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=scaled_lr(base_lr, effective_batch), betas=tuple(betas)
    )


class WarmupCosine:
    """LR multiplier at optimiser step ``s``: linear from 0 to 1 over ``warmup_steps``, then cosine to ``min_ratio``.

    Step 0 runs at LR 0, as MAE's ``adjust_learning_rate`` (``lr * epoch / warmup_epochs`` from epoch 0).

    A class, not a lambda, so ``LambdaLR.state_dict`` pickles it and resume restores the same schedule.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps = max(int(warmup_steps), 0)
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int, max_fraction: float = 0.1) -> int:
    """Warm-up length in steps: ``warmup_epochs`` epochs, but at most ``max_fraction`` of the run.

    MAE's 40 of 400 epochs is 10 %: a long run is unchanged, and a short run (``max_epochs 2`` on a laptop) warms
    up over 10 % of its steps instead of never leaving warm-up.
    """
    return max(0, min(round(warmup_epochs * steps_per_epoch), int(max_fraction * total_steps)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :class:`WarmupCosine`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
