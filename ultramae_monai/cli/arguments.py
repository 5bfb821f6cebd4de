"""The argument parser every ``ultramae`` verb shares: typed options that show their type and default, one-line
errors that name the offending option and the closest valid one, and output paths checked before any work.

Why argparse and not fire (measured in ``docs/cli.md``): fire showed no option of a verb that forwards
``**kwargs``, accepted ``--steps abc`` as a string and failed deep inside the work with a ``TypeError``
traceback, and printed a traceback for a misspelt option.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ultramae_monai.errors import InvalidInputError

__all__ = [
    "TypedHelpFormatter",
    "UsageError",
    "VerbParser",
    "add_option",
    "check_output_file",
    "check_output_folder",
    "parse_bool",
]


class UsageError(InvalidInputError):
    """A command line the verb cannot run (bad option value, output path that cannot be written)."""


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``1/0``, ``on/off`` (any case): the values ``--flag VALUE`` accepts."""
    value = str(text).strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid bool value: {text!r} (use true or false)")


parse_bool.__name__ = "bool"  # argparse names the type in its "invalid bool value" message


_TYPE_NAMES = {int: "INT", float: "FLOAT", str: "TEXT", parse_bool: "BOOL"}


class TypedHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Ends every option's help with its type and default (``[int, default: 30]``), unless the help already
    states them (:func:`add_option` writes them itself)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.dest == "help" or action.help == argparse.SUPPRESS:
            return text
        if "default:" in text and text.rstrip().endswith("]"):  # written by add_option
            return text
        if action.nargs == 0:  # store_true / store_false / count: a flag, given or not
            kind, default = "flag", "not given"
        else:
            kind = _type_name(action.type or str, action.choices).lower()
            kind = "one of " + kind if action.choices else kind
            default = "none" if action.default is None else str(action.default)
        if "default:" in text:  # the help states its default in its own words: add the type
            return f"{text} [{kind}]"
        return f"{text} [{kind}, default: {default}]".strip()


class VerbParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: ...``, exit 2) and whose unknown
    options name the closest valid one; option prefixes are not expanded (``--alp`` is not ``--alpha``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", TypedHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown_message(extras))
        return ns

    def unknown_message(self, extras: list[str]) -> str:
        """``unknown option --alhpa (did you mean --alpha?)``, or the stray arguments when none looks like one."""
        options = [e for e in extras if e.startswith("-") and e != "-"]
        if not options:
            return f"unexpected argument(s): {' '.join(extras)}"
        name = options[0].split("=", 1)[0]
        close = difflib.get_close_matches(name, self.option_strings(), n=1, cutoff=0.5)
        if not close:  # --sink-mode for --sink_mode: compare with separators ignored
            plain = {s.replace("-", "").replace("_", ""): s for s in self.option_strings()}
            hit = difflib.get_close_matches(name.replace("-", "").replace("_", ""), list(plain), n=1, cutoff=0.6)
            close = [plain[hit[0]]] if hit else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown option {name}{hint}"


def _type_name(kind: Any, choices: Sequence[Any] | None) -> str:
    if choices:
        return "{" + ",".join(str(c) for c in choices) + "}"
    return _TYPE_NAMES.get(kind, getattr(kind, "__name__", "VALUE").upper())


def add_option(
    parser: argparse.ArgumentParser,
    name: str,
    kind: Any,
    default: Any,
    help: str,
    choices: Sequence[Any] | None = None,
    shown_default: str | None = None,
) -> None:
    """Add ``--name`` of type ``kind`` whose help ends with its type and default.

    A ``bool`` option (``kind=bool``) takes an optional value: ``--color`` means true, ``--color false`` too.
    ``shown_default`` replaces the printed default (e.g. where None means "from the config file").
    """
    flag = "--" + name
    dest = name.replace("-", "_")
    shown = shown_default if shown_default is not None else ("none" if default is None else str(default))
    if kind is bool:
        parser.add_argument(
            flag,
            dest=dest,
            type=parse_bool,
            nargs="?",
            const=True,
            default=default,
            metavar="BOOL",
            help=f"{help} [bool, default: {shown}]",
        )
        return
    metavar = _type_name(kind, choices)
    parser.add_argument(
        flag,
        dest=dest,
        type=kind,
        default=default,
        choices=choices,
        metavar=metavar,
        help=f"{help} [{metavar.lower() if not choices else 'one of ' + metavar}, default: {shown}]",
    )


def check_output_file(path: str | Path, suffixes: Sequence[str], what: str = "output") -> Path:
    """Refuse an output file whose suffix is not one of ``suffixes`` or whose folder does not exist."""
    p = Path(path)
    name = p.name.lower()
    if not any(name.endswith(s) for s in suffixes):
        raise UsageError(f"{what} suffix must be one of {', '.join(suffixes)}", p)
    if not p.parent.is_dir():
        raise UsageError(f"the folder of the {what} does not exist: {p.parent}", p)
    if p.is_dir():
        raise UsageError(f"the {what} is a folder, expected a file", p)
    return p


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """An output folder the verb creates: its parent must exist and it must not be a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"the {what} is a file, expected a folder", p)
    parent = p.resolve().parent
    if not p.exists() and not parent.is_dir():
        raise UsageError(f"the parent of the {what} does not exist: {parent}", p)
    return p
