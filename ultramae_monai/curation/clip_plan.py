"""Which frames of a cine become clips and which become stills, before anything is decoded.

Pretraining wants short clips at a common frame rate (VideoMAE-style tubelets see motion at a
known time scale) plus stills spread over the whole cine (the image model sees every view, not just
the first second). Planning from the frame count and fps alone lets the readers decode only the
frames that will be kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ultramae_monai.data.frame_selection import frame_indices

__all__ = ["CinePlan", "plan_cine"]


@dataclass(frozen=True)
class CinePlan:
    """Clips are ``clip_length`` frames from each of ``clip_starts``, every ``stride``-th source frame."""

    stride: int
    clip_length: int
    clip_starts: tuple[int, ...]
    still_indices: tuple[int, ...]
    fps: float  # frame rate of the clips (source fps / stride), NaN when the source fps is unknown


def plan_cine(
    num_frames: int,
    fps: float,
    target_fps: float | None = 10.0,
    clip_length: int = 16,
    clips_per_cine: int = 4,
    frames_per_cine: int = 8,
) -> CinePlan:
    """Plan clips and stills for a cine of ``num_frames`` frames at ``fps``.

    The stride is ``round(fps / target_fps)`` (1 when either is unknown or the cine is slower); it is
    lowered when a clip at that stride would not fit. Up to ``clips_per_cine`` non-overlapping clips
    are spread evenly over the cine, with equal slack before and after each. A cine shorter than
    ``clip_length`` frames gives no clip (padding it with repeated frames would teach frozen motion),
    only stills. Stills are ``frames_per_cine`` frames spread evenly from first to last.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_length < 1 or clips_per_cine < 0 or frames_per_cine < 0:
        raise ValueError("clip_length must be >= 1, clips_per_cine and frames_per_cine >= 0")
    stride = 1
    if target_fps and math.isfinite(fps) and fps > target_fps:
        stride = max(1, round(fps / target_fps))
    starts: tuple[int, ...] = ()
    if clips_per_cine > 0 and num_frames >= clip_length:
        if clip_length > 1:
            stride = max(1, min(stride, (num_frames - 1) // (clip_length - 1)))
        span = (clip_length - 1) * stride + 1
        n = min(clips_per_cine, num_frames // span)
        gap = (num_frames - n * span) / n
        starts = tuple(i * span + int(gap * (i + 0.5)) for i in range(n))
    stills = tuple(int(i) for i in frame_indices(num_frames, max_frames=frames_per_cine)) if frames_per_cine else ()
    clip_fps = fps / stride if math.isfinite(fps) else float("nan")
    return CinePlan(stride, clip_length, starts, stills, clip_fps)
