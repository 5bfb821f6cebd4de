"""One masked-autoencoder iteration for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` (``iteration_update``).

The training step is MAE's ``train_one_epoch`` body (He et al., CVPR 2022): forward under autocast (bf16 on GPU),
backward, optional gradient clipping (off by default, as MAE), then the optimiser step. Before the optimiser
touches the weights, every rank agrees (one small all-reduce) that the loss and the gradient norm are finite;
otherwise the run stops with :class:`NonFiniteLossError` naming the step and the last good checkpoint.

Each sample's mask noise is drawn from its own seed (the sampler's per-sample seed, ``batch["seed"]``), so a
sample gets the same mask whatever batch, rank or restart it lands in: a resumed run draws the masks of an
uninterrupted one, and a 2-process run the masks of a 1-process run with the same global batch. Batches without
seeds draw from a dedicated generator (seeded per rank, saved in checkpoints), never from the global RNG.
:class:`DistributedMaskedLoss` normalises the loss by the masked-token count of the *global* batch, so DDP's
averaged gradients equal a single process's. A batch without ``confidence`` maps gets them computed on the
device (:func:`~ultramae_monai.confmap.api.batch_confidence_maps`) when the target needs them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.distributed as dist

from ultramae_monai.data.convention import KIND_CINE
from ultramae_monai.engines.distributed import is_distributed, rank
from ultramae_monai.errors import UltraMAEError
from ultramae_monai.networks.layout import from_frames, resolve_kind, to_frames
from ultramae_monai.networks.ultramae import TARGETS_NEEDING_CONFIDENCE

__all__ = [
    "DistributedMaskedLoss",
    "MAEEvalIteration",
    "MAEIteration",
    "NonFiniteLossError",
    "device_confidence",
    "mask_noise",
    "unwrap",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(UltraMAEError, FloatingPointError):
    """The loss or the gradients became NaN/Inf; the step was not applied and no checkpoint was written."""


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(network, "module", network)


def device_confidence(x: torch.Tensor, kind: str, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Confidence maps shaped like ``x`` (grey of every frame), solved on ``x``'s device.

    ``mean`` / ``std`` undo the input normalisation first, so the maps see intensities in ``[0, 1]`` as curation's do.
    """
    frames = to_frames(x, kind, 1)  # (B, C, T, H, W); a still has T = 1
    b, c, t, h, w = frames.shape
    grey = (frames.detach().float().mean(dim=1) * std + mean).reshape(b * t, h, w)
    from ultramae_monai.confmap.api import batch_confidence_maps

    maps = batch_confidence_maps(grey)
    return from_frames(maps.reshape(b, t, 1, h, w).transpose(1, 2).expand(b, c, t, h, w), kind)


