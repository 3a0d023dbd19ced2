"""One scale-benchmark worker process: many real gateways on one event loop.

Each gateway is a real `AgentService` (its own data dir, registry, journal, event journal,
alarm rules, Delivery and MQTT connection) with no serial or BLE link configured. The one
layer bypassed is the device transport: instead of COBS frames over a PTY or GATT writes,
each device's messages are submitted to the gateway's `Reception` as the serial supervisor
would submit them (`Inbound(link, received_at, message=...)`), and the gateway's replies
(accepts, device-acks) come back through `_reply` to the in-process devices.

The parent drives the worker over a multiprocessing pipe (commands below, answered in
order); `generated` is a shared counter of readings submitted so far, read every second by
the parent for the backlog.

    ("start",)                -> ("started", {})  (after ("provisioned", {gw: public key}))
    ("prepare", per_gateway)  -> ("prepared", {"seal_s_per_batch": s, "handshakes": n})
    ("run", per_gateway, t0, window_s, profile) -> ("ran", StepOutput as a dict)
    ("stop",)                 -> ("stopped", {})
"""

from __future__ import annotations

import asyncio
import copy
import cProfile
import gc
import io
import logging
import pstats
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from edge_agent.agent.reception import Inbound, LinkRef
from edge_agent.config import parse_config
from edge_agent.service import AgentService
from protocol.errors import ProtocolError
from simulator.agent_home import Home, provision_home
from simulator.scale.devices import Emission, ScaleDevice

HANDSHAKE_TIMEOUT_S = 60.0
TICK_S = 0.005  # emission granularity: a due message waits at most this long


def device_ids(gateway_id: str, count: int) -> list[str]:
    return [f"{gateway_id}-d{index:03d}" for index in range(count)]


@dataclass
class StepOutput:
    generated: dict[str, int] = field(default_factory=dict)  # device -> readings submitted
    messages: int = 0
    late_s_max: float = 0.0  # worst lag of a submission behind its due time
    sealed_late_s: float = 0.0  # the window was still being sealed this long after t0
    shed: int = 0  # firmware messages the gateways' receptions shed in the step
    acks: int = 0  # device-acks the gateways sent back in the step
    unacked_devices: int = 0  # devices whose last batch no device-ack covered 2 s after
    profile: str | None = None


