"""Every input the fuzzers ever caught escaping a decoder's contract, replayed as a test.

tests/fuzz/findings/<target>-<sha256[:16]>.bin is written by long_run.py (and may be added
by hand from a hypothesis failure). Each file must now be refused within the target's
contract. A finding whose bug is reported but not fixed yet is listed in
targets.OPEN_FINDINGS and runs as a strict xfail: the fix makes it pass, and the entry must
then go. The other tests here check the directory and that the long-run engine really saves
and names what it catches, so an empty findings/ is never an untested state.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from pathlib import Path

import long_run
import pytest
import targets
from targets import OPEN_FINDINGS, TARGETS

FINDINGS = Path(__file__).resolve().with_name("findings")
NAME = re.compile(r"^(?P<target>.+)-(?P<sha>[0-9a-f]{16})\.bin$")
NOT_FINDINGS = {"README.md"}


def finding_files() -> list[Path]:
    return sorted(p for p in FINDINGS.iterdir() if p.name not in NOT_FINDINGS)


def target_of(path: Path) -> str:
    match = NAME.match(path.name)
    assert match, f"{path.name} is not <target>-<sha256[:16]>.bin"
    return match["target"]


def _case(path: Path) -> object:
    open_finding = OPEN_FINDINGS.get(path.name)
    marks = [pytest.mark.xfail(strict=True, reason=open_finding.reason)] if open_finding else []
    return pytest.param(path, marks=marks, id=path.name)


@pytest.mark.parametrize("path", [_case(p) for p in finding_files()])
def test_finding_is_now_refused_within_the_contract(path: Path) -> None:
    target = TARGETS[target_of(path)]
    exc = targets.unexpected(target, path.read_bytes())
    assert exc is None, f"{type(exc).__name__} at {targets.crash_site(exc)}: {exc}"


def test_findings_directory_names_real_targets_and_matches_contents() -> None:
    assert FINDINGS.is_dir()
    for path in finding_files():
        match = NAME.match(path.name)
        assert match, f"{path.name}: not <target>-<sha256[:16]>.bin"
        assert match["target"] in TARGETS, f"{path.name}: no target {match['target']!r}"
        assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] == match["sha"], path.name
    present = {p.name for p in finding_files()}
    for name, finding in OPEN_FINDINGS.items():
        assert name in present, f"OPEN_FINDINGS names a missing file {name}"
        assert target_of(FINDINGS / name) == finding.target


def _engine(target: targets.Target, findings: Path, timeout_s: float = 5.0) -> long_run.OwnEngine:
    return long_run.OwnEngine(target, random.Random(7), findings, None, False, timeout_s)


def test_long_run_saves_each_crash_site_once_as_a_replayable_finding(tmp_path: Path) -> None:
    def decode(data: bytes) -> int:
        if len(data) > 4:
            return {}[data[4]]  # the planted bug: KeyError past 4 bytes
        raise ValueError("short")

    planted = targets.Target("planted.decode", decode, (ValueError,), lambda: [b"\x01\x02"],
                             cbor_at=None)
    stats = _engine(planted, tmp_path).run(inputs=2000, seconds=30)
    assert stats.inputs >= 2000
    assert stats.findings > 0
    assert list(stats.sites) == ["KeyError at harness"]
    (saved,) = tmp_path.iterdir()  # one file per distinct crash site
    assert target_of(saved) == "planted.decode"
    assert isinstance(targets.unexpected(planted, saved.read_bytes()), KeyError)


def test_long_run_records_an_input_that_hangs(tmp_path: Path) -> None:
    def slow(data: bytes) -> None:
        if data.startswith(b"\x00"):
            time.sleep(1.0)

    hang = targets.Target("planted.slow", slow, (), lambda: [b"\x00", b"\x01"], cbor_at=None)
    stats = _engine(hang, tmp_path, timeout_s=0.02).run(inputs=64, seconds=30)
    assert stats.timeouts > 0
    assert any(path.read_bytes().startswith(b"\x00") for path in tmp_path.iterdir())
