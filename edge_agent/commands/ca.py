"""`vitalbridge ca`: the organisation CA for labs and tests, and the CA's half of gateway
enrollment.

  vitalbridge ca init --dir DIR [--org NAME] [--lifetime-days N] [--json]
  vitalbridge ca sign-request REQUEST --dir DIR --out RESPONSE [--lifetime-days N] [--json]

`init` creates a CA directory (edge_agent.ca.org_ca). In production the CA lives on its own
host and only ca.cwt leaves it; a gateway provisioned with `--ca-cert ca.cwt` writes a signed
request file, the CA signs it with `sign-request`, and the gateway installs the response with
`vitalbridge gateway install-cert`.

Exchange files (docs/technician-cli.md):
  request  = COSE_Sign1 by the gateway's NEW Ed25519 key (kid = its key id, external AAD
             "vitalbridge gateway request v1") over CBOR
             {0: 1, 1: gateway id, 2: Ed25519 public, 3: X25519 public, 4: PKCS#10 PEM, 5: time}
             The signature proves possession of the signing key; the PKCS#10 request's own
             signature that of the TLS key.
  response = COSE_Sign1 by the organisation CA key (AAD "vitalbridge gateway certificate v1")
             over CBOR {0: 1, 1: gateway id, 2: gateway CWT, 3: TLS client certificate PEM,
             4: TLS CA certificate PEM, 5: SHA-256 of the request file}
             Signed as a whole, so the TLS CA certificate it carries is as trustworthy as the
             CA certificate the gateway installed at provisioning.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from edge_agent.cli import CommandError
from edge_agent.commands import common

REQUEST_AAD = b"vitalbridge gateway request v1"
RESPONSE_AAD = b"vitalbridge gateway certificate v1"
EXCHANGE_VERSION = 1
MAX_EXCHANGE = 16384
MAX_PEM = 8192
DEFAULT_ORG = "VitalBridge Lab CA"

Q_ID, Q_SIGN_KEY, Q_AGREE_KEY, Q_CSR, Q_TIME = 1, 2, 3, 4, 5
A_ID, A_CWT, A_TLS, A_TLS_CA, A_REQUEST = 1, 2, 3, 4, 5


# -- exchange files -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    gateway_id: str
    public_key: bytes
    agreement_key: bytes
    csr_pem: bytes
    time: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class GatewayResponse:
    gateway_id: str
    certificate: bytes  # gateway CWT
    tls_certificate_pem: bytes
    tls_ca_pem: bytes
    request_digest: bytes


def make_gateway_request(gateway_id: str, seed: bytes, agreement_public: bytes,
                         csr_pem: bytes, now: int) -> bytes:
    """The request file, signed by the gateway's new key (proof of possession)."""
    from protocol import cbor, cose, crypto

    public = crypto.ed25519_public_key(seed)
    claims = {0: EXCHANGE_VERSION, Q_ID: gateway_id, Q_SIGN_KEY: public,
              Q_AGREE_KEY: agreement_public, Q_CSR: csr_pem, Q_TIME: now}
    return cose.sign1_create(seed, cbor.dumps(claims), kid=cose.key_id(public),
                             external_aad=REQUEST_AAD)


def _claims(payload: bytes | None, labels: tuple[int, ...], what: str) -> dict[int, object]:
    from protocol import cbor, enrollment
    from protocol.errors import SealError

    if payload is None:
        raise SealError(f"{what}: payload is detached")
    body = enrollment.body_map(cbor.loads(payload, max_size=MAX_EXCHANGE), (0, *labels), what,
                               EXCHANGE_VERSION)
    for label in labels:
        enrollment.required(body, label, str(label), what)
    return body


def read_gateway_request(data: bytes) -> GatewayRequest:
    """Parse a request file and check its proof of possession. ProtocolError if it fails."""
    from protocol import cose, enrollment, topics
    from protocol.checks import fixed_bytes

    msg = cose.sign1_parse(data, MAX_EXCHANGE)
    body = _claims(msg.payload, (Q_ID, Q_SIGN_KEY, Q_AGREE_KEY, Q_CSR, Q_TIME), "request")
    public = fixed_bytes("public_key", body[Q_SIGN_KEY], 32)
    cose.sign1_verify(public, data, external_aad=REQUEST_AAD, kid=cose.key_id(public),
                      max_size=MAX_EXCHANGE)
    return GatewayRequest(
        topics.check_id("gateway_id", body[Q_ID]), public,
        fixed_bytes("agreement_key", body[Q_AGREE_KEY], 32),
        enrollment.bytes_field("csr", body[Q_CSR], MAX_PEM),
        enrollment.uint_field("time", body[Q_TIME], enrollment.MAX_TIME), bytes(data))


def sign_gateway_request(ca_dir: Path, request_bytes: bytes, now: int,
                         lifetime_days: int) -> tuple[GatewayRequest, bytes]:
    """The CA's side: check the request, issue the gateway CWT and TLS client certificate,
    and return (request, response file bytes) signed by the CA key."""
    from edge_agent.ca import keyfiles, org_ca
    from protocol import cbor, cose, crypto

    ca = org_ca.OrgCA.load(ca_dir)
    request = read_gateway_request(request_bytes)
    certificate = ca.issue_gateway_certificate(request.gateway_id, request.public_key,
                                               request.agreement_key, now=now,
                                               lifetime_days=lifetime_days)
    tls = ca.issue_gateway_tls(request.csr_pem, request.gateway_id, now=now,
                               lifetime_days=lifetime_days)
    seed = keyfiles.load_ed25519_seed(ca.directory / org_ca.SIGNING_KEY_FILE)
    body = {0: EXCHANGE_VERSION, A_ID: request.gateway_id, A_CWT: certificate, A_TLS: tls,
            A_TLS_CA: ca.tls_certificate_pem, A_REQUEST: crypto.sha256(request_bytes)}
    response = cose.sign1_create(seed, cbor.dumps(body), kid=cose.key_id(ca.public_key),
                                 external_aad=RESPONSE_AAD)
    return request, response


def read_gateway_response(data: bytes, ca_public: bytes) -> GatewayResponse:
    """Verify a response file against the organisation CA key. ProtocolError if it fails."""
    from protocol import cose, enrollment, topics
    from protocol.checks import fixed_bytes

    msg = cose.sign1_verify(ca_public, data, external_aad=RESPONSE_AAD,
                            kid=cose.key_id(ca_public), max_size=MAX_EXCHANGE)
    body = _claims(msg.payload, (A_ID, A_CWT, A_TLS, A_TLS_CA, A_REQUEST), "response")
    return GatewayResponse(
        topics.check_id("gateway_id", body[A_ID]),
        enrollment.bytes_field("certificate", body[A_CWT], enrollment.MAX_CERTIFICATE),
        enrollment.bytes_field("tls_certificate", body[A_TLS], MAX_PEM),
        enrollment.bytes_field("tls_ca", body[A_TLS_CA], MAX_PEM),
        fixed_bytes("request_digest", body[A_REQUEST], 32))


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
    with common.refusals():
        request, response = sign_gateway_request(Path(args.dir), request_bytes, common.now(),
                                                 args.lifetime_days)
        keyfiles.write_public(Path(args.out), response, replace=False)
    result = {"gateway_id": request.gateway_id, "response": args.out,
              "requested_at": common.iso(request.time)}
    common.output(args, result, f"[green]signed[/] gateway [bold]{request.gateway_id}[/]: "
                  f"give {args.out} to the technician (`gateway install-cert`)")
    return 0
