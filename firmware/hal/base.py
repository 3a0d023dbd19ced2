"""The hardware abstraction layer: the only code that touches the chip.

Everything under firmware/ except firmware/hal/ reaches time, flash, buses, pins, radios
and the RNG through a `Hal` (firmware.hal.get_hal()); a hook rejects `import machine`,
`bluetooth`, `network`, `esp32`, `esp` or `aioble` elsewhere. Two implementations:
firmware.hal.esp32.Esp32Hal on the board, firmware.hal.sim.SimHal on the MicroPython unix
port (CI, `vitalbridge firmware run-sim`) with register-level simulated sensors.

Objects returned by the factory methods (duck-typed, same on both):

* I2C bus -- readfrom_mem(addr, reg, n) -> bytes, writeto_mem(addr, reg, buf),
  scan() -> [addr]. Errors are OSError as from machine.I2C: errno ENODEV for a NACK
  (nothing at that address), ETIMEDOUT for a stuck bus, EIO otherwise.
* UART -- read(n) -> bytes, or None when nothing is waiting (never blocks);
  write(buf) -> int; any() -> int, > 0 when bytes are waiting (a count where known).
* LED -- on(), off(), value(v=None) (get or set; True = lit whatever the wiring polarity).
* Buzzer -- tone(freq_hz, ms) starts a tone that stops by itself after ms (0 = until
  off()); it returns at once. off().
* Watchdog -- feed(). Once started it cannot be stopped (ESP32 hardware rule).

Wall-clock time is Unix seconds (the ESP32 port counts from 2000 internally; the HAL
converts). ticks_ms() wraps like MicroPython's ticks (period 2**30 ms on ESP32, about
12.4 days): always compare ticks with ticks_diff(), never with < or -.
"""

RESET_CAUSES = ("power-on", "watchdog", "soft", "software", "hard", "deep-sleep", "unknown")


class Hal:
    """Interface; every method raises NotImplementedError here."""

    name = "abstract"
    flash_dir = None  # directory for the keystore/outbox files (ESP32: "/data")

    # --- time ---------------------------------------------------------------------
    def time(self):
        """Wall-clock Unix time in whole seconds (valid once set_time() was called)."""
        raise NotImplementedError

    def set_time(self, epoch_s):
        """Set the wall clock (from the gateway's authenticated time)."""
        raise NotImplementedError

    def ticks_ms(self):
        """Monotonic milliseconds, wrapping (see ticks_diff)."""
        raise NotImplementedError

    def ticks_diff(self, new, old):
        """Signed difference new - old of two ticks_ms() values, wrap-safe."""
        raise NotImplementedError

    def ticks_add(self, ticks, delta_ms):
        """ticks + delta_ms, wrapped like ticks_ms()."""
        raise NotImplementedError

    def sleep_ms(self, ms):
        """Block the whole program for ms milliseconds (drivers' short waits only)."""
        raise NotImplementedError

    async def asleep_ms(self, ms):
        """Suspend the calling task for ms milliseconds; other tasks run meanwhile."""
        raise NotImplementedError

    # --- randomness and identity ----------------------------------------------------
    def random_bytes(self, n):
        """n bytes from the hardware RNG (for keys)."""
        raise NotImplementedError

    def unique_id(self):
        """Bytes that identify this chip (ESP32: the factory MAC)."""
        raise NotImplementedError

    # --- buses and peripherals ------------------------------------------------------
    def i2c(self, bus=0):
        raise NotImplementedError

    def uart(self, port=1, baudrate=9600):
        raise NotImplementedError

    def uart_shares_console(self, port):
        """True when the console (print, the REPL) also writes to UART `port`: a frame
        link there must write each frame in one piece (firmware/transport/uart.py)."""
        return False

    def led(self, name):
        """LED by name: "red", "orange", "yellow", "blue" (alarm grades), "status"."""
        raise NotImplementedError

    def buzzer(self):
        raise NotImplementedError

    def battery_mv(self):
        """Battery voltage in millivolts (through the board's divider)."""
        raise NotImplementedError

    def ble(self):
        """The bluetooth.BLE object, or None where there is no radio (simulation)."""
        raise NotImplementedError

    def ble_uuid(self, value):
        """A bluetooth.UUID (what gatts_register_services accepts) for a 16-bit int or a
        128-bit UUID text; only the HAL may import `bluetooth`."""
        raise NotImplementedError

    def wlan(self):
        """A network.WLAN station interface, or None where there is none."""
        raise NotImplementedError

    # --- robustness -----------------------------------------------------------------
    def watchdog(self, timeout_ms):
        raise NotImplementedError

    def reset_cause(self):
        """Why the chip last started: one of RESET_CAUSES.

        "soft" is a MicroPython soft reset (Ctrl-D); "software" a reset() by this
        firmware; "hard" a crash (panic) or the reset pin. ESP32 MicroPython reports a
        brownout as power-on.
        """
        raise NotImplementedError

    def reset(self):
        """Restart the chip now (does not return)."""
        raise NotImplementedError
