"""Masking: exact per-sample ratio, tubes, FOV exclusion, confidence weighting, determinism."""

from __future__ import annotations

import pytest
import torch

from ultramae_monai.networks import sample_mask, token_validity
from ultramae_monai.networks.masking import visible_count


@pytest.mark.parametrize("ratio", [0.75, 0.9, 0.95])
def test_exact_ratio_per_sample(ratio):
    m = sample_mask(16, (1, 14, 14), ratio, generator=torch.Generator().manual_seed(0))
    keep = int(196 * (1 - ratio))  # MAE's len_keep: 19 at 0.9 (round would keep 20)
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
    assert (m.mask.sum(1) == 4 * (36 - int(36 * 0.1))).all()


def test_fov_tokens_never_kept_nor_reconstructed():
    fov = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    fov[:, :, 16:, 8:56] = True  # a rectangular scan region: 6 x 6 tokens of 8 px (2 rows, 1 col each side out)
    valid = token_validity(fov, (1, 8, 8))
    assert valid.sum(1).tolist() == [36, 36, 36]
    m = sample_mask(3, (1, 8, 8), 0.75, valid=valid, generator=torch.Generator().manual_seed(2))
    kept = torch.zeros_like(m.mask).scatter_(1, m.ids_keep, 1.0)
    assert (kept[~valid] == 0).all() and (m.mask[~valid] == 0).all()
    assert (m.mask.sum(1) == 36 - 9).all()  # exact ratio over the FOV tokens


def test_visible_count_is_mae_len_keep():
    assert [visible_count(196, r) for r in (0.75, 0.9, 0.95)] == [49, 19, 9]  # int(L * (1 - r)), never rounded up


def test_empty_fov_keeps_one_token_and_reconstructs_nothing():
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1] = False  # a crop of pure background
    m = sample_mask(2, (1, 4, 4), 0.5, valid=valid, generator=torch.Generator().manual_seed(0))
    assert m.ids_keep.shape == (2, 8) and m.mask[1].sum() == 0 and m.mask[0].sum() == 8
    assert m.keep_valid[0].all() and m.keep_valid[1].tolist() == [True] + [False] * 7


@pytest.mark.parametrize("tube", [False, True])
def test_ratio_holds_per_sample_with_a_wide_and_a_narrow_fan(tube):
    """Each sample keeps int(N_i (1 - r)) of its own FOV tokens, not the batch minimum's share."""
    fov = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    fov[0] = True  # wide: all 64 tokens
    fov[1, :, :, 24:40] = True  # narrow: 2 token columns = 16 tokens
    grid = (2, 8, 8) if tube else (1, 8, 8)
    valid = token_validity(fov, grid)
    m = sample_mask(2, grid, 0.75, valid=valid, tube=tube, generator=torch.Generator().manual_seed(4))
    slots = grid[0] if tube else 1
    for i, n_fov in enumerate((64, 16)):
        visible = int(m.keep_valid[i].sum()) if m.keep_valid is not None else m.ids_keep.shape[1]
        assert visible == slots * int(n_fov * 0.25)
        ratio = m.mask[i].sum() / (slots * n_fov)
        assert abs(float(ratio) - 0.75) <= 1 / n_fov  # within one token
        kept = m.ids_keep[i][m.keep_valid[i]]
        assert valid[i, kept].all()  # nothing outside the FOV is shown


def test_confidence_weighting_prefers_confident_tokens():
    weights = torch.full((1, 100), 1e-3)
    weights[:, :10] = 1.0  # ten confident tokens
    g = torch.Generator().manual_seed(3)
    hits = sum(
        int((sample_mask(1, (1, 10, 10), 0.9, weights=weights, generator=g).ids_keep < 10).sum()) for _ in range(50)
    )
    keep = visible_count(100, 0.9)  # 9: int(100 * (1 - 0.9)) = int(9.99...), exactly as MAE
    assert hits > 0.9 * 50 * keep  # almost always the confident ones are the visible ones
    uniform_hits = sum(int((sample_mask(1, (1, 10, 10), 0.9, generator=g).ids_keep < 10).sum()) for _ in range(50))
    assert uniform_hits < 0.3 * 50 * keep


def test_deterministic_under_generator():
    a = sample_mask(4, (2, 7, 7), 0.9, tube=True, generator=torch.Generator().manual_seed(7))
    b = sample_mask(4, (2, 7, 7), 0.9, tube=True, generator=torch.Generator().manual_seed(7))
    c = sample_mask(4, (2, 7, 7), 0.9, tube=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.ids_keep, b.ids_keep) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.ids_keep, c.ids_keep)
