"""The real images every confidence-map benchmark times, so their tables compare the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def grey(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG as writable uint8 grey (MONAI's transform writes into its input), optionally resized."""
    img = Image.open(path).convert("L")
    return np.array(img.resize(size, Image.BILINEAR) if size else img)


def cases() -> list[tuple[str, np.ndarray, float]]:
    """(name, image, gamma): the MATLAB reference pair at their reference gammas, BUSI and HC18 sizes."""
    ref = DATA / "confmap_reference"
    hc = DATA / "hc18" / "images" / "010_HC.png"
    return [
        ("BUSI 256x256", grey(DATA / "busi" / "benign" / "benign (10).png", (256, 256)), 0.05),
        ("femur 512x476", grey(ref / "femur_input.png"), 0.06),
        ("neck 597x568", grey(ref / "neck_input.png"), 0.03),
        ("HC18 540x800", grey(hc), 0.05),
        ("HC18 768x1024 (resized)", grey(hc, (1024, 768)), 0.05),
    ]


def device_batch(batch: int, images: Path | None = None, size: int = 224) -> np.ndarray:
    """``batch`` real images ``(B, size, size)`` float64 from ``images`` (an ``(N, H, W)`` .npy), else HC18 and
    BUSI alternating; repeated when the batch is larger than the pool."""
    if images is not None:
        pool = list(np.load(images))
    else:
        hc = sorted((DATA / "hc18" / "images").glob("*_HC.png"))[:8]
        busi = sorted((DATA / "busi").glob("*/*).png"))[:8]
        pool = [grey(p, (size, size)) for pair in zip(hc, busi, strict=True) for p in pair]
    return np.stack([pool[i % len(pool)] for i in range(batch)]).astype(np.float64)
