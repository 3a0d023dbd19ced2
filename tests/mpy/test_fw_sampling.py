# Sampling on the MicroPython unix port with the simulated board and virtual time: each
# sensor's readings come out as SenML records through its filter chain, signal quality
# travels with every oximeter reading, finger-off is reported, a failing sensor is
# reported and retried with backoff while the others keep sampling, local critical values
# mark their batch critical, battery low/ok events have hysteresis, and the bounded
# queues hold their bounds.
# Run: micropython -X heapsize=8M tests/mpy/run.py test_fw_sampling
import asyncio

from firmware import config as fw_config
from firmware.filters import build_chain
from firmware.hal.sim import SimHal
from firmware.robust import BoundedQueue
from firmware.sampling import Sampler, battery_percent, is_critical
from protocol import senml

FLASH = "/tmp/vb-mpy-fw-sampling/flash"


class Recorder:
    """The sampler's outputs: batches (records, critical, virtual time) and events."""

    def __init__(self, hal):
        self.hal = hal
        self.batches = []
        self.events = []
        self.live = []

    def emit(self, records, critical):
        self.batches.append((records, critical, self.hal.clock.monotonic_ms()))

    def event(self, name, details):
        self.events.append((name, details, self.hal.clock.monotonic_ms()))

    def on_live(self, quantity, value):
        self.live.append((quantity, value, self.hal.clock.monotonic_ms()))

    def records(self, quantity=None):
        out = []
        for records, _, _ in self.batches:
            for record in records:
                if quantity is None or record[senml.N] == quantity:
                    out.append(record)
        return out

    def names(self):
        return [name for name, _, _ in self.events]


def make_config(**sections):
    overrides = {"transports": [{"kind": "uart"}]}
    for key in sections:
        overrides[key] = sections[key]
    return fw_config.load(overrides, None)


def run_for(hal, sampler, seconds, during=None):
    """Run the sampler tasks for `seconds` of virtual time; `during(hal)` may act at
    (t, action) points: a list of (seconds, callable)."""
    async def main():
        tasks = [asyncio.create_task(c) for c in sampler.tasks()]
        elapsed = 0
        for at, action in sorted(during or [], key=lambda p: p[0]):
            await hal.asleep_ms(int((at - elapsed) * 1000))
            elapsed = at
            action()
        await hal.asleep_ms(int((seconds - elapsed) * 1000))
        sampler.stop()
        for task in tasks:
            task.cancel()
        await hal.asleep_ms(0)

    asyncio.run(main())


def sampler_with(hal, config):
    rec = Recorder(hal)
    return Sampler(hal, config, rec.emit, rec.event, rec.on_live), rec


def test_every_sensor_yields_records_with_quality():
    hal = SimHal(flash_dir=FLASH, seed=3)
    hal.physiology.set(hr=75, spo2=96, temp=36.9, noise=0.01)
    sampler, rec = sampler_with(hal, make_config())
    run_for(hal, sampler, 12, [(6, lambda: hal.devices["bp"].measure(131, 84, 70))])
    pr = rec.records("pr")
    spo2 = rec.records("spo2")
    assert pr and spo2, rec.batches
    assert abs(pr[0][senml.V] - 75) <= 2 and abs(spo2[0][senml.V] - 96) <= 2
    # Every oximeter batch holding pr or spo2 carries the signal quality of its window.
    for records, _, _ in rec.batches:
        names = [r[senml.N] for r in records]
        if "spo2" in names or names[0] == "pr":
            assert "sq" in names, names
            sq = [r[senml.V] for r in records if r[senml.N] == "sq"][0]
            assert 50 <= sq <= 100
    temp = rec.records("temp")
    assert temp and abs(temp[0][senml.V] - 36.9) < 0.2 and isinstance(temp[0][senml.V], float)
    bp = [r for r in rec.batches if r[0][0][senml.N] == "sys"]
    assert len(bp) == 1 and [(r[senml.N], r[senml.V]) for r in bp[0][0]] == [
        ("sys", 131), ("dia", 84), ("pr", 70)]
    bat = rec.records("bat")
    assert bat and bat[0][senml.V] == battery_percent(3900, 3300, 4150)
    for record in rec.records():
        numbered = dict(record)
        numbered[senml.SEQ] = 1
        senml.validate_record(numbered)  # sealable as they are
        assert record[senml.T] >= 1767225600  # absolute times, set from the HAL clock
    assert 75 in [int(v + 0.5) for q, v, _ in rec.live if q == "pr"]
    assert rec.events == []


