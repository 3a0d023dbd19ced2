"""Attack suite fixtures and the counted results.

Every attack test asks for `attack` (an `AttackLog`) and calls `attack.tried(n)` for each batch
of hostile inputs it sent and `attack.refused(n)` for each it saw refused. At the end of the
session the results go to $VB_RESULTS_DIR/attacks.json (default build/reliability/), one
entry per test: name, category, inputs tried, refused, outcome (passed / failed / xfailed /
xpassed / skipped) and a short note. bench/reliability_table.py turns that into the table of
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
from rig import AgentRig, TlsSite, mosquitto_available

RESULTS_ENV = "VB_RESULTS_DIR"
DEFAULT_RESULTS = Path(__file__).resolve().parents[2] / "build" / "reliability"
RESULTS_FILE = "attacks.json"


@dataclass
class AttackLog:
    name: str
    category: str = "uncategorised"
    inputs_tried: int = 0
    refused_count: int = 0
    outcome: str = "not-run"
    note: str = ""
    boundary: str = ""

    def describe(self, category: str, boundary: str, note: str = "") -> None:
        self.category, self.boundary, self.note = category, boundary, note

    def tried(self, count: int = 1) -> None:
        self.inputs_tried += count

    def refused(self, count: int = 1) -> None:
        self.refused_count += count


@dataclass
class _Results:
    entries: dict[str, AttackLog] = field(default_factory=dict)


_RESULTS = _Results()


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


@pytest.fixture
def attack(request: pytest.FixtureRequest) -> AttackLog:
    log = AttackLog(request.node.name)
    _RESULTS.entries[request.node.nodeid] = log
    return log


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report = yield
    entry = _RESULTS.entries.get(item.nodeid)
    if entry is not None and (report.when == "call" or report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            entry.outcome = "xfailed" if report.skipped else "xpassed"
        else:
            entry.outcome = report.outcome
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _RESULTS.entries:
        return
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    document = {"generated_at": int(time.time()),
                "attacks": [asdict(entry) for entry in _RESULTS.entries.values()]}
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


needs_mosquitto = pytest.mark.skipif(not mosquitto_available(),
                                     reason="mosquitto not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> TlsSite:
    return TlsSite.create(tmp_path_factory.mktemp("tls-site"))


@pytest.fixture
def rig(tmp_path: Path, site: TlsSite) -> Iterator[AgentRig]:
    if not mosquitto_available():
        pytest.skip("mosquitto not installed (scripts/setup.sh)")
    running = AgentRig.start(tmp_path, site)
    try:
        yield running
    finally:
        running.stop()
