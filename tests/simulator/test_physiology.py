"""The patient model: reproducible, physiologically bounded, noisy as documented, artefacts
only in what sensors report, the scenarios' alarm timelines preserved, and adapters whose
output the real BLE/CMS50 codecs and the firmware's signal feed accept."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.alarms import scenarios
from edge_agent.alarms.grades import Grade
from edge_agent.ble_ingest.profiles import conditions_of
from edge_agent.serial_ingest.drivers import (
    ContecCms50Driver,
    Measurement,
    cms50_values,
    decode_cms50_packet,
    encode_cms50_packet,
)
from firmware.hal.sim import SignalFeed
from firmware.hal.sim_devices import Physiology
from protocol import vitals as vocabulary
from protocol.gatt import characteristics as gatt_codecs
from simulator import ble_devices, scenario_catalog
from simulator.physiology import (
    BP_CUFF,
    HEART_RATE_STRAP,
    HOME_DEVICES,
    MOTION,
    NOISE_SD,
    PULSE_OXIMETER,
    SENSOR_KINDS,
    SENSOR_OFF,
    SPIKE,
    THERMOMETER,
    PatientModel,
    SensorEffects,
)

ROOT = Path(__file__).resolve().parents[2]
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0


def _scenario_playback():
    """tests/edge_agent/test_scenarios.py, whose play() feeds a scenario's readings
    through the Evaluator and the AlarmLifecycle with a one-second clock tick."""
    path = ROOT / "tests" / "edge_agent" / "test_scenarios.py"
    spec = importlib.util.spec_from_file_location("_scenario_playback", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


play = _scenario_playback().play


def residuals(model: PatientModel, sensor: str, quantity: str, truth_field: str,
              times: list[float]) -> list[float]:
    out = []
    for t in times:
        report = model.observe(t, sensor)
        out.append(report.values[quantity] - getattr(model.vitals(report.t), truth_field))
    return out


# ---- reproducibility --------------------------------------------------------------------------


def snapshot(model: PatientModel, times: list[float]) -> list[object]:
    return [(model.vitals(t), [model.observe(t, s) for s in SENSOR_KINDS],
             model.sim_hal_line(t)) for t in times]


def test_same_arguments_same_patient_in_any_order() -> None:
    times = [START + x for x in (0, 0.5, 33.2, 299.9, 1234.5, 5 * HOUR + 0.25)]
    a = PatientModel("gradual-desaturation", seed=3, start=START)
    b = PatientModel("gradual-desaturation", seed=3, start=START)
    forward = snapshot(a, times)
    assert snapshot(b, list(reversed(times))) == list(reversed(forward))
    assert a.events(START, START + 6 * HOUR) == b.events(START, START + 6 * HOUR)
    assert a.readings(START, START + 300) == b.readings(START, START + 300)
    other = PatientModel("gradual-desaturation", seed=4, start=START)
    assert snapshot(other, times) != forward
    assert other.events(START, START + 6 * HOUR) != a.events(START, START + 6 * HOUR)


def test_the_expected_timeline_is_the_scenarios_one_for_the_same_seed_and_start() -> None:
    for seed in (0, 11):
        for name in scenarios.NAMES:
            model = PatientModel(name, seed=seed, start=START)
            built = scenarios.build(name, start=START, seed=seed)
            assert model.expected == built.expected
            entry = scenario_catalog.entry(name, seed)
            assert entry.expected == built.expected and entry.duration == built.duration
    assert PatientModel(None).expected == ()


def test_bad_arguments_are_refused() -> None:
    model = PatientModel("stable", start=START)
    with pytest.raises(ValueError, match="before the model's start"):
        model.vitals(START - 1)
    with pytest.raises(ValueError, match="finite"):
        model.observe(math.nan, PULSE_OXIMETER)
    with pytest.raises(ValueError, match="unknown sensor kind"):
        model.observe(START, "glucometer")
    with pytest.raises(ValueError, match="unknown scenario"):
        PatientModel("sepsis")
    with pytest.raises(ValueError, match="no physiology source"):
        model.ble_source("weight_scale")
    with pytest.raises(ValueError, match="motion_per_hour"):
        SensorEffects(motion_per_hour=-1)
    with pytest.raises(ValueError, match="finger_off_s"):
        SensorEffects(finger_off_s=(30.0, 10.0))


# ---- ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*scenarios.NAMES, None])
def test_values_stay_physiological_and_valid_on_the_wire(name: str | None) -> None:
    model = PatientModel(name, seed=5, start=START)
    for t in (START + k * 7.3 for k in range(int(2 * HOUR / 7.3))):
        v = model.vitals(t)
        assert 20 <= v.hr <= 180 and 50 <= v.spo2 <= 100 and 34.5 <= v.temp <= 41
        assert 60 <= v.sys <= 200 and 30 <= v.dia < v.map < v.sys
        assert 4 <= v.rr <= 40 and 0.05 <= v.pi <= 20
        for sensor in SENSOR_KINDS:
            report = model.observe(t, sensor)
            assert report.t <= t and report.sensor == sensor
            for quantity, value in report.values.items():
                vocabulary.check_value(quantity, value)
            if report.signal_quality is not None:
                assert 0 <= report.signal_quality <= 100
            assert all(0.2 < interval < 3.0 for interval in report.rr_intervals)


# ---- noise, drift, beats ------------------------------------------------------------------------


def test_noise_has_the_documented_mean_and_spread() -> None:
    """After the scenario window the reports are truth + N(0, sd), rounded to the sensor's
    resolution: the residual SD is sqrt(sd**2 + step**2 / 12)."""
    model = PatientModel(None, seed=2, start=START, effects=SensorEffects.quiet())
    seconds = [START + k + 0.5 for k in range(4000)]
    cases = [
        (PULSE_OXIMETER, "spo2", "spo2", NOISE_SD["spo2"], 1, seconds),
        (PULSE_OXIMETER, "pr", "hr", NOISE_SD["pr"], 1, seconds),
        (HEART_RATE_STRAP, "hr", "hr", NOISE_SD["hr"], 1, seconds),
        (HEART_RATE_STRAP, "rr", "rr", NOISE_SD["rr"], 1, seconds),
        (THERMOMETER, "temp", "temp", NOISE_SD["temp"], 0.1, seconds[::10]),
        (BP_CUFF, "sys", "sys", NOISE_SD["sys"], 1, seconds[::2]),
        (BP_CUFF, "dia", "dia", NOISE_SD["dia"], 1, seconds[::2]),
    ]
    for sensor, quantity, truth, sd, step, times in cases:
        errors = residuals(model, sensor, quantity, truth, times)
        expected_sd = math.sqrt(sd**2 + step**2 / 12)
        mean, spread = statistics.fmean(errors), statistics.stdev(errors)
        assert abs(mean) < 4 * expected_sd / math.sqrt(len(errors)), (quantity, mean)
        assert abs(spread / expected_sd - 1) < 0.1, (quantity, spread, expected_sd)


def test_without_noise_a_report_is_the_rounded_truth() -> None:
    model = PatientModel(None, seed=2, start=START, effects=SensorEffects.quiet(0.0))
    for t in (START + 10.0, START + 777.0, START + 4321.0):
        truth = model.vitals(t)
        oximeter = model.observe(t, PULSE_OXIMETER).values
        assert (oximeter["spo2"], oximeter["pr"]) == (round(truth.spo2), round(truth.hr))
        assert model.observe(t, THERMOMETER).values["temp"] == round(truth.temp, 1)


def test_the_scripted_window_reports_the_scenario_and_truth_fits_its_clean_readings() -> None:
    model = PatientModel("stable", seed=0, start=START)
    scenario = scenarios.build("stable", start=START, seed=0)
    spo2 = [r for r in scenario.readings if r.quantity == "spo2"]
    for reading in spo2:
        report = model.observe(reading.time + 0.7, PULSE_OXIMETER)
        assert report.scripted and report.t == reading.time
        assert report.values["spo2"] == reading.value
    errors = [r.value - model.vitals(r.time).spo2 for r in spo2]
    assert abs(statistics.fmean(errors)) < 0.15
    assert statistics.stdev(errors) < 0.7  # scenario noise SD 0.4 plus rounding


def test_circadian_temperature_peaks_in_the_late_afternoon() -> None:
    model = PatientModel(None, seed=1, start=START, effects=SensorEffects.quiet())
    day = [(h, model.vitals(START + h * HOUR).temp) for h in range(25)]
    warmest, coldest = max(day, key=lambda x: x[1]), min(day, key=lambda x: x[1])
    assert warmest[0] == 17 and coldest[0] == 5  # START is midnight UTC, offset 0
    assert warmest[1] - coldest[1] == pytest.approx(0.5, abs=0.01)
    shifted = PatientModel(None, seed=1, start=START, effects=SensorEffects.quiet(),
                           utc_offset_h=2.0)
    assert max(range(25), key=lambda h: shifted.vitals(START + h * HOUR).temp) == 15


def test_slow_drift_starts_at_the_end_of_the_window_and_is_continuous() -> None:
    model = PatientModel("fever", seed=0, start=START)
    end = START + 300
    just_before, just_after = model.vitals(end - 1e-6), model.vitals(end + 1e-6)
    for name in ("hr", "spo2", "temp", "sys", "dia", "rr"):
        assert getattr(just_after, name) == pytest.approx(getattr(just_before, name), abs=1e-3)
    later = [model.vitals(end + k * 60).hr for k in range(120)]
    assert statistics.pstdev(later) > 1.0  # the heart rate wanders after the window


def test_beats_follow_the_heart_rate_with_beat_to_beat_variability() -> None:
    model = PatientModel(None, seed=9, start=START, effects=SensorEffects.quiet())
    intervals = []
    for k in range(1, 600):
        intervals.extend(model.observe(START + k, HEART_RATE_STRAP).rr_intervals)
    beats = model.beats(START + 0.0, START + 599)
    assert len(intervals) == len(beats) - 1  # every interval reported once, none missed
    mean_hr = statistics.fmean(model.vitals(START + k + 0.5).hr for k in range(599))
    assert 60 / statistics.fmean(intervals) == pytest.approx(mean_hr, rel=0.02)
    assert 0.02 < statistics.stdev(intervals) / statistics.fmean(intervals) < 0.12


# ---- artefacts and sensor-off -------------------------------------------------------------------


def test_drawn_events_corrupt_reports_but_never_the_truth() -> None:
    busy = SensorEffects(motion_per_hour=20, finger_off_per_hour=10, strap_off_per_hour=10)
    noisy = PatientModel("stable", seed=4, start=START, effects=busy)
    clean = PatientModel("stable", seed=4, start=START, effects=SensorEffects.quiet())
    events = noisy.events(START, START + 2 * HOUR)
    assert {(e.kind, min(e.sensors)) for e in events} == {
        (MOTION, BP_CUFF), (SENSOR_OFF, PULSE_OXIMETER), (SENSOR_OFF, HEART_RATE_STRAP)}
    assert all(e.start >= START + 120 and not e.scripted for e in events)  # none in the window
    covered = 0
    for t in (START + k for k in range(120, int(2 * HOUR))):
        assert noisy.vitals(t) == clean.vitals(t)
        active = [e for e in events if e.covers(t)]
        for sensor in (PULSE_OXIMETER, HEART_RATE_STRAP):
            report, reference = noisy.observe(t, sensor), clean.observe(t, sensor)
            kinds = {e.kind for e in active if sensor in e.sensors}
            if not kinds:
                assert report == reference
                continue
            covered += 1
            assert report.artefact and report != reference
            if SENSOR_OFF in kinds:
                assert report.values == {}
                assert report.finger_off if sensor == PULSE_OXIMETER else (
                    report.sensor_contact is False)
            elif sensor == PULSE_OXIMETER:
                assert report.signal_quality < 40  # the guard's threshold
    assert covered > 200


def test_the_motion_artefact_scenario_is_its_artefacts_as_events() -> None:
    model = PatientModel("motion-artefact", seed=0, start=START)
    scenario = scenarios.build("motion-artefact", start=START, seed=0)
    events = model.events(START, START + scenario.duration + 1)
    assert all(e.scripted and e.sensors == {PULSE_OXIMETER} for e in events)
    assert sorted(e.kind for e in events) == [MOTION, MOTION, SENSOR_OFF, SPIKE, SPIKE]
    corrupted_at = {r.time for i, r in enumerate(scenario.readings)
                    if r.device == scenarios.OXIMETER and (i in scenario.artefacts or r.finger_off)}
    assert len(corrupted_at) > 40
    for t in (START + s for s in range(121)):  # one oximeter sample per second
        corrupted = t in corrupted_at
        assert any(e.covers(t) for e in events) == corrupted
        assert model.observe(t, PULSE_OXIMETER).artefact == corrupted
    assert min(model.observe(e.start, PULSE_OXIMETER).signal_quality
               for e in events if e.kind == MOTION) < 40
    observed = [model.observe(START + s, PULSE_OXIMETER).values.get("spo2") for s in range(121)]
    assert min(v for v in observed if v) < 92  # the artefacts alone would alarm ...
    assert min(model.vitals(START + s).spo2 for s in range(121)) > 95.5  # ... the patient won't


# ---- alarm timelines -------------------------------------------------------------------------


def timeline_matches(seen: list[tuple[Grade, str, float]],
                     expected: tuple[scenarios.ExpectedAlarm, ...], slack: float) -> list:
    """Expected alarms not raised within `slack` seconds, then raised ones not expected."""
    unmatched = list(seen)
    missing = []
    for alarm in expected:
        match = [s for s in unmatched if s[0] is alarm.grade and s[1] == alarm.key
                 and abs(s[2] - alarm.at) <= slack]
        if match:
            unmatched.remove(match[0])
        else:
            missing.append(alarm)
    return missing + unmatched


@pytest.mark.parametrize("name", scenarios.NAMES)
@pytest.mark.parametrize("seed", [0, 7])
def test_observed_series_raise_the_expected_timeline(name: str, seed: int) -> None:
    model = PatientModel(name, seed=seed, start=START)
    scenario = scenarios.build(name, start=START, seed=seed)
    end = START + scenario.duration
    observed = model.readings(START, end)
    order = lambda r: (r.time, r.device, r.quantity)  # noqa: E731
    assert sorted(observed, key=order) == sorted(scenario.readings, key=order)
    for delay in (0.0, 0.4):  # on the sample instant, and queried off-grid like a BLE stream
        readings = tuple(model.readings(START, end, delay=delay))
        seen, lifecycle = play(dataclasses.replace(scenario, readings=readings))
        assert timeline_matches(seen, scenario.expected, slack=1.0) == [], (delay, seen)
        if name == "motion-artefact":
            assert [s for s in seen if s[0].clinical] == []
            assert all(not alarm.grade.clinical for alarm in lifecycle.open_alarms())


def test_the_catalog_describes_each_home() -> None:
    entries = scenario_catalog.catalog(seed=0)
    assert tuple(entries) == scenarios.NAMES
    for name, entry in entries.items():
        assert entry.devices and {d.device for d in entry.devices} <= {
            h.device for h in HOME_DEVICES}
        assert entry.clinical == (name not in ("stable", "motion-artefact"))
        assert [a["expected_at"] for a in entry.timeline()] == [e.at for e in entry.expected]
        assert all(d.transports for d in entry.devices)
        assert entry.model(start=START).expected == scenarios.build(
            name, start=START, seed=0).expected
    band = next(d for d in entries["fever"].devices if d.device == scenarios.BAND)
    assert band.quantities == ("rr",) and set(band.transports) == {"ble:vitalbridge"}
    cuff = next(d for d in entries["hypotension"].devices if d.sensor == BP_CUFF)
    assert cuff.period_s is None and "ble:blood_pressure" in cuff.transports


# ---- adapters -------------------------------------------------------------------------------


def ble_value(device_class: type, model: PatientModel, kind: str, elapsed: float) -> dict:
    """Encode one measurement the way the simulated BLE device does, then decode it."""
    device = device_class("sim", model.ble_source(kind), clock=lambda: elapsed)
    return gatt_codecs.decode(device.measurement_uuid16, device.encode(device.values()))


def values_of(decoded: dict) -> dict[str, float]:
    return {v["n"]: v["v"] for v in decoded["values"]}


def test_ble_sources_round_trip_through_the_gatt_codecs() -> None:
    model = PatientModel("motion-artefact", seed=0, start=START)
    for elapsed in (5.0, 35.0, 105.0):  # still, moving, finger out
        report = model.observe(START + elapsed, PULSE_OXIMETER)
        decoded = ble_value(ble_devices.PulseOximeter, model, "pulse_oximeter", elapsed)
        got = values_of(decoded)
        if report.finger_off:
            assert math.isnan(got["spo2"]) and "sensor-off" in conditions_of(decoded)
        else:
            assert got["spo2"] == report.values["spo2"] and got["pr"] == report.values["pr"]
            assert got["pi"] == pytest.approx(report.values["pi"], abs=0.005)
            assert ("poor-signal" in conditions_of(decoded)) == (report.signal_quality < 40)
    decoded = ble_value(ble_devices.Thermometer, model, "thermometer", 40.0)
    assert values_of(decoded)["temp"] == pytest.approx(
        model.observe(START + 40.0, THERMOMETER).values["temp"])
    decoded = ble_value(ble_devices.BloodPressureMonitor, model, "blood_pressure", 60.0)
    cuff = model.observe(START + 60.0, BP_CUFF).values
    assert {k: values_of(decoded)[k] for k in ("sys", "dia", "map")} == {
        k: cuff[k] for k in ("sys", "dia", "map")}
    decoded = ble_value(ble_devices.HeartRateMonitor, model, "heart_rate", 50.0)
    strap = model.observe(START + 50.0, HEART_RATE_STRAP)
    assert values_of(decoded)["hr"] == strap.values["hr"] and decoded["sensor_contact"]
    assert decoded["rr_intervals_s"] == pytest.approx(strap.rr_intervals, abs=1 / 1024)


def test_ble_sources_report_motion_and_lost_contact_as_device_conditions() -> None:
    busy = SensorEffects(motion_per_hour=30, strap_off_per_hour=30)
    model = PatientModel(None, seed=3, start=START, effects=busy)
    events = model.events(START, START + HOUR)
    moving = next(e for e in events if e.kind == MOTION)
    strap_off = next(e for e in events if e.sensors == {HEART_RATE_STRAP})
    decoded = ble_value(ble_devices.BloodPressureMonitor, model, "blood_pressure",
                        moving.start + 0.5 - START)
    assert "motion" in conditions_of(decoded)
    decoded = ble_value(ble_devices.HeartRateMonitor, model, "heart_rate",
                        math.ceil(strap_off.start - START))
    assert decoded["sensor_contact"] is False and "no-sensor-contact" in conditions_of(decoded)


def test_cms50_source_round_trips_through_the_serial_driver() -> None:
    model = PatientModel("motion-artefact", seed=0, start=START)
    source = model.cms50_source()
    still = source.samples(10.0, 600)  # ten seconds
    for sample in still:
        assert decode_cms50_packet(encode_cms50_packet(sample)) == sample
    beeps = sum(s.beep for s in still)
    assert beeps == len(model.beats(START + 10.0 - 1 / 60, START + 10.0 + 599 / 60))
    driver = ContecCms50Driver()
    events = driver.feed(b"".join(encode_cms50_packet(s) for s in still))
    measured = {e.quantity: e.value for e in events if isinstance(e, Measurement)}
    report = model.observe(START + 19.9, PULSE_OXIMETER)
    assert measured == {"spo2": report.values["spo2"], "pr": report.values["pr"]}
    finger_out = source(105.0)
    assert finger_out.probe_error and cms50_values(finger_out) == {}
    moving = source(35.0)
    assert moving.signal_strength <= 3 and not moving.probe_error


SIM_HAL_KEYS = {"t", "hr", "spo2", "temp", "resp", "pi", "sys", "dia", "bp_pulse", "finger",
                "motion"}


def test_sim_hal_lines_drive_the_firmware_signal_feed(tmp_path: Path) -> None:
    model = PatientModel("motion-artefact", seed=0, start=START)
    times = [START + s for s in (5, 35, 105)]
    lines = [model.sim_hal_line(t, measure_bp=(t == times[0])) for t in times]
    for line in lines:
        assert line.endswith("\n") and len(line.encode()) <= SignalFeed.MAX_LINE
        assert SIM_HAL_KEYS <= set(json.loads(line))
    path = tmp_path / "signals"
    path.write_text("".join(lines))
    physiology, events = Physiology(), []
    feed = SignalFeed(str(path), physiology, lambda kind, value: events.append((kind, value)))
    feed.pump()
    assert (feed.lines, feed.errors) == (3, 0)
    last, truth = json.loads(lines[-1]), model.vitals(times[-1])
    assert physiology.finger is False and last["finger"] is False  # the finger-off at 105 s
    assert physiology.spo2 == last["spo2"] == round(truth.spo2, 1)
    assert physiology.hr == last["hr"] == round(truth.hr, 1)
    assert json.loads(lines[1])["motion"] > 0.5  # moving at 35 s
    cuff = model.observe(times[0], BP_CUFF).values
    assert events == [("bp", {"sys": cuff["sys"], "dia": cuff["dia"], "pulse": cuff["pr"]})]


@pytest.mark.micropython
def test_sim_hal_lines_are_read_by_the_micropython_feed(tmp_path: Path) -> None:
    model = PatientModel("hypotension", seed=0, start=START)
    path = tmp_path / "signals"
    path.write_text("".join(model.sim_hal_line(START + s, measure_bp=s == 200)
                            for s in range(0, 240, 20)))
    script = "\n".join((
        "import sys, json",
        "sys.path.insert(0, '.')",
        "from firmware.hal.sim import SignalFeed",
        "from firmware.hal.sim_devices import Physiology",
        "p = Physiology(); seen = []",
        f"f = SignalFeed({str(path)!r}, p, lambda k, v: seen.append(v))",
        "f.pump()",
        "print(json.dumps([f.lines, f.errors, p.sys, p.hr, seen]))"))
    micropython = Path(sys.executable).parent / "micropython"
    proc = subprocess.run([str(micropython), "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines, errors, sys_mmhg, hr, seen = json.loads(proc.stdout.strip().splitlines()[-1])
    final = json.loads(model.sim_hal_line(START + 220))
    assert (lines, errors) == (12, 0)
    assert (sys_mmhg, hr) == (final["sys"], final["hr"])
    cuff = model.observe(START + 200, BP_CUFF).values
    assert seen == [{"sys": cuff["sys"], "dia": cuff["dia"], "pulse": cuff["pr"]}]
