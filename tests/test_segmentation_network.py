"""UNETR-style and light decoders on the UltraMAE encoder: shapes, token-to-map layout, pretrained encoder keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ultramae_monai.networks import UltraMAEEncoder, segmentation_network
from ultramae_monai.networks.layout import patchify, to_frames
from ultramae_monai.networks.segmentation import UltraMAEUNETR


@pytest.mark.parametrize("decoder", ["unetr", "light"])
@pytest.mark.parametrize(
    ("dims", "tubelet", "shape"), [(2, (2, 8, 8), (2, 1, 32, 24)), (3, (8, 8, 8), (1, 1, 32, 24, 16))]
)
def test_logits_in_the_input_layout(decoder: str, dims: int, tubelet: tuple, shape: tuple) -> None:
    torch.manual_seed(0)
    net = segmentation_network(UltraMAEEncoder.from_preset("micro", tubelet=tubelet), 3, decoder, spatial_dims=dims)
    y = net(torch.rand(shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    assert all(k.startswith("encoder.") for k in net.state_dict() if "patch_embed" in k)


@pytest.mark.parametrize(
    ("dims", "tubelet", "shape"), [(2, (2, 4, 4), (1, 1, 16, 12)), (3, (4, 4, 4), (1, 1, 16, 12, 8))]
)
def test_token_maps_follow_the_input_grid(dims: int, tubelet: tuple, shape: tuple) -> None:
    """Token means folded by the decoder's reshape equal the input average-pooled over each patch."""
    net = UltraMAEUNETR(UltraMAEEncoder.from_preset("micro", tubelet=tubelet), 2, spatial_dims=dims)
    x = torch.rand(shape)
    kind = "still" if dims == 2 else "volume"
    frames = to_frames(x, kind, tubelet[0])
    tokens = patchify(frames, tubelet).mean(dim=-1, keepdim=True)  # (B, N, 1) in the encoder's token order
    grid = net.encoder.grid(x, kind)
    pooled = F.avg_pool2d(x, tubelet[1]) if dims == 2 else F.avg_pool3d(x, tubelet[1])
    torch.testing.assert_close(net._as_map(tokens, grid), pooled)


def test_unetr_needs_power_of_two_patches() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        UltraMAEUNETR(UltraMAEEncoder.from_preset("micro", tubelet=(2, 12, 12)), 2)
    with pytest.raises(ValueError, match="cubic"):
        UltraMAEUNETR(UltraMAEEncoder.from_preset("micro", tubelet=(2, 8, 8)), 2, spatial_dims=3)
