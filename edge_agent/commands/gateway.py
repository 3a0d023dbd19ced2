"""`vitalbridge gateway`: provision this gateway (keys, certificates, broker settings).

  vitalbridge gateway provision --id GW --broker HOST:PORT (--ca-dir DIR | --ca-cert FILE)
                                [--data-dir DIR] [--lifetime-days N] [--actor NAME] [--json]
  vitalbridge gateway install-cert RESPONSE [--data-dir DIR] [--actor NAME] [--json]
  vitalbridge gateway show [--data-dir DIR] [--at ISO] [--json]
  vitalbridge gateway renew [--ca-dir DIR | --response FILE] [--force] [--actor NAME] [--json]
  vitalbridge gateway verify-reseals [--data-dir DIR] [--json]

renew writes certs/gateway-renewal.cose: the new keys' request countersigned by the current
key (the CA accepts a renewal only so); once the current certificate has expired it cannot
countersign, and the request goes to the CA as a new provisioning of the same id.

provision generates the gateway's keys HERE (Ed25519 signing, X25519 agreement, P-256 for
the broker's TLS), into 0600 files in a 0700 directory, and writes a request signed with
them. With --ca-dir (labs, tests) the CA directory is on this machine: the request is signed
at once and installed. With --ca-cert (production) only the CA's public certificate is
installed: take certs/gateway-request.cose to the CA (`vitalbridge ca sign-request`), then
run install-cert with its response. install-cert checks the response against that CA
certificate, records the gateway in the registry, and writes broker.json (the uplink's MQTT
settings). Every step is journaled in the event journal with the technician's name.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from edge_agent.cli import CommandError
from edge_agent.commands import common
from edge_agent.commands.ca import read_file

AWAITING = "awaiting-certificate"
ACTIVE = "active"
_HOST = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\Z")


def register(sub: argparse._SubParsersAction) -> None:
    actions = common.command_group(sub, "gateway", "provision this gateway: keys, "
                                   "certificates, broker settings", __doc__)
    provision = common.action(actions, "provision", "generate keys and request certificates",
                              run_provision, actor=True)
    provision.add_argument("--id", required=True, dest="gateway_id",
                           help="gateway id (letters, digits, - _ .): its MQTT user name")
    provision.add_argument("--broker", required=True, metavar="HOST:PORT",
                           help="the MQTT broker's TLS listener, e.g. broker.example.org:8883")
    trust = provision.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca-dir", help="a CA directory on this machine (labs and tests)")
    trust.add_argument("--ca-cert", help="the organisation CA certificate (ca.cwt): "
                       "production; the CA signs the request elsewhere")
    provision.add_argument("--lifetime-days", type=int, default=365,
                           help="certificate lifetime with --ca-dir (default 365)")

    install = common.action(actions, "install-cert", "install the CA's response to this "
                            "gateway's request", run_install, actor=True)
    install.add_argument("response", help="the response file from `ca sign-request`")
    common.action(actions, "show", "this gateway's identity and certificate states", run_show,
                  at=True)
    renew = common.action(actions, "renew", "new gateway keys and certificates; the old "
                          "ones are retired and destroyed within ten days", run_renew,
                          actor=True)
    source = renew.add_mutually_exclusive_group()
    source.add_argument("--ca-dir", help="a CA directory on this machine (labs and tests): "
                        "sign and install at once")
    source.add_argument("--response", help="install the CA's response to the renewal request")
    renew.add_argument("--force", action="store_true",
                       help="renew although the certificate is not due yet")
    renew.add_argument("--lifetime-days", type=int, default=365,
                       help="certificate lifetime with --ca-dir (default 365)")
    common.action(actions, "verify-reseals", "check the re-seal table: data of destroyed "
                  "keys still verifiable", run_verify_reseals)


def parse_broker(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); one-line error otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CommandError(f"--broker {text!r}: give HOST:PORT, e.g. broker.example.org:8883")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            raise CommandError(f"--broker {text!r}: {host!r} is not a host name or IP "
                               "address") from None
    return host, int(port_text)


def _read_ca_certificate(path: str, now: int) -> bytes:
    """A self-signed organisation CA CWT, current by this gateway's clock."""
    from protocol import cwt
    from protocol.errors import ProtocolError

    data = read_file("--ca-cert", path)
    try:
        cert = cwt.verify_cwt(data, cwt.parse_cwt(data).public_key)
    except ProtocolError as exc:
        raise CommandError(f"--ca-cert {path}: not a self-signed CA certificate ({exc}); "
                           "use the ca.cwt file of your organisation's CA") from None
    if cert.role != "ca" or cert.issuer != cert.subject:
        raise CommandError(f"--ca-cert {path}: this is a {cert.role or 'plain'} certificate "
                           f"for {cert.subject!r}, not the CA's own (ca.cwt)")
    _check_clock(cert.not_before, cert.expires, now, "the CA certificate")
    return data


