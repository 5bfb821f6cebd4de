"""Does UltraMAE pretraining beat training from scratch, and does the CWUS target beat plain pixels?

A reproducible, CPU-sized study on the real data in ``../shared/data`` (issue 16). Steps (``scripts/study.sh``
runs them in order; each writes under ``--out``, default ``study_out/``, which git ignores):

``split``      labelled splits, fixed seed: BUSI grouped by near-duplicate (dHash within 10 of 256 bits, union-find,
               as BUSI has no patient ids and ships near-copies), stratified by class; HC18 grouped by exam
               (``NNN_HC.png`` / ``NNN_2HC.png`` share ``NNN``). 60 / 20 / 20 % of groups for train / val / test.
``pool``       a symlink tree of every still of ``../shared/data`` except the BUSI/HC18 test images (and HC18
               annotations), to curate with ``ultramae curate`` as the unlabelled pretraining pool.
``labelled``   the labelled images resized to ``--size`` (grey, [0, 1]) with HC18 masks (filled skull outline),
               cached in one ``.npz``.
``recon``      masked-patch reconstruction error of a pretraining checkpoint on validation stills, against the
               baseline that predicts every masked patch as the mean of the visible ones.
``probe``      linear probe (frozen encoder, mean-pooled tokens, L2-regularised logistic regression with the
               penalty chosen on the validation split) on BUSI, for every checkpoint of a run.
``datalists``  the grouped splits as the fine-tuning bundles' JSON data lists (the bundles then fine-tune).
``report``     docs/results.md tables and docs/images/study_*.png plots from everything written so far.

Test metrics are written once, after training with hyper-parameters fixed in advance or picked on validation;
nothing here reads a test number to choose anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BUSI_CLASSES = ("benign", "malignant", "normal")
HC18_EXAM = re.compile(r"^(\d{3})_\d?HC\.png$")
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


# ---------------------------------------------------------------------------------------------------- splits
def _grey(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def _union_find_groups(hashes: np.ndarray, threshold: int) -> list[int]:
    from ultramae_monai.curation.dedup import hamming

    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes)):
        close = np.nonzero(hamming(hashes[i], hashes[i + 1 :]) <= threshold)[0] + i + 1
        for j in close:
            parent[find(int(j))] = find(i)
    return [find(i) for i in range(len(hashes))]


def _assign(groups: dict[str, list[str]], strata: dict[str, str], seed: int) -> dict[str, str]:
    """Group id -> split, stratified by the group's label, fixed seed."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for label in sorted(set(strata.values())):
        ids = sorted(g for g in groups if strata[g] == label)
        rng.shuffle(ids)
        n = len(ids)
        n_test, n_val = round(n * FRACTIONS["test"]), round(n * FRACTIONS["val"])
        for k, g in enumerate(ids):
            out[g] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def cmd_split(args: argparse.Namespace) -> None:
    from ultramae_monai.curation.dedup import dhash

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # BUSI: near-duplicate groups (a group mixing classes keeps its majority class as stratum)
    files = [(c, p) for c in BUSI_CLASSES for p in sorted((data / "busi" / c).glob("*.png"))]
    hashes = np.stack([dhash(_grey(p)) for _, p in files])
    roots = _union_find_groups(hashes, args.dedup_threshold)
    groups: dict[str, list[str]] = {}
    for (_, p), r in zip(files, roots, strict=True):
        groups.setdefault(f"g{r}", []).append(str(p.relative_to(data)))
    label = {str(p.relative_to(data)): c for c, p in files}
    strata = {g: max(BUSI_CLASSES, key=[label[m] for m in ms].count) for g, ms in groups.items()}
    split = _assign(groups, strata, args.seed)
    busi = [
        {"path": m, "label": label[m], "group": g, "split": split[g]} for g, ms in sorted(groups.items()) for m in ms
    ]
    # HC18: exam groups by NNN, stratified into one stratum
    hc = sorted((data / "hc18" / "images").glob("*HC.png"))
    exams: dict[str, list[str]] = {}
    for p in hc:
        m = HC18_EXAM.match(p.name)
        if m:
            exams.setdefault(m.group(1), []).append(str(p.relative_to(data)))
    split_hc = _assign(exams, dict.fromkeys(exams, "hc18"), args.seed)
    hc18 = [{"path": m, "group": g, "split": split_hc[g]} for g, ms in sorted(exams.items()) for m in ms]
    for name, rows in (("busi", busi), ("hc18", hc18)):
        (out / f"split_{name}.json").write_text(json.dumps(rows, indent=0))
        counts = {s: sum(r["split"] == s for r in rows) for s in FRACTIONS}
        print(f"{name}: {len(rows)} images, {len({r['group'] for r in rows})} groups, {counts}")
    n_dup = sum(len(ms) > 1 for ms in groups.values())
    print(f"busi: {n_dup} near-duplicate groups (dHash <= {args.dedup_threshold} bits) kept within one split")


