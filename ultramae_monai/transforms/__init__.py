"""ultramae_monai.transforms."""

from ultramae_monai.transforms.confidence_map import UltrasoundConfidenceMap, UltrasoundConfidenceMapd
from ultramae_monai.transforms.drop_meta import DropMetad
from ultramae_monai.transforms.fill_outline import FillOutlined
from ultramae_monai.transforms.fov_detect import detect_fov_mask, fov_box, regions_mask
from ultramae_monai.transforms.frames_first import FramesFirstd
from ultramae_monai.transforms.random_resized_crop import RandResizedCrop, RandResizedCropd, random_resized_box
from ultramae_monai.transforms.resize_frames import ResizeFramesd
from ultramae_monai.transforms.restore_geometry import RestoreGeometryd, restore_geometry
from ultramae_monai.transforms.scan_region import (
    REGIONS_META_KEY,
    ScanRegion,
    ScanRegiond,
    apply_fov,
    regions_from_meta,
)

__all__ = [
    "REGIONS_META_KEY",
    "DropMetad",
    "FillOutlined",
    "FramesFirstd",
    "RandResizedCrop",
    "RandResizedCropd",
    "ResizeFramesd",
    "RestoreGeometryd",
    "ScanRegion",
    "ScanRegiond",
    "UltrasoundConfidenceMap",
    "UltrasoundConfidenceMapd",
    "apply_fov",
    "detect_fov_mask",
    "fov_box",
    "random_resized_box",
    "regions_from_meta",
    "regions_mask",
    "restore_geometry",
]
