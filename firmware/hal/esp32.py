"""ESP32 HAL: the reference board is an ESP32-S3-DevKitC-1 (wiring in BOARD below and in
docs/firmware-hardware.md). Other ESP32 boards pass their own pin map to Esp32Hal.

Notes from the ESP32 port of MicroPython that shape this file:
* time.time() counts from 2000-01-01 on ports whose gmtime(0) says 2000; the HAL always
  speaks Unix seconds.
* machine.reset_cause() maps a brownout to PWRON_RESET and both a panic and
  machine.reset() to HARD_RESET. reset() therefore leaves a marker file first, so the
  next boot can tell "software" (we asked) from "hard" (a crash or the reset pin).
* os.urandom() is the hardware RNG; it is a true RNG while the radio runs (ESP-IDF
  docs), which it does once BLE is up, before keys are generated.
* The watchdog cannot be stopped once started.
"""

import asyncio
import os
import time

import machine

from firmware.hal.base import Hal

# ESP32-S3-DevKitC-1 reference wiring. GPIOs chosen away from strapping pins (0, 3, 45,
# 46), USB (19, 20), octal PSRAM/flash (26-37) and UART0 (43, 44).
# UARTs: 1 = the BP module; 2 = the gateway frame link (reference: nothing else ever
# writes there); 0 = the USB-UART bridge, which also carries the REPL console and the ROM
# boot log ("console_uart"): a frame link there works, with frames written whole.
BOARD = {
    "i2c": {0: {"sda": 8, "scl": 9, "freq": 400000}},
    "uart": {1: {"tx": 17, "rx": 18}, 2: {"tx": 11, "rx": 12}, 0: {"tx": 43, "rx": 44}},
    "console_uart": 0,
    "leds": {"red": 4, "orange": 5, "yellow": 6, "blue": 7, "status": 15},
    "led_active_low": (),
    "buzzer": 16,
    "battery_adc": 1,  # ADC1 channel 0: usable while the radio runs (ADC2 is not)
    "battery_divider": 2.0,  # 100k/100k from the cell to the ADC pin
}

# TX buffer of a UART shared with the console: a whole frame (protocol.frames maximum plus
# COBS and CRC overhead) fits, so writing one never blocks the loop for long.
_CONSOLE_TXBUF = 4608
_UNIX_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0
_RESET_MARKER = "reset-requested"


class _Led:
    def __init__(self, pin, active_low):
        self.pin = machine.Pin(pin, machine.Pin.OUT)
        self.active_low = active_low
        self.off()

    def value(self, v=None):
        if v is None:
            return bool(self.pin.value()) != self.active_low
        self.pin.value(1 if bool(v) != self.active_low else 0)
        return None

    def on(self):
        self.value(True)

    def off(self):
        self.value(False)


class _Buzzer:
    """Passive piezo on a PWM pin; a one-shot hardware timer ends timed tones."""

    def __init__(self, pin, timer_id=0):
        self.pwm = machine.PWM(machine.Pin(pin), freq=2000, duty_u16=0)
        self.timer = machine.Timer(timer_id)

    def tone(self, freq_hz, ms=0):
        if freq_hz <= 0 or ms < 0:
            raise ValueError("tone needs freq_hz > 0 and ms >= 0")
        self.timer.deinit()
        self.pwm.freq(int(freq_hz))
        self.pwm.duty_u16(32768)  # 50 % duty: loudest for a piezo
        if ms:
            self.timer.init(mode=machine.Timer.ONE_SHOT, period=int(ms),
                            callback=lambda _t: self.pwm.duty_u16(0))

    def off(self):
        self.timer.deinit()
        self.pwm.duty_u16(0)


