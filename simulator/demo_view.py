"""Live terminal view of the demo (rich): readings, alarms, delivery state."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from simulator.demo import Tally

GRADE_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange",
               "yellow": "black on yellow", "blue": "white on blue"}


def render(tally: Tally, elapsed: float, duration: float) -> Group:
    with tally.lock:
        vitals = Table(title="patient (simulated desaturation)", expand=True)
        vitals.add_column("SpO2 %", justify="right")
        vitals.add_column("heart rate /min", justify="right")
        vitals.add_row(f"{tally.last.get('spo2', float('nan')):g}",
                       f"{tally.last.get('hr', float('nan')):g}")
        delivery = Table(title="delivery (readings)", expand=True)
        for col in ("generated", "at gateway", "sent (PUBACK)", "received (receipt)",
                    "duplicates", "checkpoints ok/bad"):
            delivery.add_column(col, justify="right")
        delivery.add_row(str(tally.generated), str(tally.at_gateway), str(tally.sent),
                         str(tally.received), str(tally.duplicates),
                         f"{tally.checkpoints_ok}/{tally.checkpoints_bad}")
        alarms = Table(title="alarms", expand=True)
        alarms.add_column("time")
        alarms.add_column("grade")
        alarms.add_column("condition")
        for when, grade, text in tally.alarms[-6:]:
            alarms.add_row(datetime.fromtimestamp(when).strftime("%H:%M:%S"),
                           f"[{GRADE_STYLE.get(grade, '')}] {grade} [/]", text)
        notes = "\n".join(f"{n}× {what}" for what, n in tally.notes.most_common(4))
    header = Panel(f"VitalBridge demo — {elapsed:4.0f} / {duration:.0f} s", style="bold")
    parts = [header, vitals, delivery, alarms]
    if notes:
        parts.append(Panel(notes, title="notes"))
    return Group(*parts)


def show_live(tally: Tally, device: threading.Thread, duration: float) -> None:
    start = time.monotonic()
    with Live(render(tally, 0, duration), refresh_per_second=4) as live:
        while device.is_alive():
            time.sleep(0.25)
            live.update(render(tally, time.monotonic() - start, duration))
        live.update(render(tally, time.monotonic() - start, duration))
