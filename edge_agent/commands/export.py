"""`vitalbridge export fhir`: a patient's readings as an HL7 FHIR R4 Bundle for the EMR.

  vitalbridge export fhir --patient P --since ISO [--until ISO] --journal PATH
                          [--registry PATH] --out FILE [--json-summary]
                          [--patient-system URI] [--canonical-base URI]
                          [--bundle-type transaction|collection]

Reads the journal and the registry read-only; the patient is the registry's pseudonym and
the devices bound to it decide which readings are theirs. The time range is [since, until)
on the readings' own times; ISO-8601 without a zone is UTC. The bundle is written only if it
passes both the structural parse (fhir.resources) and our code/unit checks.

Exit status: 0 written; 1 the bundle failed a check (nothing written, the problems are
listed on stderr); 2 bad arguments or files that cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.cli import CommandError

MAX_LISTED_PROBLEMS = 20
# The whole bundle is built in memory on a Raspberry Pi; ~2 KB of JSON per reading.
DEFAULT_MAX_READINGS = 100_000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export a patient's readings for an EMR (FHIR R4)",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    fhir = formats.add_parser("fhir", help="HL7 FHIR R4 Bundle of vital-signs Observations, "
                                           "Devices and Provenance")
    fhir.add_argument("--patient", required=True, help="the patient's pseudonymous id")
    fhir.add_argument("--since", required=True, help="first reading time, ISO-8601")
    fhir.add_argument("--until", help="end of the range (exclusive), ISO-8601 (default: none)")
    fhir.add_argument("--journal", required=True, help="the agent's reading journal (SQLite)")
    fhir.add_argument("--registry", help="the agent's registry (default: registry.sqlite3 "
                                         "next to the journal)")
    fhir.add_argument("--out", required=True, help="file to write the Bundle to (JSON)")
    fhir.add_argument("--json-summary", action="store_true",
                      help="print the summary as one JSON object")
    fhir.add_argument("--patient-system", help="Identifier.system of the pseudonym (default: "
                                               "<canonical-base>/sid/patient-pseudonym)")
    fhir.add_argument("--canonical-base", help="base URI of the organisation's own code and "
                                               "identifier systems")
    fhir.add_argument("--bundle-type", choices=("transaction", "collection"),
                      default="transaction",
                      help="transaction (default): POST to the EMR's FHIR endpoint as one "
                           "unit, idempotent; collection: a plain set of resources")
    fhir.add_argument("--max-readings", type=int, default=DEFAULT_MAX_READINGS,
                      help="refuse a larger export (default %(default)s): continuous streams "
                           "give ~260 000 readings a day; narrow the range instead")
    fhir.set_defaults(handler=run_fhir)


def _instant(option: str, text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option} {text!r} is not an ISO-8601 date/time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written export."""
    directory = path.resolve().parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def run_fhir(args: argparse.Namespace) -> int:
    from edge_agent.export import fhir, fhir_checks, source
    from edge_agent.registry.schema import FILE_NAME
    from protocol.errors import ValidationError

    since = _instant("--since", args.since)
    until = None if args.until is None else _instant("--until", args.until)
    if until is not None and until <= since:
        raise CommandError("--until must be after --since")
    journal = Path(args.journal)
    registry = Path(args.registry) if args.registry else journal.parent / FILE_NAME
    try:
        config = fhir.ExportConfig(
            patient_system=args.patient_system,
            canonical_base=args.canonical_base or fhir.DEFAULT_CANONICAL_BASE,
            bundle_type=args.bundle_type)
    except ValidationError as err:
        raise CommandError(f"--{err.field.replace('_', '-')}: {err.reason}") from None
    try:
        data = source.read_patient_readings(journal, registry, args.patient, since, until)
    except source.SourceError as err:
        raise CommandError(str(err)) from None
    if len(data.readings) > args.max_readings:
        raise CommandError(f"{len(data.readings)} readings in that range exceed --max-readings "
                           f"{args.max_readings}: export a shorter range")
    config = dataclasses.replace(config, gateway_id=data.gateway_id)
    result = fhir.build_bundle(args.patient, data.readings, data.devices, config,
                               timestamp=time.time())
    problems = (fhir_checks.structural_problems(result.bundle)
                + fhir_checks.check_bundle(result.bundle))
    if problems:
        for problem in problems[:MAX_LISTED_PROBLEMS]:
            print(f"problem: {problem}", file=sys.stderr)
        raise CommandError(f"the bundle failed {len(problems)} checks; nothing was written",
                           status=1)
    try:
        _write_atomically(Path(args.out), json.dumps(result.bundle, separators=(",", ":"),
                                                     ensure_ascii=False, allow_nan=False) + "\n")
    except OSError as err:
        raise CommandError(f"cannot write {args.out}: {err.strerror or err}") from None
    _print_summary(args, data, result.summary, config)
    return 0


def _print_summary(args: argparse.Namespace, data: Any, summary: Any, config: Any) -> None:
    from edge_agent.export import fhir

    skipped_rows = [{"message_id": s.message_id, "device": s.device_id, "reason": s.reason}
                    for s in data.skipped]
    if args.json_summary:
        print(json.dumps({"out": str(args.out), "patient": args.patient, "since": args.since,
                          "until": args.until, "bundle_type": config.bundle_type,
                          "messages": data.messages, "readings": len(data.readings),
                          **summary.as_dict(), "undecodable_messages": skipped_rows,
                          "problems": 0}, sort_keys=True))
        return
    print(f"exported {summary.observations} observations ({summary.bp_panels} bp panels, "
          f"{summary.absent_values} without a value), {summary.devices} devices and "
          f"{summary.provenances} provenance records for {args.patient} to {args.out} "
          f"({config.bundle_type} bundle)")
    if summary.skipped:
        print("not exported: " + ", ".join(f"{n} {reason}"
                                           for reason, n in sorted(summary.skipped.items())))
    for row in skipped_rows[:MAX_LISTED_PROBLEMS]:
        print(f"warning: journal message {row['message_id']} ({row['device']}) {row['reason']}")
    if not args.patient_system and config.canonical_base == fhir.DEFAULT_CANONICAL_BASE:
        print(f"note: the pseudonym's identifier system is the placeholder "
              f"{config.patient_identifier_system}; pass --patient-system or --canonical-base")
