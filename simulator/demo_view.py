"""The demo's terminal output (rich): the live view and the closing summary."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from simulator.demo import DemoInterrupted, DemoSnapshot

GRADE_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange",
               "yellow": "black on yellow", "blue": "white on blue"}
SHOWN = ("spo2", "pr", "pi", "temp", "sys", "dia", "map", "sq", "bat")
ALARM_ROWS = 6  # the newest alarms shown live (the summary lists every open one)
LOG_LINES = 3


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _devices(snap: DemoSnapshot) -> Table:
    missing = "lost" if snap.final else "pend"
    devices = Table(title="readings per device (values as stored at the centre)",
                    caption="deliv: stored at the centre; proven: by a device checkpoint"
                            + ("" if snap.final else "; pend: on the way"),
                    expand=True, box=box.SIMPLE_HEAD, pad_edge=False)
    devices.add_column("device", no_wrap=True)
    devices.add_column("patient", no_wrap=True)
    devices.add_column("last values", ratio=1, min_width=16)
    # Short headers: at 80 columns the values still get room.
    for column in ("gen", "deliv", missing, "proven"):
        devices.add_column(column, justify="right", no_wrap=True)
    for d in snap.devices:
        values = "  ".join(f"{q}={_value(d.last[q])}" for q in SHOWN if q in d.last)
        lost = f"[red]{d.lost}[/]" if d.lost and snap.final else str(d.lost)
        devices.add_row(f"{d.device}\n[dim]{d.role}[/]", d.patient or "[yellow]unbound[/]",
                        values, str(d.generated), str(d.delivered), lost, str(d.proven))
    return devices


def _alarms(snap: DemoSnapshot) -> Table:
    alarms = Table(title="alarms (raised > acknowledged > resolved > closed)", expand=True,
                   box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("grade", "condition", "device", "state", "acknowledged by"):
        alarms.add_column(column, no_wrap=True)
    shown = snap.alarms[-ALARM_ROWS:]
    if len(snap.alarms) > len(shown):
        alarms.caption = f"{len(snap.alarms) - len(shown)} earlier alarms not shown"
    for a in shown:
        state = a.state if a.state in ("closed", "resolved") or not a.condition_active \
            else f"{a.state}, active"
        alarms.add_row(f"[{GRADE_STYLE.get(a.grade, '')}] {a.grade} [/]", a.key, a.device or "",
                       state, a.acknowledged_by or "")
    if not snap.alarms:
        alarms.add_row("", "none yet", "", "", "")
    return alarms


def render(snap: DemoSnapshot, log_lines: list[str] | None = None) -> Group:
    checkpoints = ", ".join(f"{n} {status}" for status, n in sorted(snap.checkpoints.items()))
    patient = "oxygen given" if snap.treated else "untreated"
    header = Panel(f"VitalBridge demo: {snap.elapsed:4.0f} / {snap.duration:.0f} s   "
                   f"scenario {snap.scenario}   patient p-0001 ({patient})   device "
                   f"checkpoints: {checkpoints or 'none yet'}", style="bold", box=box.SQUARE)
    delivery = "   ".join(f"{name} {n if n >= 0 else '?'}" for name, n in snap.delivery.items())
    parts: list[Any] = [header, _devices(snap), _alarms(snap),
                        Text("delivery (agent journal and uplink): " + delivery)]
    if log_lines:
        parts.append(Text("\n".join(log_lines), style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


class LogTail(logging.Handler):
    """Keeps the last log lines of the agent and the simulators (WARNING and up) for the
    live view: a bare line on stderr would tear the live display."""

    def __init__(self, lines: int = LOG_LINES) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=lines)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extras = " ".join(f"{name}={getattr(record, name)}"
                              for name in ("grade", "condition", "alarm_id")
                              if hasattr(record, name))
            self.lines.append(f"{record.levelname.lower()} {record.name}: "
                              f"{record.getMessage()} {extras}".rstrip())
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


class LiveView:
    """A rich Live display updated with each snapshot (a context manager); while it is
    shown, log records go to its tail instead of stderr."""

    def __init__(self) -> None:
        self._live = Live(Panel("starting the simulated home (broker, centre, firmware, "
                                "enrollment, agent, BLE devices) ..."), refresh_per_second=4)
        self.log = LogTail()

    def __enter__(self) -> LiveView:
        logging.getLogger().addHandler(self.log)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._live.__exit__(*exc)  # type: ignore[arg-type]
        finally:
            logging.getLogger().removeHandler(self.log)

    def update(self, snap: DemoSnapshot) -> None:
        self._live.update(render(snap, list(self.log.lines)))


def summary_lines(snap: DemoSnapshot) -> list[str]:
    """The closing summary, plain text (also what the tests read)."""
    alarms = snap.alarm_counts()
    verified = snap.checkpoints.get("verified", 0)
    missing = "lost" if snap.final else "not confirmed yet"
    lines = [
        f"scenario: {snap.scenario}, patient p-0001 "
        f"({'oxygen given' if snap.treated else 'untreated'})",
        f"summary: {snap.generated} readings generated, {snap.delivered} delivered "
        f"(stored and receipted by the centre), {snap.lost} {missing}",
        f"alarms: {alarms['raised']} raised, {alarms['acknowledged']} acknowledged, "
        f"{alarms['closed']} closed",
        f"device checkpoints: {verified} verified, {snap.checkpoints_failed} failed",
    ]
    for d in snap.devices:
        role = f"{d.role}, {d.patient or 'unbound'}"
        lines.append(f"  {d.device:18} {role:32} generated {d.generated:4}  delivered "
                     f"{d.delivered:4}  {'lost' if snap.final else 'pending'} {d.lost}  "
                     f"device-proven {d.proven}")
    if snap.unexplained:
        lines.append(f"  {snap.unexplained} readings stored that were never generated")
    for a in snap.open_alarms():
        lines.append(f"  open at end: {a.grade} {a.key} ({a.device or 'no device'}): "
                     f"{a.open_state()}")
    lines += [f"  note: {note}" for note in snap.notes]
    if snap.final:
        lines.append("verdict: " + ("pass" if snap.ok else "FAIL"))
    else:
        lines.append("verdict: none (interrupted before the drain)")
    return lines


def interrupted_lines(stop: DemoInterrupted) -> list[str]:
    """What Ctrl-C leaves on the terminal: how far it got and the partial summary."""
    snap = stop.partial
    if snap is None:
        return [f"interrupted after {stop.elapsed_s:.0f} s while starting the simulated home: "
                "nothing was played; everything it started is stopped"]
    return [f"interrupted at {snap.elapsed:.0f} of {snap.duration:.0f} s; everything it "
            "started is stopped. Partial summary (no drain: readings on their way count as "
            "not confirmed, not lost):", *summary_lines(snap)]


def print_lines(lines: list[str], console: Console | None = None) -> None:
    out = console or Console()
    for line in lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def print_summary(snap: DemoSnapshot, console: Console | None = None) -> None:
    print_lines(summary_lines(snap), console)
