"""Curation: turning a tree of ultrasound files into a clean, de-identified pretraining set."""

from ultramae_monai.curation.manifest import (
    ManifestRecord,
    append_records,
    iter_manifest,
    read_manifest,
    write_manifest,
)

__all__ = ["ManifestRecord", "append_records", "iter_manifest", "read_manifest", "write_manifest"]
