"""Sensor drivers, written from the parts' datasheets against the HAL's bus objects.

Drivers never import `machine`: they receive an I2C or UART object from the HAL
(firmware.hal), and the HAL itself for time when they need it. Every failure reaches the
caller as a SensorError subclass naming the sensor, so the sampler can report it and
retry (re-initialise) without the failure stopping other sensors:

* SensorAbsent -- nothing answers: I2C NACK (OSError ENODEV), or no data where data was
  due. Usually wiring, power or a wrong address.
* SensorFault -- something answers wrongly: wrong part id, bus errors other than a NACK,
  a FIFO that stopped filling, values outside the part's range, line noise on a UART.
"""

import errno


class SensorError(Exception):
    """A sensor could not deliver; `sensor` names it, `reason` says why. Retryable."""

    def __init__(self, sensor, reason):
        super().__init__("%s: %s" % (sensor, reason))
        self.sensor = sensor
        self.reason = reason


class SensorAbsent(SensorError):
    """The device does not answer at all."""


class SensorFault(SensorError):
    """The device answers, but not as its datasheet says it should."""


class RegisterDevice:
    """An I2C device with 8-bit register addresses; bus errors become SensorErrors."""

    name = "i2c-device"

    def __init__(self, i2c, address):
        self.i2c = i2c
        self.address = address

    def _bus_error(self, exc):
        code = exc.args[0] if exc.args else None
        if code == errno.ENODEV:
            return SensorAbsent(self.name, "no ACK at I2C address 0x%02x" % self.address)
        return SensorFault(self.name, "I2C error %s at address 0x%02x" % (code, self.address))

    def read(self, register, count):
        try:
            return self.i2c.readfrom_mem(self.address, register, count)
        except OSError as exc:
            raise self._bus_error(exc) from None  # MicroPython warns on chaining

    def read_u8(self, register):
        return self.read(register, 1)[0]

    def write(self, register, data):
        try:
            self.i2c.writeto_mem(self.address, register, bytes(data))
        except OSError as exc:
            raise self._bus_error(exc) from None  # MicroPython warns on chaining

    def write_u8(self, register, value):
        self.write(register, (value & 0xFF,))
