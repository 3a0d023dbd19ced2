"""The signal quality a sensor reports beside its values reaches the rules on each value.

Found by `vitalbridge sim scenario motion-artefact`: without it, motion artefacts reached the
clinical limits through the real agent and raised red alarms.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.pipeline.verifier import quality_at, rule_readings, signal_quality_by_time
from protocol.senml import Reading as SenmlReading


class OneBinding:
    def patient_at(self, device_id: str, at: int) -> str | None:
        return "p-0001"


def senml(quantity: str, value: float, time: float) -> SenmlReading:
    units = {"spo2": "%", "pr": "beat/min", "sq": "%"}
    return SenmlReading("ox-1" + quantity, quantity, units[quantity], value, time, None, {})


def test_each_value_carries_the_quality_reported_at_its_time() -> None:
    batch = [senml("spo2", 84, 10.0), senml("pr", 131, 10.0), senml("sq", 12, 10.0),
             senml("spo2", 97, 11.0), senml("sq", 88, 11.0)]
    readings, flags = rule_readings(OneBinding(), "ox-1", batch)
    assert flags == []
    quality = {(r.quantity, r.time): r.signal_quality for r in readings}
    assert quality[("spo2", 10.0)] == 12 and quality[("pr", 10.0)] == 12
    assert quality[("spo2", 11.0)] == 88


def test_no_quality_reported_means_no_guard() -> None:
    readings, _ = rule_readings(OneBinding(), "ox-1", [senml("spo2", 84, 10.0)])
    assert readings[0].signal_quality is None


def test_an_implausible_quality_is_not_used() -> None:
    pairs = signal_quality_by_time([senml("sq", 140, 1.0), senml("sq", math.nan, 2.0),
                                    senml("sq", 50, 3.0)])
    assert pairs == [(3.0, 50.0)]


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), max_size=20),
       st.floats(-10, 110))
def test_quality_at_is_the_latest_report_not_after_the_time(pairs, time) -> None:
    pairs = sorted(pairs)
    earlier = [q for at, q in pairs if at <= time]
    assert quality_at(pairs, time) == (earlier[-1] if earlier else None)
