"""MAX30102 / MAX30101 pulse-oximetry and heart-rate front end (Maxim Integrated).

Written from the MAX30102 datasheet (19-7740; the MAX30101 shares the register map and
part id 0x15 and adds a green LED that SpO2 mode does not use). I2C address 0x57.

The driver runs the part in SpO2 mode (red + IR) and reads the 32-sample FIFO by its
pointers: one burst read of registers 0x00..0x06 (interrupt status, write pointer,
overflow counter, read pointer) then one burst read of FIFO_DATA for every available
sample, 3 bytes per channel, red first, 18-bit left-justified data (bits 17..0).

Decisions (docs/firmware-hardware.md):
* FIFO rollover is disabled: when the FIFO is full the part keeps the 32 oldest samples
  and counts the lost ones in OVF_COUNTER, so the samples we read are contiguous and the
  gap is known (the next batch is flagged `gap`). With rollover enabled the write
  pointer laps the read pointer and the pointer difference no longer tells how many
  samples are new.
* Full vs empty: equal pointers mean empty unless OVF_COUNTER > 0 (then 32 samples).
* A power-on reset of the part (PWR_RDY set in the status burst) means its configuration
  was lost: the driver reconfigures it and flags a gap.
* A FIFO that neither fills nor overflows for two FIFO-lengths of time is stuck:
  SensorFault. The sampler re-runs start() to recover.
"""

from firmware.drivers import RegisterDevice, SensorFault

ADDRESS = 0x57
PART_ID_VALUE = 0x15

INT_STATUS_1 = 0x00
FIFO_WR_PTR = 0x04
FIFO_DATA = 0x07
FIFO_CONFIG = 0x08
MODE_CONFIG = 0x09
SPO2_CONFIG = 0x0A
LED1_PA = 0x0C  # red
LED2_PA = 0x0D  # IR
INT_ENABLE_1 = 0x02
REVISION_ID = 0xFE
PART_ID = 0xFF

STATUS_PWR_RDY = 0x01
MODE_RESET = 0x40
MODE_SHUTDOWN = 0x80
MODE_SPO2 = 0x03
FIFO_DEPTH = 32
BYTES_PER_SAMPLE = 6  # two channels x 3 bytes
SAMPLE_MASK = 0x3FFFF

# Register field codes (datasheet register descriptions).
SAMPLE_RATE_CODES = {50: 0, 100: 1, 200: 2, 400: 3}  # SpO2 mode rates valid at every pulse width
AVERAGING_CODES = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4, 32: 5}
PULSE_WIDTH_CODES = {69: 0, 118: 1, 215: 2, 411: 3}  # us -> 15/16/17/18-bit ADC
ADC_RANGE_CODES = {2048: 0, 4096: 1, 8192: 2, 16384: 3}  # full scale, nA
LED_MA_PER_STEP = 0.2  # LEDx_PA: 0x00 = 0 mA .. 0xFF = 51 mA


class FifoBatch:
    """Samples read in one go (lists of ints). `gap` is True when samples are missing
    between the previous batch and this one (FIFO overflow, reconfiguration); `lost`
    counts the samples lost to an overflow (a lower bound: the counter saturates)."""

    def __init__(self, red, ir, gap=False, lost=0):
        self.red = red
        self.ir = ir
        self.gap = gap
        self.lost = lost

    def __len__(self):
        return len(self.ir)


