"""`python -m simulator.fleet ARGS`: `vitalbridge sim fleet ARGS` (simulator/fleet/command.py)."""

import sys

from simulator.fleet.command import main

sys.exit(main())
