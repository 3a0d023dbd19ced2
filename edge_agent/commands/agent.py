"""`vitalbridge agent`: run the edge agent service, or check its configuration file.

  vitalbridge agent run --config /etc/vitalbridge/gateway.toml
  vitalbridge agent check-config /etc/vitalbridge/gateway.toml

`run` serves until SIGTERM or SIGINT, then shuts down gracefully (docs/agent.md). Exit
status: 0 after a clean stop, 2 when the configuration or the gateway's state does not allow
a start (one line per problem on stderr), 1 when the service failed while running.
`check-config` prints every problem with its key path (exit 2), or a summary (exit 0) and
notes on referenced files that are missing (they may legitimately not exist yet).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent.cli import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("agent", help="run the edge agent service or check its config",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    run_parser = actions.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run_parser.add_argument("--config", required=True, help="gateway.toml")
    run_parser.set_defaults(handler=run)
    check = actions.add_parser("check-config", help="validate a gateway.toml")
    check.add_argument("file", help="gateway.toml")
    check.set_defaults(handler=check_config)


def _load(path: str):  # -> AgentConfig
    from edge_agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        raise CommandError(f"{len(exc.problems)} problem(s) in {path}") from None


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from edge_agent.logging_setup import configure_logging
    from edge_agent.service import AgentService, AgentStartError

    config = _load(args.config)
    configure_logging(config.logging.level, config.logging.format)
    try:
        asyncio.run(AgentService(config).run())
    except AgentStartError as exc:
        raise CommandError(str(exc)) from None
    except Exception:
        logging.getLogger("vitalbridge.agent").exception("the agent failed")
        return 1
    return 0


def _missing_files(config) -> list[str]:  # AgentConfig -> notes
    from edge_agent.service import AGREEMENT_KEY_FILE, SIGNING_KEY_FILE

    notes = []
    wanted: list[tuple[str, Path]] = [
        ("gateway signing key", config.gateway.keys_dir / SIGNING_KEY_FILE),
        ("gateway agreement key", config.gateway.keys_dir / AGREEMENT_KEY_FILE)]
    if config.broker.tls is not None:
        wanted += [("broker.tls.ca", config.broker.tls.ca),
                   ("broker.tls.cert", config.broker.tls.cert),
                   ("broker.tls.key", config.broker.tls.key)]
    for what, path in wanted:
        try:
            present = path.is_file()
        except OSError:
            present = False
        if not present:
            notes.append(f"note: {what} {path} does not exist (yet)")
    return notes


def check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    broker = config.broker
    print(f"ok: gateway {config.gateway.id}, data in {config.gateway.data_dir}; broker "
          f"{broker.host}:{broker.port} ({'TLS' if broker.tls else 'no TLS'}); "
          f"{len(config.serial)} serial port(s), {len(config.ble.devices)} BLE device(s)")
    for note in _missing_files(config):
        print(note)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m edge_agent.commands.agent ...`: the same commands without the `vitalbridge`
    front end (until it lists this module, and for service managers that want it)."""
    parser = argparse.ArgumentParser(prog="vitalbridge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["agent", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args) or 0)
    except CommandError as err:
        print(f"vitalbridge agent: error: {err}", file=sys.stderr)
        return err.status


if __name__ == "__main__":
    sys.exit(main())
