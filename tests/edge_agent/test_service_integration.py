"""The whole edge agent service against real parts.

Each scenario runs `AgentService` in the test's event loop with a real mosquitto (started on a
free loopback port), the reference monitoring centre (simulator/centre: it stores every
reading once and answers with application receipts), serial devices on real PTY pairs
played by a CPython stand-in for the firmware (simulator/agent_home: session handshake,
sealed batches, checkpoints, an outbox re-sending what no device-ack covered), and BLE
devices on the bumble-backed virtual radio. Device threads block on pyserial, as a device
runs on its own.

The oracle for "nothing lost" is the device: every seq a device-ack confirmed must reach the
centre, and after the device stops, its outbox must drain (everything sent got acked).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.alarms.grades import Grade
from edge_agent.config import AgentConfig, parse_config
from edge_agent.eventlog import EventLogFile
from edge_agent.serial_ingest import PortState
from edge_agent.service import AgentService, BleBackends
from protocol import crypto
from protocol import limits as wire_limits
from simulator.agent_home import FirmwareStandIn, Home, provision_home
from simulator.broker import Broker
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.serial_devices import PtySerialDevice

GW = "gw-1"
DEVICES = (("ox-1", "p-0001"), ("ox-2", "p-0002"))
SCENARIO_S = 45.0


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    return await asyncio.to_thread(eventually, check, timeout)


def centre_seqs(centre: Centre, device: str) -> set[int]:
    return {row["seq"] for row in centre.store.readings(device)}


class DeviceLoop(threading.Thread):
    """A firmware stand-in sending a batch (SpO2 + pulse) every `interval` seconds, reading
    acks, re-sending its outbox; `hook(index)` runs before each batch (faults)."""

    def __init__(self, device: FirmwareStandIn, interval: float = 0.02,
                 spo2: Callable[[int], float] = lambda i: 97,
                 hook: Callable[[int], None] | None = None, checkpoint_every: int = 25) -> None:
        super().__init__(daemon=True, name=f"device-{device.keys.device_id}")
        self.device = device
        self.interval = interval
        self.spo2 = spo2
        self.hook = hook
        self.checkpoint_every = checkpoint_every
        self.stop_sending = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.batches = 0

    def run(self) -> None:
        try:
            self.device.handshake(timeout=10)
            while not self.stop_sending.is_set():
                if self.hook is not None:
                    self.hook(self.batches)
                self.device.send([("spo2", self.spo2(self.batches)), ("pr", 72)])
                self.batches += 1
                if self.batches % self.checkpoint_every == 0:
                    self.device.send_checkpoint()
                self.device.poll(self.interval)
                self.device.resend_unacked(older_than_s=1.0)
            self.device.send_checkpoint()
            deadline = time.monotonic() + 20
            while self.device.unacked() and time.monotonic() < deadline:
                self.device.poll(0.05)
                self.device.resend_unacked(older_than_s=0.5)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.finished.set()

    def sent(self) -> set[int]:
        return set(range(self.device.next_seq))


@dataclass
class Rig:
    tmp: Path
    home: Home
    broker: Broker
    centre: Centre
    ptys: dict[str, PtySerialDevice]
    loops: list[DeviceLoop] = field(default_factory=list)

    def config(self, **sections: dict[str, Any]) -> AgentConfig:
        doc: dict[str, Any] = {
            "gateway": {"id": GW, "data_dir": str(self.home.data_dir)},
            "broker": {"host": "127.0.0.1", "port": self.broker.port, "keepalive_s": 5},
            "uplink": {"receipt_timeout_s": 2.0, "sweep_interval_s": 0.5,
                       "stop_timeout_s": 2.0},
            "serial": [{"name": f"port-{device}", "device": device, "driver": "vitalbridge",
                        "path": str(pty.path)} for device, pty in self.ptys.items()],
            "eventlog": {"checkpoint_interval_s": 1.0},
        }
        doc.update(sections)
        return parse_config(doc, self.tmp / "gateway.toml")

    def device(self, device_id: str, **options: Any) -> DeviceLoop:
        stand_in = FirmwareStandIn(self.home.devices[device_id],
                                   self.home.gateway_x25519_public, self.ptys[device_id])
        loop = DeviceLoop(stand_in, **options)
        self.loops.append(loop)
        return loop


def make_rig(tmp: Path, broker_config: str = "") -> Rig:
    home = provision_home(tmp / "data", GW, DEVICES)
    broker = Broker(tmp / "broker", extra_config=broker_config).start()
    centre = Centre(CentreConfig(port=broker.port, database=tmp / "centre.db",
                                 anchor=TrustAnchor(org_ca_public=home.org_public),
                                 client_id="centre-test", gap_deadline_s=120.0, tick_s=0.1,
                                 synchronous="NORMAL")).start()
    ptys = {}
    for device, _ in DEVICES:
        ptys[device] = PtySerialDevice(tmp / f"tty-{device}")
        ptys[device].plug()
    return Rig(tmp, home, broker, centre, ptys)


def close_rig(rig: Rig) -> None:
    for loop in rig.loops:
        loop.stop_sending.set()
    for pty in rig.ptys.values():
        pty.close()
    rig.centre.stop()
    rig.broker.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    built = make_rig(tmp_path)
    yield built
    close_rig(built)


def play(scenario: Callable[[], Any]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(SCENARIO_S):
            await scenario()
    asyncio.run(bounded())


async def started(config: AgentConfig, **kwargs: Any) -> AgentService:
    service = AgentService(config, **kwargs)
    await service.start()
    if service.serial is not None:
        async with asyncio.timeout(5):
            for port in config.serial:
                await service.serial.wait_for_state(port.port.name, PortState.OPEN)
    return service


async def finish(loop: DeviceLoop, centre: Centre, device: str, timeout: float = 20.0) -> None:
    """Stop sending; the outbox must drain and every acked seq must reach the centre."""
    loop.stop_sending.set()
    assert await asyncio.to_thread(loop.finished.wait, timeout + 5)
    assert loop.error is None, loop.error
    assert loop.device.unacked() == 0, f"{loop.device.unacked()} batches never acknowledged"
    assert loop.device.acked == loop.sent()
    assert await until(lambda: loop.device.acked <= centre_seqs(centre, device), timeout), \
        sorted(loop.device.acked - centre_seqs(centre, device))[:20]


def journal_rows(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "journal.sqlite3") as conn:
        return conn.execute(sql, args).fetchall()


# ---------------------------------------------------------------- broker outage and restart


@pytest.mark.parametrize("down_s", [1.5, 0.0], ids=["outage", "restart"])
def test_no_reading_is_lost_across_a_broker_outage_or_restart(rig: Rig, down_s: float) -> None:
    async def scenario() -> None:
        service = await started(rig.config())
        loop = rig.device("ox-1")
        loop.start()
        try:
            assert await until(lambda: len(centre_seqs(rig.centre, "ox-1")) >= 20)
            rig.broker.stop()
            await asyncio.sleep(down_s)
            acked_while_down = len(loop.device.acked)
            rig.broker.start()
            await asyncio.sleep(1.0)
            assert len(loop.device.acked) > acked_while_down  # the journal kept acknowledging
            await finish(loop, rig.centre, "ox-1")
            assert service.delivery.counters().reconnects >= 1
            exposition = service.metrics.exposition().decode()
            assert 'vitalbridge_ingest_readings_total{transport="serial",verdict="sealed"}' \
                in exposition
            # every reading row is confirmed by a receipt in the end (re-sends included)
            assert await until(lambda: journal_rows(
                rig.home.data_dir, "SELECT count(*) FROM messages WHERE kind = 'readings' "
                "AND state != 'received'") == [(0,)])
        finally:
            await service.stop("test over")
    play(scenario)


# ---------------------------------------------------------------- refusals by the broker


def test_a_publish_the_broker_refuses_is_never_marked_sent(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic deny vb/v1/gw/{GW}/up/readings/ox-2\ntopic readwrite #\n")
    rig = make_rig(tmp_path, f"acl_file {acl}\n")

    async def scenario() -> None:
        service = await started(rig.config())
        allowed, denied = rig.device("ox-1"), rig.device("ox-2")
        allowed.start()
        denied.start()
        try:
            assert await until(lambda: len(denied.device.acked) >= 10)
            assert await until(lambda: service.delivery.counters().refused >= 1)
            await finish(allowed, rig.centre, "ox-1")
            denied.stop_sending.set()
            assert await asyncio.to_thread(denied.finished.wait, 25)
            assert denied.device.acked == denied.sent()  # durable, so acknowledged
            assert "vb/v1/gw/gw-1/up/readings/ox-2" in service.delivery.counters().paused_streams
            assert await until(lambda: any(a.key == "broker-refusing"
                                           for a in rig.centre.active_alarms(GW)))
            exposition = service.metrics.exposition().decode()
            assert 'vitalbridge_publish_refused_total{reason_code="135"}' in exposition
        finally:
            await service.stop("test over")
        states = journal_rows(rig.home.data_dir, "SELECT DISTINCT state FROM messages WHERE "
                              "device_id = 'ox-2' AND kind = 'readings'")
        assert states == [("stored",)]
        assert journal_rows(rig.home.data_dir, "SELECT max(attempts) >= 1 FROM messages "
                            "WHERE device_id = 'ox-2'") == [(1,)]
        assert centre_seqs(rig.centre, "ox-2") == set()
        events = EventLogFile.open_readonly(rig.home.data_dir / "events.sqlite3")
        try:
            kinds = {entry.kind for entry in events.entries()}
        finally:
            events.close()
        assert "transmission.refused" in kinds and "transmission.receipt" in kinds

    try:
        play(scenario)
    finally:
        close_rig(rig)


# ---------------------------------------------------------------- serial faults


def test_serial_traffic_resumes_after_the_pty_is_closed_and_reopened(rig: Rig) -> None:
    async def scenario() -> None:
        service = await started(rig.config())
        loop = rig.device("ox-1")
        loop.start()
        try:
            assert await until(lambda: len(loop.device.acked) >= 20)
            rig.ptys["ox-1"].unplug()
            assert await until(lambda: service.serial.status("port-ox-1").state
                               is PortState.WAITING, 5)
            await asyncio.sleep(0.3)
            rig.ptys["ox-1"].plug()
            async with asyncio.timeout(10):
                await service.serial.wait_for_state("port-ox-1", PortState.OPEN)
            before = len(loop.device.acked)
            assert await until(lambda: len(loop.device.acked) >= before + 20)
            await finish(loop, rig.centre, "ox-1")
            status = service.serial.status("port-ox-1")
            assert status.disconnects >= 1 and status.opens >= 2
        finally:
            await service.stop("test over")
    play(scenario)


def test_garbage_on_the_serial_line_is_skipped_and_logged(rig: Rig,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    pty = rig.ptys["ox-1"]

    def garbage(index: int) -> None:
        if index % 10 == 5:
            pty.write(b"\x00\xff garbage \x13\x11" + bytes(range(1, 40)))

    async def scenario() -> None:
        service = await started(rig.config())
        loop = rig.device("ox-1", hook=garbage)
        loop.start()
        try:
            assert await until(lambda: loop.batches >= 40)
            await finish(loop, rig.centre, "ox-1")
            status = service.serial.status("port-ox-1")
            assert sum(status.notes.values()) >= 3
            assert status.driver_stats.get("bytes_discarded", 0) > 0
        finally:
            await service.stop("test over")

    with caplog.at_level(logging.WARNING):
        play(scenario)
    assert any("dropped bytes" in r.getMessage() and "port-ox-1" in r.getMessage()
               for r in caplog.records)


def test_device_acks_only_after_the_journal_commit(rig: Rig) -> None:
    commits: dict[int, float] = {}  # first seq -> when its append returned
    failing = threading.Event()

    async def scenario() -> None:
        service = await started(rig.config())
        journal = service.journal
        real_append = journal.append_many

        async def watched(messages: list[Any]) -> list[int]:
            if failing.is_set():
                raise OSError(28, "No space left on device (test)")
            await asyncio.sleep(0.05)  # a slow disk: an early ack would show
            ids = await real_append(messages)
            done = time.monotonic()
            for message in messages:
                if message.first_seq is not None and message.device_id == "ox-1":
                    commits.setdefault(message.first_seq, done)
            return ids

        journal.append_many = watched  # type: ignore[method-assign]
        loop = rig.device("ox-1")
        loop.start()
        try:
            assert await until(lambda: len(loop.device.acked) >= 10)
            failing.set()
            await asyncio.sleep(0.3)
            acked = set(loop.device.acked)
            sent_before_failure = loop.device.next_seq
            await asyncio.sleep(1.0)
            sent_during = set(range(sent_before_failure + 20, loop.device.next_seq))
            assert sent_during and not sent_during & loop.device.acked, \
                "acknowledged while the journal refused to commit"
            assert service.reception.counters.commit_failures >= 1
            failing.clear()
            await finish(loop, rig.centre, "ox-1")
            assert acked < loop.device.acked
        finally:
            await service.stop("test over")
        firsts = {first for first in commits}
        for seq, acked_at in loop.device.ack_times.items():
            first = max(f for f in firsts if f <= seq)
            assert acked_at >= commits[first], f"seq {seq} acknowledged before its commit"
    play(scenario)


# ---------------------------------------------------------------- BLE


def test_ble_notifications_resume_after_a_forced_disconnect(rig: Rig) -> None:
    from edge_agent.ble.virtual_radio import VirtualRadio
    from edge_agent.ble_ingest import ConnectionOptions, ConnectionState, ReconnectPolicy
    from simulator.ble_devices import HeartRateMonitor

    async def scenario() -> None:
        async with VirtualRadio() as radio:
            central = await radio.add_central()
            monitor = HeartRateMonitor("HR-Band")
            await monitor.attach(radio)
            options = ConnectionOptions(
                client_backend=central.client_backend, connect_timeout_s=10.0,
                setup_timeout_s=5.0,
                reconnect=ReconnectPolicy(initial_s=0.05, maximum_s=0.4, stable_after_s=5.0))
            config = rig.config(serial=[], ble={"devices": [
                {"name": "hr-band", "device": "hr-1", "address": monitor.address}]})
            service = await started(config, ble=BleBackends(central.scanner_backend,
                                                            central.client_backend, options))
            try:
                async with asyncio.timeout(10):
                    await service.ble.wait_for_state("hr-band", ConnectionState.CONNECTED)
                await monitor.wait_subscribed(monitor.measurement)
                await monitor.measure(hr=75)
                assert await until(lambda: len(rig.centre.store.readings("hr-1")) == 1)
                await monitor.drop_link()
                async with asyncio.timeout(10):
                    await service.ble.wait_for_state("hr-band", ConnectionState.CONNECTED)
                await monitor.wait_subscribed(monitor.measurement)
                await monitor.measure(hr=76)
                assert await until(lambda: len(rig.centre.store.readings("hr-1")) == 2)
                assert service.ble.status("hr-band").counters["connects"] >= 2
            finally:
                await service.stop("test over")
        rows = rig.centre.store.readings("hr-1")
        assert sorted(r["value"] for r in rows) == [75, 76]
        assert {r["verdict"] for r in rows} == {"attested"}
        assert all("unbound" in r["gateway_verdict"] for r in rows)
    play(scenario)


# ---------------------------------------------------------------- alarms and limits


def test_red_alarm_reaches_the_centre_is_acknowledged_and_limits_survive_a_restart(
        rig: Rig) -> None:
    async def scenario() -> None:
        config = rig.config()
        service = await started(config)
        loop = rig.device("ox-1", spo2=lambda i: 97 if i < 5 else 85, interval=0.05)
        loop.start()
        try:
            assert await until(lambda: any(a.key == "spo2:low" and a.grade == "red"
                                           for a in rig.centre.active_alarms(GW)))
            alarm = next(a for a in rig.centre.active_alarms(GW) if a.key == "spo2:low")
            assert rig.centre.acknowledge(alarm.id, "nurse:n-0001").wait()
            assert await until(lambda: any(a.id == alarm.id and a.acknowledged_by ==
                                           "nurse:n-0001" for a in rig.centre.active_alarms(GW)))
            now = int(time.time())
            command = wire_limits.build_command(
                rig.home.org_seed, crypto.random_bytes(16), "p-0001", now, now - 60,
                {"spo2": ("%", [("red", 80, None)])}, "dr-0001")
            assert rig.centre.send_limits(GW, command).wait()
            assert await until(lambda: _spo2_red_low(service) == 80)
            await finish(loop, rig.centre, "ox-1")
        finally:
            await service.stop("test over")
        restarted = await started(config)
        try:
            assert _spo2_red_low(restarted) == 80  # the applied command survived the restart
            assert restarted.alarms.lifecycle.alarm(alarm.id).acknowledged
        finally:
            await restarted.stop("test over")
        events = EventLogFile.open_readonly(rig.home.data_dir / "events.sqlite3")
        try:
            report = events.verify([rig.home.gateway_public])
            kinds = [entry.kind for entry in events.entries()]
        finally:
            events.close()
        assert report.ok and report.uncovered == 0
        assert {"alarm.raised", "alarm.acknowledged", "limits.changed", "agent.stopped",
                "reception.received", "key.activated"} <= set(kinds)
    play(scenario)


def _spo2_red_low(service: AgentService) -> float | None:
    limits = service.alarms.evaluator.limits.resolve("p-0001", time.time()).for_quantity("spo2")
    red = [band for band in limits.bands if band.grade is Grade.RED] if limits else []
    return red[0].low if red else None


# ---------------------------------------------------------------- refusing to start


def test_the_agent_refuses_to_start_on_unsafe_or_missing_state(tmp_path: Path) -> None:
    from edge_agent.service import AgentStartError

    home = provision_home(tmp_path / "data", GW, [])
    doc = {"gateway": {"id": GW, "data_dir": str(home.data_dir)},
           "broker": {"host": "127.0.0.1", "port": 1}}

    async def refused(config: AgentConfig) -> str:
        service = AgentService(config)
        with pytest.raises(AgentStartError) as caught:
            await service.start()
        await service.stop("refused")
        return str(caught.value)

    async def scenario() -> None:
        other = parse_config({**doc, "gateway": {**doc["gateway"], "id": "gw-other"}},
                             tmp_path / "g.toml")
        assert "'gw-other' is not in the registry" in await refused(other)
        key = home.keys_dir / "gateway-signing.key"
        key.chmod(0o644)
        assert "chmod 600" in await refused(parse_config(doc, tmp_path / "g.toml"))
        key.unlink()
        assert "no such key file" in await refused(parse_config(doc, tmp_path / "g.toml"))
    play(scenario)
