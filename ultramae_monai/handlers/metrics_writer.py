"""Handler writing an engine's scalar metrics to ``metrics.json`` when an evaluation ends."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["MetricsJSONWriter"]


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return float(value) if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class MetricsJSONWriter:
    """At ``EPOCH_COMPLETED``, write ``engine.state.metrics`` (plus ``extra``) to ``output_dir/filename``."""

    def __init__(self, output_dir: str | Path, filename: str = "metrics.json", extra: Mapping[str, Any] | None = None):
        self.path = Path(output_dir) / filename
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {k: _plain(v) for k, v in engine.state.metrics.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**metrics, **self.extra}, indent=2, default=str))
