"""End-to-end curation over a small real subset: HC18 and BUSI images, two short POCUS videos, the
deid-data DICOMs (with real PHI in their headers), a cropped RESECT volume, and planted corrupt files.

Checks: counts and quarantine report; every failed file named (relative to SRC) in the operator's private
report and in the printed summary; arrays, dtypes and masks as the manifest says; no PHI anywhere in OUT
outside ``OUT/private`` (every identifying header value and every source file/folder name is grepped for, in
the raw bytes of every file, arrays included) nor in what the real run printed (captured at the file
descriptors, progress bar included); a re-run redoes nothing; a run killed between the manifest and the
ledger resumes without duplicates; patient-grouped split.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultramae_monai.curation.options import CurationOptions
from ultramae_monai.curation.pipeline import MANIFEST_NAME, run_curation
from ultramae_monai.curation.quarantine import PRIVATE_DIR, locate, read_failed_files, read_quarantine
from ultramae_monai.curation.walk import find_sources
from ultramae_monai.data.manifest import read_manifest

SALT = "test-salt-0123456789abcdef0123456789"
PHI_VRS = {"PN", "DA", "DT", "TM", "UI", "LO", "SH", "LT", "ST", "AS"}
PHI_GROUPS = {0x0008, 0x0010, 0x0020, 0x0032, 0x0038, 0x0040}  # study, patient, ids, visit, procedure
HC18_EXAM = r"(\d{3})_\d?HC\.png$"
OPTS = dict(
    workers=2,
    max_side=64,
    confidence=True,
    clips_per_cine=1,
    frames_per_cine=3,
    val_fraction=0.5,
    group_regex=HC18_EXAM,
)


def _deid_dir() -> Path:
    deid_data = pytest.importorskip("deid_data")
    d = Path(deid_data.__file__).parent / "data" / "ultrasounds"
    if not d.is_dir():
        pytest.skip("deid-data has no ultrasounds folder")
    return d


def _build_tree(root: Path, shared: Path) -> dict[str, int]:
    """The subset, plus 4 corrupt files, 1 non-image file and 1 label mask (excluded by name)."""
    import nibabel as nib

    (root / "hc18").mkdir(parents=True)
    for name in ("010_HC.png", "010_2HC.png", "001_HC.png"):
        shutil.copy(shared / "hc18" / "images" / name, root / "hc18" / name)
    (root / "hc18" / "annotations").mkdir()
    shutil.copy(shared / "hc18" / "annotations" / "001_HC_Annotation.png", root / "hc18" / "annotations")
    phi_folder = root / "ZZZDOWNTIME^MARY 19850306"  # PHI in folder and file names must never reach OUT
    phi_folder.mkdir()
    shutil.copy(shared / "busi" / "benign" / "benign (3).png", phi_folder / "DOE_JOHN_40404040404.png")
    shutil.copy(shared / "busi" / "malignant" / "malignant (1).png", root / "malignant (1).png")
    (root / "pocus").mkdir()
    videos = sorted((shared / "pocus" / "pocus_videos").rglob("*_liftl_pneu_case3_clip3.mp4"))
    videos += sorted((shared / "pocus" / "pocus_videos").rglob("*Basal-pneumonia-RUQ_crop.mp4"))
    for v in videos[:2]:
        shutil.copy(v, root / "pocus" / v.name)
    deid = root / "dicom"
    deid.mkdir()
    for f in sorted(_deid_dir().glob("*.dcm")):
        shutil.copy(f, deid / f.name)
    with zipfile.ZipFile(_deid_dir() / "GREYSCALE_CINE.zip") as z:
        z.extractall(deid)
    img = nib.load(shared / "resect_3dus" / "Case3_US-before.nii.gz")
    vol = np.asarray(img.dataobj[96:160, 96:160, 112:176], dtype=np.float32)
    (root / "resect").mkdir()
    nib.save(nib.Nifti1Image(vol, img.affine), root / "resect" / "case3_crop.nii.gz")
    # corrupt files: each must land in the quarantine report and not stop the run
    (root / "bad").mkdir()
    (root / "bad" / "empty.dcm").write_bytes(b"")
    data = videos[0].read_bytes()
    (root / "bad" / "clipped.mp4").write_bytes(data[: len(data) // 50])  # not "truncated": a word causes use
    (root / "bad" / "noise.png").write_bytes(np.random.default_rng(0).bytes(4096))
    vol[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), root / "bad" / "nan.nii.gz")
    # a valid PNG of random noise: no scan region, counted apart; a DICOM with PHI cut off in its pixel data
    noise = np.random.default_rng(1).integers(0, 256, (96, 128), dtype=np.uint8)
    Image.fromarray(noise).save(root / "bad" / "static.png")
    with_phi = max(deid.glob("*.dcm"), key=lambda p: p.stat().st_size).read_bytes()
    (root / "bad" / "cut.dcm").write_bytes(with_phi[: len(with_phi) * 3 // 4])
    (root / "notes.txt").write_text("not an image")
    return {"supported": 3 + 2 + len(videos[:2]) + len(list(deid.glob("*.dcm"))) + 1 + 6, "ignored": 2}


def _phi_values(dicoms: list[Path]) -> set[str]:
    """Every identifying value of the headers: person names, dates, UIDs, ids, institution, texts."""
    import pydicom

    values: set[str] = set()
    for f in dicoms:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for el in ds.iterall():
            if el.VR not in PHI_VRS or el.tag.group not in PHI_GROUPS | {g for g in [el.tag.group] if g % 2}:
                continue
            vals = el.value if isinstance(el.value, (list, pydicom.multival.MultiValue)) else [el.value]
            for v in vals:
                s = str(v).strip()
                if s and not s.startswith("1.2.840.10008."):  # DICOM standard class UIDs identify nobody
                    values.add(s)
                    values.update(p for p in re.split(r"[\^\r\n]", s) if len(p.strip()) >= 4)
    return values


@contextlib.contextmanager
def _captured_fds(sink: list[str]) -> Iterator[None]:
    """Everything written to file descriptors 1 and 2 in the block (Python, tqdm and C libraries alike)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as f, open(f.fileno(), "w", closefd=False) as text:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:  # Python-level streams too: pytest replaces sys.stdout/sys.stderr with its own
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        finally:
            text.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            f.seek(0)
            sink.append(f.read().decode("utf-8", "replace"))


