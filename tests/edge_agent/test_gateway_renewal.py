"""Gateway renewal (`vitalbridge gateway renew`) and re-sealing before the old keys are
destroyed, with the clock under the test's control (common.now and explicit `now`)."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.ca import keyfiles
from edge_agent.commands import common
from edge_agent.eventlog import EventLogFile
from edge_agent.lifecycle import states
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.registry import Registry
from edge_agent.reseal.keeper import Resealer, verify_reseals, wipe_retired_gateway_key
from edge_agent.reseal.store import ResealStore
from protocol import cose, reseal
from tests.edge_agent.test_cli_technician import command_runner

DAY = 86400


@pytest.fixture
def vb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """common.now() reads clock[0]; tests move it forward."""
    instant = [int(time.time())]
    monkeypatch.setattr(common, "now", lambda: instant[0])
    return instant


@pytest.fixture
def site(tmp_path: Path, vb: Any, monkeypatch: pytest.MonkeyPatch, clock: list[int]) -> Path:
    assert vb("ca", "init", "--dir", tmp_path / "ca", "--org", "Test Org").status == 0
    data = tmp_path / "data"
    result = vb("gateway", "provision", "--data-dir", data, "--id", "gw-1", "--ca-dir",
                tmp_path / "ca", "--broker", "127.0.0.1:8883", "--lifetime-days", "120",
                "--json")
    assert result.status == 0, result.err
    monkeypatch.setenv("VITALBRIDGE_DATA_DIR", str(data))
    return data


def gateway_keys(data: Path) -> dict[str, Any]:
    with Registry.open_in(data) as registry:
        return {k.kid: k for k in registry.keys("gateway", "gw-1")}


def journal_kinds(data: Path) -> list[tuple[str, str, str]]:
    log = EventLogFile.open_readonly(data / "events.sqlite3")
    try:
        assert log.verify().ok
        return [(e.kind, e.actor, e.subject) for e in log.entries()]
    finally:
        log.close()


def assert_private(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent


def test_renewal_before_due_is_refused_then_forced_with_every_step_journaled(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    before = gateway_keys(site)
    refused = vb("gateway", "renew", "--ca-dir", tmp_path / "ca")
    assert refused.status == 2 and "renewal refused" in refused.err and "--force" in refused.err
    assert gateway_keys(site) == before  # nothing recorded
    clock[0] += 81 * DAY  # two thirds of 120 days: renewal-due (expiring only at 90)
    result = vb("gateway", "renew", "--ca-dir", tmp_path / "ca", "--json")
    assert result.status == 0, result.err
    out = result.json
    assert out["restart_required"] and sorted(out["retired_kids"]) == sorted(before)
    after = gateway_keys(site)
    new = {kid: k for kid, k in after.items() if kid not in before}
    assert sorted(k.purpose for k in new.values()) == ["agreement", "signing", "tls-client"]
    for kid in before:
        steps = {s.step: s for s in after[kid].steps}
        assert steps["retired"].actor == "technician:t-0042", kid
        assert steps["retired"].at == clock[0]
    for key in new.values():
        steps = {s.step: s.actor for s in key.steps}
        assert steps == {"created": "gateway:gw-1", "activated": "technician:t-0042"}
    keys_dir = site / "keys"
    for name in (common.SIGNING_KEY, common.AGREEMENT_KEY, common.BROKER_KEY):
        assert_private(keys_dir / name)
    for kid in before:
        assert_private(keys_dir / "retired" / f"{kid}.key")
    identity = common.load_gateway(site)
    assert cose.key_id(identity.public_key).hex() == out["signing_kid"]
    kinds = journal_kinds(site)
    for kid in before:
        assert ("key.renewal", "technician:t-0042", f"key:{kid}") in kinds
        assert ("key.retired", "technician:t-0042", f"key:{kid}") in kinds
    for kid in new:
        assert ("key.activated", "technician:t-0042", f"key:{kid}") in kinds
    shown = vb("gateway", "show", "--json").json["certificates"]
    assert {c["kid"] for c in shown} == {out["signing_kid"], out["new_keys"]["tls-client"]}


def test_compromised_gateway_is_not_renewed_even_with_force(vb: Any, site: Path,
                                                            tmp_path: Path,
                                                            clock: list[int]) -> None:
    with Registry.open_in(site) as registry:
        kid = registry.current_key("gateway", "gw-1", "tls-client", clock[0]).kid
        registry.record_key_step(kid, states.COMPROMISED, at=clock[0], actor="technician:x",
                                 reason="disk image leaked")
    before = sorted((site / "keys").iterdir())
    refused = vb("gateway", "renew", "--ca-dir", tmp_path / "ca", "--force")
    assert refused.status == 2 and "compromised" in refused.err
    assert sorted((site / "keys").iterdir()) == before  # no pending keys generated


def test_production_renewal_through_request_and_response(vb: Any, site: Path, tmp_path: Path,
                                                         clock: list[int]) -> None:
    started = vb("gateway", "renew", "--force", "--json")
    assert started.status == 0 and started.json["state"] == "awaiting-certificate"
    for name in (common.SIGNING_KEY, common.AGREEMENT_KEY, common.BROKER_KEY):
        assert_private(site / "keys" / "pending" / name)
    response = tmp_path / "renewal.response"
    assert vb("ca", "sign-request", started.json["request"], "--dir", tmp_path / "ca",
              "--out", response).status == 0
    done = vb("gateway", "renew", "--response", response, "--json")
    assert done.status == 0, done.err
    again = vb("gateway", "renew", "--response", response)  # replay of the same response
    assert again.status == 2 and "no renewal in progress" in again.err


def _renewed(vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> dict[str, Any]:
    result = vb("gateway", "renew", "--ca-dir", tmp_path / "ca", "--force", "--json")
    assert result.status == 0, result.err
    return result.json


def _resealer(site: Path, registry: Registry, failures: list[Any]) -> Resealer:
    identity = common.load_gateway(site)

    def record(kind: str, actor: str, subject: str, details: dict[str, Any]) -> None:
        common.journal(identity, [(kind, actor, subject, details)])

    return Resealer(site, "gw-1", identity.seed, registry, record=record,
                    on_failure=lambda task, outcome: failures.append((task, outcome)))


def test_old_gateway_key_destroyed_within_ten_days_after_its_checkpoints_are_resealed(
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:
    renewed_at = clock[0]
    out = _renewed(vb, site, tmp_path, clock)
    old_signing = [k for k in out["retired_kids"]
                   if gateway_keys(site)[k].purpose == "signing"][0]
    log = EventLogFile.open_readonly(site / "events.sqlite3")
    old_checkpoints = [cp for cp in log.checkpoints()
                       if cose.sign1_parse(cp.cose).kid.hex() == old_signing]
    log.close()
    assert old_checkpoints  # provisioning closed its journal: signed by the old key
    failures: list[Any] = []
    with Registry.open_in(site) as registry:
        engine = LifecycleEngine(registry)
        resealer = _resealer(site, registry, failures)
        destroyer = resealer.guard(lambda task: wipe_retired_gateway_key(site / "keys", task),
                                   lambda: clock[0])
        early = engine.tick(renewed_at + 3600, destroyer)  # inside the grace: nothing yet
        assert not early.destroyed
        clock[0] = renewed_at + states.DAY + 1
        result = engine.tick(clock[0], destroyer)
        assert sorted(result.destroyed) == sorted(out["retired_kids"]) and not failures
        for kid in out["retired_kids"]:
            destroyed = registry.key(kid).facts.destroyed
            assert destroyed is not None and destroyed <= renewed_at + states.DESTRUCTION_WINDOW
            assert not (site / "keys" / "retired" / f"{kid}.key").exists()
        report = verify_reseals(site, "gw-1", registry)
    assert report["verdict"] == "pass", report
    with ResealStore.open_in(site) as store:
        statements = store.statements(bytes.fromhex(old_signing))
    assert {s.ref for s in statements} == {f"eventlog:checkpoint:{cp.last}"
                                           for cp in old_checkpoints}
    assert {s.verdict for s in statements} == {reseal.VALID}
    assert ("key.resealed", "lifecycle", f"key:{old_signing}") in journal_kinds(site)
    # the whole event log (old and new signers) still verifies; nothing was removed
    log = EventLogFile.open_readonly(site / "events.sqlite3")
    assert log.verify().ok and len(log.checkpoints()) >= len(old_checkpoints)
    log.close()


def test_failed_reseal_keeps_the_key_raises_an_alarm_and_becomes_overdue(
        vb: Any, site: Path, tmp_path: Path, clock: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    renewed_at = clock[0]
    out = _renewed(vb, site, tmp_path, clock)

    def broken(self: ResealStore, statements: Any) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(ResealStore, "add", broken)
    failures: list[Any] = []
    with Registry.open_in(site) as registry:
        engine = LifecycleEngine(registry)
        resealer = _resealer(site, registry, failures)
        destroyer = resealer.guard(lambda task: wipe_retired_gateway_key(site / "keys", task),
                                   lambda: clock[0])
        clock[0] = renewed_at + 2 * DAY
        result = engine.tick(clock[0], destroyer)
        signing = [kid for kid in out["retired_kids"]
                   if registry.key(kid).purpose == "signing"][0]
        assert signing not in result.destroyed
        assert [t.kid for t, _ in failures] == [signing]
        assert "disk full" in failures[0][1].failures[-1][1]
        assert (site / "keys" / "retired" / f"{signing}.key").exists()
        assert not result.overdue
        clock[0] = renewed_at + states.DESTRUCTION_WINDOW + 1
        late = engine.tick(clock[0], destroyer)
        assert [t.kid for t in late.overdue] == [signing]
        assert registry.key(signing).facts.destroyed is None
        monkeypatch.undo()  # the disk is fixed: the retry re-seals and destroys
        monkeypatch.setattr(common, "now", lambda: clock[0])
        retry = engine.tick(clock[0], destroyer)
        assert signing in retry.destroyed
        assert verify_reseals(site, "gw-1", registry)["verdict"] == "pass"


def test_retired_key_files_are_refused_when_loose(site: Path, vb: Any, tmp_path: Path,
                                                  clock: list[int]) -> None:
    out = _renewed(vb, site, tmp_path, clock)
    path = site / "keys" / "retired" / f"{out['retired_kids'][0]}.key"
    path.chmod(0o644)
    with pytest.raises(keyfiles.KeyFileError):
        keyfiles.read_private(path)
