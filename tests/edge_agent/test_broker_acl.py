"""Broker credentials end to end: key files, the organisation CA, and a REAL mosquitto running
the generated configuration (TLS listener, client certificates, CRL, per-gateway ACL).

Observed with mosquitto 2.0.11 (Debian 12) and recorded in docs/keys-and-certificates.md:
  * a publish outside the gateway's own up/ subtree is answered with PUBACK reason 0x87
    (Not authorized) over MQTT 5, and never delivered;
  * a SUBSCRIBE to another gateway's down/ is GRANTED (SUBACK 1), but nothing published there
    is delivered to it: the read ACL is applied per message;
  * SIGHUP makes mosquitto re-read the CRL: a revoked gateway's next TLS handshake fails;
    a connection opened before the revocation stays up until the broker restarts.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.ca import keyfiles
from edge_agent.ca.keyfiles import KeyFileError
from edge_agent.ca.mosquitto_config import (
    TLSFiles,
    acl_rules,
    render_config,
)
from edge_agent.ca.org_ca import CAError, OrgCA, new_tls_key, tls_request
from edge_agent.registry.store import Registry
from protocol import crypto, cwt, topics
from protocol.errors import ValidationError
from simulator.broker import Broker
from simulator.broker_tls import (
    Probe,
    TlsBroker,
    TlsSite,
    mosquitto_available,
    plain_connect_answer,
)

T_NOW = int(time.time())  # TLS peers check validity against the real clock
NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10  # accepted, nobody subscribed


needs_mosquitto = pytest.mark.skipif(not mosquitto_available(),
                                     reason="mosquitto not installed (scripts/setup.sh)")


# The site and broker are simulator/broker_tls.py's (shared with tests/attack/rig.py);
# test_commission.py imports them from here under these names.
Site = TlsSite
TLSBroker = TlsBroker


@pytest.fixture
def site(tmp_path: Path) -> TlsSite:
    return TlsSite.create(tmp_path, ("gw-a", "gw-b"), now=T_NOW)


@pytest.fixture
def broker(site: TlsSite) -> Iterator[TlsBroker]:
    with TlsBroker(site.root / "mosquitto", site.files) as running:
        yield running


def connect(site: TlsSite, broker: Broker, name: str) -> Probe:
    client = Probe(name, broker.port, site.files.cafile, site.clients[name])
    connected, detail = client.connect()
    assert connected, detail
    return client


# -- the ACL on a real broker -----------------------------------------------------------------


@needs_mosquitto
def test_gateway_publishes_only_into_its_own_subtree(site: TlsSite, broker: TlsBroker) -> None:
    centre = connect(site, broker, "vb-centre")
    assert centre.subscribe(topics.centre_up_filter()) == [1]  # $share/centre/vb/v1/gw/+/up/#
    gateway_a = connect(site, broker, "gw-a")
    forged = topics.up("gw-b", "readings", "dev-1")
    own = topics.up("gw-a", "readings", "dev-1")
    assert gateway_a.publish(forged, b"forged") == NOT_AUTHORIZED
    assert gateway_a.publish(topics.up("gw-b", "status"), b"forged") == NOT_AUTHORIZED
    assert gateway_a.publish(own, b"genuine") == 0
    assert centre.received(until_topic=own) == [(own, b"genuine")]
    for client in (gateway_a, centre):
        client.close()


@needs_mosquitto
def test_only_the_centre_writes_down_and_each_gateway_reads_only_its_own(
        site: TlsSite, broker: TlsBroker) -> None:
    centre = connect(site, broker, "vb-centre")
    gateway_a = connect(site, broker, "gw-a")
    gateway_b = connect(site, broker, "gw-b")
    # A gateway cannot forge its own commands or receipts...
    assert gateway_a.publish(topics.down("gw-a", "command"), b"self-made") == NOT_AUTHORIZED
    # ...and its subscription to another gateway's down/ is granted but delivers nothing.
    assert gateway_a.subscribe(topics.gateway_down_filter("gw-b")) == [1]
    assert gateway_a.subscribe(topics.gateway_down_filter("gw-a")) == [1]
    assert gateway_b.subscribe(topics.gateway_down_filter("gw-b")) == [1]
    to_b, to_a = topics.down("gw-b", "receipt"), topics.down("gw-a", "receipt")
    assert centre.publish(to_b, b"for b") == 0
    assert centre.publish(to_a, b"for a") == 0
    assert gateway_a.received(until_topic=to_a) == [(to_a, b"for a")]
    assert gateway_b.received(until_topic=to_b) == [(to_b, b"for b")]
    for client in (gateway_a, gateway_b, centre):
        client.close()


def _verify_failures(broker: Broker) -> int:
    return broker.log_path.read_text(errors="replace").count("certificate verify failed")


@needs_mosquitto
def test_revoked_gateway_cannot_connect_after_reload(site: TlsSite, broker: TlsBroker) -> None:
    before = connect(site, broker, "gw-a")  # a session opened before the revocation
    serial = site.ca.revoke(site.clients["gw-a"].pem, now=T_NOW, reason="key-compromise")
    crl = x509.load_pem_x509_crl(site.ca.crl(T_NOW))
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    site.ca.write_crl(T_NOW, site.files.crlfile)
    broker.reload()
    time.sleep(0.3)  # SIGHUP is handled asynchronously by the broker's main loop
    refusals = _verify_failures(broker)
    connected, detail = Probe("gw-a", broker.port, site.files.cafile,
                              site.clients["gw-a"]).connect()
    assert not connected, detail
    assert _verify_failures(broker) > refusals  # refused for its certificate, nothing else
    connect(site, broker, "gw-b").close()  # the broker itself is fine
    # Recorded behaviour: the reload does not cut a session opened before it.
    assert before.publish(topics.up("gw-a", "status"), b"still here") == NO_MATCHING_SUBSCRIBERS
    before.close()
    broker.restart()
    connected, detail = Probe("gw-a", broker.port, site.files.cafile,
                              site.clients["gw-a"]).connect()
    assert not connected, detail
    connect(site, broker, "gw-b").close()


@needs_mosquitto
def test_plain_tcp_and_certificateless_clients_are_refused(site: TlsSite,
                                                           broker: TlsBroker) -> None:
    plain, detail = Probe("plain", broker.port, None).connect()
    assert not plain, detail
    anonymous, detail = Probe("anon", broker.port, site.files.cafile).connect()
    assert not anonymous, detail
    # An MQTT 3.1.1 CONNECT in clear text: the TLS listener must not answer with CONNACK.
    assert not plain_connect_answer(broker.port).startswith(b"\x20")


@needs_mosquitto
def test_certificate_from_another_ca_is_refused(site: TlsSite, broker: TlsBroker) -> None:
    stranger_ca = OrgCA.init(site.root / "other-ca", "Test Org", now=T_NOW)
    stranger = TlsSite(site.root / "stranger", stranger_ca, site.files, {}).credential(
        "gw-a", lambda r: stranger_ca.issue_gateway_tls(r, "gw-a", now=T_NOW))
    connected, detail = Probe("gw-a", broker.port, site.files.cafile, stranger).connect()
    assert not connected, detail


# -- generated configuration ------------------------------------------------------------------


def test_acl_rules_confine_each_gateway_by_its_certificate_name() -> None:
    rules = acl_rules("vb-centre").splitlines()
    assert "pattern write vb/v1/gw/%u/up/#" in rules
    assert "pattern read vb/v1/gw/%u/down/#" in rules
    centre = rules.index("user vb-centre")
    assert rules[centre + 1:centre + 3] == ["topic read vb/v1/gw/+/up/#",
                                           "topic write vb/v1/gw/+/down/#"]
    assert not any(line.startswith("topic") for line in rules[:centre])
    with pytest.raises(ValidationError):
        acl_rules("centre/#")


def test_config_refuses_values_that_would_inject_options(tmp_path: Path) -> None:
    files = TLSFiles(tmp_path / "ca.pem", tmp_path / "s.pem", tmp_path / "s.key",
                     tmp_path / "crl.pem")
    text = render_config(files=files, acl_file=tmp_path / "acl", port=8883)
    for line in ("allow_anonymous false", "require_certificate true",
                 "use_identity_as_username true", f"crlfile {tmp_path}/crl.pem",
                 "listener 8883 0.0.0.0"):
        assert line in text.splitlines()
    bad = TLSFiles(Path("/tmp/x\nallow_anonymous true"), files.certfile, files.keyfile,
                   files.crlfile)
    with pytest.raises(ValidationError) as info:
        render_config(files=bad, acl_file=tmp_path / "acl")
    assert info.value.field == "cafile"
    with pytest.raises(ValidationError):
        render_config(files=files, acl_file="relative/acl")
    with pytest.raises(ValidationError):
        render_config(files=files, acl_file=tmp_path / "acl", log_dest="file x\nuser root")


# -- key files --------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_keys_are_0600_in_0700_and_written_atomically(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a careless umask must not loosen a key file
    try:
        path = keyfiles.write_private(tmp_path / "keys" / "k.pem", b"secret")
    finally:
        os.umask(old_umask)
    assert (_mode(path.parent), _mode(path)) == (0o700, 0o600)
    assert keyfiles.read_private(path) == b"secret"
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        keyfiles.write_private(path, b"other")
    keyfiles.write_private(path, b"other", replace=True)
    assert keyfiles.read_private(path) == b"other"
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.pem"]  # no temporary left


def test_loose_or_substituted_key_files_are_refused(tmp_path: Path) -> None:
    path = keyfiles.write_private(tmp_path / "keys" / "k.pem", b"secret")
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keyfiles.read_private(path)
    os.chmod(path, 0o600)
    os.chmod(path.parent, 0o755)
    with pytest.raises(KeyFileError, match="chmod 700"):
        keyfiles.read_private(path)
    with pytest.raises(KeyFileError):
        keyfiles.write_private(path.parent / "new.pem", b"x")
    os.chmod(path.parent, 0o700)
    link = path.parent / "link.pem"
    link.symlink_to(path)
    with pytest.raises(KeyFileError, match="symlink"):
        keyfiles.read_private(link)
    with pytest.raises(KeyFileError, match="no such key file"):
        keyfiles.read_private(path.parent / "missing.pem")


def test_remove_private_zeroes_and_unlinks(tmp_path: Path) -> None:
    path = keyfiles.write_private(tmp_path / "keys" / "k.pem", b"secret")
    keep = os.open(path, os.O_RDONLY)  # a second name for the same inode sees the zeroes
    try:
        keyfiles.remove_private(path)
        assert not path.exists()
        assert os.pread(keep, 6, 0) == bytes(6)
    finally:
        os.close(keep)


def test_key_encodings_round_trip(tmp_path: Path) -> None:
    seed, private = crypto.random_bytes(32), crypto.random_bytes(32)
    keyfiles.save_ed25519_seed(tmp_path / "k" / "sign.key", seed)
    keyfiles.save_x25519_private(tmp_path / "k" / "agree.key", private)
    assert keyfiles.load_ed25519_seed(tmp_path / "k" / "sign.key") == seed
    assert keyfiles.load_x25519_private(tmp_path / "k" / "agree.key") == private
    with pytest.raises(KeyFileError, match="not a Ed25519PrivateKey"):
        keyfiles.load_ed25519_seed(tmp_path / "k" / "agree.key")


# -- the organisation CA ----------------------------------------------------------------------


def test_ca_init_load_and_gateway_cwt_chain(tmp_path: Path) -> None:
    ca = OrgCA.init(tmp_path / "ca", "Test Org", now=T_NOW)
    assert _mode(tmp_path / "ca") == 0o700
    assert _mode(tmp_path / "ca" / "ca-signing.key") == 0o600
    with pytest.raises(CAError, match="already holds a CA"):
        OrgCA.init(tmp_path / "ca", "Test Org", now=T_NOW)
    again = OrgCA.load(tmp_path / "ca")
    assert (again.public_key, again.name) == (ca.public_key, "Test Org")
    signing, agreement = crypto.random_bytes(32), crypto.random_bytes(32)
    cert = again.issue_gateway_certificate("gw-1", crypto.ed25519_public_key(signing),
                                           crypto.x25519_public_key(agreement), now=T_NOW)
    parsed = cwt.verify_cwt(cert, ca.public_key, issuer="Test Org")
    assert (parsed.role, parsed.subject) == ("gateway", "gw-1")
    with Registry.open(tmp_path / "registry.sqlite3") as registry:
        registry.install_org_ca(ca.certificate, actor="installer", now=T_NOW,
                                x509_pem=ca.tls_certificate_pem)
        registry.enroll_gateway("gw-1", cert, actor="tech", now=T_NOW)
    assert [r.kind for r in again.issued()] == ["gateway-cwt"]
    os.chmod(tmp_path / "ca" / "tls-ca.key", 0o644)
    with pytest.raises(KeyFileError):
        OrgCA.load(tmp_path / "ca")


def test_ca_refuses_bad_requests(tmp_path: Path) -> None:
    ca = OrgCA.init(tmp_path / "ca", "Test Org", now=T_NOW, lifetime_days=30)
    key = new_tls_key()
    with pytest.raises(CAError, match="expected 'gw-1'"):
        ca.issue_gateway_tls(tls_request("gw-2", key), "gw-1", now=T_NOW)
    with pytest.raises(CAError, match="centre's broker identity"):
        ca.issue_gateway_tls(tls_request("vb-centre", key), "vb-centre", now=T_NOW)
    with pytest.raises(CAError, match="outlive the CA"):
        ca.issue_gateway_tls(tls_request("gw-1", key), "gw-1", now=T_NOW, lifetime_days=365)
    with pytest.raises(CAError, match="not a PEM certificate request"):
        ca.issue_gateway_tls(b"nonsense", "gw-1", now=T_NOW)
    with pytest.raises(CAError, match="name at least one host"):
        ca.issue_broker_tls(tls_request("b", key), now=T_NOW)
    with pytest.raises(ValidationError):
        ca.issue_gateway_certificate("gw/1", bytes(32), bytes(32), now=T_NOW)


def test_request_signature_is_the_proof_of_possession(tmp_path: Path) -> None:
    ca = OrgCA.init(tmp_path / "ca", "Test Org", now=T_NOW)
    csr = x509.load_pem_x509_csr(tls_request("gw-1", new_tls_key()))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1  # the last byte of the ECDSA signature: still well-formed, no longer valid
    pem = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
           + b"-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(CAError, match="proof of possession failed"):
        ca.issue_gateway_tls(pem, "gw-1", now=T_NOW)


def test_revocation_and_crl(tmp_path: Path) -> None:
    ca = OrgCA.init(tmp_path / "ca", "Test Org", now=T_NOW)
    cert = ca.issue_gateway_tls(tls_request("gw-1", new_tls_key()), "gw-1", now=T_NOW)
    stranger = OrgCA.init(tmp_path / "other", "Other", now=T_NOW)
    foreign = stranger.issue_gateway_tls(tls_request("gw-1", new_tls_key()), "gw-1", now=T_NOW)
    with pytest.raises(CAError, match="was not issued by CA"):
        ca.revoke(foreign, now=T_NOW)
    with pytest.raises(CAError, match="must be one of"):
        ca.revoke(cert, now=T_NOW, reason="bored")
    serial = ca.revoke(cert, now=T_NOW, reason="key-compromise")
    with pytest.raises(CAError, match="already revoked"):
        ca.revoke(cert, now=T_NOW)
    first = x509.load_pem_x509_crl(ca.crl(T_NOW))
    second = x509.load_pem_x509_crl(ca.crl(T_NOW))
    assert first.is_signature_valid(ca.tls_certificate.public_key())
    entry = first.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
               for c in (first, second)]
    assert numbers[1] == numbers[0] + 1
    assert OrgCA.load(tmp_path / "ca").revoked()[0].serial == serial
