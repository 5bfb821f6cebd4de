"""Unit tests of the curation building blocks (no readers needed): sampling plan, dHash dedup,
salted hashing and salt handling, split, storage dtypes, resume ledger, options."""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ultramae_monai.curation.clip_plan import plan_cine
from ultramae_monai.curation.dedup import DuplicateIndex, dhash, hamming
from ultramae_monai.curation.deid import Hasher, resolve_salt, scrub, source_identity
from ultramae_monai.curation.options import CurationOptions, load_options
from ultramae_monai.curation.split import assign_split
from ultramae_monai.curation.state import STATUS_CURATED, CurationState, LedgerEntry
from ultramae_monai.curation.writer import ArrayWriter, fit_long_side, resize_spatial, to_storage
from ultramae_monai.data.manifest import ManifestRecord, append_records, read_manifest
from ultramae_monai.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[1]


def test_plan_resamples_to_target_fps_and_spreads_clips():
    plan = plan_cine(300, fps=30.0, target_fps=10.0, clip_length=16, clips_per_cine=4, frames_per_cine=8)
    assert plan.stride == 3 and plan.fps == pytest.approx(10.0)
    span = 15 * 3 + 1
    assert len(plan.clip_starts) == 4
    ends = [s + span for s in plan.clip_starts]
    assert all(e <= s2 for e, s2 in zip(ends, plan.clip_starts[1:], strict=False))  # no overlap
    assert ends[-1] <= 300
    assert plan.still_indices[0] == 0 and plan.still_indices[-1] == 299 and len(plan.still_indices) == 8


def test_plan_lowers_stride_to_fit_and_skips_clips_of_short_cines():
    plan = plan_cine(20, fps=60.0, target_fps=10.0, clip_length=16, clips_per_cine=2, frames_per_cine=4)
    assert plan.stride == 1 and plan.clip_starts == (2,)  # one clip, centred
    short = plan_cine(10, fps=30.0, clip_length=16, frames_per_cine=4)
    assert short.clip_starts == () and len(short.still_indices) == 4
    unknown = plan_cine(100, fps=math.nan, target_fps=10.0, clip_length=16)
    assert unknown.stride == 1 and math.isnan(unknown.fps)


def test_dhash_tells_near_duplicates_from_different_images():
    rng = np.random.default_rng(0)
    a = rng.random((120, 160)) * 255
    noisy = a + rng.normal(0, 3, a.shape)
    other = rng.random((120, 160)) * 255
    ha, hn, ho = dhash(a), dhash(noisy), dhash(other)
    assert ha.shape == (32,) and ha.dtype == np.uint8
    assert hamming(ha, hn) <= 10 < hamming(ha, ho)
    assert hamming(ha, dhash(torch.as_tensor(a)[None].repeat(3, 1, 1))) == 0  # channel mean = grey
    index = DuplicateIndex(threshold=10)
    assert index.add_if_new(ha) and not index.add_if_new(hn) and index.add_if_new(ho)
    assert len(index) == 2
    off = DuplicateIndex(threshold=-1)
    assert off.add_if_new(ha) and off.add_if_new(ha)


