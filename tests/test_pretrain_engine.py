"""Optimiser recipe, checkpoints, RNG capture, previews and the trainer's NaN guard (in-process, fast)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_pretrain_data import make_manifest
from torch import nn

from ultramae_monai.data import KindBatchSampler, ManifestDataset
from ultramae_monai.engines import (
    CheckpointManager,
    NonFiniteLossError,
    PretrainTrainer,
    WarmupCosine,
    atomic_save,
    build_optimizer,
    capture_rng_state,
    param_groups,
    reconstruction_grid,
    restore_rng_state,
    save_grid_png,
    scaled_lr,
)
from ultramae_monai.networks import UltraMAE


def _micro(**kw: Any) -> UltraMAE:
    torch.manual_seed(0)
    args = {"preset": "micro", "img_size": 32, "tubelet": (2, 8, 8), "num_frames": 4, "target": "pixel"}
    return UltraMAE(**args, decoder_depth=1, decoder_dim=32, mask_ratio_image=0.75, mask_ratio_video=0.75, **kw)


def test_weight_decay_exclusions_and_lr_scaling() -> None:
    model = _micro()
    decay, skip = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in skip["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and skip["weight_decay"] == 0.0
    assert "mask_token" in skipped and all(n.endswith("bias") or "norm" in n or "token" in n for n in skipped)
    assert any(n.endswith("qkv.weight") for n in decayed) and not any(n.endswith("bias") for n in decayed)
    assert len(skipped) + len(decayed) == len(names)
    opt = build_optimizer(model, base_lr=1.5e-4, effective_batch=4096)
    assert opt.param_groups[0]["lr"] == pytest.approx(scaled_lr(1.5e-4, 4096)) == pytest.approx(2.4e-3)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_warmup_then_cosine() -> None:
    f = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    warm = [f(s) for s in range(10)]
    assert warm == pytest.approx([s / 10 for s in range(10)]) and warm[0] == 0.0  # from 0, as MAE
    tail = [f(s) for s in range(10, 111)]
    assert tail[0] == pytest.approx(1.0) and tail[-1] == pytest.approx(0.1) and tail[50] == pytest.approx(0.55)
    assert all(a >= b for a, b in itertools.pairwise(tail))


def test_checkpoints_keep_last_best_and_latest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step, metric in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None)]:
        mgr.save({"step": step}, step, metric)
    assert [p.name for p in mgr.checkpoints()] == ["checkpoint_step00000003.pt", "checkpoint_step00000004.pt"]
    assert mgr.latest().name == "checkpoint_step00000004.pt"
    assert torch.load(tmp_path / "best.pt", weights_only=False)["step"] == 2
    fresh = CheckpointManager(tmp_path)
    assert fresh.load()["step"] == 4 and fresh.best_metric == 1.0  # best survives a restart


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_save({"ok": 1}, target)

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"ok": 2, "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=False) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_rng_capture_restores_every_generator() -> None:
    gen = torch.Generator().manual_seed(3)
    state = capture_rng_state({"mask": gen})

    def draw() -> tuple:
        return random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=gen).tolist()  # noqa: NPY002

    first = draw()
    restore_rng_state(state, {"mask": gen})
    assert draw() == first


def test_reconstruction_grid(tmp_path: Path) -> None:
    model = _micro()
    x = torch.rand(3, 1, 4, 32, 32)
    out = model(x, generator=torch.Generator().manual_seed(0))
    grid = reconstruction_grid({"input": x, **model.reconstruct(x, out)}, max_samples=2, pad=2)
    assert grid.shape == (1, 2 * 34 + 2, 4 * 34 + 2) and 0 <= grid.min() and grid.max() <= 1
    path = save_grid_png(grid, tmp_path / "g.png")
    assert path.stat().st_size > 100
    still = torch.rand(2, 1, 32, 32)
    out = model(still, generator=torch.Generator().manual_seed(0))
    views = model.reconstruct(still, out)
    visible = views["visible"]
    assert 0 < visible.mean() < 0.5 and set(visible.unique().tolist()) == {0.0, 1.0}  # 75 % masked
    torch.testing.assert_close(visible, model.reconstruct(torch.ones_like(still), out)["masked"])
    pasted = reconstruction_grid({"input": still, **views}, pad=0)
    w = 32
    inp, pred = pasted[:, :, :w], pasted[:, :, 2 * w : 3 * w]
    vis = torch.cat(list(visible[:, 0]), 0).bool()
    assert torch.allclose(pred[0][vis], inp[0][vis]) and not torch.allclose(pred[0][~vis], inp[0][~vis])


class _NaNAfter(nn.Module):
    """Stand-in MAE wrapper: the real model, whose loss turns NaN from call ``bad_call`` on."""

    def __init__(self, inner: nn.Module, bad_call: int) -> None:
        super().__init__()
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def forward(self, x: torch.Tensor, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        out = self.inner(x, **kw)
        if self.calls >= self.bad_call:
            out["loss"] = out["loss"] * float("nan")
        return out

    def reconstruct(self, x: torch.Tensor, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.inner.reconstruct(x, out)

    def architecture(self) -> dict[str, Any]:
        return self.inner.architecture()

    @property
    def target(self) -> str:
        return self.inner.target


def _trainer(data: Path, out: Path, net: nn.Module, **kw: Any) -> PretrainTrainer:
    ds = ManifestDataset(dataset_dir=data, img_size=32, num_frames=4)
    sampler = KindBatchSampler(ds.kinds, batch_size=4, seed=0)
    opt = build_optimizer(net, base_lr=0.05, effective_batch=4)
    return PretrainTrainer(net, ds, sampler, opt, out, tensorboard=False, preview_samples=0, **kw)


def test_nan_loss_stops_before_touching_the_weights(tmp_path: Path) -> None:
    data = make_manifest(tmp_path / "data", stills=12, clips=4)
    net = _NaNAfter(_micro(), bad_call=5)  # steps 1-2 fine (accum 2), step 3 sees NaN
    trainer = _trainer(data, tmp_path / "run", net, grad_accum=2, checkpoint_every=1, max_epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3.*checkpoint_step00000002\.pt"):
        trainer.run()
    assert trainer.step == 2
    saved = torch.load(tmp_path / "run/checkpoints/checkpoint_step00000002.pt", weights_only=True)["network"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k  # the NaN step changed nothing
    assert all(p.grad is None for p in net.parameters())


def test_grad_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    data = make_manifest(tmp_path / "data", stills=12, clips=4)
    trainer = _trainer(data, tmp_path / "run", _micro(), grad_accum=2, max_epochs=1)
    assert trainer.steps_per_epoch == len(trainer.sampler) // 2 and trainer.effective_batch == 8
    result = trainer.run()
    assert result["step"] == trainer.steps_per_epoch and np.isfinite(result["loss"])
    assert trainer.scheduler.last_epoch == trainer.steps_per_epoch  # one schedule step per optimiser step


def test_bundle_recipe_does_not_clip_gradients_by_default() -> None:
    """MAE does not clip gradients; clipping stays available as ``--clip_grad``."""
    import json

    cfg = json.loads((Path(__file__).resolve().parents[1] / "bundles/ultramae_pretrain/configs/train.json").read_text())
    assert cfg["clip_grad"] is None


def test_checkpoint_is_weights_only_with_network_and_meta(tmp_path: Path) -> None:
    """Contract 1: ``network`` (UltraMAE state dict) + ``meta`` (format, architecture, intensity), weights_only."""
    from ultramae_monai.networks import UltraMAEEncoder

    data = make_manifest(tmp_path / "data", stills=12, clips=4)
    net = _micro()
    trainer = _trainer(data, tmp_path / "run", net, max_steps=2, intensity_mean=0.3, intensity_std=0.2)
    trainer.run()
    state = torch.load(trainer.checkpoints.latest(), weights_only=True)
    meta = state["meta"]
    assert meta["format"] == "ultramae-pretrain" and meta["version"] == 1 and meta["target"] == "pixel"
    assert meta["intensity"] == {"mean": 0.3, "std": 0.2}
    arch = dict(meta["architecture"])
    assert arch.pop("preset") == "micro" and arch.pop("img_size") == [32, 32]
    encoder = UltraMAEEncoder(**arch).eval()
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in state["network"].items() if k.startswith("encoder.")})
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(encoder.forward_features(x), net.encoder.eval().forward_features(x))
