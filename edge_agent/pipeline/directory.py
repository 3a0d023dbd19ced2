"""What the verification pipeline needs to know about devices, patients and the gateway.

`DeviceDirectory` is the seam between the verifier and the device registry: the registry
(edge_agent.registry + edge_agent.lifecycle) implements it for the running agent;
`MemoryDirectory` implements it for tests and the simulator. Contract for implementers:
unknown devices are answered with None / False / (), never with an exception. Raise
`DirectoryUnavailable` only when the answer cannot be had at all (database locked, disk
gone): the verifier lets that one through, so the service retries instead of quarantining
good data.

`GatewayKeys` holds the gateway's private keys. They stay in the service's memory and are
never logged (the repr leaves them out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from edge_agent.lifecycle import states
from protocol import cose, crypto, cwt
from protocol.checks import fixed_bytes, hexstr
from protocol.topics import check_id

KEY_SIZE = 32


class DirectoryUnavailable(Exception):
    """The directory cannot answer now (storage failure). Never raised for unknown devices."""


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """The gateway's identity: Ed25519 seed (issues device certificates, attests readings)
    and X25519 key pair (session handshakes). `previous_issuers` are Ed25519 public keys of
    earlier gateway key generations whose device certificates are still honoured.

    `retired_agreement` holds the X25519 private keys of earlier generations that were
    retired by a gateway renewal but not destroyed yet: a device enrolled before the renewal
    still addresses its hello to one of them (hello.gateway_kid) until it is renewed.
    `forget_agreement` drops one when the lifecycle destroys it, also while the agent runs.
    `destroyed_agreement` are kids of this gateway's destroyed agreement keys: a hello
    addressed to one is refused with "renew the device" rather than "unknown key".
    """

    gateway_id: str
    ed25519_seed: bytes = field(repr=False)
    x25519_private: bytes = field(repr=False)
    x25519_public: bytes = b""
    previous_issuers: tuple[bytes, ...] = ()
    retired_agreement: tuple[bytes, ...] = field(default=(), repr=False)
    destroyed_agreement: tuple[bytes, ...] = ()
    ed25519_public: bytes = field(init=False)
    # agreement kid -> (private, public): current first; shrinks when a retired key is destroyed
    _agreement: dict[bytes, tuple[bytes, bytes]] = field(init=False, repr=False, compare=False)
    _destroyed: set[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_id("gateway_id", self.gateway_id)
        seed = fixed_bytes("ed25519_seed", self.ed25519_seed, KEY_SIZE)
        private = fixed_bytes("x25519_private", self.x25519_private, KEY_SIZE)
        public = self.x25519_public or crypto.x25519_public_key(private)
        object.__setattr__(self, "x25519_public", fixed_bytes("x25519_public", public, KEY_SIZE))
        object.__setattr__(self, "ed25519_public", crypto.ed25519_public_key(seed))
        object.__setattr__(self, "previous_issuers", tuple(
            fixed_bytes("previous_issuers", key, KEY_SIZE) for key in self.previous_issuers))
        retired = tuple(fixed_bytes("retired_agreement", key, KEY_SIZE)
                        for key in self.retired_agreement)
        object.__setattr__(self, "retired_agreement", retired)
        pairs = [(private, self.x25519_public)]
        pairs += [(key, crypto.x25519_public_key(key)) for key in retired]
        agreement: dict[bytes, tuple[bytes, bytes]] = {}
        for pair in pairs:
            agreement.setdefault(cose.key_id(pair[1]), pair)
        object.__setattr__(self, "_agreement", agreement)
        object.__setattr__(self, "_destroyed", {bytes(k) for k in self.destroyed_agreement})

    @property
    def signing_kid(self) -> bytes:
        """The kid of the gateway's attestations: key_id(Ed25519 public key)."""
        return cose.key_id(self.ed25519_public)

    @property
    def agreement_kid(self) -> bytes:
        """The kid devices enrolled now address their hello to: key_id(X25519 public key)."""
        return cose.key_id(self.x25519_public)

    @property
    def issuer_keys(self) -> tuple[bytes, ...]:
        """Public keys a device certificate may be signed with, current generation first."""
        return (self.ed25519_public, *self.previous_issuers)

    def agreement_for(self, gateway_kid: bytes) -> tuple[bytes, bytes] | None:
        """(X25519 private, public) of the agreement key a hello names, current or retired
        but not destroyed; None when this gateway holds no such key (any more)."""
        return self._agreement.get(bytes(gateway_kid))

    def forget_agreement(self, gateway_kid: bytes) -> bool:
        """Drop a retired agreement key from memory (it was destroyed). The current key
        is never dropped here. True when a key was dropped."""
        kid = bytes(gateway_kid)
        if kid == self.agreement_kid:
            return False
        self._destroyed.add(kid)
        return self._agreement.pop(kid, None) is not None

    def agreement_refusal(self, gateway_kid: bytes) -> str:
        """Why a hello addressed to `gateway_kid` cannot be answered (agreement_for is None)."""
        kid = bytes(gateway_kid)
        if kid in self._destroyed:
            return (f"hello addressed to gateway agreement key {hexstr(kid)}, which was "
                    f"retired and destroyed: the device must be renewed "
                    f"(`vitalbridge device renew`) to learn key {hexstr(self.agreement_kid)}")
        return (f"hello addressed to gateway agreement key {hexstr(kid)}, which is not a key "
                f"of this gateway (current {hexstr(self.agreement_kid)})")