class InProcessGateway(AgentService):
    """AgentService whose device replies go to in-process devices, not a serial port."""

    def __init__(self, *args: Any, on_reply: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_reply = on_reply

    def _reply(self, link: LinkRef, payload: bytes) -> None:
        self._on_reply(link.device_id, payload)


class Worker:
    """The gateways and devices of one process."""

    def __init__(self, work: Path, gateway_ids: list[str], max_per_gateway: int,
                 broker_port: int, generated: Synchronized) -> None:
        self.work = work
        self.gateway_ids = gateway_ids
        self.max_per_gateway = max_per_gateway
        self.broker_port = broker_port
        self.generated = generated
        self.homes: dict[str, Home] = {}
        self.services: dict[str, InProcessGateway] = {}
        self.devices: dict[str, ScaleDevice] = {}  # device id -> device
        self.gateway_of: dict[str, str] = {}
        self._accepts: dict[str, asyncio.Future[bool]] = {}
        self._acks: dict[str, int] = {}

    def provision(self) -> dict[str, bytes]:
        """Commission every gateway with all the devices it may ever need (each bound to a
        patient of its own, so the rules run for every reading) -> gateway public keys."""
        for gw in self.gateway_ids:
            ids = device_ids(gw, self.max_per_gateway)
            home = provision_home(self.work / gw, gw,
                                  [(d, "p-" + d.replace("gw-", "")) for d in ids])
            self.homes[gw] = home
            for index, device in enumerate(ids):
                self.devices[device] = ScaleDevice(home.devices[device], index,
                                                   home.gateway_x25519_public)
                self.gateway_of[device] = gw
        return {gw: home.gateway_public for gw, home in self.homes.items()}

    async def start(self) -> None:
        for gw, home in self.homes.items():
            config = parse_config({
                "gateway": {"id": gw, "data_dir": str(home.data_dir)},
                "broker": {"host": "127.0.0.1", "port": self.broker_port},
                "logging": {"level": "WARNING"},
            }, self.work / gw / "gateway.toml")
            service = InProcessGateway(config, on_reply=self._reply)
            await service.start()
            self.services[gw] = service

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop("scale bench done") for s in self.services.values()))

    # -- replies from the gateways (event loop) ---------------------------------------------

    def _reply(self, device_id: str, payload: bytes) -> None:
        waiting = self._accepts.get(device_id)
        if waiting is not None and not waiting.done():
            try:
                accepted = self.devices[device_id].accept(payload)
            except ProtocolError:
                accepted = False
            if accepted:
                waiting.set_result(True)
            return
        self._acks[device_id] = self._acks.get(device_id, 0) + 1

    def _link(self, device_id: str) -> LinkRef:
        return LinkRef("serial", "link-" + device_id, device_id)

    def _submit(self, device_id: str, message: bytes) -> None:
        service = self.services[self.gateway_of[device_id]]
        service.reception.submit(Inbound(self._link(device_id), time.time(), message=message))

    async def handshakes(self, active: list[str]) -> int:
        """Open a session for every active device that has none; -> how many were opened."""
        fresh = [d for d in active if self.devices[d].session is None]
        loop = asyncio.get_running_loop()
        for start in range(0, len(fresh), 200):  # in groups: never shed a hello
            group = fresh[start:start + 200]
            for device in group:
                self._accepts[device] = loop.create_future()
                self._submit(device, self.devices[device].hello())
            await asyncio.wait_for(asyncio.gather(*(self._accepts[d] for d in group)),
                                   HANDSHAKE_TIMEOUT_S)
            for device in group:
                del self._accepts[device]
        return len(fresh)

    def active(self, per_gateway: int) -> list[str]:
        return [d for gw in self.gateway_ids for d in device_ids(gw, per_gateway)]

    async def prepare(self, per_gateway: int) -> dict[str, Any]:
        opened = await self.handshakes(self.active(per_gateway))
        probe = copy.deepcopy(self.devices[self.active(1)[0]])  # its chain must not advance
        began = time.perf_counter()
        probe.seal_window(time.time(), 20, 0.0)
        return {"seal_s_per_batch": (time.perf_counter() - began) / 20, "handshakes": opened}

    async def run(self, per_gateway: int, t0: float, window_s: int,
                  profile: bool) -> StepOutput:
        active = self.active(per_gateway)
        schedule: list[Emission] = []
        for device in active:
            phase = self.devices[device].index / max(1, per_gateway)
            schedule.extend(self.devices[device].seal_window(t0, window_s, phase))
        schedule.sort(key=lambda e: e.due)
        out = StepOutput(generated=dict.fromkeys(active, 0))
        out.sealed_late_s = max(0.0, time.time() - t0)
        shed_before = sum(s.reception.counters.shed for s in self.services.values())
        self._acks = {}
        gc.collect()
        gc.freeze()  # the sealed window is long-lived: keep the GC from re-scanning it
        profiler = cProfile.Profile() if profile else None
        await asyncio.sleep(max(0.0, t0 - time.time()))
        if profiler:
            profiler.enable()
        position = 0
        while position < len(schedule):
            now = time.time()
            readings = 0
            while position < len(schedule) and schedule[position].due <= now:
                emission = schedule[position]
                self._submit(emission.device_id, emission.message)
                out.generated[emission.device_id] += emission.readings
                readings += emission.readings
                out.late_s_max = max(out.late_s_max, now - emission.due)
                position += 1
            if readings:
                with self.generated.get_lock():
                    self.generated.value += readings
            await asyncio.sleep(TICK_S)
        out.messages = len(schedule)
        await asyncio.sleep(2.0)  # device-acks of the last second
        if profiler:
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
            out.profile = text.getvalue()
        gc.unfreeze()
        out.shed = sum(s.reception.counters.shed for s in self.services.values()) - shed_before
        out.acks = sum(self._acks.values())
        out.unacked_devices = sum(1 for d in active if not self._acks.get(d))
        return out


def worker_main(work: str, gateway_ids: list[str], max_per_gateway: int, broker_port: int,
                generated: Synchronized, conn: Connection) -> None:
    """Process entry point (multiprocessing, spawn)."""
    logging.basicConfig(level=logging.ERROR)
    worker = Worker(Path(work), gateway_ids, max_per_gateway, broker_port, generated)
    conn.send(("provisioned", worker.provision()))
    asyncio.run(_serve(worker, conn))


async def _serve(worker: Worker, conn: Connection) -> None:
    await asyncio.to_thread(conn.recv)  # ("start",): once the centres are subscribed
    await worker.start()
    conn.send(("started", {}))
    try:
        while True:
            command = await asyncio.to_thread(conn.recv)
            if command[0] == "prepare":
                conn.send(("prepared", await worker.prepare(command[1])))
            elif command[0] == "run":
                out = await worker.run(command[1], command[2], command[3], command[4])
                conn.send(("ran", asdict(out)))
            elif command[0] == "stop":
                break
    finally:
        await worker.stop()
        conn.send(("stopped", {}))