def _check_clock(not_before: int, expires: int, now: int, what: str) -> None:
    """Refuse when this gateway's clock cannot be right for `what`."""
    if now >= expires:
        raise CommandError(f"{what} expired on {common.iso(expires)} by this gateway's clock "
                           f"({common.iso(now)}): check the clock (`timedatectl`), or get a "
                           "current certificate")
    if not_before - now > 86400:
        raise CommandError(f"{what} is valid only from {common.iso(not_before)}, but this "
                           f"gateway's clock says {common.iso(now)}: set the clock "
                           "(`timedatectl set-ntp true`) and run the command again")


def run_provision(args: argparse.Namespace) -> int:
    from edge_agent.ca import keyfiles, org_ca
    from protocol import crypto, cwt, topics
    from protocol.errors import ValidationError

    directory = common.data_dir(args)
    who = common.actor(args)
    try:
        gateway_id = topics.check_id("gateway_id", args.gateway_id)
    except ValidationError as exc:
        raise CommandError(f"--id {args.gateway_id!r}: {exc.reason}") from None
    host, port = parse_broker(args.broker)
    existing = common.read_gateway_file(directory)
    if existing is not None:
        raise CommandError(f"{directory} already holds gateway {existing['gateway_id']} "
                           f"({existing.get('state')}); a gateway is provisioned once: use a "
                           "fresh --data-dir, or finish with `gateway install-cert`")
    keys_dir = directory / common.KEYS_DIR
    if keys_dir.exists() and any(keys_dir.iterdir()):
        raise CommandError(f"{keys_dir} already holds key files; refusing to provision over "
                           "them (retire the old gateway and use a fresh --data-dir)")
    now = common.now()
    if args.ca_dir is not None:
        with common.refusals():
            ca = org_ca.OrgCA.load(args.ca_dir)
        if gateway_id == ca.centre_name:
            raise CommandError(f"--id {gateway_id!r} is the monitoring centre's broker "
                               "identity; choose another gateway id")
        anchor = ca.certificate
        _check_clock(cwt.parse_cwt(anchor).not_before, ca.expires, now, "the CA certificate")
        if not 1 <= args.lifetime_days <= 36500 or now + args.lifetime_days * 86400 > ca.expires:
            raise CommandError(f"--lifetime-days {args.lifetime_days}: the certificates must "
                               f"end before the CA does ({common.iso(ca.expires)})")
    else:
        anchor = _read_ca_certificate(args.ca_cert, now)

    with common.steps(not args.json, 5 if args.ca_dir else 3) as step:
        step("generating keys on this gateway")
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        with common.refusals():
            keyfiles.ensure_private_dir(keys_dir)
            seed = crypto.random_bytes(32)
            agreement = crypto.random_bytes(32)
            tls_key = org_ca.new_tls_key()
            keyfiles.save_ed25519_seed(keys_dir / common.SIGNING_KEY, seed)
            keyfiles.save_x25519_private(keys_dir / common.AGREEMENT_KEY, agreement)
            keyfiles.save_private_key(keys_dir / common.BROKER_KEY, tls_key)
        step("writing the signed certificate request")
        request = _write_request(directory, gateway_id, seed, agreement, tls_key, anchor,
                                 host, port, who, now)
        identity = common.load_gateway(directory, active=False)
        common.journal(identity, _generated_entries(identity, tls_key, who), at=now)
        step("request ready")
        if args.ca_dir is None:
            result = {"gateway_id": gateway_id, "state": AWAITING, "data_dir": str(directory),
                      "request": str(directory / common.CERTS_DIR / common.REQUEST_FILE)}
        else:
            from edge_agent.commands.ca import sign_gateway_request

            step("signing with the lab CA")
            try:
                with common.refusals():
                    _, response = sign_gateway_request(Path(args.ca_dir), request, now,
                                                       args.lifetime_days, actor=who)
            except CommandError as exc:
                raise CommandError(
                    f"{exc}\n  the keys and the request stay in {directory}: after the CA "
                    f"decides, sign {common.CERTS_DIR}/{common.REQUEST_FILE} with `vitalbridge "
                    "ca sign-request` and run `vitalbridge gateway install-cert`",
                    exc.status) from None
            step("installing certificates and broker settings")
            result = install_response(identity, response, who, now)
    if args.json:
        common.print_json(result)
    elif result["state"] == AWAITING:
        common.console().print(
            f"[yellow]gateway {gateway_id}: keys generated, waiting for certificates.[/]\n"
            f"  1. take {result['request']} to the CA: `vitalbridge ca sign-request "
            f"{result['request']} --dir CA --out {gateway_id}.response`\n"
            f"  2. run `vitalbridge gateway install-cert {gateway_id}.response "
            f"--data-dir {directory}`")
    else:
        _print_installed(result)
    return 0


