"""Batches that are homogeneous in kind (all stills or all clips), mixed over an epoch, and resumable.

A still ``(C, H, W)`` and a clip ``(C, T, H, W)`` cannot share a tensor, so every batch holds one kind;
the order of the batches interleaves both kinds, so one run pretrains on images and clips together
(as in the video MAE of Tong et al. 2022 trained jointly with images, and Hiera/OmniMAE, Girdhar et al. 2023).

Everything is a pure function of ``(seed, epoch)``: the order never depends on worker processes or
the global RNG, so a run killed mid-epoch restarts at the exact next batch (``load_state_dict``) and
sees the same samples with the same augmentation seeds as an uninterrupted run. Under DDP each
*global* batch (``batch_size x num_replicas`` samples of one kind) is cut into one slice per rank,
so at every step all ranks run the same kind (the same code path through the network).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ultramae_monai.data.convention import KIND_CINE, KIND_STILL

__all__ = ["KindBatchSampler", "SampleKey"]

SampleKey = tuple[int, int]  # (dataset index, augmentation seed)


class KindBatchSampler:
    """Yields lists of ``(index, aug_seed)``; one list = one kind-homogeneous per-rank batch.

    Args:
        kinds: the kind of each dataset item (``"still"`` or ``"cine"``), e.g. ``dataset.kinds``.
        batch_size: per-rank batch size for stills.
        clip_batch_size: per-rank batch size for clips (clips cost ``T / tubelet_t`` times more tokens);
            defaults to ``batch_size``.
        seed: the run seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        shuffle: shuffle samples and batch order (evaluation uses ``False``).
        drop_last: drop each kind's last incomplete global batch (keeps shapes, and DDP ranks, in step).
        num_replicas, rank: DDP world size and this rank (``1, 0`` without DDP).
        seeded: yield ``(index, aug_seed)`` keys (augmented items); False yields plain indices (evaluation: the
            whole image, the first clip).
    """

    def __init__(
        self,
        kinds: Sequence[str],
        batch_size: int,
        clip_batch_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        seeded: bool = True,
    ) -> None:
        if batch_size < 1 or (clip_batch_size is not None and clip_batch_size < 1):
            raise ValueError("batch sizes must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        unknown = sorted(set(kinds) - {KIND_STILL, KIND_CINE})
        if unknown:
            raise ValueError(f"KindBatchSampler handles stills and clips, got kinds {unknown}")
        self.kinds = np.asarray(list(kinds))
        self.batch_sizes = {KIND_STILL: batch_size, KIND_CINE: clip_batch_size or batch_size}
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.seeded = seeded
        self.epoch = 0
        self.position = 0  # batches of this epoch already consumed by the training loop

    def _global_batches(self) -> list[tuple[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[tuple[str, np.ndarray]] = []
        for kind in (KIND_STILL, KIND_CINE):
            idx = np.flatnonzero(self.kinds == kind)
            if self.shuffle:
                idx = rng.permutation(idx)
            gbs = self.batch_sizes[kind] * self.num_replicas
            n_full = len(idx) // gbs
            for b in range(n_full):
                batches.append((kind, idx[b * gbs : (b + 1) * gbs]))
            rest = idx[n_full * gbs :]
            if len(rest) >= self.num_replicas and not self.drop_last:
                # an equal share per rank so ranks stay in step
                batches.append((kind, rest[: len(rest) - len(rest) % self.num_replicas]))
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def _aug_seeds(self, global_batch: np.ndarray, batch_number: int) -> np.ndarray:
        # per-sample seeds drawn from (seed, epoch, batch): independent of worker count and rank
        rng = np.random.default_rng([self.seed, self.epoch, batch_number, 1])
        return rng.integers(0, 2**31 - 1, size=len(global_batch))

    def __iter__(self) -> Iterator[list[SampleKey] | list[int]]:
        start = self.position  # read once: the loop may update ``position`` while workers prefetch
        for b, (_, gb) in enumerate(self._global_batches()):
            if b < start:
                continue
            seeds = self._aug_seeds(gb, b)
            share = len(gb) // self.num_replicas
            sl = slice(self.rank * share, (self.rank + 1) * share)
            if not self.seeded:
                yield [int(i) for i in gb[sl]]
                continue
            yield [(int(i), int(s)) for i, s in zip(gb[sl], seeds[sl], strict=True)]

    def __len__(self) -> int:
        """Batches per epoch (from the start of the epoch, whatever the position)."""
        return len(self._global_batches())

    def batch_kinds(self) -> list[str]:
        """Kind of each batch of the current epoch, in order."""
        return [k for k, _ in self._global_batches()]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next ``__iter__`` starts at batch ``position`` of ``epoch``."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"checkpoint was written with seed {state['seed']}, this run uses {self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