def test_throttle_and_heartbeat_limit_a_steady_value():
    hal = SimHal(flash_dir=FLASH, seed=4)
    config = make_config(sensors={"max30205": {"interval_ms": 2000},
                                  "max30102": {"enabled": False}, "bp": {"enabled": False}},
                         battery={"enabled": False})
    sampler, rec = sampler_with(hal, config)
    run_for(hal, sampler, 400)
    times = [r[senml.T] for r in rec.records("temp")]
    # Steady 36.8: the first value, then one heartbeat every 300 s (not one per 2 s).
    assert len(times) == 2 and times[1] - times[0] == 300, times


def test_finger_off_is_reported_and_quality_drops_to_zero():
    hal = SimHal(flash_dir=FLASH, seed=5)
    config = make_config(sensors={"max30205": {"enabled": False}, "bp": {"enabled": False}},
                         battery={"enabled": False})
    sampler, rec = sampler_with(hal, config)
    run_for(hal, sampler, 30, [(10, lambda: hal.physiology.set(finger=False)),
                               (20, lambda: hal.physiology.set(finger=True))])
    names = rec.names()
    assert names == ["sensor-off", "sensor-on"], names
    off_at = rec.events[0][2]
    assert 10000 <= off_at <= 12000 and rec.events[0][1]["cause"] == "finger-off"
    during = [r for r, _, t in rec.batches if off_at <= t < rec.events[1][2]]
    flat = [rec_ for b in during for rec_ in b]
    assert flat and [r[senml.N] for r in flat] == ["sq"] and flat[0][senml.V] == 0
    # Readings come back after the finger is replaced (window refilled).
    after = [t for records, _, t in rec.batches if t > rec.events[1][2]
             and "pr" in [r[senml.N] for r in records]]
    assert after, rec.batches[-3:]


def test_failing_sensor_is_reported_retried_and_never_stops_the_others():
    hal = SimHal(flash_dir=FLASH, seed=6)
    config = make_config(sensors={"max30205": {"interval_ms": 1000}, "bp": {"enabled": False}},
                         retry={"min_ms": 1000, "max_ms": 8000}, battery={"enabled": False})
    sampler, rec = sampler_with(hal, config)
    hal.inject_fault("max30205", "nack")
    run_for(hal, sampler, 60, [(40, lambda: hal.inject_fault("max30205", None))])
    faults = [d for n, d, _ in rec.events if n == "sensor-fault"]
    # Retries at 0, 1, 3, 7, 15, 23, 31, 39 s (backoff 1, 2, 4, 8, 8... s): attempts 1, 2,
    # 4 and 8 are reported, not every retry.
    assert [d["attempt"] for d in faults] == [1, 2, 4, 8], faults
    assert faults[0]["sensor"] == "max30205" and faults[0]["kind"] == "absent"
    assert [d["retry_ms"] for d in faults] == [1000, 2000, 8000, 8000]
    recovered = [(d, t) for n, d, t in rec.events if n == "sensor-recovered"]
    assert len(recovered) == 1 and recovered[0][1] >= 40000
    assert recovered[0][0]["attempts"] >= 5
    # The oximeter kept estimating the whole time (one live value per second).
    pr_times = [t for q, _, t in rec.live if q == "pr"]
    assert len(pr_times) >= 50 and pr_times[0] < 4000 and pr_times[-1] > 58000
    assert rec.records("temp"), "temperature resumed after the fault cleared"
    assert "max30205" not in sampler.failing


def test_a_bug_in_one_sensor_is_contained():
    hal = SimHal(flash_dir=FLASH, seed=8)
    config = make_config(sensors={"bp": {"enabled": False}, "max30102": {"enabled": False}},
                         battery={"interval_ms": 1000})
    sampler, rec = sampler_with(hal, config)
    thermometer = sampler.sensor("max30205")

    def broken(*args):
        raise TypeError("a bug")
    thermometer.driver.start_conversion = broken
    run_for(hal, sampler, 10)
    faults = [d for n, d, _ in rec.events if n == "sensor-fault"]
    assert faults and faults[0]["kind"] == "error" and "TypeError" in faults[0]["reason"]
    assert rec.records("bat")


def test_local_critical_values_mark_the_batch_and_pass_the_throttle():
    hal = SimHal(flash_dir=FLASH, seed=9)
    hal.physiology.set(spo2=97, noise=0.0)
    config = make_config(sensors={"max30205": {"enabled": False}, "bp": {"enabled": False}},
                         battery={"enabled": False})
    sampler, rec = sampler_with(hal, config)
    run_for(hal, sampler, 40, [(12, lambda: hal.physiology.set(spo2=86)),
                               (28, lambda: hal.physiology.set(spo2=97))])
    spo2 = [(r[senml.V], crit, t) for records, crit, t in rec.batches for r in records
            if r[senml.N] == "spo2"]
    critical = [s for s in spo2 if s[1]]
    assert critical and all(v <= 91 for v, _, _ in critical), spo2
    # While critical every estimate passes the 5 s throttle (one per second).
    gaps = [critical[i][2] - critical[i - 1][2] for i in range(1, len(critical))]
    assert gaps and max(gaps) <= 1000, gaps
    # The return to normal is reported at once too, as a non-critical batch.
    last_critical = critical[-1][2]
    after = [s for s in spo2 if s[2] > last_critical]
    assert after and not after[0][1] and after[0][2] - last_critical <= 1000


