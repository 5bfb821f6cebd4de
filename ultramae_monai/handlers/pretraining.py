"""Ignite handlers of the pretraining bundle: exact resume, the epoch's data order, logging, previews, a step cap.

Each attaches to a MONAI ``SupervisedTrainer`` (``handler.attach(trainer)``, as MONAI's own handlers) and is
declared in ``bundles/ultramae_pretrain/configs/train.json``:

* :class:`KindSamplerHandler`: at each epoch start, puts the :class:`~ultramae_monai.data.KindBatchSampler` at
  ``(epoch, position)`` derived from the engine's iteration, so a resumed run reads the next batch of the
  interrupted epoch (ignite counts the iterations; the sampler's order is a pure function of seed and epoch);
* :class:`PretrainCheckpoint`: atomic checkpoints in the pretraining checkpoint format (``network`` + ``meta``, loadable
  with ``weights_only=True``) plus the training state: optimiser, LR schedule, engine counters, sampler, the RNG
  states of every rank; resumes from the newest one at start;
* :class:`MetricsLogger`: ``metrics.jsonl`` (one line per step), a progress line with samples/s and ETA; the
  fault hook ``$ULTRAMAE_FAULT_KILL_AT_STEP`` of the resume test;
* :class:`ReconstructionPreview`: reconstruction grids of fixed samples, to TensorBoard and PNG;
* :class:`StopAtStep`: ``max_steps``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from ultramae_monai.data.batch_sampler import KindBatchSampler
from ultramae_monai.data.convention import KIND_CINE, KIND_STILL
from ultramae_monai.engines.checkpoint import CheckpointManager, pretrain_meta
from ultramae_monai.engines.distributed import all_gather_objects, is_distributed, is_main_process, rank, world_size
from ultramae_monai.engines.mae_step import MAEIteration, unwrap
from ultramae_monai.engines.preview import reconstruction_grid, save_grid_png
from ultramae_monai.engines.rng import capture_rng_state, restore_rng_state
from ultramae_monai.errors import UnreadableFileError

__all__ = [
    "FAULT_KILL_ENV",
    "KindSamplerHandler",
    "MetricsLogger",
    "PretrainCheckpoint",
    "ReconstructionPreview",
    "StopAtStep",
]

logger = logging.getLogger(__name__)

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


class KindSamplerHandler:
    """At each epoch start, set the sampler to the engine's epoch and to the position inside it (resume)."""

    def __init__(self, sampler: KindBatchSampler) -> None:
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        length = engine.state.epoch_length
        self.sampler.load_state_dict(
            {"seed": self.sampler.seed, "epoch": engine.state.epoch - 1, "position": engine.state.iteration % length}
        )


class StopAtStep:
    """Terminate after ``max_steps`` iterations (None: no cap); a resumed run past the cap stops at once."""

    def __init__(self, max_steps: int | None = None) -> None:
        self.max_steps = None if max_steps is None else int(max_steps)

    def attach(self, engine: Engine) -> None:
        if self.max_steps is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self)  # after a resume has set the counters
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration >= self.max_steps:
            engine.terminate()