def _write_request(directory: Path, gateway_id: str, seed: bytes, agreement: bytes,
                   tls_key: Any, anchor: bytes, host: str, port: int, who: str,
                   now: int) -> bytes:
    from edge_agent.ca import keyfiles, org_ca
    from edge_agent.commands.ca import make_gateway_request
    from protocol import crypto

    certs = directory / common.CERTS_DIR
    certs.mkdir(exist_ok=True)
    csr = org_ca.tls_request(gateway_id, tls_key)
    request = make_gateway_request(gateway_id, seed, crypto.x25519_public_key(agreement), csr,
                                   now)
    keyfiles.write_public(certs / common.CA_CERT, anchor)
    keyfiles.write_public(certs / common.REQUEST_FILE, request)
    common.write_gateway_file(directory, {
        "gateway_id": gateway_id, "state": AWAITING, "broker": {"host": host, "port": port},
        "provisioned_at": common.iso(now), "provisioned_by": who,
    })
    return request


def _tls_kid(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:8].hex()


def _generated_entries(identity: common.GatewayIdentity, tls_key: Any,
                       who: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    from protocol import cose

    owner = f"gateway:{identity.gateway_id}"
    entries = []
    for purpose, public, algorithm in (("signing", identity.public_key, "Ed25519"),
                                       ("agreement", identity.agreement_public, "X25519")):
        kid = cose.key_id(public).hex()
        entries.append(("key.generated", who, f"key:{kid}",
                        {"key_id": kid, "owner": owner, "purpose": purpose,
                         "public_key": public.hex(), "algorithm": algorithm}))
    kid = _tls_kid(tls_key.public_key())
    entries.append(("key.generated", who, f"key:{kid}",
                    {"key_id": kid, "owner": owner, "purpose": "tls", "algorithm": "P-256"}))
    return entries


def install_response(identity: common.GatewayIdentity, response: bytes, who: str,
                     now: int) -> dict[str, Any]:
    """Check the CA's response, record the gateway, write its certificates and broker.json."""
    from cryptography import x509

    from edge_agent.ca import keyfiles
    from edge_agent.commands.ca import read_gateway_response
    from edge_agent.registry import Registry, tls_key_id
    from protocol import crypto, cwt
    from protocol.errors import ProtocolError

    directory = identity.directory
    certs = directory / common.CERTS_DIR
    anchor = (certs / common.CA_CERT).read_bytes()
    request = (certs / common.REQUEST_FILE).read_bytes()
    ca_cert = cwt.parse_cwt(anchor)
    try:
        answer = read_gateway_response(response, ca_cert.public_key)
    except ProtocolError as exc:
        raise CommandError(f"the response is not signed by the organisation CA installed at "
                           f"provisioning ({ca_cert.subject!r}): {exc}; ask that CA to sign "
                           "this gateway's request") from None
    if answer.gateway_id != identity.gateway_id or answer.request_digest != crypto.sha256(request):
        raise CommandError(f"the response answers another request (gateway "
                           f"{answer.gateway_id!r}); sign this gateway's "
                           f"{common.CERTS_DIR}/{common.REQUEST_FILE} and try again")
    gateway_cert = cwt.parse_cwt(answer.certificate)
    with common.refusals():
        tls = x509.load_pem_x509_certificate(answer.tls_certificate_pem)
        broker_key = keyfiles.load_ec_key(directory / common.KEYS_DIR / common.BROKER_KEY)
    if gateway_cert.public_key != identity.public_key or \
            _tls_kid(tls.public_key()) != _tls_kid(broker_key.public_key()):
        raise CommandError("the response certifies keys this gateway does not hold: it was "
                           "issued for another request")
    _check_clock(gateway_cert.not_before, gateway_cert.expires, now, "the gateway certificate")
    with common.refusals(), Registry.open_in(directory) as registry:
        with registry.transaction():
            if not any(ca.kid == ca_cert.key_id.hex() for ca in registry.org_cas()):
                registry.install_org_ca(anchor, actor=who, now=now, x509_pem=answer.tls_ca_pem)
            registry.enroll_gateway(identity.gateway_id, answer.certificate, actor=who, now=now)
            tls_record = registry.add_gateway_tls_certificate(
                identity.gateway_id, answer.tls_certificate_pem, actor=who, now=now)
    keyfiles.write_public(certs / common.GATEWAY_CERT, answer.certificate)
    keyfiles.write_public(certs / common.BROKER_CERT, answer.tls_certificate_pem)
    keyfiles.write_public(certs / common.TLS_CA_CERT, answer.tls_ca_pem)
    data = common.read_gateway_file(directory) or {}
    broker = write_broker_settings(directory, identity.gateway_id, data.get("broker", {}))
    data.update(state=ACTIVE, certified_at=common.iso(now))
    common.write_gateway_file(directory, data)
    (certs / common.REQUEST_FILE).unlink()
    active = common.load_gateway(directory)
    common.journal(active, _installed_entries(active, answer.certificate, gateway_cert,
                                              answer.tls_certificate_pem, tls_record.kid,
                                              broker, who), at=now)
    return {"gateway_id": identity.gateway_id, "state": ACTIVE, "data_dir": str(directory),
            "certificate_expires": common.iso(gateway_cert.expires),
            "tls_certificate_expires": common.iso(tls_record.expires),
            "tls_kid": tls_key_id(tls), "broker": broker,
            "broker_settings": str(directory / common.BROKER_FILE)}


def write_broker_settings(directory: Path, gateway_id: str,
                          broker: dict[str, Any]) -> dict[str, Any]:
    """broker.json: what the uplink's LinkConfig/TlsFiles need (edge_agent.uplink)."""
    from edge_agent.ca import keyfiles
    from protocol import topics

    root = directory.resolve()
    settings = {
        "gateway_id": gateway_id, "host": broker.get("host"), "port": broker.get("port"),
        "client_id": gateway_id, "topic_root": f"{topics.ROOT}/{gateway_id}",
        "tls": {"ca_file": str(root / common.CERTS_DIR / common.TLS_CA_CERT),
                "cert_file": str(root / common.CERTS_DIR / common.BROKER_CERT),
                "key_file": str(root / common.KEYS_DIR / common.BROKER_KEY)},
    }
    keyfiles.write_public(directory / common.BROKER_FILE,
                          (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
    return settings


def _installed_entries(identity: common.GatewayIdentity, raw_cwt: bytes, cert: Any,
                       tls_pem: bytes, tls_kid: str, broker: dict[str, Any],
                       who: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    from cryptography import x509

    tls = x509.load_pem_x509_certificate(tls_pem)
    gateway_id = identity.gateway_id
    owner = f"gateway:{gateway_id}"
    signing = cert.key_id.hex()
    entries: list[tuple[str, str, str, dict[str, Any]]] = [
        ("certificate.issued", who, f"gateway:{gateway_id}",
         {"cert_digest": common.digest_hex(raw_cwt), "subject_id": gateway_id,
          "issuer": common.as_ident(cert.issuer), "key_id": signing,
          "not_before": cert.not_before, "expires": cert.expires, "role": "gateway"}),
        ("certificate.issued", who, f"gateway:{gateway_id}",
         {"cert_digest": common.digest_hex(tls_pem), "subject_id": gateway_id,
          "issuer": common.as_ident(cert.issuer), "key_id": tls_kid,
          "not_before": int(tls.not_valid_before_utc.timestamp()),
          "expires": int(tls.not_valid_after_utc.timestamp())}),
    ]
    for kid in (signing, _agreement_kid(identity), tls_kid):
        entries.append(("key.activated", who, f"key:{kid}", {"key_id": kid, "owner": owner}))
    settings = json.dumps(broker, sort_keys=True).encode()
    entries.append(("config.changed", who, f"gateway:{gateway_id}",
                    {"source": "gateway-provision", "digest": common.digest_hex(settings),
                     "settings": ["broker.host", "broker.port", "broker.tls"]}))
    return entries


def _agreement_kid(identity: common.GatewayIdentity) -> str:
    from protocol import cose

    return cose.key_id(identity.agreement_public).hex()


def _print_installed(result: dict[str, Any]) -> None:
    out = common.console()
    out.print(f"[green]gateway {result['gateway_id']} provisioned[/]: certificate until "
              f"{result['certificate_expires']}, broker TLS certificate until "
              f"{result['tls_certificate_expires']}")
    broker = result["broker"]
    out.print(f"  broker {broker['host']}:{broker['port']} settings in "
              f"{result['broker_settings']}; next: `vitalbridge device scan`")


def run_install(args: argparse.Namespace) -> int:
    directory = common.data_dir(args)
    who = common.actor(args)
    identity = common.load_gateway(directory, active=False)
    if identity.state == ACTIVE:
        raise CommandError(f"gateway {identity.gateway_id} already has its certificates; "
                           "renewal is a separate step")
    response = read_file("RESPONSE", args.response)
    with common.steps(not args.json, 1) as step:
        step("checking and installing the certificates")
        result = install_response(identity, response, who, common.now())
    if args.json:
        common.print_json(result)
    else:
        _print_installed(result)
    return 0


def gateway_certificates(registry: Any, gateway_id: str, at: int) -> list[dict[str, Any]]:
    """The gateway's certified keys and their states at `at` (newest per purpose)."""
    rows = []
    for purpose, fmt in (("signing", "cwt"), ("tls-client", "x509")):
        keys = registry.keys("gateway", gateway_id, purpose)
        if not keys:
            rows.append({"purpose": purpose, "state": "missing", "expires": None, "kid": None})
            continue
        key = keys[-1]
        cert = registry.certificate_of_key(key.kid, fmt)
        rows.append({"purpose": purpose, "kid": key.kid, "format": fmt,
                     "state": combined_state(key.state(at), cert.state(at)),
                     "expires": cert.expires, "serial": cert.serial})
    return rows


def combined_state(key_state: str, cert_state: str) -> str:
    """A recorded end of the key outranks what the certificate's dates say."""
    if key_state in ("destroyed", "compromised", "revoked", "retired"):
        return key_state
    return cert_state


def run_show(args: argparse.Namespace) -> int:
    directory = common.data_dir(args)
    identity = common.load_gateway(directory, active=False)
    at = common.at_or_now(args)
    data = common.read_gateway_file(directory) or {}
    certificates: list[dict[str, Any]] = []
    if identity.state == ACTIVE:
        with common.open_registry(directory) as registry:
            certificates = gateway_certificates(registry, identity.gateway_id, at)
            devices = len(registry.devices(gateway_id=identity.gateway_id, status="active"))
    else:
        devices = 0
    result = {"gateway_id": identity.gateway_id, "state": identity.state, "at": common.iso(at),
              "broker": data.get("broker"), "active_devices": devices,
              "certificates": [{**c, "expires": common.iso(c["expires"])}
                               for c in certificates]}
    if args.json:
        common.print_json(result)
        return 0
    out = common.console()
    broker = data.get("broker") or {}
    out.print(f"gateway [bold]{identity.gateway_id}[/] ({identity.state}), broker "
              f"{broker.get('host')}:{broker.get('port')}, {devices} active devices")
    table = common.table(f"certificates at {common.iso(at)}",
                         ("purpose", "kid", "state", "expires"))
    for cert in certificates:
        table.add_row(cert["purpose"], cert["kid"] or "-", common.styled(cert["state"]),
                      common.day(cert["expires"]))
    out.print(table)
    return 0


# -- renewal (docs/keys-and-certificates.md "Gateway renewal") ---------------------------------

RENEWAL_REQUEST = "gateway-renewal.cose"
_KEY_FILES = (common.SIGNING_KEY, common.AGREEMENT_KEY, common.BROKER_KEY)


def _renewal_refusal(directory: Path, gateway_id: str, now: int, force: bool) -> None:
    from edge_agent.lifecycle.engine import LifecycleEngine

    with common.open_registry(directory) as registry, common.refusals():
        refusal = LifecycleEngine(registry).gateway_renewal_refusal(gateway_id, now, force)
    if refusal is not None:
        raise CommandError(f"renewal refused: {refusal}")


def run_renew(args: argparse.Namespace) -> int:
    directory = common.data_dir(args)
    who = common.actor(args)
    identity = common.load_gateway(directory)
    now = common.now()
    certs = directory / common.CERTS_DIR
    if args.response is None:
        _renewal_refusal(directory, identity.gateway_id, now, args.force)
        request, countersigned = _new_pending_keys(identity, who, now)
        kind = _request_kind(countersigned)
        if args.ca_dir is None:
            result = {"gateway_id": identity.gateway_id, "state": "awaiting-certificate",
                      "request": str(certs / RENEWAL_REQUEST), "request_kind": kind}
            common.output(args, result,
                          f"[yellow]gateway {identity.gateway_id}: new keys generated, "
                          "waiting for certificates.[/]", _request_note(countersigned),
                          f"  1. take {result['request']} to the CA: `vitalbridge ca "
                          f"sign-request {result['request']} --dir CA --out renewal.response`",
                          "  2. run `vitalbridge gateway renew --response renewal.response`")
            return 0
        from edge_agent.commands.ca import sign_gateway_request

        with common.refusals():
            _, response = sign_gateway_request(Path(args.ca_dir), request, now,
                                               args.lifetime_days, actor=who)
    else:
        response = read_file("--response", args.response)
    result = install_renewal(identity, response, who, now, force=True if args.response
                             else args.force)
    if args.response is None:
        result["request_kind"] = kind
    if args.json:
        common.print_json(result)
        return 0
    out = common.console()
    out.print(f"[green]gateway {identity.gateway_id} renewed[/]: new signing key "
              f"{result['signing_kid']}, certificate until {result['certificate_expires']}")
    out.print(f"  retired {', '.join(result['retired_kids'])}: destroyed by "
              f"{result['destroy_by']} at the latest, after their data is re-sealed")
    out.print("  [bold]restart the agent[/] (`systemctl restart vitalbridge-agent`) to use "
              "the new keys")
    if result["devices_to_renew"]:
        out.print(f"  renew these devices before {result['destroy_by']} "
                  f"(`vitalbridge device renew`): {', '.join(result['devices_to_renew'])}")
    return 0


def _request_kind(countersigned: bool) -> str:
    return "renewal" if countersigned else "provisioning"


def _request_note(countersigned: bool) -> str:
    if countersigned:
        return "  the request is countersigned by the current gateway key"
    return ("  [yellow]the current certificate has expired: an expired key cannot countersign, "
            "so the CA treats this request as a new provisioning of this gateway id[/]")


def _new_pending_keys(identity: common.GatewayIdentity, who: str,
                      now: int) -> tuple[bytes, bool]:
    """New keys in keys/pending/ and the request signed with them (certs/gateway-renewal),
    countersigned by the current key while its certificate is unexpired -> (request bytes,
    countersigned)."""
    from edge_agent.ca import exchange, keyfiles, org_ca
    from edge_agent.lifecycle import gateway_keys
    from protocol import crypto, cwt

    current_cert = identity.certificate()
    countersign = now < cwt.parse_cwt(current_cert).expires
    keys_dir = identity.path(common.KEYS_DIR)
    with common.refusals():
        pending = gateway_keys.pending_dir(keys_dir)
        seed = crypto.random_bytes(32)
        agreement = crypto.random_bytes(32)
        tls_key = org_ca.new_tls_key()
        # replace=True: an abandoned earlier attempt is superseded; nothing was certified
        keyfiles.save_ed25519_seed(pending / common.SIGNING_KEY, seed, replace=True)
        keyfiles.save_x25519_private(pending / common.AGREEMENT_KEY, agreement, replace=True)
        keyfiles.save_private_key(pending / common.BROKER_KEY, tls_key, replace=True)
        csr = org_ca.tls_request(identity.gateway_id, tls_key)
        agreement_public = crypto.x25519_public_key(agreement)
        if countersign:
            request = exchange.make_renewal_request(identity.gateway_id, seed,
                                                    agreement_public, csr, now,
                                                    identity.seed, current_cert)
        else:
            request = exchange.make_gateway_request(identity.gateway_id, seed,
                                                    agreement_public, csr, now)
        keyfiles.write_public(identity.path(common.CERTS_DIR, RENEWAL_REQUEST), request,
                              replace=True)
    pending_identity = common.GatewayIdentity(identity.directory, identity.gateway_id,
                                              "pending", seed, agreement)
    common.journal(identity, _generated_entries(pending_identity, tls_key, who), at=now)
    return request, countersign


def install_renewal(identity: common.GatewayIdentity, response: bytes, who: str, now: int,
                    *, force: bool) -> dict[str, Any]:
    """Check the CA's response against the pending keys, record it (the lifecycle engine
    retires the previous generation), swap the key files, write the certificates."""
    from cryptography import x509

    from edge_agent.ca import keyfiles
    from edge_agent.commands.ca import read_gateway_response
    from edge_agent.lifecycle import gateway_keys, states
    from edge_agent.lifecycle.engine import LifecycleEngine
    from edge_agent.registry import tls_key_id
    from protocol import cose, crypto, cwt
    from protocol.errors import ProtocolError

    directory = identity.directory
    certs = directory / common.CERTS_DIR
    keys_dir = directory / common.KEYS_DIR
    request_path = certs / RENEWAL_REQUEST
    if not request_path.is_file():
        raise CommandError("no renewal in progress: run `vitalbridge gateway renew` first")
    ca_cert = cwt.parse_cwt((certs / common.CA_CERT).read_bytes())
    try:
        answer = read_gateway_response(response, ca_cert.public_key)
    except ProtocolError as exc:
        raise CommandError(f"the response is not signed by the organisation CA "
                           f"({ca_cert.subject!r}): {exc}") from None
    if answer.gateway_id != identity.gateway_id or \
            answer.request_digest != crypto.sha256(request_path.read_bytes()):
        raise CommandError("the response answers another request; sign this gateway's "
                           f"{common.CERTS_DIR}/{RENEWAL_REQUEST} and try again")
    pending = keys_dir / gateway_keys.PENDING_DIR
    with common.refusals():
        seed = keyfiles.load_ed25519_seed(pending / common.SIGNING_KEY)
        broker_key = keyfiles.load_ec_key(pending / common.BROKER_KEY)
        tls = x509.load_pem_x509_certificate(answer.tls_certificate_pem)
    new_cert = cwt.parse_cwt(answer.certificate)
    if new_cert.public_key != crypto.ed25519_public_key(seed) or \
            _tls_kid(tls.public_key()) != _tls_kid(broker_key.public_key()):
        raise CommandError("the response certifies keys this gateway did not generate for "
                           "this renewal")
    _check_clock(new_cert.not_before, new_cert.expires, now, "the new gateway certificate")
    with common.open_registry(directory) as registry:
        old = {purpose: registry.current_key("gateway", identity.gateway_id, purpose, now)
               for purpose in ("signing", "agreement", "tls-client")}
        if any(key is None for key in old.values()):
            raise CommandError("the registry lacks one of this gateway's current keys; "
                               "provision it again")
        current = {common.SIGNING_KEY: old["signing"].kid,
                   common.AGREEMENT_KEY: old["agreement"].kid,
                   common.BROKER_KEY: old["tls-client"].kid}
        with common.refusals():
            retired = gateway_keys.swap_in_pending(keys_dir, current)
            try:
                LifecycleEngine(registry).renew_gateway(
                    identity.gateway_id, answer.certificate, answer.tls_certificate_pem,
                    who, now, force=force)
            except BaseException:
                _swap_back(keys_dir, current)
                raise
        old_issuer = cose.key_id(identity.public_key)
        devices = [d.id for d in registry.devices(gateway_id=identity.gateway_id,
                                                  status="active")
                   if _issued_by(registry, d.id, old_issuer, now)]
        tls_record = registry.certificate_of_key(tls_key_id(tls), "x509")
    keyfiles.write_public(certs / common.GATEWAY_CERT, answer.certificate)
    keyfiles.write_public(certs / common.BROKER_CERT, answer.tls_certificate_pem)
    keyfiles.write_public(certs / common.TLS_CA_CERT, answer.tls_ca_pem)
    request_path.unlink()
    renewed = common.load_gateway(directory)
    data = common.read_gateway_file(directory) or {}
    data.update(renewed_at=common.iso(now), renewed_by=who)
    common.write_gateway_file(directory, data)
    entries = _installed_entries(renewed, answer.certificate, new_cert,
                                 answer.tls_certificate_pem, tls_record.kid,
                                 data.get("broker", {}), who)[:-1]  # broker unchanged
    new_kids = {"signing": new_cert.key_id.hex(), "agreement": _agreement_kid(renewed),
                "tls-client": tls_record.kid}
    for purpose, key in old.items():
        owner = identity.gateway_id
        entries.append(("key.renewal", who, f"key:{key.kid}",
                        {"key_id": key.kid, "new_key_id": new_kids[purpose], "owner": owner}))
        entries.append(("key.retired", who, f"key:{key.kid}",
                        {"key_id": key.kid, "owner": owner,
                         "reason": f"superseded by {new_kids[purpose]}"}))
    common.journal(renewed, entries, at=now)
    return {"gateway_id": identity.gateway_id, "state": ACTIVE,
            "signing_kid": new_kids["signing"], "new_keys": new_kids,
            "certificate_expires": common.iso(new_cert.expires),
            "tls_certificate_expires": common.iso(tls_record.expires),
            "retired_kids": [k.kid for k in old.values()],
            "retired_files": [str(p) for p in retired],
            "destroy_by": common.iso(now + states.DESTRUCTION_WINDOW),
            "devices_to_renew": devices, "restart_required": True}


def _swap_back(keys_dir: Path, current: dict[str, str]) -> None:
    """Undo swap_in_pending after the registry refused the renewal."""
    import os

    from edge_agent.lifecycle import gateway_keys

    for name, kid in current.items():
        os.replace(keys_dir / name, keys_dir / gateway_keys.PENDING_DIR / name)
        os.replace(keys_dir / gateway_keys.RETIRED_DIR / f"{kid}.key", keys_dir / name)


def _issued_by(registry: Any, device_id: str, issuer_kid: bytes, now: int) -> bool:
    """Was the device's current certificate signed by the gateway key `issuer_kid`?"""
    from protocol import cwt

    key = registry.current_key("device", device_id, "signing", now)
    if key is None:
        return False
    raw = registry.certificate_of_key(key.kid, "cwt").raw
    return cwt.parse_cwt(raw).issuer_kid == issuer_kid


def run_verify_reseals(args: argparse.Namespace) -> int:
    from edge_agent.reseal.keeper import verify_reseals

    directory = common.data_dir(args)
    identity = common.load_gateway(directory)
    with common.open_registry(directory) as registry:
        result = verify_reseals(directory, identity.gateway_id, registry)
    lines = [f"{'[green]pass' if result['verdict'] == 'pass' else '[bold red]fail'}[/]: "
             f"{result['verified']} of {result['statements']} re-seal statements verified, "
             f"{result['destroyed_keys']} destroyed keys checked"]
    lines += [f"  {p['ref']}: {p['reason']}" for p in result["problems"]]
    common.output(args, result, *lines)
    return 0 if result["verdict"] == "pass" else common.FAILED
