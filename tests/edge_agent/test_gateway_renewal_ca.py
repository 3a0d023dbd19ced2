"""The CA's side of gateway renewal, through the real CLI on real files: a renewal is
accepted only when countersigned by the gateway's current, unexpired, unrevoked key; a plain
request cannot take over an id that holds a valid certificate unless the technician
replaces it; every decision is in the CA's own event journal (docs/keys-and-certificates.md,
"CA side")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_gateway_renewal as renewal
from cryptography import x509
from test_session_gateway_renewal import agent_keys, enroll_before_renewal, stand_in

from edge_agent.ca import exchange, org_ca
from edge_agent.commands import common
from edge_agent.eventlog import EventLogFile
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.registry import Registry
from protocol import cbor, cose, crypto

DAY = 86400
vb, clock, site = renewal.vb, renewal.clock, renewal.site  # the renewal tests' fixtures


def ca_journal(ca_dir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    log = EventLogFile.open_readonly(ca_dir / "events.sqlite3")
    try:
        ca_public = org_ca.OrgCA.load(ca_dir).public_key
        assert log.verify(ca_public).ok  # signed by the CA key, chain intact
        return [(e.kind, e.actor, dict(e.details)) for e in log.entries()]
    finally:
        log.close()


def decisions(ca_dir: Path) -> list[tuple[str, str | None, str]]:
    return [(d["decision"], d.get("mode"), d["reason"]) for kind, _, d in ca_journal(ca_dir)
            if kind == "certificate.request"]


def crafted_renewal(gateway_id: str, current_seed: bytes, current_cert: bytes,
                    now: int) -> bytes:
    """A renewal file built as `gateway renew` builds it, with fresh new keys."""
    csr = org_ca.tls_request(gateway_id, org_ca.new_tls_key())
    return exchange.make_renewal_request(gateway_id, crypto.random_bytes(32),
                                         crypto.x25519_public_key(crypto.random_bytes(32)),
                                         csr, now, current_seed, current_cert)


def sign(run: Any, tmp_path: Path, request: bytes | Path, name: str, *extra: object) -> Any:
    path = request if isinstance(request, Path) else tmp_path / f"{name}.req"
    if not isinstance(request, Path):
        path.write_bytes(request)
    return run("ca", "sign-request", path, "--dir", tmp_path / "ca", "--out",
              tmp_path / f"{name}.resp", *extra)


def provision(run: Any, tmp_path: Path, directory: str, gateway_id: str,
              ca: str = "ca") -> Any:
    return run("gateway", "provision", "--data-dir", tmp_path / directory, "--id", gateway_id,
              "--ca-dir", tmp_path / ca, "--broker", "127.0.0.1:8883", "--json")


def test_two_step_renewal_is_countersigned_accepted_and_the_restarted_agent_uses_new_keys(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    device = enroll_before_renewal(site, clock[0])
    old = common.load_gateway(site)
    old_cert = old.certificate()
    started = vb("gateway", "renew", "--force", "--json")
    assert started.status == 0 and started.json["request_kind"] == "renewal"
    request = exchange.read_gateway_request(Path(started.json["request"]).read_bytes())
    assert request.is_renewal and request.countersigner_kid == cose.key_id(old.public_key)
    assert request.current_certificate.raw == old_cert
    signed = sign(vb, tmp_path, Path(started.json["request"]), "renewal", "--json")
    assert signed.status == 0 and signed.json["request"] == "renewal", signed.err
    done = vb("gateway", "renew", "--response", tmp_path / "renewal.resp", "--json")
    assert done.status == 0, done.err

    keys = agent_keys(site)  # what the restarted agent loads
    assert cose.key_id(crypto.ed25519_public_key(keys.ed25519_seed)).hex() == \
        done.json["signing_kid"] != cose.key_id(old.public_key).hex()
    assert old.public_key in keys.previous_issuers
    fw, port = stand_in(tmp_path, device, old.agreement_public, clock[0], keys)
    assert fw.handshake(timeout=5.0).session_id and not port.refusals  # old device cert
    with Registry.open_in(site) as registry:
        kid = registry.current_key("device", "ox-1", "signing", clock[0]).kid
        assert LifecycleEngine(registry).may_accept("ox-1", kid, clock[0])[0]

    journal = ca_journal(tmp_path / "ca")
    (accepted,) = [d for k, _, d in journal if k == "certificate.request"
                   and d.get("mode") == "renewal"]
    assert accepted["decision"] == "accepted" and accepted["countersigned_by"] == \
        cose.key_id(old.public_key).hex()
    assert accepted["request_digest"] == crypto.sha256(request.raw).hex()
    renewal = [d for k, _, d in journal if k == "certificate.renewal"]
    assert renewal == [{"cert_digest": crypto.sha256(old_cert).hex(), "subject_id": "gw-1",
                        "new_cert_digest": crypto.sha256(common.load_gateway(site)
                                                         .certificate()).hex()}]
    assert all(actor == "technician:t-0042" for _, actor, _ in journal)


def test_plain_request_for_a_valid_id_is_refused_unless_replaced_which_revokes_the_old(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    impostor = provision(vb, tmp_path, "second", "gw-1")
    assert impostor.status == 2
    assert "already holds a valid certificate" in impostor.err and "--replace" in impostor.err
    request = tmp_path / "second" / "certs" / "gateway-request.cose"
    assert request.is_file()
    assert decisions(tmp_path / "ca")[-1][:2] == ("refused", "provisioning")

    no_reason = sign(vb, tmp_path, request, "second", "--replace")
    assert no_reason.status == 2 and "--replace needs --reason" in no_reason.err
    issued = len(org_ca.OrgCA.load(tmp_path / "ca").issued())
    blob = sign(vb, tmp_path, request, "second", "--replace", "--reason", "ab" * 32)
    assert blob.status == 2 and "nothing was recorded" in blob.err  # refused before issuing
    assert len(org_ca.OrgCA.load(tmp_path / "ca").issued()) == issued
    replaced = sign(vb, tmp_path, request, "second", "--replace", "--reason",
                    "board replaced", "--json")
    assert replaced.status == 0, replaced.err
    installed = vb("gateway", "install-cert", tmp_path / "second.resp", "--data-dir",
                   tmp_path / "second")
    assert installed.status == 0, installed.err

    old_tls = x509.load_pem_x509_certificate((site / "certs" / "broker-client.pem").read_bytes())
    crl = x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [old_tls.serial_number]  # no CWT serial on it
    journal = ca_journal(tmp_path / "ca")
    assert [d[:2] for d in decisions(tmp_path / "ca")][-3:] == [
        ("refused", "provisioning"), ("refused", "replacement"), ("accepted", "replacement")]
    revoked = [d for k, _, d in journal if k == "certificate.revoked"]
    assert len(revoked) == 2 and all("board replaced" in d["reason"] for d in revoked)
    # the replaced gateway's key no longer countersigns: it is not the current one
    stale = vb("gateway", "renew", "--force", "--json")
    assert stale.status == 0
    refused = sign(vb, tmp_path, Path(stale.json["request"]), "stale")
    assert refused.status == 2 and "superseded key" in refused.err


@pytest.mark.parametrize("reason,word", [("superseded", "revoked"),
                                         ("key-compromise", "compromised")])
def test_renewal_countersigned_by_a_revoked_or_compromised_key_is_refused(
        vb: Any, site: Path, tmp_path: Path, clock: list[int], reason: str, word: str) -> None:
    revoked = vb("ca", "revoke-gateway", "gw-1", "--dir", tmp_path / "ca", "--reason", reason,
                 "--json")
    assert revoked.status == 0 and len(revoked.json["revoked_serials"]) == 2
    started = vb("gateway", "renew", "--force", "--json")  # the gateway does not know yet
    refused = sign(vb, tmp_path, Path(started.json["request"]), "renewal")
    assert refused.status == 2 and f"countersigned by a {word} key" in refused.err
    assert "provision the gateway again" in refused.err
    assert not (tmp_path / "renewal.resp").exists()
    kinds = [k for k, _, _ in ca_journal(tmp_path / "ca")]
    assert kinds.count(f"certificate.{'compromised' if word == 'compromised' else 'revoked'}") \
        == 2
    assert decisions(tmp_path / "ca")[-1][:2] == ("refused", "renewal")
    again = vb("ca", "revoke-gateway", "gw-1", "--dir", tmp_path / "ca", "--reason", reason)
    assert again.status == 2 and "already revoked" in again.err
    # the way back is a fresh provisioning, which the revoked id no longer blocks
    fresh = provision(vb, tmp_path, "fresh", "gw-1")
    assert fresh.status == 0, fresh.err
    assert decisions(tmp_path / "ca")[-1][:2] == ("accepted", "provisioning")


def test_renewal_countersigned_by_an_expired_key_is_refused_and_renew_falls_back(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    clock[0] += 121 * DAY  # the site's certificates last 120 days
    old = common.load_gateway(site)
    crafted = crafted_renewal("gw-1", old.seed, old.certificate(), clock[0])
    refused = sign(vb, tmp_path, crafted, "expired")
    assert refused.status == 2 and "countersigned by an expired key" in refused.err
    # `gateway renew` does not countersign with an expired key: a plain request the CA
    # accepts as a new provisioning, since the id no longer holds a valid certificate
    renewed = vb("gateway", "renew", "--ca-dir", tmp_path / "ca", "--json")
    assert renewed.status == 0, renewed.err
    assert renewed.json["request_kind"] == "provisioning"
    assert [d[:2] for d in decisions(tmp_path / "ca")][-2:] == [("refused", "renewal"),
                                                                ("accepted", "provisioning")]
    assert "expired" in decisions(tmp_path / "ca")[-1][2]


def test_countersignature_by_another_gateways_key_is_refused(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    assert provision(vb, tmp_path, "gw2", "gw-2").status == 0
    other = common.load_gateway(tmp_path / "gw2")
    crafted = crafted_renewal("gw-1", other.seed, other.certificate(), clock[0])
    refused = sign(vb, tmp_path, crafted, "other")
    assert refused.status == 2 and "'gw-2'" in refused.err and "renew itself" in refused.err
    # gw-1's certificate carried, gw-2's key countersigning: the signature does not verify
    own = common.load_gateway(site)
    body = cbor.loads(crafted_renewal("gw-1", own.seed, own.certificate(), clock[0]))
    body[exchange.N_COUNTERSIGNATURE] = cose.sign1_create(
        other.seed, body[exchange.N_REQUEST], kid=cose.key_id(other.public_key),
        external_aad=exchange.RENEWAL_AAD, detached=True)
    forged = sign(vb, tmp_path, cbor.dumps(body), "forged")
    assert forged.status == 2 and "countersignature is not by the key" in forged.err
    assert [d[0] for d in decisions(tmp_path / "ca")][-2:] == ["refused", "refused"]
    assert "mode" not in ca_journal(tmp_path / "ca")[-1][2]  # unreadable: no mode claimed


def test_countersignature_over_another_request_or_stripped_is_refused(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    own = common.load_gateway(site)
    first = cbor.loads(crafted_renewal("gw-1", own.seed, own.certificate(), clock[0]))
    second = cbor.loads(crafted_renewal("gw-1", own.seed, own.certificate(), clock[0]))
    swapped = dict(first)
    swapped[exchange.N_COUNTERSIGNATURE] = second[exchange.N_COUNTERSIGNATURE]
    result = sign(vb, tmp_path, cbor.dumps(swapped), "swapped")
    assert result.status == 2 and "countersignature is not by the key" in result.err
    stripped = sign(vb, tmp_path, first[exchange.N_REQUEST], "stripped")
    assert stripped.status == 2 and "no countersignature" in stripped.err
    assert provision(vb, tmp_path, "gw2", "gw-2").status == 0
    moved = dict(first)
    moved[exchange.N_CERTIFICATE] = common.load_gateway(tmp_path / "gw2").certificate()
    result = sign(vb, tmp_path, cbor.dumps(moved), "moved")
    assert result.status == 2 and "names another certificate" in result.err
    assert sign(vb, tmp_path, cbor.dumps(first), "genuine").status == 0  # the control
    assert [d[0] for d in decisions(tmp_path / "ca")][-5:] == [
        "refused", "refused", "accepted", "refused", "accepted"]  # gw-2 provisioned between


def test_renewal_with_another_cas_certificate_or_a_superseded_key_is_refused(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    assert vb("ca", "init", "--dir", tmp_path / "other-ca").status == 0
    assert provision(vb, tmp_path, "foreign", "gw-1", ca="other-ca").status == 0
    foreign = common.load_gateway(tmp_path / "foreign")
    refused = sign(vb, tmp_path, crafted_renewal("gw-1", foreign.seed, foreign.certificate(),
                                                 clock[0]), "foreign")
    assert refused.status == 2 and "not issued by this CA" in refused.err
    old = common.load_gateway(site)
    old_cert = old.certificate()
    assert vb("gateway", "renew", "--ca-dir", tmp_path / "ca", "--force").status == 0
    replay = sign(vb, tmp_path, crafted_renewal("gw-1", old.seed, old_cert, clock[0]), "old")
    assert replay.status == 2 and "superseded key" in replay.err


def test_the_same_request_signed_again_is_issued_anew(vb: Any, site: Path, tmp_path: Path,
                                                      clock: list[int]) -> None:
    started = vb("gateway", "renew", "--force", "--json")
    request = Path(started.json["request"])
    assert sign(vb, tmp_path, request, "first").status == 0
    again = sign(vb, tmp_path, request, "lost")  # the first response was lost
    assert again.status == 0, again.err
    assert decisions(tmp_path / "ca")[-1] == ("accepted", "renewal", "the same request "
                                              "again: certificates issued anew")
    assert vb("gateway", "renew", "--response", tmp_path / "lost.resp").status == 0


def test_revocation_codes_match_the_ca() -> None:
    from edge_agent.commands import ca

    assert sorted(ca.REVOCATION_CODES) == sorted(org_ca.REVOCATION_REASONS)
