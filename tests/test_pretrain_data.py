"""The pretraining dataset and sampler; ``make_manifest`` also serves the other test_pretrain_* files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd, ScaleIntensityRanged

from ultramae_monai.data import KindBatchSampler, ManifestDataset
from ultramae_monai.data.manifest import ManifestRecord, write_manifest
from ultramae_monai.errors import InvalidInputError, UnreadableFileError
from ultramae_monai.transforms import RandResizedCropd, random_resized_box


def make_manifest(
    root: Path, stills: int = 24, clips: int = 12, size: tuple[int, int] = (48, 40), frames: int = 6
) -> Path:
    """Small learnable arrays (smooth stripes, moving clips) plus confidence maps and FOV masks."""
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    records = []
    for i in range(max(stills, clips)):
        img = (127 + 100 * np.sin(xx / (3 + i % 5) + yy / 7)).astype(np.uint8)[None]
        conf = np.linspace(1, 0.2, size[0], dtype=np.float16)[:, None].repeat(size[1], 1)[None]
        fov = np.zeros((1, *size), dtype=np.uint8)
        fov[:, :, 10:-10] = 1  # narrower than any crop: every crop holds both sides
        np.save(root / f"conf_s{i}.npy", conf)
        np.save(root / f"fov{i}.npy", fov)
        common = {"confidence": f"conf_s{i}.npy", "fov_mask": f"fov{i}.npy", "split": "val" if i % 8 == 7 else "train"}
        if i < stills:
            np.save(root / f"s{i}.npy", img)
            records.append(ManifestRecord(id=f"s{i}", path=f"s{i}.npy", kind="still", shape=list(img.shape), **common))
        if i < clips:
            clip = np.stack([np.roll(img, 2 * t, -1) for t in range(frames)], 1)
            np.save(root / f"c{i}.npy", clip)
            np.save(root / f"conf_c{i}.npy", np.repeat(conf[:, None], frames, 1))
            common["confidence"] = f"conf_c{i}.npy"
            records.append(ManifestRecord(id=f"c{i}", path=f"c{i}.npy", kind="cine", shape=list(clip.shape), **common))
    write_manifest(records, root / "manifest.jsonl")
    return root


KEYS = ["image", "confidence", "fov_mask"]


def crop(size: int, scale: tuple[float, float] = (0.4, 1.0), ratio: tuple | None = (3 / 4, 4 / 3), *more) -> Compose:
    """The bundle's crop and [0, 1] scaling (then ``more`` transforms); ``whole(size)`` for evaluation."""
    return Compose([
        RandResizedCropd(KEYS, size, scale, ratio, mode=["bilinear", "bilinear", "nearest"], allow_missing_keys=True),
        ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0.0, b_max=1.0),
        *more,
    ])  # fmt: skip


def whole(size: int) -> Compose:
    return crop(size, (1.0, 1.0), None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("pretrain_data"))


def test_items_have_the_layout_the_network_expects(data_dir: Path) -> None:
    ds = ManifestDataset(dataset_dir=data_dir, num_frames=4, load_confidence=True, transform=crop(32))
    kinds = ds.kinds
    still = ds[(kinds.index("still"), 3)]
    clip = ds[(kinds.index("cine"), 3)]
    assert still["image"].shape == (1, 32, 32) and clip["image"].shape == (1, 4, 32, 32)
    assert still["confidence"].shape == still["image"].shape and clip["confidence"].shape == clip["image"].shape
    assert still["fov_mask"].shape == (1, 32, 32) and still["fov_mask"].dtype == torch.bool
    assert not still["fov_mask"].all() and still["fov_mask"].any()  # the cached mask, cropped and resized
    for item in (still, clip):
        assert item["image"].dtype == torch.float32 and 0 <= item["image"].min() and item["image"].max() <= 1
    assert {r.split for r in ds.records} == {"train"}


