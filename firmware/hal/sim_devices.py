"""Register-level models of the sensors, for the simulated HAL (firmware/hal/sim.py).

Each model behaves like the part at its bus interface, as its datasheet describes it, so
the real drivers run unchanged against it:

* Max30102Model -- MAX30102/MAX30101 pulse oximeter front end on I2C (0x57): register
  map, 32-sample FIFO with write/read pointers and overflow counter, mode/SpO2/LED
  registers, interrupt status (clear on read), reset bit, part id 0x15. It synthesises
  red/IR PPG samples (PpgSynth) from the physiological signals at the configured rate.
* Max30205Model -- MAX30205 body temperature sensor on I2C (0x48): temperature register
  in its 16-bit format (normal or extended), configuration with shutdown and one-shot.
* BpModuleModel -- Sunrom 1437 blood-pressure module on a UART: one ASCII line per
  measurement (see firmware/drivers/bp_uart.py for the frame).

Physiology holds the signals (heart rate, SpO2, temperature, ...) the models render;
tests set it directly, the simulator feeds it through sim.SignalFeed. Faults are injected
per model with `fault`: "absent" (no ACK / silence), "nack", "timeout" (bus errors),
"stuck" (MAX30102 FIFO stops filling, MAX30205 register frozen), "garbage" (MAX30205
reads 0xFFFF like a floating bus, BP module sends line noise).

Pure Python without MicroPython-only modules: it also imports on CPython, where the
algorithm's property tests use PpgSynth.
"""

import errno
import math

from firmware.algorithms.spo2 import MAXIM_RD117

FAULTS = ("absent", "nack", "timeout", "stuck", "garbage")


