# MAX30102 driver + SpO2 algorithm end to end on the simulated board: the sim synthesises
# raw PPG samples from the requested physiology, the driver reads them through the FIFO,
# the algorithm must recover heart rate and SpO2.
# Run: micropython -X heapsize=8M tests/mpy/run.py test_fw_spo2
from firmware.algorithms.spo2 import (
    LINEAR_110_25,
    MAXIM_RD117,
    STATUS_NO_FINGER,
    STATUS_NO_PULSE,
    STATUS_OK,
    PulseOximeter,
)
from firmware.drivers.max30102 import Max30102
from firmware.hal.sim import SimHal

FLASH = "/tmp/vb-mpy-fw-spo2/flash"


class Rig:
    """A simulated board with a running MAX30102 and a pulse oximeter front end."""

    def __init__(self, seed=11, **signals):
        self.hal = SimHal(flash_dir=FLASH, seed=seed)
        self.hal.physiology.set(**signals)
        self.driver = Max30102(self.hal.i2c(), self.hal)
        self.driver.start()
        self.oximeter = PulseOximeter(self.driver.output_rate, window_s=8)

    def run(self, seconds, poll_ms=250):
        for _ in range(int(seconds * 1000 / poll_ms)):
            self.hal.clock.advance_ms(poll_ms)
            batch = self.driver.read_fifo()
            self.oximeter.add(batch.red, batch.ir, batch.gap)
        return self.oximeter.estimate()


def check(hr, spo2, noise=0.02, seed=11):
    estimate = Rig(seed=seed, hr=hr, spo2=spo2, noise=noise).run(8)
    assert estimate.status == STATUS_OK, estimate
    assert abs(estimate.hr - hr) <= 3, (hr, estimate)
    assert abs(estimate.spo2 - spo2) <= 2, (spo2, estimate)
    assert estimate.quality >= 50, estimate
    assert estimate.finger
    return estimate


def test_resting_adult():
    estimate = check(72, 97)
    assert 1.5 < estimate.pi < 2.5  # the sim's perfusion index is 2 %


def test_bradycardia_and_hypoxaemia():
    check(45, 86, seed=3)


def test_tachycardia_and_low_saturation():
    check(150, 82, seed=5)


def test_fast_child_rate_normal_saturation():
    check(190, 99, noise=0.01, seed=8)


def test_noisier_signal_still_within_limits():
    check(88, 93, noise=0.05, seed=13)


def test_finger_off_is_detected_at_once_and_recovers():
    rig = Rig(hr=80, spo2=96)
    assert rig.run(8).status == STATUS_OK
    rig.hal.physiology.set(finger=False)
    off = rig.run(0.5)
    assert off.status == STATUS_NO_FINGER and not off.finger and off.quality == 0
    assert off.hr is None and off.spo2 is None and off.dc_ir < 5000
    rig.hal.physiology.set(finger=True)
    assert rig.run(1).status != STATUS_OK  # window restarted when the finger came back
    back = rig.run(7)
    assert back.status == STATUS_OK and abs(back.hr - 80) <= 3


def test_no_pulse_with_finger_on():
    estimate = Rig(hr=0, spo2=96).run(8)  # asystole or a sensor on a non-perfused surface
    assert estimate.status == STATUS_NO_PULSE and estimate.finger and estimate.hr is None


def test_motion_lowers_quality():
    clean = Rig(hr=75, spo2=97, seed=21).run(8)
    moving = Rig(hr=75, spo2=97, motion=0.5, seed=21).run(8)
    assert clean.quality >= 80 and moving.quality < clean.quality - 30, (clean, moving)


def test_fifo_overflow_restarts_the_window():
    rig = Rig(hr=70, spo2=95)
    rig.run(8)
    assert rig.oximeter.seconds() == 8
    rig.hal.clock.advance_ms(3000)  # the sampler stalled: the FIFO overflowed
    batch = rig.driver.read_fifo()  # the 32 samples kept follow on without a gap...
    assert len(batch) == 32 and not batch.gap
    rig.oximeter.add(batch.red, batch.ir, batch.gap)
    assert rig.oximeter.seconds() == 8
    rig.hal.clock.advance_ms(100)
    batch = rig.driver.read_fifo()  # ...the lost ones are missing before the next batch
    assert batch.gap and batch.lost == 31 and len(batch) == 5
    rig.oximeter.add(batch.red, batch.ir, batch.gap)
    assert rig.oximeter.seconds() == 0.1


def test_calibration_curves_invert():
    for curve in (MAXIM_RD117, LINEAR_110_25):
        for spo2 in (70, 80, 90, 95, 99):
            assert abs(curve.spo2(curve.ratio_for(spo2)) - spo2) < 1e-6
    assert MAXIM_RD117.spo2(0.1) == MAXIM_RD117.spo2(MAXIM_RD117.r_peak) > 99.9
    assert LINEAR_110_25.spo2(1.0) == 85.0


def test_other_calibration_on_the_device():
    rig = Rig(hr=66, spo2=91)
    rig.hal.devices["max30102"].synth.calibration = LINEAR_110_25
    rig.oximeter.calibration = LINEAR_110_25
    estimate = rig.run(8)
    assert abs(estimate.spo2 - 91) <= 2, estimate