def mask_noise(seeds: torch.Tensor, slots: int, device: torch.device) -> torch.Tensor:
    """``(B, slots)`` uniform noise, row ``i`` drawn from a generator seeded with ``seeds[i]``."""
    rows = [torch.rand(slots, generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    return torch.stack(rows).to(device)


class DistributedMaskedLoss:
    """The network's masked loss (``out["loss"]``), re-normalised over the global batch under DDP.

    ``out["loss"]`` is the mean over this rank's reconstructed tokens. DDP averages gradients over ranks, so
    ranks with different token counts (per-sample FOV counts) would weigh tokens unequally; scaling by
    ``world x local count / global count`` (one scalar all-reduce) makes the averaged gradient that of the mean
    over all reconstructed tokens of the global batch, as one process computes it. Without DDP: ``out["loss"]``.
    """

    def __call__(self, out: dict[str, Any]) -> torch.Tensor:
        loss = out["loss"]
        if not is_distributed():
            return loss
        local = out["mask"].detach().float().sum()
        total = local.clone()
        dist.all_reduce(total)
        return loss * local * dist.get_world_size() / total.clamp_min(1.0)


class _MAEForward:
    """What the training and evaluation steps share: batch transfer, autocast, confidence maps, the forward."""

    def __init__(self, amp: str = "auto", intensity_mean: float = 0.0, intensity_std: float = 1.0) -> None:
        if amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be one of auto/bf16/fp16/none, got {amp!r}")
        self.amp = amp
        self.intensity = (float(intensity_mean), float(intensity_std))

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        if self.amp == "auto":
            return torch.bfloat16 if device.type == "cuda" else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[self.amp]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = self.amp_dtype(device)
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def inputs(self, engine: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Image and the network's keyword inputs (FOV mask, confidence maps, per-sample mask noise)."""
        device = engine.state.device
        x = batch["image"].to(device, non_blocking=True)
        extras = {"fov_mask": batch["fov_mask"].to(device, non_blocking=True)}
        if "seed" in batch:
            extras["noise"] = mask_noise(torch.as_tensor(batch["seed"]), unwrap(engine.network).mask_slots(x), device)
        if "confidence" in batch:
            extras["confidence"] = batch["confidence"].to(device, non_blocking=True)
        elif unwrap(engine.network).target in TARGETS_NEEDING_CONFIDENCE:
            extras["confidence"] = device_confidence(x, resolve_kind(x), *self.intensity)
        return x, extras


class MAEIteration(_MAEForward):
    """``iteration_update`` of the pretraining ``SupervisedTrainer``: one optimiser step on one batch.

    Args:
        amp: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bf16"``, ``"fp16"`` (with a GradScaler) or ``"none"``.
        clip_grad: max global gradient norm; None (the default, as MAE) only measures it.
        seed: seeds the mask generator (``seed * 1000 + rank``).
        intensity_mean, intensity_std: the input normalisation, undone for on-device confidence maps.

    Returns per iteration ``{"loss", "lr", "grad_norm", "samples", "kind"}``: the loss averaged over all ranks,
    the LR the step used, the gradient norm before clipping, the samples of the global batch.
    """

    def __init__(
        self,
        amp: str = "auto",
        clip_grad: float | None = None,
        seed: int = 0,
        intensity_mean: float = 0.0,
        intensity_std: float = 1.0,
    ) -> None:
        super().__init__(amp, intensity_mean, intensity_std)
        self.clip_grad = clip_grad or None
        self.seed = int(seed)
        self.mask_generator = torch.Generator().manual_seed(self.seed * 1000 + rank())
        self.scaler: torch.amp.GradScaler | None = None
        self.last_checkpoint: str | None = None  # set by the checkpoint handler, named by the NaN stop

    def _scaler(self, device: torch.device) -> torch.amp.GradScaler:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype(device) == torch.float16)
        return self.scaler

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def __call__(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        device = engine.state.device
        scaler = self._scaler(device)
        network, optimizer = engine.network, engine.optimizer
        network.train()
        x, extras = self.inputs(engine, batch)
        with self.autocast(device):
            out = network(x, **extras, generator=self.mask_generator)
        loss = engine.loss_function(out).float()
        # backward even on a non-finite loss, so DDP ranks stay in step; the check below stops the run
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        params = [p for p in network.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad or float("inf"))
        stats = torch.stack(
            [loss.detach(), (~torch.isfinite(loss.detach())).float(), torch.tensor(float(x.shape[0]), device=device)]
        )
        bad_grad = (~torch.isfinite(norm)).float().to(device) * float(not scaler.is_enabled())  # fp16 skips inf
        stats = torch.cat([stats, bad_grad.reshape(1)])
        if is_distributed():
            dist.all_reduce(stats)
        world = dist.get_world_size() if is_distributed() else 1
        mean_loss, samples = float(stats[0]) / world, int(stats[2])
        lr = optimizer.param_groups[0]["lr"]
        if stats[1] > 0 or stats[3] > 0:
            optimizer.zero_grad(set_to_none=True)
            what = "loss" if stats[1] > 0 else "gradient norm"
            raise NonFiniteLossError(
                f"non-finite {what} at step {engine.state.iteration} (epoch {engine.state.epoch}; loss {mean_loss}, "
                f"grad norm {float(norm)}): the update was not applied; last good checkpoint: "
                f"{self.last_checkpoint or 'none yet'}. Lower the LR, raise warm-up, or check the data"
            )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        kind = KIND_CINE if x.ndim == 5 else "still"
        return {"loss": mean_loss, "lr": lr, "grad_norm": float(norm), "samples": samples, "kind": kind}


class MAEEvalIteration(_MAEForward):
    """``iteration_update`` of the validation ``SupervisedEvaluator``: the loss with fixed masks.

    The mask generator is re-seeded (``seed``) when the evaluator starts, so every validation draws the same masks.
    Returns ``{"loss": (B, 1) tensor}`` (the batch loss once per sample, so ignite's ``Average`` weighs samples).
    """

    def __init__(
        self, amp: str = "auto", seed: int = 1, intensity_mean: float = 0.0, intensity_std: float = 1.0
    ) -> None:
        super().__init__(amp, intensity_mean, intensity_std)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        if engine.state.iteration == 1:  # a new evaluation run
            self.generator.manual_seed(self.seed)
        device = engine.state.device
        network = engine.network
        network.eval()
        x, extras = self.inputs(engine, batch)
        with torch.no_grad(), self.autocast(device):
            out = unwrap(network)(x, **extras, generator=self.generator)
        return {"loss": out["loss"].float().detach().expand(x.shape[0], 1)}
