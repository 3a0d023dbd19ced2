"""A sealing BLE device of a fleet: the VitalBridge firmware service on the virtual radio,
living inside its gateway's process (simulator.fleet.launcher) next to the agent.

The device side of the protocol over `simulator.ble_devices.FirmwareLinkDevice` (the
firmware's GATT service: fragmented uplink notifications, downlink writes): session
handshake, a sealed (spo2, pr) batch every 1/rate s, a signed checkpoint every 10 batches,
an outbox re-sent until a device-ack covers it and replayed oldest first on every
(re)subscription.

Its "flash" is a JSON file under the run directory (`DeviceFlash`): seq counter, outbox
(each entry keeps the session it was sealed under, so acks naming an older session are
applied as the firmware applies them) and `truth`, the record of every reading sealed, which
the fleet process reads for the oracle's "generated". A file written before the batch is
sent: a reading exists only once it is in flash, so a SIGKILL of the host process (the
fleet's agent-kill, which is also this device's power cut) can lose RAM state (the session,
the hash chain) but never a reading that anyone saw. os.replace makes each write atomic for a
reader; no fsync, because the page cache outlives a killed process (a power cut of the
machine is not simulated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.ble.virtual_radio import VirtualRadio
from protocol import checkpoint, cose, crypto, device_link, messages, sealing, senml, session
from protocol.errors import ProtocolError
from simulator.ble_devices import FirmwareLinkDevice
from simulator.fleet.devices import CHECKPOINT_EVERY, RESEND_AFTER_S, Sealed, stable_vitals

log = logging.getLogger("vitalbridge.fleet.ble")

HANDSHAKE_WAIT_S = 2.0  # one hello, then hello again
POLL_S = 0.05


@dataclass
class OutboxEntry:
    session_id: bytes
    first: int
    last: int
    message: bytes


@dataclass
class DeviceFlash:
    """What survives a power cut; `save` after every change, `load` at boot."""

    path: Path
    next_seq: int = 0
    outbox: list[OutboxEntry] = field(default_factory=list)
    truth: dict[int, Sealed] = field(default_factory=dict)
    boots: int = 0
    handshakes: int = 0
    subscriptions: int = 0  # times the agent (re)subscribed to the uplink
    replayed: int = 0  # outbox entries sent again on those (re)subscriptions
    forced: list[dict[str, Any]] = field(default_factory=list)  # forced disconnects done

    @classmethod
    def load(cls, path: Path) -> DeviceFlash:
        if not path.exists():
            return cls(path)
        doc = json.loads(path.read_text())
        return cls(
            path, doc["next_seq"],
            [OutboxEntry(bytes.fromhex(s), first, last, bytes.fromhex(m))
             for s, first, last, m in doc["outbox"]],
            {int(seq): Sealed(*item) for seq, item in doc["truth"].items()},
            doc["boots"], doc["handshakes"], doc["subscriptions"], doc["replayed"],
            doc["forced"])

    def save(self) -> None:
        doc = {"next_seq": self.next_seq,
               "outbox": [[e.session_id.hex(), e.first, e.last, e.message.hex()]
                          for e in self.outbox],
               "truth": {str(seq): [s.quantity, s.value, s.reading_time, s.sealed_at]
                         for seq, s in self.truth.items()},
               "boots": self.boots, "handshakes": self.handshakes,
               "subscriptions": self.subscriptions, "replayed": self.replayed,
               "forced": self.forced}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(doc))
        os.replace(temporary, self.path)

    def apply_ack(self, ack: device_link.Ack) -> int:
        """Drop the entries of `ack.session_id` the ack covers; how many were dropped."""
        def covered(entry: OutboxEntry) -> bool:
            if entry.session_id != ack.session_id:
                return False
            if ack.upto is not None and entry.last <= ack.upto:
                return True
            return any(lo <= entry.first and entry.last <= hi for lo, hi in ack.ranges)
        kept = [entry for entry in self.outbox if not covered(entry)]
        dropped = len(self.outbox) - len(kept)
        self.outbox = kept
        return dropped


@dataclass(frozen=True)
class BleDeviceSpec:
    """What the fleet tells a gateway process about one of its BLE devices (JSON)."""

    device_id: str
    address: str
    seed: bytes
    agreement: bytes
    gateway_x25519_public: bytes
    flash: Path
    vitals_seed: int
    run_start: float
    rate_hz: float
    measure_until: float  # wall time: the fleet's run end, after which it only drains

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "address": self.address, "seed": self.seed.hex(),
                "agreement": self.agreement.hex(),
                "gateway_x25519_public": self.gateway_x25519_public.hex(),
                "flash": str(self.flash), "vitals_seed": self.vitals_seed,
                "run_start": self.run_start, "rate_hz": self.rate_hz,
                "measure_until": self.measure_until}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BleDeviceSpec:
        return cls(doc["device_id"], doc["address"], bytes.fromhex(doc["seed"]),
                   bytes.fromhex(doc["agreement"]), bytes.fromhex(doc["gateway_x25519_public"]),
                   Path(doc["flash"]), int(doc["vitals_seed"]), float(doc["run_start"]),
                   float(doc["rate_hz"]), float(doc["measure_until"]))


class BleSealingDevice:
    """One device (module docstring). `attach`, then `run()` as a task until cancelled."""

    def __init__(self, spec: BleDeviceSpec, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.clock = clock
        self.flash = DeviceFlash.load(spec.flash)
        self.flash.boots += 1
        self.flash.save()
        # A short name: with the 128-bit service UUID it must fit 31 advertising bytes.
        self.link = FirmwareLinkDevice("VB" + spec.address[-5:].replace(":", ""))
        self.vitals = stable_vitals(spec.vitals_seed)
        self.session: session.Session | None = None  # RAM: lost at every boot
        self.chain: checkpoint.HashChain | None = None
        self.kid_sign = cose.key_id(crypto.ed25519_public_key(spec.seed))
        self._sent_at: dict[int, float] = {}  # first seq -> last send (monotonic)
        self._accepts: asyncio.Queue[bytes] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._batches = 0

    async def attach(self, radio: VirtualRadio) -> None:
        await self.link.attach(radio, address=self.spec.address)

    def subscribed(self) -> bool:
        return bool(self.link.subscribers(self.link.uplink))

    # -- the device's life ---------------------------------------------------------------------

    async def run(self) -> None:
        reader = asyncio.create_task(self._read_downlink())
        try:
            next_tick = time.monotonic()
            was_subscribed = False
            while True:
                now_subscribed = self.subscribed()
                if now_subscribed and not was_subscribed:
                    await self._on_subscribed()
                was_subscribed = now_subscribed
                if self.session is not None and time.monotonic() >= next_tick:
                    next_tick = max(next_tick + 1.0 / self.spec.rate_hz, time.monotonic() - 1.0)
                    if self.clock() < self.spec.measure_until:
                        await self._measure()
                if was_subscribed:
                    await self._resend(RESEND_AFTER_S)
                await asyncio.sleep(POLL_S)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _on_subscribed(self) -> None:
        """A (re)connection: shake hands if this boot has no session, then replay the whole
        outbox oldest first."""
        self.flash.subscriptions += 1
        self.flash.save()
        if self.session is None and not await self._handshake():
            return  # not answered: the next subscription (or loop) tries again
        self._sent_at.clear()
        self.flash.replayed += await self._resend(0.0)
        self.flash.save()

    async def _handshake(self) -> bool:
        spec = self.spec
        for _ in range(3):
            if not self.subscribed():
                return False
            hs = session.DeviceHandshake(spec.device_id, spec.agreement,
                                         spec.gateway_x25519_public)
            await self._send(messages.encode("hello", hs.hello()))
            try:
                async with asyncio.timeout(HANDSHAKE_WAIT_S):
                    body = await self._accepts.get()
                self.session = hs.finish(body)
            except (TimeoutError, ProtocolError):
                continue
            self.chain = checkpoint.HashChain(self.session.session_id)
            self.flash.handshakes += 1
            self.flash.save()
            return True
        return False

    async def _measure(self) -> None:
        assert self.session is not None and self.chain is not None
        now = self.clock()
        spo2, pr = self.vitals(int(now - self.spec.run_start))
        first = self.flash.next_seq
        records = [senml.make_record("spo2", spo2, time=int(now), seq=first),
                   senml.make_record("pr", pr, time=int(now), seq=first + 1)]
        sealed = sealing.seal_batch(self.session.device_mac_key, self.session.kid, records,
                                    f"urn:dev:vb:{self.spec.device_id}:", chain=self.chain)
        message = messages.encode("sealed", sealed)
        flash = self.flash
        flash.next_seq = first + 2
        flash.outbox.append(OutboxEntry(self.session.session_id, first, first + 1, message))
        flash.truth[first] = Sealed("spo2", spo2, int(now), now)
        flash.truth[first + 1] = Sealed("pr", pr, int(now), now)
        flash.save()  # in flash before anyone can see it
        if self.subscribed():
            self._sent_at[first] = time.monotonic()
            await self._send(message)
        self._batches += 1
        if self._batches % CHECKPOINT_EVERY == 0 and self.subscribed() and self.chain.count:
            await self._send(messages.encode("checkpoint", self.chain.checkpoint(
                self.spec.seed, self.spec.device_id, int(now), self.kid_sign)))

    async def _resend(self, older_than_s: float) -> int:
        """Send again, oldest first, what waited `older_than_s` unacknowledged; how many."""
        now, sent = time.monotonic(), 0
        for entry in list(self.flash.outbox):
            if not self.subscribed():
                break
            if now - self._sent_at.get(entry.first, 0.0) >= older_than_s:
                self._sent_at[entry.first] = now
                await self._send(entry.message)
                sent += 1
        return sent

    async def _send(self, message: bytes) -> None:
        """Notify one message; a link that drops meanwhile leaves it for the resend."""
        async with self._send_lock:
            try:
                await self.link.send_message(message)
            except Exception as exc:  # noqa: BLE001 - bumble/HCI errors of a dying link
                log.info("%s: send failed: %r", self.spec.device_id, exc)

    async def _read_downlink(self) -> None:
        while True:
            try:
                payload = await self.link.next_message(timeout_s=3600.0)
            except TimeoutError:
                continue
            try:
                kind, body = messages.decode(payload)
            except ProtocolError:
                continue
            if kind == "accept":
                self._accepts.put_nowait(body)
            elif kind == "device-ack" and self.session is not None:
                try:
                    ack = device_link.decode_ack(body, self.session.gateway_mac_key,
                                                 self.session.kid)
                except ProtocolError:
                    continue
                if self.flash.apply_ack(ack):
                    self.flash.save()

    # -- forced disconnects (from the fleet, through the launcher's control socket) ---------

    async def force_disconnect(self, how: str, for_s: float = 1.0) -> dict[str, Any]:
        """"terminate": the device ends its links (LL_TERMINATE_IND) and advertises again;
        "out-of-range": no radio path for `for_s` (the link dies by supervision timeout)."""
        links = len(self.link.connections)
        if how == "terminate":
            await self.link.drop_link()
        elif how == "out-of-range":
            self.link.go_out_of_range()
            asyncio.get_running_loop().call_later(for_s, self.link.come_into_range)
        else:
            raise ValueError(f"unknown disconnect {how!r}")
        done = {"at": round(self.clock(), 3), "how": how, "links": links,
                "unacked": len(self.flash.outbox)}
        self.flash.forced.append(done)
        self.flash.save()
        return done