def load_split(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"split_{name}.json").read_text())


def cmd_pool(args: argparse.Namespace) -> None:
    data, out = Path(args.data), Path(args.out)
    test = {r["path"] for name in ("busi", "hc18") for r in load_split(out, name) if r["split"] == "test"}
    pool = out / "pool"
    n = 0
    sources = [p for c in BUSI_CLASSES for p in (data / "busi" / c).glob("*.png")]
    sources += list((data / "hc18" / "images").glob("*.png"))
    sources += [p for p in (data / "pocus" / "pocus_images").rglob("*") if p.is_file()]
    for p in sorted(sources):
        rel = str(p.relative_to(data))
        if rel in test:
            continue
        link = pool / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(p.resolve())
        n += 1
    print(f"pool: {n} stills linked under {pool} ({len(test)} labelled test images left out)")


# ---------------------------------------------------------------------------------------------------- labelled
def _resize(img: np.ndarray, size: int, mode: str = "area") -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if mode == "nearest":
        return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].numpy()
    return F.interpolate(t, size=(size, size), mode="area")[0, 0].numpy()


def cmd_labelled(args: argparse.Namespace) -> None:
    from PIL import Image
    from scipy.ndimage import binary_fill_holes

    data, out = Path(args.data), Path(args.out)
    arrays: dict[str, np.ndarray] = {}
    busi = load_split(out, "busi")
    arrays["busi_x"] = np.stack([_resize(_grey(data / r["path"]), args.size) for r in busi]).astype(np.float32)
    arrays["busi_y"] = np.array([BUSI_CLASSES.index(r["label"]) for r in busi], dtype=np.int64)
    arrays["busi_split"] = np.array([r["split"] for r in busi])
    hc = load_split(out, "hc18")
    xs, ys = [], []
    for r in hc:
        p = data / r["path"]
        ann = np.asarray(
            Image.open(p.parent.parent / "annotations" / p.name.replace(".png", "_Annotation.png")).convert("L")
        )
        mask = binary_fill_holes(ann > 0).astype(np.float32)
        xs.append(_resize(_grey(p), args.size))
        ys.append((_resize(mask, args.size) >= 0.5).astype(np.int64))
    arrays["hc18_x"], arrays["hc18_y"] = np.stack(xs).astype(np.float32), np.stack(ys)
    arrays["hc18_split"] = np.array([r["split"] for r in hc])
    np.savez_compressed(out / f"labelled_{args.size}.npz", **arrays)
    print(f"labelled: BUSI {arrays['busi_x'].shape}, HC18 {arrays['hc18_x'].shape} -> {out}/labelled_{args.size}.npz")


