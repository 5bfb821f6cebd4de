"""``ultramae label``: the monailabel command it stands for, and one-line errors for bad options (no server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from ultramae_monai.cli import label
from ultramae_monai.errors import UltraMAEError

sys.path.insert(0, str(Path(__file__).parent / "label"))
from bundle_fixture import micro_bundle


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return micro_bundle(tmp_path_factory.mktemp("bundle"))


def test_dry_run_prints_the_documented_start_server_command(tmp_path, bundle, capsys):
    args = parse(str(tmp_path), "--bundle", str(bundle), "--pretrained", "enc.pt", "--port", "8123", "--dry_run")
    assert label.run(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("monailabel start_server --app ")
    assert f"--studies {tmp_path.resolve()}" in line
    assert f"--conf bundle {bundle.resolve()}" in line
    assert "--conf pretrained enc.pt" in line and "--port 8123" in line and "--host 127.0.0.1" in line
    app_dir = Path(line.split("--app ")[1].split()[0])
    assert (app_dir / "main.py").is_file()


@pytest.mark.parametrize(
    "argv, cause",
    [
        (["{missing}"], "studies folder not found"),
        (["{studies}", "--bundle", "{studies}"], "not a segmentation bundle"),
        (["{studies}", "--bundle", "{bundle}", "--bundle_overrides", "{{not json"], "not JSON"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, bundle, argv, cause):
    values = {"missing": tmp_path / "nope", "studies": tmp_path, "bundle": bundle}
    args = parse(*[a.format(**values) for a in argv], "--dry_run")
    with pytest.raises(UltraMAEError, match=cause) as err:
        label.run(args)
    assert "\n" not in str(err.value)


def test_constants_for_the_verb_registry():
    assert label.NAME == "label" and label.SUMMARY and label.EXAMPLE.startswith("ultramae label ")