def test_augmentation_is_a_function_of_the_seed(data_dir: Path) -> None:
    flip = crop(32, (0.4, 1.0), (3 / 4, 4 / 3), RandFlipd(keys=["image", "fov_mask"], prob=0.5, spatial_axis=-1))
    ds = ManifestDataset(dataset_dir=data_dir, num_frames=4, transform=flip)
    i = ds.kinds.index("cine")
    a, b, c = ds[(i, 11)], ds[(i, 11)], ds[(i, 12)]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert type(a["image"]) is torch.Tensor  # MetaTensor unwrapped for cheap collation
    # a plain index is not augmented: the first num_frames frames, whole, resized
    plain = ManifestDataset(dataset_dir=data_dir, num_frames=4, transform=whole(32))[i]["image"]
    raw = torch.from_numpy(np.load(data_dir / f"{ds.records[i].path}")[:, :4].astype(np.float32) / 255)
    expected = torch.nn.functional.interpolate(raw.transpose(0, 1), size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(plain, expected.transpose(0, 1))


def test_image_confidence_and_fov_are_cropped_and_flipped_together(tmp_path: Path) -> None:
    """Fixtures with no symmetry: the map is the image / 255, the FOV is a triangle of the image's bright part."""
    yy, xx = np.mgrid[0:48, 0:40]
    img = (3 * xx + 2 * yy + 20).astype(np.uint8)[None]  # a ramp along both axes, no mirror symmetry
    np.save(tmp_path / "s.npy", img)
    np.save(tmp_path / "c.npy", (img / 255.0).astype(np.float32))
    np.save(tmp_path / "f.npy", (img > 150).astype(np.uint8))  # a triangle in the bottom-right corner
    rec = ManifestRecord(id="s", path="s.npy", kind="still", shape=[1, 48, 40], confidence="c.npy", fov_mask="f.npy")
    write_manifest([rec], tmp_path / "manifest.jsonl")
    flip = crop(32, (0.3, 1.0), (3 / 4, 4 / 3), RandFlipd(keys=KEYS, prob=0.5, spatial_axis=-1))
    ds = ManifestDataset(dataset_dir=tmp_path, load_confidence=True, transform=flip)
    flipped = 0
    for seed in range(12):
        item = ds[(0, seed)]
        image, conf, fov = item["image"][0], item["confidence"][0], item["fov_mask"][0]
        torch.testing.assert_close(conf, image, atol=2e-3, rtol=0)  # same crop, same resize, same flip
        agree = (fov == (image > 150 / 255)).float().mean()
        assert agree > 0.9, (seed, float(agree))  # the mask follows the image (nearest vs bilinear at edges)
        flipped += int(image[:, 0].mean() > image[:, -1].mean())  # the ramp rises to the right unless flipped
    assert 0 < flipped < 12  # both flipped and unflipped crops were checked


def test_random_resized_box_stays_inside_and_evaluation_takes_all() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, c, h, w = random_resized_box(48, 40, rng, scale=(0.2, 1.0))
        assert 0 <= r and r + h <= 48 and 0 <= c and c + w <= 40 and h * w >= 0.15 * 48 * 40
    assert random_resized_box(48, 40, None) == (0, 0, 48, 40)


def test_channel_conversion(tmp_path: Path) -> None:
    rgb = np.zeros((3, 8, 8), dtype=np.uint8)
    rgb[0] = 255  # pure red: BT.601 luma 0.299
    np.save(tmp_path / "rgb.npy", rgb)
    write_manifest([ManifestRecord(id="a", path="rgb.npy", kind="still", shape=[3, 8, 8])], tmp_path / "manifest.jsonl")
    grey = ManifestDataset(dataset_dir=tmp_path, in_channels=1, transform=whole(8))[0]["image"]
    assert grey.shape == (1, 8, 8) and torch.allclose(grey, torch.full_like(grey, 0.299), atol=1e-3)
    with pytest.raises(InvalidInputError, match="confidence"):
        ManifestDataset(dataset_dir=tmp_path, load_confidence=True)


def test_bad_arrays_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    np.save(tmp_path / "flat.npy", np.zeros((8, 8), dtype=np.uint8))
    recs = [
        ManifestRecord(id="a", path="bad.npy", kind="still", shape=[1, 8, 8]),
        ManifestRecord(id="b", path="flat.npy", kind="still", shape=[8, 8]),
    ]
    write_manifest(recs, tmp_path / "manifest.jsonl")
    ds = ManifestDataset(dataset_dir=tmp_path, transform=whole(8))
    with pytest.raises(UnreadableFileError, match=r"bad\.npy"):
        ds[0]
    with pytest.raises(InvalidInputError, match=r"flat\.npy"):
        ds[1]
    with pytest.raises(
        InvalidInputError, match=r"no still or cine records in split 'val' \(2 records, all in 'train'\)"
    ):
        ManifestDataset(dataset_dir=tmp_path, split="val")
    with pytest.raises(UnreadableFileError, match=r"^manifest not found: .*nowhere"):
        ManifestDataset(dataset_dir=tmp_path / "nowhere")
    assert len(ManifestDataset(dataset_dir=tmp_path, split="val", allow_empty=True)) == 0


def _epoch(sampler: KindBatchSampler) -> list[list[tuple[int, int]]]:
    return list(sampler)


def test_sampler_batches_are_homogeneous_mixed_and_deterministic() -> None:
    kinds = ["still"] * 20 + ["cine"] * 9
    s = KindBatchSampler(kinds, batch_size=4, clip_batch_size=3, seed=5)
    batches = _epoch(s)
    batch_kinds = [{kinds[i] for i, _ in b} for b in batches]
    assert all(len(k) == 1 for k in batch_kinds)
    assert [k.pop() for k in batch_kinds].count("cine") == 3 and len(batches) == len(s) == 8
    assert s.batch_kinds() != sorted(s.batch_kinds())  # kinds interleaved, not all stills first
    assert _epoch(KindBatchSampler(kinds, batch_size=4, clip_batch_size=3, seed=5)) == batches
    s.set_epoch(1)
    assert _epoch(s) != batches


def test_sampler_resumes_mid_epoch() -> None:
    kinds = ["still"] * 20 + ["cine"] * 9
    full = KindBatchSampler(kinds, batch_size=4, seed=1)
    full.set_epoch(3)
    reference = _epoch(full)
    resumed = KindBatchSampler(kinds, batch_size=4, seed=1)
    resumed.load_state_dict({"seed": 1, "epoch": 3, "position": 2})
    assert _epoch(resumed) == reference[2:]
    with pytest.raises(ValueError, match="seed"):
        resumed.load_state_dict({"seed": 2, "epoch": 0, "position": 0})


def test_sampler_shards_global_batches_across_ranks() -> None:
    kinds = ["still"] * 30 + ["cine"] * 13
    one = _epoch(KindBatchSampler(kinds, batch_size=4, seed=2, num_replicas=1))
    ranks = [_epoch(KindBatchSampler(kinds, batch_size=2, seed=2, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for b0, b1 in zip(*ranks, strict=True):
        assert {kinds[i] for i, _ in b0} == {kinds[i] for i, _ in b1}  # same code path on every rank
        assert not {i for i, _ in b0} & {i for i, _ in b1}
    # the per-rank halves of a global batch are the single-process batch (same samples, same crops)
    assert [b0 + b1 for b0, b1 in zip(*ranks, strict=True)] == one


REPO = Path(__file__).resolve().parents[1]


def _train_config() -> dict:
    import json

    return json.loads((REPO / "bundles" / "ultramae_pretrain" / "configs" / "train.json").read_text())


def test_default_config_clips_never_repeat_frames(tmp_path: Path) -> None:
    """A clip cached by curation's default config, read by the bundle's default config: every frame distinct."""
    from ultramae_monai.curation.options import load_options

    clip_length = load_options(REPO / "configs" / "curation.yaml").clip_length
    cfg = _train_config()
    frames = np.stack([np.full((1, 16, 16), 10 * t, np.uint8) for t in range(clip_length)], 1)  # frame t = 10 t
    np.save(tmp_path / "c.npy", frames)
    rec = ManifestRecord(id="c", path="c.npy", kind="cine", shape=list(frames.shape))
    write_manifest([rec], tmp_path / "manifest.jsonl")
    ds = ManifestDataset(
        dataset_dir=tmp_path, num_frames=cfg["num_frames"], frame_stride=cfg["frame_stride"], transform=crop(16)
    )
    for seed in range(10):
        levels = (ds[(0, seed)]["image"][0].mean(dim=(1, 2)) * 255).round().tolist()
        assert len(set(levels)) == cfg["num_frames"], levels  # no frame read twice


def test_a_stride_the_cached_clip_cannot_serve_names_the_record(tmp_path: Path) -> None:
    clip = np.zeros((1, 8, 16, 16), np.uint8)
    np.save(tmp_path / "c.npy", clip)
    write_manifest(
        [ManifestRecord(id="clip7", path="c.npy", kind="cine", shape=[1, 8, 16, 16])], tmp_path / "manifest.jsonl"
    )
    with pytest.raises(InvalidInputError, match=r"c\.npy.*'clip7' caches 8 frames, fewer than the 15"):
        ManifestDataset(dataset_dir=tmp_path, num_frames=8, frame_stride=2)
    assert len(ManifestDataset(dataset_dir=tmp_path, num_frames=8, frame_stride=1)) == 1


def test_rand_resized_crop_is_the_same_on_memory_maps_tensors_and_clips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (1, 3, 40, 50), dtype=np.uint8)
    np.save(tmp_path / "c.npy", clip)
    mapped = np.load(tmp_path / "c.npy", mmap_mode="r")
    t = RandResizedCropd(["image", "mask"], 16, mode=["bilinear", "nearest"])
    a = t.set_random_state(5)({"image": mapped, "mask": mapped[:1, 0] > 100})
    b = t.set_random_state(5)({"image": torch.from_numpy(clip), "mask": torch.from_numpy(clip[:1, 0] > 100)})
    assert a["image"].shape == (1, 3, 16, 16) and a["image"].dtype == torch.float32
    assert a["mask"].shape == (1, 16, 16) and a["mask"].dtype == torch.bool
    torch.testing.assert_close(a["image"], b["image"])
    assert torch.equal(a["mask"], b["mask"])
    box = t.cropper.box
    r0, c0, h, w = box
    window = torch.from_numpy(clip[..., r0 : r0 + h, c0 : c0 + w]).float().reshape(1, 3, h, w)
    expected = torch.nn.functional.interpolate(window, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(a["image"], expected.reshape(1, 3, 16, 16))  # every frame cropped by the same box


def test_img_size_resizes_items_whole_for_evaluation(data_dir: Path) -> None:
    a = ManifestDataset(dataset_dir=data_dir, num_frames=4, img_size=32)[0]
    b = ManifestDataset(dataset_dir=data_dir, num_frames=4, transform=whole(32))[0]
    assert a["image"].shape[-2:] == (32, 32) and 0 <= a["image"].min() and a["image"].max() <= 1
    torch.testing.assert_close(a["image"], b["image"])
    assert torch.equal(a["fov_mask"], b["fov_mask"])
