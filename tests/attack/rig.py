"""The attack rig: the REAL edge agent behind a real mosquitto that runs the generated TLS +
ACL configuration, the reference centre connected over TLS with its own client certificate,
and firmware stand-ins on real PTY pairs.

    TlsSite, TlsBroker, Probe   simulator/broker_tls.py (shared with test_broker_acl.py)
    AgentRig  provision_home + TlsBroker + Centre(TLS) + PTYs + AgentService on its own thread

The agent runs its event loop on a background thread so the attack tests stay synchronous;
`rig.call(coroutine_function)` runs something on that loop. The attacker writes raw frames on
the device end of a PTY (`rig.inject`) or publishes with its own MQTT credential.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config import parse_config
from edge_agent.eventlog import EventLogFile
from edge_agent.serial_ingest import PortState
from edge_agent.service import AgentService
from protocol.frames import encode_frame
from simulator.agent_home import FirmwareStandIn, Home, provision_home
from simulator.broker_tls import (
    CENTRE_NAME,
    Credential,
    Probe,
    TlsBroker,
    TlsSite,
    mosquitto_available,
    plain_connect_answer,
)
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.serial_devices import PtySerialDevice

# what the attack tests take from here (the TLS parts live in simulator/broker_tls.py)
__all__ = ["CENTRE_NAME", "DEVICES", "GW", "NOT_AUTHORIZED", "OTHER_GW", "WAIT_S", "AgentRig",
           "Credential", "Probe", "TlsBroker", "TlsSite", "eventually", "mosquitto_available",
           "plain_connect_answer"]

GW = "gw-1"
OTHER_GW = "gw-2"
DEVICES = (("ox-1", "p-0001"), ("ox-2", "p-0002"))
WAIT_S = 10.0
NOT_AUTHORIZED = 0x87


def eventually(check: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# ---------------------------------------------------------------- the running agent


@dataclass
class AgentRig:
    tmp: Path
    site: TlsSite
    home: Home
    broker: TlsBroker
    centre: Centre
    ptys: dict[str, PtySerialDevice]
    service: AgentService | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stopping: asyncio.Event | None = None
    devices: dict[str, FirmwareStandIn] = field(default_factory=dict)

    # -- start / stop -------------------------------------------------------------------------

    @classmethod
    def start(cls, tmp: Path, site: TlsSite, provision_at: int | None = None,
              prepare: Callable[[Home], None] | None = None) -> AgentRig:
        """`provision_at`: commissioning time (in the past: certificates already expired);
        `prepare(home)` edits the registry before the agent starts."""
        home = provision_home(tmp / "data", GW, DEVICES, now=provision_at)
        if prepare is not None:
            prepare(home)
        broker = TlsBroker(tmp / "broker", site.files).start()
        centre = cls.new_centre(tmp, site, home, broker)
        ptys = {}
        for device, _ in DEVICES:
            ptys[device] = PtySerialDevice(tmp / f"tty-{device}")
            ptys[device].plug()
        rig = cls(tmp, site, home, broker, centre, ptys)
        rig._run_agent()
        return rig

    @staticmethod
    def new_centre(tmp: Path, site: TlsSite, home: Home, broker: TlsBroker) -> Centre:
        """The reference centre over TLS with its own client certificate."""
        centre = Centre(CentreConfig(
            port=broker.port, database=tmp / "centre.db",
            anchor=TrustAnchor(org_ca_public=home.org_public),
            client_id=f"{CENTRE_NAME}-{time.time_ns()}", gap_deadline_s=120.0, tick_s=0.1,
            session_expiry_s=0, synchronous="NORMAL"))
        centre_tls = site.clients[CENTRE_NAME]
        centre.client.tls_set(ca_certs=str(site.files.cafile), certfile=str(centre_tls.cert),
                              keyfile=str(centre_tls.key))
        return centre.start()

    def stop_centre(self) -> None:
        self.centre.stop()

    def start_centre(self) -> None:
        """A new centre instance on the same store (the old one was stopped)."""
        self.centre = self.new_centre(self.tmp, self.site, self.home, self.broker)

    def _config(self) -> Any:
        gateway_tls = self.site.clients[GW]
        return parse_config({
            "gateway": {"id": GW, "data_dir": str(self.home.data_dir)},
            "broker": {"host": "127.0.0.1", "port": self.broker.port, "keepalive_s": 5,
                       "tls": {"ca": str(self.site.files.cafile), "cert": str(gateway_tls.cert),
                               "key": str(gateway_tls.key)}},
            "uplink": {"receipt_timeout_s": 2.0, "sweep_interval_s": 0.5,
                       "stop_timeout_s": 2.0},
            "serial": [{"name": f"port-{device}", "device": device, "driver": "vitalbridge",
                        "path": str(pty.path)} for device, pty in self.ptys.items()],
            "eventlog": {"checkpoint_interval_s": 1.0},
        }, self.tmp / "gateway.toml")

    def _run_agent(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            service = AgentService(self._config())
            try:
                await service.start()
                for port in service.config.serial:
                    async with asyncio.timeout(5):
                        await service.serial.wait_for_state(port.port.name, PortState.OPEN)
                self.service = service
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                await service.stop("start failed")
                return
            ready.set()
            await self._stopping.wait()
            await service.stop("attack test over")

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True,
                                        name="attack-agent")
        self._thread.start()
        if not ready.wait(20) or failure:
            raise RuntimeError(f"agent did not start: {failure}")

    def call(self, make: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 10) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.service is not None

    def stop(self) -> None:
        if self.loop is not None and self._stopping is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(15)
        for pty in self.ptys.values():
            pty.close()
        self.centre.stop()
        self.broker.stop()

    # -- devices and the attacker's pen -------------------------------------------------------

    def device(self, device_id: str) -> FirmwareStandIn:
        if device_id not in self.devices:
            stand_in = FirmwareStandIn(self.home.devices[device_id],
                                       self.home.gateway_x25519_public, self.ptys[device_id])
            stand_in.handshake(timeout=10)
            self.devices[device_id] = stand_in
        return self.devices[device_id]

    def inject(self, device_id: str, payload: bytes) -> None:
        """Raw bytes (already a message envelope) framed onto the device's serial line."""
        self.ptys[device_id].write(encode_frame(payload))

    def inject_raw(self, device_id: str, data: bytes) -> None:
        self.ptys[device_id].write(data)

    def settle(self, device: FirmwareStandIn, timeout: float = WAIT_S) -> bool:
        """Poll the device until its outbox is empty (every batch acknowledged)."""
        deadline = time.monotonic() + timeout
        while device.unacked() and time.monotonic() < deadline:
            device.poll(0.05)
            device.resend_unacked(older_than_s=0.5)
        return device.unacked() == 0

    def honest_delivery(self, device_id: str, batches: int = 5) -> set[int]:
        """After an attack: genuine batches must still be acknowledged and reach the centre.
        Returns the seqs delivered."""
        device = self.device(device_id)
        seqs: set[int] = set()
        for _ in range(batches):
            first = device.send([("spo2", 97), ("pr", 72)])
            seqs |= {first, first + 1}
            device.poll(0.02)
        assert self.settle(device), f"{device.unacked()} honest batches never acknowledged"
        assert seqs <= device.acked
        assert eventually(lambda: seqs <= self.centre_seqs(device_id)), \
            sorted(seqs - self.centre_seqs(device_id))
        assert self.alive(), "the agent died"
        return seqs

    # -- what the agent recorded --------------------------------------------------------------

    def centre_seqs(self, device_id: str) -> set[int]:
        return {row["seq"] for row in self.centre.store.readings(device_id)}

    def journal(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home.data_dir / "journal.sqlite3") as conn:
            return conn.execute(sql, args).fetchall()

    def quarantine_reasons(self, device_id: str | None = None) -> list[str]:
        if device_id is None:
            return [r[0] for r in self.journal("SELECT reason FROM quarantine ORDER BY id")]
        return [r[0] for r in self.journal(
            "SELECT reason FROM quarantine WHERE device_id = ? ORDER BY id", device_id)]

    def outcomes(self) -> dict[str, int]:
        assert self.service is not None
        return dict(self.service.reception.counters.by_outcome)

    def metric(self, name: str, **labels: str) -> float:
        """A counter from the agent's Prometheus exposition (0 when absent)."""
        assert self.service is not None
        text = self.call(self._exposition)
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
            if match and all(w in (match.group(1) or "") for w in wanted):
                total += float(match.group(2))
        return total

    async def _exposition(self) -> str:
        assert self.service is not None
        return self.service.metrics.exposition().decode()

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Entries of the agent's signed event log of `kind` (details only)."""
        path = self.home.data_dir / "events.sqlite3"
        log = EventLogFile.open_readonly(path)
        try:
            return [dict(e.details) for e in log.entries() if e.kind == kind]
        finally:
            log.close()
