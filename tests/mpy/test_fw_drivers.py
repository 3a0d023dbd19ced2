# Drivers against the register-level simulated devices, and the simulated HAL itself,
# on the MicroPython unix port. Run: micropython -X heapsize=8M tests/mpy/run.py test_fw_drivers
import asyncio
import errno
import json
import os
import sys
import time

from firmware.drivers import SensorAbsent, SensorFault
from firmware.drivers.bp_uart import BpModule, parse_frame
from firmware.drivers.max30102 import Max30102
from firmware.drivers.max30205 import Max30205, decode_temperature
from firmware.hal import get_hal, set_hal
from firmware.hal import sim_devices as regs
from firmware.hal.sim import TICKS_PERIOD, SimClock, SimHal, SimulatedReset, ticks_add, ticks_diff
from firmware.hal.sim_devices import BpModuleModel

FLASH = "/tmp/vb-mpy-fw-drivers/flash"


def make_hal(**kwargs):
    kwargs.setdefault("flash_dir", FLASH)
    kwargs.setdefault("seed", 7)
    return SimHal(**kwargs)


def running_max30102(**hal_kwargs):
    hal = make_hal(**hal_kwargs)
    driver = Max30102(hal.i2c(), hal)
    driver.start()
    return hal, driver


def assert_max30102_recovers(hal, driver):
    """Clear the fault, re-run start() as the sampler would, and get samples again."""
    hal.inject_fault("max30102", None)
    driver.start()
    hal.clock.advance_ms(100)
    assert len(driver.read_fifo()) == 5


def expect_error(kind, fn, *args):
    try:
        fn(*args)
    except kind as exc:
        return exc
    raise AssertionError("%s not raised" % kind.__name__)


# --- MAX30102 ------------------------------------------------------------------------


def test_max30102_start_programs_spo2_mode():
    hal = make_hal()
    driver = Max30102(hal.i2c(), hal, sample_rate=100, averaging=2, red_ma=7.2, ir_ma=6.4)
    driver.start()
    model = hal.devices["max30102"]
    assert driver.revision == 0x03
    assert model.regs[regs.MODE_CONFIG] == 0x03
    assert model.regs[regs.SPO2_CONFIG] == (1 << 5) | (1 << 2) | 3  # 4096 nA, 100 sps, 411 us
    assert model.regs[regs.FIFO_CONFIG] == (1 << 5) | 0x0F  # average 2, rollover off
    assert (model.regs[regs.LED1_PA], model.regs[regs.LED2_PA]) == (36, 32)
    assert model.status1 & 0x01 == 0  # PWR_RDY cleared by reading the status
    assert driver.output_rate == 50


def test_max30102_reads_contiguous_18bit_samples():
    hal, driver = running_max30102()
    hal.clock.advance_ms(200)  # 10 samples at 50 sps
    first = driver.read_fifo()
    assert len(first) == 10 and first.gap  # the first batch after configure starts a series
    hal.clock.advance_ms(300)
    second = driver.read_fifo()
    assert len(second) == 15 and not second.gap and second.lost == 0
    for value in first.ir + second.ir + first.red + second.red:
        assert 0 <= value < (1 << 18)
    mean_ir = sum(second.ir) // len(second.ir)
    mean_red = sum(second.red) // len(second.red)
    assert 100000 < mean_ir < 130000 and 75000 < mean_red < 105000  # red first, IR second
    assert len(driver.read_fifo()) == 0  # nothing new without time passing


def test_max30102_overflow_keeps_oldest_and_flags_the_gap():
    hal, driver = running_max30102()
    hal.clock.advance_ms(2000)  # 100 samples due, 32 fit
    full = driver.read_fifo()
    assert len(full) == 32
    assert driver.lost_samples == 31  # OVF_COUNTER saturates at 31
    hal.clock.advance_ms(100)
    after = driver.read_fifo()
    assert after.gap and after.lost == 31 and len(after) == 5


