"""Every `vitalbridge` command and subcommand renders its --help.

argparse formats help strings with %-interpolation only when help is printed, so a stray
"%" in one option's help (e.g. "oxygen saturation, %") breaks that command's --help and
nothing else: walking the whole parser tree is the only way to catch it.
"""

from __future__ import annotations

import argparse

import pytest

from edge_agent.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:  # argparse exposes subparsers only through _actions
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _parsers(child, (*path, name))
    return found


ALL = _parsers(build_parser())


def test_the_tree_has_the_technician_commands() -> None:
    names = {" ".join(path) for path, _ in ALL}
    for expected in ("reading add", "device compromise", "agent run", "journal verify",
                     "export fhir", "inspect", "commission", "sim fleet", "sim scenario",
                     "demo", "firmware run-sim"):
        assert expected in names, f"missing command: vitalbridge {expected}"


@pytest.mark.parametrize("path,parser", ALL, ids=[" ".join(p) or "vitalbridge" for p, _ in ALL])
def test_help_renders(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert text.startswith("usage: vitalbridge"), text[:80]