class PretrainCheckpoint:
    """Atomic checkpoints (keep-last-N plus ``best.pt``) and exact resume.

    Args:
        output_dir: checkpoints go to ``output_dir/checkpoints``.
        network: the UltraMAE (DDP-wrapped or not); ``network`` holds its unwrapped state dict.
        optimizer, lr_scheduler: saved and restored.
        iteration: the trainer's :class:`MAEIteration` (mask generator and GradScaler).
        intensity_mean, intensity_std: the input normalisation, recorded in ``meta``.
        save_every: also save every N iterations (0: only at epoch ends and at the end).
        keep_last: step checkpoints kept.
        resume: continue from the newest checkpoint in the folder when there is one.
        validator: the validation evaluator; its ``val_loss`` picks ``best.pt`` (else the epoch's training loss).
        seed: the run seed; a checkpoint of another seed is refused (its data order would differ).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        iteration: MAEIteration,
        intensity_mean: float,
        intensity_std: float,
        save_every: int = 0,
        keep_last: int = 3,
        resume: bool = True,
        validator: Engine | None = None,
        seed: int = 0,
    ) -> None:
        self.manager = CheckpointManager(Path(output_dir) / "checkpoints", keep_last=keep_last)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.iteration = iteration
        self.intensity = (float(intensity_mean), float(intensity_std))
        self.save_every, self.resume, self.validator, self.seed = int(save_every), resume, validator, int(seed)
        self._saved_at = -1
        self._epoch_losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def state_dict(self, engine: Engine) -> dict[str, Any]:
        """Contract 1 plus everything resume needs; gathers every rank's RNG states (a collective call)."""
        module = unwrap(self.network)
        length = engine.state.epoch_length
        step = engine.state.iteration
        rng = all_gather_objects(capture_rng_state({"mask": self.iteration.mask_generator}))
        # one float64 sum of the weights per rank: DDP replicas must hold equal weights (a desync shows here)
        digest = all_gather_objects(float(sum(p.detach().double().sum() for p in module.parameters())))
        return {
            "network": module.state_dict(),
            "meta": pretrain_meta(module, *self.intensity),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "iteration": self.iteration.state_dict(),
            "step": step,
            "epoch": step // length,
            "sampler": {"seed": self.seed, "epoch": step // length, "position": step % length},
            "rng": rng,
            "weight_digest": digest,
            "world_size": world_size(),
        }

    def save(self, engine: Engine, metric: float | None = None) -> None:
        state = self.state_dict(engine)  # collective: every rank takes part
        if is_main_process():
            path = self.manager.save(state, engine.state.iteration, metric)
            logger.info("checkpoint %s", path)
        self.iteration.last_checkpoint = str(self.manager.step_path(engine.state.iteration))
        self._saved_at = engine.state.iteration
        if is_distributed():
            dist.barrier()

    def load(self, engine: Engine) -> None:
        if not self.resume or self.manager.latest() is None:
            return
        state = self.manager.load(map_location="cpu")
        if not {"network", "meta", "iteration", "sampler", "rng"} <= state.keys():
            raise UnreadableFileError(
                "not a resumable checkpoint of this version (no network/meta/iteration state): resume it with the "
                "version that wrote it, or start a new --output_dir",
                self.manager.latest(),
            )
        if int(state["sampler"]["seed"]) != self.seed:
            raise ValueError(f"checkpoint was written with seed {state['sampler']['seed']}, this run uses {self.seed}")
        unwrap(self.network).load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.iteration.load_state_dict(state["iteration"])
        engine.state.iteration = int(state["step"])
        engine.state.epoch = int(state["step"]) // engine.state.epoch_length
        self._saved_at = engine.state.iteration
        self.iteration.last_checkpoint = str(self.manager.latest())
        if state.get("world_size", 1) == world_size():
            restore_rng_state(state["rng"][rank()], {"mask": self.iteration.mask_generator})
        else:  # a different world: data order is exact, masks cannot be; reseed them per rank and step
            logger.warning(
                "checkpoint written by %s processes, resuming on %s: masks reseeded",
                state.get("world_size"),
                world_size(),
            )
            self.iteration.mask_generator.manual_seed(self.seed * 1000 + rank() + 7919 * engine.state.iteration)

    def iteration_completed(self, engine: Engine) -> None:
        self._epoch_losses.append(float(engine.state.output["loss"]))
        step, length = engine.state.iteration, engine.state.epoch_length
        if self.save_every and step % self.save_every == 0 and step % length:  # epoch ends are saved below
            self.save(engine)

    def epoch_completed(self, engine: Engine) -> None:
        metric = None
        if self.validator is not None and "val_loss" in self.validator.state.metrics:
            metric = float(self.validator.state.metrics["val_loss"])
        elif self._epoch_losses:
            metric = sum(self._epoch_losses) / len(self._epoch_losses)
        self._epoch_losses = []
        if engine.state.iteration % engine.state.epoch_length == 0:  # not a max_steps stop mid-epoch
            self.save(engine, metric)

    def completed(self, engine: Engine) -> None:
        if self._saved_at != engine.state.iteration:
            self.save(engine)


class MetricsLogger:
    """``metrics.jsonl`` and a progress line every ``log_every`` steps (rank 0); then the fault hook.

    Each step writes ``{"step", "epoch", "train/loss", "train/lr", "train/grad_norm"}`` (plus
    ``train/samples_per_s`` on progress steps); each epoch end ``val/loss`` (with a validator) or
    ``train/epoch_loss``. ``effective_batch`` is reported at start with the number of ranks.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        log_every: int = 10,
        batch_size: int | None = None,
        validator: Engine | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.log_every = max(int(log_every), 1)
        self.batch_size, self.validator, self.total_steps = batch_size, validator, total_steps
        self._epoch_losses: list[float] = []
        self._window = (0.0, 0, 0)  # (time, step, samples) at the last progress line
        self._started = False

    def attach(self, engine: Engine) -> None:
        # the first epoch start comes after a resume has set the counters (the checkpoint loads at STARTED)
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _write(self, row: dict[str, Any]) -> None:
        if is_main_process():
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def started(self, engine: Engine) -> None:
        if self._started:
            return
        self._started = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        total = self.total_steps or engine.state.epoch_length * engine.state.max_epochs
        self.total_steps = total
        self._window = (time.perf_counter(), engine.state.iteration, 0)
        if is_main_process():
            logger.info(
                "pretraining: %d steps/epoch, %d epochs, %d steps from step %d, effective batch %s (%d ranks x %s)",
                engine.state.epoch_length, engine.state.max_epochs, total, engine.state.iteration,
                None if self.batch_size is None else self.batch_size * world_size(), world_size(), self.batch_size,
            )  # fmt: skip

    def iteration_completed(self, engine: Engine) -> None:
        out, step = engine.state.output, engine.state.iteration
        self._epoch_losses.append(out["loss"])
        row = {"step": step, "epoch": engine.state.epoch - 1, "train/loss": out["loss"], "train/lr": out["lr"]}
        row["train/grad_norm"] = out["grad_norm"]
        t0, s0, n0 = self._window
        samples = n0 + out["samples"]
        self._window = (t0, s0, samples)
        if step % self.log_every == 0 or step == self.total_steps:
            now = time.perf_counter()
            rate = samples / max(now - t0, 1e-9)
            eta = (now - t0) / max(step - s0, 1) * (self.total_steps - step)
            row["train/samples_per_s"] = rate
            if is_main_process():
                logger.info(
                    "epoch %d/%d step %d/%d loss %.4f lr %.3g %.1f samples/s ETA %s",
                    engine.state.epoch, engine.state.max_epochs, step, self.total_steps, out["loss"], out["lr"],
                    rate, _format_eta(eta),
                )  # fmt: skip
            self._window = (now, step, 0)
        self._write(row)
        _fault_kill(step)

    def epoch_completed(self, engine: Engine) -> None:
        row: dict[str, Any] = {"step": engine.state.iteration, "epoch": engine.state.epoch - 1}
        if self.validator is not None and "val_loss" in self.validator.state.metrics:
            row["val/loss"] = float(self.validator.state.metrics["val_loss"])
        elif self._epoch_losses:
            row["train/epoch_loss"] = sum(self._epoch_losses) / len(self._epoch_losses)
        self._epoch_losses = []
        self._write(row)


class ReconstructionPreview:
    """Reconstructions of fixed samples (whole image, first clip, fixed masks) of each kind, every N steps and at the end.

    Grids go to TensorBoard (``output_dir/tb``, ``reconstruction/still``, ``reconstruction/cine``) and to
    ``output_dir/previews/{kind}_stepNNNNNNNN.png``. Rank 0 only.
    """

    def __init__(
        self,
        dataset: Any,
        output_dir: str | os.PathLike,
        iteration: MAEIteration,
        every: int = 0,
        samples: int = 4,
        seed: int = 0,
        tensorboard: bool = True,
    ) -> None:
        self.dataset, self.output_dir, self.iteration = dataset, Path(output_dir), iteration
        self.every, self.samples, self.seed, self.tensorboard = int(every), int(samples), int(seed), tensorboard
        self._writer: Any = None

    def attach(self, engine: Engine) -> None:
        if self.samples < 1 or not is_main_process():
            return
        if self.every:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.tensorboard and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tb"))
        module = unwrap(engine.network)
        module.eval()
        step = engine.state.iteration
        for kind in (KIND_STILL, KIND_CINE):
            idx = [i for i, k in enumerate(self.dataset.kinds) if k == kind][: self.samples]
            if not idx:
                continue
            batch = torch.utils.data.default_collate([self.dataset[i] for i in idx])
            x, extras = self.iteration.inputs(engine, batch)
            with torch.no_grad(), self.iteration.autocast(x.device):
                out = module(x, **extras, generator=torch.Generator().manual_seed(self.seed))
                images = {"input": x, **module.reconstruct(x, out)}
            grid = reconstruction_grid(images, self.samples)
            if self._writer is not None:
                self._writer.add_image(f"reconstruction/{kind}", grid, step)
                self._writer.flush()
            save_grid_png(grid, self.output_dir / "previews" / f"{kind}_step{step:08d}.png")
        module.train()
