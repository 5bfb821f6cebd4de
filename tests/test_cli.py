"""The ``ultramae`` command explains itself: verbs listed, options typed and defaulted, misspelt options named
with the closest valid one, wrong types and unwritable outputs refused before any work, one line per error."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultramae_monai.cli import VERBS, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _verbs() -> list:
    return [importlib.import_module(f"ultramae_monai.cli.{name}") for name in VERBS]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1, err
    return err


def test_every_verb_module_has_the_registry_interface() -> None:
    names = [m.NAME for m in _verbs()]
    assert len(set(names)) == len(names) and {"info", "convert", "confmap", "curate", "curate-merge", "demo"} <= set(
        names
    )
    for m in _verbs():
        assert m.SUMMARY and "\n" not in m.SUMMARY and m.EXAMPLE.startswith(f"ultramae {m.NAME}")
        assert callable(m.add_arguments) and callable(m.run)


def test_top_level_help_lists_every_verb_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for m in _verbs():
        assert f"  {m.NAME}" in out and m.SUMMARY in out


@pytest.mark.parametrize("verb", [importlib.import_module(f"ultramae_monai.cli.{n}").NAME for n in VERBS])
def test_verb_help_shows_every_option_with_type_default_and_an_example(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"ultramae {verb}" in out
    sub = build_parser(only=verb)._subparsers._group_actions[0].choices[verb]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[-1] in out
            shown = formatter._get_help_string(action)
            assert "default:" in shown and shown.split("[")[-1].split(",")[0], (action.option_strings, shown)


def test_confmap_help_shows_alpha(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["confmap", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--alpha FLOAT" in out and "default: 2.0" in out


def test_misspelt_option_names_it_and_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["confmap", "x.png", str(tmp_path / "o.npy"), "--alhpa", "3"]) == 2
    err = _one_line_error(capsys)
    assert "--alhpa" in err and "did you mean --alpha?" in err
    assert main(["confmap", "x.png", "o.npy", "--sink-mode", "min"]) == 2
    assert "did you mean --sink_mode?" in _one_line_error(capsys)
    assert main(["confmap", "x.png", "o.npy", "--alp", "3"]) == 2  # no silent prefix expansion
    assert "--alp" in _one_line_error(capsys)
    assert main(["confmp", "x.png"]) == 2
    assert "confmp" in _one_line_error(capsys)


def test_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ultramae_monai.cli", "confmap", "x.png", str(tmp_path / "o.npy"), "--alhpa", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "--alhpa" in res.stderr


def test_wrong_type_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--steps", "abc"]) == 2
    assert "invalid int value: 'abc'" in _one_line_error(capsys)
    assert not out.exists()
    assert main(["curate", str(tmp_path), str(tmp_path / "c"), "--progress", "maybe"]) == 2
    assert "invalid bool value" in _one_line_error(capsys) and not (tmp_path / "c").exists()
    assert main(["curate", str(tmp_path), str(tmp_path / "c"), "--shard", "3/3"]) == 2
    assert "invalid shard" in _one_line_error(capsys)


def test_output_paths_are_checked_before_computing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 24), dtype=np.uint8)).save(img)
    assert main(["confmap", str(img), str(tmp_path / "a.jpg")]) == 2
    assert "suffix must be one of .npy, .nii.gz, .png" in _one_line_error(capsys)
    assert main(["confmap", str(img), str(tmp_path / "missing" / "a.npy")]) == 2
    assert "does not exist" in _one_line_error(capsys) and not (tmp_path / "missing").exists()
    assert main(["convert", str(img), str(tmp_path / "a.mp4")]) == 2
    assert "suffix must be one of" in _one_line_error(capsys)
    assert main(["convert", str(img), str(tmp_path / "no" / "such" / "frames")]) == 2
    assert "parent of the output folder does not exist" in _one_line_error(capsys)
    assert main(["demo", str(tmp_path / "no" / "such")]) == 2
    _one_line_error(capsys)
    assert main(["curate", str(tmp_path), str(img)]) == 2  # OUT is a file
    assert "expected a folder" in _one_line_error(capsys)
    assert not list(tmp_path.glob("*.npy"))


def test_empty_folder_is_a_clear_error_for_confmap_and_curate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert main(["confmap", str(empty), str(tmp_path / "maps")]) == 2
    confmap_err = _one_line_error(capsys)
    assert main(["curate", str(empty), str(tmp_path / "curated"), "--progress", "false"]) == 2
    curate_err = _one_line_error(capsys)
    for err in (confmap_err, curate_err):
        assert err.startswith(f"ultramae: error: {empty}: no supported ultrasound files")
    assert not (tmp_path / "curated").exists()


def test_bool_options_take_a_value_or_stand_alone(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser(only="curate")
    args = parser.parse_args(["curate", "s", "o", "--color", "--progress", "False", "--shard", "1/3"])
    assert args.color is True and args.progress is False and args.shard == (1, 3) and args.workers is None


def test_one_line_error_hook_for_bundles(tmp_path: Path) -> None:
    """What ``python -m monai.bundle run`` prints when a bundle component raises (MONAI wraps the error)."""
    script = (
        "import ultramae_monai.errors as e\n"
        "e.install_one_line_errors()\n"
        "try:\n"
        "    raise e.UnreadableFileError('manifest not found', 'data/manifest.jsonl')\n"
        "except Exception as err:\n"
        "    raise RuntimeError('Failed to instantiate component') from err\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: data/manifest.jsonl: manifest not found"
    other = subprocess.run(
        [sys.executable, "-c", "import ultramae_monai.errors as e; e.install_one_line_errors(); 1 / 0"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert other.returncode == 1 and "ZeroDivisionError" in other.stderr  # other errors keep their traceback
