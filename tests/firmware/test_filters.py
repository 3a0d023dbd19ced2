"""The firmware's filter chains (firmware/filters.py) on CPython, against simple models:
median and moving average equal their definitions over the last n values, plausibility
never passes an impossible value and lets a confirmed change through one sample late,
the throttle reports every change of at least min_change once min_interval passed,
reports a steady value every max_interval, and always passes urgent values. Specs are
validated with errors that name the filter. Config validation rides on the same specs."""

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import config as fw_config
from firmware.filters import (
    MAX_WINDOW,
    Median,
    MovingAverage,
    Plausibility,
    Throttle,
    build_chain,
    make_filter,
)

values = st.lists(st.integers(-1000, 1000) | st.floats(-1e6, 1e6, allow_nan=False),
                  min_size=1, max_size=60)


@given(st.integers(1, MAX_WINDOW), values)
def test_median_is_the_median_of_the_last_n(n, xs):
    f = Median(n)
    for i, x in enumerate(xs):
        window = xs[max(0, i + 1 - n):i + 1]
        assert f.apply(x, i) == statistics.median(window)
        assert len(f.values) <= n  # bounded whatever the input


@given(st.integers(1, MAX_WINDOW), st.lists(st.integers(-1000, 1000), min_size=1, max_size=60))
def test_moving_average_is_the_mean_of_the_last_n(n, xs):
    f = MovingAverage(n)
    for i, x in enumerate(xs):
        window = xs[max(0, i + 1 - n):i + 1]
        assert f.apply(x, i) == pytest.approx(sum(window) / len(window))
        assert len(f.values) <= n


@given(st.lists(st.floats(-50, 150, allow_nan=False) | st.just(float("nan"))
                | st.just(float("inf")), min_size=1, max_size=50),
       st.integers(0, 20))
def test_plausibility_never_passes_an_impossible_or_unconfirmed_value(xs, step):
    f = Plausibility(0, 100, step)
    last = None
    pending = None
    for i, x in enumerate(xs):
        out = f.apply(x, i)
        if out is None:
            if 0 <= x <= 100:
                pending = x
            continue
        assert 0 <= out <= 100 and out == x
        if step and last is not None and abs(x - last) > step:
            # A jump passes only when the value before it (held back) confirmed the level.
            assert pending is not None and abs(x - pending) <= step
        last = x
        pending = None


def test_plausibility_spike_dropped_real_change_one_sample_late():
    f = Plausibility(50, 100, 8)
    assert [f.apply(v, t) for t, v in enumerate([97, 70, 97, 96])] == [97, None, 97, 96]
    g = Plausibility(50, 100, 8)
    assert [g.apply(v, t) for t, v in enumerate([97, 80, 81, 82])] == [97, None, 81, 82]
    # After a long silence there is no previous level to jump from.
    h = Plausibility(50, 100, 8, max_gap_s=30)
    assert h.apply(97, 0) == 97 and h.apply(70, 100) == 70
    assert f.rejected == 1 and g.rejected == 1


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 100), st.booleans()),
                min_size=1, max_size=80),
       st.integers(0, 10), st.integers(10, 60), st.integers(0, 10))
def test_throttle_against_its_rules(steps, min_interval, max_interval, min_change):
    f = Throttle(min_interval, max_interval, min_change)
    t = 0
    last = None
    for dt, x, urgent in steps:
        t += dt
        out = f.apply(x, t, urgent)
        if last is None or urgent:
            assert out == x
        else:
            elapsed = t - last[1]
            due = elapsed >= max_interval or (
                elapsed >= min_interval and abs(x - last[0]) >= min_change)
            assert (out == x) == due, (last, t, x)
        if out is not None:
            last = (x, t)


def test_throttle_heartbeat_reports_a_steady_value():
    f = Throttle(5, 60, 1)
    passed = [t for t in range(0, 300) if f.apply(36.8, t) is not None]
    assert passed == [0, 60, 120, 180, 240]


def test_chain_passes_values_in_order_and_counts():
    chain = build_chain([["plausibility", 0, 100, 10], ["median", 3], ["throttle", 0, 100, 2]])
    outs = [chain.push(v, t) for t, v in enumerate([90, 91, 200, 92, 95, 96, 96])]
    assert outs == [90, None, None, None, 92, 95, None]
    assert chain.passed == 3 and chain.dropped == 4
    chain.reset()
    assert chain.push(50, 100) == 50  # history forgotten


@pytest.mark.parametrize("spec, message", [
    (["median", 0], "median: window"),
    (["median", 33], "median: window"),
    (["moving_average", 2.5], "moving_average: window"),
    (["plausibility", 10, 5], "plausibility: need numbers low <= high"),
    (["plausibility", 0, 10, -1], "max_step must be a number >= 0"),
    (["throttle", 10, 5], "max_interval_s must be >= min_interval_s"),
    (["throttle", 1, 2, 3, 4], "throttle: wrong number of arguments"),
    (["kalman", 1], "unknown filter 'kalman'"),
    ("median", "a filter is [name, arguments...]"),
    ([], "a filter is [name, arguments...]"),
])
def test_bad_specs_are_refused_with_a_clear_reason(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        make_filter(spec)


def test_heartbeat_is_the_throttle_and_chains_are_bounded():
    assert isinstance(make_filter(["heartbeat", 0, 30]), Throttle)
    with pytest.raises(ValueError, match="at most 8 filters"):
        build_chain([["median", 1]] * 9)


def test_config_defaults_are_valid_and_errors_name_the_setting():
    config = fw_config.load(None, None)
    assert config["transports"] == [{"kind": "ble"}]
    for section in ("max30102", "max30205", "bp"):
        for spec in config["sensors"][section]["filters"].values():
            build_chain(spec)
    with pytest.raises(fw_config.ConfigError) as err:
        fw_config.load({"sensors": {"max30205": {"filters": {"temp": [["median", 99]]}}}})
    assert err.value.path == "sensors.max30205.filters.temp"
    assert "median: window must be an integer 1..32" in str(err.value)
    with pytest.raises(fw_config.ConfigError, match="^device.ca_public: "):
        fw_config.load({"device": {"ca_public": "xyz"}})


@given(st.dictionaries(st.sampled_from(["device", "sensors", "link", "robust", "bogus"]),
                       st.integers() | st.text(max_size=5) | st.none(), max_size=3))
def test_hostile_overrides_raise_only_config_errors(overrides):
    try:
        fw_config.load(overrides)
    except fw_config.ConfigError as exc:
        assert exc.path.split(".")[0].split("[")[0] in overrides
