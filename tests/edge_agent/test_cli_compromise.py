"""`vitalbridge device compromise DEV --reason ...` through the CLI entry point, with the agent
running (AgentService against a real mosquitto, the reference centre and firmware stand-ins on
real PTYs) and with the agent stopped (the inbox entry waits for the next start).

Running: exit 0 and "the running agent acted"; the device's live session is ended before the
command returns, so its next sealed batch is quarantined, never acknowledged or delivered,
and a new handshake is refused, while the other device carries on; the centre stores the
lifecycle event and shows the orange `compromised:<dev>` alarm for the bound patient; the
key journal and the signed event journal record the step with the technician as actor.
Stopped: exit 0, the output says the entry is queued for the next start; the agent processes
it when it starts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_technician import command_runner, journal_entries

from edge_agent.commands import common
from edge_agent.inbox.store import InboxStore
from edge_agent.pipeline.sessions import WITHDRAWN
from edge_agent.registry import Registry
from protocol import messages
from simulator.agent_home import FirmwareStandIn, write_gateway_state
from simulator.centre import Centre
from tests.edge_agent.test_service_integration import (
    GW,
    Rig,
    close_rig,
    journal_rows,
    make_rig,
    started,
    until,
)

ACTOR = "technician:t-0042"  # command_runner runs as USER=t-0042
REASON = "device lost on the ward"
SCENARIO_S = 40.0


@pytest.fixture
def vb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.setenv("COLUMNS", "200")
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    built = make_rig(tmp_path)
    write_gateway_state(built.home)
    monkeypatch.setenv("VITALBRIDGE_DATA_DIR", str(built.home.data_dir))
    yield built
    close_rig(built)


def stand_in(rig: Rig, device_id: str) -> FirmwareStandIn:
    return FirmwareStandIn(rig.home.devices[device_id], rig.home.gateway_x25519_public,
                           rig.ptys[device_id])


def settle(device: FirmwareStandIn, timeout: float) -> bool:
    """Poll until every batch sent is acknowledged (False when some never is)."""
    deadline = time.monotonic() + timeout
    while device.unacked() and time.monotonic() < deadline:
        device.poll(0.05)
        device.resend_unacked(older_than_s=0.5)
    return device.unacked() == 0


def quarantined(rig: Rig, device_id: str) -> list[str]:
    return [r[0] for r in journal_rows(rig.home.data_dir, "SELECT reason FROM quarantine WHERE "
                                       "device_id = ? ORDER BY id", device_id)]


def centre_lifecycle_events(centre: Centre, device_id: str) -> list[dict[str, Any]]:
    """The key events the centre stored (messages table) about `device_id`."""
    with sqlite3.connect(centre.config.database) as conn:
        payloads = [bytes(r[0]) for r in conn.execute(
            "SELECT payload FROM messages WHERE kind = 'event'")]
    found = []
    for payload in payloads:
        kind, body = messages.decode(payload)
        event = body.get("lifecycle") if kind == "event" and isinstance(body, dict) else None
        if event is not None and event.get("holder") == device_id:
            found.append(event)
    return found


def orange_compromise_alarm(centre: Centre, device_id: str, patient: str) -> bool:
    return any(a.key == f"compromised:{device_id}" and a.grade == "orange"
               and a.patient == patient for a in centre.active_alarms(GW))


def assert_key_journal_records(rig: Rig, device_id: str, at: int) -> list[str]:
    """Every key of the device (signing, agreement and the session keys the agent recorded)
    carries the compromise step, by the technician -> their kids."""
    with Registry.open_in(rig.home.data_dir) as registry:
        assert registry.device(device_id).status == "compromised"
        keys = registry.keys("device", device_id)
        assert {"signing", "agreement"} <= {k.purpose for k in keys}
        for key in keys:
            [step] = [s for s in key.steps if s.step == "compromised"]
            assert (step.actor, step.reason, step.at) == (ACTOR, REASON, at)
        return sorted(k.kid for k in keys)


def test_a_compromise_reaches_the_running_agent_at_once(rig: Rig, vb: Any) -> None:
    async def scenario() -> tuple[Any, FirmwareStandIn]:
        service = await started(rig.config())
        victim, bystander = stand_in(rig, "ox-1"), stand_in(rig, "ox-2")
        try:
            for device in (victim, bystander):
                await asyncio.to_thread(device.handshake, 10)
                device.send([("spo2", 97), ("pr", 72)])
                assert await asyncio.to_thread(settle, device, 10)
            assert victim.session is not None
            kid = victim.session.kid

            result = await asyncio.to_thread(vb, "device", "compromise", "ox-1", "--reason",
                                             REASON, "--wait", "10", "--json")
            # ended before the command returned: the verifier holds no session of ox-1
            sessions = service.verifier.sessions
            assert sessions.of_device("ox-1") == []
            ended = sessions.ended(kid)
            assert ended is not None and ended[0].startswith(WITHDRAWN) and REASON in ended[0]
            assert [s.device_id for s in sessions.of_device("ox-2")] == ["ox-2"]

            before = len(quarantined(rig, "ox-1"))
            first = victim.send([("spo2", 88), ("pr", 130)])
            assert await until(lambda: len(quarantined(rig, "ox-1")) > before, 5)
            assert not await asyncio.to_thread(settle, victim, 1.5)  # never acknowledged
            with pytest.raises(TimeoutError):  # no new session for its keys either
                await asyncio.to_thread(victim.handshake, 2.0, 0.5)

            bystander.send([("spo2", 96), ("pr", 70)])
            assert await asyncio.to_thread(settle, bystander, 10)

            assert await until(lambda: orange_compromise_alarm(rig.centre, "ox-1", "p-0001"))
            assert await until(lambda: bool(centre_lifecycle_events(rig.centre, "ox-1")))
            assert not any(r["seq"] >= first for r in rig.centre.store.readings("ox-1"))
            assert {r["seq"] for r in rig.centre.store.readings("ox-2")} == {0, 1, 2, 3}
            return result, victim
        finally:
            await service.stop("test over")

    result, victim = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_S))
    assert result.status == 0, result.err
    outcome = result.json
    assert (outcome["device_id"], outcome["state"], outcome["reason"]) == \
        ("ox-1", "compromised", REASON)
    assert outcome["agent"]["state"] == "accepted", outcome["agent"]
    assert "1 live sessions withdrawn" in outcome["agent"]["reason"]
    assert "orange technical alarm raised" in outcome["agent"]["reason"]
    at = common.parse_instant("at", outcome["at"])
    kids = assert_key_journal_records(rig, "ox-1", at)
    assert sorted(k["kid"] for k in outcome["keys"]) == kids
    [event] = centre_lifecycle_events(rig.centre, "ox-1")
    assert (event["kind"], event["at"]) == ("compromised", at)
    assert sorted(event["keys"]) == kids
    assert any("withdrawn" in reason for reason in quarantined(rig, "ox-1"))

    entries = journal_entries(rig.home.data_dir)  # one chain, CLI and agent writing it
    compromised = [e for e in entries if e.kind == "key.compromised"]
    assert sorted(e.details["key_id"] for e in compromised) == kids
    assert all(e.actor == ACTOR and e.details["reason"] == REASON for e in compromised)
    assert any(e.kind == "maintenance.fault" and e.actor == ACTOR
               and e.subject == "device:ox-1" for e in entries)


def test_a_compromise_while_the_agent_is_stopped_is_processed_at_its_start(rig: Rig,
                                                                          vb: Any) -> None:
    result = vb("device", "compromise", "ox-1", "--reason", REASON, "--wait", "0.5")
    assert result.status == 0, result.err
    text = " ".join(result.out.split())
    assert "ox-1 compromised" in text and "2 keys" in text
    assert "the agent has not acted yet (not running?)" in text
    assert "when it processes inbox entry" in text
    with InboxStore.open(rig.home.data_dir) as inbox:
        [entry] = inbox.open_entries()
        assert (entry.kind, entry.actor, entry.outcome) == ("device-compromised", ACTOR, None)

    async def scenario() -> None:
        service = await started(rig.config())
        try:
            assert await until(lambda: orange_compromise_alarm(rig.centre, "ox-1", "p-0001"))
            assert await until(lambda: bool(centre_lifecycle_events(rig.centre, "ox-1")))
            with pytest.raises(TimeoutError):  # the device cannot open a session
                await asyncio.to_thread(stand_in(rig, "ox-1").handshake, 2.0, 0.5)
            assert service.verifier.sessions.of_device("ox-1") == []
        finally:
            await service.stop("test over")

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_S))
    with InboxStore.open(rig.home.data_dir) as inbox:
        done = inbox.get(entry.id)
    assert done.outcome == "accepted", done
    assert "orange technical alarm raised" in done.reason
    assert not any(a.key == "compromised:ox-2" for a in rig.centre.active_alarms(GW))


def test_compromise_refusals_change_nothing(rig: Rig, vb: Any) -> None:
    for argv, message in ((("ghost-1", "--reason", REASON), "ghost-1"),
                          (("ox-1", "--reason", "  "), "--reason"),
                          (("ox-1", "--reason", "x\x1b[2J"), "--reason"),
                          (("ox-1", "--reason", REASON, "--wait", "-1"), "--wait")):
        result = vb("device", "compromise", *argv)
        assert result.status == 2, (argv, result.out, result.err)
        assert message in result.err and "Traceback" not in result.err
    with Registry.open_in(rig.home.data_dir) as registry:
        assert registry.device("ox-1").status == "active"
    with InboxStore.open(rig.home.data_dir) as inbox:
        assert inbox.open_entries() == []