def load_labelled(out: Path, size: int, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    z = np.load(out / f"labelled_{size}.npz")
    x, y, sp = z[f"{task}_x"], z[f"{task}_y"], z[f"{task}_split"]
    return {s: (x[sp == s], y[sp == s]) for s in FRACTIONS}


# ---------------------------------------------------------------------------------------------------- encoders
def load_checkpoint_model(path: str | Path):
    """UltraMAE and intensity of a pretraining checkpoint (trainer ``model`` or bundle ``network`` layout).

    The weights are loaded strictly and then compared tensor by tensor with the checkpoint, so an encoder that
    silently stayed at its initialisation cannot pass for a pretrained one.
    """
    from ultramae_monai.networks import UltraMAE

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("network", ckpt.get("model"))
    if state is None:
        raise KeyError(f"{path}: no 'network' or 'model' state dict, keys {sorted(ckpt)}")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    arch = json.loads((Path(path).parents[1] / "study_arch.json").read_text())
    model = UltraMAE(**arch)
    model.load_state_dict(state, strict=True)
    enc = model.encoder.state_dict()
    same = [torch.equal(enc[k], state[f"encoder.{k}"]) for k in enc]
    if not all(same) or len(enc) != sum(k.startswith("encoder.") for k in state):
        raise RuntimeError(f"{path}: encoder weights differ from the checkpoint's after loading")
    meta = ckpt.get("meta", {})
    return model, meta.get("intensity"), int(ckpt.get("step", -1))


def random_encoder(out: Path, seed: int):
    """The study's encoder (``arch.json``) at a fresh initialisation under ``seed``: the probe's random baseline."""
    from ultramae_monai.networks.tubelet_vit import UltraMAEEncoder

    arch = json.loads((out / "arch.json").read_text())
    torch.manual_seed(seed)
    enc = UltraMAEEncoder(
        in_channels=1, tubelet=arch["tubelet"], embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"],
    )  # fmt: skip
    return enc, None


def _step_of(path: Path) -> int:
    return int(re.findall(r"\d+", path.stem)[-1])


def checkpoints(run: Path) -> list[Path]:
    """Step checkpoints of a trainer run, by step, up to the study's common step (``pretrain_step.txt``) if set.

    Both targets are compared at the same step: when the session's time ran out before the scheduled end, the
    runs were stopped and the last step both had reached is written to ``pretrain_step.txt`` beside them.
    """
    paths = [p for p in (run / "checkpoints").glob("*.pt") if re.search(r"\d+", p.stem) and p.stem != "best"]
    cap = run.parent / "pretrain_step.txt"
    if cap.exists():
        paths = [p for p in paths if _step_of(p) <= int(cap.read_text())]
    return sorted(paths, key=_step_of)


def spread_checkpoints(run: Path, n: int) -> list[Path]:
    """At most ``n`` checkpoints of a run, evenly spread over its steps, the last one always included."""
    ck = checkpoints(run)
    if len(ck) <= n:
        return ck
    return [ck[round(i * (len(ck) - 1) / (n - 1))] for i in range(n)]


def final_checkpoint(run: Path) -> Path:
    return checkpoints(run)[-1]


def normalise(x: torch.Tensor, intensity: dict | None) -> torch.Tensor:
    """The encoder's input intensity: [0, 1] as pretrained, or the checkpoint's mean/std when it has one."""
    return x if not intensity else (x - intensity["mean"]) / intensity["std"]


# ---------------------------------------------------------------------------------------------------- recon
@torch.no_grad()
def recon_error(model, dataset, seed: int = 1) -> dict[str, float]:
    """Masked-patch MSE of the model and of the "mean of the visible patches" fill, same masks, same target.

    The fill predicts each masked token as the mean over the visible tokens of the same image (per pixel
    position of the patch), on the model's own target (pixels, or pixels x confidence for CWUS).
    """
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(dataset), 32):
        items = [dataset[j] for j in range(i, min(i + 32, len(dataset)))]
        x = torch.stack([torch.as_tensor(it["image"]) for it in items]).float()
        extra = {}
        for key in ("confidence", "fov_mask"):
            if all(key in it for it in items):
                extra[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
        if "confidence" in extra:
            extra["confidence"] = extra["confidence"].float()
        out = model(x, generator=gen, kind="still", **extra)
        target, mask, pred = out["target"].float(), out["mask"].float(), out["pred"].float()
        keep = torch.zeros_like(mask).scatter_(1, out["ids_keep"], 1.0)
        fill = (target * keep[..., None]).sum(1, keepdim=True) / keep.sum(1).clamp_min(1)[:, None, None]
        err_model = ((pred - target) ** 2).mean(-1)
        err_fill = ((fill - target) ** 2).mean(-1)
        sums += torch.tensor([(err_model * mask).sum(), (err_fill * mask).sum(), mask.sum()], dtype=torch.float64)
    m, f = float(sums[0] / sums[2]), float(sums[1] / sums[2])
    return {"model_mse": m, "mean_fill_mse": f, "ratio": m / f}


def _val_dataset(curated: Path, size: int, load_confidence: bool):
    from ultramae_monai.data import ManifestDataset

    return ManifestDataset(
        manifest=curated / "manifest.jsonl", dataset_dir=curated, split="val", img_size=size, in_channels=1,
        load_confidence=load_confidence, allow_empty=True,
    )  # fmt: skip


def cmd_recon(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = []
    for run in args.runs:
        run = Path(run)
        arch = json.loads((run / "study_arch.json").read_text())
        ds = _val_dataset(Path(args.curated), arch["img_size"], arch["target"] == "cwus")
        ckpts = checkpoints(run)
        for ck in spread_checkpoints(run, args.checkpoints):
            model, _, step = load_checkpoint_model(ck)
            r = {"run": run.name, "target": arch["target"], "step": step, **recon_error(model, ds)}
            print(json.dumps(r), flush=True)
            rows.append(r)
        # the same measure for a freshly initialised model of this architecture
        from ultramae_monai.networks import UltraMAE

        torch.manual_seed(0)
        r = {"run": run.name, "target": arch["target"], "step": 0, **recon_error(UltraMAE(**arch), ds)}
        rows.append(r)
        if args.images:
            target = arch["target"]
            save_recon_png(
                load_checkpoint_model(ckpts[-1])[0], ds, Path(args.docs) / "images" / f"study_recon_{target}.png"
            )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "recon.jsonl").open("w") as f:  # a re-run replaces the measurements
        for r in rows:
            f.write(json.dumps(r) + "\n")


@torch.no_grad()
def save_recon_png(model, dataset, path: Path, n: int = 6) -> None:
    """Rows: input | visible tokens | prediction (visible pasted back) | target, for ``n`` validation stills."""
    from PIL import Image

    items = [dataset[j] for j in range(0, len(dataset), max(1, len(dataset) // n))][:n]
    x = torch.stack([torch.as_tensor(it["image"]) for it in items]).float()
    extra = {}
    if "confidence" in items[0]:
        extra["confidence"] = torch.stack([torch.as_tensor(it["confidence"]) for it in items]).float()
    model.eval()
    out = model(x, generator=torch.Generator().manual_seed(1), kind="still", **extra)
    v = model.reconstruct(x, out)
    paste = v["pred"] * (1 - v["visible"]) + v["target"] * v["visible"]
    cols = [x, v["masked"], paste, v["target"]]
    rows = [torch.cat([c[i, 0].clamp(0, 1) for c in cols], dim=1) for i in range(len(items))]
    grid = (torch.cat(rows, dim=0).numpy() * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


# ---------------------------------------------------------------------------------------------------- metrics
def auc_ovr(prob: np.ndarray, y: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC (Mann-Whitney form, ties counted half)."""
    from scipy.stats import rankdata

    aucs = []
    for c in range(prob.shape[1]):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        r = rankdata(prob[:, c])
        aucs.append((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))
    return float(np.mean(aucs))


def classification_metrics(prob: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = prob.argmax(1)
    f1s, recalls = [], []
    for c in range(prob.shape[1]):
        tp = float(((pred == c) & (y == c)).sum())
        fp, fn = float(((pred == c) & (y != c)).sum()), float(((pred != c) & (y == c)).sum())
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1.0))
        recalls.append(tp / max(tp + fn, 1.0))
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(np.mean(f1s)),
        "auc": auc_ovr(prob, y),
    }


def segmentation_metrics(pred: np.ndarray, y: np.ndarray, hd95: bool = True) -> dict[str, float]:
    """Mean Dice, IoU and HD95 (pixels of the working grid) of binary masks ``(N, H, W)``."""
    from monai.metrics import compute_hausdorff_distance

    inter = (pred & y).sum((1, 2)).astype(float)
    ps, ys = pred.sum((1, 2)).astype(float), y.sum((1, 2)).astype(float)
    dice = 2 * inter / np.maximum(ps + ys, 1)
    iou = inter / np.maximum(ps + ys - inter, 1)
    if not hd95:
        return {"dice": float(dice.mean()), "iou": float(iou.mean())}
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m], 1).astype(np.float32))  # noqa: E731
    hd = compute_hausdorff_distance(one_hot(pred), one_hot(y), include_background=False, percentile=95).numpy()
    hd = np.where(np.isfinite(hd[:, 0]), hd[:, 0], float(pred.shape[-1]))  # empty prediction: the grid size
    return {"dice": float(dice.mean()), "iou": float(iou.mean()), "hd95": float(hd.mean())}


# ---------------------------------------------------------------------------------------------------- probe
@torch.no_grad()
def features(encoder, x: np.ndarray, intensity: dict | None, batch: int = 64) -> np.ndarray:
    """Mean-pooled final tokens of a frozen encoder, ``(N, D)``."""
    encoder.eval()
    feats = []
    for i in range(0, len(x), batch):
        xb = normalise(torch.from_numpy(x[i : i + batch])[:, None], intensity)
        feats.append(encoder.forward_features(xb, kind="still").mean(1))
    return torch.cat(feats).numpy()


def logistic_probe(ftr, ytr, fva, yva, fte, yte, classes: int = 3) -> dict[str, float]:
    """Multinomial logistic regression on standardised features; L2 penalty chosen on validation macro-F1."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    t = lambda a: torch.from_numpy((a - mu) / sd).float()  # noqa: E731
    xtr, xva, xte = t(ftr), t(fva), t(fte)
    best = None
    for wd in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        torch.manual_seed(0)
        lin = nn.Linear(xtr.shape[1], classes)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")
        ytr_t = torch.from_numpy(ytr)

        def closure(opt=opt, lin=lin, ytr_t=ytr_t, wd=wd):
            opt.zero_grad()
            loss = F.cross_entropy(lin(xtr), ytr_t) + wd * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            val = classification_metrics(lin(xva).softmax(1).numpy(), yva)
        if best is None or val["macro_f1"] > best[0]["macro_f1"]:
            best = (val, wd, lin)
    val, wd, lin = best
    with torch.no_grad():
        test = classification_metrics(lin(xte).softmax(1).numpy(), yte)
    return {"wd": wd, **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()}}


def cmd_probe(args: argparse.Namespace) -> None:
    out = Path(args.out)
    d = load_labelled(out, args.size, "busi")
    rows = []
    jobs: list[tuple[str, int, object, dict | None]] = []
    for seed in range(args.random_seeds):
        enc, inten = random_encoder(out, seed)
        jobs.append(("random init", seed, enc, inten))
    for run in args.runs:
        run = Path(run)
        for ck in spread_checkpoints(run, args.checkpoints):
            model, inten, step = load_checkpoint_model(ck)
            jobs.append((run.name.removeprefix("pretrain_"), step, model.encoder, inten))
    for name, step, enc, inten in jobs:
        f = {s: features(enc, d[s][0], inten) for s in FRACTIONS}
        r = {"encoder": name, "step": step, **logistic_probe(f["train"], d["train"][1], f["val"], d["val"][1],
                                                          f["test"], d["test"][1])}  # fmt: skip
        print(json.dumps(r), flush=True)
        rows.append(r)
    # raw pixels at 16 x 16, the trivial reference
    px = {s: _pool_pixels(d[s][0]) for s in FRACTIONS}
    r = {"encoder": "16x16 pixels", "step": 0, **logistic_probe(px["train"], d["train"][1], px["val"], d["val"][1],
                                                                 px["test"], d["test"][1])}  # fmt: skip
    rows.append(r)
    print(json.dumps(r))
    (out / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pool_pixels(x: np.ndarray) -> np.ndarray:
    return F.adaptive_avg_pool2d(torch.from_numpy(x)[:, None], 16).flatten(1).numpy()


# ---------------------------------------------------------------------------------------------------- datalists
def cmd_datalists(args: argparse.Namespace) -> None:
    """The study's grouped splits as the fine-tuning bundles' JSON data lists (absolute paths, groups kept)."""
    out, data = Path(args.out), Path(args.data).resolve()
    keys = {"train": "training", "val": "validation", "test": "test"}
    for name in ("busi", "hc18"):
        lists: dict[str, list] = {v: [] for v in keys.values()}
        for r in load_split(out, name):
            item = {"image": str(data / r["path"]), "group": r["group"]}
            if name == "busi":
                item["label"] = r["label"]
            else:  # HC18: images/NNN_HC.png -> annotations/NNN_HC_Annotation.png (outline; the bundle fills it)
                p = data / r["path"]
                item["label"] = str(p.parent.parent / "annotations" / f"{p.stem}_Annotation.png")
            lists[keys[r["split"]]].append(item)
        if name == "busi":
            lists = {"class_names": ["benign", "malignant", "normal"], **lists}
        (out / f"datalist_{name}.json").write_text(json.dumps(lists, indent=1))
        print(name, {k: len(v) for k, v in lists.items() if k != "class_names"})


# ---------------------------------------------------------------------------------------------------- report
ARMS = ("scratch", "cwus", "pixel")
METRICS = {"busi": ("accuracy", "macro_f1", "roc_auc"), "hc18": ("mean_dice", "mean_iou", "hd95")}
BEGIN, END = "<!-- study:begin (written by scripts/study.py report) -->", "<!-- study:end -->"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _ms(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _plot_fractions(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for row, task in enumerate(("busi", "hc18")):
        for col, metric in enumerate(METRICS[task]):
            ax = axes[row, col]
            for arm in ARMS:
                fr = sorted({r["fraction"] for r in runs if r["task"] == task and r["arm"] == arm})
                if not fr:
                    continue
                vals = [[r[f"test_{metric}"] for r in runs if r["task"] == task and r["arm"] == arm
                         and r["fraction"] == f] for f in fr]  # fmt: skip
                mean = [np.mean(v) for v in vals]
                sd = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals]
                ax.errorbar([100 * f for f in fr], mean, yerr=sd, marker="o", capsize=3, label=arm)
            ax.set_xscale("log")
            ax.set_xticks([10, 100], ["10 %", "100 %"])
            ax.set_title(f"{'BUSI' if task == 'busi' else 'HC18'} {metric} (test)")
            ax.set_xlabel("labels used")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_pretraining(out: Path, recon: list[dict], probe: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for target in ("cwus", "pixel"):
        m = _jsonl(out / f"pretrain_{target}" / "metrics.jsonl")
        by_step = {r["step"]: r["train/loss"] for r in m if "train/loss" in r}  # a resumed run repeats steps
        tr = sorted(by_step.items())
        if tr:
            axes[0].plot(*zip(*tr, strict=True), label=f"{target} train", alpha=0.7)
        rr = sorted((r["step"], r["ratio"]) for r in recon if r["target"] == target)
        if rr:
            axes[1].plot(*zip(*rr, strict=True), marker=".", label=target)
        pr = sorted((r["step"], r["test_accuracy"] if False else r["val_balanced_accuracy"]) for r in probe
                    if r["encoder"] == target)  # fmt: skip
        if pr:
            axes[2].plot(*zip(*pr, strict=True), marker=".", label=target)
    rnd = [r["val_balanced_accuracy"] for r in probe if r["encoder"] == "random init"]
    px = [r["val_balanced_accuracy"] for r in probe if r["encoder"] == "16x16 pixels"]
    if rnd:
        axes[2].axhline(np.mean(rnd), color="grey", ls="--", label="random init (mean)")
    if px:
        axes[2].axhline(px[0], color="k", ls=":", label="16x16 pixels")
    axes[0].set(yscale="log", xlabel="step", ylabel="masked MSE (own target)", title="pretraining loss")
    axes[1].axhline(1.0, color="k", ls=":")
    axes[1].set(xlabel="step", ylabel="model / mean-of-visible MSE", title="masked-patch error ratio (val)")
    axes[2].set(xlabel="pretraining step", ylabel="balanced accuracy", title="BUSI linear probe (val)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _n_train(datalist: Path, fraction: float) -> int:
    """Training images a bundle keeps at ``fraction``: ceil(fraction * n) per class (BUSI) or overall (HC18)."""
    train = json.loads(datalist.read_text())["training"]
    if isinstance(train[0]["label"], str) and not train[0]["label"].endswith(".png"):
        counts = Counter(r["label"] for r in train)
        return sum(math.ceil(fraction * n) for n in counts.values())
    return math.ceil(fraction * len(train))


def bundle_runs(ft_dir: Path) -> list[dict]:
    """One row per finished fine-tuning run: the bundle's ``settings.json`` and its test ``metrics.json``."""
    rows = []
    for m in sorted(ft_dir.glob("*/metrics.json")):
        task, arm, _, _ = m.parent.name.split("_")
        s, metrics = json.loads((m.parent / "settings.json").read_text()), json.loads(m.read_text())
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        rows.append({"task": task, "arm": arm, "fraction": float(s["label_fraction"]), "seed": int(s["seed"]),
                     "n_train": _n_train(ft_dir.parent / f"datalist_{task}.json", float(s["label_fraction"])),
                     **{f"test_{k}": v for k, v in flat.items()}})  # fmt: skip
    return rows


def _tables(runs: list[dict]) -> list[str]:
    """Markdown tables, one per task: arms x label fractions, mean ± sd over seeds of the test metrics."""
    lines = []
    for task, title in (("busi", "BUSI 3-class classification"), ("hc18", "HC18 fetal-head segmentation")):
        ms = METRICS[task]
        unit = {"hd95": "HD95 (px, lower is better)", "roc_auc": "AUC (macro one-vs-rest)"}
        lines += [f"**{title}**", "", "| arm | labels | n train | seeds | " + " | ".join(unit.get(m, m) for m in ms)
                  + " |", "|---|---|---|---|" + "---|" * len(ms)]  # fmt: skip
        for frac in (0.1, 1.0):
            for arm in ARMS:
                sel = [r for r in runs if r["task"] == task and r["arm"] == arm and r["fraction"] == frac]
                if not sel:
                    lines.append(f"| {arm} | {frac:.0%} | | 0 | " + " | ".join("(not run)" for _ in ms) + " |")
                    continue
                cells = [_ms([r[f"test_{m}"] for r in sel], 2 if m == "hd95" else 3) for m in ms]
                lines.append(f"| {arm} | {frac:.0%} | {sel[0]['n_train']} | {len(sel)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    out, docs = Path(args.out), Path(args.docs)
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    runs = bundle_runs(out / "ft")
    recon, probe = _jsonl(out / "recon.jsonl"), _jsonl(out / "probe.jsonl")
    lines = [BEGIN, ""]
    if runs:
        _plot_fractions(runs, images / "study_label_fraction.png")
    if recon or probe:
        _plot_pretraining(out, recon, probe, images / "study_pretraining.png")
    lines += ["### Fine-tuning through the bundles (test split, mean ± sample standard deviation over seeds)", ""]
    lines += _tables(runs)
    renamed = {"test_auc": "test_roc_auc", "test_dice": "test_mean_dice", "test_iou": "test_mean_iou"}
    old = [json.loads(p.read_text()) for p in sorted((out / "finetune_step264").glob("*.json"))]
    old = [{**r, **{new: r[k] for k, new in renamed.items() if k in r}} for r in old]
    if old:
        lines += ["### For comparison only: the previous run (encoders at step 264 of 880, private fine-tuning "
                  "script, 40 steps, last model, no validation selection)", ""]  # fmt: skip
        lines += _tables(old)
    if runs:
        lines += ["![label fraction vs metrics](images/study_label_fraction.png)", ""]
    # reconstruction
    if recon:
        lines += ["### Masked-patch reconstruction (validation stills of the curated pool, fixed masks)", "",
                  "| target | step | model MSE | mean-of-visible MSE | ratio |", "|---|---|---|---|---|"]  # fmt: skip
        for r in sorted(recon, key=lambda r: (r["target"], r["step"])):
            lines.append(f"| {r['target']} | {r['step']} | {r['model_mse']:.5f} | {r['mean_fill_mse']:.5f} | "
                         f"{r['ratio']:.3f} |")  # fmt: skip
        lines.append("")
    # probe
    if probe:
        lines += ["### Linear probe on BUSI (frozen encoder, mean-pooled tokens, logistic regression; penalty picked "
                  "on validation macro-F1)", "",
                  "| features | step | val balanced acc. | test accuracy | test balanced acc. | test macro-F1 | test AUC |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        rnd = [r for r in probe if r["encoder"] == "random init"]
        if rnd:
            lines.append(f"| random init ({len(rnd)} seeds) | 0 | {_ms([r['val_balanced_accuracy'] for r in rnd])} | "
                         + " | ".join(_ms([r[f"test_{k}"] for r in rnd]) for k in
                                      ("accuracy", "balanced_accuracy", "macro_f1", "auc")) + " |")  # fmt: skip
        for r in probe:
            if r["encoder"] == "random init":
                continue
            lines.append(f"| {r['encoder']} | {r['step']} | {r['val_balanced_accuracy']:.3f} | "
                         + " | ".join(f"{r[f'test_{k}']:.3f}" for k in
                                      ("accuracy", "balanced_accuracy", "macro_f1", "auc")) + " |")  # fmt: skip
        lines.append("")
    if recon or probe:
        lines += ["![pretraining](images/study_pretraining.png)", ""]
    for target in ("cwus", "pixel"):
        if (images / f"study_recon_{target}.png").exists():
            lines += [f"Reconstructions, {target} (rows: validation stills; columns: input, visible tokens, "
                      "prediction with the visible tokens pasted back, target):", "",
                      f"![{target} reconstructions](images/study_recon_{target}.png)", ""]  # fmt: skip
    lines.append(END)
    block = "\n".join(lines)
    res = docs / "results.md"
    text = res.read_text() if res.exists() else "# Results\n"
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    res.write_text(text)
    print(f"report: {len(runs)} fine-tuning runs, {len(recon)} reconstruction rows, {len(probe)} probe rows -> {res}")


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="study_out")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dedup_threshold", type=int, default=10)
    sub.add_parser("pool")
    p = sub.add_parser("labelled")
    p.add_argument("--size", type=int, default=64)
    p = sub.add_parser("recon")
    p.add_argument("runs", nargs="+")
    p.add_argument("--curated", default="study_out/curated")
    p.add_argument("--checkpoints", type=int, default=6, help="checkpoints per run, spread over its steps")
    p.add_argument("--images", action="store_true", help="also write a reconstruction PNG per run")
    p.add_argument("--docs", default="docs")
    p = sub.add_parser("probe")
    p.add_argument("runs", nargs="*")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--random_seeds", type=int, default=3)
    p.add_argument("--checkpoints", type=int, default=6, help="checkpoints per run, spread over its steps")
    sub.add_parser("datalists")
    p = sub.add_parser("report")
    p.add_argument("--docs", default="docs")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    globals()[f"cmd_{args.cmd}"](args)


if __name__ == "__main__":
    main()
