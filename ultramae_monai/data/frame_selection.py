"""Which frames of a cine or video to read: one rule for DICOM cines and video files alike.

Readers call :func:`frame_indices` before decoding, so a 16-frame clip out of a 2,000-frame video
decodes (at most) up to the clip's last frame, never the whole file.
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from ultramae_monai.errors import InvalidInputError

__all__ = ["frame_indices", "frames_of_file"]


def frame_indices(
    num_frames: int,
    start: int = 0,
    stride: int = 1,
    clip_length: int | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Source frame indices to return, in increasing order.

    Args:
        num_frames: frames in the file.
        start: first frame (negative counts from the end, as in Python).
        stride: take every ``stride``-th frame from ``start``.
        clip_length: exactly this many frames; if the file is too short the last frame is repeated
            (so a batch of clips always stacks). ``None``: as many as available.
        max_frames: upper bound on the frames returned when ``clip_length`` is None; frames are then
            spread evenly over the available range instead of truncated.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0:
        start = max(num_frames + start, 0)
    if start >= num_frames:
        raise ValueError(f"start frame {start} is past the last frame ({num_frames - 1})")
    idx = np.arange(start, num_frames, stride, dtype=np.int64)
    if clip_length is not None:
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        if idx.size >= clip_length:
            return idx[:clip_length]
        return np.concatenate([idx, np.full(clip_length - idx.size, idx[-1], dtype=np.int64)])
    if max_frames is not None and idx.size > max_frames:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        pick = np.linspace(0, idx.size - 1, max_frames).round().astype(np.int64)
        return idx[pick]
    return idx


def frames_of_file(
    num_frames: int,
    path: str | PathLike,
    start: int = 0,
    stride: int = 1,
    clip_length: int | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """:func:`frame_indices` for a reader: a selection outside the file is an ``InvalidInputError`` naming it."""
    try:
        return frame_indices(num_frames, start=start, stride=stride, clip_length=clip_length, max_frames=max_frames)
    except ValueError as e:
        raise InvalidInputError(f"bad frame selection ({e})", path) from e
