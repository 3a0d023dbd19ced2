"""The report.html page: one self-contained document rendered from the summary.

Rendered from the summary (not the raw record) so the page and report.json can never
disagree. No scripts, no external assets; every string is escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from simulator.report.svg import histogram_chart, line_chart

GRADE_COLOURS = {"red": ("#c62828", "#fff"), "orange": ("#ef6c00", "#fff"),
                 "yellow": ("#fdd835", "#000"), "blue": ("#1565c0", "#fff")}

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:980px}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:12px 16px;font-size:20px;font-weight:bold;border-radius:4px}
.pass{background:#2e7d32;color:#fff}.fail{background:#b71c1c;color:#fff}
.banner ul{font-size:14px;font-weight:normal;margin:6px 0 0}
.bad{background:#ffebee}
"""


def render_html(summary: dict[str, Any]) -> str:
    """The whole page for one summary (as returned by summarise)."""
    title = f"VitalBridge {summary['kind']} run: {summary['name']}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        _banner(summary),
        _run_table(summary),
        _readings(summary["readings"]),
        _latency(summary["latency_ms"]),
        _timeline(summary),
        _alarms(summary),
        _faults(summary["faults"]),
        _notes(summary["notes"]),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def _banner(summary: dict[str, Any]) -> str:
    verdict = summary["verdict"]
    reasons = "".join(f"<li>{_e(r)}</li>" for r in summary["reasons"])
    return (f'<div class="banner {"pass" if verdict == "pass" else "fail"}" id="verdict">'
            f'{_e(verdict.upper())}' + (f"<ul>{reasons}</ul>" if reasons else "") + "</div>")


def _run_table(summary: dict[str, Any]) -> str:
    rows = [("kind", summary["kind"]), ("name", summary["name"]), ("seed", summary["seed"]),
            ("duration (s)", summary["duration_s"])]
    rows += [(f"parameter {key}", json.dumps(value, sort_keys=True))
             for key, value in sorted(summary["parameters"].items())]
    return "<h2>Run</h2>" + _table(["", "value"], rows)


def _readings(readings: dict[str, Any]) -> str:
    columns = ["generated", "received", "lost", "unexpected", "duplicated", "duplicated_as_new"]
    totals = _table(columns, [[readings[c] for c in columns]], bad_columns={2, 3, 5})
    per_device = _table(["device"] + columns,
                        [[device] + [counts[c] for c in columns]
                         for device, counts in readings["per_device"].items()],
                        bad_columns={3, 4, 6})
    return ("<h2>Readings</h2><p>Counts of distinct readings (sequence numbers). "
            "<em>duplicated</em> repeats were seen and suppressed by the centre; "
            "<em>duplicated_as_new</em> were stored twice and must be 0.</p>"
            + totals + "<h3>Per device</h3>" + per_device)


def _latency(latency: dict[str, Any]) -> str:
    columns = ["count", "min", "p50", "p99", "max"]
    table = _table(["latency (ms)"] + columns,
                   [[what] + [latency[what][c] for c in columns] for what in ("reading", "alarm")])
    return ("<h2>Latency</h2><p>Percentiles by the nearest-rank method (always an observed "
            "value).</p>" + table
            + histogram_chart(latency["reading"]["histogram"], "Reading latency",
                              "generated to stored by the centre (ms)")
            + histogram_chart(latency["alarm"]["histogram"], "Alarm latency",
                              "condition met to alarm at the centre (ms)"))


def _timeline(summary: dict[str, Any]) -> str:
    timeline, faults, end = summary["timeline"], summary["faults"], summary["duration_s"]
    return ("<h2>Over time</h2><p>Shaded bands are injected faults (hover for details).</p>"
            + line_chart([(s["t"], s["backlog"]) for s in timeline], faults,
                         "Backlog (generated, not yet stored)", "readings", end)
            + line_chart([(s["t"], s["delivered_per_s"]) for s in timeline], faults,
                         "Throughput (stored by the centre)", "readings/s", end))


def _alarms(summary: dict[str, Any]) -> str:
    counts = summary["alarms_summary"]
    head = _table(list(counts), [list(counts.values())])
    columns = ["grade", "condition", "patient", "device", "expected_at", "raised_at",
               "delay_s", "closed_at", "status"]
    rows = []
    for alarm in summary["alarms"]:
        background, ink = GRADE_COLOURS.get(alarm["grade"], ("#eee", "#000"))
        cells = [f'<td style="background:{background};color:{ink}">{_e(alarm["grade"])}</td>']
        cells += [_cell(alarm[c]) for c in columns[1:-1]]
        bad = alarm["status"] in ("missed", "late", "early", "unexpected")
        cells.append(_cell(alarm["status"], "bad" if bad else ""))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = ("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
            + "".join(rows) + "</table>") if rows else "<p>No alarms expected or raised.</p>"
    return "<h2>Alarms: expected vs raised</h2><p>Times in seconds from the run start.</p>" \
        + head + body


def _faults(faults: list[dict[str, Any]]) -> str:
    if not faults:
        return "<h2>Faults</h2><p>No faults injected.</p>"
    columns = ["name", "at", "duration_s", "target", "detail"]
    return "<h2>Faults</h2>" + _table(columns, [[f[c] for c in columns] for f in faults])


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def _table(columns: list[str], rows: list, bad_columns: frozenset | set = frozenset()) -> str:
    """A table; a non-zero number in a bad column is highlighted."""
    out = ["<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"]
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            bad = index in bad_columns and isinstance(value, int) and value > 0
            cells.append(_cell(value, "bad" if bad else ""))
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _cell(value: Any, css: str = "") -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    classes = " ".join(c for c in ("n" if numeric else "", css) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{_e('—' if value is None else value)}</td>"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)
