"""Tubelet ViT encoder: token counts for stills, clips and volumes; position codes; checkpointing."""

from __future__ import annotations

import pytest
import torch

from ultramae_monai.errors import InvalidInputError
from ultramae_monai.networks import UltraMAEEncoder, sincos_2d
from ultramae_monai.networks.pos_embed import SpatioTemporalPosEmbed


def _encoder(**kw) -> UltraMAEEncoder:
    torch.manual_seed(0)
    return UltraMAEEncoder.from_preset("micro", tubelet=(2, 8, 8), **kw).eval()


@pytest.mark.parametrize(
    ("shape", "kind", "tokens"),
    [
        ((2, 1, 32, 48), None, 4 * 6),  # still: one temporal slot
        ((2, 1, 6, 32, 48), None, 3 * 4 * 6),  # clip: T/t x H/p x W/p
        ((2, 1, 32, 48, 8), "volume", 4 * 4 * 6),  # volume: D/t slabs
    ],
)
def test_token_counts(shape, kind, tokens):
    enc = _encoder()
    out = enc.forward_features(torch.randn(shape), kind=kind)
    assert out.shape == (2, tokens, 64)
    assert torch.isfinite(out).all()


def test_cls_token_and_visible_tokens():
    enc = _encoder(cls_token=True)
    x = torch.randn(2, 1, 32, 32)
    ids = torch.tensor([[0, 5, 9], [3, 4, 15]])
    assert enc.forward_features(x).shape == (2, 17, 64)
    assert enc(x, ids_keep=ids).shape == (2, 4, 64)


def test_still_equals_clip_of_repeated_frames():
    """An image is the clip of its frame repeated t times (one temporal slot)."""
    enc = _encoder()
    x = torch.randn(2, 1, 32, 32)
    clip = x.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    torch.testing.assert_close(enc.forward_features(x), enc.forward_features(clip), atol=1e-5, rtol=1e-5)


def test_bad_shapes_raise():
    enc = _encoder()
    with pytest.raises(InvalidInputError, match="multiple of the tubelet"):
        enc.forward_features(torch.randn(1, 1, 30, 32))
    with pytest.raises(InvalidInputError, match="frames"):
        enc.forward_features(torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(InvalidInputError, match=r"\(B, C, H, W\)"):
        enc.forward_features(torch.randn(1, 32, 32), kind="still")


def test_position_code_is_2d_sincos_for_first_slot_and_distinct_over_time():
    pe = SpatioTemporalPosEmbed(64)
    table = pe((3, 4, 5))[0].reshape(3, 20, 64)
    torch.testing.assert_close(table[0], sincos_2d((4, 5), 64))
    assert (table[1] - table[0]).abs().amax() > 0.1
    assert (table[2] - table[1]).abs().amax() > 0.1
    # adapts to any grid, no interpolation: the larger grid's top-left block is the smaller grid's table
    big = pe((1, 8, 5))[0].reshape(8, 5, 64)
    torch.testing.assert_close(big[:4], table[0].reshape(4, 5, 64))


def test_activation_checkpointing_gives_same_gradients():
    x = torch.randn(2, 1, 4, 16, 16)
    grads = []
    for ckpt in (False, True):
        enc = _encoder(grad_checkpointing=ckpt).train()
        enc.forward_features(x).square().mean().backward()
        grads.append(enc.patch_embed.proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_keeps_the_residual_stream_in_fp32():
    """As MAE / timm: the position code is added in float32, so the residual stream stays float32 under autocast."""
    enc = _encoder()
    x = torch.randn(1, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, _ = enc.embed(x)
        out = enc.forward_features(x)
    assert tokens.dtype == torch.float32  # the patch projection ran in bf16, the sum with the code in fp32
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), enc.forward_features(x), atol=0.1, rtol=0.1)