class Esp32Hal(Hal):
    name = "esp32"

    def __init__(self, board=None, flash_dir="/data"):
        self.board = board if board is not None else BOARD
        self.flash_dir = flash_dir
        try:
            os.mkdir(flash_dir)
        except OSError:
            pass  # exists
        self._i2c = {}
        self._uarts = {}
        self._leds = {}
        self._buzzer = None
        self._watchdog = None
        self._adc = None
        self._cause = self._read_reset_cause()

    # --- time ---------------------------------------------------------------------
    def time(self):
        return time.time() + _UNIX_EPOCH_OFFSET

    def set_time(self, epoch_s):
        t = time.gmtime(int(epoch_s) - _UNIX_EPOCH_OFFSET)
        # RTC.datetime takes (year, month, day, weekday, hours, minutes, seconds, subseconds)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, new, old):
        return time.ticks_diff(new, old)

    def ticks_add(self, ticks, delta_ms):
        return time.ticks_add(ticks, delta_ms)

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    async def asleep_ms(self, ms):
        await asyncio.sleep_ms(ms)

    # --- randomness and identity ----------------------------------------------------
    def random_bytes(self, n):
        return os.urandom(n)

    def unique_id(self):
        return machine.unique_id()

    # --- buses and peripherals ------------------------------------------------------
    def i2c(self, bus=0):
        if bus not in self._i2c:
            pins = self.board["i2c"][bus]
            self._i2c[bus] = machine.I2C(bus, sda=machine.Pin(pins["sda"]),
                                         scl=machine.Pin(pins["scl"]), freq=pins["freq"])
        return self._i2c[bus]

    def uart_shares_console(self, port):
        return port == self.board.get("console_uart")

    def uart(self, port=1, baudrate=9600):
        if port not in self._uarts:
            if port not in self.board["uart"]:
                raise ValueError("UART %d is not wired on this board (wired: %s)"
                                 % (port, sorted(self.board["uart"])))
            pins = self.board["uart"][port]
            if self.uart_shares_console(port):
                # COBS frames may hold 0x03: it must not raise KeyboardInterrupt.
                import micropython

                micropython.kbd_intr(-1)
                self._uarts[port] = machine.UART(port, baudrate=baudrate, tx=pins["tx"],
                                                 rx=pins["rx"], timeout=0, rxbuf=1024,
                                                 txbuf=_CONSOLE_TXBUF)
            else:
                self._uarts[port] = machine.UART(port, baudrate=baudrate, tx=pins["tx"],
                                                 rx=pins["rx"], timeout=0, rxbuf=512)
        else:
            self._uarts[port].init(baudrate=baudrate)
        return self._uarts[port]

    def led(self, name):
        if name not in self._leds:
            pin = self.board["leds"][name]
            self._leds[name] = _Led(pin, name in self.board["led_active_low"])
        return self._leds[name]

    def buzzer(self):
        if self._buzzer is None:
            self._buzzer = _Buzzer(self.board["buzzer"])
        return self._buzzer

    def battery_mv(self):
        if self._adc is None:
            self._adc = machine.ADC(machine.Pin(self.board["battery_adc"]),
                                    atten=machine.ADC.ATTN_11DB)
        total = 0
        for _ in range(8):
            total += self._adc.read_uv()  # factory-calibrated microvolts
        return int(total / 8 * self.board["battery_divider"] / 1000)

    def ble(self):
        import bluetooth

        return bluetooth.BLE()

    def ble_uuid(self, value):
        import bluetooth

        return bluetooth.UUID(value)

    def wlan(self):
        import network

        return network.WLAN(network.STA_IF)

    # --- robustness -----------------------------------------------------------------
    def watchdog(self, timeout_ms):
        if self._watchdog is None:
            self._watchdog = machine.WDT(timeout=timeout_ms)
        return self._watchdog

    def _marker(self):
        return self.flash_dir + "/" + _RESET_MARKER

    def _read_reset_cause(self):
        code = machine.reset_cause()
        requested = False
        try:
            os.remove(self._marker())
            requested = True
        except OSError:
            pass
        if code == machine.PWRON_RESET:
            return "power-on"
        if code == machine.WDT_RESET:
            return "watchdog"
        if code == machine.SOFT_RESET:
            return "soft"
        if code == machine.DEEPSLEEP_RESET:
            return "deep-sleep"
        if code == machine.HARD_RESET:
            return "software" if requested else "hard"
        return "unknown"

    def reset_cause(self):
        return self._cause

    def reset(self):
        try:
            with open(self._marker(), "w") as marker:
                marker.write("1")
        except OSError:
            pass  # the cause will read "hard": still a restart
        machine.reset()