def test_max30102_power_loss_is_detected_and_reconfigured():
    hal, driver = running_max30102()
    hal.clock.advance_ms(100)
    driver.read_fifo()
    hal.devices["max30102"].power_on()  # brownout: registers back to defaults, PWR_RDY set
    batch = driver.read_fifo()
    assert batch.gap and len(batch) == 0 and driver.restarts == 1
    assert hal.devices["max30102"].regs[regs.MODE_CONFIG] == 0x03
    hal.clock.advance_ms(100)
    assert len(driver.read_fifo()) == 5


def test_max30102_absent_then_retry_succeeds():
    hal = make_hal()
    hal.inject_fault("max30102", "absent")
    driver = Max30102(hal.i2c(), hal)
    exc = expect_error(SensorAbsent, driver.start)
    assert exc.sensor == "max30102" and "0x57" in str(exc)
    assert 0x57 not in hal.i2c().scan() and 0x48 in hal.i2c().scan()
    assert_max30102_recovers(hal, driver)


def test_max30102_bus_timeout_is_a_fault():
    hal, driver = running_max30102()
    hal.inject_fault("max30102", "timeout")
    exc = expect_error(SensorFault, driver.read_fifo)
    assert str(errno.ETIMEDOUT) in str(exc)
    assert_max30102_recovers(hal, driver)


def test_max30102_wrong_part_id():
    hal = make_hal()
    hal.devices["max30102"].regs[regs.PART_ID] = 0x11  # a MAX30100 answers at 0x57 too
    exc = expect_error(SensorFault, Max30102(hal.i2c(), hal).start)
    assert "0x11" in str(exc)


def test_max30102_stuck_fifo_detected_and_recovered():
    hal, driver = running_max30102()
    hal.clock.advance_ms(100)
    assert len(driver.read_fifo()) == 5
    hal.inject_fault("max30102", "stuck")
    hal.clock.advance_ms(500)
    assert len(driver.read_fifo()) == 0  # not yet conclusive
    hal.clock.advance_ms(1500)
    exc = expect_error(SensorFault, driver.read_fifo)
    assert "FIFO" in str(exc)
    assert_max30102_recovers(hal, driver)


def test_max30102_rejects_unsupported_settings():
    hal = make_hal()
    for kwargs in ({"sample_rate": 1000}, {"averaging": 3}, {"pulse_width_us": 100},
                   {"adc_range_na": 1000}, {"ir_ma": 60}):
        try:
            Max30102(hal.i2c(), hal, **kwargs)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (kwargs,))


def test_max30102_model_fifo_reads_past_write_pointer_are_stale():
    # The model is faithful: reading more than is available returns stale slots and
    # moves the read pointer past the write pointer. The driver must never do that.
    hal, driver = running_max30102()
    hal.clock.advance_ms(40)  # 2 samples
    hal.i2c().readfrom_mem(0x57, regs.FIFO_DATA, 6 * 4)
    model = hal.devices["max30102"]
    assert model.regs[regs.FIFO_RD_PTR] == 4 and model.regs[regs.FIFO_WR_PTR] == 2


# --- MAX30205 ------------------------------------------------------------------------


def test_max30205_decode_formats():
    assert decode_temperature(0x25, 0x80) == 37.5
    assert decode_temperature(0xFF, 0xFF) == -1 / 256
    assert decode_temperature(0x00, 0x00, extended=True) == 64.0
    assert decode_temperature(0xE5, 0x80, extended=True) == 37.5


def test_max30205_identify_configure_measure():
    hal = make_hal()
    hal.physiology.set(temp=38.25)
    sensor = Max30205(hal.i2c(), hal)
    sensor.start()
    model = hal.devices["max30205"]
    assert model.config == 0x01 and model.thyst == 0x4B00  # shutdown; THYST restored
    celsius = sensor.measure()
    assert abs(celsius - 38.25) < 0.05, celsius


