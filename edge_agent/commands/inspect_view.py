"""Human rendering of `vitalbridge inspect` reports (rich tables, colour for verdicts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

VERDICT_STYLE = {"valid": "bold green", "invalid": "bold red", "unverifiable": "yellow"}


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _readings_table(readings: list[dict[str, Any]]) -> Table:
    table = Table(title="SenML records")
    for col in ("seq", "device", "quantity", "value", "unit", "time"):
        table.add_column(col, justify="right" if col in ("seq", "value") else "left")
    for r in readings:
        table.add_row(str(r["seq"]), r["device"], r["quantity"], f"{r['value']:g}", r["unit"],
                      _when(r["time"]))
    return table


def _render_item(console: Console, item: dict[str, Any], depth: int = 0) -> None:
    kind = item["kind"]
    pad = "  " * depth
    if kind == "message":
        console.print(f"{pad}[bold]message[/] type [cyan]{item['type']}[/]")
        if "content" in item:
            _render_item(console, item["content"], depth + 1)
        else:
            console.print(f"{pad}  body: {item['body']}")
        return
    if kind in ("COSE_Mac0", "COSE_Sign1"):
        seal = item["seal"]
        style = VERDICT_STYLE[seal["verdict"]]
        console.print(f"{pad}[bold]{kind}[/] alg {item['alg']} kid {item['kid']} "
                      f"content-type {item['content_type']} payload {item['payload_size']} bytes")
        console.print(f"{pad}  seal: [{style}]{seal['verdict']}[/] — {seal['reason']}")
        if item.get("readings"):
            console.print(_readings_table(item["readings"]))
        if "certificate" in item:
            _render_certificate(console, item["certificate"], pad + "  ")
        if "checkpoint" in item:
            cp = item["checkpoint"]
            console.print(f"{pad}  checkpoint device {cp['device_id']} seqs {cp['first_seq']}.."
                          f"{cp['last_seq']} ({cp['count']}) head {cp['head'][:16]}… "
                          f"at {_when(cp['time'])}")
        return
    if kind == "senml":
        console.print(_readings_table(item["readings"]))
        return
    console.print(f"{pad}[bold]CBOR[/] {item['value']}")


def _render_certificate(console: Console, cert: dict[str, Any], pad: str) -> None:
    console.print(f"{pad}certificate [bold]{cert['subject']}[/] issued by {cert['issuer']} "
                  f"role {cert['role']} model {cert['model']} serial {cert['serial']}")
    console.print(f"{pad}valid {_when(cert['not_before'])} → {_when(cert['expires'])}; "
                  f"state [bold]{cert['state_now']}[/]; "
                  f"renewal due {_when(cert['renewal_due_at'])}")


def render(report: dict[str, Any]) -> None:
    console = Console()
    for layer in report["layers"]:
        console.print(f"[dim]{layer['layer']}: {layer['frames']} frame(s), "
                      f"{layer['dropped']} dropped {layer['errors'] or ''}[/]")
    for item in report["items"]:
        _render_item(console, item)
    if "given_certificate" in report:
        _render_certificate(console, report["given_certificate"], "--cert: ")
    if not report["seals"]:
        console.print("[dim]no seal to check[/]")


def render_gatt(uuid: str, decoded: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]0x{uuid}[/] {decoded.get('characteristic', '')}")
    values = decoded.get("values") or []
    if values:
        table = Table()
        for col in ("quantity", "value", "unit", "special"):
            table.add_column(col)
        for v in values:
            table.add_row(v["n"], f"{v['v']:g}", v["u"], v.get("special") or "")
        console.print(table)
    for key, value in decoded.items():
        if key not in ("values", "characteristic", "uuid"):
            console.print(f"  {key}: {value}")
