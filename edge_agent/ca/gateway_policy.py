"""The CA's decision on a gateway's certificate request (pure: no files, no clock).

One valid generation per gateway id: the CWT and TLS certificate last issued to it from one
request. A plain provisioning request for an id whose generation is still valid is refused
(whoever can write a request could otherwise take over an existing gateway's id) unless the
technician asks to replace it; a renewal is accepted only when countersigned by the key of
that id's CURRENT generation, issued by this CA, unexpired and never revoked. An id whose
generation expired or was revoked is provisioned afresh: a key that leaked or lapsed cannot
vouch for its successor. docs/keys-and-certificates.md, "CA side".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.ca.exchange import GatewayRequest
from protocol import cwt
from protocol.errors import ProtocolError

PROVISIONING = "provisioning"
RENEWAL = "renewal"
REPLACEMENT = "replacement"

VALID = "valid"
EXPIRED = "expired"
REVOKED = "revoked"
COMPROMISED = "compromised"
COMPROMISE_REASON = "key-compromise"  # the CA's revocation reason code for a leaked key


@dataclass(frozen=True, slots=True)
class GatewayGeneration:
    """The certificates the CA last issued to one gateway id (from its records)."""

    gateway_id: str
    cwt_serial: str  # the CWT's cti, hex
    tls_serial: str | None  # the TLS client certificate issued from the same request
    issued_at: int
    not_after: int
    request_digest: str | None  # SHA-256 of the request file it answered, hex
    revocation: str | None  # reason code when either certificate was revoked

    def state(self, now: int) -> str:
        if self.revocation == COMPROMISE_REASON:
            return COMPROMISED
        if self.revocation is not None:
            return REVOKED
        return EXPIRED if now >= self.not_after else VALID


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: bool
    mode: str  # provisioning | renewal | replacement
    reason: str  # why, short enough for the event journal (<= 200 characters)
    supersedes: GatewayGeneration | None = None
    advice: str = ""  # what the technician does next (shown, not journaled)

    @property
    def message(self) -> str:
        return f"{self.reason}; {self.advice}" if self.advice else self.reason


def decide(request: GatewayRequest, current: GatewayGeneration | None, *, ca_public: bytes,
           ca_name: str, now: int, replace: bool = False) -> Decision:
    """Accept or refuse a request whose proofs of possession already verified
    (exchange.read_gateway_request). `current`: the id's last generation, or None."""
    if current is not None and current.request_digest == request.digest.hex() and \
            current.state(now) == VALID:
        # The very request already accepted (a lost response, a retried command): the
        # requester proved possession of the keys this CA certified for the id.
        return Decision(True, RENEWAL if request.is_renewal else PROVISIONING,
                        "the same request again: certificates issued anew", current)
    if request.is_renewal:
        return _renewal(request, current, ca_public, ca_name, now, replace)
    return _provisioning(request, current, now, replace)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


PROVISION_AGAIN = ("provision the gateway again with a plain request (`vitalbridge gateway "
                   "provision` on a fresh data directory)")


def _renewal(request: GatewayRequest, current: GatewayGeneration | None, ca_public: bytes,
             ca_name: str, now: int, replace: bool) -> Decision:
    gateway_id = request.gateway_id

    def refuse(reason: str, advice: str = "") -> Decision:
        return Decision(False, RENEWAL, reason, current, advice)

    if replace:
        return refuse("--replace applies to a plain provisioning request, not a renewal",
                      "sign the renewal without --replace")
    presented = request.current_certificate
    if presented is None:  # read_gateway_request sets it for every renewal
        return refuse("the renewal carries no certificate of the countersigning key")
    try:
        cert = cwt.verify_cwt(presented.raw, ca_public, issuer=ca_name)
    except ProtocolError as exc:
        return refuse(f"the countersigning certificate was not issued by this CA ({exc})"[:200])
    if cert.role != "gateway" or cert.subject != gateway_id:
        return refuse(f"countersigned by the key of another certificate ({cert.subject!r}, "
                      f"{cert.role or 'no role'}): a gateway can only renew itself")
    if current is None:
        return refuse(f"this CA has issued no certificate to {gateway_id!r}: nothing to renew",
                      PROVISION_AGAIN)
    serial = (cert.cti or b"").hex()
    if serial != current.cwt_serial:
        return refuse(f"countersigned by a superseded key of {gateway_id!r} (certificate "
                      f"{serial or '-'}, current {current.cwt_serial})",
                      "only the current certificate's key may countersign")
    state = current.state(now)
    if state in (COMPROMISED, REVOKED):
        return refuse(f"countersigned by a {state} key: {gateway_id!r}'s current certificate "
                      f"was revoked ({current.revocation})", PROVISION_AGAIN)
    if state == EXPIRED or now >= cert.expires:
        return refuse(f"countersigned by an expired key: {gateway_id!r}'s certificate expired "
                      f"at {_iso(cert.expires)}", PROVISION_AGAIN)
    return Decision(True, RENEWAL, f"countersigned by the current key {cert.key_id.hex()} "
                    f"(certificate {serial})", current)


def _provisioning(request: GatewayRequest, current: GatewayGeneration | None, now: int,
                  replace: bool) -> Decision:
    gateway_id = request.gateway_id
    if current is None:
        return Decision(True, PROVISIONING, f"first certificate for {gateway_id!r}")
    state = current.state(now)
    if state == VALID and not replace:
        return Decision(
            False, PROVISIONING,
            f"{gateway_id!r} already holds a valid certificate (serial {current.cwt_serial}, "
            f"until {_iso(current.not_after)}): a plain request cannot take over its id", current,
            "renew it with `vitalbridge gateway renew` (countersigned by its current key); "
            "to replace a gateway that lost its keys, sign with `vitalbridge ca sign-request "
            "--replace --reason TEXT`, which revokes its current certificates")
    if state == VALID:
        return Decision(True, REPLACEMENT, f"replaces certificate {current.cwt_serial} "
                        "(revoked as superseded)", current)
    detail = current.revocation if state in (REVOKED, COMPROMISED) else "expired"
    return Decision(True, PROVISIONING, f"provisioned again: the previous certificate "
                    f"{current.cwt_serial} is {state} ({detail})", current)
