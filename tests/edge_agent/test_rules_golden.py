"""The rules engine decides exactly as the recorded golden trace says (see rules_golden.py):
every condition raised, regraded or cleared, with its grade, time, value and detail text,
every refused input, and the conditions left active at the end of each stream."""

from __future__ import annotations

import gzip
import json
from functools import cache
from typing import Any

import pytest

from tests.edge_agent import rules_golden


@cache
def _fixture() -> dict[str, Any]:
    return json.loads(gzip.decompress(rules_golden.FIXTURE.read_bytes()))


def _names() -> list[str]:
    return [stream["name"] for stream in _fixture()["streams"]]


def test_fixture_covers_the_hostile_cases() -> None:
    """Guards the fixture itself: a trace without these would prove little."""
    seen: set[str] = set()
    for stream in _fixture()["streams"]:
        for decision in stream["decisions"].values():
            if decision[0] == "error":
                seen.add("error:" + str(decision[2]))
            for condition in decision[1] if decision[0] == "ok" else ():
                seen.add(condition[1] + ":" + condition[0].split(":")[0])
        seen.update("event:" + event[0] for event in stream["events"])
    for needed in ("threshold:spo2", "threshold:acvpu", "news2:news2", "rate:spo2", "rate:pr",
                   "artefact:implausible", "artefact:low-signal",
                   "artefact:sensor-off", "technical:unit-mismatch", "technical:offline",
                   "technical:battery-low", "error:v", "error:u", "error:signal_quality",
                   "event:limits", "event:setting", "event:device", "event:gateway",
                   "event:tick"):
        assert needed in seen, needed
    # A finger taken off is a cause of sensor-off, named in the condition's detail.
    conditions = [str(condition) for stream in _fixture()["streams"]
                  for decision in stream["decisions"].values() if decision[0] == "ok"
                  for condition in decision[1]]
    assert any("finger-off reported by sensor" in text for text in conditions)


@pytest.mark.parametrize("name", _names())
def test_replay_matches_golden_trace(name: str) -> None:
    stream = next(s for s in _fixture()["streams"] if s["name"] == name)
    decisions, active = rules_golden.replay(stream)
    nothing = rules_golden.canonical(["ok", []])
    for index, got in enumerate(decisions):
        recorded = stream["decisions"].get(str(index))
        want = nothing if recorded is None else rules_golden.canonical(recorded)
        assert got == want, (f"{name}: event {index} {stream['events'][index]!r} decided "
                             f"{got} instead of {want}")
    assert active == stream["active"]
