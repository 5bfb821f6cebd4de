"""The label app's datastore: MONAI Label's local datastore that checks what it is given.

An image must be readable ultrasound (a DICOM must say ``US``); a label must have its image's size, and is
stored as a PNG mask of label values for a still (a NIfTI for a cine), so the training data list always pairs
an image with a mask the bundle's loader reads in the same orientation. A refusal is an ``UltraMAEError``
naming the file and the cause, turned into an HTTP 4xx by :func:`~ultramae_monai.label.http_errors.as_http`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from monailabel.datastore.local import LocalDatastore

from ultramae_monai.data.load import load_ultrasound
from ultramae_monai.label.http_errors import as_http
from ultramae_monai.label.infer import write_mask
from ultramae_monai.label.validation import check_ultrasound_file, image_size, read_label_mask

__all__ = ["ULTRASOUND_EXTENSIONS", "UltrasoundDatastore"]

ULTRASOUND_EXTENSIONS = (
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.bmp",
    "*.tif",
    "*.tiff",
    "*.dcm",
    "*.mp4",
    "*.avi",
    "*.mov",
    "*.nii.gz",
    "*.nii",
)


class UltrasoundDatastore(LocalDatastore):
    """A local datastore of 2D ultrasound images and cines whose labels are checked against their images."""

    def __init__(self, datastore_path: str, **kwargs: Any) -> None:
        kwargs.setdefault("extensions", ULTRASOUND_EXTENSIONS)
        super().__init__(datastore_path, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        with as_http():
            check_ultrasound_file(image_filename)
            load_ultrasound(image_filename, max_frames=1)  # decodable (one frame of a cine is enough to know)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        with as_http(not_found=not image or not os.path.exists(image), what=f"image {image_id!r}"):
            size = image_size(image)
            mask = read_label_mask(label_filename, size)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_mask(mask, "still" if len(size) == 2 else "cine", out_dir=tmp)
            return super().save_label(image_id, path, label_tag, label_info)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Image / label pairs of the final labels of 2D stills (what the 2D segmentation bundle trains on)."""
        return [d for d in super().datalist(full_path) if str(d.get("label", "")).lower().endswith(".png")]
