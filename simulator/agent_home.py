"""A simulated home for the real edge agent: a provisioned data directory and a CPython
stand-in for the VitalBridge firmware on a serial PTY.

`provision_home(data_dir, ...)` does what commissioning does on a real gateway, with keys
generated here: the organisation CA, the gateway's keys (files 0600 in a 0700 directory, as
`vitalbridge agent run` reads them), the registry with the CA installed, the gateway and its
devices enrolled (device CWTs issued by the gateway key) and bound to pseudonymous patients.

`FirmwareStandIn` speaks the device side of the protocol with the real protocol/ modules
(session handshake, sealed batches chained for checkpoints, signed checkpoints, device-acks)
over a `PtySerialDevice`, the way the firmware does: it keeps every sealed batch in an outbox
until a device-ack covers it and re-sends what is not acknowledged. `acked` is the set of
seqs a device-ack has confirmed: the agent promises that each of them is durable; `feedback`
lists the patterns the agent's sealed "feedback" commands asked it to show.

Used by tests/edge_agent/test_service_integration.py, test_agent_kill.py and
bench/agent_bench.py. Blocking (pyserial on the device end): run it on its own thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.ca import keyfiles
from edge_agent.registry import Registry
from protocol import (
    checkpoint,
    cose,
    crypto,
    cwt,
    device_link,
    messages,
    sealing,
    senml,
    session,
)
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder, encode_frame
from simulator.serial_devices import PtySerialDevice

DAY = 86400
YEAR = 365 * DAY
ACTOR = "technician:t-0001"
SIGNING_KEY_FILE = "gateway-signing.key"  # edge_agent.service reads these names
AGREEMENT_KEY_FILE = "gateway-agreement.key"


@dataclass(frozen=True)
class DeviceKeys:
    device_id: str
    seed: bytes = field(repr=False)  # Ed25519: signs checkpoints
    agreement: bytes = field(repr=False)  # X25519: session handshakes
    certificate: bytes = field(repr=False)


@dataclass(frozen=True)
class Home:
    gateway_id: str
    data_dir: Path
    keys_dir: Path
    org_seed: bytes = field(repr=False)
    gateway_seed: bytes = field(repr=False)
    gateway_agreement: bytes = field(repr=False)
    devices: dict[str, DeviceKeys] = field(default_factory=dict)

    @property
    def org_public(self) -> bytes:
        return crypto.ed25519_public_key(self.org_seed)

    @property
    def gateway_public(self) -> bytes:
        return crypto.ed25519_public_key(self.gateway_seed)

    @property
    def gateway_x25519_public(self) -> bytes:
        return crypto.x25519_public_key(self.gateway_agreement)


def provision_home(data_dir: Path, gateway_id: str, devices: Iterable[tuple[str, str | None]],
                   *, now: int | None = None, org: str = "Test Org") -> Home:
    """Provision `data_dir` for gateway `gateway_id` with `devices` = [(device id, patient
    pseudonym or None)]. Keys come from the CSPRNG; nothing is left on disk but what a
    commissioned gateway holds (the organisation seed is returned for limit commands)."""
    now = int(time.time()) if now is None else now
    keyfiles.ensure_private_dir(data_dir)
    keys_dir = data_dir / "keys"
    org_seed = crypto.random_bytes(32)
    gw_seed, gw_x = crypto.random_bytes(32), crypto.random_bytes(32)
    keyfiles.save_ed25519_seed(keys_dir / SIGNING_KEY_FILE, gw_seed)
    keyfiles.save_x25519_private(keys_dir / AGREEMENT_KEY_FILE, gw_x)
    ca_cert = cwt.issue_cwt(org_seed, org, org, crypto.ed25519_public_key(org_seed),
                            now - DAY, now + 10 * YEAR, role="ca", cti=b"ca")
    gw_cert = cwt.issue_cwt(org_seed, org, gateway_id, crypto.ed25519_public_key(gw_seed),
                            now - DAY, now + 5 * YEAR, agreement_key=crypto.x25519_public_key(gw_x),
                            role="gateway")
    home = Home(gateway_id, data_dir, keys_dir, org_seed, gw_seed, gw_x)
    with Registry.open_in(data_dir) as registry:
        registry.install_org_ca(ca_cert, actor=ACTOR, now=now)
        registry.enroll_gateway(gateway_id, gw_cert, actor=ACTOR, now=now)
        for index, (device_id, patient) in enumerate(devices):
            seed, agreement = crypto.random_bytes(32), crypto.random_bytes(32)
            cert = cwt.issue_cwt(gw_seed, gateway_id, device_id,
                                 crypto.ed25519_public_key(seed), now - DAY, now + YEAR,
                                 agreement_key=crypto.x25519_public_key(agreement),
                                 role="device", model="VB-SIM", serial=f"SIM-{index:04d}",
                                 issuer_kid=cose.key_id(crypto.ed25519_public_key(gw_seed)))
            registry.enroll_device(device_id, gateway_id, cert, model="VB-SIM",
                                   serial=f"SIM-{index:04d}", firmware="1.0.0",
                                   registration_number="REG-SIM", registration_valid_until=now
                                   + 2 * YEAR, calibration_due=now + YEAR, actor=ACTOR, now=now)
            if patient is not None:
                if patient not in registry.patients():
                    registry.add_patient(patient, actor=ACTOR, now=now)
                registry.bind(device_id, patient, since=now - DAY, actor=ACTOR)
            home.devices[device_id] = DeviceKeys(device_id, seed, agreement, cert)
    return home


def write_gateway_state(home: Home, broker_port: int | None = None) -> None:
    """What `gateway provision` + `gateway install-cert` leave beside the registry and keys
    and provision_home does not write: gateway.json (state active, and the broker when
    known) and the gateway's certificate, which the technician's writing commands need
    (they sign event-journal entries; `device enroll` delivers the certificate)."""
    from edge_agent.commands import common

    with Registry.open_in(home.data_dir) as registry:
        key = registry.keys("gateway", home.gateway_id, "signing")[-1]
        certificate = registry.certificate_of_key(key.kid, "cwt").raw
    certs = keyfiles.ensure_private_dir(home.data_dir / common.CERTS_DIR)
    keyfiles.write_public(certs / common.GATEWAY_CERT, certificate)
    state: dict[str, object] = {"gateway_id": home.gateway_id, "state": "active"}
    if broker_port is not None:
        state["broker"] = {"host": "127.0.0.1", "port": broker_port}
    common.write_gateway_file(home.data_dir, state)


class FirmwareStandIn:
    """The device end of one serial link (see the module docstring). Thread-safe counters."""

    def __init__(self, keys: DeviceKeys, gateway_x25519_public: bytes,
                 port: PtySerialDevice) -> None:
        self.keys = keys
        self.gateway_x25519_public = gateway_x25519_public
        self.port = port
        self.session: session.Session | None = None
        self.chain: checkpoint.HashChain | None = None
        self.next_seq = 0
        self.lock = threading.Lock()
        # first seq -> (last seq, message, id of the session it was sealed in)
        self.outbox: dict[int, tuple[int, bytes, bytes]] = {}
        self.sent_at: dict[int, float] = {}  # first seq -> last (re)send, monotonic
        self.acked: set[int] = set()
        self.ack_times: dict[int, float] = {}  # seq -> monotonic time its ack arrived
        self.acks = 0
        self.write_failures = 0
        self.feedback: list[str] = []  # feedback patterns commanded, oldest first
        self.last_command_id: int | None = None  # per session, as the firmware keeps it
        self.commands_refused = 0
        self._decoder = FrameDecoder()
        self._pending_accept: list[bytes] = []
        self.kid_sign = cose.key_id(crypto.ed25519_public_key(keys.seed))

    # -- link ------------------------------------------------------------------------------

    def _write(self, message: bytes) -> bool:
        try:
            self.port.write(encode_frame(message))
            return True
        except Exception:  # noqa: BLE001 - agent away and the PTY full, unplugged, closing
            self.write_failures += 1
            return False

    def poll(self, timeout: float = 0.02) -> None:
        """Read what the agent sent within `timeout`; apply accepts and device-acks."""
        try:
            data = self.port.read(timeout)
        except Exception:  # noqa: BLE001 - unplugged or being replugged: as a device, wait
            time.sleep(timeout)
            return
        for payload in self._decoder.feed(data):
            try:
                kind, body = messages.decode(payload)
            except ProtocolError:
                continue
            if kind == "accept":
                self._pending_accept.append(payload)
            elif kind == "device-ack":
                self._ack(body)
            elif kind == "device-command":
                self._command(body)

    def _ack(self, body: object) -> None:
        if self.session is None:
            return
        try:
            ack = device_link.decode_ack(body, self.session.gateway_mac_key, self.session.kid)
        except ProtocolError:
            return
        # An ack names the session its seqs were sealed in, which after a reboot or reconnect
        # may be an earlier one than the live session (the firmware's outbox does the same).
        arrived = time.monotonic()
        with self.lock:
            self.acks += 1
            done = set()
            for first, (last, _, sealed_in) in self.outbox.items():
                if sealed_in != ack.session_id:
                    continue
                covered = (ack.upto is not None and last <= ack.upto) or any(
                    lo <= first and last <= hi for lo, hi in ack.ranges)
                if covered:
                    done.add(first)
                    for seq in range(first, last + 1):
                        self.acked.add(seq)
                        self.ack_times.setdefault(seq, arrived)
            for first in done:
                del self.outbox[first]
                self.sent_at.pop(first, None)

    def _command(self, body: object) -> None:
        """A sealed device-command, checked as the firmware does (session key, increasing
        ids); feedback patterns are kept in `feedback` (what the device was told to show)."""
        if self.session is None:
            return
        try:
            command = device_link.decode_command(body, self.session.gateway_mac_key,
                                                 self.session.session_id, self.last_command_id)
        except ProtocolError:
            self.commands_refused += 1
            return
        self.last_command_id = command.command_id
        if command.name == "feedback":
            with self.lock:
                self.feedback.append(command.args)

    def showing(self) -> str | None:
        """The feedback pattern last commanded (None: never told)."""
        with self.lock:
            return self.feedback[-1] if self.feedback else None

    # -- protocol --------------------------------------------------------------------------

    def handshake(self, timeout: float = 10.0, retry_s: float = 1.0) -> session.Session:
        """hello until an accept arrives (the agent may be starting or restarting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hs = session.DeviceHandshake(self.keys.device_id, self.keys.agreement,
                                         self.gateway_x25519_public)
            self._pending_accept.clear()
            self._write(messages.encode("hello", hs.hello()))
            until = min(deadline, time.monotonic() + retry_s)
            while time.monotonic() < until:
                self.poll()
                if self._pending_accept:
                    _, body = messages.decode(self._pending_accept.pop())
                    try:
                        self.session = hs.finish(body)
                    except ProtocolError:
                        break
                    self.chain = checkpoint.HashChain(self.session.session_id)
                    self.last_command_id = None
                    return self.session
        raise TimeoutError(f"{self.keys.device_id}: no accept from the agent in {timeout} s")

    def seal(self, values: list[tuple[str, float]] | list[tuple[str, float, float]],
             at: float | None = None) -> tuple[int, bytes]:
        """A sealed-batch message for `values` (consecutive seqs) -> (first seq, message).
        Each value is (quantity, value) measured `at` (default now), or (quantity, value,
        time) with its own time."""
        assert self.session is not None and self.chain is not None
        when = int(time.time() if at is None else at)
        first = self.next_seq
        records = [senml.make_record(item[0], item[1], time=item[2] if len(item) > 2 else when,
                                     seq=first + i)
                   for i, item in enumerate(values)]
        sealed = sealing.seal_batch(self.session.device_mac_key, self.session.kid, records,
                                    f"urn:dev:vb:{self.keys.device_id}:", chain=self.chain)
        self.next_seq = first + len(values)
        message = messages.encode("sealed", sealed)
        with self.lock:
            self.outbox[first] = (self.next_seq - 1, message, self.session.session_id)
        return first, message

    def send(self, values: list[tuple[str, float]], at: float | None = None) -> int:
        first, message = self.seal(values, at)
        self._write(message)
        self.sent_at[first] = time.monotonic()
        return first

    def send_checkpoint(self) -> None:
        assert self.chain is not None
        if self.chain.count:
            self._write(messages.encode("checkpoint", self.chain.checkpoint(
                self.keys.seed, self.keys.device_id, int(time.time()), self.kid_sign)))

    def resend_unacked(self, older_than_s: float = 1.0, limit: int = 64) -> int:
        """Send again what no device-ack covered within `older_than_s` (the outbox)."""
        now = time.monotonic()
        with self.lock:
            due = [(first, msg) for first, (_, msg, _) in sorted(self.outbox.items())
                   if now - self.sent_at.get(first, 0.0) >= older_than_s][:limit]
        for first, message in due:
            if self._write(message):
                self.sent_at[first] = now
        return len(due)

    def unacked(self) -> int:
        with self.lock:
            return len(self.outbox)