def test_dedup_index_grows_past_its_initial_capacity():
    index = DuplicateIndex(threshold=0, nbytes=2)
    for i in range(200):
        assert index.add_if_new(np.array([i % 256, i // 256], dtype=np.uint8))
    assert len(index) == 200 and not index.add_if_new(np.array([5, 0], dtype=np.uint8))


def test_hasher_is_keyed_and_domain_separated():
    h1, h2 = Hasher(b"a" * 32), Hasher(b"b" * 32)
    assert h1("123", "patient") == h1("123", "patient") != h2("123", "patient")
    assert h1("123", "patient") != h1("123", "study")
    assert len(h1("x", "source")) == 16 and "123" not in h1("123", "patient")
    with pytest.raises(InvalidInputError):
        Hasher(b"short")


def test_salt_file_is_private_and_a_different_salt_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("ULTRAMAE_SALT", raising=False)
    key = resolve_salt(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / ".salt").st_mode)
    assert mode == 0o600 and len(key) == 64
    assert resolve_salt(tmp_path) == key  # resumed runs reuse it
    with pytest.raises(InvalidInputError, match="different salt"):
        resolve_salt(tmp_path, "another-salt-of-enough-length")
    monkeypatch.setenv("ULTRAMAE_SALT", "env-salt-0123456789abcdef")
    other = tmp_path / "other"
    assert resolve_salt(other) == b"env-salt-0123456789abcdef" and not (other / ".salt").exists()


def test_scrub_removes_path_and_names(tmp_path):
    p = tmp_path / "DOE_JOHN" / "exam_19510829.dcm"
    msg = f"cannot decode {p} (file exam_19510829.dcm in DOE_JOHN)"
    clean = scrub(msg, p, tmp_path)
    assert "DOE_JOHN" not in clean and "19510829" not in clean and "<source>" in clean


def test_identity_groups_non_dicom_files_by_regex_or_file():
    h = Hasher(b"k" * 32)
    pa, sa = source_identity("x/001_HC.png", "hc18/001_HC.png", h, False, "file", r"(\d{3})_\d?HC\.png$")
    pb, sb = source_identity("x/001_2HC.png", "hc18/001_2HC.png", h, False, "file", r"(\d{3})_\d?HC\.png$")
    pc, _ = source_identity("x/002_HC.png", "hc18/002_HC.png", h, False, "file", r"(\d{3})_\d?HC\.png$")
    assert pa == pb != pc and sa != sb
    f1, _ = source_identity("a/1.png", "a/1.png", h, False, "folder")
    f2, _ = source_identity("a/2.png", "a/2.png", h, False, "folder")
    g1, _ = source_identity("a/1.png", "a/1.png", h, False, "file")
    assert f1 == f2 != g1


def test_split_is_a_deterministic_function_of_the_patient():
    h = Hasher(b"s" * 32)
    tokens = [h(str(i), "patient") for i in range(2000)]
    splits = [assign_split(t, 0.1) for t in tokens]
    assert splits == [assign_split(t, 0.1) for t in tokens]
    assert 0.07 < splits.count("val") / len(splits) < 0.13
    assert all(assign_split(t, 0.0) == "train" for t in tokens[:50])
    assert all(assign_split(t, 1.0) == "val" for t in tokens[:50])


def test_storage_dtypes_and_resize(tmp_path):
    x = torch.tensor([[[0.0, 127.4, 255.0]]])
    arr, rng = to_storage(x, eight_bit=True)
    assert arr.dtype == np.uint8 and arr.tolist() == [[[0, 127, 255]]] and rng is None
    arr16, rng16 = to_storage(torch.tensor([[[100.0, 1100.0, 4100.0]]]), eight_bit=False)
    assert arr16.dtype == np.float16 and rng16 == [100.0, 4100.0] and float(arr16.max()) == 1.0
    assert fit_long_side((600, 800), 256) == (192, 256) and fit_long_side((100, 80), 256) == (100, 80)
    img = torch.arange(16.0).reshape(1, 4, 4)
    assert torch.allclose(resize_spatial(img, (2, 2)), torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))
    clip = torch.rand(1, 5, 8, 8)
    assert resize_spatial(clip, (4, 4)).shape == (1, 5, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :3] = 1  # the right block is half inside: kept
    assert resize_spatial(mask, (2, 2), mask=True).tolist() == [[[True, True], [True, True]]]
    w = ArrayWriter(tmp_path)
    p = w.write("abcdef0123456789", arr, "_conf")
    assert p == tmp_path / "ab" / "abcdef0123456789_conf.npy"
    assert np.load(p).tolist() == arr.tolist() and not list(tmp_path.glob("ab/.tmp-*"))


def test_ledger_reconcile_drops_records_of_unfinished_files(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    recs = [
        ManifestRecord(id=f"s{i}", path=f"p{i}.npy", kind="still", shape=[1, 2, 2], source=f"src{i % 2}")
        for i in range(4)
    ]
    append_records(recs, manifest)
    with manifest.open("a") as f:
        f.write('{"id": "torn')  # a kill mid-line
    state = CurationState(tmp_path)
    state.mark(LedgerEntry("src0", "fp", STATUS_CURATED, 2))
    kept = CurationState(tmp_path).reconcile(manifest)
    assert [r.id for r in kept] == ["s0", "s2"]
    assert [r.id for r in read_manifest(manifest)] == ["s0", "s2"]
    assert CurationState(tmp_path).is_done("src0", "fp") is not None
    assert CurationState(tmp_path).is_done("src0", "changed") is None
    assert CurationState(tmp_path).reconcile(manifest, redo={"src0"}) == []


def test_config_yaml_matches_the_option_defaults(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "curation.yaml").read_text())
    assert cfg == dataclasses.asdict(CurationOptions())
    custom = tmp_path / "c.yaml"
    custom.write_text("max_side: 128\nworkers: 1\n")
    opts = load_options(custom, workers=3, fps=None)
    assert opts.max_side == 128 and opts.workers == 3 and opts.fps == 10.0
    with pytest.raises(InvalidInputError, match="unknown curation options"):
        load_options(None, max_sidee=3)
    with pytest.raises(InvalidInputError):
        load_options(None, val_fraction=1.5)


def test_walk_follows_symlinked_folders_without_looping(tmp_path: Path) -> None:
    from PIL import Image

    from ultramae_monai.curation.walk import find_sources

    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray((np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)).save(real / "a.png")
    src = tmp_path / "src"
    src.mkdir()
    (src / "linked").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(src, target_is_directory=True)  # a cycle back to the root
    found, _ = find_sources(src)
    assert [f.rel for f in found] == ["linked/a.png"]


def test_header_values_quoted_in_warnings_never_reach_the_log(tmp_path: Path) -> None:
    """pydicom quotes an invalid value in its warning; the worker's messages (the run's log) must not hold it."""
    from pydicom import config
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid
    from scipy import ndimage

    from ultramae_monai.curation.walk import SOURCE_DICOM, SourceFile
    from ultramae_monai.curation.worker import curate_file

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, generate_uid(), "US"
    ds.PatientID = "PATIENT-X"
    pixels = ndimage.gaussian_filter(np.random.default_rng(0).rayleigh(40.0, (64, 80)), 1.5) * 3
    ds.set_pixel_data(np.clip(pixels, 0, 255).astype(np.uint8), "MONOCHROME2", 8)
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.StudyInstanceUID = "1.2.DOE^JANE.19850306"  # not a valid UID: pydicom warns, quoting it, on reading
        path = tmp_path / "src" / "scan.dcm"
        path.parent.mkdir()
        ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode
    res = curate_file(
        SourceFile(path, "scan.dcm", SOURCE_DICOM),
        CurationOptions(confidence=False, max_side=32),
        b"s" * 32,
        str(tmp_path / "out"),
        str(tmp_path / "src"),
        "fp",
    )
    assert res.quarantine is None and res.records
    text = " ".join(res.messages)
    assert "DOE^JANE" not in text and "19850306" not in text
