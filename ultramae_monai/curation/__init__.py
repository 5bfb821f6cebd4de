"""Curation: turning a tree of ultrasound files into a clean, de-identified pretraining set."""

from ultramae_monai.curation.options import CurationOptions, load_options
from ultramae_monai.curation.pipeline import CurationReport, run_curation
from ultramae_monai.data.manifest import (
    ManifestRecord,
    append_records,
    iter_manifest,
    read_manifest,
    write_manifest,
)

__all__ = [
    "CurationOptions",
    "CurationReport",
    "ManifestRecord",
    "append_records",
    "iter_manifest",
    "load_options",
    "read_manifest",
    "run_curation",
    "write_manifest",
]
