"""What one app run produced, and the staging that keeps a failed run from looking complete.

Every output is written under a hidden staging folder inside the output folder. Only when the whole run has
succeeded are the results moved into place and ``result.json`` written, last: its presence (with ``"status"``) is
the completion marker. A failed run removes its staging folder and leaves no ``result.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

import ultramae_monai
from ultramae_monai.deploy.dicom_input import SkippedFile
from ultramae_monai.errors import UltraMAEError

__all__ = ["RESULT_FILE", "STAGING_DIR", "InstanceResult", "OutputStage", "RunState"]

RESULT_FILE = "result.json"
STAGING_DIR = ".ultramae-deploy-partial"


@dataclass
class InstanceResult:
    """One ultrasound instance (still or cine) and what each bundle predicted for it."""

    path: str
    header: Dataset
    preview: dict[int, np.ndarray] = field(default_factory=dict)  # frame: (H, W, 3) uint8, for the PNG overlays
    segmentations: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)  # bundle: (labels, (T,H,W))
    classifications: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)  # bundle: (names, (T,K))
    outputs: list[str] = field(default_factory=list)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def num_frames(self) -> int:
        return int(self.header.get("NumberOfFrames", 1) or 1)

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "study_instance_uid": str(self.header.StudyInstanceUID),
            "series_instance_uid": str(self.header.SeriesInstanceUID),
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": str(self.header.SOPClassUID),
            "kind": "cine" if self.num_frames > 1 else "still",
            "frames": self.num_frames,
            "outputs": sorted(self.outputs),
        }


@dataclass
class RunState:
    """Shared by the app's operators: skipped inputs, ignored series, results, and the error that ended the run."""

    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    instances: list[InstanceResult] = field(default_factory=list)
    bundles: list[dict[str, str]] = field(default_factory=list)
    error: UltraMAEError | None = None

    def fail(self, error: UltraMAEError) -> None:
        """Record the first error: the operators downstream of it get nothing more to do."""
        if self.error is None:
            self.error = error


class OutputStage:
    """Stage outputs under ``OUTPUT/.ultramae-deploy-partial`` and publish them all at once."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / STAGING_DIR

    def open(self) -> OutputStage:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / RESULT_FILE).unlink(missing_ok=True)  # an older run's marker must not vouch for this one
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir()
        return self

    def path(self, *parts: str) -> Path:
        """A path inside the staging folder (its parent folders created)."""
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, state: RunState) -> dict[str, Any]:
        """Move every staged entry into the output folder, then write ``result.json``; returns its content."""
        for entry in sorted(self.root.iterdir()):
            target = self.output_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            entry.replace(target)
        self.root.rmdir()
        result = {
            "status": "partial" if state.skipped else "complete",
            "software": {"name": "ultramae-monai", "version": ultramae_monai.__version__},
            "bundles": state.bundles,
            "instances": [i.summary() for i in state.instances],
            "skipped": [{"file": s.path, "cause": s.cause} for s in state.skipped],
            "ignored": state.ignored,
        }
        tmp = self.output_dir / f".{RESULT_FILE}.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(self.output_dir / RESULT_FILE)
        return result

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
