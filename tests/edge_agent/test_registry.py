"""The registry: schema, validation that names the field and the remedy, verified certificate
chains, non-overlapping bindings, and an append-only key journal enforced by SQLite itself."""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.ca.org_ca import OrgCA, new_tls_key, tls_request
from edge_agent.lifecycle import states
from edge_agent.registry import schema
from edge_agent.registry.store import (
    ConflictError,
    NotFoundError,
    Registry,
    RegistryError,
    kid_hex,
    tls_key_id,
)
from protocol import crypto, cwt

DAY = states.DAY
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
YEAR = 365 * DAY
_seeds = itertools.count(1)


def seed() -> bytes:
    """Deterministic distinct 32-byte secrets (tests only: real keys come from the CSPRNG)."""
    return crypto.sha256(b"vitalbridge-test-seed-%d" % next(_seeds))


@dataclass
class Pki:
    """An organisation CA and one gateway, as CWT issuers for tests."""

    ca_name: str = "Test Org"
    ca_seed: bytes = field(default_factory=seed)
    gateway_id: str = "gw-1"
    gateway_seed: bytes = field(default_factory=seed)
    gateway_agreement: bytes = field(default_factory=seed)
    start: int = T0
    lifetime: int = 20 * YEAR

    @property
    def ca_cert(self) -> bytes:
        pub = crypto.ed25519_public_key(self.ca_seed)
        return cwt.issue_cwt(self.ca_seed, self.ca_name, self.ca_name, pub, self.start,
                             self.start + self.lifetime + YEAR, role="ca", cti=b"ca")

    def gateway_cert(self, **overrides: object) -> bytes:
        args: dict[str, object] = dict(
            issuer_seed=self.ca_seed, issuer=self.ca_name, subject=self.gateway_id,
            public_key=crypto.ed25519_public_key(self.gateway_seed), not_before=self.start,
            expires=self.start + self.lifetime,
            agreement_key=crypto.x25519_public_key(self.gateway_agreement), role="gateway")
        args.update(overrides)
        return cwt.issue_cwt(**args)  # type: ignore[arg-type]

    def device_cert(self, device_id: str, now: int, lifetime: int = YEAR,
                    **overrides: object) -> bytes:
        """A device CWT for a freshly generated device key pair, issued by the gateway."""
        args: dict[str, object] = dict(
            issuer_seed=self.gateway_seed, issuer=self.gateway_id, subject=device_id,
            public_key=crypto.ed25519_public_key(seed()), not_before=now, expires=now + lifetime,
            agreement_key=crypto.x25519_public_key(seed()), role="device")
        args.update(overrides)
        return cwt.issue_cwt(**args)  # type: ignore[arg-type]

    def install(self, registry: Registry, now: int = T0) -> None:
        registry.install_org_ca(self.ca_cert, actor="installer", now=now)
        registry.enroll_gateway(self.gateway_id, self.gateway_cert(), actor="tech-ann", now=now)

    def enroll(self, registry: Registry, device_id: str, now: int = T0, lifetime: int = YEAR,
               serial: str | None = None) -> None:
        registry.enroll_device(device_id, self.gateway_id,
                               self.device_cert(device_id, now, lifetime),
                               model="VB-PULSE", serial=serial or f"SN-{device_id}",
                               firmware="1.0.0", registration_number="REG-42",
                               registration_valid_until=now + 2 * YEAR,
                               calibration_due=now + YEAR, actor="tech-ann", now=now)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.open_in(tmp_path / "data")
    yield reg
    reg.close()


@pytest.fixture
def pki(registry: Registry) -> Pki:
    pki = Pki()
    pki.install(registry)
    return pki


# -- file and schema --------------------------------------------------------------------------


