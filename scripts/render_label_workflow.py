"""Render docs/images/label/label_workflow.png: the MONAI Label loop, and what it gives on a real HC18 image.

Runs the label app in process (no server): N HC18 labels saved through the app's datastore, one fine-tuning
request (the bundle's train.json, micro preset, 64 px, from scratch), then the app's infer task on held-out
images; the figure shows the workflow, a held-out image with its proposed mask, and the reference outline.
Run in the MONAI Label environment: ``.venv-label/bin/python scripts/render_label_workflow.py [--labels 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
HC18 = ROOT.parent / "shared" / "data" / "hc18"
OUT = ROOT / "docs" / "images" / "label" / "label_workflow.png"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def reference(image_id: str) -> np.ndarray:
    outline = np.asarray(Image.open(HC18 / "annotations" / f"{image_id}_Annotation.png").convert("L")) > 0
    return ndimage.binary_fill_holes(outline).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        return ImageFont.load_default()


def diagram(width: int, height: int) -> Image.Image:
    """Viewer <-> MONAI Label server <-> bundle, with the four calls of the loop."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    f, small = font(22), font(17)
    boxes = {
        "viewer": (30, 60, 330, 250, "3D Slicer (MONAI Label module)\nor OHIF viewer\n\nclinician draws / corrects"),
        "server": (
            470,
            60,
            830,
            250,
            "monailabel start_server\n--app ultramae_monai/label/app\n--studies DIR\n--conf bundle ...",
        ),
        "bundle": (
            970,
            60,
            1290,
            250,
            "bundles/ultramae_segmentation\ninference.json / train.json\n(ConfigParser only)",
        ),
    }
    for x0, y0, x1, y1, text in boxes.values():
        d.rounded_rectangle((x0, y0, x1, y1), radius=14, outline=(40, 70, 140), width=3, fill=(236, 242, 255))
        d.multiline_text(((x0 + x1) / 2, (y0 + y1) / 2), text, fill="black", font=small, anchor="mm", align="center")
    calls = [
        (95, "1  POST /activelearning/uncertainty: next image", True),
        (135, "2  POST /infer/ultramae_segmentation: proposed mask", False),
        (175, "3  PUT /datastore/label: corrected label", True),
        (215, "4  POST /train/ultramae_segmentation: fine-tune", True),
    ]
    for y, _text, right in calls:
        x0, x1 = (330, 470) if right else (470, 330)
        d.line((x0, y, x1, y), fill=(200, 80, 40), width=3)
        tip = x1
        sign = 1 if right else -1
        d.polygon([(tip, y), (tip - sign * 12, y - 7), (tip - sign * 12, y + 7)], fill=(200, 80, 40))
    d.line((830, 155, 970, 155), fill=(40, 70, 140), width=3)
    d.polygon([(970, 155), (958, 148), (958, 162)], fill=(40, 70, 140))
    for i, (_, text, _) in enumerate(calls):
        d.text((30, 275 + 26 * i), text, fill="black", font=small)
    d.text((30, 18), "The MONAI Label loop with UltraMAE", fill="black", font=f)
    d.text(
        (600, 275),
        "scoring 'uncertainty' ranks unlabelled images by the\nflip-TTA entropy of the current model; training runs\n"
        "the bundle's train.json on the datastore's labels and\npublishes model/ultramae_segmentation.pt",
        fill="black",
        font=small,
    )
    return img


def overlay(image: np.ndarray, mask: np.ndarray, ref: np.ndarray) -> Image.Image:
    rgb = np.stack([image] * 3, axis=-1).astype(np.float32)
    m = mask > 0
    rgb[m] = 0.55 * rgb[m] + 0.45 * np.array([255, 140, 0])
    edge = ref.astype(bool) & ~ndimage.binary_erosion(ref.astype(bool), iterations=2)
    rgb[edge] = [0, 220, 255]
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def caption(d: ImageDraw.ImageDraw, show: str, labels: int, epochs: int, score: float) -> None:
    d.rectangle((0, 412, 1320, 468), fill="white")
    d.text((0, 440), f"HC18 {show}.png (held out)", fill="black", font=font(20))
    d.text(
        (670, 416),
        f"proposal (orange): {labels} labels, {epochs} epochs, micro encoder from scratch",
        fill="black",
        font=font(18),
    )
    d.text((670, 440), f"reference outline (cyan); Dice {score:.2f}", fill="black", font=font(18))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--img_size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")  # in process: no server to score on
    os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    os.environ.setdefault("MONAI_LABEL_DATASTORE_AUTO_RELOAD", "false")
    from ultramae_monai.label.ultramae_app import MODEL_NAME, UltraMAELabelApp

    ids = sorted(p.stem for p in (HC18 / "images").glob("*_HC.png"))[: args.labels + 2]  # one image per exam
    train_ids, held_out = ids[: args.labels], ids[args.labels :]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "app").mkdir()
        (t / "studies").mkdir()
        shutil.copytree(ROOT / "bundles" / "ultramae_segmentation" / "configs", t / "bundle" / "configs")
        for i in ids:
            shutil.copy(HC18 / "images" / f"{i}.png", t / "studies")
        overrides = {
            "preset": "micro",
            "img_size": args.img_size,
            "batch_size": 4,
            "class_names": ["background", "head"],
        }
        app = UltraMAELabelApp(
            str(t / "app"),
            str(t / "studies"),
            {"bundle": str(t / "bundle"), "bundle_overrides": json.dumps(overrides), "model_dir": str(t / "model")},
        )
        for i in train_ids:
            label = t / f"{i}_label.png"
            Image.fromarray(reference(i)).save(label)
            app.datastore().save_label(i, str(label), "final", {})
        stats = app.train({"model": MODEL_NAME, "max_epochs": args.epochs, "device": "cpu"})
        scores = {}
        for i in held_out:
            res = app.infer({"model": MODEL_NAME, "image": i, "device": "cpu"})
            mask = np.asarray(Image.open(res["file"]))
            scores[i] = dice(mask, reference(i))
        show = held_out[0]
        mask = np.asarray(Image.open(app.infer({"model": MODEL_NAME, "image": show, "device": "cpu"})["file"]))
    image = np.asarray(Image.open(HC18 / "images" / f"{show}.png").convert("L"))
    panel = overlay(image, mask, reference(show)).resize((650, 440))
    raw = Image.fromarray(image).convert("RGB").resize((650, 440))
    fig = Image.new("RGB", (1320, 420 + 470 + 60), "white")
    fig.paste(diagram(1320, 420), (0, 0))
    fig.paste(raw, (0, 470))
    fig.paste(panel, (670, 470))
    d = ImageDraw.Draw(fig)
    caption(d, show, args.labels, args.epochs, scores[show])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.save(OUT)
    print(json.dumps({"out": str(OUT), "train_stats": stats, "dice_held_out": scores}, indent=2, default=str))


if __name__ == "__main__":
    main()
