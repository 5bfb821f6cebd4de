"""Checkpoints that survive being killed: atomic writes, keep-last-N plus best, and a resume pointer.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over its
final name (``os.replace`` is atomic on POSIX), so a SIGKILL or a full disk mid-write leaves the previous
checkpoints intact and never a half-written ``.pt``. ``latest.txt`` (also replaced atomically) names the
newest complete checkpoint; resume reads it, falling back to the highest step on disk.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ultramae_monai.errors import UnreadableFileError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointManager",
    "atomic_save",
    "export_encoder",
    "latest_checkpoint",
    "pretrain_meta",
]

CHECKPOINT_FORMAT = {"format": "ultramae-pretrain", "version": 1}

logger = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"^checkpoint_step(\d+)\.pt$")


def _replace_atomically(write: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrain_meta(network: Any, intensity_mean: float, intensity_std: float) -> dict[str, Any]:
    """``meta`` of a pretraining checkpoint: format, the encoder's architecture, input intensity and target.

    ``network`` is the :class:`~ultramae_monai.networks.UltraMAE` (unwrapped); the fine-tuning bundles rebuild the
    encoder from ``architecture`` and normalise their inputs with ``intensity``.
    """
    return {
        **CHECKPOINT_FORMAT,
        "architecture": network.architecture(),
        "intensity": {"mean": float(intensity_mean), "std": float(intensity_std)},
        "target": network.target,
    }


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    _replace_atomically(lambda f: torch.save(obj, f), Path(path))


class CheckpointManager:
    """Writes ``checkpoint_stepNNNNNNNN.pt`` files, keeps the last ``keep_last`` and a ``best.pt``.

    Args:
        directory: where checkpoints go (created).
        keep_last: how many step checkpoints to keep (older ones are deleted after a successful write).
        mode: ``"min"`` (a loss) or ``"max"``: which direction of the metric is better for ``best.pt``.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, mode: str = "min") -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.mode = mode
        self.best_metric: float | None = None

    def step_path(self, step: int) -> Path:
        return self.directory / f"checkpoint_step{step:08d}.pt"

    def checkpoints(self) -> list[Path]:
        """Step checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def is_better(self, metric: float) -> bool:
        if self.best_metric is None:
            return True
        return metric < self.best_metric if self.mode == "min" else metric > self.best_metric

    def save(self, state: dict[str, Any], step: int, metric: float | None = None) -> Path:
        """Write the step checkpoint, update ``latest.txt``, prune, and copy to ``best.pt`` if ``metric`` improved."""
        state = {**state, "best_metric": self.best_metric}
        path = self.step_path(step)
        if metric is not None and self.is_better(metric):
            self.best_metric = float(metric)
            state["best_metric"] = self.best_metric
            atomic_save(state, self.directory / "best.pt")
        atomic_save(state, path)
        _replace_atomically(lambda f: f.write(path.name.encode()), self.directory / "latest.txt")
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None when there is none."""
        pointer = self.directory / "latest.txt"
        if pointer.is_file():
            candidate = self.directory / pointer.read_text().strip()
            if candidate.is_file():
                return candidate
        found = self.checkpoints()
        return found[-1] if found else None

    def load(self, path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load ``path`` (default: :meth:`latest`) and remember its best metric."""
        target = Path(path) if path is not None else self.latest()
        if target is None:
            raise UnreadableFileError("no checkpoint to resume from", self.directory)
        try:
            state = torch.load(target, map_location=map_location, weights_only=True)
        except Exception as err:  # zip, pickle and non-allowed-global errors all mean: not our checkpoint format
            raise UnreadableFileError(f"cannot load checkpoint ({_first_line(err)})", target) from err
        self.best_metric = state.get("best_metric")
        logger.info("resuming from %s (step %s)", target, state.get("step"))
        return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def latest_checkpoint(output_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint of a pretraining run's ``output_dir`` (an error naming the folder if none)."""
    found = CheckpointManager(Path(output_dir) / "checkpoints").latest()
    if found is None:
        raise UnreadableFileError(f"no pretraining checkpoint in {Path(output_dir) / 'checkpoints'}")
    return found


def export_encoder(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write ``{"encoder": encoder state dict (no prefix), "meta": the checkpoint's meta}``, atomically.

    Returns ``path``. The checkpoint is read with ``weights_only=True``; one without ``meta`` is refused.
    """
    source = Path(checkpoint)
    if not source.is_file():
        raise UnreadableFileError(f"checkpoint not found: {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and non-allowed-global errors all mean: not our checkpoint format
        raise UnreadableFileError(f"cannot load checkpoint ({_first_line(err)})", source) from err
    if "network" not in state or state.get("meta", {}).get("format") != CHECKPOINT_FORMAT["format"]:
        raise UnreadableFileError("not an UltraMAE pretraining checkpoint (no network/meta)", source)
    encoder = {k[len("encoder.") :]: v for k, v in state["network"].items() if k.startswith("encoder.")}
    out = Path(path)
    atomic_save({"encoder": encoder, "meta": state["meta"]}, out)
    logger.info("encoder of %s (%d tensors) exported to %s", source, len(encoder), out)
    return out
