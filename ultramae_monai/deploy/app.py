"""The MONAI Deploy application: DICOM ultrasound in; DICOM SEG, classification JSON and PNG overlays out.

``run_deploy`` checks the input folder and the bundles before the Holoscan graph starts (an empty folder or a
bundle without weights fails at once, with nothing written), runs the graph with every output staged, and
publishes the outputs with ``result.json`` last only when the run succeeded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ultramae_monai.deploy.bundle import BundleRunner, find_bundles
from ultramae_monai.deploy.results import OutputStage, RunState
from ultramae_monai.errors import InvalidInputError

__all__ = ["MIN_STACK_BYTES", "UltrasoundDeployApp", "resolve_device", "run_deploy"]

MIN_STACK_BYTES = 32 * 1024 * 1024  # Holoscan warns (and may crash in deep graphs) below a 32 MB stack
_log = logging.getLogger(__name__)

os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")  # Holoscan's per-run INFO lines are not this app's output

from holoscan.conditions import CountCondition  # noqa: E402
from monai.deploy.core import Application  # noqa: E402  (after the log level is set)


def resolve_device(device: str) -> torch.device:
    """``auto`` is the GPU when one is there, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class UltrasoundDeployApp(Application):
    """DICOM ultrasound in; DICOM SEG, classification JSON and PNG overlays out (MONAI Deploy App SDK 4).

    Args:
        input_folder: the DICOM files (any tree, any names).
        runners: the loaded bundles (segmentation and/or classification).
        stage: where the writers put their files.
        state: shared run state (skipped files, results, the error that ended the run).
        max_overlay_frames: PNG overlays per cine (evenly spread frames).
        sr: also write the classification as a DICOM Comprehensive SR.
    """

    name = "ultramae-deploy"
    description = "UltraMAE ultrasound segmentation and classification on DICOM US stills and cines"

    def __init__(
        self,
        input_folder: Path,
        runners: list[BundleRunner],
        stage: OutputStage,
        state: RunState,
        max_overlay_frames: int = 16,
        sr: bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.input_folder = Path(input_folder)
        self.runners = runners
        self.stage = stage
        self.state = state
        self.max_overlay_frames = max_overlay_frames
        self.sr = sr
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        from ultramae_monai.deploy.operators import (
            SELECTED,
            STUDIES,
            ClassificationWriterOperator,
            DicomSegWriterOperator,
            OverlayWriterOperator,
            UltrasoundBundleInferenceOperator,
            UltrasoundDicomLoaderOperator,
            ultrasound_series_selector,
        )

        loader = UltrasoundDicomLoaderOperator(
            self, CountCondition(self, 1), input_folder=self.input_folder, state=self.state, name="dicom_loader"
        )
        selector = ultrasound_series_selector(self, name="us_series_selector")
        inference = UltrasoundBundleInferenceOperator(
            self,
            runners=self.runners,
            state=self.state,
            input_folder=self.input_folder,
            max_overlay_frames=self.max_overlay_frames,
            name="inference",
        )
        self.add_flow(loader, selector, {(STUDIES, STUDIES)})
        self.add_flow(loader, inference, {(STUDIES, STUDIES)})
        self.add_flow(selector, inference, {(SELECTED, SELECTED)})
        tasks = {r.task for r in self.runners}
        writers = []
        if "segmentation" in tasks:
            writers.append(DicomSegWriterOperator(self, stage=self.stage, name="dicom_seg_writer"))
            writers.append(OverlayWriterOperator(self, stage=self.stage, name="png_overlay_writer"))
        if "classification" in tasks:
            writers.append(
                ClassificationWriterOperator(self, stage=self.stage, sr=self.sr, name="classification_writer")
            )
        for writer in writers:
            self.add_flow(inference, writer, {("instance_results", "instance_results")})


def run_deploy(
    input_folder: str | Path,
    output_folder: str | Path,
    bundle_folder: str | Path,
    device: str = "auto",
    max_overlay_frames: int = 16,
    sr: bool = True,
) -> dict[str, Any]:
    """Run the app once; returns the content of ``result.json``.

    Raises:
        UltraMAEError: an input folder that is missing or empty, a bundle folder that does not follow the bundle
            contract or has no weights, no ultrasound series, or no readable instance. Nothing is published then.
    """
    src = Path(input_folder)
    if not src.is_dir():
        raise InvalidInputError("input folder not found", src)
    if not any(p.is_file() for p in src.rglob("*")):
        raise InvalidInputError("input folder is empty: no DICOM files to process", src)
    dev = resolve_device(device)
    runners = [BundleRunner(b, dev) for b in find_bundles(bundle_folder)]
    state = RunState(bundles=[{"name": r.name, "task": r.task, "path": str(r.bundle_dir)} for r in runners])
    stage = OutputStage(output_folder).open()
    try:
        UltrasoundDeployApp(src, runners, stage, state, max_overlay_frames, sr).run()
        if state.error is not None:
            raise state.error
        return stage.commit(state)
    finally:
        stage.discard()