@pytest.fixture(scope="module")
def curated(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("curate")
    src, out = base / "src", base / "out"
    counts = _build_tree(src, shared_data)
    opts = CurationOptions(**OPTS)
    printed: list[str] = []
    with _captured_fds(printed):  # the real run, progress bar on, and the summary the command prints
        report = run_curation(src, out, opts, salt=SALT, progress=True)
        print(report)
    return {"src": src, "out": out, "report": report, "counts": counts, "opts": opts, "printed": printed[0]}


def test_counts_and_quarantine(curated):
    r, counts = curated["report"], curated["counts"]
    assert r.files_seen == counts["supported"] and r.files_ignored == counts["ignored"]
    assert r.quarantined == 6 and r.curated == counts["supported"] - 6 and r.skipped_done == 0
    assert r.no_scan_region == 1 and "no scan region 1" in str(r)
    q = read_quarantine(curated["out"])
    assert sorted(e.suffix for e in q) == [".dcm", ".dcm", ".mp4", ".nii.gz", ".png", ".png"]
    assert all(e.cause and e.error for e in q)
    assert next(e for e in q if e.suffix == ".nii.gz").error == "InvalidInputError"
    assert [e.error for e in q].count("NoScanRegionError") == 1
    assert any(e.cause.startswith("truncated DICOM") for e in q)
    assert set(r.samples) == {"still", "cine", "volume"}
    assert "curated" in str(r) and "quarantined 6" in str(r)
    # the operator can map quarantine tokens back to files (with the salt and the tree)
    sources, _ = find_sources(curated["src"], curated["opts"].exclude)
    found = locate(curated["src"], [e.source for e in q], SALT.encode(), [s.path for s in sources])
    assert sorted(p.parent.name for p in found.values()) == ["bad"] * 6


def test_every_failed_file_is_named_for_the_operator(curated):
    bad = sorted(f"bad/{p.name}" for p in (curated["src"] / "bad").iterdir())
    assert sorted(curated["report"].failed) == bad
    rows = read_failed_files(curated["out"])
    assert sorted(row["path"] for row in rows) == bad and all(row["cause"] and row["error"] for row in rows)
    private = curated["out"] / PRIVATE_DIR
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE((private / "failed_files.jsonl").stat().st_mode) == 0o600
    summary = curated["printed"]
    assert "failed files: 6" in summary and all(
        re.search(rf"^  {re.escape(rel)} +\w+Error$", summary, re.M) for rel in bad
    )


def test_arrays_match_the_manifest(curated):
    out = curated["out"]
    recs = read_manifest(out / MANIFEST_NAME)
    assert len({r.id for r in recs}) == len(recs)
    for r in recs:
        img = np.load(out / r.path)
        assert list(img.shape) == r.shape and img.dtype == np.uint8
        assert max(img.shape[-2:]) <= 64 if r.kind != "volume" else max(img.shape[1:]) <= 64
        assert r.source_type in {"dicom", "video", "image", "volume"} and r.patient and r.study
        if r.kind == "volume":
            assert img.ndim == 4 and r.confidence is None
            continue
        conf = np.load(out / r.confidence)
        fov = np.load(out / r.fov_mask)
        assert conf.dtype == np.float16 and conf.shape == (1, *img.shape[1:])
        assert float(conf.min()) >= 0.0 and float(conf.max()) <= 1.0
        assert fov.dtype == bool and fov.shape == (1, *img.shape[-2:])
        outside = ~fov[0]
        assert not img[..., outside].any()  # blanked outside the scan region
        if r.kind == "cine":
            assert img.ndim == 4 and img.shape[1] == curated["opts"].clip_length and r.fps and r.fps > 0


def test_split_is_grouped_by_patient(curated):
    recs = read_manifest(curated["out"] / MANIFEST_NAME)
    by_patient: dict[str, set[str]] = {}
    for r in recs:
        by_patient.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r.split for r in recs} == {"train", "val"}
    # the two HC18 images of exam 010 are one patient; deid-data's grey still and cine share a study
    images = [r for r in recs if r.source_type == "image"]  # 3 HC18 files (2 of exam 010) + 2 BUSI
    assert len({r.source for r in images}) == 5 and len({r.patient for r in images}) == 4
    grey = [r for r in recs if r.source_type == "dicom" and r.kind == "cine"]
    assert grey and len({r.study for r in recs if r.source_type == "dicom"}) < len(
        {r.source for r in recs if r.source_type == "dicom"}
    )


