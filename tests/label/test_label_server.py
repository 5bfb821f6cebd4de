"""The MONAI Label app over HTTP: the documented ``monailabel start_server`` command on 127.0.0.1, then infer on a
real HC18 image, bad input refused with a clear 4xx while the server stays up, two labels saved, a one-epoch
fine-tuning that publishes a new model file, uncertainty scoring and the active-learning pick.

Runs in the MONAI Label environment (``scripts/test_label.sh``); skipped where ``monailabel`` is not installed.
The tests of this module share one server and run in file order (labels are saved before training).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is installed by scripts/venv_label.sh (.venv-label) only")
requests = pytest.importorskip("requests")

from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fixture import BUNDLE, micro_bundle, micro_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HC18 = ROOT.parent / "shared" / "data" / "hc18"
IMAGES = ("001_HC", "002_HC", "003_HC")
MODEL = "ultramae_segmentation"
STARTUP_TIMEOUT_S = 180  # a guard against a hung start, not a measurement

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not (HC18 / "images").is_dir(), reason=f"HC18 images not found at {HC18} (../shared/data)"),
    pytest.mark.skipif(not BUNDLE.is_dir(), reason=f"the segmentation bundle is not in this checkout ({BUNDLE})"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hc18_mask(image_id: str) -> np.ndarray:
    """HC18's skull outline filled into a 0/1 mask (as its README says)."""
    outline = np.asarray(Image.open(HC18 / "annotations" / f"{image_id}_Annotation.png").convert("L")) > 0
    return ndimage.binary_fill_holes(outline).astype(np.uint8)


