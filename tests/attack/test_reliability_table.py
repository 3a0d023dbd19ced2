"""bench/reliability_table.py on small inputs: each source read, totals right, the doc's
marked block (and only it) rewritten, missing sources shown as "not run"."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from simulator.report import FaultRecord, RunRecord, summarise

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_table",
                                                  ROOT / "bench" / "reliability_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability_table"] = module
    spec.loader.exec_module(module)
    return module


table = _load()

FUZZ_OUTPUT = """\
target                                          inputs  seconds  inputs/s findings corpus
-----------------------------------------------------------------------------------------
cbor.loads                                     1000000     17.5     57146        0     48
senml.decode_pack                               500000     22.9     43592        1     26
    1 x protocol/senml.py:120 IndexError
total: 1500000 inputs, 1 findings in 2 targets
"""


def _report(directory: Path, lost: int) -> Path:
    record = RunRecord(
        kind="fleet", name="small", seed=7, duration_s=30.0,
        parameters={"gateways": 2, "devices_per_gateway": 3},
        generated={"d1": 100, "d2": 50}, received={"d1": 100, "d2": 50 - lost},
        duplicated={"d1": 2, "d2": 0}, duplicated_as_new={"d1": 0, "d2": 0},
        reading_latency_ms=[5.0, 7.0, 9.0], alarm_latency_ms=[],
        alarms=[], faults=[FaultRecord("broker-restart", 10.0, 2.0, "broker")], timeline=[])
    directory.mkdir(parents=True)
    path = directory / "report.json"
    path.write_text(json.dumps(summarise(record)))
    return path


def _attacks(directory: Path) -> None:
    (directory / "attacks.json").write_text(json.dumps({"attacks": [
        {"name": "test_forged_mac", "category": "seal", "boundary": "device-gateway",
         "inputs_tried": 5, "refused_count": 5, "outcome": "passed", "note": "flip | bit"},
        {"name": "test_big", "category": "size", "boundary": "gateway-broker",
         "inputs_tried": 1, "refused_count": 0, "outcome": "xfailed", "note": ""}]}))


def test_fuzz_rows_are_parsed_and_summed_per_target() -> None:
    rows = table.parse_fuzz_table(FUZZ_OUTPUT + FUZZ_OUTPUT.splitlines()[2] + "\n")
    assert [r.target for r in rows] == ["cbor.loads", "senml.decode_pack", "cbor.loads"]
    totals = table.fuzz_totals(rows)
    assert totals["cbor.loads"].inputs == 2_000_000
    assert totals["senml.decode_pack"].findings == 1


def test_rendered_tables_carry_every_source(tmp_path: Path) -> None:
    _report(tmp_path / "fleet-a", lost=0)
    _report(tmp_path / "fleet-b", lost=3)
    (tmp_path / "fuzz-long.txt").write_text(FUZZ_OUTPUT)
    _attacks(tmp_path)
    text = table.render(tmp_path)
    load_rows = [line for line in text.splitlines() if line.startswith("| fleet small")]
    assert len(load_rows) == 2
    assert any("| 150 | 0 | 0 |" in r and r.endswith("| pass |") for r in load_rows)
    assert any("| 150 | 3 | 0 |" in r and r.endswith("| fail |") for r in load_rows)
    assert "1 (broker-restart)" in load_rows[0]
    assert "| **all targets** | **1,500,000** |  | **1** |" in text
    assert "2 attacks, 6 hostile inputs, 5 seen refused; not passing (findings or " \
           "failures): test_big." in text
    assert "flip \\| bit" in text  # a pipe in a note cannot break the table


def test_missing_sources_are_reported_as_not_run(tmp_path: Path) -> None:
    text = table.render(tmp_path)
    assert text.count("Not run:") == 3


def test_only_the_marked_block_is_rewritten(tmp_path: Path) -> None:
    _attacks(tmp_path)
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Title\n\nbefore\n{table.START}\nold table\n{table.END}\nafter\n")
    assert table.main(["--results", str(tmp_path), "--doc", str(doc), "--check"]) == 1
    assert table.main(["--results", str(tmp_path), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n" + table.START)
    assert text.endswith(table.END + "\nafter\n")
    assert "old table" not in text and "test_forged_mac" not in text  # prefix dropped
    assert "| seal | device-gateway | forged_mac | 5 | 5 | passed |" in text
    assert table.main(["--results", str(tmp_path), "--doc", str(doc), "--check"]) == 0


def test_a_doc_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="must contain"):
        table.rewrite("# no markers\n", "table")
