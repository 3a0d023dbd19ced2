"""Run reports for simulated fleets and clinical scenarios: report.json + report.html.

A producer fills a RunRecord; summarise() turns it into the report.json document,
write_report() writes both files, exit_status() gives the CLI's exit code.
Format and methods: docs/simulator-reports.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulator.report.page import render_html
from simulator.report.record import (
    FAULT_NAMES,
    GRADES,
    AlarmOutcome,
    FaultRecord,
    ReportError,
    RunRecord,
    Sample,
)
from simulator.report.stats import nearest_rank
from simulator.report.summary import exit_status, summarise

__all__ = [
    "FAULT_NAMES", "GRADES", "AlarmOutcome", "FaultRecord", "ReportError", "RunRecord", "Sample",
    "exit_status", "nearest_rank", "render_html", "render_json", "summarise", "write_report",
]


def render_json(summary: dict[str, Any]) -> str:
    """The report.json text: sorted keys, no NaN/inf, stable across runs with the same record."""
    return json.dumps(summary, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_report(record: RunRecord, directory: Path) -> tuple[Path, Path]:
    """Write report.json and report.html into directory (created if needed); returns both paths."""
    summary = summarise(record)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    _write_atomically(json_path, render_json(summary))
    _write_atomically(html_path, render_html(summary))
    return json_path, html_path


def _write_atomically(path: Path, text: str) -> None:
    # A half-written report read by CI would be worse than none.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
