"""ultramae_monai.networks: the UltraMAE tubelet ViT, its masking, targets and loss, downstream heads, weight interop."""

from ultramae_monai.networks.heads import AttentivePooler, UltraMAEClassifier, UltraMAESegmenter
from ultramae_monai.networks.interop import (
    IMAGENET_INTENSITY,
    LoadReport,
    fold_intensity,
    load_mae_weights,
    load_monai_mae_weights,
    mae_state_dict,
    monai_vit_state_dict,
    to_monai_unetr,
    to_monai_vit,
)
from ultramae_monai.networks.layout import patchify, unpatchify
from ultramae_monai.networks.masking import MaskSample, sample_mask, token_confidence, token_validity
from ultramae_monai.networks.pos_embed import SpatioTemporalPosEmbed, sincos_1d, sincos_2d
from ultramae_monai.networks.presets import ENCODER_PRESETS, PRETRAINING_RECIPES
from ultramae_monai.networks.pretrained import encoder_meta, load_encoder_state, load_pretrained_encoder
from ultramae_monai.networks.segmentation import UltraMAEUNETR, segmentation_network
from ultramae_monai.networks.tubelet_vit import TubeletEmbed, UltraMAEEncoder
from ultramae_monai.networks.ultramae import TARGETS, UltraMAE, make_target, masked_mse, normalize_patches

__all__ = [
    "ENCODER_PRESETS",
    "IMAGENET_INTENSITY",
    "PRETRAINING_RECIPES",
    "TARGETS",
    "AttentivePooler",
    "LoadReport",
    "MaskSample",
    "SpatioTemporalPosEmbed",
    "TubeletEmbed",
    "UltraMAE",
    "UltraMAEClassifier",
    "UltraMAEEncoder",
    "UltraMAESegmenter",
    "UltraMAEUNETR",
    "encoder_meta",
    "fold_intensity",
    "load_encoder_state",
    "load_mae_weights",
    "load_monai_mae_weights",
    "load_pretrained_encoder",
    "mae_state_dict",
    "make_target",
    "masked_mse",
    "monai_vit_state_dict",
    "normalize_patches",
    "patchify",
    "sample_mask",
    "segmentation_network",
    "sincos_1d",
    "sincos_2d",
    "to_monai_unetr",
    "to_monai_vit",
    "token_confidence",
    "token_validity",
    "unpatchify",
]
