"""Capture and restore every random-number state a training step depends on.

Resume is exact only if the step after a restart draws the same random numbers as it would have in an
uninterrupted run: Python's ``random``, NumPy's global state, torch's CPU and CUDA generators, and the
dedicated generators the trainer owns (the masking generator).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what third-party code draws from
    torch.manual_seed(seed)


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Global generator states plus the named ``generators``, as tensors, lists and numbers only.

    So a checkpoint holding it loads with ``torch.load(..., weights_only=True)`` (no pickled NumPy arrays).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, gauss or None)
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    for name, g in (generators or {}).items():
        if name in state.get("generators", {}):
            g.set_state(state["generators"][name])
