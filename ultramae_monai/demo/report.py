"""``index.html`` of the demo's results folder: the key numbers on top, then every picture with its caption."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

__all__ = ["write_index"]


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _headline(summary: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    rec = summary.get("reconstruction", {})
    if rec:
        rows.append(
            (
                "masked-patch error / mean-of-visible baseline (held-out)",
                f"{_fmt(rec['ratio'])} after pretraining ({_fmt(rec['ratio_before_training'])} before)",
            )
        )
    pre = summary.get("pretrain", {})
    if pre:
        rows.append(("pretraining", f"{pre.get('step')} steps on {pre.get('train_stills')} stills"))
    seg = summary.get("segmentation", {})
    if "dice" in seg:
        rows.append(("segmentation Dice (held-out)", _fmt(seg["dice"])))
    dep = summary.get("deploy", {})
    if dep:
        text = _fmt(dep.get("status", ""))
        if dep.get("enable"):
            text += f" (to enable: <code>{html.escape(dep['enable'])}</code>)"
        if dep.get("dicom_seg_dice") is not None:
            text += f"; DICOM SEG Dice {dep['dicom_seg_dice']:.3f}"
        rows.append(("deploy app", text))
    rows += [(f"time: {k}", f"{v:.0f} s") for k, v in summary.get("seconds", {}).items()]
    return rows


def write_index(out: Path, summary: dict[str, Any], figures: dict[str, str]) -> Path:
    """Write ``out/index.html`` linking ``figures`` (caption -> file name in ``out``) and ``summary.json``."""
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in _headline(summary))
    body = "\n".join(
        f'<figure><a href="{html.escape(f)}"><img src="{html.escape(f)}" alt="{html.escape(c)}"></a>'
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for c, f in figures.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>UltraMAE-MONAI demo</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 3px 12px; border-bottom: 1px solid #ddd; }}
figure {{ margin: 0 0 2em 0; }} img {{ max-width: 100%; border: 1px solid #ccc; }}
figcaption {{ font-weight: bold; margin-top: 4px; }}
</style></head><body>
<h1>UltraMAE-MONAI demo</h1>
<p>Real ultrasound installed with the project (pydicom / deid-data DICOMs; HC18 fetal-head sample, CC BY 4.0,
van den Heuvel et al., PLoS ONE 2018). All numbers in <a href="summary.json">summary.json</a>.</p>
<table>
{table}
</table>
{body}
</body></html>
"""
    path = Path(out) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