def png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def ct_dicom(path: Path) -> Path:
    """A small, valid CT DICOM: readable, but not ultrasound."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 16, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((16, 16), np.uint16).tobytes()
    ds.save_as(str(path), write_like_original=False)
    return path


class Server:
    """``monailabel start_server`` in a subprocess; its log is drained by a thread that flags the ready line."""

    def __init__(self, tmp: Path) -> None:
        self.app_dir = tmp / "app"
        self.app_dir.mkdir()
        shutil.copy(ROOT / "ultramae_monai" / "label" / "app" / "main.py", self.app_dir / "main.py")
        self.studies = tmp / "studies"
        self.studies.mkdir()
        for name in IMAGES:
            shutil.copy(HC18 / "images" / f"{name}.png", self.studies / f"{name}.png")
        self.bundle = micro_bundle(tmp)
        self.model_dir = tmp / "model"
        self.model_file = self.model_dir / f"{MODEL}.pt"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.ready = threading.Event()
        cmd = [
            str(Path(sys.executable).parent / "monailabel"),
            "start_server",
            "--app",
            str(self.app_dir),
            "--studies",
            str(self.studies),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--conf",
            "bundle",
            str(self.bundle),
            "--conf",
            "model_dir",
            str(self.model_dir),
            "--conf",
            "bundle_overrides",
            micro_overrides(),
            "--conf",
            "max_epochs",
            "1",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # as an activated venv
            "MONAILABEL_PYEXE": sys.executable,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
            "MONAI_LABEL_TRACKING_ENABLED": "false",
            "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
            "MONAI_LABEL_SESSIONS": "false",
        }
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp)
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Uvicorn running on" in line:
                self.ready.set()
        self.ready.set()  # the process ended: wake the waiter, which then sees it is not running

    def log(self) -> str:
        return "".join(self.lines[-60:])

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=600, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=600, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return requests.put(self.url + path, timeout=600, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None and self.get("/info/").status_code == 200

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("label"))
    srv.ready.wait(STARTUP_TIMEOUT_S)
    if srv.proc.poll() is not None or not srv.ready.is_set():
        srv.stop()
        pytest.fail(f"the MONAI Label server did not start:\n{srv.log()}")
    yield srv
    srv.stop()
    assert srv.proc.returncode is not None


def test_info_lists_the_tasks(server):
    info = server.get("/info/").json()
    assert MODEL in info["models"] and MODEL in info["trainers"]
    assert {"uncertainty", "random"} <= set(info["strategies"])
    assert "uncertainty" in info["scoring"]
    assert info["labels"] == {"fetal_head": 1}
    assert info["datastore"]["total"] == len(IMAGES)


def test_infer_hc18_gives_a_mask_of_the_image_size(server):
    r = server.post(f"/infer/{MODEL}", params={"image": IMAGES[0], "output": "image"})
    assert r.status_code == 200, r.text
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    with Image.open(server.studies / f"{IMAGES[0]}.png") as img:
        assert mask.shape == (img.height, img.width)
    assert set(np.unique(mask)) <= {0, 1}


def test_infer_on_an_uploaded_cine_gives_one_mask_per_frame(server, tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)) for _ in range(3)]
    gif = tmp_path / "cine.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40, loop=0)
    with gif.open("rb") as f:
        r = server.post(f"/infer/{MODEL}", params={"output": "image"}, files={"file": ("cine.gif", f)})
    assert r.status_code == 200, r.text
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(r.content)
    assert nib.load(str(out)).shape == (40, 48, 3)  # (column, row, frame)


@pytest.mark.parametrize(
    "name, content, status, cause",
    [
        ("ct.dcm", "ct", 415, "not ultrasound"),
        ("broken.png", b"\x89PNG\r\n\x1a\n this is not an image", 415, "image"),
        ("empty.png", b"", 415, "empty"),
    ],
)
def test_infer_refuses_unreadable_or_non_ultrasound_images(server, tmp_path, name, content, status, cause):
    path = tmp_path / name
    if content == "ct":
        ct_dicom(path)
    else:
        path.write_bytes(content)
    with path.open("rb") as f:
        r = server.post(f"/infer/{MODEL}", files={"file": (name, f)})
    assert r.status_code == status, r.text
    assert cause in r.json()["detail"]
    assert "\n" not in r.json()["detail"]
    assert server.alive()


def test_unknown_image_id_is_404(server):
    r = server.post(f"/infer/{MODEL}", params={"image": "no_such_image"})
    assert r.status_code == 404 and "no_such_image" in r.json()["detail"]
    assert server.alive()


def test_non_ultrasound_or_corrupt_image_upload_is_refused(server, tmp_path):
    with ct_dicom(tmp_path / "ct.dcm").open("rb") as f:
        r = server.put("/datastore/image", params={"image": "ct"}, files={"file": ("ct.dcm", f)})
    assert r.status_code == 415 and "not ultrasound" in r.json()["detail"]
    png = (HC18 / "images" / f"{IMAGES[0]}.png").read_bytes()
    r = server.put("/datastore/image", params={"image": "cut"}, files={"file": ("cut.png", png[: len(png) // 3])})
    assert r.status_code == 415 and "truncated" in r.json()["detail"]
    assert server.get("/datastore/", params={"output": "stats"}).json()["total"] == len(IMAGES)


def test_train_without_labels_is_refused(server):
    before = server.model_file.exists()
    r = server.post(f"/train/{MODEL}", params={"run_sync": True}, json={"max_epochs": 1})
    assert r.status_code == 422 and "no labelled images" in r.json()["detail"]
    r = server.post(f"/train/{MODEL}", json={"max_epochs": 1})  # the background (async) path is refused too
    assert r.status_code == 422
    assert server.model_file.exists() == before
    assert server.alive()


def test_label_of_the_wrong_size_is_refused(server):
    wrong = np.zeros((100, 120), np.uint8)
    r = server.put(
        "/datastore/label",
        params={"image": IMAGES[0], "tag": "final"},
        files={"label": ("wrong.png", png_bytes(wrong))},
    )
    assert r.status_code == 422, r.text
    assert "100x120" in r.json()["detail"] and "540x800" in r.json()["detail"]
    assert server.get("/datastore/", params={"output": "stats"}).json()["completed"] == 0
    assert server.alive()


def test_two_labels_are_saved(server):
    for name in IMAGES[:2]:
        r = server.put(
            "/datastore/label",
            params={"image": name, "tag": "final"},
            files={"label": (f"{name}.png", png_bytes(hc18_mask(name)))},
        )
        assert r.status_code == 200, r.text
    stats = server.get("/datastore/", params={"output": "stats"}).json()
    assert stats["completed"] == 2
    saved = np.asarray(Image.open(server.studies / "labels" / "final" / f"{IMAGES[0]}.png"))
    np.testing.assert_array_equal(saved, hc18_mask(IMAGES[0]))


def test_one_epoch_train_updates_the_model_file(server):
    def weights_used() -> str:
        r = server.post(f"/infer/{MODEL}", params={"image": IMAGES[2], "output": "json"})
        assert r.status_code == 200, r.text
        return r.json()["weights"]

    assert not server.model_file.exists() and weights_used() == "model.pt"  # the bundle's weights so far
    r = server.post(f"/train/{MODEL}", params={"run_sync": True}, json={"max_epochs": 1})
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["epochs"] == 1 and stats["images"] == 2 and np.isfinite(stats["loss"])
    assert server.model_file.is_file()
    trained = hashlib.sha256(server.model_file.read_bytes()).hexdigest()
    assert trained != hashlib.sha256((server.bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert weights_used() == server.model_file.name  # the infer task picked up the new model
    info = server.get("/info/").json()
    assert info["train_stats"][MODEL]["images"] == 2


def test_scoring_ranks_unlabelled_images_and_the_strategy_picks_the_top_one(server):
    r = server.post("/scoring/uncertainty", params={"run_sync": True})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["ranking"] == [IMAGES[2]]  # the only unlabelled image
    assert 0.0 <= result["scores"][IMAGES[2]] <= 1.0
    r = server.post("/activelearning/uncertainty", json={})
    assert r.status_code == 200, r.text
    pick = r.json()
    assert pick["id"] == IMAGES[2] and pick["score"] == pytest.approx(result["scores"][IMAGES[2]])
    r = server.post("/activelearning/random", json={})
    assert r.status_code == 200 and r.json()["id"] == IMAGES[2]


def test_server_stops(server):
    assert server.alive()
    server.stop()
    assert server.proc.returncode is not None
    with pytest.raises(requests.ConnectionError):
        server.get("/info/")
