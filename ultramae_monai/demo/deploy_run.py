"""The demo's last stage: the MONAI Deploy app on a DICOM, in its own environment (``.venv-deploy``).

The app (``python -m ultramae_monai.deploy -i IN -o OUT -m BUNDLE``) needs the MONAI Deploy App SDK and Holoscan,
which pin their own stack, so it runs as a subprocess of ``.venv-deploy/bin/python``. Without that environment
the stage is skipped with a line saying how to enable it; nothing before it is lost.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ultramae_monai.demo import figures
from ultramae_monai.demo.samples import HC18Case, write_us_dicom

__all__ = ["ENABLE_HINT", "deploy_python", "run_deploy_app"]

ROOT = Path(__file__).resolve().parents[2]
ENABLE_HINT = "bash scripts/venv_deploy.sh (once; ~4 GB), then run the demo again"
BUILD_STATUS_ENV = "ULTRAMAE_DEPLOY_BUILD_STATUS"


def _wait_for_build(say: Callable[[str], None], wait_s: float | None = None) -> bool:
    """When ``scripts/demo.sh`` builds ``.venv-deploy`` in the background, wait for it; False if it failed.

    The script names a status file in ``$ULTRAMAE_DEPLOY_BUILD_STATUS`` that appears, holding the build's exit
    code, when the build ends. Without that variable there is nothing to wait for.
    """
    status = os.environ.get(BUILD_STATUS_ENV)
    if not status:
        return True
    path = Path(status)
    limit = float(os.environ.get("ULTRAMAE_DEPLOY_WAIT", "300")) if wait_s is None else wait_s
    if not path.exists():
        say(f"waiting (at most {limit:.0f} s) for .venv-deploy, being built in the background ...")
    t0 = time.monotonic()
    while not path.exists() and time.monotonic() - t0 < limit:
        time.sleep(2.0)
    return path.exists() and path.read_text().strip() == "0"


def deploy_python() -> Path | None:
    """The interpreter of the deploy environment: ``$ULTRAMAE_DEPLOY_PYTHON`` or ``.venv-deploy/bin/python``."""
    env = os.environ.get("ULTRAMAE_DEPLOY_PYTHON")
    path = Path(env) if env else ROOT / ".venv-deploy" / "bin" / "python"
    return path if path.is_file() else None


def run_deploy_app(
    bundle: Path,
    case: HC18Case,
    workdir: Path,
    figure: Path,
    enabled: bool = True,
    say: Callable[[str], None] = print,
    timeout: float = 600,
) -> dict[str, Any]:
    """Write ``case`` as a US DICOM, run the app on it with ``bundle``, picture the overlay it wrote."""
    if not enabled:
        say("skipped (deploy disabled)")
        return {"status": "skipped: disabled"}
    if not _wait_for_build(say):
        status = os.environ.get(BUILD_STATUS_ENV, "")
        say(
            f"skipped: building .venv-deploy failed or did not finish in time (log: {status}.log). To enable: {ENABLE_HINT}"
        )
        return {"status": "skipped: .venv-deploy build failed or unfinished", "enable": ENABLE_HINT}
    python = deploy_python()
    if python is None:
        say(f"skipped: the deploy app's environment .venv-deploy is not installed. To enable: {ENABLE_HINT}")
        return {"status": "skipped: .venv-deploy not installed", "enable": ENABLE_HINT}
    src, dst = workdir / "input", workdir / "output"
    img, truth = case.load()
    dicom = write_us_dicom(img, src / f"{case.name}.dcm", case.pixel_mm)
    cmd = [str(python), "-m", "ultramae_monai.deploy", "-i", str(src), "-o", str(dst), "-m", str(bundle)]
    say(" ".join(Path(c).name if c == str(python) else c for c in cmd))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)
    (workdir / "app.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        say(f"the deploy app failed (exit {proc.returncode}): {tail[0]}; log in {workdir / 'app.log'}")
        return {"status": f"failed: exit {proc.returncode}", "log": str(workdir / "app.log")}
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    overlays = [dst / p for p in outputs if p.endswith(".png")]
    result: dict[str, Any] = {"status": "ran", "input": str(dicom), "outputs": outputs}
    if overlays:
        shown = np.asarray(Image.open(overlays[0]).convert("RGB"))
        figures.grid(
            [[figures.as_rgb(img), figures.overlay(img, truth, (60, 140, 255)), shown]],
            figure,
            titles=("DICOM sent to the app", "reference (HC18)", "app's overlay output"),
            height=200,
        )
        result["figure"] = figure.name
    segs = [dst / p for p in outputs if p.endswith(".dcm")]
    if segs:
        result["dicom_seg"] = segs[0].relative_to(dst).as_posix()
        result["dicom_seg_dice"] = _seg_dice(segs[0], truth)
        say(f"DICOM SEG {segs[0].name}: Dice against the HC18 reference {result['dicom_seg_dice']:.3f}")
    say(f"the app wrote {len(outputs)} files: {', '.join(outputs[:4])}{' ...' if len(outputs) > 4 else ''}")
    return result


def _seg_dice(path: Path, truth: np.ndarray) -> float | None:
    """Dice of the app's DICOM SEG (first segment, first frame) against the reference mask; None if unreadable."""
    import pydicom

    try:
        seg = np.asarray(pydicom.dcmread(path).pixel_array)
    except Exception:  # a SEG this pydicom cannot decode: the overlay picture still shows the result
        return None
    mask = (seg[0] if seg.ndim == 3 else seg) > 0
    if mask.shape != truth.shape:
        return None
    total = mask.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (mask & truth).sum() / total)