def test_max30205_one_shot_result_appears_after_conversion():
    hal = make_hal()
    sensor = Max30205(hal.i2c(), hal)
    sensor.start()
    before = sensor.measure()
    hal.physiology.set(temp=39.5)
    sensor.start_conversion()
    assert abs(sensor.read_celsius() - before) < 0.05  # still the previous conversion
    hal.clock.advance_ms(50)
    assert abs(sensor.read_celsius() - 39.5) < 0.05


def test_max30205_async_measure():
    hal = make_hal()
    sensor = Max30205(hal.i2c(), hal)
    sensor.start()
    start = hal.ticks_ms()
    celsius = asyncio.run(sensor.ameasure())
    assert abs(celsius - 36.8) < 0.05
    assert hal.ticks_diff(hal.ticks_ms(), start) >= 50


def test_max30205_faults():
    hal = make_hal()
    sensor = Max30205(hal.i2c(), hal)
    hal.inject_fault("max30205", "absent")
    expect_error(SensorAbsent, sensor.start)
    hal.inject_fault("max30205", None)
    sensor.start()
    hal.inject_fault("max30205", "garbage")  # bus reads 0xFFFF
    exc = expect_error(SensorFault, sensor.measure)
    assert "range" in str(exc)
    hal.inject_fault("max30205", None)
    assert abs(sensor.measure() - 36.8) < 0.05


def test_max30205_identify_rejects_a_device_that_does_not_echo():
    hal = make_hal()
    hal.devices["max30205"].write = lambda register, data: None  # ignores writes
    expect_error(SensorFault, Max30205(hal.i2c(), hal).identify)


# --- blood-pressure module -------------------------------------------------------------


def test_bp_frame_parser():
    assert parse_frame(b"\r128, 084, 071\n").sys == 128
    reading = parse_frame(b"120, 080, 072\r\n")
    assert (reading.sys, reading.dia, reading.pulse) == (120, 80, 72)
    assert parse_frame(b" 095, 060, 000\n").pulse is None
    for bad in (b"\r128, 084, 071\r", b"\r128, 084, 71\n", b"\r12a, 084, 071\n",
                b"\r080, 120, 071\n", b"\r128, 000, 071\n", b"1128, 084, 071\n",
                b"\r1281 084, 071\n", b"\r128, 084\n071\n", b"", b"\n"):
        assert parse_frame(bad) is None, bad


def test_bp_reads_measurements():
    hal = make_hal()
    module = BpModule(hal.uart(1, 9600), hal)
    assert module.poll() == []
    hal.devices["bp"].measure(128, 84, 71)
    hal.devices["bp"].measure(131, 86, 70)
    readings = module.poll()
    assert [(r.sys, r.dia, r.pulse) for r in readings] == [(128, 84, 71), (131, 86, 70)]
    assert module.frames == 2 and module.bad_frames == 0


def test_bp_resynchronises_after_garbage():
    hal = make_hal()
    uart = hal.uart(1, 9600)
    module = BpModule(uart, hal)
    model = hal.devices["bp"]
    model.inject_garbage(b"\x00\xff12, 9\n\r")  # noise with a stray LF
    model.inject_garbage(b"xx")  # noise glued to the next frame
    model.measure(140, 90, 88)
    model.inject_garbage(BpModuleModel.frame(150, 95, 80)[:7])  # truncated frame...
    readings = module.poll()
    assert [(r.sys, r.dia) for r in readings] == [(140, 90)]
    model.measure(118, 76, 64)  # ...then a whole one
    readings = module.poll()
    assert [(r.sys, r.dia) for r in readings] == [(118, 76)], readings
    # One bad line; 8 + 3 + 7 bytes of noise around the two good frames.
    assert module.bad_frames == 1 and module.garbage_bytes == 18


def test_bp_line_noise_raises_fault_then_recovers():
    hal = make_hal()
    module = BpModule(hal.uart(1, 9600), hal)
    model = hal.devices["bp"]
    for _ in range(3):
        model.inject_garbage(model.noise(120).replace(b"\n", b"."))
        try:
            module.poll()
        except SensorFault as exc:
            assert "noise" in str(exc)
            break
    else:
        raise AssertionError("no SensorFault for a noisy line")
    model.measure(122, 81, 75)
    assert [r.sys for r in module.poll()] == [122]


