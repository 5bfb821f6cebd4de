"""Video reader: every POCUS video opens with the manifest's frames/fps, clips equal slices, seeking is exact."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage, LoadImaged
from PIL import Image

from ultramae_monai.data import MetaKeys, UltrasoundVideoReader, probe_video, read_video
from ultramae_monai.errors import InvalidInputError, UnreadableFileError

POCUS = "pocus"
SMALL = "pocus_videos/convex/Pneu_Basal-pneumonia-RUQ_crop.mp4"  # 27 frames, 268x268
# one per container/codec family, with keyframes past frame 0 so a late clip seeks
SEEKABLE = [
    "pocus_videos/convex/Reg_pat1Image_132943.mpeg",  # MPEG-PS, mpeg2video: the demuxer lands one GOP late
    "pocus_videos/convex/Pneu_northumbria_0409_set1_vid1.avi",  # AVI, mpeg4 part 2
    "pocus_videos/convex/Reg_Image_181602_trimmed_crop.mp4",  # MP4, h264 with B-frames
    "pocus_videos/convex/Cov_denault_proposedUS_vid13.mov",  # MOV with an edit list hiding 3 frames
]


def _manifest_videos(root: Path) -> list[dict[str, str]]:
    with open(root / POCUS / "manifest.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "video"]


def _gif_mean_fps(path: Path) -> float:
    """Independent of PyAV: Pillow's per-frame GIF delays."""
    with Image.open(path) as im:
        delays = []
        for k in range(im.n_frames):
            im.seek(k)
            delays.append(im.info["duration"])
    return len(delays) / (sum(delays) / 1000.0)


def test_every_pocus_video_probes_like_the_manifest(shared_data: Path) -> None:
    rows = _manifest_videos(shared_data)
    assert len(rows) > 90
    for row in rows:
        path = shared_data / POCUS / row["path"]
        info = probe_video(path)
        assert info["frames"] == int(row["frames"]), row["path"]
        h, w = (int(v) for v in row["shape"].strip("[]").split(","))
        assert (info["height"], info["width"]) == (h, w), row["path"]
        if row["fps"]:
            assert info["fps"] == pytest.approx(float(row["fps"]), rel=1e-6), row["path"]
        else:  # the manifest leaves GIF fps blank: frames carry their own delays, we report the mean rate
            assert path.suffix == ".gif"
            assert info["fps"] == pytest.approx(_gif_mean_fps(path), rel=1e-6), row["path"]
        assert info["duration"] == pytest.approx(info["frames"] / info["fps"], rel=0.1), row["path"]


def test_every_pocus_video_decodes_its_first_frame(shared_data: Path) -> None:
    for row in _manifest_videos(shared_data):
        cine = read_video(shared_data / POCUS / row["path"], clip_length=1)
        assert cine.shape[:2] == (1, 1), row["path"]
        assert cine.meta[MetaKeys.SOURCE_FRAMES] == int(row["frames"]), row["path"]
        assert float(cine.std()) > 0, row["path"]


def test_edit_list_header_count_is_not_trusted(shared_data: Path) -> None:
    """The MOV header counts 174 samples, the edit list shows 171: the reader returns exactly those 171."""
    path = shared_data / POCUS / SEEKABLE[3]
    info = probe_video(path)
    assert (info["container_frames"], info["frames"]) == (174, 171)
    tail = read_video(path, start=-2)
    assert tail.meta[MetaKeys.FRAME_INDICES] == [169, 170]
    with pytest.raises(InvalidInputError, match="start frame 171"):
        read_video(path, start=171)


def test_clip_equals_slice_of_full_read(shared_data: Path) -> None:
    path = shared_data / POCUS / SMALL
    full = read_video(path)
    assert full.shape == (1, 27, 268, 268)
    assert full.meta[MetaKeys.FPS] == pytest.approx(15.0)
    assert full.meta[MetaKeys.FRAME_TIME_MS] == pytest.approx(1000 / 15)
    clip = read_video(path, start=5, stride=3, clip_length=4)
    assert clip.meta[MetaKeys.FRAME_INDICES] == [5, 8, 11, 14]
    torch.testing.assert_close(clip, full[:, 5:15:3], rtol=0, atol=0)
    spread = read_video(path, max_frames=5)
    torch.testing.assert_close(spread, full[:, [0, 6, 13, 20, 26]], rtol=0, atol=0)
    padded = read_video(path, start=-2, clip_length=4)  # too short: the last frame repeats
    torch.testing.assert_close(padded, full[:, [25, 26, 26, 26]], rtol=0, atol=0)


