"""UltraMAE end to end: outputs, loss on masked tokens only, FOV, CWUS target, determinism, CPU training."""

from __future__ import annotations

import pytest
import torch

from ultramae_monai.errors import InvalidInputError
from ultramae_monai.networks import UltraMAE, make_target, masked_mse, patchify, unpatchify
from ultramae_monai.networks.layout import patchify_input, to_frames, unpatchify_input

SMALL = {
    "preset": "micro",
    "img_size": 32,
    "tubelet": (2, 8, 8),
    "num_frames": 4,
    "decoder_dim": 64,
    "decoder_depth": 1,
}


def _model(**kw) -> UltraMAE:
    torch.manual_seed(0)
    return UltraMAE(**{**SMALL, "target": "pixel", **kw})


@pytest.mark.parametrize(
    ("shape", "kind", "n", "masked"),
    [
        ((2, 1, 32, 32), None, 16, 16 - 1),  # int(16 x 0.1) = 1 visible
        ((2, 1, 4, 32, 32), None, 32, 2 * (16 - 1)),  # tube masking over 2 slots; at least one visible
        ((2, 1, 32, 32, 8), "volume", 64, 64 - int(64 * 0.1)),
    ],
)
def test_outputs_for_stills_clips_volumes(shape, kind, n, masked):
    model = _model()
    x = torch.rand(shape)
    out = model(x, kind=kind)
    assert out["pred"].shape == out["target"].shape == (2, n, 128)
    assert out["mask"].shape == out["ids_restore"].shape == (2, n)
    assert (out["mask"].sum(1) == masked).all()
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    views = model.reconstruct(x, out)
    assert set(views) == {"masked", "pred", "target", "visible"}
    for v in views.values():
        assert v.shape == x.shape
    torch.testing.assert_close(views["target"], x)
    # the masked view holds exactly the visible tubelets of x
    keep = torch.zeros(2, n).scatter_(1, out["ids_keep"], 1.0)
    torch.testing.assert_close(
        patchify_input(views["masked"], out["kind"], model.tubelet),
        patchify_input(x, out["kind"], model.tubelet) * keep[..., None],
    )
    vis_tok = patchify_input(views["visible"], out["kind"], model.tubelet)
    torch.testing.assert_close(vis_tok, keep[..., None].expand_as(vis_tok))


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 4, 16, 24)
    tok = patchify(x, (2, 8, 8))
    assert tok.shape == (2, 2 * 2 * 3, 2 * 8 * 8 * 3)
    torch.testing.assert_close(unpatchify(tok, (2, 2, 3), (2, 8, 8), 3), x)
    # token 4 of the (2, 2, 3) grid is tubelet (t=0, h=1, w=1); its values start with the C channels of pixel (0, 8, 8)
    torch.testing.assert_close(tok[1, 4, :3], x[1, :, 0, 8, 8])
    v = torch.randn(1, 1, 16, 16, 4)
    torch.testing.assert_close(
        unpatchify_input(patchify_input(v, "volume", (2, 8, 8)), (2, 2, 2), "volume", (2, 8, 8), 1), v
    )


def test_loss_gradient_is_zero_on_visible_tokens():
    model = _model()
    out = model(torch.rand(2, 1, 32, 32))
    pred = out["pred"]
    grad = torch.autograd.grad(masked_mse(pred, out["target"], out["mask"]), pred)[0]
    visible = out["mask"] == 0
    assert (grad[visible] == 0).all()
    assert (grad[~visible].abs().sum(-1) > 0).all()
    torch.testing.assert_close(masked_mse(pred, out["target"], out["mask"]), out["loss"])


def test_fov_tokens_excluded_from_loss():
    fov = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    fov[:, :, :, :16] = True  # left half: 8 of 16 tokens
    for fov_masking in (True, False):  # FOV-aware masking, or uniform masking with an in-FOV loss
        model = _model(fov_masking=fov_masking, mask_ratio_image=0.5)
        out = model(torch.rand(2, 1, 32, 32), fov_mask=fov, generator=torch.Generator().manual_seed(0))
        outside = ~out["valid"]
        assert outside.sum() == 16 and (out["mask"][outside] == 0).all()
        pred = out["pred"]
        grad = torch.autograd.grad(masked_mse(pred, out["target"], out["mask"]), pred)[0]
        assert (grad[outside] == 0).all()
        if fov_masking:  # nothing outside the FOV is shown to the encoder either
            assert out["valid"].gather(1, out["ids_keep"]).all()


