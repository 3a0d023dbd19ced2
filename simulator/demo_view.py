"""The demo's terminal output (rich): the live view and the closing summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from simulator.demo import DemoSnapshot

GRADE_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange",
               "yellow": "black on yellow", "blue": "white on blue"}
SHOWN = ("spo2", "pr", "pi", "temp", "sys", "dia", "map", "sq", "bat")


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def render(snap: DemoSnapshot) -> Group:
    devices = Table(title="readings per device (values as stored at the centre)", expand=True)
    for column in ("device", "kind", "last values", "generated", "delivered", "lost",
                   "device-proven"):
        devices.add_column(column, justify="left" if column in ("device", "kind", "last values")
                           else "right")
    for d in snap.devices:
        values = "  ".join(f"{q} {_value(d.last[q])}" for q in SHOWN if q in d.last)
        devices.add_row(d.device, d.role, values, str(d.generated), str(d.delivered),
                        f"[red]{d.lost}[/]" if d.lost else "0", str(d.proven))
    alarms = Table(title="alarms (closed loop: raised > acknowledged > resolved > closed)",
                   expand=True)
    for column in ("grade", "condition", "device", "state", "acknowledged by"):
        alarms.add_column(column)
    for a in snap.alarms[-8:]:
        alarms.add_row(f"[{GRADE_STYLE.get(a.grade, '')}] {a.grade} [/]", a.key, a.device or "",
                       a.state, a.acknowledged_by or "")
    delivery = Table(title="delivery (agent journal and uplink)", expand=True)
    for column in snap.delivery:
        delivery.add_column(column, justify="right")
    delivery.add_row(*(str(n) if n >= 0 else "?" for n in snap.delivery.values()))
    checkpoints = ", ".join(f"{n} {status}" for status, n in sorted(snap.checkpoints.items()))
    patient = "oxygen given" if snap.treated else "untreated"
    header = Panel(f"VitalBridge demo: {snap.elapsed:4.0f} / {snap.duration:.0f} s   patient "
                   f"p-0001 ({patient})   device checkpoints: {checkpoints or 'none yet'}",
                   style="bold")
    return Group(header, devices, alarms, delivery)


class LiveView:
    """A rich Live display updated with each snapshot (a context manager)."""

    def __init__(self) -> None:
        self._live = Live(Panel("starting the simulated home (broker, centre, firmware, "
                                "enrollment, agent, BLE devices) ..."), refresh_per_second=4)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, snap: DemoSnapshot) -> None:
        self._live.update(render(snap))


def summary_lines(snap: DemoSnapshot) -> list[str]:
    """The closing summary, plain text (also what the tests read)."""
    alarms = snap.alarm_counts()
    verified = snap.checkpoints.get("verified", 0)
    lines = [
        f"summary: {snap.generated} readings generated, {snap.delivered} delivered "
        f"(stored and receipted by the centre), {snap.lost} lost",
        f"alarms: {alarms['raised']} raised, {alarms['acknowledged']} acknowledged, "
        f"{alarms['closed']} closed",
        f"device checkpoints: {verified} verified, {snap.checkpoints_failed} failed",
    ]
    for d in snap.devices:
        lines.append(f"  {d.device:18} {d.role:28} generated {d.generated:4}  delivered "
                     f"{d.delivered:4}  lost {d.lost}  device-proven {d.proven}")
    if snap.unexplained:
        lines.append(f"  {snap.unexplained} readings stored that were never generated")
    lines += [f"  note: {note}" for note in snap.notes]
    lines.append("verdict: " + ("pass" if snap.ok else "FAIL"))
    return lines


def print_summary(snap: DemoSnapshot, console: Console | None = None) -> None:
    out = console or Console()
    for line in summary_lines(snap):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
