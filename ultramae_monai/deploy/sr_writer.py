"""The classification result as a DICOM Comprehensive SR (optional beside the JSON): the finding and each class's
probability, with the source instance as evidence, so a PACS viewer shows the result next to the images.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import ultramae_monai
from ultramae_monai.deploy.dicom_input import source_header

__all__ = ["SR_SERIES_NUMBER", "build_classification_sr", "write_classification_sr"]

SR_SERIES_NUMBER = 902
_LOCAL_SCHEME = "99ULTRAMAE"  # a local coding scheme (PS3.16 8.2: designators starting with "99") for class names
_REPORT = hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report")
_PROBABILITY_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")


def build_classification_sr(source: Dataset, record: dict[str, Any]) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR of one classification record (``report_writers.classification_record``)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [
        hd.sr.TextContentItem(name=codes.DCM.Finding, value=str(record["label"])[:1024], relationship_type=contains)
    ]
    for i, (name, p) in enumerate(record["probabilities"].items()):
        concept = hd.sr.CodedConcept(f"C{i}", _LOCAL_SCHEME, str(name)[:64])
        items.append(
            hd.sr.NumContentItem(name=concept, value=float(p), unit=_PROBABILITY_UNIT, relationship_type=contains)
        )
    items.append(
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceImageForImageProcessingOperation,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type=contains,
        )
    )
    root = hd.sr.ContainerContentItem(name=_REPORT)
    root.ContentSequence = items
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's advice on the source's person-name format
        return hd.sr.ComprehensiveSR(
            evidence=[source_header(source)],
            content=root,
            series_instance_uid=hd.UID(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="UltraMAE-MONAI",
            series_description=f"UltraMAE classification ({ultramae_monai.__version__})"[:64],
            is_complete=True,
        )


def write_classification_sr(source: Dataset, record: dict[str, Any], path: Path) -> Path:
    build_classification_sr(source, record).save_as(path, enforce_file_format=True)
    return path
