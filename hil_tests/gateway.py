"""The gateway side of the HIL tests, from the real CPython protocol package only.

HilGateway enrolls the DUT (challenge -> enroll request with both proofs of possession
verified -> certificate issued and delivered), answers its session handshakes, opens every
sealed batch under the session it names (old sessions are kept, as the agent keeps them
until everything sealed under them is acknowledged), acknowledges what it stored, records
device events and checkpoints, and sends sealed device commands. Checkpoints are verified
at the end (`checkpoint_verdicts`) against the tags received so far, with whichever
enrolled signing key signed them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hil_tests.link import FrameLink, LinkTimeout
from protocol import checkpoint, cose, crypto, cwt, device_link, enrollment, sealing, session
from protocol.errors import ProtocolError

CA_SEED = b"\xca" * 32
GATEWAY_SEED = b"\x16" * 32
GATEWAY_AGREE = b"\x17" * 32
GATEWAY_ID = "gw-hil"
DAY = 86400


@dataclass
class DeviceIdentity:
    """What the gateway knows of the DUT after an enrollment."""

    device_id: str
    sign_key: bytes
    agree_key: bytes
    certificate: bytes
    request: enrollment.EnrollRequest


@dataclass
class Received:
    """One reading as the gateway stored it."""

    session_id: bytes
    seq: int
    quantity: str
    value: float
    time: float
    arrived: float  # time.monotonic() at arrival


@dataclass
class Ledger:
    """Everything the DUT delivered: readings by seq, tags, checkpoints, events."""

    readings: dict[int, Received] = field(default_factory=dict)
    tags: dict[bytes, dict[int, bytes]] = field(default_factory=dict)  # session -> seq -> tag
    repeats: int = 0  # the same seq again with the same tag (a resend)
    conflicts: list[str] = field(default_factory=list)  # the same seq with another tag
    checkpoints: list[bytes] = field(default_factory=list)
    events: list[device_link.Event] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # what failed to verify, and why

    def event_names(self) -> list[str]:
        return [e.name for e in self.events]


class HilGateway:
    def __init__(self, link: FrameLink) -> None:
        self.link = link
        self.sign_public = crypto.ed25519_public_key(GATEWAY_SEED)
        self.agree_public = crypto.x25519_public_key(GATEWAY_AGREE)
        now = int(time.time())
        self.certificate = cwt.issue_cwt(CA_SEED, "org-ca", GATEWAY_ID, self.sign_public,
                                         now - DAY, now + 365 * DAY,
                                         agreement_key=self.agree_public, role="gateway")
        self.device: DeviceIdentity | None = None
        self.former_sign_keys: list[bytes] = []
        self.sessions: dict[bytes, session.Session] = {}
        self.current: session.Session | None = None
        self.ledger = Ledger()
        self.last_challenge: enrollment.Challenge | None = None
        self._command_id = 0

    # ------------------------------------------------------------ enrollment

    def _challenge(self) -> enrollment.Challenge:
        self.last_challenge = enrollment.make_challenge(
            GATEWAY_ID, self.sign_public, self.agree_public, int(time.time()))
        return self.last_challenge

    def _next_command_id(self) -> int:
        self._command_id += 1
        return self._command_id

    def enroll(self, timeout: float = 30) -> DeviceIdentity:
        """First enrollment: unsealed `enroll` -> verified request -> certificate."""
        challenge = self._challenge()
        self.link.send("device-command", device_link.encode_command(
            self._next_command_id(), "enroll", challenge.to_map()))
        _, body = self.link.receive(("enroll-request",), timeout)
        request = enrollment.verify_request(body, challenge, self._agree)
        return self._certify(request)

    def rotate_keys(self, timeout: float = 30) -> DeviceIdentity:
        """Sealed `rotate-keys` -> a request endorsed by the current key -> certificate."""
        assert self.device is not None, "rotate before enrollment"
        challenge = self._challenge()
        self.command("rotate-keys", challenge.to_map())
        _, body = self.serve_until_message("enroll-request", timeout)
        request = enrollment.verify_request(body, challenge, self._agree,
                                            previous_public=self.device.sign_key)
        self.former_sign_keys.append(self.device.sign_key)
        return self._certify(request)

    def _agree(self, device_agree_key: bytes) -> bytes:
        return crypto.x25519_shared(GATEWAY_AGREE, device_agree_key)

    def _certify(self, request: enrollment.EnrollRequest) -> DeviceIdentity:
        now = int(time.time())
        certificate = cwt.issue_cwt(GATEWAY_SEED, GATEWAY_ID, request.device_id,
                                    request.sign_key, now - 60, now + 365 * DAY,
                                    agreement_key=request.agree_key, role="device",
                                    model=request.model, serial=request.serial)
        self.device = DeviceIdentity(request.device_id, request.sign_key, request.agree_key,
                                     certificate, request)
        self.link.send("certificate", enrollment.make_delivery(certificate, self.certificate,
                                                               self.agree_public))
        return self.device

    # ------------------------------------------------------------ commands

    def command(self, name: str, args: object = None) -> int:
        """Send a device-command sealed under the current session -> its id."""
        assert self.current is not None, "no session with the device"
        command_id = self._next_command_id()
        self.link.send("device-command", device_link.encode_command(
            command_id, name, args, self.current.gateway_mac_key, self.current.session_id))
        return command_id

    # ------------------------------------------------------------ serving

    def serve(self, until: Callable[[], bool], timeout: float, what: str = "") -> None:
        """Handle everything the DUT sends until `until()` holds; LinkTimeout otherwise."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkTimeout(f"{what or 'condition'} not reached within {timeout} s; "
                                  f"events {self.ledger.event_names()[-12:]}, "
                                  f"{len(self.ledger.readings)} readings, "
                                  f"refused {self.ledger.refused[-3:]}")
            try:
                kind, body = self.link.receive(_SERVED, min(left, 0.5))
            except LinkTimeout:
                continue
            self.handle(kind, body)

    def serve_until_message(self, kind: str, timeout: float) -> tuple[str, object]:
        """Serve until a message of `kind` (not one `serve` handles) arrives -> it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkTimeout(f"no {kind} within {timeout} s; events "
                                  f"{self.ledger.event_names()[-12:]}")
            try:
                got, body = self.link.receive((kind, *_SERVED), min(left, 0.5))
            except LinkTimeout:
                continue
            if got == kind:
                return got, body
            self.handle(got, body)

    def handle(self, kind: str, body: object) -> None:
        """One message of a kind in _SERVED; what fails to verify is recorded as refused."""
        handlers = {"hello": self._on_hello, "sealed": self._on_sealed,
                    "checkpoint": self._on_checkpoint, "device-event": self._on_event}
        try:
            handlers[kind](body)
        except ProtocolError as exc:
            self.ledger.refused.append(f"{kind}: {type(exc).__name__}: {exc}")

    def _on_hello(self, body: object) -> None:
        if self.device is None:
            raise ProtocolError("hello from a device that is not enrolled")
        established, accept = session.gateway_accept(body, self.device.agree_key,
                                                     GATEWAY_AGREE, now=int(time.time()))
        self.sessions[established.session_id] = established
        self.current = established
        self.link.send("accept", accept)

    def _session_for(self, kid: bytes) -> session.Session:
        known = self.sessions.get(bytes(kid))
        if known is None:
            raise ProtocolError(f"sealed under unknown session {bytes(kid).hex()}")
        return known

    def _ack(self, ack: device_link.Ack) -> None:
        if self.current is not None and self.link.up:
            self.link.send("device-ack", device_link.encode_ack(
                ack, self.current.gateway_mac_key, self.current.session_id))

    def _on_sealed(self, body: object) -> None:
        kid = cose.mac0_parse(body).kid
        batch = sealing.open_batch(self._session_for(kid).device_mac_key, kid, body)
        tags = self.ledger.tags.setdefault(bytes(kid), {})
        arrived = time.monotonic()
        for reading in batch.readings:
            known = self.ledger.readings.get(reading.seq)
            if known is not None:
                same = tags.get(reading.seq) == batch.tag and known.session_id == bytes(kid)
                if same:
                    self.ledger.repeats += 1
                else:
                    self.ledger.conflicts.append(
                        f"seq {reading.seq} arrived again with other content")
                continue
            tags[reading.seq] = batch.tag
            self.ledger.readings[reading.seq] = Received(bytes(kid), reading.seq,
                                                         reading.quantity, reading.value,
                                                         reading.time, arrived)
        self._ack(device_link.Ack(kid, ranges=[(batch.first_seq, batch.last_seq)]))

    def _on_checkpoint(self, body: object) -> None:
        claims = checkpoint.parse_checkpoint(body)
        self.ledger.checkpoints.append(bytes(body))
        self._ack(device_link.Ack(claims.session_id, checkpoints_upto=claims.last_seq))

    def _on_event(self, body: object) -> None:
        if isinstance(body, dict):
            self.ledger.events.append(device_link.decode_event(body))
            return
        kid = cose.mac0_parse(body).kid
        sealed_under = self._session_for(kid)
        self.ledger.events.append(device_link.decode_event(
            body, sealed_under.device_mac_key, sealed_under.session_id))

    # ------------------------------------------------------------ verdicts

    def sealed_events(self, name: str) -> list[device_link.Event]:
        """Authenticated (sealed) events of this name, in arrival order."""
        return [e for e in self.ledger.events if e.name == name and e.authenticated]

    def checkpoint_verdicts(self) -> list[checkpoint.CheckpointVerdict]:
        """Every checkpoint received, verified now with the key that signed it."""
        assert self.device is not None
        keys = {cose.key_id(k): k for k in [*self.former_sign_keys, self.device.sign_key]}
        verdicts = []
        for data in self.ledger.checkpoints:
            signer = keys.get(cose.sign1_parse(data).kid)
            if signer is None:
                raise AssertionError("a checkpoint is signed by a key the gateway never "
                                     "enrolled")
            claims = checkpoint.parse_checkpoint(data)
            verdicts.append(checkpoint.verify_checkpoint(
                data, signer, self.ledger.tags.get(claims.session_id, {}),
                device_id=self.device.device_id))
        return verdicts


_SERVED = ("hello", "sealed", "checkpoint", "device-event")
