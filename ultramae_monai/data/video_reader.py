"""Video files (mp4, avi, mov, mpeg, gif, webm, mkv) as ultrasound cines ``(C, T, H, W)``, decoded by PyAV.

Why not just decode every frame: a pretraining loader wants a 16-frame clip out of a file that may hold
thousands, so the reader (1) counts frames by demuxing packets (no decoding), (2) picks frames with
:func:`ultramae_monai.data.frame_selection.frame_indices`, (3) seeks to the last keyframe before the first wanted
frame when that skips work, verifying every decoded frame's index by its presentation timestamp, and
(4) stops decoding after the last wanted frame.

Why count packets instead of trusting the container: the header's frame count is wrong or absent for
several real formats: MPEG program streams have none, a MOV/MP4 with an edit list counts samples that
the edit list hides (the POCUS ``Cov_denault_*.mov`` files: header 145, shown 144), and a GIF has none.
A header count larger than the packets present means the file is truncated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import av
import numpy as np
from monai.data import MetaTensor

from ultramae_monai.data.convention import KIND_CINE, MetaKeys, make_metatensor
from ultramae_monai.data.frame_selection import frames_of_file
from ultramae_monai.data.reader_base import FunctionImageReader
from ultramae_monai.errors import UnreadableFileError

__all__ = ["VIDEO_SUFFIXES", "UltrasoundVideoReader", "probe_video", "read_video"]

VIDEO_SUFFIXES = ("mp4", "m4v", "avi", "mov", "mpeg", "mpg", "gif", "webm", "mkv", "wmv")
# codecs whose frames carry their own display time (GIF delays vary per frame): fps = frames / total time
_PER_FRAME_DELAY_CODECS = frozenset({"gif", "apng", "webp"})
_LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class _PacketIndex:
    """What demuxing (without decoding) tells about a video stream."""

    count: int  # frames the decoder will output (non-empty, non-discarded packets)
    pts: np.ndarray | None  # sorted presentation timestamps: frame i has pts[i]; None when not usable
    key_frames: np.ndarray  # frame indices of keyframes (empty when pts is None)
    duration_s: float  # sum of packet durations, NaN when unknown


@contextmanager
def _open(path: str | PathLike) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open the first video stream, turning every PyAV/FFmpeg failure into an UnreadableFileError."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableFileError("no such file", p)
    if p.stat().st_size == 0:
        raise UnreadableFileError("empty file (0 bytes)", p)
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise UnreadableFileError(f"not a readable video ({type(e).__name__}: {e})", p) from e
    try:
        if not container.streams.video:
            raise UnreadableFileError(f"no video stream in {container.format.name} container", p)
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.width:
            raise UnreadableFileError(f"video stream has no decodable frames (codec {stream.codec.name})", p)
        yield container, stream
    finally:
        container.close()


def _scan_packets(path: str | PathLike, container: av.container.InputContainer, stream: av.VideoStream) -> _PacketIndex:
    """Count frames by demuxing packets (cheap: no decoding) and record their timestamps and keyframes."""
    pts: list[int] = []
    keys: list[int] = []
    stored = 0  # packets in the file, including those an edit list hides
    duration = 0
    duration_known = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # end-of-stream flush packet
                continue
            stored += 1
            if packet.is_discard:
                continue
            pts.append(-(2**62) if packet.pts is None else packet.pts)
            if packet.is_keyframe:
                keys.append(pts[-1])
            duration_known &= bool(packet.duration)
            duration += packet.duration or 0
    except av.error.FFmpegError as e:
        raise UnreadableFileError(f"corrupt video stream ({type(e).__name__}: {e})", path) from e
    declared = stream.frames
    if not pts:
        raise UnreadableFileError("video stream holds no frames", path)
    if declared > 0 and stored < declared:
        raise UnreadableFileError(f"truncated: header declares {declared} frames, only {stored} present", path)
    order = np.sort(np.asarray(pts, dtype=np.int64))
    usable = order[0] != -(2**62) and np.all(np.diff(order) > 0)
    key_frames = np.searchsorted(order, np.asarray(keys, dtype=np.int64)) if usable else np.zeros(0, np.int64)
    tb = float(stream.time_base) if stream.time_base else float("nan")
    return _PacketIndex(
        count=len(pts),
        pts=order if usable else None,
        key_frames=np.sort(key_frames),
        duration_s=duration * tb if duration_known else float("nan"),
    )


def _fps(stream: av.VideoStream, index: _PacketIndex, container: av.container.InputContainer) -> float:
    """Frames per second: the stream's average rate, or the mean rate for formats with per-frame delays."""
    if stream.codec_context.name in _PER_FRAME_DELAY_CODECS and index.duration_s > 0:
        return index.count / index.duration_s
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    if container.duration:
        return index.count / (container.duration / av.time_base)
    return float("nan")


