"""The MONAI Deploy app on real ultrasound DICOMs with a small randomly initialised segmentation bundle.

Needs the ``deploy`` extra (run in ``.venv-deploy`` by ``scripts/test_deploy.sh``); skipped elsewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai.deploy.core", reason="the deploy extra is not installed (scripts/test_deploy.sh)")
hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from monai.bundle import ConfigParser  # noqa: E402
from monai.transforms import Compose  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from ultramae_monai.cli import deploy as deploy_cli  # noqa: E402
from ultramae_monai.data.convention import KIND_STILL, MetaKeys, make_metatensor  # noqa: E402
from ultramae_monai.deploy import app as deploy_app  # noqa: E402
from ultramae_monai.deploy.results import RESULT_FILE, STAGING_DIR  # noqa: E402

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[1]
SEG_BUNDLE = REPO / "bundles" / "ultramae_segmentation"
CLS_BUNDLE = REPO / "bundles" / "ultramae_classification"
SMALL = {"preset": "micro", "img_size": 32}  # CPU-sized overrides, applied where the bundle has these ids


def _deid_ultrasounds() -> Path:
    deid_data = pytest.importorskip("deid_data")
    return Path(deid_data.__file__).parent / "data" / "ultrasounds"


def _random_bundle(source: Path, bundle: Path) -> Path:
    """A copy of the bundle's configs, shrunk by ``SMALL``, with random weights made from its ``network_def``."""
    shutil.copytree(source / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config.update({k: v for k, v in SMALL.items() if k in config})
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _random_bundle(SEG_BUNDLE, tmp_path_factory.mktemp("bundles") / "ultramae_segmentation")


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _random_bundle(CLS_BUNDLE, tmp_path_factory.mktemp("bundles") / "ultramae_classification")


@pytest.fixture(scope="module")
def us_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pydicom cine (YBR JPEG) and palette still, the deid-data grey cine and a CT series that must be ignored."""
    folder = tmp_path_factory.mktemp("dicom_in")
    for name in ("examples_ybr_color.dcm", "examples_palette.dcm", "CT_small.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    with zipfile.ZipFile(_deid_ultrasounds() / "GREYSCALE_CINE.zip") as z:
        z.extract("GREYSCALE_CINE.dcm", folder / "deid")
    return folder


@pytest.fixture(scope="module")
def run_result(us_inputs: Path, seg_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out")
    return deploy_app.run_deploy(us_inputs, out, seg_bundle, device="cpu", max_overlay_frames=2), out


def _bundle_outputs(bundle: Path, path: str) -> list[tuple[np.ndarray, dict, tuple[int, int]]]:
    """The bundle's own postprocessed output per frame of a file, through ConfigParser only."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
    inferer = parser.get_parsed_content("inferer")
    loaded = Compose(pre.transforms[:1])({"image": path})["image"]
    frames = [loaded] if loaded.ndim == 3 else [loaded[:, t] for t in range(loaded.shape[1])]
    outputs = []
    for frame in frames:
        meta = {k: v for k, v in loaded.meta.items() if k not in ("affine", MetaKeys.ORIGINAL_SHAPE)}
        d = Compose(pre.transforms[1:])({"image": make_metatensor(frame.as_tensor(), KIND_STILL, meta)})
        with torch.no_grad():
            d["pred"] = inferer(d["image"][None], net)[0]
        outputs.append((np.asarray(post(d)["pred"]), dict(d["image"].meta), tuple(frame.shape[-2:])))
    return outputs


def _bundle_inference(bundle: Path, path: str) -> np.ndarray:
    """The segmentation bundle's label maps ``(T, H, W)`` in source pixels."""
    maps = []
    for label, meta, shape in _bundle_outputs(bundle, path):
        label = label[0]
        full = np.zeros(shape, np.uint8)
        if label.shape == full.shape:
            full[:] = label
        else:  # the map of the scan-region crop, pasted back at its box
            r0, c0, r1, c1 = meta[MetaKeys.FOV_BOX]
            full[r0:r1, c0:c1] = label
        maps.append(full)
    return np.stack(maps)


def test_writes_one_seg_per_us_instance_and_ignores_ct(run_result: tuple[dict, Path]) -> None:
    result, out = run_result
    assert result["status"] == "complete" and not result["skipped"]
    kinds = sorted((Path(i["file"]).name, i["kind"], i["frames"]) for i in result["instances"])
    assert kinds == [
        ("GREYSCALE_CINE.dcm", "cine", 27),
        ("examples_palette.dcm", "still", 1),
        ("examples_ybr_color.dcm", "cine", 30),
    ]
    assert [i["cause"] for i in result["ignored"]] == ["modality CT"]
    assert json.loads((out / RESULT_FILE).read_text()) == result
    assert not (out / STAGING_DIR).exists()
    for inst in result["instances"]:
        assert all((out / o).is_file() for o in inst["outputs"])
        pngs = [o for o in inst["outputs"] if o.endswith(".png")]
        assert len(pngs) == min(inst["frames"], 2)


def test_seg_reads_back_references_sources_and_matches_bundle(run_result: tuple[dict, Path], seg_bundle: Path) -> None:
    result, out = run_result
    for inst in result["instances"]:
        source = pydicom.dcmread(inst["file"], stop_before_pixels=True)
        seg_path = out / inst["sop_instance_uid"] / "ultramae_segmentation" / "seg.dcm"
        plain = pydicom.dcmread(seg_path)
        assert plain.Modality == "SEG" and int(plain.NumberOfFrames) == inst["frames"]
        assert plain.StudyInstanceUID == source.StudyInstanceUID
        seg = hd.seg.segread(seg_path)
        assert [uid for _, _, uid in seg.get_source_image_uids()] == [source.SOPInstanceUID]
        n = inst["frames"]
        if n == 1:
            got = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)
        else:
            got = seg.get_pixels_by_source_frame(
                source.SOPInstanceUID, source_frame_numbers=list(range(1, n + 1)), combine_segments=True
            )
            refs = [
                int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                for f in plain.PerFrameFunctionalGroupsSequence
            ]
            assert refs == list(range(1, n + 1))
        expected = _bundle_inference(seg_bundle, inst["file"])
        assert got.shape == expected.shape == (n, source.Rows, source.Columns)
        assert np.array_equal(np.asarray(got), expected), inst["file"]
        assert 0 < expected.mean() < 1  # a real map, not an all-background frame


