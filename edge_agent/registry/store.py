"""The registry file: gateways, devices, patients, bindings, certificates and the key journal.

One SQLite file in the agent's data directory (WAL, synchronous FULL, foreign keys on), used
from one thread. Every method that writes is one transaction, or joins the caller's
`transaction()` so a lifecycle operation touching many keys commits or fails as a whole.

Everything that enters is validated here, and a refusal is a `RegistryError` (a
protocol ValidationError) whose `field` names the culprit and whose text says what to do.
Certificates are verified against their issuer on the way in: a gateway's CWT against an
installed organisation CA, a device's CWT against its gateway's current key, a TLS
certificate against the organisation's X.509 CA. Clocks are never read here: callers pass
`now` / `at` as integer POSIX seconds, which keeps the lifecycle testable with a fake clock.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.lifecycle import states
from edge_agent.registry import schema
from edge_agent.sqlite_tx import NestedTransactions
from protocol import cwt, topics
from protocol.errors import ProtocolError, ValidationError

MAX_TEXT = 64
MAX_ACTOR = 100
MAX_REASON = 500
# A patient id is an opaque code (e.g. "p-4f7a2c"), never a name: letters, digits and - _ .,
# at least one digit. Names almost never contain digits, so this refuses the common mistake.
_PSEUDONYM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{3,63}\Z")
_PRINTABLE = re.compile(r"[\x20-\x7e]+\Z")
SESSION_ID_SIZE = 8


class RegistryError(ValidationError):
    """Input or state the registry refuses. `field` names what is wrong; the text says why
    and what to do."""


class NotFoundError(RegistryError):
    """The named gateway, device, patient, key or certificate is not in the registry."""


class ConflictError(RegistryError):
    """The request contradicts what is recorded (enrolling twice, retiring a retired device)."""


def kid_hex(kid: bytes) -> str:
    """Registry spelling of a COSE kid / session id: 16 lower-case hex digits."""
    if not isinstance(kid, bytes | bytearray) or len(kid) != SESSION_ID_SIZE:
        raise RegistryError("kid", f"must be {SESSION_ID_SIZE} bytes")
    return bytes(kid).hex()


def spki(certificate: x509.Certificate) -> bytes:
    """The certificate's SubjectPublicKeyInfo (DER): how X.509 keys are stored."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def tls_key_id(certificate: x509.Certificate) -> str:
    """The kid of an X.509 certificate's key: SHA-256 of its SubjectPublicKeyInfo, 8 bytes."""
    return hashlib.sha256(spki(certificate)).digest()[:SESSION_ID_SIZE].hex()


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One journal line: who did what to a key (or certificate) when, and why."""

    seq: int
    subject: str  # kid, or the certificate id as text
    step: str
    at: int
    actor: str
    reason: str


class _Journaled:
    """A key or certificate: its lifecycle facts come from its validity window and steps."""

    __slots__ = ()
    not_before: int
    expires: int
    steps: tuple[Step, ...]

    @property
    def facts(self) -> states.Facts:
        return states.Facts(self.not_before, self.expires, **{s.step: s.at for s in self.steps})

    def state(self, now: int) -> str:
        return states.state(self.facts, now)


@dataclass(frozen=True, slots=True)
class KeyRecord(_Journaled):
    kid: str
    holder_kind: str
    holder_id: str
    purpose: str
    held_at: str
    public_key: bytes | None
    anchor: str | None
    not_before: int
    expires: int
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class CertificateRecord(_Journaled):
    id: int
    format: str  # "cwt" | "x509"
    serial: str
    kid: str
    subject: str
    issuer: str
    issued_by: int | None
    not_before: int
    expires: int
    raw: bytes
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class OrgCARecord:
    name: str
    kid: str
    cwt: bytes
    x509_pem: bytes | None
    installed_at: int
    installed_by: str


@dataclass(frozen=True, slots=True)
class Gateway:
    id: str
    status: str
    enrolled_at: int
    enrolled_by: str
    ended_at: int | None
    ended_by: str | None
    end_reason: str | None


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    gateway_id: str
    model: str
    serial: str
    firmware: str
    registration_number: str | None
    registration_valid_until: int | None
    calibration_due: int | None
    battery: float | None
    last_seen: int | None
    status: str
    enrolled_at: int
    enrolled_by: str
    ended_at: int | None
    ended_by: str | None
    end_reason: str | None
    kind: str = "sealing"  # schema.DEVICE_KINDS
    transport: str | None = None  # standard devices: "ble" | "serial"
    address: str | None = None  # standard devices: link_address() of their link

    def currency_flags(self, now: int) -> tuple[str, ...]:
        return states.device_currency_flags(now, self.registration_number,
                                            self.registration_valid_until, self.calibration_due)


@dataclass(frozen=True, slots=True)
class Binding:
    id: int
    device_id: str
    patient_id: str
    since: int
    until: int | None
    created_by: str
    ended_by: str | None


# -- argument checks ------------------------------------------------------------------------


def _seconds(name: str, value: object, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RegistryError(name, "must be integer POSIX seconds (UTC)")
    return value


def _text(name: str, value: object, optional: bool = False, limit: int = MAX_TEXT) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _PRINTABLE.match(value) or len(value) > limit \
            or value != value.strip():
        raise RegistryError(name, f"must be 1..{limit} printable ASCII characters without "
                            "leading or trailing spaces")
    return value


def _actor(actor: object) -> str:
    return _text("actor", actor, limit=MAX_ACTOR)


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise RegistryError("reason", f"must be text of at most {MAX_REASON} characters")
    return reason


def _ident(name: str, value: object) -> str:
    try:
        return topics.check_id(name, value)
    except ValidationError as exc:
        raise RegistryError(name, exc.reason + " (ids become MQTT topic levels)") from None


def check_pseudonym(patient_id: object) -> str:
    if not isinstance(patient_id, str) or not _PSEUDONYM.match(patient_id) \
            or not any(ch.isdigit() for ch in patient_id):
        raise RegistryError("patient_id", "must be a pseudonymous code such as 'p-4f7a2c' "
                            "(4..64 letters, digits, - _ ., with at least one digit); never "
                            "store a name or contact data in the registry")
    return patient_id


_BLE_ADDRESS = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}\Z")
_USB_ADDRESS = re.compile(r"usb:[0-9a-f]{4}:[0-9a-f]{4}(:[\x21-\x7e]{1,64})?\Z")
MANUAL_PREFIX = "manual-"


def link_address(transport: object, address: object) -> str:
    """The registry spelling of a standard device's link: a BLE address in upper case
    ("AA:BB:CC:DD:EE:FF"), or a serial port as "path:/dev/..." or "usb:VVVV:PPPP[:SERIAL]"
    (lower-case hex ids, as lsusb prints them)."""
    if transport not in ("ble", "serial"):
        raise RegistryError("transport", "must be 'ble' or 'serial'")
    if not isinstance(address, str):
        raise RegistryError("address", "must be text")
    if transport == "ble":
        upper = address.upper()
        if not _BLE_ADDRESS.match(upper):
            raise RegistryError("address", "a BLE address looks like AA:BB:CC:DD:EE:FF "
                                "(`vitalbridge device scan` shows it)")
        return upper
    if address.startswith("path:/") and _PRINTABLE.match(address) and len(address) <= 250:
        return address
    if _USB_ADDRESS.match(address):
        return address
    raise RegistryError("address", "a serial link is 'path:/dev/...' or "
                        "'usb:VVVV:PPPP[:SERIAL]' (hex ids as lsusb prints them)")


def manual_source_id(patient_id: str) -> str:
    """The device id of a patient's manual entries: "manual-<patient>", shortened with a
    digest when the pseudonym is too long for a topic-level id."""
    check_pseudonym(patient_id)
    ident = MANUAL_PREFIX + patient_id
    if len(ident) > 64:
        ident = f"{ident[:47]}-{hashlib.sha256(patient_id.encode()).hexdigest()[:16]}"
    return ident


def _x509_time(value: Any) -> int:
    return int(value.timestamp())


# -- the store ------------------------------------------------------------------------------

_KEY_COLUMNS = "kid, holder_kind, holder_id, purpose, held_at, public_key, anchor, " \
               "not_before, expires"
_CERT_COLUMNS = "id, format, serial, kid, subject, issuer, issued_by, not_before, expires, raw"
_DEVICE_COLUMNS = ("id, gateway_id, model, serial, firmware, registration_number, "
                   "registration_valid_until, calibration_due, battery, last_seen, status, "
                   "enrolled_at, enrolled_by, ended_at, ended_by, end_reason, kind, transport, "
                   "address")
_GATEWAY_COLUMNS = "id, status, enrolled_at, enrolled_by, ended_at, ended_by, end_reason"
_BINDING_COLUMNS = "id, device_id, patient_id, since, until, created_by, ended_by"


class Registry:
    """The registry file. Not thread-safe: open and use it from one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._transactions = NestedTransactions(conn)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Registry:
        """Open (creating or migrating) the registry file at `path`."""
        path = Path(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise schema.RegistrySchemaError(f"could not switch {path} to WAL ({mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            schema.upgrade(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open_in(cls, data_dir: str | os.PathLike[str]) -> Registry:
        """Open the registry in the agent's data directory (created if missing)."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls.open(directory / schema.FILE_NAME)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested uses join the outermost, which commits or rolls back."""
        with self._transactions():
            yield

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        return self._conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, args).fetchall()

    def _found(self, sql: str, key: object, field: str, missing: str) -> tuple[Any, ...]:
        """The one row `sql` finds for `key`, or NotFoundError(field, missing)."""
        row = self._one(sql, (key,))
        if row is None:
            raise NotFoundError(field, missing)
        return row

    def _select(self, sql: str, order: str, **equal: object) -> list[tuple[Any, ...]]:
        """`sql` filtered by column = value for every value that is not None."""
        wanted = {column: value for column, value in equal.items() if value is not None}
        if wanted:
            sql += " WHERE " + " AND ".join(f"{column} = ?" for column in wanted)
        return self._all(f"{sql} ORDER BY {order}", tuple(wanted.values()))

    # -- organisation CA ------------------------------------------------------------------

    def install_org_ca(self, certificate: bytes, *, actor: str, now: int,
                       x509_pem: bytes | None = None) -> OrgCARecord:
        """Trust an organisation CA: its self-signed CWT and optionally its X.509 TLS CA."""
        _actor(actor)
        _seconds("now", now)
        parsed = self._parse_cwt(certificate)
        try:
            cert = cwt.verify_cwt(certificate, parsed.public_key, issuer=parsed.subject)
        except ProtocolError as exc:
            raise RegistryError("certificate", f"not a valid self-signed CA certificate: {exc}; "
                                "export it again from the CA (ca.cwt)") from None
        if cert.role != "ca" or cert.issuer != cert.subject:
            raise RegistryError("certificate", "is not a CA certificate (role must be 'ca' and "
                                "issuer = subject)")
        self._require_current("certificate", cert.not_before, cert.expires, now)
        kid = cert.key_id.hex()
        existing = self._one("SELECT kid FROM org_ca WHERE name = ?", (cert.subject,))
        if existing is not None:
            same = existing[0] == kid
            raise ConflictError("certificate", f"CA {cert.subject!r} is already installed"
                                + ("" if same else " with another key: a CA key rollover needs "
                                   "a new CA name"))
        tls_ca = self._check_tls_ca(x509_pem, now) if x509_pem is not None else None
        with self.transaction():
            self._conn.execute(
                "INSERT INTO org_ca (name, kid, cwt, x509_pem, installed_at, installed_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (cert.subject, kid, bytes(certificate), x509_pem, now, actor))
            self._insert_key(kid, "org", cert.subject, "ca-signing", "ca", cert.public_key, None,
                             cert.not_before, cert.expires, actor, now,
                             created_by=f"ca:{cert.subject}")
            self._insert_cwt_certificate(cert, bytes(certificate), kid, None, actor, now)
            if tls_ca is not None:
                tls_kid = tls_key_id(tls_ca)
                self._insert_key(tls_kid, "org", cert.subject, "tls-ca", "ca", spki(tls_ca), None,
                                 _x509_time(tls_ca.not_valid_before_utc),
                                 _x509_time(tls_ca.not_valid_after_utc), actor, now,
                                 created_by=f"ca:{cert.subject}")
                self._insert_x509_certificate(tls_ca, tls_kid, None, actor, now)
        return self.org_ca(cert.subject)

    def _check_tls_ca(self, pem: bytes, now: int) -> x509.Certificate:
        ca = self._load_pem("x509_pem", pem)
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            ca.verify_directly_issued_by(ca)
        except (x509.ExtensionNotFound, InvalidSignature, ValueError, TypeError):
            constraints = None
        if constraints is None or not constraints.ca:
            raise RegistryError("x509_pem", "is not a self-signed X.509 CA certificate")
        self._require_current("x509_pem", _x509_time(ca.not_valid_before_utc),
                              _x509_time(ca.not_valid_after_utc), now)
        return ca

    def org_ca(self, name: str) -> OrgCARecord:
        return OrgCARecord(*self._found(
            "SELECT name, kid, cwt, x509_pem, installed_at, installed_by FROM org_ca "
            "WHERE name = ?", name,
            "ca", f"no organisation CA {name!r} is installed; install its certificate first"))

    def org_cas(self) -> list[OrgCARecord]:
        return [OrgCARecord(*r) for r in self._all(
            "SELECT name, kid, cwt, x509_pem, installed_at, installed_by FROM org_ca "
            "ORDER BY installed_at, name")]

    # -- gateways -------------------------------------------------------------------------

    def enroll_gateway(self, gateway_id: str, certificate: bytes, *, actor: str,
                       now: int) -> Gateway:
        """Record a gateway with its CWT certificate from an installed organisation CA."""
        _ident("gateway_id", gateway_id)
        _actor(actor)
        _seconds("now", now)
        existing = self._one("SELECT status, enrolled_at FROM gateways WHERE id = ?",
                             (gateway_id,))
        if existing is not None:
            raise ConflictError("gateway_id", f"gateway {gateway_id!r} is already enrolled "
                                f"({existing[0]} since {existing[1]}); renew its certificate "
                                "instead, or provision the new gateway under a new id")
        cert, issuer = self._verify_gateway_certificate(gateway_id, certificate, now)
        with self.transaction():
            self._conn.execute("INSERT INTO gateways (id, enrolled_at, enrolled_by) "
                               "VALUES (?, ?, ?)", (gateway_id, now, actor))
            self._insert_certified_keys("gateway", gateway_id, cert, bytes(certificate),
                                        issuer, actor, now)
        return self.gateway(gateway_id)

    def add_gateway_certificate(self, gateway_id: str, certificate: bytes, *, actor: str,
                                now: int) -> CertificateRecord:
        """Record a renewed gateway CWT (new key); the caller retires the old one."""
        self._active_holder("gateway", gateway_id)
        _actor(actor)
        _seconds("now", now)
        cert, issuer = self._verify_gateway_certificate(gateway_id, certificate, now)
        with self.transaction():
            return self._insert_certified_keys("gateway", gateway_id, cert, bytes(certificate),
                                               issuer, actor, now)

    def _verify_gateway_certificate(self, gateway_id: str, certificate: bytes,
                                    now: int) -> tuple[cwt.Certificate, CertificateRecord]:
        parsed = self._parse_cwt(certificate)
        issuer_kid = parsed.issuer_kid.hex() if isinstance(parsed.issuer_kid, bytes) else "?"
        row = self._one("SELECT name FROM org_ca WHERE kid = ?", (issuer_kid,))
        if row is None:
            raise RegistryError("certificate", f"was not issued by an installed organisation CA "
                                f"(issuer key {issuer_kid}); request it from your "
                                "organisation's CA, or install that CA's certificate first")
        ca_cert = self.certificate_of_key(issuer_kid, "cwt")
        self._require_usable_issuer(ca_cert, now)
        ca_public = self._key_public(issuer_kid)
        try:
            cert = cwt.verify_cwt(certificate, ca_public, issuer=row[0])
        except ProtocolError as exc:
            raise RegistryError("certificate", f"does not verify against CA {row[0]!r}: {exc}; "
                                "it was altered or comes from another CA") from None
        self._check_subject(cert, "gateway", gateway_id, ca_cert, now)
        return cert, ca_cert

    def gateway(self, gateway_id: str) -> Gateway:
        return Gateway(*self._found(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE id = ?", gateway_id, "gateway_id",
            f"no gateway {gateway_id!r} is enrolled; list them with `vitalbridge gateway list` "
            "or provision it first"))

    def gateways(self) -> list[Gateway]:
        return [Gateway(*r) for r in self._all(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateways ORDER BY id")]

    def add_gateway_tls_certificate(self, gateway_id: str, pem: bytes, *, actor: str,
                                    now: int) -> CertificateRecord:
        """Record the gateway's X.509 broker client certificate (CN = gateway id)."""
        self._active_holder("gateway", gateway_id)
        _actor(actor)
        _seconds("now", now)
        cert = self._load_pem("certificate", pem)
        issuer = self._tls_issuer(cert, now)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [a.value for a in cns] != [gateway_id]:
            raise RegistryError("certificate", f"its common name must be exactly {gateway_id!r}: "
                                "the broker uses it as the MQTT user name in the ACL")
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = ()
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            raise RegistryError("certificate", "is not a TLS client certificate (clientAuth)")
        self._require_current("certificate", _x509_time(cert.not_valid_before_utc),
                              _x509_time(cert.not_valid_after_utc), now)
        kid = tls_key_id(cert)
        self._require_new_key("certificate", kid)
        with self.transaction():
            self._insert_key(kid, "gateway", gateway_id, "tls-client", "gateway", spki(cert),
                             None,
                             _x509_time(cert.not_valid_before_utc),
                             _x509_time(cert.not_valid_after_utc), actor, now,
                             created_by=f"gateway:{gateway_id}")
            return self._insert_x509_certificate(cert, kid, issuer.id, actor, now)

    def _tls_issuer(self, cert: x509.Certificate, now: int) -> CertificateRecord:
        for cert_id, raw in self._all(
                "SELECT c.id, c.raw FROM certificates c JOIN keys k USING (kid) "
                "WHERE c.format = 'x509' AND k.purpose = 'tls-ca'"):
            try:
                cert.verify_directly_issued_by(x509.load_pem_x509_certificate(raw))
            except (InvalidSignature, ValueError, TypeError):
                continue
            issuer = self.certificate(cert_id)
            self._require_usable_issuer(issuer, now)
            return issuer
        raise RegistryError("certificate", "was not issued by an installed organisation TLS CA; "
                            "request it from your organisation's CA")

    # -- devices --------------------------------------------------------------------------

    def enroll_device(self, device_id: str, gateway_id: str, certificate: bytes, *,
                      model: str, serial: str, firmware: str,
                      registration_number: str | None = None,
                      registration_valid_until: int | None = None,
                      calibration_due: int | None = None,
                      actor: str, now: int) -> Device:
        """Record a device and the CWT certificate its gateway issued after the technician
        compared the confirmation code."""
        self._check_new_device(device_id, gateway_id, model, serial, firmware,
                               registration_number, registration_valid_until, calibration_due,
                               actor, now)
        cert, issuer = self._verify_device_certificate(device_id, gateway_id, certificate, now)
        for claim, given in (("model", model), ("serial", serial)):
            claimed = getattr(cert, claim)
            if claimed is not None and claimed != given:
                raise RegistryError(claim, f"{given!r} differs from the certificate's "
                                    f"{claimed!r}: check the device label")
        with self.transaction():
            self._insert_device(device_id, gateway_id, model, serial, firmware,
                                registration_number, registration_valid_until, calibration_due,
                                actor, now, kind="sealing")
            self._insert_certified_keys("device", device_id, cert, bytes(certificate), issuer,
                                        actor, now)
        return self.device(device_id)

    def _check_new_device(self, device_id: str, gateway_id: str, model: str, serial: str,
                          firmware: str, registration_number: str | None,
                          registration_valid_until: int | None, calibration_due: int | None,
                          actor: str, now: int) -> None:
        """What every kind of device must pass before it is recorded: valid fields, an id
        never used before, no active twin (model + serial), an active gateway."""
        _ident("device_id", device_id)
        _text("model", model)
        _text("serial", serial)
        _text("firmware", firmware)
        _text("registration_number", registration_number, optional=True)
        _seconds("registration_valid_until", registration_valid_until, optional=True)
        _seconds("calibration_due", calibration_due, optional=True)
        _actor(actor)
        _seconds("now", now)
        existing = self._one("SELECT status, enrolled_at, ended_at FROM devices WHERE id = ?",
                             (device_id,))
        if existing is not None:
            if existing[0] == "active":
                raise ConflictError("device_id", f"device {device_id!r} is already enrolled "
                                    f"(since {existing[1]}); retire it before enrolling or "
                                    "registering it again (a sealing device renews its key "
                                    "instead)")
            raise ConflictError("device_id", f"device id {device_id!r} was {existing[0]} at "
                                f"{existing[2]}; ids are never reused, enroll it under a new id")
        twin = self._one("SELECT id FROM devices WHERE model = ? AND serial = ? AND "
                         "status = 'active'", (model, serial))
        if twin is not None:
            raise ConflictError("serial", f"{model} serial {serial} is already enrolled as "
                                f"device {twin[0]!r}; retire that one first")
        self._active_holder("gateway", gateway_id)

    def register_standard_device(self, device_id: str, gateway_id: str, *, transport: str,
                                 address: str, model: str, serial: str,
                                 firmware: str = "unknown",
                                 registration_number: str | None = None,
                                 registration_valid_until: int | None = None,
                                 calibration_due: int | None = None,
                                 actor: str, now: int) -> Device:
        """Record a standard device (no keys: it cannot seal; the gateway attests its
        readings) reached over `transport` at `address` (see `link_address`). The key
        journal is not touched: there is no key to account for."""
        address = link_address(transport, address)
        self._check_new_device(device_id, gateway_id, model, serial, firmware,
                               registration_number, registration_valid_until, calibration_due,
                               actor, now)
        other = self.device_at_link(transport, address)
        if other is not None:
            raise ConflictError("address", f"{transport} {address} is already registered as "
                                f"device {other.id!r}; retire that one first")
        self._insert_device(device_id, gateway_id, model, serial, firmware, registration_number,
                            registration_valid_until, calibration_due, actor, now,
                            kind="standard", transport=transport, address=address)
        return self.device(device_id)

    def device_at_link(self, transport: str, address: str) -> Device | None:
        """The active device registered at this link address, None if there is none."""
        address = link_address(transport, address)
        row = self._one(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE transport = ? AND "
                        "address = ? AND status = 'active'", (transport, address))
        return None if row is None else Device(*row)

    def manual_source(self, patient_id: str, gateway_id: str, *, actor: str,
                      now: int) -> Device:
        """The device id under which a patient's manual entries are journaled (one per
        patient, kind "manual", bound to the patient from `monitoring_since`), registered
        on first use. The centre attributes them to the patient like any device's."""
        since = self.monitoring_since(patient_id)
        device_id = manual_source_id(patient_id)
        with self.transaction():
            row = self._one("SELECT kind FROM devices WHERE id = ?", (device_id,))
            if row is None:
                _actor(actor)
                _seconds("now", now)
                self._active_holder("gateway", gateway_id)
                self._insert_device(device_id, gateway_id, "manual-entry", patient_id, "n/a",
                                    None, None, None, actor, now, kind="manual")
                self.bind(device_id, patient_id, since=since, actor=actor)
            elif row[0] != "manual":
                raise ConflictError("device_id", f"{device_id!r} is a {row[0]} device, not "
                                    f"the manual source of {patient_id!r}; retire it")
        return self.device(device_id)

    def _insert_device(self, device_id: str, gateway_id: str, model: str, serial: str,
                       firmware: str, registration_number: str | None,
                       registration_valid_until: int | None, calibration_due: int | None,
                       actor: str, now: int, *, kind: str, transport: str | None = None,
                       address: str | None = None) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO devices (id, gateway_id, model, serial, firmware, "
                "registration_number, registration_valid_until, calibration_due, enrolled_at, "
                "enrolled_by, kind, transport, address) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (device_id, gateway_id, model, serial, firmware, registration_number,
                 registration_valid_until, calibration_due, now, actor, kind, transport,
                 address))

    def add_device_certificate(self, device_id: str, certificate: bytes, *, actor: str,
                               now: int) -> CertificateRecord:
        """Record a renewed device CWT (new key pair generated on the device); the caller
        retires the previous keys in the same transaction."""
        device = self._active_holder("device", device_id)
        _actor(actor)
        _seconds("now", now)
        cert, issuer = self._verify_device_certificate(device_id, device.gateway_id,
                                                       certificate, now)
        with self.transaction():
            return self._insert_certified_keys("device", device_id, cert, bytes(certificate),
                                               issuer, actor, now)

    def _verify_device_certificate(self, device_id: str, gateway_id: str, certificate: bytes,
                                   now: int) -> tuple[cwt.Certificate, CertificateRecord]:
        parsed = self._parse_cwt(certificate)
        issuer_kid = parsed.issuer_kid.hex() if isinstance(parsed.issuer_kid, bytes) else "?"
        row = self._one("SELECT holder_kind, holder_id, purpose FROM keys WHERE kid = ?",
                        (issuer_kid,))
        if row != ("gateway", gateway_id, "signing"):
            raise RegistryError("certificate", f"was not issued by gateway {gateway_id!r} "
                                f"(issuer key {issuer_kid}); enroll the device through the "
                                "gateway it is paired with")
        gateway_cert = self.certificate_of_key(issuer_kid, "cwt")
        self._require_usable_issuer(gateway_cert, now)
        ca_kid = self.certificate(gateway_cert.issued_by).kid if gateway_cert.issued_by else None
        try:
            verified_gateway = cwt.verify_cwt(gateway_cert.raw, self._key_public(ca_kid))
            cert = cwt.verify_issued_by(certificate, verified_gateway)
        except ProtocolError as exc:
            raise RegistryError("certificate", f"does not verify against gateway {gateway_id!r}: "
                                f"{exc}; it was altered or comes from another issuer") from None
        self._check_subject(cert, "device", device_id, gateway_cert, now)
        return cert, gateway_cert

    def _check_subject(self, cert: cwt.Certificate, role: str, subject: str,
                       issuer: CertificateRecord, now: int) -> None:
        if cert.role != role:
            raise RegistryError("certificate", f"has role {cert.role!r}, not {role!r}")
        if cert.subject != subject:
            raise RegistryError("certificate", f"is for {cert.subject!r}, not {subject!r}")
        if cert.agreement_key is None:
            raise RegistryError("certificate", "carries no agreement (X25519) key: sessions "
                                "need one; issue it again with the agreement key")
        self._require_current("certificate", cert.not_before, cert.expires, now)
        if cert.expires > issuer.expires:
            raise RegistryError("certificate", f"expires after its issuer ({cert.expires} > "
                                f"{issuer.expires}); issue it with a shorter lifetime")
        self._require_new_key("certificate", cert.key_id.hex())
        self._require_new_key("certificate", cwt.key_id(cert.agreement_key).hex())

    def device(self, device_id: str) -> Device:
        return Device(*self._found(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = ?", device_id, "device_id",
            f"no device {device_id!r} is enrolled; list them with `vitalbridge device list`"))

    def devices(self, gateway_id: str | None = None, status: str | None = None) -> list[Device]:
        return [Device(*r) for r in self._select(
            f"SELECT {_DEVICE_COLUMNS} FROM devices", "id",
            gateway_id=gateway_id, status=status)]

    def update_device(self, device_id: str, *, firmware: str | None = None,
                      registration_number: str | None = None,
                      registration_valid_until: int | None = None,
                      calibration_due: int | None = None) -> Device:
        """Change the fields a maintenance visit changes (None = keep)."""
        self._active_holder("device", device_id)
        changes = {
            "firmware": _text("firmware", firmware, optional=True),
            "registration_number": _text("registration_number", registration_number,
                                         optional=True),
            "registration_valid_until": _seconds("registration_valid_until",
                                                 registration_valid_until, optional=True),
            "calibration_due": _seconds("calibration_due", calibration_due, optional=True),
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            with self.transaction():
                self._conn.execute(
                    "UPDATE devices SET " + ", ".join(f"{k} = ?" for k in changes)
                    + " WHERE id = ?", (*changes.values(), device_id))
        return self.device(device_id)

    def record_contact(self, device_id: str, *, at: int, battery: float | None = None) -> None:
        """A device was heard from: last seen (never moves back) and its battery level."""
        _seconds("at", at)
        if battery is not None and (isinstance(battery, bool)
                                    or not isinstance(battery, int | float)
                                    or not 0 <= battery <= 100):
            raise RegistryError("battery", "must be a percentage 0..100")
        self.device(device_id)
        with self.transaction():
            self._conn.execute(
                "UPDATE devices SET last_seen = max(coalesce(last_seen, 0), ?), "
                "battery = coalesce(?, battery) WHERE id = ?", (at, battery, device_id))

    def end_holder(self, holder_kind: str, holder_id: str, status: str, *, actor: str,
                   at: int, reason: str) -> None:
        """Mark a gateway or device retired or compromised (keys are the engine's job).
        A retired holder may still be declared compromised; nothing else follows an end."""
        table = {"gateway": "gateways", "device": "devices"}.get(holder_kind)
        if table is None or status not in ("retired", "compromised"):
            raise RegistryError("status", "only gateways and devices are retired or compromised")
        current = self._holder(holder_kind, holder_id)
        if current.status == status or current.status == "compromised":
            raise ConflictError(f"{holder_kind}_id", f"{holder_kind} {holder_id!r} is already "
                                f"{current.status} (at {current.ended_at})")
        _actor(actor)
        _seconds("at", at)
        with self.transaction():
            self._conn.execute(
                f"UPDATE {table} SET status = ?, ended_at = ?, ended_by = ?, end_reason = ? "
                "WHERE id = ?", (status, at, actor, _reason(reason), holder_id))

    def _holder(self, holder_kind: str, holder_id: str) -> Gateway | Device:
        return self.device(holder_id) if holder_kind == "device" else self.gateway(holder_id)

    def _active_holder(self, holder_kind: str, holder_id: str) -> Any:
        holder = self._holder(holder_kind, holder_id)
        if holder.status != "active":
            raise ConflictError(f"{holder_kind}_id", f"{holder_kind} {holder_id!r} is "
                                f"{holder.status} (since {holder.ended_at}); it takes no new "
                                "keys or bindings")
        return holder

    # -- patients and bindings ------------------------------------------------------------

    def add_patient(self, patient_id: str, *, actor: str, now: int) -> str:
        check_pseudonym(patient_id)
        _actor(actor)
        _seconds("now", now)
        if self._one("SELECT 1 FROM patients WHERE id = ?", (patient_id,)) is not None:
            raise ConflictError("patient_id", f"patient {patient_id!r} is already registered")
        with self.transaction():
            self._conn.execute("INSERT INTO patients (id, created_at, created_by) "
                               "VALUES (?, ?, ?)", (patient_id, now, actor))
        return patient_id

    def patient_registered_at(self, patient_id: str) -> int:
        return int(self._found("SELECT created_at FROM patients WHERE id = ?", patient_id,
                               "patient_id", f"no patient {patient_id!r} is registered at "
                               "this gateway; check the pseudonym, or bind a device to the "
                               "patient first (`vitalbridge device bind`)")[0])

    def monitoring_since(self, patient_id: str) -> int:
        """Since when this gateway monitors the patient: the earliest of their registration
        and their first binding (a binding may be dated back). Manual entries dated before
        it are refused."""
        registered = self.patient_registered_at(patient_id)
        row = self._one("SELECT min(since) FROM bindings WHERE patient_id = ?", (patient_id,))
        return registered if row is None or row[0] is None else min(registered, int(row[0]))

    def patients(self) -> list[str]:
        return [r[0] for r in self._all("SELECT id FROM patients ORDER BY id")]

    def bind(self, device_id: str, patient_id: str, *, since: int, until: int | None = None,
             actor: str) -> Binding:
        """Attribute a device's readings in [since, until) to a patient."""
        self._active_holder("device", device_id)
        if self._one("SELECT 1 FROM patients WHERE id = ?", (patient_id,)) is None:
            raise NotFoundError("patient_id", f"no patient {patient_id!r}; register the "
                                "pseudonym first")
        _seconds("since", since)
        _seconds("until", until, optional=True)
        if until is not None and until <= since:
            raise RegistryError("until", "must be after since")
        _actor(actor)
        clash = self._one(
            "SELECT patient_id, since, until FROM bindings WHERE device_id = ? AND since < ? "
            "AND coalesce(until, 9223372036854775807) > ?",
            (device_id, until if until is not None else 2**63 - 1, since))
        if clash is not None:
            raise ConflictError("since", f"device {device_id!r} is bound to {clash[0]!r} over "
                                f"[{clash[1]}, {clash[2] if clash[2] is not None else 'open'}); "
                                "end that binding first: one device, one patient at a time")
        with self.transaction():
            cursor = self._conn.execute(
                "INSERT INTO bindings (device_id, patient_id, since, until, created_by) "
                "VALUES (?, ?, ?, ?, ?)", (device_id, patient_id, since, until, actor))
        return self.binding(int(cursor.lastrowid or 0))

    def end_binding(self, binding_id: int, *, until: int, actor: str) -> Binding:
        binding = self.binding(binding_id)
        _seconds("until", until)
        _actor(actor)
        if binding.until is not None:
            raise ConflictError("binding_id", f"binding {binding_id} already ended at "
                                f"{binding.until}")
        if until <= binding.since:
            raise RegistryError("until", f"must be after the binding's start ({binding.since})")
        with self.transaction():
            self._conn.execute("UPDATE bindings SET until = ?, ended_by = ? WHERE id = ?",
                               (until, actor, binding_id))
        return self.binding(binding_id)

    def binding(self, binding_id: int) -> Binding:
        return Binding(*self._found(f"SELECT {_BINDING_COLUMNS} FROM bindings WHERE id = ?",
                                    binding_id, "binding_id", f"no binding {binding_id}"))

    def bindings(self, device_id: str | None = None,
                 patient_id: str | None = None) -> list[Binding]:
        return [Binding(*r) for r in self._select(
            f"SELECT {_BINDING_COLUMNS} FROM bindings", "device_id, since",
            device_id=device_id, patient_id=patient_id)]

    def patient_at(self, device_id: str, at: int) -> str | None:
        """Whose readings the device produced at `at` (None: not bound then)."""
        row = self._one("SELECT patient_id FROM bindings WHERE device_id = ? AND since <= ? "
                        "AND coalesce(until, 9223372036854775807) > ?", (device_id, at, at))
        return None if row is None else row[0]

    # -- keys and the key journal ---------------------------------------------------------

    def add_session_key(self, device_id: str, session_id: bytes, *, anchor: str,
                        not_before: int, expires: int, actor: str) -> KeyRecord:
        """Record a session key derived with the device's agreement key (certified under
        `anchor`, the device's signing key). Only its id is stored, never the key."""
        self._active_holder("device", device_id)
        kid = kid_hex(session_id)
        anchor_key = self.key(anchor)
        if (anchor_key.holder_kind, anchor_key.holder_id, anchor_key.purpose) != \
                ("device", device_id, "signing"):
            raise RegistryError("anchor", f"{anchor} is not a signing key of device "
                                f"{device_id!r}")
        _seconds("not_before", not_before)
        _seconds("expires", expires)
        if not not_before < expires <= anchor_key.expires:
            raise RegistryError("expires", "a session must end after it starts and no later "
                                "than its device key")
        self._require_new_key("session_id", kid)
        with self.transaction():
            self._insert_key(kid, "device", device_id, "session", "gateway", None, anchor,
                             not_before, expires, actor, not_before, created_by=actor)
        return self.key(kid)

    def key(self, kid: str) -> KeyRecord:
        row = self._found(f"SELECT {_KEY_COLUMNS} FROM keys WHERE kid = ?", kid, "kid",
                          f"no key {kid!r} in the key journal")
        return self._key_records([row])[0]

    def keys(self, holder_kind: str | None = None, holder_id: str | None = None,
             purpose: str | None = None) -> list[KeyRecord]:
        return self._key_records(self._select(
            f"SELECT {_KEY_COLUMNS} FROM keys", "rowid",
            holder_kind=holder_kind, holder_id=holder_id, purpose=purpose))

    def keys_used_with(self, kid: str) -> list[KeyRecord]:
        """The key's anchor (the certified signing key) and every key used together with it:
        for a device, its signing key, its agreement key and every session key derived with
        them."""
        key = self.key(kid)
        anchor = key.anchor or key.kid
        rows = self._all(f"SELECT {_KEY_COLUMNS} FROM keys WHERE kid = ? OR anchor = ? "
                         "ORDER BY rowid", (anchor, anchor))
        return self._key_records(rows)

    def current_key(self, holder_kind: str, holder_id: str, purpose: str,
                    now: int) -> KeyRecord | None:
        """The newest key of that purpose whose use has not ended (None if there is none)."""
        for key in reversed(self.keys(holder_kind, holder_id, purpose)):
            if states.ended_at(key.facts.as_of(now)) is None and key.facts.destroyed is None:
                return key
        return None

    def record_key_step(self, kid: str, step: str, *, at: int, actor: str,
                        reason: str = "") -> Step:
        """Append one step to the key journal, if the lifecycle allows it."""
        return self._checked_step(self.key(kid), "key_steps", "kid", kid, step, at, actor,
                                  reason)

    def key_journal(self, kid: str | None = None, since_seq: int = 0) -> list[Step]:
        """Every key step in the order recorded (optionally one key's, or after `since_seq`)."""
        sql = "SELECT seq, kid, step, at, actor, reason FROM key_steps WHERE seq > ?"
        args: tuple[Any, ...] = (since_seq,)
        if kid is not None:
            sql += " AND kid = ?"
            args += (kid,)
        return [Step(*r) for r in self._all(sql + " ORDER BY seq", args)]

    def _key_public(self, kid: str | None) -> bytes:
        row = self._one("SELECT public_key FROM keys WHERE kid = ?", (kid,))
        if row is None or row[0] is None:
            raise NotFoundError("kid", f"no public key {kid!r}")
        return bytes(row[0])

    def _require_new_key(self, field: str, kid: str) -> None:
        row = self._one("SELECT holder_kind, holder_id FROM keys WHERE kid = ?", (kid,))
        if row is not None:
            raise ConflictError(field, f"key {kid} is already registered to {row[0]} "
                                f"{row[1]!r}: every enrollment and renewal needs a freshly "
                                "generated key")

    def _insert_key(self, kid: str, holder_kind: str, holder_id: str, purpose: str,
                    held_at: str, public_key: bytes | None, anchor: str | None,
                    not_before: int, expires: int, actor: str, now: int, *,
                    created_by: str) -> None:
        self._conn.execute(
            f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kid, holder_kind, holder_id, purpose, held_at, public_key, anchor, not_before,
             expires))
        self._insert_step("key_steps", "kid", kid, states.CREATED, now, created_by, "")
        self._insert_step("key_steps", "kid", kid, states.ACTIVATED, now, actor, "")

    def _insert_certified_keys(self, holder_kind: str, holder_id: str, cert: cwt.Certificate,
                               raw: bytes, issuer: CertificateRecord, actor: str,
                               now: int) -> CertificateRecord:
        # The private keys were generated on the holder itself: it created them.
        creator = f"{holder_kind}:{holder_id}"
        signing = cert.key_id.hex()
        self._insert_key(signing, holder_kind, holder_id, "signing", holder_kind,
                         cert.public_key, None, cert.not_before, cert.expires, actor, now,
                         created_by=creator)
        agreement_key = cert.agreement_key
        assert agreement_key is not None  # _check_subject refused certificates without one
        self._insert_key(cwt.key_id(agreement_key).hex(), holder_kind, holder_id,
                         "agreement", holder_kind, agreement_key, signing, cert.not_before,
                         cert.expires, actor, now, created_by=creator)
        return self._insert_cwt_certificate(cert, raw, signing, issuer.id, actor, now)

    # -- certificates ---------------------------------------------------------------------

    def certificate(self, certificate_id: int) -> CertificateRecord:
        return self._cert_records([self._found(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE id = ?", certificate_id,
            "certificate_id", f"no certificate {certificate_id}")])[0]

    def certificates(self, kid: str | None = None) -> list[CertificateRecord]:
        return self._cert_records(self._select(f"SELECT {_CERT_COLUMNS} FROM certificates",
                                               "id", kid=kid))

    def certificate_of_key(self, kid: str, fmt: str | None = None) -> CertificateRecord:
        """The newest certificate of a key."""
        for record in reversed(self.certificates(kid)):
            if fmt is None or record.format == fmt:
                return record
        raise NotFoundError("kid", f"key {kid} has no certificate")

    def record_certificate_step(self, certificate_id: int, step: str, *, at: int, actor: str,
                                reason: str = "") -> Step:
        return self._checked_step(self.certificate(certificate_id), "certificate_steps",
                                  "certificate_id", certificate_id, step, at, actor, reason)

    def _cert_records(self, rows: list[tuple[Any, ...]]) -> list[CertificateRecord]:
        steps = self._steps("certificate_steps", "certificate_id", [r[0] for r in rows])
        return [CertificateRecord(*r[:9], bytes(r[9]), steps=steps.get(r[0], ())) for r in rows]

    def _key_records(self, rows: list[tuple[Any, ...]]) -> list[KeyRecord]:
        steps = self._steps("key_steps", "kid", [r[0] for r in rows])
        return [KeyRecord(*r, steps=steps.get(r[0], ())) for r in rows]

    def _insert_cwt_certificate(self, cert: cwt.Certificate, raw: bytes, kid: str,
                                issued_by: int | None, actor: str,
                                now: int) -> CertificateRecord:
        serial = cert.cti.hex() if cert.cti else hashlib.sha256(raw).hexdigest()[:32]
        return self._insert_certificate("cwt", serial, kid, cert.subject, cert.issuer,
                                        issued_by, cert.not_before, cert.expires, raw, actor,
                                        now)

    def _insert_x509_certificate(self, cert: x509.Certificate, kid: str, issued_by: int | None,
                                 actor: str, now: int) -> CertificateRecord:
        return self._insert_certificate(
            "x509", format(cert.serial_number, "x"), kid, cert.subject.rfc4514_string(),
            cert.issuer.rfc4514_string(), issued_by, _x509_time(cert.not_valid_before_utc),
            _x509_time(cert.not_valid_after_utc),
            cert.public_bytes(serialization.Encoding.PEM), actor, now)

    def _insert_certificate(self, fmt: str, serial: str, kid: str, subject: str, issuer: str,
                            issued_by: int | None, not_before: int, expires: int, raw: bytes,
                            actor: str, now: int) -> CertificateRecord:
        try:
            cursor = self._conn.execute(
                "INSERT INTO certificates (format, serial, kid, subject, issuer, issued_by, "
                "not_before, expires, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fmt, serial, kid, subject, issuer, issued_by, not_before, expires, raw))
        except sqlite3.IntegrityError:
            raise ConflictError("certificate", f"{issuer} certificate {serial} is already "
                                "recorded") from None
        cert_id = int(cursor.lastrowid or 0)
        self._insert_step("certificate_steps", "certificate_id", cert_id, states.CREATED, now,
                          actor, "")
        self._insert_step("certificate_steps", "certificate_id", cert_id, states.ACTIVATED, now,
                          actor, "")
        return self.certificate(cert_id)

    # -- shared helpers -------------------------------------------------------------------

    def _checked_step(self, record: _Journaled, table: str, column: str, subject: object,
                      step: str, at: int, actor: str, reason: str) -> Step:
        _actor(actor)
        _reason(reason)
        states.check_step(record.facts, step, at)
        with self.transaction():
            seq = self._insert_step(table, column, subject, step, at, actor, reason)
        return Step(seq, str(subject), step, at, actor, reason)

    def _insert_step(self, table: str, column: str, subject: object, step: str, at: int,
                     actor: str, reason: str) -> int:
        cursor = self._conn.execute(
            f"INSERT INTO {table} ({column}, step, at, actor, reason) VALUES (?, ?, ?, ?, ?)",
            (subject, step, at, actor, reason))
        return int(cursor.lastrowid or 0)

    def _steps(self, table: str, column: str,
               subjects: list[Any]) -> dict[Any, tuple[Step, ...]]:
        """The journal steps of these keys or certificates, grouped, in recorded order."""
        grouped: dict[Any, list[Step]] = {}
        for start in range(0, len(subjects), 500):
            chunk = subjects[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for r in self._all(f"SELECT seq, {column}, step, at, actor, reason FROM {table} "
                               f"WHERE {column} IN ({marks}) ORDER BY seq", tuple(chunk)):
                grouped.setdefault(r[1], []).append(Step(r[0], str(r[1]), *r[2:]))
        return {k: tuple(v) for k, v in grouped.items()}

    def _parse_cwt(self, certificate: object) -> cwt.Certificate:
        if not isinstance(certificate, bytes | bytearray):
            raise RegistryError("certificate", "must be the CWT bytes")
        try:
            return cwt.parse_cwt(bytes(certificate))
        except ProtocolError as exc:
            raise RegistryError("certificate", f"is not a readable CWT certificate: {exc}") \
                from None

    def _load_pem(self, field: str, pem: object) -> x509.Certificate:
        if not isinstance(pem, bytes):
            raise RegistryError(field, "must be PEM bytes")
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise RegistryError(field, f"is not a PEM X.509 certificate: {exc}") from None

    def _require_current(self, field: str, not_before: int, expires: int, now: int) -> None:
        if now >= expires:
            raise RegistryError(field, f"expired at {expires} (now {now}); issue a new one, or "
                                "check the gateway clock")
        if not_before - now > states.DAY:
            raise RegistryError(field, f"is valid only from {not_before} (now {now}); check "
                                "the gateway clock")

    def _require_usable_issuer(self, issuer: CertificateRecord, now: int) -> None:
        key_state = self.key(issuer.kid).state(now)
        cert_state = issuer.state(now)
        for what, value in (("key", key_state), ("certificate", cert_state)):
            if value not in states.USABLE:
                raise RegistryError("certificate", f"its issuer {issuer.subject!r} has a "
                                    f"{value} {what}: it may no longer issue certificates")
