"""Hardware abstraction layer: get_hal() returns the one Hal of this process.

On an ESP32 (sys.platform == "esp32") it is firmware.hal.esp32.Esp32Hal; anywhere else
(the MicroPython unix port in CI and `vitalbridge firmware run-sim`) it is
firmware.hal.sim.SimHal configured from the VB_SIM_* environment variables. Tests and
the simulator runner may install their own with set_hal(). The interface is documented
in firmware/hal/base.py.
"""

import sys

_current = None


def get_hal():
    global _current
    if _current is None:
        if sys.platform == "esp32":
            from firmware.hal.esp32 import Esp32Hal

            _current = Esp32Hal()
        else:
            from firmware.hal.sim import SimHal

            _current = SimHal.from_environment()
    return _current


def set_hal(hal):
    """Install `hal` as the process HAL (None: choose again on the next get_hal())."""
    global _current
    _current = hal
    return hal
