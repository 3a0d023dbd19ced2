"""Run one fleet gateway: the real AgentService from a gateway.toml, in its own process.

  python -m simulator.fleet.launcher --config gateway.toml [--housekeeping-s S]
                                     [--disk-budget-bytes N]

The same service `vitalbridge agent run` starts, with two simulator knobs that compress
time: the housekeeping period (retention and disk budget; 60 s in the agent) and a disk
budget below the configuration file's 1 MB minimum, so a run of a minute can fill it.
Exit status as `vitalbridge agent run`: 0 after SIGTERM, 2 when it cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

MB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.fleet.launcher")
    parser.add_argument("--config", required=True)
    parser.add_argument("--housekeeping-s", type=float, default=None)
    parser.add_argument("--disk-budget-bytes", type=int, default=None)
    args = parser.parse_args(argv)

    from edge_agent import service as agent_service
    from edge_agent.config import ConfigError, load_config
    from edge_agent.logging_setup import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if args.disk_budget_bytes is not None:
        journal = dataclasses.replace(config.journal, disk_budget_mb=args.disk_budget_bytes / MB)
        config = dataclasses.replace(config, journal=journal)
    if args.housekeeping_s is not None:
        # The service reads the module constant at each round (edge_agent/service.py).
        agent_service.HOUSEKEEPING_S = args.housekeeping_s
    configure_logging(config.logging.level, config.logging.format)
    try:
        asyncio.run(agent_service.AgentService(config).run())
    except agent_service.AgentStartError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("vitalbridge.fleet").exception("the agent failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
