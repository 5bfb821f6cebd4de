"""The GPU benchmarks' logic on a CPU: the MONAI comparison's two readings, and no endless loop on a tiny set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_network import CUDA_CONFIGS, compare  # noqa: E402


def _row(config: str, images_per_s: float, **extra) -> dict:
    return {"config": config, "images_per_s": images_per_s, **extra}


def test_compare_says_fp32_against_fp32_and_best_against_best() -> None:
    rows = [
        _row("ultramae:fp32:128:fused", 1000.0),
        _row("monai:fp32:128:fused", 500.0),
        _row("ultramae:bf16:512:fused:compile", 8000.0),
        {"config": "monai:bf16:128:fused", "error": "Index put requires the source and destination dtypes match"},
        _row("monai:fp32:128:fused", 800.0, note="bf16 failed (...); fp32 instead"),
        _row("ultramae:fp32:64", 900.0),  # no MONAI row of that batch and options: not paired
    ]
    lines = compare(rows)
    assert len(lines) == 2
    fp32, best = lines
    # the later MONAI fp32 row of the same batch and options is the one paired (the bf16 fallback)
    assert fp32.startswith("fp32 against fp32 (ultramae:fp32:128:fused vs monai:fp32:128:fused run in fp32)")
    assert fp32.endswith("1000.0 / 800.0 images/s = 1.25x")
    assert best.startswith("best against best (ultramae:bf16:512:fused:compile vs monai:fp32:128:fused run in fp32)")
    assert best.endswith("= 10.00x")


def test_compare_without_monai_rows_says_nothing() -> None:
    assert compare([_row("ultramae:fp32:8", 3.0), {"config": "monai:fp32:8", "error": "out of memory"}]) == []


def test_cuda_defaults_measure_fp32_against_fp32_first() -> None:
    assert CUDA_CONFIGS[:2] == ["ultramae:fp32:128:fused", "monai:fp32:128:fused"]
    assert any(c.startswith("monai:bf16") for c in CUDA_CONFIGS)
    assert any(c.endswith(":compile") for c in CUDA_CONFIGS)


def test_bench_network_runs_both_models_on_cpu_and_compares_them(tmp_path: Path) -> None:
    out = tmp_path / "net.json"
    cmd = [sys.executable, str(BENCH / "bench_network.py"), "--device", "cpu", "--size", "micro", "--steps", "1",
           "--warmup", "1", "--configs", "ultramae:fp32:2", "monai:fp32:2", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["config"] for r in result["rows"]] == ["ultramae:fp32:2", "monai:fp32:2"]
    assert all(r["images_per_s"] > 0 and r["flops"] > 0 for r in result["rows"])
    assert [line.split(" (")[0] for line in result["comparison"]] == ["fp32 against fp32", "best against best"]


def test_end_to_end_bench_stops_with_one_line_when_the_set_is_smaller_than_a_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pool.npz", images=rng.integers(0, 255, (3, 256, 256), dtype=np.uint8))
    cmd = [sys.executable, str(BENCH / "bench_pretrain_throughput.py"), "--pool", str(tmp_path / "pool.npz"),
           "--count", "3", "--data", str(tmp_path / "set"), "--presets", "micro", "--img_size", "32",
           "--batch", "4", "--workers", "0"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines == [f"{tmp_path / 'set'}: 3 stills, fewer than one batch of 4: lower --batch"]
