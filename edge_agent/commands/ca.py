"""`vitalbridge ca`: the organisation CA for labs and tests, and the CA's half of gateway
enrollment and renewal.

  vitalbridge ca init --dir DIR [--org NAME] [--lifetime-days N] [--json]
  vitalbridge ca sign-request REQUEST --dir DIR --out RESPONSE [--lifetime-days N]
                              [--replace --reason TEXT] [--actor NAME] [--json]
  vitalbridge ca revoke-gateway GW --dir DIR --reason CODE [--note TEXT] [--actor NAME] [--json]

`init` creates a CA directory (edge_agent.ca.org_ca). In production the CA lives on its own
host and only ca.cwt leaves it; a gateway provisioned with `--ca-cert ca.cwt` writes a signed
request file, the CA signs it with `sign-request`, and the gateway installs the response with
`vitalbridge gateway install-cert`. `gateway renew` writes a renewal file countersigned by
the gateway's current key; `sign-request` reads both kinds (edge_agent.ca.exchange).

The CA keeps one valid certificate generation per gateway id (edge_agent.ca.gateway_policy):
a plain request for an id that holds a valid certificate is refused unless `--replace`
(which revokes that generation); a renewal needs the countersignature of the id's current,
unexpired, unrevoked key. Every decision is journaled in the CA's own event journal
(events.sqlite3 in the CA directory, signed by the CA key) with the technician's name.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_agent.ca.exchange import (  # noqa: F401 - the exchange API, re-exported
    MAX_EXCHANGE,
    GatewayRequest,
    GatewayResponse,
    make_gateway_request,
    make_renewal_request,
    read_gateway_request,
    read_gateway_response,
)
from edge_agent.cli import CommandError
from edge_agent.commands import common

DEFAULT_ORG = "VitalBridge Lab CA"
CA_EVENTS_FILE = common.EVENTS_FILE

Entry = tuple[str, str, str, dict[str, Any]]


# -- the CA's half of enrollment ------------------------------------------------------------


def sign_gateway_request(ca_dir: Path, request_bytes: bytes, now: int, lifetime_days: int,
                         *, actor: str, replace: bool = False,
                         note: str | None = None) -> tuple[GatewayRequest, bytes]:
    """The CA's side: check the request, decide (gateway_policy), issue the gateway CWT and
    TLS client certificate, and return (request, response file bytes) signed by the CA key.
    Every decision, refusals included, goes to the CA's event journal; a refusal raises
    CAError (field "request") saying why and what to do."""
    from edge_agent.ca import exchange, gateway_policy, keyfiles, org_ca
    from protocol import crypto
    from protocol.errors import ProtocolError

    if note is not None:  # refused now, not after the certificates were issued
        common.check_entries(_revoked_entries(actor, "x", ["0" * 64], "superseded",
                                              f"replaced: {note}"))
    ca = org_ca.OrgCA.load(ca_dir)
    digest = crypto.sha256(request_bytes)
    seed = keyfiles.load_ed25519_seed(ca.directory / org_ca.SIGNING_KEY_FILE)
    try:
        request = read_gateway_request(request_bytes)
    except ProtocolError as exc:
        _journal_ca(ca, seed, [_decision_entry(actor, None, digest, None, False,
                                               f"unreadable or forged request: {exc}")], now)
        raise org_ca.CAError("request", f"{exc}; ask the gateway for its request file again "
                             "(certs/gateway-request.cose or certs/gateway-renewal.cose)"
                             ) from None
    decision = gateway_policy.decide(request, ca.gateway_generation(request.gateway_id),
                                     ca_public=ca.public_key, ca_name=ca.name, now=now,
                                     replace=replace)
    if decision.accepted and decision.mode == gateway_policy.REPLACEMENT and not note:
        decision = gateway_policy.Decision(False, decision.mode, "--replace needs --reason",
                                           decision.supersedes, "say why the gateway is "
                                           "replaced (journaled)")
    if not decision.accepted:
        _journal_ca(ca, seed, [_decision_entry(actor, request, digest, decision.mode, False,
                                               decision.reason)], now)
        raise org_ca.CAError("request", f"refused: {decision.message}")
    try:  # TLS first: a bad CSR must not leave a new "current" CWT behind
        tls = ca.issue_gateway_tls(request.csr_pem, request.gateway_id, now=now,
                                   lifetime_days=lifetime_days, request_digest=digest)
        certificate = ca.issue_gateway_certificate(
            request.gateway_id, request.public_key, request.agreement_key, now=now,
            lifetime_days=lifetime_days, request_digest=digest)
    except (ProtocolError, org_ca.CAError) as exc:
        _journal_ca(ca, seed, [_decision_entry(actor, request, digest, decision.mode, False,
                                               f"issuing failed: {exc}"[:200])], now)
        raise
    entries = [_decision_entry(actor, request, digest, decision.mode, True, decision.reason,
                               decision.supersedes)]
    entries += _issued_entries(ca, actor, request, certificate, tls)
    if decision.mode == gateway_policy.REPLACEMENT:
        revoked = ca.revoke_generation(decision.supersedes, now=now, reason="superseded")
        ca.write_crl(now)
        entries += _revoked_entries(actor, request.gateway_id, [r.digest for r in revoked],
                                    "superseded", f"replaced: {note}")
    elif decision.mode == gateway_policy.RENEWAL and request.current_certificate is not None:
        entries.append(("certificate.renewal", actor, f"gateway:{request.gateway_id}",
                         {"cert_digest": common.digest_hex(request.current_certificate.raw),
                          "new_cert_digest": common.digest_hex(certificate),
                          "subject_id": request.gateway_id}))
    _journal_ca(ca, seed, entries, now)
    response = exchange.make_gateway_response(seed, request.gateway_id, certificate, tls,
                                              ca.tls_certificate_pem, request_bytes)
    return request, response


def _decision_entry(actor: str, request: GatewayRequest | None, digest: bytes,
                    mode: str | None, accepted: bool, reason: str,
                    supersedes: Any = None) -> Entry:
    from protocol import cose

    details: dict[str, Any] = {"decision": "accepted" if accepted else "refused",
                               "request_digest": digest.hex(), "reason": reason[:200]}
    if mode is not None:
        details["mode"] = mode
    if supersedes is not None:
        details["supersedes"] = supersedes.cwt_serial
    if request is None:
        return "certificate.request", actor, f"request:{digest.hex()[:16]}", details
    details["subject_id"] = request.gateway_id
    details["key_id"] = cose.key_id(request.public_key).hex()
    if request.countersigner_kid is not None:
        details["countersigned_by"] = request.countersigner_kid.hex()
    return "certificate.request", actor, f"gateway:{request.gateway_id}", details


def _issued_entries(ca: Any, actor: str, request: GatewayRequest, certificate: bytes,
                    tls_pem: bytes) -> list[Entry]:
    from cryptography import x509

    from edge_agent.registry import tls_key_id
    from protocol import cwt

    cert = cwt.parse_cwt(certificate)
    tls = x509.load_pem_x509_certificate(tls_pem)
    issuer = common.as_ident(ca.name)
    subject = f"gateway:{request.gateway_id}"
    return [
        ("certificate.issued", actor, subject,
         {"cert_digest": common.digest_hex(certificate), "subject_id": request.gateway_id,
          "issuer": issuer, "key_id": cert.key_id.hex(), "not_before": cert.not_before,
          "expires": cert.expires, "role": "gateway"}),
        ("certificate.issued", actor, subject,
         {"cert_digest": common.digest_hex(tls_pem), "subject_id": request.gateway_id,
          "issuer": issuer, "key_id": tls_key_id(tls),
          "not_before": int(tls.not_valid_before_utc.timestamp()),
          "expires": int(tls.not_valid_after_utc.timestamp()), "role": "gateway"}),
    ]


def _revoked_entries(actor: str, gateway_id: str, digests: list[str | None], code: str,
                     why: str) -> list[Entry]:
    """One entry per revoked certificate (by its digest; records older than the digest
    field are skipped)."""
    from edge_agent.ca import gateway_policy

    kind = ("certificate.compromised" if code == gateway_policy.COMPROMISE_REASON
            else "certificate.revoked")
    return [(kind, actor, f"gateway:{gateway_id}",
             {"cert_digest": digest, "subject_id": gateway_id,
              "reason": f"{code}: {why}"[:200].rstrip()})
            for digest in digests if digest is not None]


def _journal_ca(ca: Any, seed: bytes, entries: list[Entry], now: int) -> None:
    """Append to the CA's event journal (events.sqlite3 in the CA directory, signed by
    the CA key, owner = the CA's name as an identifier)."""
    from edge_agent.eventlog import EventLog
    from edge_agent.journal.schema import SchemaError

    try:
        log = EventLog.open(ca.directory / CA_EVENTS_FILE, common.as_ident(ca.name), seed,
                            certificate=ca.certificate)
    except SchemaError as exc:
        raise CommandError(f"CA event journal: {exc}") from None
    try:
        with log.batch():
            for kind, who, subject, details in entries:
                log.append(kind, who, subject, details, at=now)
    finally:
        log.close()