def test_bp_wrong_baud_rate_never_yields_readings():
    hal = make_hal()
    module = BpModule(hal.uart(1, 4800), hal)
    model = hal.devices["bp"]
    faults = 0
    for _ in range(30):
        model.measure()
        try:
            assert module.poll() == []
        except SensorFault:
            faults += 1
    assert faults >= 1 and module.frames == 0


def test_bp_garbage_fault_from_the_model():
    hal = make_hal()
    module = BpModule(hal.uart(1, 9600), hal)
    hal.inject_fault("bp", "garbage")
    hal.devices["bp"].measure(133, 88, 77)
    readings = module.poll()
    assert [(r.sys, r.dia, r.pulse) for r in readings] == [(133, 88, 77)]


def test_bp_expected_measurement_that_never_comes():
    hal = make_hal()
    module = BpModule(hal.uart(1, 9600), hal)
    hal.inject_fault("bp", "absent")
    module.expect(90000)
    hal.devices["bp"].measure()
    hal.clock.advance(60)
    assert module.poll() == []
    hal.clock.advance(31)
    exc = expect_error(SensorAbsent, module.poll)
    assert exc.sensor == "bp"
    assert module.poll() == []  # reported once, not forever


def test_sim_uart_buffer_overflow_drops_bytes():
    hal = make_hal()
    uart = hal.uart(1, 9600)
    for _ in range(30):
        hal.devices["bp"].measure()
    assert uart.any() == 256 and uart.dropped == 30 * 15 - 256


# --- simulated HAL -------------------------------------------------------------------


def test_ticks_wrap_like_esp32():
    clock = SimClock(ticks_start=TICKS_PERIOD - 100)
    hal = make_hal(clock=clock)
    before = hal.ticks_ms()
    hal.clock.advance_ms(250)
    after = hal.ticks_ms()
    assert after < before and after == 150
    assert hal.ticks_diff(after, before) == 250 and hal.ticks_diff(before, after) == -250
    assert ticks_add(before, 250) == after and ticks_diff(ticks_add(5, -10), 5) == -10


def test_max30102_survives_ticks_wrap():
    hal, driver = running_max30102(clock=SimClock(ticks_start=TICKS_PERIOD - 300))
    total = 0
    for _ in range(10):
        hal.clock.advance_ms(100)
        total += len(driver.read_fifo())
    assert total == 50


def test_wall_clock_set_time():
    hal = make_hal(clock=SimClock(epoch=1000))
    hal.clock.advance(2.5)
    assert hal.time() == 1002
    hal.set_time(1800000000)
    hal.clock.advance(1)
    assert hal.time() == 1800000001


def test_virtual_time_jumps_to_the_earliest_sleeper():
    hal = make_hal()
    log = []

    async def sleeper(name, ms, times):
        for _ in range(times):
            await hal.asleep_ms(ms)
            log.append((name, hal.clock.monotonic_ms()))

    async def main():
        await asyncio.gather(sleeper("a", 300, 4), sleeper("b", 500, 2))

    asyncio.run(main())
    assert log == [("a", 300), ("b", 500), ("a", 600), ("a", 900), ("b", 1000), ("a", 1200)], log


def test_virtual_time_survives_a_cancelled_sleeper():
    # Two equal sleeps, one cancelled (as asyncio.wait_for does): the clock must not wait
    # for the cancelled task's turn, and the task woken by `kept` finishing must see the
    # time it was woken at (100), not a later jump made before it ran.
    hal = make_hal()
    log = []

    async def ticker():
        for _ in range(3):
            await hal.asleep_ms(50)
            log.append(hal.clock.monotonic_ms())

    async def main():
        kept = asyncio.create_task(hal.asleep_ms(100))
        doomed = asyncio.create_task(hal.asleep_ms(100))
        tick = asyncio.create_task(ticker())
        await asyncio.sleep_ms(0)
        doomed.cancel()
        await kept
        log.append(("kept", hal.clock.monotonic_ms()))
        await tick

    asyncio.run(asyncio.wait_for_ms(main(), 3000))  # real ms: a hang fails the test
    assert log == [50, 100, ("kept", 100), 150], log


