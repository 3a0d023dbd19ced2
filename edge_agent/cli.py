"""The `vitalbridge` command: one tool, with subcommands contributed by each component.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its parser and sets
`handler` to a function(args) -> exit status. Modules import their heavy dependencies inside
the handler, so `vitalbridge --help` stays fast on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "edge_agent.commands.inspect",
    "edge_agent.commands.agent",
    "edge_agent.commands.journal",
    "edge_agent.commands.export",
    "edge_agent.commands.ca",
    "edge_agent.commands.gateway",
    "edge_agent.commands.device",
    "edge_agent.commands.commission",
    "edge_agent.commands.reading",
    "edge_agent.commands.pairing",
    "edge_agent.commands.fault",
    "edge_agent.commands.firmware",
    "simulator.commands",
    "simulator.sim_commands",
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status `status`, never a traceback."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitalbridge",
        description="VitalBridge remote-patient-monitoring gateway tool.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except CommandError as err:
        print(f"vitalbridge {args.command}: error: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the imported module's main: commands raise edge_agent.cli.CommandError, which is
    # not this __main__ module's class of the same name.
    from edge_agent.cli import main as imported_main

    sys.exit(imported_main())
