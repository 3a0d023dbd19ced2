"""MAX30205 human body temperature sensor (Maxim Integrated, datasheet 19-8505).

Why this part (and not the MLX90614): it is a contact sensor specified for clinical
thermometry -- 0.1 degC accuracy from 37 to 39 degC, meeting ASTM E1112 when soldered on
the final board -- with 16-bit resolution (1/256 degC), while the common MLX90614 is a
non-contact IR thermometer specified at +-0.5 degC around room temperature, whose
reading depends on emissivity and aim. MAX30205 breakouts (e.g. ProtoCentral,
CJMCU-30205) are widely sold for wearables. See docs/firmware-hardware.md.

Registers (pointer byte then data, MSB first): 0x00 temperature (two's complement,
1 LSB = 0.00390625 degC; in the extended format 0x0000 means 64 degC), 0x01 configuration
(bit0 SHUTDOWN, bit1 comparator/interrupt, bit2 OS polarity, bits4:3 fault queue,
bit5 DATA FORMAT extended, bit6 TIMEOUT disable, bit7 ONE-SHOT), 0x02 THYST and 0x03 TOS
(OS thresholds, power-on 75 and 80 degC). A conversion takes 44 ms typical, 50 ms max.

The part has no identification register. identify() therefore checks what a MAX30205
must do: ACK at the address and read back a value written to THYST (restoring it).

The driver uses one-shot mode by default: the part sleeps in shutdown between readings
(600 uA -> a few uA), and a conversion is started on demand.
"""

from firmware.drivers import RegisterDevice, SensorFault

ADDRESS = 0x48  # A0, A1, A2 to GND; 32 addresses are selectable
TEMPERATURE = 0x00
CONFIGURATION = 0x01
T_HYST = 0x02
CONFIG_SHUTDOWN = 0x01
CONFIG_EXTENDED = 0x20
CONFIG_ONE_SHOT = 0x80
CONVERSION_MS = 50  # maximum conversion time
OPERATING_RANGE = (0.0, 50.0)  # degC, the datasheet's operating range
_THYST_DEFAULT = b"\x4b\x00"  # 75 degC
_THYST_PROBE = b"\x4a\x80"  # 74.5 degC


def decode_temperature(msb, lsb, extended=False):
    """degC from the temperature register bytes."""
    raw = (msb << 8) | lsb
    if raw & 0x8000:
        raw -= 0x10000
    celsius = raw / 256.0
    return celsius + 64.0 if extended else celsius


class Max30205(RegisterDevice):
    """Driver; `hal` supplies sleep_ms/asleep_ms for the conversion wait."""

    name = "max30205"

    def __init__(self, i2c, hal, address=ADDRESS, one_shot=True):
        RegisterDevice.__init__(self, i2c, address)
        self.hal = hal
        self.one_shot = one_shot
        self.config = CONFIG_SHUTDOWN if one_shot else 0

    def start(self):
        """identify + configure: the whole (re-)initialisation, also after errors."""
        self.identify()
        self.configure()

    def identify(self):
        self.write(T_HYST, _THYST_PROBE)
        echoed = self.read(T_HYST, 2)
        self.write(T_HYST, _THYST_DEFAULT)
        if echoed != _THYST_PROBE:
            raise SensorFault(self.name, "THYST read-back %r, not a MAX30205?" % (echoed,))

    def configure(self):
        # Normal data format, comparator mode, fault queue 1, bus timeout enabled.
        self.write_u8(CONFIGURATION, self.config)
        if self.read_u8(CONFIGURATION) & 0x7F != self.config:
            raise SensorFault(self.name, "configuration did not stick")

    def start_conversion(self):
        """One-shot mode: begin a conversion; the result is ready CONVERSION_MS later."""
        if self.one_shot:
            self.write_u8(CONFIGURATION, self.config | CONFIG_ONE_SHOT)

    def read_celsius(self):
        """The last conversion's result in degC; SensorFault outside 0..50 degC."""
        data = self.read(TEMPERATURE, 2)
        celsius = decode_temperature(data[0], data[1], bool(self.config & CONFIG_EXTENDED))
        low, high = OPERATING_RANGE
        if not low <= celsius <= high:
            # 0xFFFF (a floating bus) decodes to -0.004 degC: outside the range, like
            # anything the part would report off-body in conditions it is not made for.
            raise SensorFault(self.name, "%.3f degC is outside the sensor's %d..%d degC range"
                              % (celsius, low, high))
        return celsius

    def measure(self):
        """Blocking: convert and read (at most ~50 ms)."""
        self.start_conversion()
        self.hal.sleep_ms(CONVERSION_MS)
        return self.read_celsius()

    async def ameasure(self):
        """Same as measure() without blocking the event loop."""
        self.start_conversion()
        await self.hal.asleep_ms(CONVERSION_MS)
        return self.read_celsius()