class Rng:
    """xorshift32: deterministic noise, identical on every port."""

    def __init__(self, seed=1):
        self.state = (seed & 0xFFFFFFFF) or 1

    def next32(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def uniform(self):
        """-1.0 .. 1.0"""
        return self.next32() / 2147483647.5 - 1.0

    def gauss(self):
        """Approximately standard normal (sum of four uniforms, variance scaled to 1)."""
        return (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.8660254


class Physiology:
    """The signals the simulated sensors measure. set() validates; bad values raise ValueError.

    hr beat/min (0 = no pulse), spo2 %, temp degC (contact temperature), finger (on the
    oximeter), motion 0..1 (artifact strength), noise (white noise, fraction of the IR
    pulse amplitude), pi perfusion index %, resp breaths/min (baseline modulation),
    battery_mv, and the blood pressure the cuff will report: sys, dia, bp_pulse.
    """

    RANGES = {
        "hr": (0, 300), "spo2": (0, 100), "temp": (0, 50), "motion": (0, 1), "noise": (0, 2),
        "pi": (0.02, 20), "resp": (0, 60), "battery_mv": (0, 5000),
        "sys": (0, 255), "dia": (0, 255), "bp_pulse": (0, 255),
    }

    def __init__(self):
        self.hr = 72.0
        self.spo2 = 97.0
        self.temp = 36.8
        self.finger = True
        self.motion = 0.0
        self.noise = 0.02
        self.pi = 2.0
        self.resp = 15.0
        self.battery_mv = 3900
        self.sys = 120
        self.dia = 80
        self.bp_pulse = 72

    def set(self, **values):
        for name in values:
            value = values[name]
            if name == "finger":
                if value is not True and value is not False:
                    raise ValueError("finger must be true or false")
            elif name in self.RANGES:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError("%s must be a number" % name)
                lo, hi = self.RANGES[name]
                if not lo <= value <= hi:
                    raise ValueError("%s out of range %s..%s" % (name, lo, hi))
            else:
                raise ValueError("unknown signal %s" % name)
        for name in values:
            setattr(self, name, values[name])


def _bump(phase, centre, width):
    d = phase - centre
    d -= math.floor(d + 0.5)  # periodic distance
    return math.exp(-(d / width) * (d / width))


def _raw_pulse(phase):
    # Systolic wave plus a smaller dicrotic wave, as on a fingertip PPG.
    return _bump(phase, 0.18, 0.10) + 0.3 * _bump(phase, 0.52, 0.10)


def _pulse_range():
    values = [_raw_pulse(i / 256.0) for i in range(256)]
    return min(values), max(values)


_PULSE_MIN, _PULSE_MAX = _pulse_range()


def pulse_shape(phase):
    """Arterial blood volume over one cardiac cycle, 0 (end-diastole) .. 1 (systolic peak)."""
    return (_raw_pulse(phase) - _PULSE_MIN) / (_PULSE_MAX - _PULSE_MIN)


class PpgSynth:
    """Red/IR photodiode counts of a MAX3010x on a fingertip, at any increasing time.

    DC is proportional to LED current and inversely to the ADC range. The IR pulse has
    peak-to-peak amplitude pi% of DC; the red one is chosen so that
    (AC_red/DC_red)/(AC_ir/DC_ir) = calibration.ratio_for(spo2): the algorithm's ratio of
    ratios maps back to the requested SpO2 exactly when it measures R without error.
    Light *falls* at systole (more blood absorbs more). Respiration modulates both
    channels by 0.4 %; motion adds an irregular artifact with R = 1 (venous-like);
    no finger leaves only ambient light (a few hundred counts).
    """

    COUNTS_PER_MA_IR = 16000  # at the 4096 nA ADC range, finger on the sensor
    COUNTS_PER_MA_RED = 12500
    FULL_SCALE = (1 << 18) - 1

    def __init__(self, physiology, calibration=MAXIM_RD117, seed=1):
        self.physiology = physiology
        self.calibration = calibration
        self.rng = Rng(seed)
        self.phase = 0.0
        self.time = 0.0
        self.motion = 0.0  # current artifact, relative to DC per unit of motion
        self.motion_target = 0.0
        self.motion_change = 0.0

    def _advance(self, t):
        dt = t - self.time
        if dt <= 0:
            return
        self.phase = (self.phase + dt * self.physiology.hr / 60.0) % 1.0
        self.time = t
        # Motion: jerks towards random positions at random moments (0.2..1 s apart),
        # smoothed by the tissue (time constant 0.12 s) -- broadband and irregular.
        if t >= self.motion_change:
            self.motion_target = self.rng.uniform()
            self.motion_change = t + 0.6 + 0.4 * self.rng.uniform()
        self.motion += (self.motion_target - self.motion) * (1.0 - math.exp(-dt / 0.12))

    def sample(self, t, red_ma, ir_ma, range_na=4096, averaging=1):
        """(red, ir) counts at time t seconds (non-decreasing between calls)."""
        self._advance(t)
        body = self.physiology
        scale = 4096.0 / range_na
        noise_scale = 1.0 / math.sqrt(averaging)
        if not body.finger:
            ambient = 300.0 * scale
            return (
                self._counts(ambient + red_ma * 20 * scale + 30 * self.rng.gauss() * noise_scale),
                self._counts(ambient + ir_ma * 25 * scale + 30 * self.rng.gauss() * noise_scale),
            )
        dc_ir = ir_ma * self.COUNTS_PER_MA_IR * scale
        dc_red = red_ma * self.COUNTS_PER_MA_RED * scale
        relative_ir = body.pi / 100.0 if body.hr > 0 else 0.0
        relative_red = relative_ir * self.calibration.ratio_for(body.spo2)
        pulse = pulse_shape(self.phase)
        breath = 1.0 + 0.004 * math.sin(2 * math.pi * body.resp / 60.0 * t)
        # Motion moves venous blood and tissue: the same relative change on both
        # channels (R = 1), up to 3x the arterial pulse at motion = 1.
        motion = body.motion * 3.0 * (body.pi / 100.0) * self.motion
        noise = body.noise * relative_ir * dc_ir * noise_scale
        ir = dc_ir * (1.0 - relative_ir * pulse + motion) * breath + noise * self.rng.gauss()
        red = dc_red * (1.0 - relative_red * pulse + motion) * breath + noise * self.rng.gauss()
        return self._counts(red), self._counts(ir)

    def _counts(self, value):
        if value < 0:
            return 0
        if value > self.FULL_SCALE:
            return self.FULL_SCALE
        return int(value)


class I2CDevice:
    """A device on the simulated I2C bus. Subclasses implement read_register/write_register.

    Register access auto-increments like most parts; `fault` makes the bus report errors
    the way machine.I2C does (OSError ENODEV for a NACK, ETIMEDOUT for a stuck bus).
    """

    name = "i2c-device"

    def __init__(self, address, clock):
        self.address = address
        self.clock = clock
        self.fault = None
        self.accesses = 0

    def sync(self):
        """Bring the device state up to the clock's now (samples, conversions)."""

    def check_bus(self):
        self.accesses += 1
        if self.fault in ("absent", "nack"):
            raise OSError(errno.ENODEV)
        if self.fault == "timeout":
            raise OSError(errno.ETIMEDOUT)

    def acknowledges(self):
        return self.fault not in ("absent", "nack", "timeout")

    def read(self, register, count):
        self.check_bus()
        self.sync()
        out = bytearray(count)
        for i in range(count):
            out[i] = self.read_register(register) & 0xFF
            register = self.next_register(register)
        return bytes(out)

    def write(self, register, data):
        self.check_bus()
        self.sync()
        for value in data:
            self.write_register(register, value)
            register = self.next_register(register)

    def next_register(self, register):
        return (register + 1) & 0xFF

    def read_register(self, register):
        return 0

    def write_register(self, register, value):
        pass


# MAX30102 register addresses (datasheet register maps and descriptions). Defined here
# independently of firmware/drivers on purpose: the model is the datasheet's side of the
# bus, so a wrong address in a driver fails the tests instead of being shared by both.
INT_STATUS_1 = 0x00
INT_STATUS_2 = 0x01
INT_ENABLE_1 = 0x02
INT_ENABLE_2 = 0x03
FIFO_WR_PTR = 0x04
OVF_COUNTER = 0x05
FIFO_RD_PTR = 0x06
FIFO_DATA = 0x07
FIFO_CONFIG = 0x08
MODE_CONFIG = 0x09
SPO2_CONFIG = 0x0A
LED1_PA = 0x0C  # red
LED2_PA = 0x0D  # IR
MULTI_LED_1 = 0x11
MULTI_LED_2 = 0x12
DIE_TEMP_INT = 0x1F
DIE_TEMP_FRAC = 0x20
DIE_TEMP_CONFIG = 0x21
REVISION_ID = 0xFE
PART_ID = 0xFF

MAX30102_PART_ID = 0x15
FIFO_DEPTH = 32
SAMPLE_RATES = (50, 100, 200, 400, 800, 1000, 1600, 3200)  # SPO2_SR code -> samples/s
AVERAGING = (1, 2, 4, 8, 16, 32, 32, 32)  # SMP_AVE code -> samples averaged
ADC_RANGES = (2048, 4096, 8192, 16384)  # SPO2_ADC_RGE code -> full scale nA
RESOLUTION_BITS = (15, 16, 17, 18)  # LED_PW code -> ADC bits (69/118/215/411 us)
WRITABLE = (INT_ENABLE_1, INT_ENABLE_2, FIFO_WR_PTR, OVF_COUNTER, FIFO_RD_PTR, FIFO_CONFIG,
            MODE_CONFIG, SPO2_CONFIG, LED1_PA, LED2_PA, 0x0E, 0x10, MULTI_LED_1, MULTI_LED_2,
            DIE_TEMP_CONFIG)


class Max30102Model(I2CDevice):
    """MAX30102 at register level, synthesising PPG samples as the clock advances."""

    name = "max30102"

    def __init__(self, clock, physiology, address=0x57, revision=0x03, seed=1):
        I2CDevice.__init__(self, address, clock)
        self.physiology = physiology
        self.revision = revision
        self.synth = PpgSynth(physiology, seed=seed)
        self.power_on()

    def power_on(self):
        """Power-on reset: registers to defaults and PWR_RDY set (datasheet: power-up)."""
        self._reset_registers()
        self.status1 = 0x01  # PWR_RDY

    def _reset_registers(self):
        self.regs = bytearray(256)
        self.regs[REVISION_ID] = self.revision
        self.regs[PART_ID] = MAX30102_PART_ID
        self.status1 = 0
        self.status2 = 0
        self.fifo = [None] * FIFO_DEPTH  # each slot: tuple of channel values
        self.count = 0  # occupancy: the part's internal full/empty state
        self._restart_sampling()

    def _restart_sampling(self):
        self.epoch_us = self.clock.monotonic_ms() * 1000
        self.produced = 0  # samples due since epoch_us that have been processed

    # --- configuration decoded from the registers ---------------------------------------
    def channels(self):
        mode = self.regs[MODE_CONFIG] & 0x07
        if self.regs[MODE_CONFIG] & 0x80:  # SHDN
            return 0
        if mode == 0x02:  # heart rate mode: red only
            return 1
        if mode == 0x03:  # SpO2 mode: red + IR
            return 2
        if mode == 0x07:  # multi-LED: count enabled slots
            slots = (self.regs[MULTI_LED_1] & 0x07, (self.regs[MULTI_LED_1] >> 4) & 0x07,
                     self.regs[MULTI_LED_2] & 0x07, (self.regs[MULTI_LED_2] >> 4) & 0x07)
            count = 0
            for slot in slots:
                if slot == 0:
                    break
                count += 1
            return count
        return 0

    def sample_rate(self):
        return SAMPLE_RATES[(self.regs[SPO2_CONFIG] >> 2) & 0x07]

    def averaging(self):
        return AVERAGING[(self.regs[FIFO_CONFIG] >> 5) & 0x07]

    def fifo_count(self):
        return self.count

    # --- sample production ----------------------------------------------------------
    def sync(self):
        channels = self.channels()
        if channels == 0 or self.fault == "stuck":
            self._restart_sampling()
            return
        now_us = self.clock.monotonic_ms() * 1000
        rate = self.sample_rate()
        averaging = self.averaging()
        due = (now_us - self.epoch_us) * rate // (1000000 * averaging)
        if due <= self.produced:
            return
        rollover = self.regs[FIFO_CONFIG] & 0x10
        first = self.produced
        if rollover and due - first > FIFO_DEPTH:  # only the newest 32 survive a rollover
            self.regs[OVF_COUNTER] = min(0x1F, self.regs[OVF_COUNTER] + due - first - FIFO_DEPTH)
            first = due - FIFO_DEPTH
        for k in range(first, due):
            if self.count == FIFO_DEPTH and not rollover:
                # Full: new samples are lost and counted (OVF_COUNTER saturates at 0x1F).
                self.regs[OVF_COUNTER] = min(0x1F, self.regs[OVF_COUNTER] + due - k)
                break
            t = (self.epoch_us + k * 1000000 * averaging // rate) / 1000000.0
            self._push(self._measure(t, channels))
        self.produced = due
        if self.produced > 1000000:  # keep the arithmetic small over long runs
            self._restart_sampling()

    def _push(self, sample):
        wr = self.regs[FIFO_WR_PTR]
        self.fifo[wr] = sample
        self.regs[FIFO_WR_PTR] = (wr + 1) % FIFO_DEPTH
        if self.count == FIFO_DEPTH:  # rollover: the oldest sample is overwritten
            self.regs[OVF_COUNTER] = min(0x1F, self.regs[OVF_COUNTER] + 1)
        else:
            self.count += 1
        self.status1 |= 0x40  # PPG_RDY
        if self.count >= FIFO_DEPTH - (self.regs[FIFO_CONFIG] & 0x0F):
            self.status1 |= 0x80  # A_FULL

    def _measure(self, t, channels):
        spo2 = self.regs[SPO2_CONFIG]
        range_na = ADC_RANGES[(spo2 >> 5) & 0x03]
        bits = RESOLUTION_BITS[spo2 & 0x03]
        red_ma = self.regs[LED1_PA] * 0.2
        ir_ma = self.regs[LED2_PA] * 0.2
        red, ir = self.synth.sample(t, red_ma, ir_ma, range_na, self.averaging())
        mask = ((1 << bits) - 1) << (18 - bits)  # left-justified: low bits read as zero
        values = (red & mask, ir & mask)
        return values[:channels] if channels <= 2 else values + (0,) * (channels - 2)

    # --- register interface ---------------------------------------------------------
    def read(self, register, count):
        self.check_bus()
        self.sync()
        out = bytearray(count)
        i = 0
        while i < count:
            if register == FIFO_DATA:
                chunk = self._pop_bytes(count - i)
                out[i:i + len(chunk)] = chunk
                i += len(chunk)
                continue  # the register address does not increment on FIFO_DATA
            out[i] = self.read_register(register)
            register = self.next_register(register)
            i += 1
        return bytes(out)

    def _pop_bytes(self, count):
        """Burst read of FIFO_DATA: whole samples from RD_PTR (the part does not check
        that they were ever written -- reading past WR_PTR returns stale memory)."""
        channels = max(1, self.channels())
        out = bytearray()
        while len(out) < count:
            rd = self.regs[FIFO_RD_PTR]
            sample = self.fifo[rd] or (0,) * channels
            for value in sample[:channels]:
                out.append((value >> 16) & 0x03)
                out.append((value >> 8) & 0xFF)
                out.append(value & 0xFF)
            # The read pointer advances once the first byte of a sample is read.
            self.regs[FIFO_RD_PTR] = (rd + 1) % FIFO_DEPTH
            self.regs[OVF_COUNTER] = 0
            if self.count:
                self.count -= 1
        self.status1 &= ~0xC0 & 0xFF  # reading the FIFO clears A_FULL and PPG_RDY
        return out[:count]

    def read_register(self, register):
        if register == INT_STATUS_1:
            value = self.status1
            self.status1 = 0
            return value
        if register == INT_STATUS_2:
            value = self.status2
            self.status2 = 0
            return value
        if register == DIE_TEMP_INT:
            return int(self.physiology.temp - 3) & 0xFF  # the die runs a little cooler
        return self.regs[register]

    def write_register(self, register, value):
        if register not in WRITABLE:
            return  # read-only registers ignore writes
        if register == MODE_CONFIG and value & 0x40:  # RESET: all registers to POR state
            self._reset_registers()
            return
        old_rate = (self.regs[SPO2_CONFIG], self.regs[FIFO_CONFIG] & 0xE0, self.channels())
        if register in (FIFO_WR_PTR, OVF_COUNTER, FIFO_RD_PTR):
            value &= 0x1F
            if register != OVF_COUNTER:
                value %= FIFO_DEPTH
        self.regs[register] = value
        if register in (FIFO_WR_PTR, FIFO_RD_PTR):
            # Moving a pointer redefines occupancy (equal pointers read as empty).
            self.count = (self.regs[FIFO_WR_PTR] - self.regs[FIFO_RD_PTR]) % FIFO_DEPTH
        if register == DIE_TEMP_CONFIG and value & 0x01:
            self.regs[DIE_TEMP_CONFIG] = 0  # conversion done at once; TEMP_EN self-clears
            self.status2 |= 0x02  # DIE_TEMP_RDY
        new_rate = (self.regs[SPO2_CONFIG], self.regs[FIFO_CONFIG] & 0xE0, self.channels())
        if new_rate != old_rate:
            self._restart_sampling()


# MAX30205 registers (datasheet Table 2 / register descriptions)
TEMPERATURE = 0x00
CONFIGURATION = 0x01
T_HYST = 0x02
T_OS = 0x03
CONFIG_SHUTDOWN = 0x01
CONFIG_EXTENDED = 0x20
CONFIG_ONE_SHOT = 0x80
CONVERSION_MS = 44  # typical conversion time; 50 ms maximum


class Max30205Model(I2CDevice):
    """MAX30205: two's complement temperature, 1 LSB = 1/256 degC, MSB first."""

    name = "max30205"

    def __init__(self, clock, physiology, address=0x48, seed=2):
        I2CDevice.__init__(self, address, clock)
        self.physiology = physiology
        self.rng = Rng(seed)
        self.power_on()

    def power_on(self):
        self.config = 0x00
        self.thyst = 0x4B00  # 75 degC
        self.tos = 0x5000  # 80 degC
        self.temperature = 0
        self.pointer = TEMPERATURE
        self.ready_ms = self.clock.monotonic_ms() + CONVERSION_MS  # first conversion
        self.pending = True

    def _convert(self):
        celsius = self.physiology.temp + 0.01 * self.rng.gauss()
        if self.config & CONFIG_EXTENDED:
            celsius -= 64.0
        raw = int(celsius * 256 + (0.5 if celsius >= 0 else -0.5))
        self.temperature = raw & 0xFFFF

    def sync(self):
        if self.fault == "stuck":
            return
        now = self.clock.monotonic_ms()
        continuous = not self.config & CONFIG_SHUTDOWN
        if self.pending and now >= self.ready_ms:
            self._convert()
            self.pending = False
            self.config &= ~CONFIG_ONE_SHOT & 0xFF
        if continuous and not self.pending:
            self.pending = True
            self.ready_ms = now + CONVERSION_MS

    def read(self, register, count):
        self.check_bus()
        self.sync()
        self.pointer = register & 0x03
        if self.fault == "garbage":
            return b"\xff" * count
        if self.pointer == CONFIGURATION:
            word = bytes((self.config, self.config))
        else:
            value = (self.temperature, 0, self.thyst, self.tos)[self.pointer]
            word = bytes(((value >> 8) & 0xFF, value & 0xFF))
        # Reading past the register repeats it (LM75-style pointer, no auto-increment).
        return (word * (count // 2 + 1))[:count]

    def write(self, register, data):
        self.check_bus()
        self.sync()
        self.pointer = register & 0x03
        if not data:
            return
        if self.pointer == CONFIGURATION:
            one_shot = data[0] & CONFIG_ONE_SHOT
            self.config = data[0] & 0xFF
            if one_shot and self.config & CONFIG_SHUTDOWN and not self.pending:
                self.pending = True
                self.ready_ms = self.clock.monotonic_ms() + CONVERSION_MS
        elif len(data) >= 2 and self.pointer == T_HYST:
            self.thyst = (data[0] << 8) | data[1]
        elif len(data) >= 2 and self.pointer == T_OS:
            self.tos = (data[0] << 8) | data[1]


class SimUart:
    """The MCU side of a simulated UART: read(n) -> bytes or None, write(b), any().

    The receive buffer is bounded like the ESP32 driver's ring buffer; bytes arriving when
    it is full are lost (and counted), which is what a slow reader sees on hardware.
    """

    def __init__(self, rx_capacity=256):
        self.rx = bytearray()
        self.rx_capacity = rx_capacity
        self.dropped = 0
        self.tx = bytearray()
        self.device = None
        self.baudrate = 9600

    def deliver(self, data):
        room = self.rx_capacity - len(self.rx)
        if room < len(data):
            self.dropped += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        self.rx.extend(data)

    def _pump(self):
        if self.device is not None:
            self.device.service()

    def any(self):
        self._pump()
        return len(self.rx)

    def read(self, count=-1):
        self._pump()
        if not self.rx:
            return None
        if count is None or count < 0 or count > len(self.rx):
            count = len(self.rx)
        data = bytes(self.rx[:count])
        self.rx[:] = self.rx[count:]
        return data

    def write(self, data):
        self.tx.extend(data)
        if self.device is not None:
            self.device.received(bytes(data))
        return len(data)


class BpModuleModel:
    """Sunrom 1437 wrist blood-pressure module: transmit-only, 9600 8N1, one 15-byte line
    per measurement. `lead` is the byte before the digits (see bp_uart.py)."""

    name = "bp"
    BAUDRATE = 9600

    def __init__(self, uart, physiology, lead=b"\r", seed=3):
        self.uart = uart
        uart.device = self
        self.physiology = physiology
        self.lead = lead
        self.fault = None
        self.rng = Rng(seed)
        self.sent = 0

    @staticmethod
    def frame(sys, dia, pulse, lead=b"\r"):
        return lead + b"%03d, %03d, %03d\n" % (sys, dia, pulse)

    def measure(self, sys=None, dia=None, pulse=None):
        """The cuff finished a measurement: send it (values default to the physiology)."""
        body = self.physiology
        sys = body.sys if sys is None else sys
        dia = body.dia if dia is None else dia
        pulse = body.bp_pulse if pulse is None else pulse
        if self.fault == "absent":
            return
        if self.fault == "garbage":
            self.inject_garbage(self.noise(24))
        frame = self.frame(int(sys), int(dia), int(pulse), self.lead)
        if self.uart.baudrate != self.BAUDRATE:
            frame = self.noise(len(frame))  # a receiver at the wrong rate sees noise
        self.uart.deliver(frame)
        self.sent += 1

    def noise(self, count):
        return bytes(self.rng.next32() & 0xFF for _ in range(count))

    def inject_garbage(self, data):
        self.uart.deliver(data)

    def service(self):
        pass

    def received(self, data):
        pass  # the module has no receive line
