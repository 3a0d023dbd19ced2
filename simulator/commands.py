"""`vitalbridge demo`: the simulated home, live (see simulator/demo.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a simulated home end to end with a live view",
                       description=__doc__)
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--seed", type=int, default=1, help="physiology seed")
    p.add_argument("--no-live", action="store_true", help="plain output (no live view)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edge_agent.cli import CommandError
    from simulator.demo import DemoError, run_demo

    if args.duration <= 0:
        raise CommandError("--duration must be positive")
    try:
        tally = run_demo(args.duration, args.seed, live=not args.no_live)
    except DemoError as err:
        raise CommandError(str(err), status=1) from None
    lost = tally.generated - tally.received
    console = Console()
    console.print(
        f"[bold]summary[/]: {tally.generated} readings generated, {tally.received} delivered "
        f"and confirmed by the centre, {lost} lost, {tally.duplicates} duplicates dropped; "
        f"{len(tally.alarms)} alarm transitions; checkpoints {tally.checkpoints_ok} verified, "
        f"{tally.checkpoints_bad} failed")
    for what, n in tally.notes.most_common():
        console.print(f"  note: {n}× {what}")
    return 1 if lost or tally.checkpoints_bad or not tally.generated else 0
