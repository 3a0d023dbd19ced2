"""The organisation CA: CWT certificates for gateways and X.509 credentials for the broker.

Two keys, both generated here and never exported:
  * an Ed25519 key that signs the self-signed CA CWT and every gateway CWT (protocol.cwt);
  * an ECDSA P-256 key for the X.509 CA that mosquitto's TLS listener trusts: gateway client
    certificates (CN = gateway id, which the broker uses as the MQTT user name), the
    monitoring centre's client certificate, the broker's server certificate, and the CRL.
P-256 rather than Ed25519 on the TLS side because every MQTT client stack and TLS 1.2 speak
it; and one key per job, so a weakness on one side never spills to the other.

X.509 certificates are issued only from a PKCS#10 request: the request's signature proves the
requester holds the private key, which was generated where it is used and never travels.

Directory layout (0700; docs/keys-and-certificates.md): ca-signing.key, tls-ca.key (0600),
ca.cwt, tls-ca.pem, crl.pem, ca.json (issued and revoked serials, CRL number). `vitalbridge ca
init` is for labs and tests; in production only ca.cwt / tls-ca.pem leave the CA host.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.ca import keyfiles
from edge_agent.ca.gateway_policy import COMPROMISE_REASON, GatewayGeneration
from protocol import crypto, cwt, topics
from protocol.errors import ProtocolError, ValidationError

SIGNING_KEY_FILE = "ca-signing.key"
CA_CWT_FILE = "ca.cwt"
TLS_KEY_FILE = "tls-ca.key"
TLS_CERT_FILE = "tls-ca.pem"
CRL_FILE = "crl.pem"
STATE_FILE = "ca.json"

DAY = cwt.DAY
GATEWAY_CWT = "gateway-cwt"
GATEWAY_TLS = "gateway-tls"
# The MQTT user name (certificate CN) of the monitoring centre; no gateway may carry it.
DEFAULT_CENTRE_NAME = "vb-centre"
# X.509 validity starts a little in the past so a peer whose clock lags still accepts it.
BACKDATE = 300
DEFAULT_CRL_DAYS = 7
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)

REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    COMPROMISE_REASON: x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


class CAError(ValidationError):
    """The CA refuses a request; `field` names what is wrong and the text says what to do."""


@dataclass(frozen=True, slots=True)
class IssuedRecord:
    serial: str  # hex: X.509 serial or CWT cti
    common_name: str
    kind: str  # gateway-cwt | gateway-tls | centre-tls | broker-tls
    issued_at: int
    not_after: int
    # Gateway certificates issued from a request file (absent in records written before
    # renewals were countersigned): SHA-256 of the request and of the certificate, hex.
    request_digest: str | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class RevokedRecord:
    serial: str
    at: int
    reason: str


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _seconds(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CAError(name, "must be integer POSIX seconds (UTC)")
    return value


def _lifetime(days: object) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
        raise CAError("lifetime_days", "must be a whole number of days, 1..36500")
    return days * DAY


def load_request(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM certificate request and check its proof of possession and key type."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise CAError("request", f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise CAError("request", "its signature does not verify: the requester does not "
                      "hold the private key (proof of possession failed)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or \
            not isinstance(key.curve, ACCEPTED_CURVES):
        raise CAError("request", "the key must be ECDSA P-256 or P-384 (what every MQTT TLS "
                      "stack accepts); generate it with new_tls_key()")
    return csr


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key, generated where it will be used (gateway, centre, broker host)."""
    return ec.generate_private_key(ec.SECP256R1())