def test_file_is_wal_with_foreign_keys_and_current_schema(tmp_path: Path) -> None:
    with Registry.open_in(tmp_path / "data") as reg:
        assert reg.path == tmp_path / "data" / schema.FILE_NAME
        conn = sqlite3.connect(reg.path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST_VERSION
        conn.close()
        assert reg._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopen_keeps_data_and_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with Registry.open(path) as reg:
        Pki().install(reg)
    with Registry.open(path) as reg:
        assert [g.id for g in reg.gateways()] == ["gw-1"]
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(schema.RegistrySchemaError, match="newer than this agent"):
        Registry.open(path)


def test_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    broken = (("CREATE TABLE a (x)",), ("CREATE TABLE b (y)", "CREATE TABLE a (x)"))
    with pytest.raises(sqlite3.OperationalError):
        schema.upgrade(conn, broken)
    assert schema.schema_version(conn) == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'b'").fetchone()[0] == 0


# -- enrollment and validation ----------------------------------------------------------------


def test_enroll_device_records_device_keys_certificate_and_journal(
        registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    device = registry.device("dev-1")
    assert (device.gateway_id, device.model, device.serial, device.firmware) == \
        ("gw-1", "VB-PULSE", "SN-dev-1", "1.0.0")
    assert (device.registration_number, device.status, device.enrolled_by) == \
        ("REG-42", "active", "tech-ann")
    keys = registry.keys("device", "dev-1")
    assert [k.purpose for k in keys] == ["signing", "agreement"]
    signing, agreement = keys
    assert agreement.anchor == signing.kid and signing.held_at == "device"
    for key in keys:
        assert [(s.step, s.actor) for s in key.steps] == \
            [("created", "device:dev-1"), ("activated", "tech-ann")]
        assert key.state(T0) == states.ACTIVE
    cert = registry.certificate_of_key(signing.kid)
    issuer = registry.certificate(cert.issued_by)
    assert (cert.subject, cert.issuer, issuer.subject) == ("dev-1", "gw-1", "gw-1")
    assert registry.certificate(issuer.issued_by).subject == "Test Org"
    journal = registry._conn.execute(
        "SELECT purpose, created_by, activated_by, destroyed_at FROM key_journal "
        "WHERE holder_id = 'dev-1'").fetchall()
    assert journal == [("signing", "device:dev-1", "tech-ann", None),
                       ("agreement", "device:dev-1", "tech-ann", None)]


def test_enrolling_twice_names_the_field_and_the_remedy(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    with pytest.raises(ConflictError, match="already enrolled.*retire") as info:
        pki.enroll(registry, "dev-1")
    assert info.value.field == "device_id"
    with pytest.raises(ConflictError, match="retire that one first") as info:
        pki.enroll(registry, "dev-2", serial="SN-dev-1")
    assert info.value.field == "serial"


def test_unknown_things_are_named(registry: Registry, pki: Pki) -> None:
    with pytest.raises(NotFoundError, match="device list") as info:
        registry.device("nope")
    assert info.value.field == "device_id"
    with pytest.raises(NotFoundError, match="no gateway 'gw-9'"):
        registry.enroll_device("dev-1", "gw-9", pki.device_cert("dev-1", T0), model="M",
                               serial="S", firmware="1", actor="tech", now=T0)
    with pytest.raises(NotFoundError):
        registry.key("00" * 8)


def test_gateway_certificate_from_another_ca_is_refused(registry: Registry) -> None:
    ours, theirs = Pki(), Pki(ca_name="Other Org")
    registry.install_org_ca(ours.ca_cert, actor="installer", now=T0)
    with pytest.raises(RegistryError, match="not issued by an installed organisation CA") as info:
        registry.enroll_gateway("gw-1", theirs.gateway_cert(), actor="tech", now=T0)
    assert info.value.field == "certificate"
    # Same name, other key: the kid names our CA but the signature cannot verify.
    forged = theirs.gateway_cert(issuer=ours.ca_name,
                                 issuer_kid=cwt.key_id(crypto.ed25519_public_key(ours.ca_seed)))
    with pytest.raises(RegistryError, match="does not verify"):
        registry.enroll_gateway("gw-1", forged, actor="tech", now=T0)
    assert registry.gateways() == []


def test_device_certificate_from_another_issuer_is_refused(registry: Registry, pki: Pki) -> None:
    stranger = Pki(ca_seed=pki.ca_seed, gateway_id="gw-2")
    registry.enroll_gateway("gw-2", stranger.gateway_cert(), actor="tech", now=T0)
    with pytest.raises(RegistryError, match="not issued by gateway 'gw-1'"):
        registry.enroll_device("dev-1", "gw-1", stranger.device_cert("dev-1", T0), model="M",
                               serial="S", firmware="1", actor="tech", now=T0)
    tampered = bytearray(pki.device_cert("dev-1", T0))
    tampered[-1] ^= 1
    with pytest.raises(RegistryError, match="does not verify"):
        registry.enroll_device("dev-1", "gw-1", bytes(tampered), model="M", serial="S",
                               firmware="1", actor="tech", now=T0)
    with pytest.raises(RegistryError, match="not a readable CWT"):
        registry.enroll_device("dev-1", "gw-1", b"\x00garbage", model="M", serial="S",
                               firmware="1", actor="tech", now=T0)


@pytest.mark.parametrize(("overrides", "now", "message"), [
    ({"subject": "dev-2"}, T0, "is for 'dev-2'"),
    ({"role": "gateway"}, T0, "role 'gateway'"),
    ({"agreement_key": None}, T0, "no agreement"),
    ({"model": "OTHER"}, T0, "differs from the certificate"),
    ({}, T0 + 2 * YEAR, "expired"),
    ({"not_before": T0 + 5 * DAY}, T0, "check the gateway clock"),
    ({"expires": T0 + 30 * YEAR}, T0, "expires after its issuer"),
])
def test_device_certificate_contents_are_checked(registry: Registry, pki: Pki,
                                                 overrides: dict[str, object], now: int,
                                                 message: str) -> None:
    cert = pki.device_cert("dev-1", T0, **overrides)
    with pytest.raises(RegistryError, match=message) as info:
        registry.enroll_device("dev-1", "gw-1", cert, model="VB-PULSE", serial="S",
                               firmware="1", actor="tech", now=now)
    assert info.value.field in ("certificate", "model")
    assert registry.devices() == []


def test_a_key_is_registered_once(registry: Registry, pki: Pki) -> None:
    pub = crypto.ed25519_public_key(seed())
    registry.enroll_device("dev-1", "gw-1", pki.device_cert("dev-1", T0, public_key=pub),
                           model="M", serial="S1", firmware="1", actor="tech", now=T0)
    with pytest.raises(ConflictError, match="freshly generated key"):
        registry.enroll_device("dev-2", "gw-1", pki.device_cert("dev-2", T0, public_key=pub),
                               model="M", serial="S2", firmware="1", actor="tech", now=T0)


@pytest.mark.parametrize(("field_name", "value"), [
    ("device_id", "dev/1"), ("device_id", "dev#"), ("model", ""), ("serial", " padded"),
    ("firmware", "x" * 65), ("calibration_due", -1), ("registration_valid_until", 1.5),
    ("actor", ""), ("now", True),
])
def test_bad_arguments_name_their_field(registry: Registry, pki: Pki, field_name: str,
                                        value: object) -> None:
    args: dict[str, object] = dict(device_id="dev-1", gateway_id="gw-1",
                                   certificate=pki.device_cert("dev-1", T0), model="M",
                                   serial="S", firmware="1", actor="tech", now=T0)
    args[field_name] = value
    with pytest.raises(RegistryError) as info:
        registry.enroll_device(**args)  # type: ignore[arg-type]
    assert info.value.field == field_name


def test_ca_installation_checks(registry: Registry) -> None:
    pki = Pki()
    not_ca = pki.gateway_cert()
    with pytest.raises(RegistryError, match="self-signed"):
        registry.install_org_ca(not_ca, actor="i", now=T0)
    registry.install_org_ca(pki.ca_cert, actor="i", now=T0)
    with pytest.raises(ConflictError, match="already installed"):
        registry.install_org_ca(pki.ca_cert, actor="i", now=T0)
    rollover = Pki(ca_name="Test Org")
    with pytest.raises(ConflictError, match="another key"):
        registry.install_org_ca(rollover.ca_cert, actor="i", now=T0)


def test_enrolling_a_gateway_twice_is_refused(registry: Registry, pki: Pki) -> None:
    with pytest.raises(ConflictError, match="already enrolled") as info:
        registry.enroll_gateway("gw-1", pki.gateway_cert(), actor="tech", now=T0)
    assert info.value.field == "gateway_id"


def test_tls_client_certificate_is_checked_against_the_org_tls_ca(
        tmp_path: Path, registry: Registry) -> None:
    ca = OrgCA.init(tmp_path / "ca", "Test Org", now=T0)
    other = OrgCA.init(tmp_path / "other", "Test Org", now=T0)
    registry.install_org_ca(ca.certificate, actor="i", now=T0, x509_pem=ca.tls_certificate_pem)
    gateway_cert = ca.issue_gateway_certificate(
        "gw-1", crypto.ed25519_public_key(seed()), crypto.x25519_public_key(seed()), now=T0)
    registry.enroll_gateway("gw-1", gateway_cert, actor="tech", now=T0)
    good = ca.issue_gateway_tls(tls_request("gw-1", new_tls_key()), "gw-1", now=T0)
    record = registry.add_gateway_tls_certificate("gw-1", good, actor="tech", now=T0)
    assert record.format == "x509"
    assert record.kid == tls_key_id(x509.load_pem_x509_certificate(good))
    assert registry.key(record.kid).purpose == "tls-client"
    foreign = other.issue_gateway_tls(tls_request("gw-1", new_tls_key()), "gw-1", now=T0)
    with pytest.raises(RegistryError, match="organisation TLS CA"):
        registry.add_gateway_tls_certificate("gw-1", foreign, actor="tech", now=T0)
    wrong_cn = ca.issue_gateway_tls(tls_request("gw-2", new_tls_key()), "gw-2", now=T0)
    with pytest.raises(RegistryError, match="common name must be exactly 'gw-1'"):
        registry.add_gateway_tls_certificate("gw-1", wrong_cn, actor="tech", now=T0)
    server = ca.issue_broker_tls(tls_request("gw-1", new_tls_key()), hostnames=["gw-1"], now=T0)
    with pytest.raises(RegistryError, match="clientAuth"):
        registry.add_gateway_tls_certificate("gw-1", server, actor="tech", now=T0)


# -- device facts -----------------------------------------------------------------------------


def test_contact_battery_and_maintenance_updates(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    registry.record_contact("dev-1", at=T0 + 100, battery=80)
    registry.record_contact("dev-1", at=T0 + 50)  # a late message never moves last_seen back
    device = registry.device("dev-1")
    assert (device.last_seen, device.battery) == (T0 + 100, 80)
    with pytest.raises(RegistryError) as info:
        registry.record_contact("dev-1", at=T0, battery=101)
    assert info.value.field == "battery"
    device = registry.update_device("dev-1", firmware="1.1.0", calibration_due=T0 + 10)
    assert (device.firmware, device.calibration_due) == ("1.1.0", T0 + 10)
    assert device.currency_flags(T0 + 10) == ("calibration-overdue",)


# -- patients and bindings --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["John Smith", "alice", "Müller-1", "jo@example.org", "p1"])
def test_patient_ids_must_be_pseudonyms(registry: Registry, name: str) -> None:
    with pytest.raises(RegistryError, match="never store a name") as info:
        registry.add_patient(name, actor="nurse", now=T0)
    assert info.value.field == "patient_id"


def test_bindings_attribute_readings_and_never_overlap(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    for pid in ("p-4f7a2c", "p-99b1"):
        registry.add_patient(pid, actor="nurse", now=T0)
    with pytest.raises(ConflictError, match="already registered"):
        registry.add_patient("p-4f7a2c", actor="nurse", now=T0)
    first = registry.bind("dev-1", "p-4f7a2c", since=T0, actor="tech")
    with pytest.raises(ConflictError, match="end that binding first") as info:
        registry.bind("dev-1", "p-99b1", since=T0 + DAY, actor="tech")
    assert info.value.field == "since"
    registry.end_binding(first.id, until=T0 + DAY, actor="tech")
    registry.bind("dev-1", "p-99b1", since=T0 + DAY, actor="tech")
    assert registry.patient_at("dev-1", T0 + DAY - 1) == "p-4f7a2c"
    assert registry.patient_at("dev-1", T0 + DAY) == "p-99b1"
    assert registry.patient_at("dev-1", T0 - 1) is None
    with pytest.raises(ConflictError, match="already ended"):
        registry.end_binding(first.id, until=T0 + 2 * DAY, actor="tech")
    with pytest.raises(NotFoundError, match="register the pseudonym"):
        registry.bind("dev-1", "p-0000", since=T0 + 9 * DAY, actor="tech")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 50), st.one_of(st.none(), st.integers(1, 20))),
                max_size=8))
def test_binding_overlap_rule_matches_a_model(tmp_path: Path,
                                              spans: list[tuple[int, int | None]]) -> None:
    with Registry.open(tmp_path / f"b{next(_seeds)}.sqlite3") as reg:
        pki = Pki()
        pki.install(reg)
        pki.enroll(reg, "dev-1")
        reg.add_patient("p-0001", actor="n", now=T0)
        accepted: list[tuple[int, float]] = []
        for start, length in spans:
            since, until = T0 + start, None if length is None else T0 + start + length
            end = float("inf") if until is None else until
            overlaps = any(s < end and since < e for s, e in accepted)
            try:
                reg.bind("dev-1", "p-0001", since=since, until=until, actor="t")
            except ConflictError:
                assert overlaps
            else:
                assert not overlaps
                accepted.append((since, end))
        assert len(reg.bindings("dev-1")) == len(accepted)


def test_sqlite_itself_refuses_overlapping_or_deleted_bindings(registry: Registry,
                                                                pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    registry.add_patient("p-0001", actor="n", now=T0)
    registry.bind("dev-1", "p-0001", since=T0, actor="t")
    conn = registry._conn
    with pytest.raises(sqlite3.IntegrityError, match="overlaps"):
        conn.execute("INSERT INTO bindings (device_id, patient_id, since, created_by) "
                     "VALUES ('dev-1', 'p-0001', ?, 't')", (T0 + 5,))
    with pytest.raises(sqlite3.IntegrityError, match="never delete"):
        conn.execute("DELETE FROM bindings")
    with pytest.raises(sqlite3.IntegrityError, match="history"):
        conn.execute("UPDATE bindings SET patient_id = 'p-0001', since = 0")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO bindings (device_id, patient_id, since, created_by) "
                     "VALUES ('ghost', 'p-0001', 0, 't')")


# -- the key journal --------------------------------------------------------------------------


def test_key_journal_is_append_only_in_sqlite(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    conn = registry._conn
    kid = registry.keys("device", "dev-1")[0].kid
    for sql in ("UPDATE key_steps SET actor = 'someone-else'", "DELETE FROM key_steps",
                "UPDATE keys SET expires = expires + 1", "DELETE FROM keys",
                "DELETE FROM certificates", "UPDATE certificate_steps SET at = 0",
                "DELETE FROM devices"):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)
    insert = "INSERT INTO key_steps (kid, step, at, actor) VALUES (?, ?, ?, 'x')"
    with pytest.raises(sqlite3.IntegrityError, match="before destroyed"):
        conn.execute(insert, (kid, "destroyed", T0 + 1))
    with pytest.raises(sqlite3.IntegrityError, match="dated before"):
        conn.execute(insert, (kid, "retired", T0 - 1))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(insert, (kid, "activated", T0 + 1))
    conn.execute(insert, (kid, "retired", T0 + 1))
    conn.execute(insert, (kid, "destroyed", T0 + 2))
    with pytest.raises(sqlite3.IntegrityError, match="nothing may follow destroyed"):
        conn.execute(insert, (kid, "compromised", T0 + 3))


def test_key_steps_go_through_the_lifecycle_rules(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    kid = registry.keys("device", "dev-1")[0].kid
    with pytest.raises(states.TransitionError, match="still in use"):
        registry.record_key_step(kid, "destroyed", at=T0 + 1, actor="tech")
    registry.record_key_step(kid, "retired", at=T0 + 1, actor="tech", reason="test")
    step = registry.record_key_step(kid, "destroyed", at=T0 + 2, actor="tech")
    assert registry.key_journal(kid)[-1] == step
    assert registry.key(kid).state(T0 + 2) == states.DESTROYED
    with pytest.raises(RegistryError) as info:
        registry.record_key_step(kid, "retired", at=T0 + 3, actor="")
    assert info.value.field == "actor"


def test_session_keys_are_anchored_on_the_device_key(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    pki.enroll(registry, "dev-2")
    signing = registry.current_key("device", "dev-1", "signing", T0)
    assert signing is not None
    session = registry.add_session_key("dev-1", b"\x01" * 8, anchor=signing.kid,
                                       not_before=T0, expires=T0 + DAY, actor="gateway:gw-1")
    assert (session.kid, session.purpose, session.held_at) == ("01" * 8, "session", "gateway")
    assert {k.purpose for k in registry.keys_used_with(session.kid)} == \
        {"signing", "agreement", "session"}
    other = registry.current_key("device", "dev-2", "signing", T0)
    assert other is not None
    with pytest.raises(RegistryError, match="not a signing key of device 'dev-1'"):
        registry.add_session_key("dev-1", b"\x02" * 8, anchor=other.kid, not_before=T0,
                                 expires=T0 + DAY, actor="gw")
    with pytest.raises(RegistryError, match="no later than its device key"):
        registry.add_session_key("dev-1", b"\x02" * 8, anchor=signing.kid, not_before=T0,
                                 expires=T0 + 2 * YEAR, actor="gw")
    with pytest.raises(ConflictError, match="already registered"):
        registry.add_session_key("dev-1", b"\x01" * 8, anchor=signing.kid, not_before=T0,
                                 expires=T0 + DAY, actor="gw")
    with pytest.raises(RegistryError):
        kid_hex(b"short")


def test_a_failed_transaction_leaves_nothing_behind(registry: Registry, pki: Pki) -> None:
    pki.enroll(registry, "dev-1")
    before = registry.key_journal()
    with pytest.raises(RuntimeError), registry.transaction():
        kid = registry.keys("device", "dev-1")[0].kid
        registry.record_key_step(kid, "retired", at=T0 + 1, actor="tech")
        raise RuntimeError("power cut")
    assert registry.key_journal() == before


def test_gateway_renewal_records_a_new_certified_key(registry: Registry, pki: Pki) -> None:
    renewed = pki.gateway_cert(public_key=crypto.ed25519_public_key(seed()),
                               agreement_key=crypto.x25519_public_key(seed()))
    record = registry.add_gateway_certificate("gw-1", renewed, actor="tech", now=T0 + DAY)
    signing = registry.keys("gateway", "gw-1", "signing")
    assert [k.kid for k in signing][-1] == record.kid and len(signing) == 2
    assert registry.certificate(record.issued_by).subject == "Test Org"
    with pytest.raises(ConflictError, match="freshly generated key"):
        registry.add_gateway_certificate("gw-1", renewed, actor="tech", now=T0 + DAY)
