"""The app's MONAI Deploy (Holoscan) operators.

The chain: :class:`UltrasoundDicomLoaderOperator` (headers of every file, unreadable ones named and skipped) ->
the SDK's ``DICOMSeriesSelectorOperator`` (``US_SELECTION_RULES``: the US series) ->
:class:`UltrasoundBundleInferenceOperator` (the project's readers and each bundle's preprocessing, network and
postprocessing; cines frame by frame) -> the writers (:class:`DicomSegWriterOperator`,
:class:`ClassificationWriterOperator`, :class:`OverlayWriterOperator`), all writing into the run's staging folder.

A user-data error does not raise inside the graph (Holoscan would log it as a crash): it is recorded on the shared
:class:`~ultramae_monai.deploy.results.RunState`, the operator emits nothing, and the app raises it after the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from ultramae_monai.deploy.bundle import TASK_CLASSIFICATION, BundleError, BundleRunner
from ultramae_monai.deploy.dicom_input import SkippedFile, is_ultrasound_image, list_files, read_headers
from ultramae_monai.deploy.report_writers import classification_record, preview_frames, write_overlays
from ultramae_monai.deploy.results import InstanceResult, OutputStage, RunState
from ultramae_monai.deploy.seg_writer import build_segmentation, write_segmentation
from ultramae_monai.deploy.sr_writer import write_classification_sr
from ultramae_monai.errors import InvalidInputError, NotUltrasoundError, UltraMAEError

__all__ = [
    "US_SELECTION_RULES",
    "ClassificationWriterOperator",
    "DicomSegWriterOperator",
    "OverlayWriterOperator",
    "UltrasoundBundleInferenceOperator",
    "UltrasoundDicomLoaderOperator",
    "ultrasound_series_selector",
]

US_SELECTION_RULES = json.dumps({"selections": [{"name": "ultrasound", "conditions": {"Modality": "(?i)^(US|IVUS)$"}}]})
STUDIES, SELECTED, RESULTS = "dicom_study_list", "study_selected_series_list", "instance_results"
_log = logging.getLogger(__name__)


class UltrasoundDicomLoaderOperator(DICOMDataLoaderOperator):
    """The SDK's DICOM loader, reading headers only and naming (not failing on) files it cannot parse.

    Output ``dicom_study_list``: the SDK's ``DICOMStudy`` objects, whose SOP instances keep their ``filename``.
    """

    def __init__(self, fragment: Fragment, *args, input_folder: Path, state: RunState, **kwargs) -> None:
        self.state = state
        super().__init__(fragment, *args, input_folder=Path(input_folder), must_load=False, **kwargs)

    def compute(self, op_input, op_output, context) -> None:
        files = list_files(self.input_path)
        datasets, skipped = read_headers(files)
        for s in skipped:
            _log.info("skipped %s", s)
        self.state.skipped.extend(skipped)
        if not datasets:
            self.state.fail(InvalidInputError(f"no readable DICOM file among {len(files)} file(s)", self.input_path))
            return
        op_output.emit(self._group(datasets), self.output_name)

    def _group(self, datasets: list) -> list[DICOMStudy]:
        studies: dict[str, DICOMStudy] = {}
        series: dict[str, DICOMSeries] = {}
        for ds in datasets:
            study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            if study_uid not in studies:
                studies[study_uid] = DICOMStudy(study_uid)
                self.populate_study_attributes(studies[study_uid], ds)
            if series_uid not in series:
                series[series_uid] = DICOMSeries(series_uid)
                self.populate_series_attributes(series[series_uid], ds)
                studies[study_uid].add_series(series[series_uid])
            series[series_uid].add_sop_instance(ds)
        return list(studies.values())


def ultrasound_series_selector(fragment: Fragment, **kwargs) -> DICOMSeriesSelectorOperator:
    """The SDK's series selector with the ultrasound rules, keeping every matching series of every study."""
    return DICOMSeriesSelectorOperator(fragment, rules=US_SELECTION_RULES, all_matched=True, **kwargs)


