"""Weight interop: MONAI MaskedAutoEncoderViT in, MAE/timm layout round trip, MONAI ViT / UNETR out."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import MaskedAutoEncoderViT

from ultramae_monai.errors import UnreadableFileError
from ultramae_monai.networks import (
    IMAGENET_INTENSITY,
    UltraMAEEncoder,
    load_mae_weights,
    load_monai_mae_weights,
    mae_state_dict,
    to_monai_unetr,
    to_monai_vit,
)


def _perturb(module: torch.nn.Module, skip: str = "position_embeddings") -> None:
    """Random values everywhere, so LayerNorms and biases are tested too (not just their default init)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if skip not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _monai_encoder_output(mae: MaskedAutoEncoderViT, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """MONAI's encoder half on the given visible tokens (the part of its forward before the decoder)."""
    tokens = mae.patch_embedding(x)
    tokens = tokens[torch.arange(x.shape[0])[:, None], ids]
    tokens = torch.cat([mae.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    return mae.blocks(tokens)


@pytest.mark.parametrize("pos_embed_type", ["sincos", "learnable"])
def test_monai_mae_weights_give_identical_encoder_outputs(pos_embed_type):
    torch.manual_seed(0)
    mae = MaskedAutoEncoderViT(
        in_channels=1, img_size=(32, 48), patch_size=(8, 8), hidden_size=64, mlp_dim=128, num_layers=2,
        num_heads=4, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
        spatial_dims=2, pos_embed_type=pos_embed_type,
    ).eval()  # fmt: skip
    _perturb(mae, skip="position_embeddings" if pos_embed_type == "sincos" else "none")
    # MONAI's 2D p x p kernel becomes a t x p x p tubelet (inflated, / t): a still is one temporal slot
    enc = UltraMAEEncoder(
        in_channels=1, tubelet=(2, 8, 8), embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
        qkv_bias=False, cls_token=True, norm_eps=1e-5,
    ).eval()  # fmt: skip
    report = load_monai_mae_weights(enc, mae.state_dict(), grid_hw=(4, 6))
    assert report.missing == []
    assert len(report.matched) == len([k for k in enc.state_dict() if not k.startswith("pos_embed.")])
    assert all(k.startswith(("decoder", "mask_tokens")) or "norm_cross_attn" in k for k in report.unexpected)
    assert ("installed" in " ".join(report.notes)) == (pos_embed_type == "learnable")
    x = torch.randn(3, 1, 32, 48)
    ids = torch.stack([torch.randperm(24)[:6] for _ in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(enc(x, ids_keep=ids), _monai_encoder_output(mae, x, ids), atol=1e-5, rtol=1e-5)


def _encoder(channels: int = 1, **kw) -> UltraMAEEncoder:
    torch.manual_seed(1)
    enc = UltraMAEEncoder(
        in_channels=channels, **{"tubelet": (2, 8, 8), "embed_dim": 32, "depth": 2, "num_heads": 2, **kw}
    )
    _perturb(enc)
    return enc.eval()


def test_mae_layout_round_trip_through_a_file(tmp_path):
    enc = _encoder(cls_token=True)
    path = tmp_path / "mae.pth"
    torch.save({"model": mae_state_dict(enc, (4, 4))}, path)  # MAE checkpoints nest under "model"
    fresh = UltraMAEEncoder(in_channels=1, tubelet=(2, 8, 8), embed_dim=32, depth=2, num_heads=2, cls_token=True)
    report = load_mae_weights(fresh, path)
    assert report.missing == [] and report.unexpected == []
    for key, value in enc.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_2d_mae_checkpoint_is_inflated_and_rgb_summed_to_grey():
    rgb = _encoder(channels=3)
    sd = mae_state_dict(rgb, (4, 4), as_2d=True)  # a 2D, RGB, timm-layout checkpoint with a decoder
    assert sd["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
    sd.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 32)})
    grey = UltraMAEEncoder(in_channels=1, tubelet=(2, 8, 8), embed_dim=32, depth=2, num_heads=2).eval()
    report = load_mae_weights(grey, sd)
    assert sorted(report.unexpected) == ["decoder_embed.weight", "mask_token"]
    notes = " ".join(report.notes)
    assert "inflated" in notes and "summed over 3" in notes and "fixed 2D sin-cos" in notes
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # a grey image is R = G = B: the grey encoder reproduces the RGB one
        torch.testing.assert_close(grey.forward_features(x), rgb.forward_features(x.expand(-1, 3, -1, -1)))


def test_imagenet_mae_gives_identical_features_on_our_normalised_input():
    """The source's ImageNet normalisation and ours (0.276 / 0.210) folded into the patch embedding: same features."""
    rgb = _encoder(channels=3)
    sd = mae_state_dict(rgb, (4, 4), as_2d=True)
    grey = UltraMAEEncoder(in_channels=1, tubelet=(2, 8, 8), embed_dim=32, depth=2, num_heads=2).eval()
    ours = {"mean": 0.276, "std": 0.210}
    report = load_mae_weights(grey, sd, source_intensity=IMAGENET_INTENSITY, target_intensity=ours)
    assert "folded" in " ".join(report.notes)
    v = torch.rand(2, 1, 32, 32)  # a grey image in [0, 1]
    mean, std = (torch.tensor(IMAGENET_INTENSITY[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        before = rgb.forward_features((v.expand(-1, 3, -1, -1) - mean) / std)  # as the source was trained
        after = grey.forward_features((v - ours["mean"]) / ours["std"])  # as this package feeds it
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert "not stated" in " ".join(load_mae_weights(grey, sd).notes)  # without a convention the report says so


def test_learned_position_table_is_kept_and_saved():
    enc = _encoder()
    sd = mae_state_dict(enc, (4, 4))
    sd["pos_embed"] = sd["pos_embed"] + 0.5 * torch.randn_like(sd["pos_embed"])
    fresh = UltraMAEEncoder(in_channels=1, tubelet=(2, 8, 8), embed_dim=32, depth=2, num_heads=2).eval()
    assert "installed" in " ".join(load_mae_weights(fresh, sd).notes)
    torch.testing.assert_close(fresh.pos_embed((1, 4, 4))[0], sd["pos_embed"][0, 1:])
    assert fresh.pos_embed((1, 6, 6)).shape == (1, 36, 32)  # resized for other grids
    again = UltraMAEEncoder(in_channels=1, tubelet=(2, 8, 8), embed_dim=32, depth=2, num_heads=2).eval()
    again.load_state_dict(fresh.state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(x), fresh.forward_features(x))


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableFileError, match=r"broken\.pth"):
        load_mae_weights(_encoder(), bad)


def test_unetr_2d_export_loads_strict_and_matches_encoder():
    enc = _encoder(tubelet=(2, 16, 16), depth=12, norm_eps=1e-5, qkv_bias=False)
    unetr = to_monai_unetr(enc, out_channels=3, img_size=(32, 48), spatial_dims=2, feature_size=8)
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(unetr.vit(x)[0], enc.forward_features(x), atol=1e-5, rtol=1e-5)
        assert unetr(x).shape == (2, 3, 32, 48)


def test_vit_3d_export_matches_encoder_up_to_token_order():
    enc = _encoder(tubelet=(8, 8, 8), norm_eps=1e-5)
    vit = to_monai_vit(enc, img_size=(16, 24, 32), spatial_dims=3)
    v = torch.rand(1, 1, 16, 24, 32)
    with torch.no_grad():
        ours = enc.forward_features(v, kind="volume").reshape(1, 4, 2, 3, 32)  # (d, h, w) order
        theirs = vit(v)[0].reshape(1, 2, 3, 4, 32)  # MONAI: (h, w, d) order
    torch.testing.assert_close(theirs, ours.permute(0, 2, 3, 1, 4), atol=1e-5, rtol=1e-5)


def test_unetr_rejects_incompatible_encoder():
    with pytest.raises(ValueError, match="depth 12"):
        to_monai_unetr(_encoder(), out_channels=2, img_size=(32, 32))
