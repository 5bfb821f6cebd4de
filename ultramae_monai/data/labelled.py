"""Labelled data lists for fine-tuning, from whatever layout a user has (detected, never configured).

Accepted layouts of ``dataset_dir``:

* **JSON data list**: ``dataset_dir`` is a ``.json`` file, or holds ``datalist.json`` / ``dataset.json``: a list
  of items, or ``{"training": [...], "validation": [...], "test": [...], "class_names": [...]}`` (MONAI's
  decathlon keys), each item ``{"image": path, "label": class name / index / mask path, "group": id}``; paths
  are relative to the JSON file.
* **class-per-folder** (classification): one sub-folder per class, images anywhere below it.
* **image/mask pairs** (segmentation): an ``images/`` folder with ``masks/`` (or ``labels/``, ``annotations/``,
  ``segmentations/``) beside it, or images and masks side by side; a mask pairs with the image whose name it
  extends by a mask marker (``_mask``, ``_Annotation``, ``_seg``, ``_label``, ...) or whose name it shares.

File names may hold spaces, parentheses and anything else the file system allows. Every item gets a ``group``
(patient / exam) so splits never put one exam on both sides: the JSON's ``group``, else the leading exam number
of names like ``001_HC.png`` / ``001_2HC.png`` (HC18), else the file itself.

Problems are found before training, each raised as one line naming the file: a class folder without images,
a mask whose size differs from its image's, a label outside the declared classes, an image without a mask.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from PIL import Image

from ultramae_monai.data.load import SUPPORTED_SUFFIXES
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = [
    "CLASSIFICATION",
    "MASK_DIRS",
    "MASK_MARKERS",
    "SEGMENTATION",
    "check_mask_sizes",
    "classification_items",
    "detect_layout",
    "group_of",
    "inference_items",
    "json_items",
    "segmentation_items",
]

CLASSIFICATION, SEGMENTATION = "classification", "segmentation"
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "annotation", "segmentations", "ground_truth", "gt")
IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_MARKERS = ("_mask", "_Annotation", "_annotation", "_seg", "_label", "_labels", "_gt", "-mask", "_masks")
_MASK_RE = re.compile(r"(" + "|".join(re.escape(m) for m in MASK_MARKERS) + r")(_\d+)?$", re.IGNORECASE)
_EXAM_RE = re.compile(r"^(\d+)_")
_DATALIST_NAMES = ("datalist.json", "dataset.json", "data_list.json")
_IGNORED = ("manifest.csv", "readme", "source.md", "license")


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return "nii.gz" if name.endswith(".nii.gz") else p.suffix.lower().lstrip(".")


def _is_data_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and _suffix(p) in SUPPORTED_SUFFIXES


def _stem(p: Path) -> str:
    return p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem


def _is_mask_name(p: Path) -> bool:
    return bool(_MASK_RE.search(_stem(p)))


def _existing_dir(path: str | PathLike) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise UnreadableFileError("dataset folder not found", root)
    return root


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_data_file(p))


def group_of(path: str | PathLike, explicit: Any = None) -> str:
    """Patient / exam id of an item: the explicit one, else a leading ``NNN_`` exam number, else the file."""
    if explicit not in (None, ""):
        return str(explicit)
    p = Path(path)
    m = _EXAM_RE.match(_stem(p))
    return f"{p.parent.name}/{m.group(1)}" if m else str(p)


def _find_datalist(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() == ".json":
        return root
    for name in _DATALIST_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def detect_layout(dataset_dir: str | PathLike) -> str:
    """``json``, ``segmentation`` (image/mask pairs) or ``classification`` (class-per-folder)."""
    root = Path(dataset_dir)
    if not root.exists():
        raise UnreadableFileError("dataset folder not found", root)
    if _find_datalist(root) is not None:
        return "json"
    subdirs = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if subdirs & set(MASK_DIRS) or any(_is_mask_name(p) for p in root.iterdir() if _is_data_file(p)):
        return SEGMENTATION
    return CLASSIFICATION


def _check_classes(found: Sequence[str], declared: Sequence[str] | None, where: dict[str, Path]) -> list[str]:
    if not declared:
        return sorted(found)
    for name in found:
        if name not in declared:
            raise InvalidInputError(f"label {name!r} is not one of the declared classes {list(declared)}", where[name])
    return list(declared)


def classification_items(
    dataset_dir: str | PathLike, class_names: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Items ``{"image", "label" (index), "group"}`` and the class names of a class-per-folder tree.

    Mask files (``*_mask.png``, as BUSI ships them beside its images) are not samples and are skipped.
    """
    root = _existing_dir(dataset_dir)
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not folders:
        raise InvalidInputError("no class folders (expected one sub-folder of images per class)", root)
    names = _check_classes(list(folders), class_names, folders)
    items: list[dict[str, Any]] = []
    for name, folder in folders.items():
        files = [p for p in _files(folder) if not _is_mask_name(p)]
        if not files:
            raise InvalidInputError(
                f"class folder {name!r} holds no images ({', '.join(SUPPORTED_SUFFIXES[:6])} ...)", folder
            )
        items += [{"image": str(p), "label": names.index(name), "group": group_of(p)} for p in files]
    return items, names


