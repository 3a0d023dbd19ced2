#!/usr/bin/env python3
"""How many 1-Hz devices does this machine sustain across 100 gateways with zero loss?

    .venv/bin/python bench/scale_bench.py [--devices 1000,2000,5000,10000] [--gateways 100]
        [--window 20] [--workers 2] [--centres 2] [--latency-bound 2.0] [--keep-going]
        [--profile] [--json FILE] [--quick]

Real parts: mosquitto, the reference centre (several instances in the shared subscription
group), and per gateway a real AgentService (verification, journal, rules, event journal,
Delivery, MQTT 5 QoS 1 with receipts). Bypassed: only the device transport (serial/BLE) —
sealed messages go straight into each gateway's Reception (simulator/scale/gateway.py).
Each device sends one sealed batch a second (SpO2 + pulse: 2 readings) and a signed
checkpoint every 60 batches. Steps and their pass rule: simulator/scale/steps.py; the
baseline (same message shape, bare paho -> mosquitto -> centres): simulator/scale/centres.py.
docs/scale.md has the measured figures and the bottleneck.

Exit status: 0 when every step run passed, 1 when one failed (the ramp stops there unless
--keep-going), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.scale import steps  # noqa: E402
from simulator.scale.ramp import Ramp, RampOptions  # noqa: E402

QUICK = RampOptions(gateways=4, devices=(8, 16), window_s=6, workers=1, centres=1,
                    drain_timeout_s=15.0, baseline_messages=400)


def options(args: argparse.Namespace) -> RampOptions:
    if args.quick:
        return RampOptions(**{**QUICK.__dict__, "profile": args.profile,
                              "keep_going": args.keep_going})
    devices = tuple(int(x) for x in args.devices.split(","))
    if not devices or min(devices) < 1 or list(devices) != sorted(devices):
        raise SystemExit("--devices: increasing positive counts, e.g. 1000,2000,5000")
    return RampOptions(gateways=args.gateways, devices=devices, window_s=args.window,
                       workers=args.workers, centres=args.centres,
                       latency_bound_s=args.latency_bound, drain_timeout_s=args.drain_timeout,
                       baseline_messages=args.baseline_messages, keep_going=args.keep_going,
                       profile=args.profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1000,2000,5000,10000",
                        help="device counts of the ramp's steps (comma-separated, increasing)")
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--window", type=int, default=20, help="seconds per step")
    # 25 agents per process: each holds ~20 descriptors, and paho's select() fails past fd 1023
    parser.add_argument("--workers", type=int, default=4, help="gateway processes")
    parser.add_argument("--centres", type=int, default=2, help="centre processes (shared group)")
    parser.add_argument("--latency-bound", type=float, default=2.0,
                        help="p99 reading -> centre latency a step must stay under (s)")
    parser.add_argument("--drain-timeout", type=float, default=20.0,
                        help="after a window, how long the centres may take to catch up (s)")
    parser.add_argument("--baseline-messages", type=int, default=20000)
    parser.add_argument("--keep-going", action="store_true", help="run steps after a failure")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile gateway worker 0's event loop in each window")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (4 gateways, 8 and 16 devices, 6 s windows) for tests")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    try:
        doc = Ramp(options(args), progress=lambda text: print(text, flush=True)).run()
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(f"scale bench: {exc}", file=sys.stderr)
        return 2
    base = doc["baseline"]
    print(f"\nbaseline (bare paho -> mosquitto -> centres): {base['readings_per_s']:.0f} "
          f"readings/s ({base['messages']} messages; cpu % {base['cpu_percent']})")
    print(steps.table(doc["steps"]))
    print(f"sustained with zero loss: {doc['max_devices_passed']} devices (goal "
          f"{doc['goal_devices']}); machine: {doc['machine']['cpus']} cpus, load at start "
          f"{doc['machine']['loadavg_at_start']}")
    for profile in doc["profiles"]:
        print(profile)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(s["verdict"] == "pass" for s in doc["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
