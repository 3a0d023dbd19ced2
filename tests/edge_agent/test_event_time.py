"""A sealed device event is filed at its own time when plausible (a sensor-off replayed from
a device's outbox belongs where the finger left); otherwise at its arrival."""

from __future__ import annotations

from edge_agent.service import EVENT_TIME_MAX_AGE_S, EVENT_TIME_MAX_AHEAD_S, event_time
from protocol.device_link import Event

ARRIVAL = 1_800_000_000.0


def sealed(at: int) -> Event:
    return Event("sensor-off", at, {"cause": "finger-off"}, authenticated=True)


def test_a_replayed_sealed_event_keeps_its_own_time() -> None:
    assert event_time(sealed(int(ARRIVAL) - 3 * 3600), ARRIVAL) == ARRIVAL - 3 * 3600


def test_an_unsealed_event_is_filed_at_arrival() -> None:
    event = Event("sensor-off", int(ARRIVAL) - 60, {}, authenticated=False)
    assert event_time(event, ARRIVAL) == ARRIVAL


def test_implausible_device_times_are_not_used() -> None:
    assert event_time(sealed(0), ARRIVAL) == ARRIVAL  # an unset clock
    assert event_time(sealed(int(ARRIVAL - EVENT_TIME_MAX_AGE_S) - 1), ARRIVAL) == ARRIVAL
    assert event_time(sealed(int(ARRIVAL + EVENT_TIME_MAX_AHEAD_S) + 1), ARRIVAL) == ARRIVAL
    assert event_time(sealed(int(ARRIVAL + EVENT_TIME_MAX_AHEAD_S)), ARRIVAL) == \
        ARRIVAL + EVENT_TIME_MAX_AHEAD_S