@runtime_checkable
class DeviceDirectory(Protocol):
    """Questions the verifier asks at the moment a message is received.

    Times are integer POSIX seconds. Key ids are bytes (session ids are 8 bytes).
    """

    def gateway_keys(self) -> GatewayKeys:
        """The gateway's keys (held by the service, never logged)."""
        ...

    def certificate(self, device_id: str, at: int) -> bytes | None:
        """The device's CWT certificate in force at `at` (as issued), None if none."""
        ...

    def certificate_status(self, device_id: str, at: int) -> str | None:
        """A recorded end of that certificate at `at` ("revoked", "compromised",
        "retired"), None when none is recorded. Time validity is checked separately."""
        ...

    def patient_at(self, device_id: str, at: int) -> str | None:
        """The (pseudonymous) patient the device was bound to at `at`, None if unbound."""
        ...

    def may_accept(self, device_id: str, key_id: bytes, now: int) -> tuple[bool, str]:
        """May a message sealed or signed under `key_id` be trusted? (ok, reason)."""
        ...

    def withdrawn(self, device_id: str, now: int) -> str | None:
        """Why the device's keys were withdrawn (a compromise), None while they are not.
        Withdrawal ends every session of the device at once."""
        ...

    def currency_flags(self, device_id: str, now: int) -> tuple[str, ...]:
        """Calibration / regulatory registration flags (lifecycle.states vocabulary)."""
        ...

    def session_started(self, device_id: str, session_id: bytes, now: int) -> None:
        """Record a new session key (the registry journals it: LifecycleEngine.start_session).
        May raise protocol.errors.ProtocolError when the registry refuses it."""
        ...


@dataclass(slots=True)
class _DeviceEntry:
    certificates: list[bytes] = field(default_factory=list)
    ended: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # cert raw -> (how, at)
    bindings: list[tuple[str, int, int | None]] = field(default_factory=list)
    withdrawn: tuple[str, int] | None = None
    registration_number: str | None = None
    registration_valid_until: int | None = None
    calibration_due: int | None = None
    session_kids: set[bytes] = field(default_factory=set)