class Max30102(RegisterDevice):
    """Driver; `hal` supplies ticks_ms/ticks_diff/sleep_ms. Call start(), then read()."""

    name = "max30102"

    def __init__(self, i2c, hal, address=ADDRESS, sample_rate=100, averaging=2,
                 pulse_width_us=411, adc_range_na=4096, red_ma=7.2, ir_ma=7.2):
        RegisterDevice.__init__(self, i2c, address)
        if sample_rate not in SAMPLE_RATE_CODES:
            raise ValueError("sample_rate must be one of 50, 100, 200, 400")
        if averaging not in AVERAGING_CODES:
            raise ValueError("averaging must be 1, 2, 4, 8, 16 or 32")
        if pulse_width_us not in PULSE_WIDTH_CODES:
            raise ValueError("pulse_width_us must be 69, 118, 215 or 411")
        if adc_range_na not in ADC_RANGE_CODES:
            raise ValueError("adc_range_na must be 2048, 4096, 8192 or 16384")
        for current in (red_ma, ir_ma):
            if not 0 <= current <= 51:
                raise ValueError("LED current must be 0..51 mA")
        self.hal = hal
        self.sample_rate = sample_rate
        self.averaging = averaging
        self.fifo_config = (AVERAGING_CODES[averaging] << 5) | 0x0F  # rollover off
        self.spo2_config = ((ADC_RANGE_CODES[adc_range_na] << 5)
                            | (SAMPLE_RATE_CODES[sample_rate] << 2)
                            | PULSE_WIDTH_CODES[pulse_width_us])
        self.led_codes = (int(red_ma / LED_MA_PER_STEP + 0.5), int(ir_ma / LED_MA_PER_STEP + 0.5))
        period_ms = 1000.0 * averaging / sample_rate
        self.stall_ms = int(2 * FIFO_DEPTH * period_ms) + 200
        self.revision = None
        self.restarts = 0  # power-on resets of the part seen while running
        self.lost_samples = 0
        self._gap = True
        self._lost_next = 0
        self._last_data = 0

    @property
    def output_rate(self):
        """Samples per second per channel after on-chip averaging."""
        return self.sample_rate / self.averaging

    def start(self):
        """identify, reset, configure: the whole (re-)initialisation, also after errors."""
        self.identify()
        self.reset()
        self.configure()

    def identify(self):
        part = self.read_u8(PART_ID)
        if part != PART_ID_VALUE:
            raise SensorFault(self.name, "part id 0x%02x, expected 0x%02x" % (part, PART_ID_VALUE))
        self.revision = self.read_u8(REVISION_ID)
        return part, self.revision

    def reset(self):
        self.write_u8(MODE_CONFIG, MODE_RESET)
        for _ in range(20):
            if not self.read_u8(MODE_CONFIG) & MODE_RESET:
                break
            self.hal.sleep_ms(1)
        else:
            raise SensorFault(self.name, "reset bit did not clear")
        self.read(INT_STATUS_1, 2)  # clear PWR_RDY and pending flags

    def configure(self):
        self.write(INT_ENABLE_1, (0, 0))  # polled: the INT pin is not needed
        self.write_u8(FIFO_CONFIG, self.fifo_config)
        self.write_u8(SPO2_CONFIG, self.spo2_config)
        self.write(LED1_PA, self.led_codes)
        self.write(FIFO_WR_PTR, (0, 0, 0))  # WR_PTR, OVF_COUNTER, RD_PTR: empty FIFO
        self.write_u8(MODE_CONFIG, MODE_SPO2)
        readback = self.read(FIFO_CONFIG, 3)
        if (readback[0], readback[1] & 0x07, readback[2] & 0x7F) != (
                self.fifo_config, MODE_SPO2, self.spo2_config):
            raise SensorFault(self.name, "configuration did not stick")
        self._gap = True
        self._lost_next = 0
        self._last_data = self.hal.ticks_ms()

    def shutdown(self):
        self.write_u8(MODE_CONFIG, MODE_SHUTDOWN | MODE_SPO2)

    def read_fifo(self):
        """Every sample the FIFO holds, as a FifoBatch (possibly empty)."""
        head = self.read(INT_STATUS_1, 7)
        if head[0] & STATUS_PWR_RDY:  # the part lost power: registers are at defaults
            self.restarts += 1
            self.configure()
            return FifoBatch([], [], gap=True)
        write_ptr = head[4] & 0x1F
        overflow = head[5] & 0x1F
        read_ptr = head[6] & 0x1F
        now = self.hal.ticks_ms()
        available = (write_ptr - read_ptr) % FIFO_DEPTH
        if available == 0 and overflow:
            available = FIFO_DEPTH
        if available == 0:
            if self.hal.ticks_diff(now, self._last_data) > self.stall_ms:
                raise SensorFault(self.name, "FIFO not filling (write pointer at %d)" % write_ptr)
            return FifoBatch([], [])
        self._last_data = now
        data = self.read(FIFO_DATA, BYTES_PER_SAMPLE * available)
        red = []
        ir = []
        for i in range(0, len(data) - BYTES_PER_SAMPLE + 1, BYTES_PER_SAMPLE):
            red.append(((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]) & SAMPLE_MASK)
            ir.append(((data[i + 3] << 16) | (data[i + 4] << 8) | data[i + 5]) & SAMPLE_MASK)
        batch = FifoBatch(red, ir, gap=self._gap, lost=self._lost_next)
        # Samples lost now (the FIFO was full) are missing *after* this batch. The
        # counter saturates at 31, so `lost` is a lower bound.
        self._lost_next = overflow
        self.lost_samples += overflow
        self._gap = overflow > 0
        return batch
