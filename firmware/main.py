"""Board entry point (deployed as /main.py): start the VitalBridge firmware.

firmware.app.main() records an uncaught exception as a crash and resets, so repeated
crashes end in safe mode (firmware/robust.py). If the application cannot even be
imported (a broken update), this guard prints why and returns: MicroPython then leaves
the REPL open on USB, so `vitalbridge firmware deploy` can install a fixed build.
"""

import sys

try:
    import firmware.app
except Exception as exc:  # keep the REPL reachable for an update
    sys.print_exception(exc)
    print("VitalBridge: the firmware cannot start; the REPL stays open for an update")
else:
    firmware.app.main()
