"""Draw a pretraining run's loss curve (``metrics.jsonl``) as a PNG with Pillow (matplotlib is not a dependency).

python benchmarks/plot_pretrain_curve.py RUN_DIR/metrics.jsonl docs/images/pretrain_loss.png --title "..."
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 400, 70, 20, 40, 50


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot(metrics: Path, out: Path, title: str) -> None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    val = {r["step"]: r["val/loss"] for r in rows if r.get("val/loss") is not None}
    steps = sorted(train)
    losses = [train[s] for s in steps]
    lo, hi = 0.0, max(losses) * 1.05
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = LEFT + (step - steps[0]) / max(steps[-1] - steps[0], 1) * (W - LEFT - RIGHT)
        return x, TOP + (1 - (loss - lo) / (hi - lo)) * (H - TOP - BOTTOM)

    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        y = xy(steps[0], v)[1]
        d.line([LEFT - 4, y, LEFT, y], fill="black")
        d.text((5, y - 6), f"{v:.3f}", fill="black")
    tick = 10 ** math.floor(math.log10(max(steps[-1], 10)))
    for s in range(0, steps[-1] + 1, tick):
        x = xy(s, lo)[0]
        d.line([x, H - BOTTOM, x, H - BOTTOM + 4], fill="black")
        d.text((x - 8, H - BOTTOM + 8), str(s), fill="black")
    d.line([xy(s, v) for s, v in zip(steps, losses, strict=True)], fill=(170, 190, 230), width=1)
    d.line([xy(s, v) for s, v in zip(steps, _ema(losses), strict=True)], fill=(20, 60, 160), width=2)
    for s, v in val.items():
        x, y = xy(s, v)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(200, 40, 40))
    d.text((LEFT, 12), title, fill="black")
    d.text((W // 2 - 60, H - 22), "optimiser step", fill="black")
    d.text((W - 330, TOP + 6), "light: per step, dark: EMA(0.1), red: validation", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", default="pretraining loss")
    args = ap.parse_args()
    plot(args.metrics, args.out, args.title)


if __name__ == "__main__":
    main()
