"""MicroPython entry of the simulated DUT: the firmware exactly as `vitalbridge firmware
run-sim` starts it (firmware.app.run_sim on SimHal.from_environment), with a probe on the
simulated board's alarm LEDs and buzzer.

The probe plays the part of the light sensor and microphone a real HIL rig would put on
the board: it prints every change the firmware makes to them on the console,
    hal: led red on | hal: led red off | hal: tone 880 Hz 150 ms
It only observes (each call goes to the simulated part unchanged). Runs on MicroPython.
"""

import firmware.app
from firmware.hal import set_hal
from firmware.hal.sim import SimHal

PROBED_LEDS = ("red", "orange", "yellow", "blue")


def probe_led(led):
    drive = led.value

    def value(v=None):
        before = led.lit
        result = drive(v)
        if v is not None and led.lit != before:
            print("hal: led " + led.name + (" on" if led.lit else " off"))
        return result

    led.value = value  # on()/off() call self.value, so they are observed too


def probe_buzzer(buzzer):
    sound = buzzer.tone

    def tone(freq_hz, ms=0):
        sound(freq_hz, ms)
        print("hal: tone " + str(freq_hz) + " Hz " + str(ms) + " ms")

    buzzer.tone = tone


def run():
    hal = SimHal.from_environment()
    for name in PROBED_LEDS:
        probe_led(hal.led(name))
    probe_buzzer(hal.buzzer())
    set_hal(hal)
    firmware.app.run_sim()
