"""Optimiser recipe, checkpoints, RNG capture, previews, the NaN guard and the bundle's engine (in-process, fast)."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from test_pretrain_data import make_manifest
from torch import nn

from ultramae_monai.engines import (
    CheckpointManager,
    DistributedMaskedLoss,
    MAEIteration,
    NonFiniteLossError,
    WarmupCosine,
    atomic_save,
    build_optimizer,
    capture_rng_state,
    param_groups,
    reconstruction_grid,
    restore_rng_state,
    save_grid_png,
    scaled_lr,
    seed_everything,
    warmup_steps,
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


REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ultramae_pretrain"
MICRO = {
    "preset": "micro", "target": "pixel", "img_size": 32, "tubelet": [2, 8, 8], "num_frames": 4, "decoder_depth": 1,
    "decoder_dim": 32, "batch_size": 4, "clip_batch_size": 4, "base_lr": 0.2, "warmup_epochs": 0.5,
    "intensity_mean": 0.5, "intensity_std": 0.28, "log_every": 3, "preview_every": 0, "preview_samples": 0,
    "seed": 7, "num_workers": 0,
}  # fmt: skip


def _bundle(data: Path, out: Path, **overrides: Any) -> ConfigParser:
    """The pretraining bundle's ``train.json`` with micro overrides, parsed in this process."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(data), "output_dir": str(out), **MICRO, **overrides})
    seed_everything(parser["seed"])
    return parser


def test_nan_in_the_data_stops_before_touching_the_weights(tmp_path: Path) -> None:
    """A real NaN source: one cached still is NaN. The step that reads it raises and applies nothing."""
    data = make_manifest(tmp_path / "data", stills=12, clips=4)
    np.save(data / "s5.npy", np.full((1, 48, 40), np.nan, np.float32))
    parser = _bundle(data, tmp_path / "run", checkpoint_every=1, max_epochs=3)
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network_def")
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step (\d+)") as err:
        trainer.run()
    step = int(re.search(r"step (\d+)", str(err.value)).group(1))
    log = tmp_path / "run" / "metrics.jsonl"
    logged = [json.loads(x)["step"] for x in log.read_text().splitlines()] if log.exists() else []
    assert max(logged, default=0) == step - 1  # the NaN step was never logged as a step
    expected = initial
    if step > 1:  # the last good checkpoint is named and holds the weights the NaN step left untouched
        assert f"checkpoint_step{step - 1:08d}.pt" in str(err.value)
        expected = torch.load(tmp_path / f"run/checkpoints/checkpoint_step{step - 1:08d}.pt", weights_only=True)
        expected = expected["network"]
    else:
        assert "last good checkpoint: none yet" in str(err.value)
    for k, v in network.state_dict().items():
        assert torch.equal(v, expected[k]), k  # the NaN step changed nothing
    assert all(p.grad is None for p in network.parameters())


class _SqrtAtZero(nn.Module):
    """A finite loss with an infinite gradient: ``sqrt(w)`` at ``w = 0`` (d/dw = inf)."""

    target = "pixel"

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def mask_slots(self, x: torch.Tensor) -> int:
        return 1

    def forward(self, x: torch.Tensor, **kw: Any) -> dict[str, Any]:
        return {"loss": torch.sqrt(self.w).sum() + x.mean() * 0, "mask": torch.ones(1)}


def test_non_finite_gradient_stops_the_step() -> None:
    net = _SqrtAtZero()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    engine = SimpleNamespace(
        network=net, optimizer=opt, loss_function=DistributedMaskedLoss(),
        state=SimpleNamespace(device=torch.device("cpu"), iteration=3, epoch=1),
    )  # fmt: skip
    batch = {"image": torch.rand(2, 1, 8, 8), "fov_mask": torch.ones(2, 1, 8, 8, dtype=torch.bool)}
    step = MAEIteration()
    step.last_checkpoint = "ckpt/checkpoint_step00000002.pt"
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm at step 3 .*loss 0\.0.*step00000002"):
        step(engine, batch)
    assert net.w.item() == 0.0 and net.w.grad is None  # not applied, gradients cleared


def test_short_documented_cpu_run_leaves_warm_up(tmp_path: Path) -> None:
    """The README's CPU command (max_epochs 2) must train: warm-up is capped at 10 % of the run, not 40 epochs."""
    data = make_manifest(tmp_path / "data", stills=24, clips=8)
    parser = _bundle(data, tmp_path / "run", max_epochs=2, warmup_epochs=40, base_lr=1.5e-4)
    scheduler = parser.get_parsed_content("lr_scheduler")
    total = parser.get_parsed_content("total_steps")
    factors = [scheduler.lr_lambdas[0](s) for s in range(total)]
    assert max(factors) == pytest.approx(1.0) and scheduler.lr_lambdas[0].warmup_steps <= 0.1 * total
    assert warmup_steps(40, 100, 40_000) == 4000  # MAE's 40 of 400 epochs is unchanged


def test_bundle_recipe_does_not_clip_gradients_by_default() -> None:
    """MAE does not clip gradients; clipping stays available as ``--clip_grad``."""
    cfg = json.loads((Path(__file__).resolve().parents[1] / "bundles/ultramae_pretrain/configs/train.json").read_text())
    assert cfg["clip_grad"] is None


def test_checkpoint_is_weights_only_with_network_and_meta(tmp_path: Path) -> None:
    """Contract 1: ``network`` (UltraMAE state dict) + ``meta`` (format, architecture, intensity), weights_only."""
    from ultramae_monai.networks import UltraMAEEncoder

    data = make_manifest(tmp_path / "data", stills=12, clips=4)
    parser = _bundle(data, tmp_path / "run", max_steps=2, intensity_mean=0.3, intensity_std=0.2)
    parser.get_parsed_content("train#trainer").run()
    state = torch.load(tmp_path / "run/checkpoints/checkpoint_step00000002.pt", weights_only=True)
    meta = state["meta"]
    assert meta["format"] == "ultramae-pretrain" and meta["version"] == 1 and meta["target"] == "pixel"
    assert meta["intensity"] == {"mean": 0.3, "std": 0.2}
    arch = dict(meta["architecture"])
    assert arch.pop("preset") == "micro" and arch.pop("img_size") == [32, 32]
    encoder = UltraMAEEncoder(**arch).eval()
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in state["network"].items() if k.startswith("encoder.")})
    net = parser.get_parsed_content("network_def")
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(encoder.forward_features(x), net.encoder.eval().forward_features(x))
