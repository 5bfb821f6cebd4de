"""DICOM SEG of an ultrasound still or cine, referencing its source instance (and, for a cine, each source frame).

A still gets highdicom's ``Segmentation`` as it is. highdicom refuses a multi-frame source without a frame of
reference (every ultrasound cine: there is no patient coordinate system to place frames in), so a cine's SEG is
made of one highdicom SEG per source frame, merged: each SEG frame's ``DerivationImageSequence`` names the cine and
its ``ReferencedFrameNumber``, and the frames are indexed by segment and ``TemporalPositionIndex`` (the source frame
number), so ``highdicom.seg.Segmentation.get_pixels_by_source_frame`` maps them back frame by frame.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

import ultramae_monai
from ultramae_monai.deploy.dicom_input import source_header
from ultramae_monai.errors import InvalidInputError

__all__ = ["SEG_SERIES_NUMBER", "build_segmentation", "segment_descriptions", "write_segmentation"]

SEG_SERIES_NUMBER = 901  # series number of the derived SEG series (the source's number is kept in its references)
_TEMPORAL_POSITION_INDEX = Tag(0x0020, 0x9128)
_FRAME_CONTENT_SEQUENCE = Tag(0x0020, 0x9111)


def segment_descriptions(labels: Sequence[str], algorithm: str) -> list[hd.seg.SegmentDescription]:
    """One automatic segment per foreground label (label ``k`` of the map is segment ``k``)."""
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm[:64], version=ultramae_monai.__version__, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=str(label)[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
        )
        for k, label in enumerate(labels, start=1)
    ]


def _single(
    source: Dataset, label_map: np.ndarray, descriptions: list, series_uid: str, sop_uid: str
) -> hd.seg.Segmentation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's advice on the source's person-name format
        return _segmentation(source, label_map, descriptions, series_uid, sop_uid)


def _segmentation(
    source: Dataset, label_map: np.ndarray, descriptions: list, series_uid: str, sop_uid: str
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="UltraMAE-MONAI",
        manufacturer_model_name="ultramae deploy",
        software_versions=ultramae_monai.__version__,
        device_serial_number="0",
        series_description="UltraMAE segmentation",
        omit_empty_frames=False,
    )


def _frame_proxy(source: Dataset) -> Dataset:
    """The cine's header as a single-frame image (no frame of reference) for highdicom."""
    proxy = source_header(source, ("NumberOfFrames", "FrameIncrementPointer", "FrameOfReferenceUID"))
    proxy.SOPClassUID = hd.UID("1.2.840.10008.5.1.4.1.1.6.1")  # Ultrasound Image Storage: one frame
    return proxy


def _merge_cine(source: Dataset, label_maps: np.ndarray, descriptions: list, series_uid: str) -> Dataset:
    """One SEG frame per (source frame, segment), each naming its source frame."""
    proxy = _frame_proxy(source)
    sop_uid = hd.UID()
    parts = [_single(proxy, label_maps[t], descriptions, series_uid, sop_uid) for t in range(label_maps.shape[0])]
    seg = parts[0]
    frames, pixels = [], []
    shape = label_maps.shape[1:]
    for t, part in enumerate(parts, start=1):
        for item, plane in zip(
            part.PerFrameFunctionalGroupsSequence, part.pixel_array.reshape(-1, *shape), strict=True
        ):
            item = copy.deepcopy(item)
            for derivation in item.DerivationImageSequence:
                for ref in derivation.SourceImageSequence:
                    ref.ReferencedSOPClassUID = source.SOPClassUID
                    ref.ReferencedFrameNumber = t
            content = item[_FRAME_CONTENT_SEQUENCE].value[0]
            index = content["DimensionIndexValues"]
            segment = int(index.value if index.VM == 1 else index.value[0])
            content.DimensionIndexValues = [segment, t]
            content.TemporalPositionIndex = t
            frames.append(item)
            pixels.append(plane)
    temporal = Dataset()
    temporal.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    temporal.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    temporal.FunctionalGroupPointer = _FRAME_CONTENT_SEQUENCE
    temporal.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence.append(temporal)
    seg.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    seg.NumberOfFrames = len(frames)
    for series in seg.ReferencedSeriesSequence:
        for ref in series.ReferencedInstanceSequence:
            ref.ReferencedSOPClassUID = source.SOPClassUID
    seg.PixelData = pack_bits(np.stack(pixels).astype(np.uint8))
    return seg


def build_segmentation(
    source: Dataset, label_maps: np.ndarray, labels: Sequence[str], algorithm: str = "UltraMAE"
) -> Dataset:
    """A DICOM SEG of ``label_maps`` (``(T, H, W)`` integers, 0 = background, ``k`` = ``labels[k-1]``).

    Args:
        source: the source instance's dataset (pixel data not needed).
        label_maps: one map per source frame, in the source's rows and columns.
        labels: foreground segment names.
        algorithm: the algorithm name written in the segment descriptions.

    Raises:
        InvalidInputError: maps whose count or size does not match the source.
    """
    maps = np.asarray(label_maps)
    n = int(source.get("NumberOfFrames", 1) or 1)
    if maps.ndim != 3 or maps.shape != (n, int(source.Rows), int(source.Columns)):
        raise InvalidInputError(
            f"{maps.shape} label maps for a source of {n} frame(s) of {source.Rows}x{source.Columns}",
            getattr(source, "filename", None),
        )
    descriptions = segment_descriptions(labels, algorithm)
    maps = np.where(maps <= len(labels), maps, 0).astype(np.uint8)
    if n == 1:
        return _single(source_header(source), maps[0], descriptions, hd.UID(), hd.UID())
    return _merge_cine(source, maps, descriptions, hd.UID())


def write_segmentation(seg: Dataset, path: str | Path) -> Path:
    """Save the SEG (explicit VR little endian, as highdicom made it)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out, enforce_file_format=True)
    pydicom.dcmread(out, stop_before_pixels=True)  # what we wrote parses: fail here, not at the PACS
    return out