def test_grey_is_bt601_luma_of_rgb(shared_data: Path) -> None:
    path = shared_data / POCUS / SMALL
    rgb = read_video(path, color=True, clip_length=3)
    grey = read_video(path, clip_length=3)
    assert rgb.shape[0] == 3 and rgb.meta[MetaKeys.COLOR] == "rgb" and grey.meta[MetaKeys.COLOR] == "grey"
    luma = torch.einsum("c,cthw->thw", torch.tensor([0.299, 0.587, 0.114]), rgb)[None]
    torch.testing.assert_close(grey, luma.as_tensor(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("rel", SEEKABLE)
def test_seek_path_equals_decode_from_start(shared_data: Path, rel: str) -> None:
    path = shared_data / POCUS / rel
    n = probe_video(path)["frames"]
    for start in (n - 16, n // 2 + 1):
        seeked = read_video(path, start=start, stride=2, clip_length=6)
        decoded = read_video(path, start=start, stride=2, clip_length=6, seek=False)
        assert seeked.meta[MetaKeys.FRAME_INDICES] == decoded.meta[MetaKeys.FRAME_INDICES]
        torch.testing.assert_close(seeked, decoded, rtol=0, atol=0)


def _write_video(path: Path, codec: str, frames: np.ndarray, fps: int = 20, **options: str) -> None:
    """Encode grey uint8 frames (T, H, W) with PyAV (keyframe every 8 frames, to exercise seeking)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "gray" if codec == "ffv1" else "yuv420p"
        stream.codec_context.gop_size = 8
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, -1), format="rgb24")))
        out.mux(stream.encode())


def _numbered_frames(t: int = 30, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame k is flat grey 5 + 8 k: any codec keeps that, so each decoded frame names its index."""
    return np.stack([np.full((h, w), 5 + 8 * k, np.uint8) for k in range(t)])


@pytest.mark.parametrize(
    ("suffix", "codec"), [("mkv", "ffv1"), ("webm", "libvpx-vp9"), ("mp4", "libx264"), ("avi", "mpeg4")]
)
def test_synthetic_containers_round_trip(tmp_path: Path, suffix: str, codec: str) -> None:
    path = tmp_path / f"numbered.{suffix}"
    _write_video(path, codec, _numbered_frames())
    info = probe_video(path)
    assert (info["frames"], info["height"], info["width"]) == (30, 48, 64)
    assert info["fps"] == pytest.approx(20.0, rel=1e-3)
    clip = read_video(path, start=21, stride=2, clip_length=4)
    levels = clip[0].mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(levels, [5 + 8 * k for k in (21, 23, 25, 27)], atol=2.5)
    if codec == "ffv1":  # lossless: exact
        assert torch.equal(clip[0, 0], torch.full((48, 64), 5.0 + 8 * 21))


def test_gif_with_varying_frame_delays(tmp_path: Path) -> None:
    path = tmp_path / "varying.gif"
    frames = [Image.fromarray(f).convert("P") for f in _numbered_frames(4)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[100, 200, 100, 50], loop=0)
    info = probe_video(path)
    assert info["frames"] == 4
    assert info["duration"] == pytest.approx(0.45)
    assert info["fps"] == pytest.approx(4 / 0.45)
    cine = read_video(path)
    np.testing.assert_allclose(cine[0].mean(dim=(1, 2)).numpy(), [5, 13, 21, 29], atol=1)


def test_load_image_and_dict_use_the_reader(shared_data: Path) -> None:
    path = shared_data / POCUS / SMALL
    img = LoadImage(reader=UltrasoundVideoReader(clip_length=4, start=2), image_only=True)(path)
    assert img.shape == (1, 4, 268, 268)
    assert img.meta[MetaKeys.FRAME_INDICES] == [2, 3, 4, 5]
    assert img.meta[MetaKeys.SOURCE] == "video" and img.meta[MetaKeys.MODALITY] == "US"
    assert img.meta[MetaKeys.KIND] == "cine" and img.meta[MetaKeys.LAYOUT] == "CTHW"
    data = LoadImaged("video", reader=UltrasoundVideoReader(color=True, max_frames=3))({"video": str(path)})
    assert data["video"].shape == (3, 3, 268, 268)
    assert UltrasoundVideoReader().verify_suffix(["a.MP4", "b.gif"])
    assert not UltrasoundVideoReader().verify_suffix("a.dcm")


def test_bad_files_raise_naming_file_and_cause(tmp_path: Path, shared_data: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError, match=r"empty\.mp4.*0 bytes"):
        read_video(empty)
    with pytest.raises(UnreadableFileError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    text = tmp_path / "notes.avi"
    text.write_text("not a video at all\n" * 50)
    with pytest.raises(UnreadableFileError, match=r"notes\.avi.*not a readable video"):
        probe_video(text)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableFileError, match=r"noise\.mp4"):
        read_video(noise)
    # mp4 with its index (moov) at the end, cut in half: the index is gone
    data = (shared_data / POCUS / SMALL).read_bytes()
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match=r"cut\.mp4"):
        read_video(cut_mp4)
    # AVI cut in half: the header still declares 90 frames, only some are present
    data = (shared_data / POCUS / SEEKABLE[1]).read_bytes()
    cut_avi = tmp_path / "cut.avi"
    cut_avi.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match=r"cut\.avi.*truncated: header declares 90"):
        read_video(cut_avi)


def test_bad_selection_raises(shared_data: Path) -> None:
    with pytest.raises(InvalidInputError, match="stride"):
        read_video(shared_data / POCUS / SMALL, stride=0)
