"""Notification policy (pure), its dispatch (fakes for devices and MQTT), and the agent
against real mosquitto: a red alarm reaches the centre and the patient's stand-in device,
quiet hours hold back a yellow and never a red."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms.dispatch import AlarmDispatch
from edge_agent.alarms.evaluator import Condition
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import AlarmLifecycle, Step
from edge_agent.alarms.notify import (
    CENTRE,
    DEVICE,
    LOCAL,
    OFF,
    Deferrals,
    NotificationPolicy,
    PolicyError,
    QuietHours,
    decide,
    device_pattern,
    parse_clock,
)
from edge_agent.config import ConfigError, parse_config
from protocol import alarm_messages, device_link, messages
from tests.edge_agent import test_service_integration as integration
from tests.edge_agent.test_service_integration import GW, Rig, until

R, OR, Y, B = Grade.RED, Grade.ORANGE, Grade.YELLOW, Grade.BLUE
NIGHT = QuietHours.parse("22:00", "07:00")
minutes = st.integers(0, 24 * 60 - 1)


# ---------------------------------------------------------------- quiet hours


def test_clock_parsing_and_refusals() -> None:
    assert parse_clock("start", "00:00") == 0 and parse_clock("start", "23:59") == 1439
    for bad in ("24:00", "7:00", "07:60", "0700", 700, None, "ab:cd"):
        with pytest.raises(PolicyError, match="start"):
            parse_clock("start", bad)


def test_window_crossing_midnight() -> None:
    assert [NIGHT.active(parse_clock("t", t)) for t in
            ("21:59", "22:00", "23:59", "00:00", "06:59", "07:00", "12:00")] == [
        False, True, True, True, True, False, False]
    day = QuietHours.parse("13:00", "14:30")
    assert day.active(13 * 60) and day.active(14 * 60 + 29) and not day.active(14 * 60 + 30)


@pytest.mark.parametrize("grades", [["red"], ["orange"], ["yellow", "red"], ["orange", "blue"]])
def test_quiet_hours_for_red_or_orange_are_refused(grades: list[str]) -> None:
    with pytest.raises(PolicyError, match="never deferred"):
        QuietHours.parse("22:00", "07:00", grades)


def test_empty_window_and_unknown_grade_are_refused() -> None:
    with pytest.raises(PolicyError, match="differ"):
        QuietHours.parse("22:00", "22:00")
    with pytest.raises(PolicyError, match="unknown grade"):
        QuietHours.parse("22:00", "07:00", ["purple"])


@given(minutes, minutes, minutes)
def test_window_membership_matches_a_walk_around_the_clock(start: int, end: int,
                                                            minute: int) -> None:
    if start == end:
        return
    quiet = QuietHours(start, end)
    # Reference: walk forward from start; the minute is inside if reached before end.
    inside, probe = False, start
    while probe != end:
        if probe == minute:
            inside = True
            break
        probe = (probe + 1) % 1440
    assert quiet.active(minute) == inside


@given(minutes, minutes, minutes, st.sampled_from([["yellow"], ["blue"], ["yellow", "blue"]]))
def test_red_and_orange_are_never_deferred_at_any_time(start: int, end: int, minute: int,
                                                        grades: list[str]) -> None:
    if start == end:
        return
    policy = NotificationPolicy(quiet_hours=QuietHours(start, end, frozenset(
        Grade.from_label(g) for g in grades)))
    for grade in (R, OR):
        assert all(d.deliver for d in decide(policy, "a1", grade, minute))
    for grade in (Y, B):
        decisions = {d.recipient: d.deliver for d in decide(policy, "a1", grade, minute)}
        assert decisions[CENTRE]  # the centre always hears
        held = policy.quiet_hours is not None and policy.quiet_hours.defers(grade, minute)
        assert decisions[DEVICE] is decisions[LOCAL] is (not held)


@given(minutes, minutes, st.integers(0, 86399))
def test_the_window_ends_after_the_given_moment(start: int, end: int, second: int) -> None:
    if start == end:
        return
    quiet = QuietHours(start, end)
    local = datetime(2024, 3, 1, tzinfo=UTC).replace(hour=second // 3600,
                                                     minute=second // 60 % 60,
                                                     second=second % 60)
    ends = quiet.ends_after(local)
    assert 0 < (ends - local).total_seconds() <= 86400
    assert ends.hour * 60 + ends.minute == end


# ---------------------------------------------------------------- routes


def test_routes_always_include_the_centre_and_red_must_reach_the_device() -> None:
    policy = NotificationPolicy({R: frozenset({DEVICE}), OR: frozenset(), Y: frozenset(),
                                 B: frozenset({LOCAL})})
    assert policy.recipients(OR) == {CENTRE} and policy.recipients(B) == {CENTRE, LOCAL}
    assert [d.recipient for d in decide(policy, "a", R, 0)] == [CENTRE, DEVICE]
    with pytest.raises(PolicyError, match="red: red alarms must reach"):
        NotificationPolicy({R: frozenset({CENTRE, LOCAL})})
    with pytest.raises(PolicyError, match="unknown recipient 'pager'"):
        NotificationPolicy({B: frozenset({"pager"})})
    with pytest.raises(PolicyError, match="notify_command"):
        NotificationPolicy(notify_command=("notify", ""))


def _config(notify: dict[str, Any]) -> Any:
    doc = {"gateway": {"id": "gw-1", "data_dir": "/tmp/vb-x"}, "broker": {"host": "h"},
           "alarms": {"notify": notify}}
    return parse_config(doc, Path("/etc/vitalbridge/gateway.toml"))


def test_gateway_toml_section_and_errors_naming_the_key() -> None:
    config = _config({"yellow": ["device"], "notify_command": ["/usr/bin/logger", "-t", "vb"],
                      "timezone": "Europe/London",
                      "quiet_hours": {"start": "22:30", "end": "06:45", "grades": ["yellow"]}})
    policy = config.alarms.notify
    assert policy.recipients(Y) == {CENTRE, DEVICE} and policy.timezone == "Europe/London"
    assert policy.quiet_hours == QuietHours(22 * 60 + 30, 6 * 60 + 45, frozenset({Y}))
    assert policy.notify_command == ("/usr/bin/logger", "-t", "vb")
    cases = {
        "alarms.notify.quiet_hours.grades: red alarms are never deferred":
            {"quiet_hours": {"start": "22:00", "end": "07:00", "grades": ["red"]}},
        "alarms.notify.quiet_hours.start: must be a time of day":
            {"quiet_hours": {"start": "10pm", "end": "07:00"}},
        "alarms.notify.red: red alarms must reach the patient's device": {"red": ["centre"]},
        "alarms.notify.notify_command: must be a non-empty array": {"notify_command": "x y"},
        "alarms.notify.timezone: is not a known IANA time zone": {"timezone": "Mars/Olympus"},
        "alarms.notify.orange: unknown key": {"orange ": ["device"]},
    }
    for expected, notify in cases.items():
        with pytest.raises(ConfigError) as caught:
            _config(notify)
        key, text = expected.split(": ", 1)
        assert any(p.startswith(key) and text in p for p in caught.value.problems), \
            caught.value.problems


# ---------------------------------------------------------------- device pattern, deferrals


def _lifecycle_with(*grades_keys: tuple[Grade, str], patient: str = "p-1") -> AlarmLifecycle:
    lc = AlarmLifecycle()
    for grade, key in grades_keys:
        lc.apply(Condition(key, "threshold", grade, 10.0, patient, "ox-1", "spo2", 90, ""))
    return lc


def test_device_pattern_is_the_highest_active_grade_minus_what_quiet_hours_hold() -> None:
    lc = _lifecycle_with((Y, "pr:high"), (B, "battery-low:ox-1"))
    quiet = NotificationPolicy(quiet_hours=NIGHT)
    assert device_pattern(NotificationPolicy(), lc.open_alarms("p-1"), 12 * 60) == "yellow"
    assert device_pattern(quiet, lc.open_alarms("p-1"), 23 * 60) == OFF
    lc.apply(Condition("spo2:low", "threshold", R, 11.0, "p-1", "ox-1", "spo2", 85, ""))
    assert device_pattern(quiet, lc.open_alarms("p-1"), 23 * 60) == "red"
    assert device_pattern(quiet, lc.open_alarms("p-2"), 23 * 60) == OFF


def test_deferrals_deliver_when_quiet_hours_end_and_lapse_when_inactive() -> None:
    policy = NotificationPolicy(quiet_hours=NIGHT)
    lc = _lifecycle_with((Y, "pr:high"), (B, "offline:ox-1"))
    held = Deferrals()
    alarms = {a.key: a for a in lc.open_alarms()}
    for alarm in alarms.values():
        for decision in decide(policy, alarm.id, alarm.grade, 23 * 60):
            if not decision.deliver:
                held.hold(decision)
    assert len(held) == 4
    assert held.due(policy, {a.id: a for a in alarms.values()}, 6 * 60) == ([], [])
    lc.apply(Condition("offline:ox-1", "technical", None, 30.0, "p-1", "ox-1", None, None, ""))
    deliver, lapsed = held.due(policy, {a.id: a for a in lc.open_alarms()}, 7 * 60)
    assert sorted(d.recipient for d in deliver) == [DEVICE, LOCAL]
    assert {d.alarm_id for d in deliver} == {alarms["pr:high"].id}
    assert sorted(lapsed) == sorted([(alarms["offline:ox-1"].id, DEVICE),
                                     (alarms["offline:ox-1"].id, LOCAL)])
    assert len(held) == 0


def test_deferrals_survive_a_restart_through_the_notified_steps() -> None:
    held = Deferrals()
    held.restore("a1", ["centre", "device deferred: quiet hours", "local deferred: quiet hours",
                        "local (after quiet hours)"], Y)
    assert len(held) == 1  # the device notification is still held; local went out


# ---------------------------------------------------------------- dispatch with fakes


class FakeSession:
    def __init__(self, kid: bytes, created_at: float) -> None:
        self.kid = kid
        self.gateway_mac_key = bytes(range(32))
        self.created_at = created_at


class FakeDevices:
    def __init__(self) -> None:
        self.sessions: dict[str, FakeSession] = {}
        self.connected: set[str] = set()
        self.sent: list[tuple[str, str, int]] = []  # device, pattern, command id
        self.last_id: dict[bytes, int] = {}

    def patient_devices(self, patient: str, now: float) -> list[str]:
        return ["ox-1"] if patient == "p-1" else []

    def session(self, device_id: str) -> FakeSession | None:
        return self.sessions.get(device_id)

    def send(self, device_id: str, payload: bytes) -> bool:
        if device_id not in self.connected:
            return False
        session = self.sessions[device_id]
        kind, body = messages.decode(payload)
        command = device_link.decode_command(body, session.gateway_mac_key, session.kid,
                                             self.last_id.get(session.kid))
        self.last_id[session.kid] = command.command_id
        self.sent.append((device_id, command.args, command.command_id))
        return kind == "device-command"


class Harness:
    """AlarmDispatch over a real lifecycle; notified steps are applied at once (the alarm
    path would journal them first), the retained set goes to a list."""

    def __init__(self, policy: NotificationPolicy, local_minute: int) -> None:
        self.lc = AlarmLifecycle()
        self.devices = FakeDevices()
        self.published: list[bytes] = []
        self.epoch: object = 0
        self.notes: list[Step] = []
        # 2024-03-01 is a Friday; UTC keeps the test independent of the machine's zone.
        self.now = datetime(2024, 3, 1, tzinfo=UTC).timestamp() + local_minute * 60
        self.dispatch = AlarmDispatch(
            policy, self.lc, notified=self._notified, devices=self.devices,
            publish_set=self._publish, link_epoch=lambda: self.epoch,
            clock=lambda: self.now, zone=UTC)

    def _notified(self, alarm_id: str, detail: str, at: float, actor: str) -> bool:
        step = self.lc.notified(alarm_id, actor, at, detail)
        self.notes.append(step)
        self.dispatch.durable([step])
        return True

    def _publish(self, payload: bytes) -> bool:
        self.published.append(payload)
        return True

    def condition(self, grade: Grade | None, key: str = "spo2:low") -> list[Step]:
        steps = self.lc.apply(Condition(key, "threshold", grade, self.now, "p-1", "ox-1",
                                        "spo2", 90, ""))
        self.dispatch.durable(steps)
        return steps

    def details(self) -> list[str]:
        return [s.detail for s in self.notes]

    def active_ids(self) -> list[str]:
        return [t.alarm_id for t in alarm_messages.decode_alarm_set(self.published[-1])[1]]


def test_red_alarm_notifies_every_recipient_and_the_connected_device() -> None:
    h = Harness(NotificationPolicy(), 12 * 60)
    h.devices.sessions["ox-1"] = FakeSession(b"K" * 8, h.now - 5)
    h.devices.connected.add("ox-1")
    [raised] = h.condition(R)
    assert [(d, p) for d, p, _ in h.devices.sent] == [("ox-1", "red")]
    assert h.details() == ["centre", "device ox-1", "local"]
    assert {s.actor for s in h.notes} == {"policy"}
    assert h.dispatch.local_notifications == 1
    assert h.active_ids() == [raised.alarm_id]
    # Acknowledged and resolved: the latch is released, the device is told "off".
    h.dispatch.durable(h.lc.acknowledge(raised.alarm_id, "nurse:n-1", h.now + 1))
    h.condition(None)
    assert [p for _, p, _ in h.devices.sent] == ["red", "off"]
    h.dispatch.durable([h.lc.close(raised.alarm_id, "nurse:n-1", h.now + 2)])
    assert h.active_ids() == []
    ids = [i for _, _, i in h.devices.sent]
    assert ids == sorted(set(ids)) and ids[0] >= 5000  # ms since the session opened


def test_no_device_connected_then_told_when_one_connects() -> None:
    h = Harness(NotificationPolicy(), 12 * 60)
    h.condition(OR, "news2")
    assert h.devices.sent == [] and "device pending" in h.details()[1]
    h.devices.sessions["ox-1"] = FakeSession(b"S" * 8, h.now)
    h.devices.connected.add("ox-1")
    h.dispatch.device_ready("ox-1")
    assert [p for _, p, _ in h.devices.sent] == ["orange"]
    h.dispatch.tick()  # unchanged: not sent again
    assert len(h.devices.sent) == 1
    h.devices.sessions["ox-1"] = FakeSession(b"T" * 8, h.now)  # a new session
    h.dispatch.device_ready("ox-1")
    assert [p for _, p, _ in h.devices.sent] == ["orange", "orange"]


def test_quiet_hours_hold_a_yellow_until_they_end_but_never_a_red() -> None:
    h = Harness(NotificationPolicy(quiet_hours=NIGHT), 6 * 60 + 58)
    h.devices.sessions["ox-1"] = FakeSession(b"K" * 8, h.now)
    h.devices.connected.add("ox-1")
    h.condition(Y, "pr:high")
    # The device is told what the gateway wants shown: nothing, while the patient sleeps.
    assert [p for _, p, _ in h.devices.sent] == ["off"] and h.dispatch.local_notifications == 0
    assert h.details() == ["centre", "device deferred: quiet hours",
                           "local deferred: quiet hours"]
    h.now += 60  # 06:59: still quiet
    h.dispatch.tick()
    assert len(h.devices.sent) == 1
    h.condition(R, "spo2:low")
    assert [p for _, p, _ in h.devices.sent] == ["off", "red"]
    assert h.dispatch.local_notifications == 1
    h.now += 61  # 07:00:01: quiet hours over, the yellow alarm still holds
    h.dispatch.tick()
    assert h.dispatch.local_notifications == 2
    assert h.details()[-2:] == ["device ox-1 (after quiet hours)", "local (after quiet hours)"]
    assert [p for _, p, _ in h.devices.sent] == ["off", "red"]  # red outranks the yellow


def test_a_held_notification_lapses_when_the_alarm_ended_in_quiet_hours() -> None:
    h = Harness(NotificationPolicy(quiet_hours=NIGHT), 23 * 60)
    h.condition(B, "battery-low:ox-1")
    h.condition(None, "battery-low:ox-1")
    h.now += 9 * 3600  # 08:00
    h.dispatch.tick()
    assert h.dispatch.local_notifications == 0 and len(h.dispatch.deferrals) == 0


def test_the_active_set_is_republished_after_a_reconnect_only() -> None:
    h = Harness(NotificationPolicy(), 12 * 60)
    h.condition(OR, "news2")
    count = len(h.published)
    h.dispatch.tick()
    assert len(h.published) == count  # same content, same link: nothing new
    h.epoch = None  # disconnected: nothing is published
    h.dispatch.tick()
    h.epoch = 1  # reconnected
    h.dispatch.tick()
    assert len(h.published) == count + 1 and h.published[-1] == h.published[-2]


def test_notify_command_gets_grade_condition_and_id_only(tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {out}\n')
    script.chmod(0o700)

    async def scenario() -> None:
        h = Harness(NotificationPolicy(notify_command=(str(script), "--from", "gw")), 600)
        [raised] = h.condition(R)
        await h.dispatch.stop()
        assert out.read_text().split("\n")[:-1] == ["--from", "gw", "red", "spo2:low",
                                                    raised.alarm_id]
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_missing_notify_command_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        h = Harness(NotificationPolicy(notify_command=("/nonexistent/notify",)), 600)
        h.condition(R)
        await h.dispatch.stop()
        assert h.details() == ["centre", "device pending: no device connected, told when "
                               "one connects", "local"]
    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert any("could not start" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- the agent, real mosquitto


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    built = integration.make_rig(tmp_path)
    yield built
    integration.close_rig(built)


def _utc_window_around_now() -> dict[str, Any]:
    minute = int(time.time() // 60) % 1440
    fmt = "{:02d}:{:02d}".format
    start, end = (minute - 90) % 1440, (minute + 90) % 1440
    return {"timezone": "UTC", "quiet_hours": {"start": fmt(start // 60, start % 60),
                                               "end": fmt(end // 60, end % 60)}}


def test_red_reaches_centre_and_device_and_quiet_hours_hold_a_yellow_only(rig: Rig) -> None:


    def sys_reading(i: int) -> None:  # a spot blood pressure: fires at once
        if i in (10, 60):
            loop.device.send([("sys", 105 if i == 10 else 85)])

    loop = rig.device("ox-1", interval=0.05, hook=sys_reading)

    async def scenario() -> None:
        config = rig.config(alarms={"notify": _utc_window_around_now()})
        service = await integration.started(config)
        loop.start()
        try:
            def alarm(grade: str) -> Any:
                return next((a for a in rig.centre.active_alarms(GW)
                             if a.key == "sys:low" and a.grade == grade), None)
            assert await until(lambda: alarm("yellow") is not None)
            yellow = alarm("yellow")
            assert await until(lambda: len(rig.centre.store.alarm_steps(yellow.id)) >= 4)
            details = [(s.actor, s.detail) for s in rig.centre.store.alarm_steps(yellow.id)
                       if s.kind == "notified"]
            assert details == [("policy", "centre"),
                               ("policy", "device deferred: quiet hours"),
                               ("policy", "local deferred: quiet hours")]
            assert loop.device.showing() in (None, "off")  # held back: the patient sleeps
            assert await until(lambda: alarm("red") is not None)
            assert await until(lambda: loop.device.showing() == "red")
            assert await until(lambda: len([s for s in rig.centre.store.alarm_steps(yellow.id)
                                            if s.kind == "notified"]) >= 6)
            red_notes = [s.detail for s in rig.centre.store.alarm_steps(yellow.id)
                         if s.kind == "notified"][3:]
            assert red_notes == ["centre", "device ox-1", "local"]
            assert loop.device.commands_refused == 0
        finally:
            loop.stop_sending.set()
            await service.stop("test over")
    integration.play(scenario)