def _duration_s(index: _PacketIndex, container: av.container.InputContainer, fps: float) -> float:
    if np.isfinite(index.duration_s) and index.duration_s > 0:
        return index.duration_s
    if container.duration:
        return container.duration / av.time_base
    return index.count / fps if fps > 0 else float("nan")


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of uint8 RGB ``(..., 3)`` as float32 (channel by channel: far faster than a matmul)."""
    out = rgb[..., 0].astype(np.float32)
    out *= _LUMA_BT601[0]
    out += _LUMA_BT601[1] * rgb[..., 1]
    out += _LUMA_BT601[2] * rgb[..., 2]
    return out


def probe_video(path: str | PathLike) -> dict[str, Any]:
    """Frames, fps, size, codec and duration of a video, from its packets (nothing is decoded).

    ``frames`` is what :func:`read_video` can return; ``container_frames`` is the header's claim (0 when the
    format has none), kept for diagnosis.
    """
    with _open(path) as (container, stream):
        index = _scan_packets(path, container, stream)
        fps = _fps(stream, index, container)
        return {
            "frames": index.count,
            "fps": fps,
            "height": int(stream.codec_context.height),
            "width": int(stream.codec_context.width),
            "codec": stream.codec_context.name,
            "duration": _duration_s(index, container, fps),
            "format": container.format.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "container_frames": max(int(stream.frames), 0),
        }


def _seek_targets(index: _PacketIndex, first: int, tries: int = 3) -> list[int]:
    """pts of the last keyframes at or before frame ``first``, nearest first, skipping frame 0 (no gain there).

    Several, because some demuxers (MPEG program streams) land one GOP past the requested keyframe.
    """
    if index.pts is None:
        return []
    keys = index.key_frames[(index.key_frames <= first) & (index.key_frames > 0)]
    return [int(index.pts[k]) for k in keys[::-1][:tries]]


def _decode(
    path: str | PathLike,
    container: av.container.InputContainer,
    stream: av.VideoStream,
    index: _PacketIndex,
    needed: np.ndarray,
    seek_pts: int | None,
) -> list[np.ndarray] | None:
    """RGB uint8 frames for the sorted unique indices ``needed``; None if a seek landed past the first one."""
    wanted = {int(i): k for k, i in enumerate(needed)}
    first, last = int(needed[0]), int(needed[-1])
    pts_to_index = None if index.pts is None else {int(p): i for i, p in enumerate(index.pts)}
    out: list[np.ndarray | None] = [None] * len(needed)
    if seek_pts is not None:
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
    counter = 0
    try:
        for frame in container.decode(stream):
            if pts_to_index is not None and frame.pts is not None and frame.pts in pts_to_index:
                i = pts_to_index[frame.pts]
            elif seek_pts is None:
                i = counter
            else:
                return None  # cannot verify where the seek landed
            if seek_pts is not None and counter == 0 and i > first:
                return None  # landed past the first wanted frame
            counter += 1
            if i in wanted:
                out[wanted[i]] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    except av.error.FFmpegError as e:
        raise UnreadableFileError(f"cannot decode frame {counter} ({type(e).__name__}: {e})", path) from e
    missing = [int(needed[k]) for k, a in enumerate(out) if a is None]
    if missing:
        raise UnreadableFileError(
            f"truncated or corrupt: decoded {counter} frames, frames {missing[:5]}... never came out", path
        )
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise UnreadableFileError(f"frame size changes mid-stream ({sorted(shapes)})", path)
    return out  # type: ignore[return-value]


def read_video(
    path: str | PathLike,
    *,
    color: bool = False,
    start: int = 0,
    stride: int = 1,
    clip_length: int | None = None,
    max_frames: int | None = None,
    seek: bool = True,
) -> MetaTensor:
    """Read a video as a cine MetaTensor ``(C, T, H, W)``, float32 in 0..255.

    Args:
        path: video file (mp4, avi, mov, mpeg, gif, webm, mkv, ...).
        color: RGB (``C = 3``) instead of BT.601 luma grey (``C = 1``).
        start, stride, clip_length, max_frames: frame selection, see :func:`~ultramae_monai.data.frame_selection.frame_indices`.
        seek: allow a keyframe seek when the clip starts late (the result is identical; only speed differs).

    Raises:
        UnreadableFileError: missing, empty, truncated, corrupt or not a video.
    """
    with _open(path) as (container, stream):
        index = _scan_packets(path, container, stream)
        fps = _fps(stream, index, container)
        pix_fmt = stream.codec_context.pix_fmt
    idx = frames_of_file(index.count, path, start, stride, clip_length, max_frames)
    needed = np.unique(idx)
    frames = None
    with _open(path) as (container, stream):
        for seek_pts in _seek_targets(index, int(needed[0])) if seek else []:
            frames = _decode(path, container, stream, index, needed, seek_pts)
            if frames is not None:
                break
    if frames is None:  # no seek wanted, or no seek could be verified: decode from the start
        with _open(path) as (container, stream):
            frames = _decode(path, container, stream, index, needed, None)
    rgb = np.stack(frames)[np.searchsorted(needed, idx)]  # (T, H, W, 3) uint8, repeats restored
    array = np.moveaxis(rgb, -1, 0) if color else _luma(rgb)[None]
    meta = {
        "filename_or_obj": str(path),
        MetaKeys.SOURCE: "video",
        MetaKeys.MODALITY: "US",
        MetaKeys.PHOTOMETRIC: pix_fmt,
        MetaKeys.COLOR: "rgb" if color else "grey",
        MetaKeys.FPS: fps,
        MetaKeys.FRAME_TIME_MS: 1000.0 / fps if fps > 0 else float("nan"),
        MetaKeys.NUM_FRAMES: int(idx.size),
        MetaKeys.SOURCE_FRAMES: index.count,
        MetaKeys.FRAME_INDICES: idx.tolist(),
    }
    return make_metatensor(array, KIND_CINE, meta)


class UltrasoundVideoReader(FunctionImageReader):
    """MONAI reader for video files, so ``LoadImage(reader=UltrasoundVideoReader())`` yields ``(C, T, H, W)`` cines.

    The constructor takes :func:`read_video`'s options; several files given at once are stacked on channels.
    """

    suffixes = VIDEO_SUFFIXES
    read_fn = staticmethod(read_video)

    def __init__(
        self,
        color: bool = False,
        start: int = 0,
        stride: int = 1,
        clip_length: int | None = None,
        max_frames: int | None = None,
        seek: bool = True,
    ) -> None:
        super().__init__(
            color=color, start=start, stride=stride, clip_length=clip_length, max_frames=max_frames, seek=seek
        )
