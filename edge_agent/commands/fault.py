"""`vitalbridge fault`: the maintenance journal of faults found on inspection.

  vitalbridge fault add (--device DEV | --component NAME) --kind KIND --note TEXT
                        [--severity info|warning|error|critical] [--actor NAME] [--json]
  vitalbridge fault list [--open] [--at ISO] [--json]
  vitalbridge fault close ID --resolution TEXT [--actor NAME] [--json]

Faults live in maintenance.sqlite3 in the data directory (edge_agent.maintenance); each
step is also journaled in the tamper-evident event journal (maintenance.fault /
maintenance.cleared) with the technician's name. `list --open --at` answers "what was still
open at that visit?".
"""

from __future__ import annotations

import argparse
from typing import Any

from edge_agent.cli import CommandError
from edge_agent.commands import common


def register(sub: argparse._SubParsersAction) -> None:
    from edge_agent.maintenance import FAULT_KINDS, SEVERITIES

    actions = common.command_group(sub, "fault", "the maintenance journal of faults found on "
                                   "inspection", __doc__)
    add = common.action(actions, "add", "record a fault", run_add, actor=True)
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="the enrolled device the fault is on")
    where.add_argument("--component", help="a part of the installation: gateway, power-supply, "
                       "router, ...")
    add.add_argument("--kind", required=True, choices=FAULT_KINDS)
    add.add_argument("--severity", default="warning", choices=SEVERITIES)
    add.add_argument("--note", required=True, help="what you found (no patient names)")

    listing = common.action(actions, "list", "faults, oldest first", run_list, at=True)
    listing.add_argument("--open", action="store_true", help="only faults open at --at")

    close = common.action(actions, "close", "close a fault, saying how it was resolved",
                          run_close, actor=True)
    close.add_argument("fault_id", type=int, metavar="ID")
    close.add_argument("--resolution", required=True, help="what was done")


def fault_dict(fault: Any) -> dict[str, Any]:
    return {"id": fault.id, "component": fault.component, "device_id": fault.device_id,
            "kind": fault.kind, "severity": fault.severity, "note": fault.note,
            "opened_at": common.iso(fault.opened_at), "opened_by": fault.opened_by,
            "closed_at": common.iso(fault.closed_at), "closed_by": fault.closed_by,
            "resolution": fault.resolution,
            "state": "open" if fault.closed_at is None else "closed"}


def _maintenance(directory: Any) -> Any:
    from edge_agent.journal.schema import SchemaError
    from edge_agent.maintenance import MaintenanceLog

    try:
        return MaintenanceLog.open_in(directory)
    except SchemaError as exc:
        raise CommandError(f"maintenance journal: {exc}") from None


def run_add(args: argparse.Namespace) -> int:
    directory = common.data_dir(args)
    who = common.actor(args)
    identity = common.load_gateway(directory)
    now = common.now()
    if args.device is not None:
        with common.open_registry(directory) as registry, common.refusals():
            device = registry.device(args.device)
        component, device_id = device.id, device.id
    else:
        component, device_id = args.component, None
    def entry(fault_id: int) -> tuple[str, str, str, dict[str, Any]]:
        return ("maintenance.fault", who, f"fault:{fault_id}",
                {"component": component, "fault": args.kind, "severity": args.severity,
                 "detail": _short(args.note.strip())})

    common.check_entries([entry(0)])
    with _maintenance(directory) as log, common.refusals():
        fault = log.add(component, args.kind, args.note, actor=who, at=now,
                        severity=args.severity, device_id=device_id)
    common.journal(identity, [entry(fault.id)], at=now)
    result = fault_dict(fault)
    lines = [f"[yellow]fault {fault.id}[/] opened on {component}: {fault.kind} "
             f"({fault.severity})"]
    if fault.kind == "tamper-seal" and device_id is not None:
        result["advice"] = (f"a broken tamper seal is a compromise: run `vitalbridge device "
                            f"compromise {device_id} --reason 'tamper seal broken'`")
        lines.append(f"[bold red]{result['advice']}[/]")
    common.output(args, result, *lines)
    return 0


def _short(text: str) -> str:
    """The event journal keeps at most 200 characters; the full note stays in the table."""
    return text if len(text) <= 200 else text[:197] + "..."


def run_close(args: argparse.Namespace) -> int:
    directory = common.data_dir(args)
    who = common.actor(args)
    identity = common.load_gateway(directory)
    now = common.now()
    with _maintenance(directory) as log, common.refusals():
        fault = log.get(args.fault_id)
        entry = ("maintenance.cleared", who, f"fault:{fault.id}",
                 {"component": fault.component, "fault": fault.kind,
                  "detail": _short(args.resolution.strip())})
        common.check_entries([entry])
        fault = log.close_fault(args.fault_id, args.resolution, actor=who, at=now)
    common.journal(identity, [entry], at=now)
    common.output(args, fault_dict(fault), f"[green]fault {fault.id} closed[/]: "
                  f"{fault.resolution}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    directory = common.data_dir(args)
    at = common.at_or_now(args)
    common.load_gateway(directory)
    with _maintenance(directory) as log:
        faults = log.faults(until=at, open_at=at if args.open else None)
    rows = []
    for fault in faults:
        row = fault_dict(fault)
        row["state"] = "open" if fault.open_at(at) else "closed"
        rows.append(row)
    if args.json:
        common.print_json({"at": common.iso(at), "faults": rows})
        return 0
    table = common.table(f"faults{' open' if args.open else ''} at {common.iso(at)}",
                         ("id", "component", "kind", "severity", "state", "opened",
                          "note / resolution"))
    for row in rows:
        text = row["note"] if row["state"] == "open" else f"{row['note']} -> {row['resolution']}"
        table.add_row(str(row["id"]), row["component"], row["kind"], row["severity"],
                      common.styled(row["state"]), f"{row['opened_at'][:10]} {row['opened_by']}",
                      text)
    common.console().print(table)
    return 0
