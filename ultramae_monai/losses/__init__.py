"""ultramae_monai.losses: masked-reconstruction targets and losses."""

from ultramae_monai.losses.masked_recon import MaskedReconstructionLoss, masked_mse
from ultramae_monai.losses.targets import TARGETS, make_target, normalize_patches, patchify, unpatchify

__all__ = [
    "TARGETS",
    "MaskedReconstructionLoss",
    "make_target",
    "masked_mse",
    "normalize_patches",
    "patchify",
    "unpatchify",
]
