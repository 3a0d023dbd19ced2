"""`vitalbridge demo`: a simulated home on the real edge agent, live (docs/demo.md).

Exit status: 0 when every generated reading reached the centre and every device checkpoint
verified; 1 when anything was lost (or a part of the home failed); 2 for bad options;
130 when interrupted (Ctrl-C: everything is stopped and a partial summary printed).
"""

from __future__ import annotations

import argparse
import sys

MIN_DURATION_S = 10.0
# simulator.home_rig.SCENARIO, spelled out: every `vitalbridge` run imports this module, so
# the heavy ones are imported inside run() (a test checks the two agree).
DEFAULT_SCENARIO = "sudden-desaturation"
INTERRUPTED = 130  # the shell's status for a run ended by SIGINT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a simulated home end to end with a live view",
                       description=__doc__)
    p.add_argument("--duration", type=float, default=60.0,
                   help=f"seconds of scenario (default 60, at least {MIN_DURATION_S:g})")
    p.add_argument("--seed", type=int, default=1, help="physiology seed")
    p.add_argument("--scenario", default=DEFAULT_SCENARIO,
                   help="the patient's story, a name from edge_agent.alarms.scenarios "
                        "(default %(default)s)")
    p.add_argument("--no-live", action="store_true", help="plain output (no live view)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edge_agent.alarms.scenarios import NAMES as SCENARIOS
    from edge_agent.cli import CommandError

    if not MIN_DURATION_S <= args.duration <= 3600:
        raise CommandError(f"--duration must be {MIN_DURATION_S:g}..3600 seconds")
    if args.scenario not in SCENARIOS:
        raise CommandError(f"--scenario: unknown scenario {args.scenario!r} "
                           f"(known: {', '.join(SCENARIOS)})")
    from simulator.demo import DemoError, DemoInterrupted, DemoSnapshot, run_demo
    from simulator.demo_view import interrupted_lines, print_lines, print_summary

    started = [False]

    def announce(snap: DemoSnapshot) -> None:  # --no-live: one line when the home is up
        if not started[0]:
            started[0] = True
            print(f"home started: playing {snap.scenario} for {snap.duration:g} s",
                  flush=True)

    try:
        snap = run_demo(args.duration, args.seed, live=not args.no_live,
                        scenario=args.scenario, on_update=announce if args.no_live else None)
    except DemoError as err:
        raise CommandError(str(err), status=1) from None
    except DemoInterrupted as stop:
        print_lines(interrupted_lines(stop))
        sys.stdout.flush()
        return INTERRUPTED
    print_summary(snap)
    return 0 if snap.ok else 1
