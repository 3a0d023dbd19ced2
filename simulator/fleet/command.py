"""`vitalbridge sim fleet`: a whole simulated fleet with faults, and its report.

  vitalbridge sim fleet --gateways G --devices-per-gateway D --duration S --faults LIST
                        --seed N --report DIR [--rate HZ] [--drain-timeout S]
                        [--ble-per-gateway B]

LIST: comma-separated fault names or `all` (docs/fleet.md says what each one does).
Writes DIR/report.json and DIR/report.html. Exit status: 0 when nothing was lost or
duplicated as new and every expected alarm was raised, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from simulator.fleet.faults import FAULT_NAMES, NOT_BUILT

MAX_GATEWAYS = 50
MAX_DEVICES_PER_GATEWAY = 20
MAX_BLE_PER_GATEWAY = 4  # ble_ingest's default max_connections


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fleet", help="run a simulated fleet with faults and report",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, required=True,
                        help=f"gateway processes (1..{MAX_GATEWAYS})")
    parser.add_argument("--devices-per-gateway", type=int, required=True,
                        help=f"serial devices per gateway (1..{MAX_DEVICES_PER_GATEWAY})")
    parser.add_argument("--duration", type=float, required=True,
                        help="seconds of measuring and fault injection (>= 15)")
    parser.add_argument("--faults", required=True,
                        help="`all` or comma-separated: " + ", ".join(
                            n for n in FAULT_NAMES if n not in NOT_BUILT))
    parser.add_argument("--seed", type=int, required=True, help="seed of the fault schedule "
                        "and the values")
    parser.add_argument("--report", required=True, help="directory for report.json/.html")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="measurements per second per device (0 < HZ <= 20; default 1)")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds the backlog may take to drain after the run (default 60)")
    parser.add_argument("--ble-per-gateway", type=int, default=1,
                        help="sealing BLE devices per gateway, on a virtual radio inside the "
                        f"gateway process (0..{MAX_BLE_PER_GATEWAY}; default 1)")
    parser.set_defaults(handler=run)


def check_arguments(args: argparse.Namespace) -> tuple[str, ...]:
    """Every argument checked before anything starts; the parsed fault names."""
    from edge_agent.cli import CommandError
    from simulator.fleet.faults import FaultSpecError, parse_faults

    def bounded(name: str, value: float, low: float, high: float) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise CommandError(f"--{name} must be in {low:g}..{high:g}, got {value:g}")

    bounded("gateways", args.gateways, 1, MAX_GATEWAYS)
    bounded("devices-per-gateway", args.devices_per_gateway, 1, MAX_DEVICES_PER_GATEWAY)
    bounded("duration", args.duration, 15, 7 * 86400)
    bounded("rate", args.rate, 0.01, 20)
    bounded("drain-timeout", args.drain_timeout, 1, 86400)
    bounded("ble-per-gateway", args.ble_per_gateway, 0, MAX_BLE_PER_GATEWAY)
    report = Path(args.report)
    if report.exists() and not report.is_dir():
        raise CommandError(f"--report {report} exists and is not a directory")
    try:
        faults = parse_faults(args.faults)
    except FaultSpecError as exc:
        raise CommandError(str(exc)) from None
    if "ble-disconnect" in faults and args.ble_per_gateway == 0 and args.faults != "all":
        raise CommandError("fault 'ble-disconnect' needs --ble-per-gateway >= 1")
    return faults


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edge_agent.cli import CommandError
    from simulator.broker import BrokerError
    from simulator.fleet.runner import FleetError, FleetOptions, FleetRun
    from simulator.report import exit_status, summarise, write_report

    faults = check_arguments(args)
    options = FleetOptions(args.gateways, args.devices_per_gateway, args.duration, faults,
                           args.seed, args.rate, args.drain_timeout,
                           ble_per_gateway=args.ble_per_gateway)
    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                   console=console, disable=not console.is_terminal)
    with bar:
        task = bar.add_task("fleet", total=1.0)

        def progress(fraction: float, phase: str) -> None:
            bar.update(task, completed=min(1.0, fraction), description=phase)

        try:
            record = FleetRun(options, progress).run()
        except (BrokerError, FleetError) as exc:
            raise CommandError(str(exc), status=1) from None
    json_path, html_path = write_report(record, Path(args.report))
    summary = summarise(record)
    readings = summary["readings"]
    print(f"fleet {summary['verdict']}: {readings['generated']} readings generated, "
          f"{readings['received']} stored, {readings['lost']} lost, "
          f"{readings['duplicated_as_new']} duplicated as new; "
          f"{summary['alarms_summary']['missed']} expected alarms missed; "
          f"{len(record.faults)} faults injected; report: {json_path} {html_path}")
    for reason in summary["reasons"]:
        print(f"  {reason}")
    return exit_status(summary)


def main(argv: list[str] | None = None) -> int:
    """`python -m simulator.fleet ...` until `vitalbridge sim` lists this command."""
    from edge_agent.cli import CommandError

    parser = argparse.ArgumentParser(prog="vitalbridge sim")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fleet", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args) or 0)
    except CommandError as err:
        print(f"vitalbridge sim fleet: error: {err}", file=sys.stderr)
        return err.status