def test_blocking_sleep_advances_virtual_time():
    hal = make_hal()
    hal.sleep_ms(40)
    assert hal.clock.monotonic_ms() == 40


def test_watchdog_starvation_resets():
    hal = make_hal()
    dog = hal.watchdog(1000)
    hal.sleep_ms(600)
    dog.feed()
    hal.sleep_ms(600)
    exc = expect_error(SimulatedReset, hal.sleep_ms, 600)
    assert exc.cause == "watchdog"
    assert expect_error(SimulatedReset, hal.reset).cause == "software"
    try:
        try:
            hal.reset()
        except Exception:  # the firmware's catch-alls must not swallow a reset
            raise AssertionError("SimulatedReset caught as Exception") from None
    except SimulatedReset:
        pass


def test_peripherals_record_what_they_did():
    hal = make_hal()
    led = hal.led("red")
    led.on()
    hal.clock.advance_ms(10)
    led.off()
    assert led.history == [(0, True), (10, False)] and not led.value()
    expect_error(ValueError, hal.led, "purple")
    buzzer = hal.buzzer()
    buzzer.tone(2000, 100)
    assert buzzer.playing()
    hal.clock.advance_ms(150)
    assert not buzzer.playing()
    assert hal.battery_mv() == 3900
    hal.physiology.set(battery_mv=3400)
    assert hal.battery_mv() == 3400
    assert hal.ble() is None and hal.reset_cause() == "power-on"


def test_flash_dir_and_seeded_rng():
    hal = make_hal(flash_dir="/tmp/vb-mpy-fw-drivers/a/b/flash")
    assert os.stat(hal.flash_dir)[0] & 0o170000 == 0o040000
    assert make_hal().random_bytes(16) == make_hal().random_bytes(16)
    assert len(make_hal(seed=None).random_bytes(32)) == 32
    expect_error(ValueError, lambda: make_hal(reset_cause="cosmic-ray"))


def test_signal_feed_from_a_file():
    make_hal()  # creates the test directory
    path = "/tmp/vb-mpy-fw-drivers/signals.jsonl"
    with open(path, "w") as f:
        f.write("")
    hal = make_hal(signals=path)
    sensor = Max30205(hal.i2c(), hal)
    module = BpModule(hal.uart(1, 9600), hal)
    lines = [
        json.dumps({"t": 1.0, "hr": 88, "spo2": 93, "temp": 38.4, "finger": True}),
        "{not json",
        json.dumps({"hr": "fast", "spo2": 140, "colour": "blue"}),  # bad values, unknown key
        json.dumps([1, 2]),
        json.dumps({"bp": {"sys": 142, "dia": 91, "pulse": 77}}),
        json.dumps({"fault": {"max30102": "absent"}}),
        json.dumps({"motion": 0.2}) + "\n" + json.dumps({"finger": False}),
    ]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
        f.write('{"noise": 0.1')  # a partial line: applied once completed
    assert sensor.measure() > 38.3  # the feed was pumped by the bus access
    body = hal.physiology
    assert (body.hr, body.spo2, body.motion, body.finger) == (88, 93, 0.2, False)
    assert hal.feed.errors == 4  # bad JSON, "fast", 140, a list
    assert [(r.sys, r.dia) for r in module.poll()] == [(142, 91)]
    assert 0x57 not in hal.i2c().scan()
    with open(path, "a") as f:
        f.write("}\n")
    hal.pump_signals()
    assert body.noise == 0.1