def _mask_key(p: Path) -> str:
    return _MASK_RE.sub("", _stem(p)).lower()


def segmentation_items(dataset_dir: str | PathLike, check_sizes: bool = True) -> list[dict[str, Any]]:
    """Items ``{"image", "label" (mask path), "group"}`` of an image/mask layout (see the module docstring)."""
    root = _existing_dir(dataset_dir)
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    mask_dir = next((sub[d] for d in MASK_DIRS if d in sub), None)
    image_dir = next((sub[d] for d in IMAGE_DIRS if d in sub), root)
    if mask_dir is not None:
        images = [p for p in _files(image_dir) if mask_dir not in p.parents]
        masks = _files(mask_dir)
    else:
        files = _files(root)
        images = [p for p in files if not _is_mask_name(p)]
        masks = [p for p in files if _is_mask_name(p)]
    by_key: dict[str, Path] = {}
    for m in masks:
        by_key.setdefault(_mask_key(m), m)
    items = []
    for img in images:
        mask = by_key.get(_stem(img).lower())
        if mask is None:
            raise InvalidInputError("image has no mask (expected a mask named like the image)", img)
        items.append({"image": str(img), "label": str(mask), "group": group_of(img)})
    if not items:
        raise InvalidInputError("no image/mask pairs found", root)
    if check_sizes:
        check_mask_sizes(items)
    return items


def check_mask_sizes(items: Sequence[dict[str, Any]]) -> None:
    """Raise, naming the mask, when a mask's pixel size differs from its image's (header-only for stills)."""
    for item in items:
        img, mask = Path(item["image"]), Path(item["label"])
        try:
            with Image.open(img) as a, Image.open(mask) as b:
                size_a, size_b = a.size, b.size
        except OSError:
            continue  # not a still Pillow reads (DICOM, NIfTI): the loader checks shapes later
        if size_a != size_b:
            raise InvalidInputError(
                f"mask is {size_b[0]}x{size_b[1]} but its image {img.name!r} is {size_a[0]}x{size_a[1]} (WxH)", mask
            )


def json_items(
    path: str | PathLike, task: str, class_names: Sequence[str] | None = None
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Items per section (``training``, ``validation``, ``test``) of a JSON data list, and the class names."""
    p = _find_datalist(Path(path)) or Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise UnreadableFileError(f"not a readable JSON data list ({err})", p) from err
    base = p.parent
    sections = (
        {"training": doc} if isinstance(doc, list) else {k: doc.get(k, []) for k in ("training", "validation", "test")}
    )
    declared = class_names or (doc.get("class_names") if isinstance(doc, dict) else None)
    out: dict[str, list[dict[str, Any]]] = {}
    raw_labels = [it.get("label") for items in sections.values() for it in items]
    if task == CLASSIFICATION:
        found = sorted({str(x) for x in raw_labels if not isinstance(x, int)})
        names = list(declared) if declared else found
        if not names:
            names = [str(i) for i in range(max(int(x) for x in raw_labels) + 1)]
    else:
        names = list(declared or ["background", "foreground"])
    for section, items in sections.items():
        rows = []
        for it in items:
            img = base / it["image"]
            if not img.exists():
                raise UnreadableFileError("image listed in the data list not found", img)
            row: dict[str, Any] = {"image": str(img), "group": group_of(img, it.get("group", it.get("patient")))}
            label = it.get("label")
            if task == CLASSIFICATION:
                if isinstance(label, int):
                    if not 0 <= label < len(names):
                        raise InvalidInputError(f"label {label} is outside the {len(names)} declared classes", img)
                    row["label"] = label
                elif str(label) not in names:
                    raise InvalidInputError(f"label {label!r} is not one of the declared classes {names}", img)
                else:
                    row["label"] = names.index(str(label))
            elif label is not None:
                row["label"] = str(base / label)
            rows.append(row)
        out[section] = rows
    if task == SEGMENTATION:
        check_mask_sizes([r for rows in out.values() for r in rows if "label" in r])
    return out, names


def inference_items(dataset_dir: str | PathLike) -> list[dict[str, str]]:
    """Images to run a model on: a JSON list's images, a pair layout's images, or every image below the folder."""
    root = Path(dataset_dir)
    if root.is_file() and root.suffix.lower() != ".json":
        return [{"image": str(root)}]
    datalist = _find_datalist(root)
    if datalist is not None:
        doc = json.loads(datalist.read_text())
        rows = (
            doc if isinstance(doc, list) else [it for k in ("test", "validation", "training") for it in doc.get(k, [])]
        )
        return [{"image": str(datalist.parent / it["image"])} for it in rows]
    files = _files(root)
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    mask_dirs = [sub[d] for d in MASK_DIRS if d in sub]
    files = [p for p in files if not _is_mask_name(p) and not any(m in p.parents for m in mask_dirs)]
    files = [p for p in files if p.name.lower() not in _IGNORED]
    if not files:
        raise InvalidInputError("no images found", root)
    return [{"image": str(p)} for p in files]
