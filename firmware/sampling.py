"""Sampling on asyncio: one task per sensor at its own rate, each quantity through its
filter chain, failures reported and retried, never stopping the other sensors.

    Sampler(hal, config, emit, event, live=None)
        emit(records, critical)   a batch of SenML records (protocol.senml.make_record,
                                  without seqs: the sealer numbers them) from one sensor
                                  step; critical when a record holds a local critical value
        event(name, details)      a device event (sensor-fault, sensor-recovered,
                                  sensor-off, sensor-on, battery-low, battery-ok)
        live(quantity, value)     every valid value before throttling (the BLE standard
                                  services show live readings); optional
    sampler.tasks() -> coroutines to run; sampler.stop() ends them at their next step.

Sensors (firmware/drivers): MAX30102 -> pr, spo2, pi, sq (the PulseOximeter window is
estimated every estimate_ms; a reading always travels with its signal quality "sq");
MAX30205 -> temp; Sunrom BP module -> sys, dia, pr (one batch per cuff measurement);
battery (hal.battery_mv) -> bat. Finger-off is not a number: it is reported as the
event "sensor-off" (cause finger-off) when the finger leaves and "sensor-on" when it is
back, and sq = 0 records while it is off -- the gateway treats the sensor as off.

A SensorError (or any other exception in one sensor's code) is reported as a
sensor-fault event and the sensor is re-initialised after a backoff (retry.min_ms,
doubling to retry.max_ms); reports are sent for attempt 1, 2, 4, 8, ... so a dead sensor
does not flood the bounded event queue. SimulatedReset and other BaseExceptions pass
through: like on the chip, a reset stops everything.

Local critical values (config "critical": value <= low or >= high) make their batch
critical and let the value through the throttle at once; so does the return to normal.
"""

from firmware.algorithms.spo2 import STATUS_NO_FINGER, STATUS_OK, PulseOximeter
from firmware.drivers import SensorAbsent, SensorError
from firmware.drivers.bp_uart import BAUDRATE as BP_BAUDRATE
from firmware.drivers.bp_uart import BpModule
from firmware.drivers.max30102 import Max30102
from firmware.drivers.max30205 import CONVERSION_MS, Max30205
from firmware.filters import build_chain
from protocol import senml, vitals
from protocol.errors import ValidationError

# Wire resolution per quantity (protocol.vitals): values are rounded to it before sealing.
_DECIMALS = {"pi": 2, "temp": 1}


def is_critical(quantity, value, bounds):
    """True when `value` is at or beyond a configured critical bound for `quantity`."""
    limits = bounds.get(quantity)
    if limits is None or value is None:
        return False
    low = limits.get("low")
    high = limits.get("high")
    return (low is not None and value <= low) or (high is not None and value >= high)


def battery_percent(mv, empty_mv, full_mv):
    """Linear map of the cell voltage to 0..100 % (a Li-ion discharge curve is flat in the
    middle, so this is a coarse gauge: enough for a low-battery warning)."""
    if mv <= empty_mv:
        return 0
    if mv >= full_mv:
        return 100
    return (mv - empty_mv) * 100 // (full_mv - empty_mv)


def _round(quantity, value):
    digits = _DECIMALS.get(quantity)
    if digits is None:
        return int(value + 0.5) if value >= 0 else -int(-value + 0.5)
    return round(value, digits)


def _report_attempt(attempt):
    return attempt & (attempt - 1) == 0  # 1, 2, 4, 8, ...


class Quantities:
    """The filter chains of one sensor and the turning of values into records."""

    def __init__(self, filters, bounds):
        self.chains = {}
        for quantity in filters:
            self.chains[quantity] = build_chain(filters[quantity])
        self.bounds = bounds
        self.critical = {}  # quantity -> the last emitted value was critical

    def reset(self):
        for quantity in self.chains:
            self.chains[quantity].reset()

    def push(self, quantity, value, t, force=False):
        """Filter `value` -> (record, critical) or None when the chain holds it back."""
        try:
            vitals.check_value(quantity, value)
        except ValidationError:
            return None  # impossible for a body or a sensor: never sealed
        was = self.critical.get(quantity, False)
        urgent = force or was or is_critical(quantity, value, self.bounds)
        out = self.chains[quantity].push(value, t, urgent)
        if out is None:
            return None
        out = _round(quantity, out)
        try:
            vitals.check_value(quantity, out)
        except ValidationError:
            return None
        critical = is_critical(quantity, out, self.bounds)
        self.critical[quantity] = critical
        return senml.make_record(quantity, out, time=t), critical


