"""Downstream heads: classifiers (mean / attentive pooling) and the light segmentation decoder."""

from __future__ import annotations

import pytest
import torch

from ultramae_monai.networks import UltraMAEClassifier, UltraMAEEncoder, UltraMAESegmenter


def _encoder() -> UltraMAEEncoder:
    torch.manual_seed(0)
    return UltraMAEEncoder.from_preset("micro", tubelet=(2, 8, 8))


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 1, 4, 32, 32)])
def test_classifier_forward_backward(pooling, shape):
    model = UltraMAEClassifier(_encoder(), num_classes=3, pooling=pooling)
    logits = model(torch.rand(shape))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


def test_frozen_encoder_gets_no_gradient():
    model = UltraMAEClassifier(_encoder(), num_classes=2, pooling="attentive", freeze_encoder=True)
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.pool.query.grad is not None


@pytest.mark.parametrize(
    ("shape", "kind"), [((2, 1, 32, 32), None), ((1, 1, 4, 32, 32), None), ((1, 1, 32, 32, 8), "volume")]
)
def test_segmenter_forward_backward(shape, kind):
    model = UltraMAESegmenter(_encoder(), out_channels=2, decoder_dim=32, decoder_depth=1)
    x = torch.rand(shape)
    logits = model(x, kind=kind)
    assert logits.shape == (shape[0], 2, *shape[2:])
    torch.nn.functional.cross_entropy(logits, torch.zeros((shape[0], *shape[2:]), dtype=torch.long)).backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