class UltrasoundBundleInferenceOperator(Operator):
    """Runs every bundle on every ultrasound instance of the selected series; output ``instance_results``.

    An instance that the readers cannot decode is skipped and named; the run fails only when the selection
    is empty (no ultrasound) or no instance could be read.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        runners: list[BundleRunner],
        state: RunState,
        input_folder: Path,
        max_overlay_frames: int = 16,
        **kwargs,
    ) -> None:
        self.runners = runners
        self.max_overlay_frames = max_overlay_frames
        self.state = state
        self.input_folder = Path(input_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(STUDIES)
        spec.input(SELECTED)
        spec.output(RESULTS)

    def compute(self, op_input, op_output, context) -> None:
        studies: list[DICOMStudy] = op_input.receive(STUDIES)
        selections: list[StudySelectedSeries] = op_input.receive(SELECTED) or []
        chosen = {s.series.SeriesInstanceUID for sel in selections for s in sel.selected_series}
        all_series = [s for study in studies for s in study.get_all_series()]
        for s in all_series:
            if s.SeriesInstanceUID not in chosen:
                self.state.ignored.append(
                    {"series_instance_uid": s.SeriesInstanceUID, "cause": f"modality {s.Modality}"}
                )
        instances = [
            sop.get_native_sop_instance()
            for s in all_series
            if s.SeriesInstanceUID in chosen
            for sop in s.get_sop_instances()
        ]
        usable = [ds for ds in instances if is_ultrasound_image(ds)]
        if not usable:
            modalities = sorted({str(s.Modality) for s in all_series})
            self.state.fail(
                NotUltrasoundError(
                    f"no ultrasound image among {len(all_series)} series (modalities: {', '.join(modalities)})",
                    self.input_folder,
                )
            )
            return
        results = []
        for ds in usable:
            try:
                result = self._run(ds)
            except BundleError as e:  # the bundle, not the file: every instance would fail the same way
                self.state.fail(e)
                return
            if result is not None:
                results.append(result)
        if not results:
            self.state.fail(InvalidInputError("no ultrasound instance could be read", self.input_folder))
            return
        self.state.instances.extend(results)
        op_output.emit(results, RESULTS)

    def _run(self, ds) -> InstanceResult | None:
        path = str(ds.filename)
        try:
            result = None
            for runner in self.runners:
                image = runner.load(path)
                preds = runner.predict(image)
                if result is None:
                    result = InstanceResult(path, ds, preview_frames(image, self.max_overlay_frames))
                if runner.task == TASK_CLASSIFICATION:
                    result.classifications[runner.name] = (runner.class_names, _stack(p.probabilities for p in preds))
                else:
                    labels = runner.segment_names or _default_labels(preds)
                    result.segmentations[runner.name] = (labels, _stack(p.mask for p in preds))
            return result
        except BundleError:
            raise
        except UltraMAEError as e:
            skipped = SkippedFile(path, e.cause)
            _log.info("skipped %s", skipped)
            self.state.skipped.append(skipped)
            return None


def _stack(arrays) -> np.ndarray:
    return np.stack(list(arrays))


def _default_labels(preds) -> list[str]:
    top = max((int(p.mask.max()) for p in preds), default=1)
    return ["Foreground"] if top <= 1 else [f"Label {k}" for k in range(1, top + 1)]


class _WriterOperator(Operator):
    """A writer: receives ``instance_results`` and writes into the staging folder."""

    def __init__(self, fragment: Fragment, *args, stage: OutputStage, **kwargs) -> None:
        self.stage = stage
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(RESULTS)

    def compute(self, op_input, op_output, context) -> None:
        for instance in op_input.receive(RESULTS):
            self.write(instance)

    def write(self, instance: InstanceResult) -> None:
        raise NotImplementedError


class DicomSegWriterOperator(_WriterOperator):
    """One DICOM SEG per instance and segmentation bundle: ``<SOPInstanceUID>/<bundle>/seg.dcm``."""

    def write(self, instance: InstanceResult) -> None:
        for bundle, (labels, maps) in instance.segmentations.items():
            seg = build_segmentation(instance.header, maps, labels, algorithm=f"UltraMAE {bundle}")
            path = write_segmentation(seg, self.stage.path(instance.sop_instance_uid, bundle, "seg.dcm"))
            instance.outputs.append(str(path.relative_to(self.stage.root)))


class ClassificationWriterOperator(_WriterOperator):
    """The classification result per instance and bundle: ``<SOPInstanceUID>/<bundle>/classification.json``,
    and with ``sr`` a DICOM Comprehensive SR of it beside (``classification_sr.dcm``)."""

    def __init__(self, fragment: Fragment, *args, stage: OutputStage, sr: bool = True, **kwargs) -> None:
        self.sr = sr
        super().__init__(fragment, *args, stage=stage, **kwargs)

    def write(self, instance: InstanceResult) -> None:
        for bundle in instance.classifications:
            path = self.stage.path(instance.sop_instance_uid, bundle, "classification.json")
            record = classification_record(instance, bundle)
            path.write_text(json.dumps(record, indent=2) + "\n")
            instance.outputs.append(str(path.relative_to(self.stage.root)))
            if self.sr:
                sr = write_classification_sr(instance.header, record, path.with_name("classification_sr.dcm"))
                instance.outputs.append(str(sr.relative_to(self.stage.root)))


class OverlayWriterOperator(_WriterOperator):
    """PNG overlays of the segmentation: ``<SOPInstanceUID>/<bundle>/overlay/frame_NNNN.png``."""

    def write(self, instance: InstanceResult) -> None:
        for bundle in instance.segmentations:
            folder = self.stage.path(instance.sop_instance_uid, bundle, "overlay", "x").parent
            for path in write_overlays(instance, bundle, folder):
                instance.outputs.append(str(path.relative_to(self.stage.root)))
