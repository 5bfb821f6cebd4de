"""Masking: exact per-sample ratio, tubes, FOV exclusion, confidence weighting, determinism."""

from __future__ import annotations

import pytest
import torch

from ultramae_monai.errors import InvalidInputError
from ultramae_monai.networks import sample_mask, token_validity


@pytest.mark.parametrize("ratio", [0.75, 0.9, 0.95])
def test_exact_ratio_per_sample(ratio):
    m = sample_mask(16, (1, 14, 14), ratio, generator=torch.Generator().manual_seed(0))
    keep = round((1 - ratio) * 196)
    assert m.ids_keep.shape == (16, keep)
    assert (m.mask.sum(1) == 196 - keep).all()
    # kept tokens are exactly the unmasked ones, and ids_restore inverts the shuffle
    assert (m.mask.gather(1, m.ids_keep) == 0).all()
    assert torch.equal(m.ids_restore.argsort(1)[:, :keep], m.ids_keep)
    # different samples get different masks
    assert not torch.equal(m.mask[0], m.mask[1])


def test_tube_masking_repeats_spatial_pattern():
    m = sample_mask(4, (4, 6, 6), 0.9, tube=True, generator=torch.Generator().manual_seed(1))
    per_slot = m.mask.reshape(4, 4, 36)
    assert (per_slot == per_slot[:, :1]).all()
    assert (m.mask.sum(1) == 4 * (36 - round(0.1 * 36))).all()


def test_fov_tokens_never_kept_nor_reconstructed():
    fov = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    fov[:, :, 16:, 8:56] = True  # a rectangular scan region: 6 x 6 tokens of 8 px (2 rows, 1 col each side out)
    valid = token_validity(fov, (1, 8, 8))
    assert valid.sum(1).tolist() == [36, 36, 36]
    m = sample_mask(3, (1, 8, 8), 0.75, valid=valid, generator=torch.Generator().manual_seed(2))
    kept = torch.zeros_like(m.mask).scatter_(1, m.ids_keep, 1.0)
    assert (kept[~valid] == 0).all() and (m.mask[~valid] == 0).all()
    assert (m.mask.sum(1) == 36 - 9).all()  # exact ratio over the FOV tokens


def test_empty_fov_raises():
    valid = torch.zeros(1, 16, dtype=torch.bool)
    with pytest.raises(InvalidInputError, match="field of view"):
        sample_mask(1, (1, 4, 4), 0.5, valid=valid)


def test_confidence_weighting_prefers_confident_tokens():
    weights = torch.full((1, 100), 1e-3)
    weights[:, :10] = 1.0  # ten confident tokens
    g = torch.Generator().manual_seed(3)
    hits = sum(
        int((sample_mask(1, (1, 10, 10), 0.9, weights=weights, generator=g).ids_keep < 10).sum()) for _ in range(50)
    )
    assert hits > 0.9 * 50 * 10  # almost always the confident ones are the visible ones
    uniform_hits = sum(int((sample_mask(1, (1, 10, 10), 0.9, generator=g).ids_keep < 10).sum()) for _ in range(50))
    assert uniform_hits < 0.3 * 50 * 10


def test_deterministic_under_generator():
    a = sample_mask(4, (2, 7, 7), 0.9, tube=True, generator=torch.Generator().manual_seed(7))
    b = sample_mask(4, (2, 7, 7), 0.9, tube=True, generator=torch.Generator().manual_seed(7))
    c = sample_mask(4, (2, 7, 7), 0.9, tube=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.ids_keep, b.ids_keep) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.ids_keep, c.ids_keep)