def test_battery_low_and_ok_with_hysteresis():
    hal = SimHal(flash_dir=FLASH, seed=10)
    config = make_config(sensors={"max30102": {"enabled": False}, "max30205": {"enabled": False},
                                  "bp": {"enabled": False}},
                         battery={"interval_ms": 1000, "low_percent": 20, "hysteresis": 5})
    sampler, rec = sampler_with(hal, config)
    # 20 % of 3300..4150 is 3470 mV; 24 % (below low + hysteresis) is 3504 mV.
    steps = [(3, lambda: hal.physiology.set(battery_mv=3460)),
             (6, lambda: hal.physiology.set(battery_mv=3504)),
             (9, lambda: hal.physiology.set(battery_mv=3460)),
             (12, lambda: hal.physiology.set(battery_mv=3600))]
    run_for(hal, sampler, 15, steps)
    assert rec.names() == ["battery-low", "battery-ok"], rec.events
    assert rec.events[0][1]["percent"] == 18 and rec.events[1][1]["percent"] == 35
    values = [r[senml.V] for r in rec.records("bat")]
    assert 18 in [int(v) for v in values] or min(values) < 24  # the low value was reported


def test_pure_helpers():
    bounds = fw_config.DEFAULTS["critical"]
    assert is_critical("spo2", 91, bounds) and not is_critical("spo2", 92, bounds)
    assert is_critical("pr", 40, bounds) and is_critical("pr", 131, bounds)
    assert not is_critical("pr", 41, bounds) and not is_critical("pr", 130, bounds)
    assert not is_critical("pi", 0.01, bounds) and not is_critical("spo2", None, bounds)
    assert battery_percent(3000, 3300, 4150) == 0 and battery_percent(5000, 3300, 4150) == 100
    chain = build_chain([["plausibility", 50, 100, 8]])
    assert chain.push(97, 0) == 97 and chain.push(40, 1) is None  # out of range
    assert chain.push(80, 2) is None and chain.push(81, 3) == 81  # jump confirmed
    chain = build_chain([["plausibility", 50, 100, 8], ["median", 3]])
    assert [chain.push(v, t) for t, v in enumerate((97, 96, 60, 95))] == [97, 96.5, None, 96]


def test_bounded_queue_holds_its_bound():
    q = BoundedQueue(4)
    dropped = [q.put(i, keep=(i % 3 == 0)) for i in range(12)]
    assert len(q) == 4
    # Routine items made room for newer ones; once only kept items remain, routine
    # newcomers are the ones dropped.
    assert q.items() == [0, 3, 6, 9]
    assert dropped == [None, None, None, None, 1, 2, 4, 5, 7, 8, 10, 11]
    assert q.dropped == 8 and q.dropped_kept == 0
    full = BoundedQueue(2)
    full.put("a", keep=True)
    full.put("b", keep=True)
    assert full.put("c") == "c" and full.items() == ["a", "b"]  # routine newcomer goes
    assert full.put("d", keep=True) == "a" and full.dropped_kept == 1


def test_config_errors_name_the_setting():
    cases = [
        ({"sensors": {"max30102": {"poll_ms": 5}}}, "sensors.max30102.poll_ms"),
        ({"sensors": {"max30102": {"pol_ms": 250}}}, "sensors.max30102.pol_ms"),
        ({"critical": {"spo2": {"low": 95, "high": 90}}}, "critical.spo2"),
        ({"critical": {"nope": {"low": 1}}}, "critical.nope"),
        ({"sensors": {"max30205": {"filters": {"temp": [["median", 0]]}}}},
         "sensors.max30205.filters.temp"),
        ({"transports": [{"kind": "pigeon"}]}, "transports[0].kind"),
        ({"device": {"id": "bad id"}}, "device.id"),
        ({"battery": {"empty_mv": 4200, "full_mv": 4100}}, "battery.full_mv"),
        ({"robust": {"feed_ms": 6000, "watchdog_ms": 10000}}, "robust.feed_ms"),
    ]
    for overrides, path in cases:
        try:
            fw_config.load(overrides, None)
        except fw_config.ConfigError as exc:
            assert exc.path == path, (exc.path, path)
            assert str(exc).startswith(path + ": ")
        else:
            raise AssertionError("accepted %r" % (overrides,))
    config = fw_config.load({"critical": {"spo2": {"low": 88}}}, None)
    assert config["critical"] == {"spo2": {"low": 88}}  # replaces the defaults as a whole
    assert config["device"]["id"] == "vb-000000000000"
