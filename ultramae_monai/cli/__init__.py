"""The ``ultramae`` command: one entry point that gathers every user-facing verb.

Each verb is a module of this package named in :data:`VERBS`, exposing ``NAME`` (the verb on the command
line), ``SUMMARY`` (one line for ``ultramae --help``), ``EXAMPLE`` (one command line), ``add_arguments(parser)``
and ``run(args) -> int``. Verb modules import their heavy dependencies inside ``run``, so ``ultramae --help``
stays fast. Errors from user data print one line (``ultramae: error: FILE: cause``) and exit 2.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ultramae_monai.cli.arguments import VerbParser
from ultramae_monai.errors import UltraMAEError

__all__ = ["VERBS", "build_parser", "main", "verb_modules"]

#: module names (under ``ultramae_monai.cli``) of the verbs, in the order ``ultramae --help`` lists them
VERBS: list[str] = [
    "info",
    "convert",
    "confmap",
    "curate",
    "curate_merge",
    "fill_outlines",
    "demo",
    "deploy",
    "label",
]


def verb_modules() -> list[ModuleType]:
    return [importlib.import_module(f"ultramae_monai.cli.{name}") for name in VERBS]


def _verb_text(module_name: str) -> dict[str, str]:
    """``NAME``, ``SUMMARY``, ``EXAMPLE`` and the docstring of a verb module, read from its source without
    importing it (a verb may import torch at the top: ``ultramae --help`` need not pay for that)."""
    spec = importlib.util.find_spec(f"ultramae_monai.cli.{module_name}")
    text: dict[str, str] = {}
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        text["doc"] = ast.get_docstring(tree) or ""
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                key = node.targets[0].id
                if key in ("NAME", "SUMMARY", "EXAMPLE") and isinstance(node.value, ast.Constant):
                    text[key] = str(node.value.value)
    if not {"NAME", "SUMMARY", "EXAMPLE"} <= set(text):  # not literal strings: import the module after all
        m = importlib.import_module(f"ultramae_monai.cli.{module_name}")
        text = {"NAME": m.NAME, "SUMMARY": m.SUMMARY, "EXAMPLE": m.EXAMPLE, "doc": (m.__doc__ or "").strip()}
    return text


def build_parser(only: str | None = None) -> VerbParser:
    """The top-level parser with one sub-parser per verb, each with its typed, defaulted options.

    ``only``: fill in the options of that verb alone (what ``main`` does: a verb's options may import its
    dependencies, which ``ultramae --help`` need not pay for).
    """
    verbs = [(name, _verb_text(name)) for name in VERBS]
    width = max(len(t["NAME"]) for _, t in verbs)
    listing = "\n".join(f"  {t['NAME']:<{width}}  {t['SUMMARY']}" for _, t in verbs)
    parser = VerbParser(
        prog="ultramae",
        description="Ultrasound masked autoencoders on MONAI.",
        epilog=f"verbs:\n{listing}\n\nRun 'ultramae VERB --help' for a verb's options and an example.",
        usage="ultramae [-h] VERB ...",
    )
    subs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=VerbParser, help="one of the verbs below")
    for module_name, t in verbs:
        sub = subs.add_parser(
            t["NAME"],
            prog=f"ultramae {t['NAME']}",
            description=t["doc"] or t["SUMMARY"],
            epilog=f"example:\n  {t['EXAMPLE']}",
        )
        if only is None or only == t["NAME"]:
            m = importlib.import_module(f"ultramae_monai.cli.{module_name}")
            m.add_arguments(sub)
            sub.set_defaults(_run=m.run, _parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: exit status 0 on success, 2 on a usage or user-data error (one line, no traceback)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=next((a for a in args_list if not a.startswith("-")), ""))
    if not args_list:
        parser.print_help()
        return 2
    try:
        args, extras = parser.parse_known_args(args_list)
        if extras:  # name the closest option of the verb, not of the top-level parser
            owner = getattr(args, "_parser", parser)
            owner.error(owner.unknown_message(extras))
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed
        return int(stop.code or 0)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except UltraMAEError as err:
        print(f"ultramae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ultramae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