class MemoryDirectory:
    """An in-memory DeviceDirectory for tests and the simulator.

    Acceptance follows the registry's rules in outline: the device must not be withdrawn,
    the key must be the device's certified signing key or one of its sessions, and the
    certificate must be within its validity and not ended.
    """

    def __init__(self, keys: GatewayKeys) -> None:
        self._keys = keys
        self._devices: dict[str, _DeviceEntry] = {}
        self._parsed: dict[bytes, cwt.Certificate] = {}

    def _parse(self, raw: bytes) -> cwt.Certificate:
        cert = self._parsed.get(raw)
        if cert is None:
            cert = self._parsed[raw] = cwt.parse_cwt(raw)
        return cert

    # -- set-up -----------------------------------------------------------------------

    def add_device(self, device_id: str, certificate: bytes | None, *,
                   registration_number: str | None = None,
                   registration_valid_until: int | None = None,
                   calibration_due: int | None = None) -> None:
        """Register a device; `certificate` None for a standard device that cannot seal.
        Called again with a new certificate, it records a renewal."""
        entry = self._devices.setdefault(check_id("device_id", device_id), _DeviceEntry())
        if certificate is not None:
            entry.certificates.append(bytes(certificate))
        entry.registration_number = registration_number
        entry.registration_valid_until = registration_valid_until
        entry.calibration_due = calibration_due

    def bind(self, device_id: str, patient_id: str, since: int, until: int | None = None) -> None:
        self._devices.setdefault(device_id, _DeviceEntry()).bindings.append(
            (patient_id, since, until))

    def end_certificate(self, device_id: str, how: str, at: int) -> None:
        """Record that the device's newest certificate was revoked/retired at `at`."""
        entry = self._devices[device_id]
        entry.ended[entry.certificates[-1]] = (how, at)

    def withdraw(self, device_id: str, reason: str, at: int) -> None:
        """A compromise: the device and every key it holds are withdrawn from `at` on."""
        self._devices[device_id].withdrawn = (reason, at)

    # -- DeviceDirectory --------------------------------------------------------------

    def gateway_keys(self) -> GatewayKeys:
        return self._keys

    def certificate(self, device_id: str, at: int) -> bytes | None:
        entry = self._devices.get(device_id)
        if entry is None or not entry.certificates:
            return None
        chosen = entry.certificates[0]
        for raw in entry.certificates:  # the newest one issued by `at` (renewals)
            cert = self._parse(raw)
            if (cert.issued_at or cert.not_before) <= at:
                chosen = raw
        return chosen

    def certificate_status(self, device_id: str, at: int) -> str | None:
        entry = self._devices.get(device_id)
        raw = self.certificate(device_id, at)
        if entry is None or raw is None:
            return None
        if entry.withdrawn is not None and entry.withdrawn[1] <= at:
            return states.COMPROMISED
        ended = entry.ended.get(raw)
        return ended[0] if ended is not None and ended[1] <= at else None

    def patient_at(self, device_id: str, at: int) -> str | None:
        entry = self._devices.get(device_id)
        if entry is None:
            return None
        for patient, since, until in entry.bindings:
            if since <= at and (until is None or at < until):
                return patient
        return None

    def may_accept(self, device_id: str, key_id: bytes, now: int) -> tuple[bool, str]:
        entry = self._devices.get(device_id)
        raw = self.certificate(device_id, now)
        if entry is None or raw is None:
            return False, f"device {device_id!r} is not enrolled"
        if entry.withdrawn is not None and entry.withdrawn[1] <= now:
            return False, f"device {device_id!r} is compromised"
        cert = self._parse(raw)
        if key_id != cert.key_id and key_id not in entry.session_kids:
            return False, "key is not a key of this device"
        ended = self.certificate_status(device_id, now)
        if ended is not None:
            return False, f"device certificate is {ended}"
        validity = cwt.validity_state(cert, now)
        if validity in (cwt.EXPIRED, cwt.NOT_YET_VALID):
            return False, f"device certificate is {validity}"
        return True, f"device certificate is {validity}"

    def withdrawn(self, device_id: str, now: int) -> str | None:
        entry = self._devices.get(device_id)
        if entry is None or entry.withdrawn is None or entry.withdrawn[1] > now:
            return None
        return entry.withdrawn[0]

    def currency_flags(self, device_id: str, now: int) -> tuple[str, ...]:
        entry = self._devices.get(device_id)
        if entry is None:
            return ()
        return states.device_currency_flags(now, entry.registration_number,
                                            entry.registration_valid_until,
                                            entry.calibration_due)

    def session_started(self, device_id: str, session_id: bytes, now: int) -> None:
        self._devices.setdefault(device_id, _DeviceEntry()).session_kids.add(bytes(session_id))
