"""Encoder loading for fine-tuning: every checkpoint layout fills a fresh encoder exactly, or fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ultramae_monai.engines import capture_rng_state
from ultramae_monai.errors import IncompatibleCheckpointError, UnreadableFileError
from ultramae_monai.networks import UltraMAE, UltraMAEEncoder, mae_state_dict
from ultramae_monai.networks.pretrained import encoder_meta, load_encoder_state, load_pretrained_encoder

ARCH = {"preset": "micro", "tubelet": (2, 8, 8)}


def _pretrained_micro(steps: int = 3) -> UltraMAE:
    """A micro UltraMAE after a few optimiser steps, so its weights differ from any fresh initialisation."""
    torch.manual_seed(0)
    model = UltraMAE(img_size=32, target="pixel", decoder_depth=1, decoder_dim=32, **ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.rand(2, 1, 32, 32, generator=g), generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _meta(model: UltraMAE) -> dict:
    e = model.encoder
    arch = {"preset": "micro", "embed_dim": e.embed_dim, "depth": e.depth, "num_heads": e.num_heads}
    arch.update(tubelet=list(e.tubelet), in_channels=1, cls_token=False, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6)
    return {
        "format": "ultramae-pretrain",
        "version": 1,
        "architecture": {**arch, "img_size": [32, 32]},
        "intensity": {"mean": 0.3, "std": 0.2},
        "target": "pixel",
    }


def _fresh(**kw) -> UltraMAEEncoder:
    torch.manual_seed(123)
    return UltraMAEEncoder.from_preset(**{**ARCH, **kw}).eval()


def _assert_same_function(a: UltraMAEEncoder, b: UltraMAEEncoder) -> None:
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    clip = torch.rand(1, 1, 4, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
        assert torch.equal(a(clip), b(clip))


@pytest.fixture(scope="module")
def pretrained() -> UltraMAE:
    return _pretrained_micro()


def _writers(model: UltraMAE, meta: dict) -> dict[str, dict]:
    enc = model.encoder.state_dict()
    return {
        "pretrain_bundle": {"network": model.state_dict(), "meta": meta, "step": 3, "rng": capture_rng_state()},
        "legacy_trainer": {"model": model.state_dict(), "optimizer": {}, "step": 3, "rng": capture_rng_state()},
        "encoder_pt": {"encoder": enc, "meta": meta},
        "ddp_compiled": {"state_dict": {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}},
        "bare_encoder": enc,
    }


@pytest.mark.parametrize("layout", ["pretrain_bundle", "legacy_trainer", "encoder_pt", "ddp_compiled", "bare_encoder"])
def test_every_project_checkpoint_loads_into_a_fresh_encoder(pretrained: UltraMAE, tmp_path: Path, layout) -> None:
    path = tmp_path / f"{layout}.pt"
    torch.save(_writers(pretrained, _meta(pretrained))[layout], path)
    state, meta = load_encoder_state(path)
    assert set(state) == set(pretrained.encoder.state_dict())  # decoder dropped, prefixes stripped
    assert meta["architecture"]["depth"] == 2 and meta["architecture"]["tubelet"] == [2, 8, 8]
    fresh = _fresh()
    with torch.no_grad():
        assert not torch.equal(fresh(torch.ones(1, 1, 32, 32)), pretrained.encoder.eval()(torch.ones(1, 1, 32, 32)))
    report = load_pretrained_encoder(fresh, path)
    assert not report.missing and len(report.matched) == len(state)
    _assert_same_function(fresh, pretrained.encoder)


def test_meta_gives_the_intensity_convention(pretrained: UltraMAE, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"network": pretrained.state_dict(), "meta": _meta(pretrained)}, path)
    assert encoder_meta(path)["intensity"] == {"mean": 0.3, "std": 0.2}
    assert encoder_meta("none") == {}


def test_scratch_leaves_the_encoder_alone() -> None:
    enc = _fresh()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    report = load_pretrained_encoder(enc, "none")
    assert "scratch" in str(report)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_checkpoint_of_another_architecture_fails_listing_the_cause(pretrained: UltraMAE, tmp_path: Path) -> None:
    path = tmp_path / "micro.pt"
    torch.save({"model": pretrained.state_dict()}, path)  # no meta: shapes speak
    with pytest.raises(IncompatibleCheckpointError, match=r"micro\.pt: checkpoint of another architecture.*embed_dim"):
        load_pretrained_encoder(UltraMAEEncoder.from_preset("tiny", tubelet=(2, 8, 8)), path)
    deeper = UltraMAEEncoder(embed_dim=64, depth=3, num_heads=4, tubelet=(2, 8, 8))
    with pytest.raises(IncompatibleCheckpointError, match="depth 2"):
        load_pretrained_encoder(deeper, path)
    torch.save({"network": pretrained.state_dict(), "meta": _meta(pretrained)}, path)
    other_heads = UltraMAEEncoder(embed_dim=64, depth=2, num_heads=8, tubelet=(2, 8, 8))
    with pytest.raises(IncompatibleCheckpointError, match=r"num_heads 4 \(encoder: 8\)"):
        load_pretrained_encoder(other_heads, path)


def test_partial_checkpoint_lists_missing_keys(pretrained: UltraMAE, tmp_path: Path) -> None:
    sd = {k: v for k, v in pretrained.encoder.state_dict().items() if not k.startswith(("blocks.1.attn.", "norm."))}
    path = tmp_path / "partial.pt"
    torch.save({"encoder": sd}, path)
    with pytest.raises(
        IncompatibleCheckpointError, match=r"6 of 28 encoder weights missing .*blocks\.1\.attn\.proj\.bias"
    ):
        load_pretrained_encoder(_fresh(), path)


def test_unrelated_or_unsafe_files_fail_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, path)
    with pytest.raises(UnreadableFileError, match=r"resnet\.pt: no encoder weights recognised"):
        load_pretrained_encoder(_fresh(), path)
    unsafe = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": Path("x")}, unsafe)  # arbitrary object: not weights-only
    with pytest.raises(UnreadableFileError, match=r"pickled\.pt: not a loadable weights-only checkpoint"):
        load_pretrained_encoder(_fresh(), unsafe)
    with pytest.raises(UnreadableFileError, match=r"missing\.pt: checkpoint not found"):
        load_pretrained_encoder(_fresh(), tmp_path / "missing.pt")


def test_mae_layout_goes_through_interop(pretrained: UltraMAE, tmp_path: Path) -> None:
    sd = mae_state_dict(pretrained.encoder, grid_hw=(4, 4), as_2d=True)  # 2D kernel + class-slot pos_embed
    sd["decoder_embed.weight"] = torch.zeros(32, 64)
    path = tmp_path / "mae.pth"
    torch.save({"model": sd}, path)
    assert load_encoder_state(path)[1]["format"] == "mae"
    enc = _fresh()
    report = load_pretrained_encoder(enc, path)
    assert "decoder_embed.weight" in report.unexpected and not report.missing
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # a still through the inflated kernel equals the 2D kernel's tokens
        torch.testing.assert_close(enc(x), pretrained.encoder.eval()(x), rtol=1e-5, atol=1e-5)


def test_monai_mae_weights_go_through_interop(tmp_path: Path) -> None:
    from monai.networks.nets import MaskedAutoEncoderViT

    torch.manual_seed(0)
    mae = MaskedAutoEncoderViT(
        in_channels=1, img_size=32, patch_size=8, hidden_size=64, mlp_dim=256, num_layers=2, num_heads=4,
        spatial_dims=2, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
    )  # fmt: skip
    path = tmp_path / "monai_mae.pt"
    torch.save(mae.state_dict(), path)
    assert load_encoder_state(path)[1]["format"] == "monai-mae"
    enc = UltraMAEEncoder(
        embed_dim=64, depth=2, num_heads=4, tubelet=(2, 8, 8), qkv_bias=False, norm_eps=1e-5, cls_token=True
    )
    report = load_pretrained_encoder(enc, path)
    assert not report.missing and report.matched
    wrong = UltraMAEEncoder(embed_dim=64, depth=3, num_heads=4, tubelet=(2, 8, 8), qkv_bias=False, cls_token=True)
    with pytest.raises(IncompatibleCheckpointError, match=r"monai_mae\.pt: .*blocks\.2"):
        load_pretrained_encoder(wrong, path)
