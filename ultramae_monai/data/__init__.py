"""Readers for ultrasound files, the array convention they all follow, the manifest and the datasets on it."""

from ultramae_monai.data.batch_sampler import KindBatchSampler
from ultramae_monai.data.convention import (
    KIND_CINE,
    KIND_STILL,
    KIND_VOLUME,
    LAYOUTS,
    MetaKeys,
    kind_of,
    make_metatensor,
    spatial_affine,
)
from ultramae_monai.data.dicom_reader import UltrasoundDicomReader, read_dicom
from ultramae_monai.data.image_reader import UltrasoundImageReader, read_image
from ultramae_monai.data.labelled import detect_layout, inference_items
from ultramae_monai.data.load import SUPPORTED_SUFFIXES, UltrasoundReader, load_ultrasound, source_type
from ultramae_monai.data.manifest import ManifestRecord, read_manifest, write_manifest
from ultramae_monai.data.manifest_dataset import ManifestDataset
from ultramae_monai.data.mask_writer import SaveMaskd, write_mask
from ultramae_monai.data.splits import finetune_datalists, grouped_split, label_fraction_subset
from ultramae_monai.data.video_reader import VIDEO_SUFFIXES, UltrasoundVideoReader, probe_video, read_video
from ultramae_monai.data.volume_reader import UltrasoundVolumeReader, read_volume

__all__ = [
    "KIND_CINE",
    "KIND_STILL",
    "KIND_VOLUME",
    "LAYOUTS",
    "SUPPORTED_SUFFIXES",
    "VIDEO_SUFFIXES",
    "KindBatchSampler",
    "ManifestDataset",
    "ManifestRecord",
    "MetaKeys",
    "SaveMaskd",
    "UltrasoundDicomReader",
    "UltrasoundImageReader",
    "UltrasoundReader",
    "UltrasoundVideoReader",
    "UltrasoundVolumeReader",
    "detect_layout",
    "finetune_datalists",
    "grouped_split",
    "inference_items",
    "kind_of",
    "label_fraction_subset",
    "load_ultrasound",
    "make_metatensor",
    "probe_video",
    "read_dicom",
    "read_image",
    "read_manifest",
    "read_video",
    "read_volume",
    "source_type",
    "spatial_affine",
    "write_manifest",
    "write_mask",
]