def read_file(option: str, path: str, limit: int = MAX_EXCHANGE) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CommandError(f"{option}: cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise CommandError(f"{option}: {path} is larger than {limit} bytes; is it the right file?")
    return data


# -- commands -------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    actions = common.command_group(sub, "ca", "organisation CA for labs and tests; sign "
                                   "gateway requests", __doc__)
    init = common.action(actions, "init", "create an organisation CA in a new directory",
                         run_init, data_dir=False)
    init.add_argument("--dir", required=True, help="the CA directory to create (0700)")
    init.add_argument("--org", default=DEFAULT_ORG, help=f"CA name (default {DEFAULT_ORG!r})")
    init.add_argument("--lifetime-days", type=int, default=3650,
                      help="CA certificate lifetime (default 3650)")

    sign = common.action(actions, "sign-request", "issue a gateway's certificates from its "
                         "request file", run_sign, data_dir=False)
    sign.add_argument("request", help="the gateway's request file (gateway-request.cose)")
    sign.add_argument("--dir", required=True, help="the CA directory")
    sign.add_argument("--out", required=True, help="response file to write for the gateway")
    sign.add_argument("--lifetime-days", type=int, default=365,
                      help="certificate lifetime (default 365)")
    sign.add_argument("--replace", action="store_true",
                      help="the gateway id already holds a valid certificate and this plain "
                      "request replaces it (a gateway that lost its keys): its current "
                      "certificates are revoked as superseded; needs --reason")
    sign.add_argument("--reason", dest="note", help="why the gateway is replaced (journaled)")
    common.add_actor(sign)

    revoke = common.action(actions, "revoke-gateway", "revoke a gateway's current "
                           "certificates (CWT and TLS) and write the CRL", run_revoke,
                           data_dir=False, actor=True)
    revoke.add_argument("gateway_id", metavar="GW", help="the gateway id")
    revoke.add_argument("--dir", required=True, help="the CA directory")
    revoke.add_argument("--reason", required=True, choices=sorted(REVOCATION_CODES),
                        help="revocation reason; key-compromise also bars its key from "
                        "countersigning a renewal (the gateway is provisioned again)")
    revoke.add_argument("--note", help="free text for the journal (no patient data)")