class Batch:
    """Records collected during one sensor step."""

    def __init__(self):
        self.records = []
        self.critical = False

    def add(self, result):
        if result is not None:
            self.records.append(result[0])
            self.critical = self.critical or result[1]
            return True
        return False


class Oximeter:
    """MAX30102 + PulseOximeter: pr, spo2, pi, sq."""

    name = "max30102"

    def __init__(self, hal, cfg, bounds):
        self.hal = hal
        self.driver = Max30102(hal.i2c(), hal, sample_rate=cfg["sample_rate"],
                               averaging=cfg["averaging"], red_ma=cfg["led_ma"],
                               ir_ma=cfg["led_ma"])
        self.oximeter = PulseOximeter(self.driver.output_rate, cfg["window_s"])
        self.poll_ms = cfg["poll_ms"]
        self.estimate_ms = cfg["estimate_ms"]
        self.quantities = Quantities(cfg["filters"], bounds)
        self.finger = None
        self._since_estimate = 0
        self.estimates = 0

    def start(self):
        self.driver.start()
        self.oximeter.reset()
        self.quantities.reset()
        self._since_estimate = 0

    async def step(self, sampler):
        await self.hal.asleep_ms(self.poll_ms)
        batch = self.driver.read_fifo()
        if len(batch) or batch.gap:
            self.oximeter.add(batch.red, batch.ir, discontinuity=batch.gap)
        self._since_estimate += self.poll_ms
        if self._since_estimate < self.estimate_ms:
            return
        self._since_estimate = 0
        estimate = self.oximeter.estimate()
        self.estimates += 1
        t = self.hal.time()
        out = Batch()
        finger = estimate.status != STATUS_NO_FINGER
        changed = finger != self.finger
        if changed:
            if self.finger is not None or not finger:
                sampler.report("sensor-on" if finger else "sensor-off", {
                    "sensor": self.name, "cause": "finger-on" if finger else "finger-off"})
            self.finger = finger
            self.quantities.reset()
        q = self.quantities
        if estimate.status == STATUS_OK:
            if estimate.hr is not None:
                sampler.live("pr", estimate.hr)
                out.add(q.push("pr", estimate.hr, t))
            if estimate.spo2 is not None:
                sampler.live("spo2", estimate.spo2)
                out.add(q.push("spo2", estimate.spo2, t))
            if estimate.pi is not None:
                sampler.live("pi", estimate.pi)
                out.add(q.push("pi", estimate.pi, t))
        # A reading always travels with the quality of its window; without a reading the
        # quality (0 with no finger) follows its own throttle, forced on a finger change.
        out.add(q.push("sq", estimate.quality, t, force=changed or bool(out.records)))
        if out.records:
            sampler.emit(out.records, out.critical)


class Thermometer:
    """MAX30205: temp."""

    name = "max30205"

    def __init__(self, hal, cfg, bounds):
        self.hal = hal
        self.driver = Max30205(hal.i2c(), hal)
        self.interval_ms = cfg["interval_ms"]
        self.quantities = Quantities(cfg["filters"], bounds)

    def start(self):
        self.driver.start()
        self.quantities.reset()

    async def step(self, sampler):
        celsius = await self.driver.ameasure()
        sampler.live("temp", celsius)
        out = Batch()
        out.add(self.quantities.push("temp", celsius, self.hal.time()))
        if out.records:
            sampler.emit(out.records, out.critical)
        await self.hal.asleep_ms(max(0, self.interval_ms - CONVERSION_MS))


class BloodPressure:
    """Sunrom 1437 cuff on a UART: sys, dia, pr per measurement (spot values, so the
    default chains only check plausibility)."""

    name = "bp"

    def __init__(self, hal, cfg, bounds):
        self.hal = hal
        self.driver = BpModule(hal.uart(cfg["port"], BP_BAUDRATE), hal)
        self.poll_ms = cfg["poll_ms"]
        self.quantities = Quantities(cfg["filters"], bounds)

    def start(self):
        self.driver.buffer = b""
        self.quantities.reset()

    async def step(self, sampler):
        await self.hal.asleep_ms(self.poll_ms)
        for reading in self.driver.poll():
            t = self.hal.time()
            out = Batch()
            q = self.quantities
            out.add(q.push("sys", reading.sys, t))
            out.add(q.push("dia", reading.dia, t))
            if reading.pulse is not None:
                out.add(q.push("pr", reading.pulse, t))
            if out.records:
                sampler.emit(out.records, out.critical)


