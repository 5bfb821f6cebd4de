"""Curating one source file: read, crop to the scan region, sample, de-duplicate, confidence maps, write.

Runs inside a worker process and never raises: a failure comes back as a quarantine entry, so one
bad file cannot stop a run. Warnings and log records raised while a file is processed are captured
and scrubbed of its path (file and folder names can carry PHI) before they reach the run's log.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultramae_monai.curation.clip_plan import plan_cine
from ultramae_monai.curation.dedup import DuplicateIndex, dhash
from ultramae_monai.curation.deid import Hasher, redact_quoted, scrub, source_identity
from ultramae_monai.curation.options import CurationOptions
from ultramae_monai.curation.quarantine import QuarantineEntry, quarantine_entry
from ultramae_monai.curation.split import assign_split
from ultramae_monai.curation.walk import SOURCE_DICOM, SourceFile
from ultramae_monai.curation.writer import ArrayWriter, fit_long_side, resize_spatial, to_storage
from ultramae_monai.data.convention import KIND_CINE, KIND_STILL, KIND_VOLUME, MetaKeys
from ultramae_monai.data.manifest import ManifestRecord
from ultramae_monai.errors import InvalidInputError, NoScanRegionError

__all__ = ["SAMPLES_DIR", "FileResult", "curate_file"]

SAMPLES_DIR = "samples"
STAGES = ("read", "fov", "resize", "dedup", "confmap", "write")


@dataclass
class FileResult:
    """What a worker hands back for one source file."""

    source: str
    fingerprint: str
    records: list[ManifestRecord] = field(default_factory=list)
    dropped: int = 0  # near-duplicate samples not written
    quarantine: QuarantineEntry | None = None
    messages: list[str] = field(default_factory=list)  # scrubbed warnings / log lines
    seconds: dict[str, float] = field(default_factory=dict)


class _Timer:
    """Accumulates wall time per stage (the profile reported in docs/curation.md)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextmanager
def _captured(messages: list[str]) -> Iterator[None]:
    """Route warnings and WARNING+ log records of the block into ``messages`` instead of stderr."""
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        root.removeHandler(handler)
        messages.extend(handler.lines)