def test_corrupt_instance_is_skipped_and_named(seg_bundle: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("examples_palette.dcm"), src / "good.dcm")
    good = (src / "good.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(good[:4000])  # header parses, pixel data cut
    (src / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    out = tmp_path / "out"
    code = deploy_cli.main(["-i", str(src), "-o", str(out), "-m", str(seg_bundle), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == deploy_cli.EXIT_SKIPPED
    assert "truncated.dcm" in err and "garbage.dcm" in err
    result = json.loads((out / RESULT_FILE).read_text())
    assert result["status"] == "partial"
    assert sorted(Path(s["file"]).name for s in result["skipped"]) == ["garbage.dcm", "truncated.dcm"]
    assert [Path(i["file"]).name for i in result["instances"]] == ["good.dcm"]


@pytest.mark.parametrize("case", ["empty", "not_us", "no_weights", "not_a_bundle"])
def test_bad_input_fails_cleanly_with_nothing_published(case: str, seg_bundle: Path, tmp_path: Path, capsys) -> None:
    src, out, bundle = tmp_path / "in", tmp_path / "out", seg_bundle
    src.mkdir()
    if case == "not_us":
        for name in ("CT_small.dcm", "MR_small.dcm"):
            shutil.copy(get_testdata_file(name), src / name)
    if case == "no_weights":
        shutil.copy(get_testdata_file("examples_palette.dcm"), src / "us.dcm")
        bundle = tmp_path / "bundle"
        shutil.copytree(seg_bundle / "configs", bundle / "configs")
    if case == "not_a_bundle":
        shutil.copy(get_testdata_file("examples_palette.dcm"), src / "us.dcm")
        bundle = tmp_path / "models"
        (bundle / "notes").mkdir(parents=True)
    code = deploy_cli.main(["-i", str(src), "-o", str(out), "-m", str(bundle), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == deploy_cli.EXIT_BAD_INPUT
    expected = {
        "empty": "input folder is empty",
        "not_us": "no ultrasound image",
        "no_weights": "no weights",
        "not_a_bundle": "not a MONAI bundle",
    }[case]
    assert err[-1].startswith("ultramae deploy: error: ") and expected in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (out / RESULT_FILE).exists() and not (out / STAGING_DIR).exists()


def test_failure_in_a_writer_publishes_nothing(seg_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """A fault injected in the SEG writer after the first instance: the finished outputs stay unpublished."""
    from ultramae_monai.deploy import operators
    from ultramae_monai.errors import UltraMAEError

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(get_testdata_file("examples_palette.dcm"), src / "a.dcm")
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), src / "b.dcm")
    out.mkdir()
    (out / RESULT_FILE).write_text("{}")  # an older run's marker
    calls = []
    real = operators.build_segmentation

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(operators, "build_segmentation", failing)
    with pytest.raises((OSError, RuntimeError, UltraMAEError)):
        deploy_app.run_deploy(src, out, seg_bundle, device="cpu")
    assert len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == []


def test_module_entry_point(seg_bundle: Path, tmp_path: Path) -> None:
    """``python -m ultramae_monai.deploy`` as the MAP runs it: a palette still in, a SEG out, exit 0."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(get_testdata_file("examples_palette.dcm"), src / "us.dcm")
    proc = subprocess.run(
        [sys.executable, "-m", "ultramae_monai.deploy", "-i", str(src), "-o", str(out), "-m", str(seg_bundle)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / RESULT_FILE).read_text())
    seg = pydicom.dcmread(out / result["instances"][0]["sop_instance_uid"] / "ultramae_segmentation" / "seg.dcm")
    assert seg.pixel_array.shape == (350, 800)


def test_map_app_folder_passes_the_packagers_checks(seg_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """Everything ``monai-deploy package`` checks before it calls Docker: the config reads, the app folder is a
    Python module with its requirements, the models folder gives one model per bundle, the documented command
    parses and names the image the docs run."""
    packager = pytest.importorskip("holoscan_cli.packager.parameters", reason="holoscan-cli (monai-deploy package)")
    from holoscan_cli.__main__ import parse_args
    from holoscan_cli.common.enum_types import Platform
    from holoscan_cli.packager.config_reader import ApplicationConfiguration
    from holoscan_cli.packager.models import Models

    app_dir = REPO / "ultramae_monai" / "deploy" / "map"
    config = ApplicationConfiguration()
    config.read(app_dir / "app.yaml")
    assert config.title()
    params = packager.PackageBuildParameters()
    params.application = app_dir
    assert params.application_type.name == "PythonModule"
    assert params.requirements_file_path == app_dir / "requirements.txt"
    # the documented layout, in a scratch copy of the repository root: the package and build/map_models/<bundle>
    (tmp_path / "ultramae_monai").symlink_to(REPO / "ultramae_monai")
    shutil.copytree(seg_bundle, tmp_path / "build" / "map_models" / seg_bundle.name)
    monkeypatch.chdir(tmp_path)
    docs = (REPO / "docs" / "deploy.md").read_text()
    command = docs.split("```bash\nmonai-deploy package ", 1)[1].split("\n```")[0]
    args = parse_args(["holoscan", "package", *command.split()])
    assert args.command == "package" and Path(args.application).resolve() == app_dir
    assert Path(args.config).resolve() == app_dir / "app.yaml"
    assert [Path(a).resolve() for a in args.additional_libs] == [REPO / "ultramae_monai"]
    assert Models().build(Path(args.models)) == {seg_bundle.name: Path(args.models) / seg_bundle.name}
    assert args.platform == [Platform.x86_64]
    image = packager.PlatformParameters(Platform.x86_64, args.tag, "0.1.0").tag
    assert f"monai-deploy run {image} " in docs


def test_bundle_whose_output_does_not_fit_its_class_names_fails_the_run(
    cls_bundle: Path, tmp_path: Path, capsys
) -> None:
    """A bundle fault (here: argmax instead of scores) fails the run with one line; no instance is 'skipped'."""
    bundle, src, out = tmp_path / "ultramae_classification", tmp_path / "in", tmp_path / "out"
    shutil.copytree(cls_bundle, bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["postprocessing"]["transforms"].append({"_target_": "AsDiscreted", "keys": "pred", "argmax": True})
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    src.mkdir()
    shutil.copy(get_testdata_file("examples_palette.dcm"), src / "us.dcm")
    code = deploy_cli.main(["-i", str(src), "-o", str(out), "-m", str(bundle), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == deploy_cli.EXIT_BAD_INPUT
    assert "class scores for 3 class_names" in err[-1] and str(bundle) in err[-1]
    assert not (out / RESULT_FILE).exists() and not (out / STAGING_DIR).exists()