def new_fifo(name):
    make_hal()  # creates the test directory
    path = "/tmp/vb-mpy-fw-drivers/" + name
    try:
        os.remove(path)
    except OSError:
        pass
    assert os.system("mkfifo %s" % path) == 0
    return path


def test_signal_feed_from_an_inherited_pipe_does_not_block():
    # A FIFO stands in for the pipe the simulator hands over (no writer yet: must not block).
    path = new_fifo("signals.fifo")
    hal = make_hal(signals=path)
    hal.pump_signals()
    assert hal.physiology.hr == 72
    os.system("printf '{\"hr\": 61}\\n' > %s &" % path)
    for _ in range(200):  # real time: the writer is another process
        hal.pump_signals()
        if hal.physiology.hr == 61:
            break
        time.sleep_ms(5)
    assert hal.physiology.hr == 61


def test_host_serial_link_on_a_path():
    # uart(0) on a host path (the simulator hands over a PTY); a FIFO loops back.
    link = make_hal(serial=new_fifo("serial.fifo")).uart(0, 115200)
    assert link.read(64) is None and link.any() == 0
    assert link.write(b"\x00frame\x00") == 7
    assert link.any() and link.read(64) == b"\x00frame\x00"


def test_get_hal_defaults_to_simulation_off_esp32():
    previous = set_hal(None)
    try:
        hal = get_hal()
        assert sys.platform != "esp32" and hal.name == "sim" and get_hal() is hal
    finally:
        set_hal(previous)


# --- ESP32 HAL logic against a stand-in machine module -------------------------------------


class _FakePin:
    OUT = 1

    def __init__(self, number, mode=None):
        self.number = number
        self.level = 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        return None


class _FakeMachine:
    PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
    Pin = _FakePin
    cause = 1
    resets = 0

    @classmethod
    def reset_cause(cls):
        return cls.cause

    @classmethod
    def reset(cls):
        cls.resets += 1


def _import_esp32_hal():
    sys.modules["machine"] = _FakeMachine
    sys.modules.pop("firmware.hal.esp32", None)
    name = "firmware.hal.esp32"  # by name: only firmware/hal/ may import the chip modules
    __import__(name)
    return sys.modules[name]


def _forget_fake_machine():
    sys.modules.pop("machine", None)
    sys.modules.pop("firmware.hal.esp32", None)


def test_esp32_reset_cause_mapping_and_marker():
    flash = "/tmp/vb-mpy-fw-drivers/esp32"
    try:
        esp32 = _import_esp32_hal()
        for code, cause in ((1, "power-on"), (3, "watchdog"), (5, "soft"), (4, "deep-sleep"),
                            (2, "hard"), (99, "unknown")):
            _FakeMachine.cause = code
            assert esp32.Esp32Hal(flash_dir=flash).reset_cause() == cause
        hal = esp32.Esp32Hal(flash_dir=flash)
        hal.reset()  # writes the marker, then machine.reset()
        assert _FakeMachine.resets == 1
        _FakeMachine.cause = _FakeMachine.HARD_RESET
        assert esp32.Esp32Hal(flash_dir=flash).reset_cause() == "software"
        assert esp32.Esp32Hal(flash_dir=flash).reset_cause() == "hard"  # marker consumed
    finally:
        _forget_fake_machine()


def test_esp32_led_polarity_and_epoch():
    try:
        esp32 = _import_esp32_hal()
        board = dict(esp32.BOARD)
        board["led_active_low"] = ("status",)
        hal = esp32.Esp32Hal(board=board, flash_dir="/tmp/vb-mpy-fw-drivers/esp32")
        status = hal.led("status")
        assert status.pin.level == 1 and not status.value()  # active low: off = high
        status.on()
        assert status.pin.level == 0 and status.value()
        red = hal.led("red")
        red.on()
        assert red.pin.number == 4 and red.pin.level == 1
        assert abs(hal.time() - time.time()) < 2  # the unix port counts from 1970
    finally:
        _forget_fake_machine()
