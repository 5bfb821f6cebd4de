"""3D ultrasound volumes (NIfTI, NRRD, MHA/MHD) as ``(C, H, W, D)`` ``MetaTensor``s, reoriented to RAS.

Why reorient: 3D ultrasound comes in whatever voxel order the scanner or converter chose (the RESECT volumes are
RAS and LIP), and a network sees voxel order, not the affine. Every volume is therefore turned, by axis
permutations and flips only (no resampling, voxel values unchanged), to the orientation closest to RAS+ (as
``nibabel.as_closest_canonical`` and MONAI's ``Orientation(axcodes="RAS")`` do), and the affine is updated so
that voxel-to-world stays exact. NRRD/MHA (read by ITK, which works in LPS and returns ``(z, y, x)`` arrays) get
the same treatment, so a volume saved by one tool and read back through another lands on the same grid.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
from nibabel import orientations

from ultramae_monai.data.convention import KIND_VOLUME, MetaKeys, make_metatensor
from ultramae_monai.data.reader_base import FunctionImageReader, channels_first, existing_file, suffix_of
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["VOLUME_SUFFIXES", "UltrasoundVolumeReader", "read_volume", "to_ras"]

VOLUME_SUFFIXES = ("nii", "nii.gz", "nrrd", "nhdr", "mha", "mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION = "orientation"  # meta key: the axis codes of the returned array ("RAS")
SOURCE_ORIENTATION = "source_orientation"  # meta key: the axis codes of the file's voxel order


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the three spatial axes of ``array`` (spatial-first) to the closest RAS+ orientation.

    Returns the reoriented array and its affine (voxel index -> RAS mm), exact: only whole-voxel moves.
    """
    current = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(("R", "A", "S")))
    out = orientations.apply_orientation(array, transform)
    return out, affine @ orientations.inv_ornt_aff(transform, array.shape[:3])


def _read_nifti(p: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(p))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)  # dataobj applies scl_slope


def _read_itk(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """ITK image -> ``(x, y, z)`` array and a RAS voxel-to-world affine (ITK is LPS, arrays ``(z, y, x)``)."""
    import itk  # imported here: ITK's lazy module loading costs seconds, only NRRD/MHA need it

    img = itk.imread(str(p))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{img.GetNumberOfComponentsPerPixel()}-component voxels: only scalar volumes", p)
    array = np.asarray(itk.array_from_image(img))
    nd = array.ndim
    array = array.transpose(tuple(range(nd))[::-1])  # (z, y, x) -> (x, y, z)
    direction = np.asarray(itk.array_from_matrix(img.GetDirection()), dtype=np.float64)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:nd, :nd] = direction * spacing[None, :]
    lps[:nd, 3] = origin
    return array, _LPS_TO_RAS @ lps


def read_volume(path: str | PathLike, *, color: bool = False) -> MetaTensor:
    """Read a NIfTI/NRRD/MHA/MHD volume as ``(C, H, W, D)`` in the closest-to-RAS voxel order, affine in meta.

    ``spacing`` is mm per returned axis; a 2D file becomes ``D = 1``; a 4D file with one volume is squeezed.
    ``color=True`` repeats the grey channel three times (volumes are grey), so ``color`` means the same for
    every reader.

    Raises:
        UnreadableFileError: missing, empty, truncated, corrupt or unsupported file.
        InvalidInputError: NaN/Inf voxels, several volumes (4D), or vector voxels.
    """
    p = existing_file(path)
    suffix = suffix_of(p)
    try:
        array, affine = _read_nifti(p) if suffix in ("nii", "nii.gz") else _read_itk(p)
    except (InvalidInputError, UnreadableFileError):
        raise
    except Exception as e:  # nibabel/ITK/gzip/zlib errors on truncated or corrupt files
        raise UnreadableFileError(f"cannot read volume ({type(e).__name__}: {e})", p) from e
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InvalidInputError(f"expected a 3D volume, got shape {tuple(array.shape)}", p)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(f"volume holds {int((~np.isfinite(array)).sum())} NaN or Inf voxels", p)
    source_codes = "".join(nib.aff2axcodes(affine))
    array, affine = to_ras(array, affine)
    meta = {
        "filename_or_obj": str(p),
        MetaKeys.SOURCE: "volume",
        MetaKeys.MODALITY: "US",
        MetaKeys.PHOTOMETRIC: "MONOCHROME2",
        MetaKeys.COLOR: "rgb" if color else "grey",
        MetaKeys.SPACING: [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        ORIENTATION: "".join(nib.aff2axcodes(affine)),
        SOURCE_ORIENTATION: source_codes,
    }
    return make_metatensor(channels_first(array, False, color), KIND_VOLUME, meta, affine=affine)


class UltrasoundVolumeReader(FunctionImageReader):
    """MONAI reader for 3D ultrasound: ``LoadImage(reader=UltrasoundVolumeReader())`` gives RAS ``(C, H, W, D)``."""

    suffixes = VOLUME_SUFFIXES
    read_fn = staticmethod(read_volume)

    def __init__(self, color: bool = False) -> None:
        super().__init__(color=color)