class Battery:
    """hal.battery_mv() -> bat (%), with battery-low / battery-ok events (hysteresis)."""

    name = "battery"

    def __init__(self, hal, cfg, bounds):
        self.hal = hal
        self.cfg = cfg
        self.quantities = Quantities(cfg["filters"], bounds)
        self.low = False
        self.percent = None
        self.mv = None

    def start(self):
        self.quantities.reset()

    async def step(self, sampler):
        cfg = self.cfg
        self.mv = self.hal.battery_mv()
        self.percent = battery_percent(self.mv, cfg["empty_mv"], cfg["full_mv"])
        changed = False
        if not self.low and self.percent <= cfg["low_percent"]:
            self.low = changed = True
            sampler.report("battery-low", {"percent": self.percent, "mv": self.mv})
        elif self.low and self.percent >= cfg["low_percent"] + cfg["hysteresis"]:
            self.low = False
            changed = True
            sampler.report("battery-ok", {"percent": self.percent, "mv": self.mv})
        out = Batch()
        out.add(self.quantities.push("bat", self.percent, self.hal.time(), force=changed))
        if out.records:
            sampler.emit(out.records, False)
        await self.hal.asleep_ms(cfg["interval_ms"])


class Sampler:
    """All enabled sensors of a configuration (see the module docstring)."""

    def __init__(self, hal, config, emit, event, live=None, beat=None):
        self.hal = hal
        self._emit = emit
        self._event = event
        self._live = live
        self._beat = beat
        self.retry_min = config["retry"]["min_ms"]
        self.retry_max = config["retry"]["max_ms"]
        self.running = True
        self.failing = {}  # sensor name -> attempts since it last worked
        self.batches = 0
        bounds = config["critical"]
        sensors = config["sensors"]
        self.sensors = []
        if sensors["max30102"]["enabled"]:
            self.sensors.append(Oximeter(hal, sensors["max30102"], bounds))
        if sensors["max30205"]["enabled"]:
            self.sensors.append(Thermometer(hal, sensors["max30205"], bounds))
        if sensors["bp"]["enabled"]:
            self.sensors.append(BloodPressure(hal, sensors["bp"], bounds))
        if config["battery"]["enabled"]:
            self.sensors.append(Battery(hal, config["battery"], bounds))

    def sensor(self, name):
        for sensor in self.sensors:
            if sensor.name == name:
                return sensor
        return None

    def allowance_ms(self):
        """Longest a healthy sensor task may go without a beat (for robust.Liveness)."""
        longest = self.retry_max
        for sensor in self.sensors:
            longest = max(longest, getattr(sensor, "interval_ms", 0),
                          getattr(sensor, "poll_ms", 0))
        return longest + 5000

    # ------------------------------------------------------------ outputs

    def emit(self, records, critical):
        self.batches += 1
        self._emit(records, critical)

    def report(self, name, details):
        self._event(name, details)

    def live(self, quantity, value):
        if self._live is not None:
            self._live(quantity, value)

    # ------------------------------------------------------------ tasks

    def tasks(self):
        return [self.supervise(sensor) for sensor in self.sensors]

    def stop(self):
        self.running = False

    async def supervise(self, sensor):
        """Run one sensor forever: start, step, and on failure report, back off, retry."""
        delay = self.retry_min
        while self.running:
            try:
                sensor.start()
                attempts = self.failing.pop(sensor.name, 0)
                if attempts:
                    self.report("sensor-recovered", {"sensor": sensor.name,
                                                     "attempts": attempts})
                delay = self.retry_min
                while self.running:
                    await sensor.step(self)
                    self._beat_now(sensor)
            except SensorError as exc:
                self._failed(sensor, "absent" if isinstance(exc, SensorAbsent) else "fault",
                             exc.reason, delay)
            except Exception as exc:  # a bug in one sensor's path must not stop the others
                self._failed(sensor, "error", "%s: %s" % (type(exc).__name__, exc), delay)
            if not self.running:
                break
            await self._backoff(sensor, delay)
            delay = min(delay * 2, self.retry_max)

    async def _backoff(self, sensor, delay):
        # In slices, so the liveness check sees a waiting task, not a dead one.
        while delay > 0 and self.running:
            step = min(delay, 1000)
            await self.hal.asleep_ms(step)
            delay -= step
            self._beat_now(sensor)

    def _beat_now(self, sensor):
        if self._beat is not None:
            self._beat("sensor:" + sensor.name)

    def _failed(self, sensor, kind, reason, delay):
        attempt = self.failing.get(sensor.name, 0) + 1
        self.failing[sensor.name] = attempt
        if _report_attempt(attempt):
            self.report("sensor-fault", {"sensor": sensor.name, "kind": kind,
                                         "reason": str(reason)[:100], "attempt": attempt,
                                         "retry_ms": delay})