def run_init(args: argparse.Namespace) -> int:
    from edge_agent.ca import org_ca
    from protocol import cose

    if not args.org.strip() or args.org != args.org.strip():
        raise CommandError("--org: give a name without leading or trailing spaces")
    with common.refusals():
        ca = org_ca.OrgCA.init(args.dir, args.org, now=common.now(),
                               lifetime_days=args.lifetime_days)
    result = {
        "directory": str(ca.directory), "name": ca.name, "centre_name": ca.centre_name,
        "kid": cose.key_id(ca.public_key).hex(), "expires": common.iso(ca.expires),
        "certificate": str(ca.directory / org_ca.CA_CWT_FILE),
        "tls_certificate": str(ca.directory / org_ca.TLS_CERT_FILE),
        "crl": str(ca.directory / org_ca.CRL_FILE),
    }
    common.output(args, result,
                  f"[green]created[/] CA [bold]{ca.name}[/] in {ca.directory} "
                  f"(kid {result['kid']}, expires {result['expires']})",
                  f"  give gateways [bold]{result['certificate']}[/] "
                  "(`gateway provision --ca-cert`); the key files never leave this directory")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    from edge_agent.ca import keyfiles

    request_bytes = read_file("REQUEST", args.request)
    if Path(args.out).exists():
        raise CommandError(f"--out {args.out} already exists; choose a new file name")
    if args.note is not None and not args.replace:
        raise CommandError("--reason goes with --replace")
    who = common.actor(args)
    with common.refusals():
        request, response = sign_gateway_request(Path(args.dir), request_bytes, common.now(),
                                                 args.lifetime_days, actor=who,
                                                 replace=args.replace, note=args.note)
        keyfiles.write_public(Path(args.out), response, replace=False)
    install = "gateway renew --response" if request.is_renewal else "gateway install-cert"
    result = {"gateway_id": request.gateway_id, "response": args.out,
              "request": "renewal" if request.is_renewal else "provisioning",
              "requested_at": common.iso(request.time)}
    common.output(args, result, f"[green]signed[/] gateway [bold]{request.gateway_id}[/] "
                  f"({result['request']}): give {args.out} to the technician (`{install}`)")
    return 0


REVOCATION_CODES = ("unspecified", "key-compromise", "superseded", "cessation-of-operation",
                    "affiliation-changed")


def run_revoke(args: argparse.Namespace) -> int:
    from edge_agent.ca import keyfiles, org_ca

    who = common.actor(args)
    now = common.now()
    note = args.note or "revoked at the CA"
    common.check_entries(_revoked_entries(who, "x", ["0" * 64], args.reason, note))
    with common.refusals():
        ca = org_ca.OrgCA.load(args.dir)
        seed = keyfiles.load_ed25519_seed(ca.directory / org_ca.SIGNING_KEY_FILE)
        revoked = ca.revoke_gateway(args.gateway_id, now=now, reason=args.reason)
        crl = ca.write_crl(now)
        _journal_ca(ca, seed, _revoked_entries(who, args.gateway_id,
                                               [r.digest for r in revoked], args.reason,
                                               note), now)
    result = {"gateway_id": args.gateway_id, "reason": args.reason,
              "revoked_serials": [r.serial for r in revoked], "crl": str(crl)}
    common.output(args, result, f"[yellow]revoked[/] {len(revoked)} certificates of gateway "
                  f"[bold]{args.gateway_id}[/] ({args.reason}); CRL written to {crl}: copy it "
                  "to the broker and restart the broker (a reload keeps live connections)")
    return 0
