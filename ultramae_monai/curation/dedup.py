"""Near-duplicate detection with a difference hash (dHash) on a downsampled frame.

Consecutive cine frames, and the same image exported twice (BUSI has such pairs), add little but
cost epochs. dHash (Krawetz 2013, "Kind of like that") keeps the sign of horizontal gradients of an
area-averaged ``size x (size + 1)`` thumbnail: robust to noise, gain and resizing, and two images
are near-duplicates when their hashes differ in at most ``threshold`` bits. At ``size=16`` (256
bits), different BUSI/HC18 images differ in >= 65 bits except true near-copies (<= 9 bits), and
frames 0.1 s apart in POCUS videos in 5-10 bits (docs/curation.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DuplicateIndex", "dhash", "hamming"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def dhash(frame: np.ndarray | torch.Tensor, size: int = 16) -> np.ndarray:
    """Packed ``size * size``-bit dHash (uint8 array) of a ``(H, W)`` or channel-first ``(C, H, W)`` frame."""
    x = torch.as_tensor(np.asarray(frame) if not isinstance(frame, torch.Tensor) else frame).float()
    if x.ndim == 3:
        x = x.mean(0)
    if x.ndim != 2:
        raise ValueError(f"dhash needs a (H, W) or (C, H, W) frame, got shape {tuple(x.shape)}")
    thumb = F.adaptive_avg_pool2d(x[None, None], (size, size + 1))[0, 0]
    bits = (thumb[:, 1:] > thumb[:, :-1]).numpy()
    return np.packbits(bits.ravel())


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between packed hashes; ``b`` may be a stack ``(N, nbytes)``."""
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(-1, dtype=np.int64)


class DuplicateIndex:
    """Hashes seen so far; a new one within ``threshold`` bits of any of them is a duplicate.

    A linear scan over a packed array: 10^5 hashes take ~1 ms per query, more than enough for a
    curation run, and unlike a BK-tree it needs no tuning. ``threshold < 0`` disables the check.
    """

    def __init__(self, threshold: int, nbytes: int = 32) -> None:
        self.threshold = int(threshold)
        self._hashes = np.empty((64, nbytes), dtype=np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def is_duplicate(self, h: np.ndarray) -> bool:
        if self.threshold < 0 or self._n == 0:
            return False
        return bool(hamming(h, self._hashes[: self._n]).min() <= self.threshold)

    def add(self, h: np.ndarray) -> None:
        if self._n == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.empty_like(self._hashes)])
        self._hashes[self._n] = h
        self._n += 1

    def add_if_new(self, h: np.ndarray) -> bool:
        """Add ``h`` unless it is a near-duplicate; True when it was new."""
        if self.is_duplicate(h):
            return False
        self.add(h)
        return True
