"""`vitalbridge reading add`: values a person measured, entered for a patient.

  vitalbridge reading add --patient P [--spo2 94] [--hr 88] [--pr 80] [--temp 37.2]
                          [--sys 120 --dia 80] [--rr 16] [--weight 71.5]
                          [--glucose 5.4 --glucose-unit mmol/L] [--at ISO-8601]
                          --actor ROLE:NAME [--config gateway.toml | --data-dir DIR]
                          [--wait S] [--json]

The values are checked here (possible range, unit, systolic above diastolic, a known
patient, a time neither in the future nor before the patient was monitored here), then
handed to the running agent through its inbox (docs/manual-entry.md). The agent attests them
with the gateway key, marks them manual with who entered them, journals, delivers and
evaluates them like any reading of the patient. Exit 0: accepted, or queued for an agent
that is not running (it processes the entry when it starts); 1: the agent refused it;
2: a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_agent.cli import CommandError
from edge_agent.commands import common

DEFAULT_WAIT_S = 5.0
MAX_FUTURE_SKEW_S = 120
VALUE_OPTIONS = (("spo2", "oxygen saturation, %%"), ("hr", "heart rate, beat/min"),
                 ("pr", "pulse rate, beat/min"), ("temp", "body temperature, Cel"),
                 ("sys", "systolic pressure, mm[Hg]"), ("dia", "diastolic pressure, mm[Hg]"),
                 ("rr", "respiratory rate, 1/min"), ("weight", "body weight, kg"),
                 ("glucose", "blood glucose, in --glucose-unit"))
_OPTION_OF_FIELD = {"patient_id": "--patient", "patient": "--patient", "at": "--at",
                    "actor": "--actor", "values": "the values"}


def register(sub: argparse._SubParsersAction) -> None:
    actions = common.command_group(sub, "reading", "enter readings by hand", __doc__)
    add = common.action(actions, "add", "enter values measured by a person for a patient",
                        run_add, data_dir=False)
    where = add.add_mutually_exclusive_group()
    where.add_argument("--config", help="the agent's gateway.toml (its data directory is used)")
    common.add_data_dir(where)
    add.add_argument("--patient", required=True, help="pseudonymous patient id, e.g. p-4f7a2c")
    for name, helptext in VALUE_OPTIONS:
        add.add_argument(f"--{name}", type=float, metavar="VALUE", help=helptext)
    add.add_argument("--glucose-unit", choices=("mmol/L", "mg/dL"),
                     help="unit of --glucose (required with it)")
    add.add_argument("--at", help="when it was measured, ISO-8601 (default now; no zone: UTC)")
    add.add_argument("--actor", required=True, metavar="ROLE:NAME",
                     help="who measured and enters it, e.g. nurse:n-0042 (roles: clinician, "
                     "nurse, carer, patient, technician)")
    add.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="S",
                     help=f"seconds to wait for the agent's answer (default {DEFAULT_WAIT_S:g})")


def _data_dir(args: argparse.Namespace) -> Path:
    if args.config is None:
        return common.data_dir(args)
    from edge_agent.config import ConfigError, load_config

    try:
        return load_config(args.config).gateway.data_dir
    except ConfigError as exc:
        raise CommandError(f"--config: {exc}") from None


def manual_body(args: argparse.Namespace, at: int) -> dict[str, Any]:
    """The inbox body from the options, checked (entries.validate); errors name the option."""
    from edge_agent.inbox import entries
    from protocol.errors import ValidationError

    values = {name: getattr(args, name) for name, _ in VALUE_OPTIONS
              if getattr(args, name) is not None}
    if not values:
        raise CommandError("give at least one value: " + ", ".join(
            f"--{name}" for name, _ in VALUE_OPTIONS))
    if ("glucose" in values) != (args.glucose_unit is not None):
        raise CommandError("--glucose and --glucose-unit go together (mmol/L or mg/dL)")
    if ("sys" in values) != ("dia" in values):
        raise CommandError("--sys and --dia go together: enter the whole blood pressure")
    units = {"glucose": args.glucose_unit} if args.glucose_unit else {}
    try:
        entries.check_actor(args.actor)
        return entries.validate(entries.MANUAL_READING, {
            "patient": args.patient, "values": values, "units": units, "at": at})
    except ValidationError as exc:
        option = _OPTION_OF_FIELD.get(exc.field, f"--{exc.field}")
        raise CommandError(f"{option}: {exc.reason}") from None


def check_against_registry(directory: Path, patient: str, at: int, now: int) -> None:
    """The patient is known here and `at` is within the time they were monitored here."""
    if at > now + MAX_FUTURE_SKEW_S:
        raise CommandError(f"--at {common.iso(at)} is in the future (now {common.iso(now)}); "
                           "enter the time the values were measured")
    with common.open_registry(directory) as registry:
        try:
            since = registry.monitoring_since(patient)
        except Exception as exc:  # NotFoundError and other registry refusals
            raise CommandError(f"--patient: {getattr(exc, 'reason', exc)}") from None
    if at < since:
        raise CommandError(f"--at {common.iso(at)} is before patient {patient} was monitored "
                           f"at this gateway (from {common.iso(since)}); check the date")


def run_add(args: argparse.Namespace) -> int:
    from edge_agent.inbox import client, entries
    from protocol.errors import ValidationError

    if not 0 <= args.wait <= 120:
        raise CommandError("--wait must be 0..120 seconds")
    now = common.now()
    at = now if args.at is None else common.parse_instant("--at", args.at)
    body = manual_body(args, at)
    directory = _data_dir(args)
    check_against_registry(directory, body["patient"], at, now)
    try:
        result = client.submit(directory, entries.MANUAL_READING, body, args.actor,
                               wait_s=args.wait)
    except ValidationError as exc:
        raise CommandError(f"{exc.field}: {exc.reason}") from None
    except OSError as exc:
        raise CommandError(f"cannot write the agent's inbox in {directory}: {exc}") from None
    result.update(patient=body["patient"], at=common.iso(at), values=body["values"])
    return report(args, result)


def report(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Print an inbox result (shared with `device compromise`) -> the exit status."""
    state = result["state"]
    if state == "accepted":
        line = f"[green]accepted[/] by the agent: {result['reason']}"
    elif state == "refused":
        line = f"[bold red]refused[/] by the agent: {result['reason']}"
    elif result["agent_running"]:
        line = (f"[yellow]queued[/] as entry {result['id']}: the agent is running but has not "
                "answered yet; it will process the entry (see its log)")
    else:
        line = (f"[yellow]queued[/] as entry {result['id']}: the agent is not running; the "
                "entry is kept and processed when it starts")
    common.output(args, result, line)
    return common.FAILED if state == "refused" else 0