def test_no_phi_in_output_or_logs(curated):
    src, out = curated["src"], curated["out"]
    dicoms = sorted(src.rglob("*.dcm"))
    phi = _phi_values([d for d in dicoms if d.stat().st_size])
    assert {"ZZZ TEST PATIENTFIVE^NEW^P^", "2020202020202", "19510829", "CCHS CLEVELAND CLINIC CANADA"} <= phi
    names = {p.name for p in src.rglob("*")} | {p.name.split(".")[0] for p in src.rglob("*")}
    phi |= {n for n in names if len(n) >= 6} | {"ZZZDOWNTIME", "DOE_JOHN", "19850306", "40404040404"}
    hexlike = re.compile(r"^[0-9a-f]+$")
    text_needles = [v.encode() for v in phi if len(v) >= 4 and not (len(v) < 8 and hexlike.match(v))]
    binary_needles = [n for n in text_needles if len(n) >= 6]  # shorter byte strings occur by chance in pixels
    private = out / PRIVATE_DIR  # the operator's own report names failed files (documented, never shared)
    files = [p for p in out.rglob("*") if p.is_file() and p.name != ".salt" and private not in p.parents]
    assert len(files) > 20
    for p in files:
        data = p.read_bytes()
        needles = binary_needles if p.suffix == ".npy" else text_needles
        leaks = [n for n in needles if n in data]
        assert not leaks, f"{p.relative_to(out)} holds PHI {leaks[:3]}"
        assert not any(n in p.relative_to(out).as_posix().encode() for n in text_needles)
    # what the real run printed (progress bar and summary) holds no PHI; it names the failed files, which
    # are the operator's (under bad/), and nothing else of the tree
    failed_names = {
        n for rel in curated["report"].failed for n in (rel, *rel.split("/"), rel.split("/")[-1].split(".")[0])
    }
    printed = curated["printed"].encode()
    assert "files seen" in curated["printed"] and "curate" in curated["printed"]  # the bar and the summary
    assert not [n for n in text_needles if n in printed and n.decode() not in failed_names]


def test_rerun_redoes_nothing(curated):
    out = curated["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.npy")}
    report = run_curation(curated["src"], out, curated["opts"], salt=SALT, progress=False)
    assert report.curated == 0 and report.quarantined == 0
    assert report.skipped_done == curated["report"].files_seen
    after = {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.npy")}
    assert after == before


def test_resume_after_a_kill_redoes_only_unfinished_files(curated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(curated["out"], out)
    manifest = out / MANIFEST_NAME
    n_records = len(read_manifest(manifest))
    ledger = out / "state" / "done.jsonl"
    lines = ledger.read_text().splitlines()
    curated_lines = [ln for ln in lines if json.loads(ln)["status"] == "curated"][-2:]
    ledger.write_text("\n".join(ln for ln in lines if ln not in curated_lines) + "\n")  # killed before marking 2
    with manifest.open("a") as f:
        f.write('{"id":"torn-by-a-kill","path":"samp')
    report = run_curation(curated["src"], out, curated["opts"], salt=SALT, progress=False)
    assert report.curated == 2 and report.skipped_done == curated["report"].files_seen - 2
    recs = read_manifest(manifest)
    assert len(recs) == n_records and len({r.id for r in recs}) == n_records


def test_changed_salt_is_refused(curated):
    from ultramae_monai.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="different salt"):
        run_curation(curated["src"], curated["out"], curated["opts"], salt="another-salt-0123456789", progress=False)


@pytest.mark.parametrize("bad", ["nonexistent"])
def test_missing_source_folder_is_a_clear_error(tmp_path, bad):
    from ultramae_monai.errors import UnreadableFileError

    with pytest.raises(UnreadableFileError, match="source folder not found"):
        run_curation(tmp_path / bad, tmp_path / "out", CurationOptions(workers=1), salt=SALT, progress=False)


def test_cli_prints_counts(curated, capsys):
    from ultramae_monai.cli import main

    assert main(["curate", str(curated["src"]), str(curated["out"]), "--salt", SALT, "--progress", "False"]) == 0
    printed = capsys.readouterr().out
    assert "skipped as done" in printed and f"files seen {curated['report'].files_seen}" in printed
    assert os.fspath(curated["src"]) not in printed