def tls_request(common_name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM certificate request for `common_name`, signed by `key` (proof of possession)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _request_cn(csr: x509.CertificateSigningRequest) -> str | None:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


class OrgCA:
    """An organisation CA held in one directory. Create with init(), reopen with load()."""

    def __init__(self, directory: Path, seed: bytes, tls_key: ec.EllipticCurvePrivateKey,
                 certificate: bytes, tls_certificate: x509.Certificate,
                 state: dict[str, Any]) -> None:
        self.directory = directory
        self._seed = seed
        self._tls_key = tls_key
        self.certificate = certificate  # the self-signed CA CWT
        self.tls_certificate = tls_certificate
        self._state = state
        self._cwt = cwt.parse_cwt(certificate)

    # -- creation and loading -------------------------------------------------------------

    @classmethod
    def init(cls, directory: str | os.PathLike[str], name: str, *, now: int,
             lifetime_days: int = 3650, centre_name: str = DEFAULT_CENTRE_NAME) -> OrgCA:
        """Generate both CA keys here and write a new CA; refuses an existing one."""
        root = keyfiles.ensure_private_dir(directory)
        if (root / STATE_FILE).exists() or (root / SIGNING_KEY_FILE).exists():
            raise CAError("directory", f"{root} already holds a CA; load it instead of "
                          "creating a second one over it")
        _seconds("now", now)
        topics.check_id("centre_name", centre_name)
        if not isinstance(name, str) or not 0 < len(name) <= cwt.MAX_TEXT:
            raise CAError("name", f"must be 1..{cwt.MAX_TEXT} characters")
        expires = now + _lifetime(lifetime_days)
        seed = crypto.random_bytes(32)
        certificate = cwt.issue_cwt(seed, name, name, crypto.ed25519_public_key(seed), now,
                                    expires, role="ca")
        tls_key = new_tls_key()
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"{name} TLS CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(tls_key.public_key())
        tls_cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(tls_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - BACKDATE)).not_valid_after(_utc(expires))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(tls_key, hashes.SHA256())
        )
        keyfiles.save_ed25519_seed(root / SIGNING_KEY_FILE, seed)
        keyfiles.save_private_key(root / TLS_KEY_FILE, tls_key)
        keyfiles.write_public(root / CA_CWT_FILE, certificate)
        keyfiles.write_public(root / TLS_CERT_FILE, tls_cert.public_bytes(
            serialization.Encoding.PEM))
        state = {"name": name, "centre_name": centre_name, "crl_number": 0,
                 "issued": [], "revoked": []}
        ca = cls(root, seed, tls_key, certificate, tls_cert, state)
        ca._save_state()
        ca.write_crl(now)  # the broker refuses every client while it has no CRL to check
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> OrgCA:
        """Open an existing CA (key files must be 0600 in a 0700 directory)."""
        root = Path(directory)
        try:
            state = json.loads(keyfiles.read_private(root / STATE_FILE))
            seed = keyfiles.load_ed25519_seed(root / SIGNING_KEY_FILE)
            tls_key = keyfiles.load_ec_key(root / TLS_KEY_FILE)
            certificate = (root / CA_CWT_FILE).read_bytes()
            tls_cert = x509.load_pem_x509_certificate((root / TLS_CERT_FILE).read_bytes())
        except FileNotFoundError as exc:
            raise CAError("directory", f"{root} is not a CA directory ({exc.filename} is "
                          "missing); create one with OrgCA.init") from None
        ca = cls(root, seed, tls_key, certificate, tls_cert, state)
        if ca._cwt.public_key != crypto.ed25519_public_key(seed):
            raise CAError("directory", f"{root}: {CA_CWT_FILE} does not belong to "
                          f"{SIGNING_KEY_FILE}; the directory was mixed up")
        return ca

    def _save_state(self) -> None:
        data = json.dumps(self._state, indent=1, sort_keys=True).encode()
        keyfiles.write_private(self.directory / STATE_FILE, data, replace=True)

    # -- facts ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self._state["name"])

    @property
    def centre_name(self) -> str:
        return str(self._state["centre_name"])

    @property
    def public_key(self) -> bytes:
        return self._cwt.public_key

    @property
    def expires(self) -> int:
        return self._cwt.expires

    @property
    def tls_certificate_pem(self) -> bytes:
        return self.tls_certificate.public_bytes(serialization.Encoding.PEM)

    def issued(self) -> list[IssuedRecord]:
        return [IssuedRecord(**r) for r in self._state["issued"]]

    def revoked(self) -> list[RevokedRecord]:
        return [RevokedRecord(**r) for r in self._state["revoked"]]

    def _record_issue(self, serial: str, common_name: str, kind: str, now: int,
                      not_after: int, certificate: bytes,
                      request_digest: bytes | None = None) -> None:
        record: dict[str, Any] = {"serial": serial, "common_name": common_name, "kind": kind,
                                  "issued_at": now, "not_after": not_after,
                                  "digest": crypto.sha256(certificate).hex()}
        if request_digest is not None:
            record["request_digest"] = bytes(request_digest).hex()
        self._state["issued"].append(record)
        self._save_state()

    def gateway_generation(self, gateway_id: str) -> GatewayGeneration | None:
        """The certificates last issued to `gateway_id`: its newest CWT and the TLS
        certificate issued from the same request (None for a CWT issued without one)."""
        cwts = [r for r in self.issued() if r.kind == GATEWAY_CWT and r.common_name == gateway_id]
        if not cwts:
            return None
        last = cwts[-1]
        tls = [r for r in self.issued() if r.kind == GATEWAY_TLS and r.common_name == gateway_id
               and last.request_digest is not None and r.request_digest == last.request_digest]
        tls_serial = tls[-1].serial if tls else None
        reasons = {r.serial: r.reason for r in self.revoked()}
        # a compromise of either certificate outranks any other reason
        found = [reasons[s] for s in (last.serial, tls_serial) if s in reasons]
        revocation = (COMPROMISE_REASON if COMPROMISE_REASON in found
                      else found[0] if found else None)
        return GatewayGeneration(gateway_id, last.serial, tls_serial, last.issued_at,
                                 last.not_after, last.request_digest, revocation)

    def _window(self, now: int, lifetime_days: int) -> tuple[int, int]:
        _seconds("now", now)
        expires = now + _lifetime(lifetime_days)
        if expires > self.expires:
            raise CAError("lifetime_days", f"the certificate would outlive the CA (which "
                          f"expires at {self.expires}); shorten it or renew the CA first")
        if now >= self.expires:
            raise CAError("now", "the CA itself has expired; create a new CA")
        return now, expires

    # -- gateway CWT ----------------------------------------------------------------------

    def issue_gateway_certificate(self, gateway_id: str, public_key: bytes,
                                  agreement_key: bytes, *, now: int, lifetime_days: int = 365,
                                  model: str | None = None, serial: str | None = None,
                                  request_digest: bytes | None = None) -> bytes:
        """A gateway CWT (role gateway) for keys the gateway generated and proved it holds.
        `request_digest` links it to the request file (and so to its TLS certificate)."""
        self._check_gateway_name(gateway_id)
        not_before, expires = self._window(now, lifetime_days)
        try:
            certificate = cwt.issue_cwt(self._seed, self.name, gateway_id, public_key,
                                        not_before, expires, agreement_key=agreement_key,
                                        role="gateway", model=model, serial=serial)
        except ProtocolError as exc:
            raise CAError("certificate", str(exc)) from None
        self._record_issue(cwt.parse_cwt(certificate).cti.hex(), gateway_id, GATEWAY_CWT,
                           now, expires, certificate, request_digest)
        return certificate

    def _check_gateway_name(self, gateway_id: str) -> None:
        topics.check_id("gateway_id", gateway_id)
        if gateway_id == self.centre_name:
            raise CAError("gateway_id", f"{gateway_id!r} is the monitoring centre's broker "
                          "identity; a gateway with that name would get the centre's rights")

    # -- X.509 ----------------------------------------------------------------------------

    def issue_gateway_tls(self, request_pem: bytes, gateway_id: str, *, now: int,
                          lifetime_days: int = 365,
                          request_digest: bytes | None = None) -> bytes:
        """A broker client certificate for a gateway: CN = gateway id = MQTT user name."""
        self._check_gateway_name(gateway_id)
        return self._issue_client(request_pem, gateway_id, GATEWAY_TLS, now, lifetime_days,
                                  request_digest)

    def issue_centre_tls(self, request_pem: bytes, *, now: int,
                         lifetime_days: int = 365) -> bytes:
        """The monitoring centre's broker client certificate (CN = centre_name)."""
        return self._issue_client(request_pem, self.centre_name, "centre-tls", now,
                                  lifetime_days)

    def _issue_client(self, request_pem: bytes, common_name: str, kind: str, now: int,
                      lifetime_days: int, request_digest: bytes | None = None) -> bytes:
        csr = load_request(request_pem)
        if _request_cn(csr) != common_name:
            raise CAError("request", f"asks for CN {_request_cn(csr)!r}, expected "
                          f"{common_name!r}; generate the request on that machine with its id")
        return self._sign(csr, common_name, kind, now, lifetime_days,
                          ExtendedKeyUsageOID.CLIENT_AUTH, (), request_digest)

    def issue_broker_tls(self, request_pem: bytes, *, hostnames: Sequence[str] = (),
                         ip_addresses: Sequence[str] = (), now: int,
                         lifetime_days: int = 365) -> bytes:
        """The broker's server certificate, valid for the given names and addresses."""
        csr = load_request(request_pem)
        alt: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        try:
            alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        except ValueError as exc:
            raise CAError("ip_addresses", str(exc)) from None
        if not alt:
            raise CAError("hostnames", "name at least one host name or IP address clients "
                          "connect to: TLS clients check it")
        common_name = _request_cn(csr) or (hostnames[0] if hostnames else ip_addresses[0])
        return self._sign(csr, common_name, "broker-tls", now, lifetime_days,
                          ExtendedKeyUsageOID.SERVER_AUTH, alt)

    def _sign(self, csr: x509.CertificateSigningRequest, common_name: str, kind: str, now: int,
              lifetime_days: int, usage: x509.ObjectIdentifier,
              alt_names: Sequence[x509.GeneralName],
              request_digest: bytes | None = None) -> bytes:
        not_before, expires = self._window(now, lifetime_days)
        ca_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._tls_key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                                     x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.tls_certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before - BACKDATE)).not_valid_after(_utc(expires))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),
                           critical=False)
            .add_extension(ca_key_id, critical=False)
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)),
                                            critical=False)
        cert = builder.sign(self._tls_key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        self._record_issue(format(cert.serial_number, "x"), common_name, kind, now, expires,
                           pem, request_digest)
        return pem

    # -- revocation -----------------------------------------------------------------------

    def revoke(self, certificate_pem: bytes, *, now: int, reason: str = "unspecified") -> str:
        """Put an X.509 certificate this CA issued on the revocation list; returns its serial.
        Write the CRL and reload the broker for it to take effect (write_crl)."""
        _seconds("now", now)
        if reason not in REVOCATION_REASONS:
            raise CAError("reason", f"must be one of {', '.join(REVOCATION_REASONS)}")
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError as exc:
            raise CAError("certificate", f"not a PEM X.509 certificate: {exc}") from None
        serial = format(cert.serial_number, "x")
        if not any(r["serial"] == serial for r in self._state["issued"]):
            raise CAError("certificate", f"serial {serial} was not issued by CA {self.name!r}")
        if any(r["serial"] == serial for r in self._state["revoked"]):
            raise CAError("certificate", f"serial {serial} is already revoked")
        self._state["revoked"].append({"serial": serial, "at": now, "reason": reason})
        self._save_state()
        return serial

    def revoke_gateway(self, gateway_id: str, *, now: int,
                       reason: str = "unspecified") -> list[IssuedRecord]:
        """Revoke the gateway's current generation (its CWT and the TLS certificate issued
        with it) -> the records revoked now. A "key-compromise" revocation also stops that
        key from countersigning a renewal. Write the CRL and reload the broker after it."""
        generation = self.gateway_generation(gateway_id)
        if generation is None:
            raise CAError("gateway_id", f"CA {self.name!r} has issued no certificate to "
                          f"{gateway_id!r}")
        return self.revoke_generation(generation, now=now, reason=reason)

    def revoke_generation(self, generation: GatewayGeneration, *, now: int,
                          reason: str) -> list[IssuedRecord]:
        """Revoke what of `generation` is not revoked yet -> the records revoked now."""
        _seconds("now", now)
        if reason not in REVOCATION_REASONS:
            raise CAError("reason", f"must be one of {', '.join(REVOCATION_REASONS)}")
        revoked = {r["serial"] for r in self._state["revoked"]}
        wanted = {generation.cwt_serial, generation.tls_serial} - revoked
        records = [r for r in self.issued() if r.serial in wanted]
        if not records:
            raise CAError("gateway_id", f"{generation.gateway_id!r}'s current certificates "
                          "are already revoked")
        for record in records:
            self._state["revoked"].append({"serial": record.serial, "at": now,
                                           "reason": reason})
        self._save_state()
        return records

    def crl(self, now: int, *, validity_days: int = DEFAULT_CRL_DAYS) -> bytes:
        """A signed CRL (PEM) of every revoked serial, valid for `validity_days`. Peers
        (OpenSSL in mosquitto) refuse ALL clients once it passes next_update: regenerate it
        well before, e.g. daily."""
        _seconds("now", now)
        self._state["crl_number"] += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.tls_certificate.subject)
            .last_update(_utc(now - BACKDATE))
            .next_update(_utc(now + _lifetime(validity_days)))
            .add_extension(x509.CRLNumber(self._state["crl_number"]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._tls_key.public_key()), critical=False)
        )
        x509_serials = {r["serial"] for r in self._state["issued"] if r["kind"] != GATEWAY_CWT}
        for entry in self._state["revoked"]:
            if entry["serial"] not in x509_serials:  # a CWT serial: not on the X.509 CRL
                continue
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(_utc(entry["at"]))
                .add_extension(x509.CRLReason(REVOCATION_REASONS[entry["reason"]]),
                               critical=False)
                .build())
        crl = builder.sign(self._tls_key, hashes.SHA256())
        self._save_state()
        return crl.public_bytes(serialization.Encoding.PEM)

    def write_crl(self, now: int, path: str | os.PathLike[str] | None = None, *,
                  validity_days: int = DEFAULT_CRL_DAYS) -> Path:
        """Write a fresh CRL (default: crl.pem in the CA directory) atomically."""
        target = Path(path) if path is not None else self.directory / CRL_FILE
        return keyfiles.write_public(target, self.crl(now, validity_days=validity_days))
