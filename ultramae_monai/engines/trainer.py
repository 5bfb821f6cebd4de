"""The pretraining loop: a plain PyTorch loop, chosen over ignite engines so resume is bit-exact.

Why a plain loop (see ``bundles/ultramae_pretrain/docs/README.md``): exact resume needs control of exactly
which batch comes next, which random numbers each step draws and where the checkpoint sits relative to the
gradient-accumulation window; ignite's ``Engine`` restarts an epoch from its start (``epoch_length``
bookkeeping) and draws from the global RNG in its data-iteration hooks, so the same guarantees would take
more code than the loop itself. The loop is ~one function; every piece it uses (sampler, optimiser,
checkpoints, RNG capture, DDP helpers, previews) is its own module.

Per optimiser step: ``grad_accum`` micro-batches (DDP gradient sync only on the last), bf16 autocast on
GPU, gradient clipping, a finite-loss/finite-gradient check agreed by all ranks *before* the optimiser
touches the weights, an LR-schedule step, then logging (progress line, ``metrics.jsonl``, TensorBoard,
optional MLflow) and checkpoints on rank 0.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ultramae_monai.data.batch_sampler import KindBatchSampler
from ultramae_monai.data.convention import INTENSITY_MEAN, INTENSITY_STD, KIND_CINE, KIND_STILL
from ultramae_monai.data.manifest_dataset import ManifestDataset
from ultramae_monai.engines.checkpoint import CheckpointManager, pretrain_meta
from ultramae_monai.engines.distributed import all_gather_objects, is_distributed, is_main_process, rank, world_size
from ultramae_monai.engines.optim import build_scheduler
from ultramae_monai.engines.preview import reconstruction_grid, save_grid_png
from ultramae_monai.engines.rng import capture_rng_state, restore_rng_state, seed_everything
from ultramae_monai.errors import UltraMAEError

__all__ = ["NonFiniteLossError", "PretrainTrainer"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(UltraMAEError, FloatingPointError):
    """The loss or the gradients became NaN/Inf; the step was not applied and no checkpoint was written."""


FAULT_KILL_ENV = "ULTRAMAE_FAULT_KILL_AT_STEP"


def _fault_kill(step: int) -> None:
    """Fault injection for resume tests: SIGKILL this process right after step ``$ULTRAMAE_FAULT_KILL_AT_STEP``.

    The step is logged and flushed first, so a test knows exactly where the run died without polling a clock.
    """
    at = os.environ.get(FAULT_KILL_ENV)
    if at and int(at) == step:
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class PretrainTrainer:
    """Masked-autoencoder pretraining on a :class:`ManifestDataset` with a :class:`KindBatchSampler`.

    Args:
        network: the MAE (``out = network(x, confidence=, fov_mask=, generator=)`` with ``out["loss"]``;
            ``network.reconstruct(x, out)`` for previews). Wrapped in DDP here when torchrun launched us.
        dataset, sampler: training data; the sampler's ``num_replicas``/``rank`` must match the DDP world.
        optimizer: e.g. :func:`~ultramae_monai.engines.optim.build_optimizer` at the batch-scaled LR.
        output_dir: checkpoints (``checkpoints/``), ``metrics.jsonl``, TensorBoard (``tb/``), previews.
        max_epochs, max_steps: stop after this many epochs, or optimiser steps when given (whichever first).
        grad_accum: micro-batches per optimiser step (effective batch = batch x world size x grad_accum).
        warmup_epochs, min_lr_ratio: the warm-up length and the cosine floor as a fraction of the peak LR.
        clip_grad: max global gradient norm (None/0: no clipping; the norm is still checked for NaN/Inf).
        amp: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bf16"``, ``"fp16"`` (with a GradScaler) or ``"none"``.
        device: where to train (default: CUDA ``LOCAL_RANK`` when available, else CPU).
        num_workers, prefetch_factor, pin_memory: DataLoader worker processes (persistent across epochs).
        seed: seeds the model init (before the trainer is built, by the config), data order and masking.
        checkpoint_every: also checkpoint every N optimiser steps (0: only at epoch ends and the end).
        keep_last: step checkpoints kept (plus ``best.pt``).
        resume: continue from the newest checkpoint in ``output_dir/checkpoints`` when there is one.
        log_every: progress line / TensorBoard scalars every N steps.
        preview_every: reconstruction grid every N steps (0: only at the end); ``preview_samples`` rows.
        val_dataset: optional validation split; its mean loss (fixed masks) picks ``best.pt``, else the
            epoch's mean training loss does.
        tensorboard: write TensorBoard event files; mlflow_tracking_uri: log to MLflow if it is installed.
        find_unused_parameters: DDP option; needed when images and clips take different embedding paths.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset: ManifestDataset,
        sampler: KindBatchSampler,
        optimizer: torch.optim.Optimizer,
        output_dir: str | os.PathLike,
        max_epochs: int = 1,
        max_steps: int | None = None,
        grad_accum: int = 1,
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        clip_grad: float | None = None,
        amp: str = "auto",
        device: str | torch.device | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 4,
        pin_memory: bool | None = None,
        seed: int = 0,
        checkpoint_every: int = 0,
        keep_last: int = 3,
        resume: bool = True,
        log_every: int = 10,
        preview_every: int = 0,
        preview_samples: int = 4,
        val_dataset: ManifestDataset | None = None,
        tensorboard: bool = True,
        mlflow_tracking_uri: str | None = None,
        find_unused_parameters: bool = True,
        intensity_mean: float = INTENSITY_MEAN,
        intensity_std: float = INTENSITY_STD,
    ) -> None:
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        if (sampler.num_replicas, sampler.rank) != (world_size(), rank()):
            raise ValueError(
                f"sampler is set for rank {sampler.rank} of {sampler.num_replicas} but this process is "
                f"rank {rank()} of {world_size()}: give the sampler num_replicas/rank from the DDP world"
            )
        self.device = torch.device(device) if device is not None else self._default_device()
        self.module = network.to(self.device)
        self.model: nn.Module = self.module
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=find_unused_parameters
            )
        self.dataset, self.sampler, self.optimizer = dataset, sampler, optimizer
        self.output_dir = Path(output_dir)
        self.max_epochs, self.max_steps, self.grad_accum = int(max_epochs), max_steps, int(grad_accum)
        self.clip_grad = clip_grad or None
        self.amp_dtype = self._amp_dtype(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.seed = int(seed)
        self.checkpoint_every, self.log_every = int(checkpoint_every), max(int(log_every), 1)
        self.preview_every, self.preview_samples = int(preview_every), int(preview_samples)
        self.resume, self.val_dataset = resume, val_dataset
        self.tensorboard, self.mlflow_tracking_uri = tensorboard, mlflow_tracking_uri
        self.intensity = (float(intensity_mean), float(intensity_std))

        self.steps_per_epoch = len(sampler) // self.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {len(sampler)} batches, fewer than grad_accum={grad_accum}: use a smaller batch "
                "or more data"
            )
        self.total_steps = self.steps_per_epoch * self.max_epochs
        if max_steps is not None:
            self.total_steps = min(self.total_steps, int(max_steps))
        # the cosine ends where the run ends (max_steps included), so a short run still anneals
        self.scheduler = build_scheduler(
            optimizer, round(warmup_epochs * self.steps_per_epoch), self.total_steps, min_lr_ratio
        )
        # masking draws from its own generator (checkpointed), never from the global RNG that DataLoader
        # iterator creation also consumes
        self.mask_generator = torch.Generator().manual_seed(self.seed * 1000 + rank())
        self.loader_generator = torch.Generator().manual_seed(self.seed)
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            pin_memory=pin,
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            generator=self.loader_generator,
        )
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", keep_last=keep_last)
        self.step = 0
        self.epoch = 0
        self.consumed = 0  # micro-batches of the current epoch already trained on
        self._writer: Any = None
        self._mlflow: Any = None

    @staticmethod
    def _default_device() -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
        if amp not in table:
            raise ValueError(f"amp must be one of auto/bf16/fp16/none, got {amp!r}")
        return table[amp]

    @property
    def effective_batch(self) -> int:
        """Still-image samples per optimiser step over all ranks (what the LR is scaled by)."""
        return self.sampler.batch_sizes[KIND_STILL] * self.sampler.num_replicas * self.grad_accum

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs; RNG states of every rank (a collective call under DDP)."""
        rng_states = all_gather_objects(capture_rng_state({"mask": self.mask_generator}))
        return {
            "network": self.module.state_dict(),
            "meta": pretrain_meta(self.module, *self.intensity),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "sampler": {**self.sampler.state_dict(), "epoch": self.epoch, "position": self.consumed},
            "rng": rng_states,
            "world_size": world_size(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.sampler.load_state_dict(state["sampler"])
        self.consumed = self.sampler.position
        if state.get("world_size", 1) == world_size():
            restore_rng_state(state["rng"][rank()], {"mask": self.mask_generator})
        else:  # a different world: data order is exact, masks cannot be; reseed them per rank and step
            logger.warning(
                "checkpoint written by %s processes, resuming on %s: masks reseeded",
                state.get("world_size"),
                world_size(),
            )
            self.mask_generator.manual_seed(self.seed * 1000 + rank() + 7919 * self.step)

    def _save(self, metric: float | None = None) -> None:
        state = self.state_dict()  # collective: every rank takes part
        if is_main_process():
            path = self.checkpoints.save(state, self.step, metric)
            logger.info("checkpoint %s", path)
        if is_distributed():
            dist.barrier()

    # ---------------------------------------------------------------- logging
    def _open_loggers(self) -> None:
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tb"), purge_step=self.step or None)
        if self.mlflow_tracking_uri and importlib.util.find_spec("mlflow") is not None:
            import mlflow

            mlflow.set_tracking_uri(self.mlflow_tracking_uri)
            mlflow.start_run()
            self._mlflow = mlflow
        elif self.mlflow_tracking_uri:
            logger.warning("mlflow_tracking_uri is set but mlflow is not installed: MLflow logging is off")

    def _log_scalars(self, scalars: dict[str, float]) -> None:
        if not is_main_process():
            return
        with (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "epoch": self.epoch, **scalars}) + "\n")
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, self.step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=self.step)

    def _preview(self) -> None:
        """Reconstructions of fixed samples (no augmentation, fixed masks) of each kind present."""
        if not is_main_process() or self.preview_samples < 1:
            return
        self.module.eval()
        for kind in (KIND_STILL, KIND_CINE):
            idx = [i for i, k in enumerate(self.dataset.kinds) if k == kind][: self.preview_samples]
            if not idx:
                continue
            batch = torch.utils.data.default_collate([self.dataset[i] for i in idx])
            x = batch["image"].to(self.device)
            with torch.no_grad(), self._autocast():
                out = self.module(x, **self._extras(batch), generator=torch.Generator().manual_seed(self.seed))
                images = {"input": x, **self.module.reconstruct(x, out)}  # "visible" makes the MAE paste
            grid = reconstruction_grid(images, self.preview_samples)
            if self._writer is not None:
                self._writer.add_image(f"reconstruction/{kind}", grid, self.step)
            save_grid_png(grid, self.output_dir / "previews" / f"{kind}_step{self.step:08d}.png")
        self.module.train()

    # ---------------------------------------------------------------- steps
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _extras(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {"fov_mask": batch["fov_mask"].to(self.device, non_blocking=True)}
        if "confidence" in batch:
            out["confidence"] = batch["confidence"].to(self.device, non_blocking=True)
        return out

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> tuple[torch.Tensor, int]:
        x = batch["image"].to(self.device, non_blocking=True)
        no_sync = self.model.no_sync if isinstance(self.model, DistributedDataParallel) and not sync else None
        with no_sync() if no_sync else contextlib.nullcontext():
            with self._autocast():
                out = self.model(x, **self._extras(batch), generator=self.mask_generator)
            loss = out["loss"].float()
            # backward even on a non-finite loss, so DDP ranks stay in step; the check below stops the run
            self.scaler.scale(loss / self.grad_accum).backward()
        return loss.detach(), x.shape[0]

    def _apply_step(self, losses: list[torch.Tensor], samples: int) -> tuple[float, float]:
        """Clip, check for NaN/Inf on all ranks, then step; returns (mean loss, grad norm)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad or float("inf"))
        loss_sum = torch.stack(losses).sum()
        stats = torch.stack(
            [
                loss_sum,
                torch.tensor(float(len(losses))),
                (~torch.isfinite(loss_sum)).float(),
                torch.tensor(float(samples)),
            ]
        ).to(self.device)
        if is_distributed():
            dist.all_reduce(stats)
        mean_loss = float(stats[0] / stats[1])
        bad_grad = not torch.isfinite(norm) and not self.scaler.is_enabled()  # fp16 skips inf steps itself
        if stats[2] > 0 or bad_grad:
            self.optimizer.zero_grad(set_to_none=True)
            last = self.checkpoints.latest()
            raise NonFiniteLossError(
                f"non-finite {'loss' if stats[2] > 0 else 'gradient norm'} at step {self.step + 1} "
                f"(epoch {self.epoch}; loss {mean_loss}, grad norm {float(norm)}): the update was not applied; "
                f"last good checkpoint: {last if last else 'none yet'}. Lower the LR, raise warm-up, or check the data",
                self.output_dir,
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._samples_window += int(stats[3])
        return mean_loss, float(norm)

    def _batches(self) -> Iterator[dict[str, Any]]:
        """The current epoch's micro-batches from ``consumed`` on, cut to whole accumulation windows."""
        usable = self.steps_per_epoch * self.grad_accum
        self.sampler.load_state_dict({"seed": self.sampler.seed, "epoch": self.epoch, "position": self.consumed})
        for batch in self.loader:
            if self.consumed >= usable:
                break
            self.consumed += 1
            yield batch

    def _evaluate(self) -> float | None:
        """Mean loss over the validation set with fixed masks (None when there is no validation set)."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return None
        sampler = KindBatchSampler(
            self.val_dataset.kinds, self.sampler.batch_sizes[KIND_STILL], self.sampler.batch_sizes[KIND_CINE],
            seed=self.seed, shuffle=False, drop_last=False, num_replicas=world_size(), rank=rank(),
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            self.val_dataset, batch_sampler=[[i for i, _ in b] for b in sampler], num_workers=0
        )
        gen = torch.Generator().manual_seed(self.seed + 1)
        total = torch.zeros(2, device=self.device)
        self.module.eval()
        with torch.no_grad():
            for batch in loader:
                x = batch["image"].to(self.device)
                with self._autocast():
                    out = self.module(x, **self._extras(batch), generator=gen)
                total += torch.stack(
                    [out["loss"].float() * x.shape[0], torch.tensor(float(x.shape[0]), device=self.device)]
                )
        self.module.train()
        if is_distributed():
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else None

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        """Train until ``max_epochs``/``max_steps``; returns the final step, epoch and last losses."""
        if self.resume and self.checkpoints.latest() is not None:
            self.load_state_dict(self.checkpoints.load(map_location="cpu"))
        else:
            seed_everything(self.seed + rank())
        if self.consumed >= self.steps_per_epoch * self.grad_accum:  # checkpoint at an epoch's very end
            self.epoch, self.consumed = self.epoch + 1, 0
        self._open_loggers()
        if is_main_process():
            logger.info(
                "pretraining: %d samples, %d steps/epoch, %d epochs, effective batch %d (%d ranks x %d x accum %d), "
                "peak lr %.3g, amp %s, device %s",
                len(self.dataset), self.steps_per_epoch, self.max_epochs, self.effective_batch, world_size(),
                self.sampler.batch_sizes[KIND_STILL], self.grad_accum, max(self.scheduler.base_lrs), self.amp_dtype, self.device,
            )  # fmt: skip
        self.model.train()
        last_loss = float("nan")
        t_start, self._samples_window = time.perf_counter(), 0
        t_window, step_window = t_start, self.step
        while self.epoch < self.max_epochs and self.step < self.total_steps:
            epoch_losses: list[float] = []
            losses: list[torch.Tensor] = []
            samples = 0
            for batch in self._batches():
                sync = len(losses) + 1 == self.grad_accum
                loss, n = self._micro_step(batch, sync)
                losses.append(loss)
                samples += n
                if not sync:
                    continue
                lr = self.optimizer.param_groups[0]["lr"]
                last_loss, grad_norm = self._apply_step(losses, samples)
                epoch_losses.append(last_loss)
                losses, samples = [], 0
                scalars = {"train/loss": last_loss, "train/lr": lr, "train/grad_norm": grad_norm}
                if self.step % self.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    rate = self._samples_window / max(now - t_window, 1e-9)
                    eta = (now - t_window) / max(self.step - step_window, 1) * (self.total_steps - self.step)
                    scalars["train/samples_per_s"] = rate
                    if is_main_process():
                        logger.info(
                            "epoch %d/%d step %d/%d loss %.4f lr %.3g %.1f samples/s ETA %s",
                            self.epoch + 1, self.max_epochs, self.step, self.total_steps, last_loss, lr, rate,
                            _format_eta(eta),
                        )  # fmt: skip
                    t_window, step_window, self._samples_window = now, self.step, 0
                self._log_scalars(scalars)
                _fault_kill(self.step)
                if self.preview_every and self.step % self.preview_every == 0:
                    self._preview()
                # the end of an epoch and of the run are saved below anyway
                last = self.consumed >= self.steps_per_epoch * self.grad_accum or self.step >= self.total_steps
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and not last:
                    self._save()
                if self.step >= self.total_steps:
                    break
            if self.consumed >= self.steps_per_epoch * self.grad_accum:
                val = self._evaluate()
                train_mean = sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan")
                self._log_scalars({"val/loss": val} if val is not None else {"train/epoch_loss": train_mean})
                self._save(metric=val if val is not None else (train_mean if epoch_losses else None))
                self.epoch, self.consumed = self.epoch + 1, 0
            elif self.step >= self.total_steps:
                self._save()
        self._preview()
        self._close()
        self._release_ddp()
        return {"step": self.step, "epoch": self.epoch, "loss": last_loss, "seconds": time.perf_counter() - t_start}

    def _release_ddp(self) -> None:
        """Drop the DDP wrapper while the process group is still alive.

        Freed later (at interpreter exit), its Reducer holds the last reference to the gloo process group,
        whose destructor joins gloo's worker thread while holding the GIL; a worker still freeing the last
        collective's tensors needs the GIL too, and the run hangs after its final step.
        """
        if self.model is not self.module:
            self.model = self.module
            gc.collect()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
