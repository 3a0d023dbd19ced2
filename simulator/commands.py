"""`vitalbridge demo`: a simulated home on the real edge agent, live (docs/demo.md).

Exit status: 0 when every generated reading reached the centre and every device checkpoint
verified; 1 when anything was lost (or a part of the home failed); 2 for bad options.
"""

from __future__ import annotations

import argparse

MIN_DURATION_S = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a simulated home end to end with a live view",
                       description=__doc__)
    p.add_argument("--duration", type=float, default=60.0,
                   help=f"seconds of scenario (default 60, at least {MIN_DURATION_S:g})")
    p.add_argument("--seed", type=int, default=1, help="physiology seed")
    p.add_argument("--no-live", action="store_true", help="plain output (no live view)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edge_agent.cli import CommandError

    if not MIN_DURATION_S <= args.duration <= 3600:
        raise CommandError(f"--duration must be {MIN_DURATION_S:g}..3600 seconds")
    from simulator.demo import DemoError, run_demo
    from simulator.demo_view import print_summary

    try:
        snap = run_demo(args.duration, args.seed, live=not args.no_live)
    except DemoError as err:
        raise CommandError(str(err), status=1) from None
    print_summary(snap)
    return 0 if snap.ok else 1