def _crop_blank(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop the last two axes to the mask's bounding box and zero everything outside the mask."""
    from ultramae_monai.transforms.scan_region import apply_fov

    out = apply_fov(x, mask, blank=True, crop=True)
    return out.as_tensor(), out.meta[MetaKeys.FOV_MASK][0]


def _fov_mask(x: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Scan-region mask ``(H, W)`` of a still ``(C, H, W)`` or a cine ``(C, T, H, W)`` (all frames share one).

    DICOM ultrasound regions, when the reader found some, bound the search (burned-in text beside them).
    Raises :class:`NoScanRegionError` for an image without one (noise, a photograph, a blank frame).
    """
    from ultramae_monai.transforms.fov_detect import detect_fov_mask, scan_region_problem
    from ultramae_monai.transforms.scan_region import regions_from_meta

    mask = np.array(detect_fov_mask(x, regions=regions_from_meta(meta)), dtype=bool)
    problem = scan_region_problem(x, mask)
    if problem is not None:
        raise NoScanRegionError(problem)
    return torch.from_numpy(mask)


class _FileCurator:
    """State shared by the samples of one source file (tokens, timers, the within-file dedup index)."""

    def __init__(self, job: SourceFile, opts: CurationOptions, salt: bytes, out: Path) -> None:
        self.job, self.opts, self.out = job, opts, out
        self.hasher = Hasher(salt)
        self.source = self.hasher(job.rel, "source")
        self.writer = ArrayWriter(out / SAMPLES_DIR)
        self.timer = _Timer()
        self.stills = DuplicateIndex(opts.dedup_threshold, opts.hash_size**2 // 8)
        self.clips = DuplicateIndex(opts.dedup_threshold, opts.hash_size**2 // 8)
        self.records: list[ManifestRecord] = []
        self.dropped = 0
        self.patient = self.study = self.split = ""

    def _load(self, **kw: Any) -> torch.Tensor:
        from ultramae_monai.data.load import load_ultrasound

        with self.timer("read"):
            return load_ultrasound(self.job.path, color=self.opts.color, **kw)

    def run(self) -> None:
        o = self.opts
        self.patient, self.study = source_identity(
            self.job.path, self.job.rel, self.hasher, self.job.source_type == SOURCE_DICOM, o.group_by, o.group_regex
        )
        self.split = assign_split(self.patient, o.val_fraction)
        first = self._load(max_frames=max(o.frames_per_cine, 1))
        if not torch.isfinite(first).all():
            raise InvalidInputError("image holds NaN or Inf values")
        meta = dict(first.meta)
        kind = str(meta.get(MetaKeys.KIND, KIND_STILL))
        eight_bit = float(first.min()) >= 0.0 and 1.0 < float(first.max()) <= 255.0
        if kind == KIND_VOLUME:
            self._volume(first, meta, eight_bit)
        elif kind == KIND_CINE:
            self._cine(first, meta, eight_bit)
        else:
            if len(torch.unique(first)) <= 2:
                raise InvalidInputError("two or fewer grey levels: a label mask or blank image, not ultrasound")
            with self.timer("fov"):
                mask = _fov_mask(first.as_tensor(), meta)
            self._frames_sample(first.as_tensor(), mask, meta, eight_bit, KIND_STILL, "still", {})

    def _cine(self, stills: torch.Tensor, meta: dict[str, Any], eight_bit: bool) -> None:
        o = self.opts
        x = stills.as_tensor()
        with self.timer("fov"):
            mask = _fov_mask(x, meta)
        n_src = int(meta.get(MetaKeys.SOURCE_FRAMES, x.shape[1]))
        fps = float(meta.get(MetaKeys.FPS, float("nan")))
        plan = plan_cine(n_src, fps, o.fps, o.clip_length, o.clips_per_cine, o.frames_per_cine)
        for i, start in enumerate(plan.clip_starts):
            clip = self._load(start=start, stride=plan.stride, clip_length=plan.clip_length).as_tensor()
            extra = {"start_frame": start, "stride": plan.stride}
            self._frames_sample(clip, mask, meta, eight_bit, KIND_CINE, f"clip{i}", extra, fps=plan.fps)
        if o.frames_per_cine:
            idx = [int(i) for i in meta.get(MetaKeys.FRAME_INDICES, range(x.shape[1]))]
            for t in range(x.shape[1]):
                extra = {"frame": idx[t] if t < len(idx) else t}
                self._frames_sample(x[:, t], mask, meta, eight_bit, KIND_STILL, f"frame{t}", extra)

    def _volume(self, vol: torch.Tensor, meta: dict[str, Any], eight_bit: bool) -> None:
        """Volumes: cropped to the non-zero box (outside the acquired cone a 3D scan is zero-filled)."""
        x = vol.as_tensor()
        with self.timer("fov"):
            nz = torch.nonzero(x.abs().amax(0) > 0)
            if nz.numel() == 0:
                raise InvalidInputError("volume is all zeros")
            lo, hi = nz.min(0).values, nz.max(0).values + 1
            x = x[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        spacing = [float(s) for s in meta.get(MetaKeys.SPACING, [math.nan] * 3)]
        size = fit_long_side(tuple(x.shape[1:]), self.opts.max_side)
        with self.timer("resize"):
            scale = [a / b for a, b in zip(x.shape[1:], size, strict=True)]
            x = resize_spatial(x, size)
        spacing = [s * f for s, f in zip(spacing, scale, strict=True)]
        self._write(x, None, None, meta, eight_bit, KIND_VOLUME, "volume", {}, spacing, None)
        for k in range(self.opts.volume_slices):
            d = round((k + 0.5) * x.shape[-1] / self.opts.volume_slices)
            plane = x[..., min(d, x.shape[-1] - 1)]
            if float(plane.max()) <= 0:
                continue
            with self.timer("fov"):
                mask = plane.abs().amax(0) > 0
            sample_meta = {**meta, MetaKeys.SPACING: spacing[:2]}
            self._frames_sample(
                plane, mask, sample_meta, eight_bit, KIND_STILL, f"slice{k}", {"slice": d}, resized=True
            )

    def _frames_sample(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        meta: dict[str, Any],
        eight_bit: bool,
        kind: str,
        label: str,
        extra: dict[str, Any],
        fps: float | None = None,
        resized: bool = False,
    ) -> None:
        """A still ``(C, H, W)`` or clip ``(C, T, H, W)``: crop/blank, resize, dedup, confidence, write."""
        o = self.opts
        with self.timer("fov"):
            x, m = _crop_blank(x, mask)
        spacing = [float(s) for s in meta.get(MetaKeys.SPACING, [math.nan, math.nan])][-2:]
        if not resized:
            size = fit_long_side(tuple(x.shape[-2:]), o.max_side)
            with self.timer("resize"):
                spacing = [s * a / b for s, a, b in zip(spacing, x.shape[-2:], size, strict=True)]
                x = resize_spatial(x, size)
                m = resize_spatial(m[None].float(), size, mask=True)[0]
            x = x * m
        with self.timer("dedup"):
            key = x if kind == KIND_STILL else x[:, x.shape[1] // 2]
            h = dhash(key, o.hash_size)
            index = self.stills if kind == KIND_STILL else self.clips
            if not index.add_if_new(h):
                self.dropped += 1
                return
        extra = {**extra, "dhash": h.tobytes().hex()}
        conf = None
        if o.confidence:
            with self.timer("confmap"):
                conf = self._confidence(x, m)
        self._write(x, m, conf, meta, eight_bit, kind, label, extra, spacing, fps)

    def _confidence(self, x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """Confidence map of each frame, on the grey image, restricted to the scan region: ``(1, [T,] H, W)``.

        A clip's frames are solved as one batch of 2D maps (one factorisation per clip), never as one 3D problem.
        """
        from ultramae_monai.confmap.api import ConfMapParams, solve_confidence_maps

        o = self.opts
        grey = x.mean(0).double().numpy()  # (H, W) or (T, H, W)
        frames = grey if grey.ndim == 3 else grey[None]
        params = ConfMapParams(alpha=o.alpha, beta=o.beta, gamma=o.gamma, sink_mode="all")
        maps = solve_confidence_maps(frames, params, fov_mask=mask.numpy())
        out = maps if grey.ndim == 3 else maps[0]
        return np.clip(out, 0.0, 1.0)[None].astype(np.float16)

    def _write(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        conf: np.ndarray | None,
        meta: dict[str, Any],
        eight_bit: bool,
        kind: str,
        label: str,
        extra: dict[str, Any],
        spacing: list[float],
        fps: float | None,
    ) -> None:
        token = self.hasher(f"{self.job.rel}#{label}", "sample")
        rel = lambda p: p.relative_to(self.out).as_posix()  # noqa: E731
        with self.timer("write"):
            arr, rng = to_storage(x, eight_bit)
            image = rel(self.writer.write(token, arr))
            conf_path = rel(self.writer.write(token, conf, "_conf")) if conf is not None else None
            fov_path = rel(self.writer.write(token, mask[None].numpy(), "_fov")) if mask is not None else None
        if rng is not None:
            extra = {**extra, "intensity_range": rng}
        self.records.append(
            ManifestRecord(
                id=token,
                path=image,
                kind=kind,
                shape=list(arr.shape),
                split=self.split,
                source_type=str(meta.get(MetaKeys.SOURCE, self.job.source_type)),
                modality=str(meta.get(MetaKeys.MODALITY, "US") or "US"),
                spacing=spacing,
                fps=fps,
                patient=self.patient,
                study=self.study,
                source=self.source,
                confidence=conf_path,
                fov_mask=fov_path,
                extra=extra,
            )
        )


def curate_file(
    job: SourceFile, opts: CurationOptions, salt: bytes, out: str, root: str, fingerprint: str
) -> FileResult:
    """Curate one file; never raises (failures come back as ``FileResult.quarantine``)."""
    curator = _FileCurator(job, opts, salt, Path(out))
    result = FileResult(curator.source, fingerprint)
    messages: list[str] = []
    try:
        with _captured(messages):
            curator.run()
        result.records, result.dropped = curator.records, curator.dropped
    except Exception as err:  # one bad file must never stop the run: it is reported, not raised
        result.quarantine = quarantine_entry(err, job.path, root, curator.source)
        for rec in curator.records:  # no half-curated files: remove what was written
            for p in (rec.path, rec.confidence, rec.fov_mask):
                if p:
                    (Path(out) / p).unlink(missing_ok=True)
    result.messages = [redact_quoted(scrub(m, job.path, root))[:300] for m in dict.fromkeys(messages)]
    result.seconds = curator.timer.seconds
    return result
