"""torchrun / DDP plumbing: process-group init from the launcher's environment, rank queries, gathers.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; without them the
process runs alone (rank 0 of 1) and every helper here is a no-op, so one code path serves a laptop, one
GPU, one node with 8 GPUs and many nodes. NCCL is used when CUDA is available, gloo otherwise (CPU CI).
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_objects",
    "cleanup_distributed",
    "distributed_device",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "rank",
    "world_size",
    "wrap_ddp",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 logs, writes TensorBoard and checkpoints."""
    return rank() == 0


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes (idempotent); False when not launched by torchrun.

    ``backend`` defaults to ``"nccl"`` with CUDA and ``"gloo"`` without. Each process binds the GPU
    ``LOCAL_RANK`` (one process per GPU).
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "RANK" not in os.environ:
        return False
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend=backend or ("nccl" if use_cuda else "gloo"), timeout=datetime.timedelta(seconds=timeout_s)
    )
    return True


def distributed_device() -> torch.device:
    """``cuda:LOCAL_RANK`` with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cleanup_distributed() -> None:
    """Leave the process group (a no-op without one).

    The group's destructor joins gloo's worker thread while holding the GIL, and that thread needs the GIL
    to free the tensors of the last collective: wait for every rank, then release the GIL briefly so the
    worker finishes, before destroying the group (else the process can hang at exit).
    """
    if is_distributed():
        dist.barrier()
        time.sleep(0.2)
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` without DDP."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: torch.nn.Module, find_unused_parameters: bool = True) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` under torchrun, the module itself otherwise.

    ``find_unused_parameters``: stills and clips take different paths through the patch embedding.
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