def test_cwus_target_is_image_times_confidence():
    model = _model(target="cwus")
    x, conf = torch.rand(2, 1, 4, 32, 32), torch.rand(2, 1, 4, 32, 32)
    out = model(x, confidence=conf)
    torch.testing.assert_close(out["target"], patchify(x * conf, (2, 8, 8)))
    torch.testing.assert_close(model.reconstruct(x, out)["target"], x * conf)


def test_pixel_plus_confidence_two_heads_and_norm_pixel():
    model = _model(target="pixel+confidence")
    x, conf = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = model(x, confidence=conf)
    assert out["pred"].shape[-1] == 2 * 128
    views = model.reconstruct(x, out)
    torch.testing.assert_close(views["confidence"], conf)
    tok = make_target("norm_pixel", to_frames(x, "still", 2), (2, 8, 8))
    assert torch.allclose(tok.mean(-1), torch.zeros(()), atol=1e-5)


def test_deterministic_under_seed():
    model = _model(target="cwus", confidence_sampling=1.0)
    x, conf = torch.rand(2, 1, 4, 32, 32), torch.rand(2, 1, 4, 32, 32)
    a = model(x, confidence=conf, generator=torch.Generator().manual_seed(5))
    b = model(x, confidence=conf, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["pred"], b["pred"]) and a["loss"] == b["loss"]


def test_micro_model_trains_on_cpu():
    model = _model(target="pixel", mask_ratio_image=0.75)
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    x = torch.rand(4, 1, 1, 1) * (ramp[:, None] + ramp[None, :]) / 2  # learnable structure: scaled ramps
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        loss = model(x, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


def test_volume_kind_from_metatensor_metadata():
    from ultramae_monai.data.convention import make_metatensor

    vol = make_metatensor(torch.rand(1, 32, 32, 8), "volume")
    batch = torch.stack([vol, vol])  # collated MetaTensor keeps us_kind
    out = _model()(batch)
    assert out["kind"] == "volume" and out["pred"].shape == (2, 64, 128)
    assert type(out["pred"]) is torch.Tensor


def test_confidence_is_an_input_not_solved_in_forward():
    """The network never solves confidence maps: without them a CWUS model says where they come from."""
    import ast
    import pathlib

    with pytest.raises(InvalidInputError, match="UltrasoundConfidenceMapd"):
        _model(target="cwus")(torch.rand(2, 1, 32, 32))
    package = pathlib.Path(__file__).resolve().parents[1] / "ultramae_monai" / "networks"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith(("ultramae_monai.confmap", "ultramae_monai.losses")) for n in names), path


def test_mixed_fans_keep_the_ratio_per_sample_and_padding_changes_nothing():
    """A wide fan, a narrow one and an empty crop in one batch: each keeps its own share, none crashes."""
    model = _model(mask_ratio_image=0.75).eval()
    fov = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    fov[0] = True  # 16 tokens
    fov[1, :, :, 8:24] = True  # 8 tokens
    x = torch.rand(3, 1, 32, 32)
    out = model(x, fov_mask=fov, generator=torch.Generator().manual_seed(0))
    n_fov = out["valid"].sum(1).tolist()
    assert n_fov == [16, 8, 0]
    assert out["mask"].sum(1).tolist() == [16 - 4, 8 - 2, 0]  # int(N_i x 0.25) visible each
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["pred"]).all()
    # the narrow sample's latents equal a run of that sample alone on its real visible tokens
    with torch.no_grad():
        tokens, _ = model.encoder.embed(x)
        ids = out["ids_keep"]
        keep = ids[1][:2]
        alone = model.encoder.forward_tokens(tokens[1:2, keep])
        padded = model.encoder.forward_tokens(
            tokens.gather(1, ids[..., None].expand(-1, -1, tokens.shape[-1])),
            key_mask=torch.arange(ids.shape[1])[None] < torch.tensor([[4], [2], [1]]),
        )
    torch.testing.assert_close(padded[1, :2], alone[0], atol=1e-5, rtol=1e-5)
    model.train()
    out = model(x, fov_mask=fov, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
