"""`vitalbridge sim fleet|scenario`: simulated fleets with faults, and one home through one
clinical scenario; both write DIR/report.json and DIR/report.html (docs/fleet.md,
docs/simulator-reports.md). `vitalbridge demo` is the live single-home view."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from simulator import scenario_run
    from simulator.fleet import command as fleet_command

    p = sub.add_parser("sim", help="simulated fleets and clinical scenario runs with reports",
                       description=__doc__)
    runs = p.add_subparsers(dest="sim_command", metavar="RUN", required=True)
    fleet_command.register(runs)
    scenario_run.register(runs)
