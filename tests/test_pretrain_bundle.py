"""The pretraining bundle end to end, in subprocesses as a user runs it: ``python -m monai.bundle run``.

One uninterrupted CPU run is the reference: its loss must fall, and a run SIGKILLed mid-epoch then
restarted with the same command must reproduce its losses after the last checkpoint exactly. A
2-process ``torchrun`` (gloo) run of ``multi_gpu_train.json`` must train and checkpoint both ranks' state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pretrain_data import make_manifest

from ultramae_monai.data.manifest import read_manifest
from ultramae_monai.handlers import FAULT_KILL_ENV

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultramae_pretrain"
TINY = [
    "--preset", "micro", "--target", "pixel", "--img_size", "32", "--tubelet", "[2,8,8]", "--num_frames", "4",
    "--frame_stride", "1", "--decoder_depth", "1", "--decoder_dim", "32", "--batch_size", "4", "--clip_batch_size", "4",
    "--base_lr", "0.2", "--warmup_epochs", "0.5", "--intensity_mean", "0.5", "--intensity_std", "0.28", "--log_every", "3", "--preview_every", "0", "--seed", "7",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _bundle_cmd(out: Path, data: Path, *extra: str, configs: tuple[str, ...] = ("train.json",)) -> list[str]:
    files = [f"configs/{c}" for c in configs]
    cfg = files[0] if len(files) == 1 else json.dumps(files)
    return [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        cfg,
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        *TINY,
        *extra,
    ]


def _losses(out: Path) -> dict[int, float]:
    """Step -> training loss from ``metrics.jsonl`` (a re-run step overwrites the killed run's entry)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("bundle_data"))


@pytest.fixture(scope="module")
def epoch_steps(data_dir: Path) -> int:
    """Optimiser steps per epoch at batch 4: full batches of each kind in the train split."""
    kinds = [r.kind for r in read_manifest(data_dir / "manifest.jsonl", split="train")]
    return kinds.count("still") // 4 + kinds.count("cine") // 4


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run, checkpointing every 4 steps, with a worker process."""
    out = tmp_path_factory.mktemp("reference")
    cmd = [
        sys.executable,
        *_bundle_cmd(out, data_dir, "--max_epochs", "2", "--checkpoint_every", "4", "--num_workers", "1"),
    ]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_bundle_run_on_cpu_learns(reference: Path, epoch_steps: int) -> None:
    n = 2 * epoch_steps
    losses = _losses(reference)
    assert sorted(losses) == list(range(1, n + 1))
    first, last = [losses[s] for s in (1, 2, 3)], [losses[s] for s in (n - 2, n - 1, n)]
    assert sum(last) / 3 < 0.8 * sum(first) / 3, losses
    assert any((reference / "tb").glob("events.out.tfevents.*"))
    assert {p.name for p in (reference / "previews").iterdir()} == {f"still_step{n:08d}.png", f"cine_step{n:08d}.png"}
    ckpts = sorted(p.name for p in (reference / "checkpoints").glob("checkpoint_step*.pt"))
    assert ckpts[-1] == f"checkpoint_step{n:08d}.pt" and len(ckpts) == 3  # keep_last
    assert (reference / "checkpoints" / "best.pt").is_file()  # picked by the validation loss


def _loss_steps(out: Path) -> list[int]:
    """Every step that logged a training loss, in the order written (a resumed run appends)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def test_sigkill_mid_epoch_then_resume_continues_the_same_curve(
    data_dir: Path, reference: Path, epoch_steps: int, tmp_path: Path
) -> None:
    assert epoch_steps >= 7  # the kill lands between the step-4 checkpoint and the epoch's end
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        *_bundle_cmd(out, data_dir, "--max_epochs", "2", "--checkpoint_every", "4", "--num_workers", "0"),
    ]
    # the trainer SIGKILLs itself right after step 6: a chosen step, not a moment caught by polling
    killed = subprocess.run(cmd, cwd=BUNDLE, env={**ENV, FAULT_KILL_ENV: "6"}, capture_output=True, timeout=1200)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _loss_steps(out) == [1, 2, 3, 4, 5, 6]
    state = torch.load(out / "checkpoints" / "checkpoint_step00000004.pt", weights_only=True)
    assert state["sampler"]["position"] == 4 and state["epoch"] == 0  # the resume point is mid-epoch
    assert not (out / "checkpoints" / "checkpoint_step00000006.pt").exists()

    resumed = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    n = 2 * epoch_steps
    # a resume, not a restart: after the killed run's 6 steps, the log continues at step 5 (checkpoint 4 + 1)
    assert _loss_steps(out) == [1, 2, 3, 4, 5, 6, *range(5, n + 1)]
    ref, got = _losses(reference), _losses(out)
    # steps 5..n were recomputed after the restart: the same numbers as the uninterrupted run, bit for bit
    assert [got[s] for s in range(5, n + 1)] == [ref[s] for s in range(5, n + 1)]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_two_processes_match_one_process(data_dir: Path, tmp_path: Path) -> None:
    """2 ranks x batch 2 = 1 rank x batch 4: same samples, crops and masks, so the same losses and weights."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    common = ("--max_epochs", "2", "--max_steps", "4", "--num_workers", "0")
    two = _bundle_cmd(tmp_path / "ddp", data_dir, *common, "--batch_size", "2", "--clip_batch_size", "2",
                      configs=("train.json", "multi_gpu_train.json"))  # fmt: skip
    cmd = [torchrun, "--standalone", "--nnodes", "1", "--nproc_per_node", "2", *two]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "effective batch 4 (2 ranks x 2)" in proc.stdout + proc.stderr
    one = [sys.executable, *_bundle_cmd(tmp_path / "one", data_dir, *common)]
    proc = subprocess.run(one, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ddp, single = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert sorted(ddp) == sorted(single) == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert [ddp[s] for s in range(1, 5)] == pytest.approx([single[s] for s in range(1, 5)], rel=1e-5)
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "checkpoint_step00000004.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["weight_digest"][0] == state["weight_digest"][1]  # the ranks hold equal weights
    ref = torch.load(tmp_path / "one" / "checkpoints" / "checkpoint_step00000004.pt", weights_only=True)
    for key, value in ref["network"].items():
        # Adam normalises each update: a near-zero gradient that differs by float rounding between the two
        # reductions can step by up to +-lr (3e-3 here); the weights agree to a fraction of one step
        torch.testing.assert_close(state["network"][key], value, atol=1e-3, rtol=0)


def test_inference_exports_the_encoder_and_monai_verifies_the_net(reference: Path, tmp_path: Path) -> None:
    """``inference.json`` writes ``models/encoder.pt`` ({"encoder", "meta"}); MONAI's ``verify_net_in_out`` passes."""
    from ultramae_monai.networks import UltraMAEEncoder

    export = tmp_path / "models" / "encoder.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--output_dir", str(reference), "--export_path", str(export)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exported = torch.load(export, weights_only=True)
    arch = dict(exported["meta"]["architecture"])
    assert exported["meta"]["format"] == "ultramae-pretrain" and exported["meta"]["intensity"]["mean"] == 0.5
    arch.pop("preset"), arch.pop("img_size")
    encoder = UltraMAEEncoder(**arch)
    encoder.load_state_dict(exported["encoder"], strict=True)
    latest = (reference / "checkpoints" / "latest.txt").read_text().strip()
    network = torch.load(reference / "checkpoints" / latest, weights_only=True)["network"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, network[f"encoder.{key}"]), key

    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
           "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_a_missing_manifest_ends_with_one_line_naming_it(tmp_path: Path) -> None:
    cmd = [sys.executable, *_bundle_cmd(tmp_path / "out", tmp_path / "nowhere", "--max_epochs", "1")]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: manifest not found: {tmp_path / 'nowhere' / 'manifest.jsonl'}", proc.stderr[-2000:]


def test_a_checkpoint_of_an_older_format_ends_resume_with_one_line_naming_it(data_dir: Path, tmp_path: Path) -> None:
    """A checkpoint with pickled NumPy state (an older trainer's format) cannot load weights-only: resume stops
    before training with one line naming the file, and leaves the checkpoint as it was."""
    old = tmp_path / "out" / "checkpoints" / "checkpoint_step00000004.pt"
    old.parent.mkdir(parents=True)
    torch.save({"model": {}, "step": 4, "rng": [{"numpy": np.random.get_state()}]}, old)  # noqa: NPY002
    before = old.read_bytes()
    cmd = [sys.executable, *_bundle_cmd(tmp_path / "out", data_dir, "--max_epochs", "1")]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {old}: cannot load checkpoint (") and "Traceback" not in proc.stderr, last
    assert old.read_bytes() == before
