"""`vitalbridge journal`: verify the tamper-evident event journal, export it for auditors.

  vitalbridge journal verify (--db PATH | --export FILE) [--key HEX]... [--cert FILE]...
                             [--ca HEX] [--json]
  vitalbridge journal export --db PATH --out FILE [--since ISO] [--until ISO]

verify exit status: 0 intact, 1 tampered (the first problem and its reason are printed),
2 the journal cannot be read. Without --key/--cert the checkpoints are checked against the
key recorded in the journal itself, which proves consistency, not origin: an auditor passes
the gateway's public key or certificate (and --ca to check that certificate).
Dates are ISO-8601; without a zone they are UTC.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edge_agent.cli import CommandError
from edge_agent.commands.inspect import read_input

if TYPE_CHECKING:
    from edge_agent.eventlog.chain import Report


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("journal", help="verify or export the tamper-evident event journal",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="journal_command", metavar="ACTION", required=True)

    verify = actions.add_parser("verify", help="check the hash chain and signed checkpoints")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the agent's event journal (SQLite), opened read-only")
    source.add_argument("--export", help="a file written by `vitalbridge journal export`")
    verify.add_argument("--key", action="append", default=[],
                        help="gateway Ed25519 public key, hex (repeat for renewed keys)")
    verify.add_argument("--cert", action="append", default=[],
                        help="gateway certificate (CWT): file, hex or base64 (repeatable)")
    verify.add_argument("--ca", help="organisation CA public key (hex): each --cert must be "
                                     "issued by it")
    verify.add_argument("--json", action="store_true", help="machine-readable result")
    verify.set_defaults(handler=run_verify)

    export = actions.add_parser("export", help="write entries, checkpoints and signer keys as "
                                               "JSON lines for offline verification")
    export.add_argument("--db", required=True, help="the agent's event journal (SQLite)")
    export.add_argument("--out", required=True, help="file to write (JSON lines)")
    export.add_argument("--since", help="first instant, ISO-8601 (default: the beginning)")
    export.add_argument("--until", help="last instant, ISO-8601 (default: now)")
    export.set_defaults(handler=run_export)


def _instant(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option} {text!r} is not an ISO-8601 date/time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _trusted_keys(args: argparse.Namespace) -> list[bytes] | None:
    """The keys the auditor trusts, or None to fall back on the journal's own record."""
    from protocol import cwt
    from protocol.errors import ProtocolError

    keys = []
    for text in args.key:
        key = read_input(text)
        if len(key) != 32:
            raise CommandError(f"--key must be a 32-byte Ed25519 public key, got {len(key)} bytes")
        keys.append(key)
    ca = None
    if args.ca:
        ca = read_input(args.ca)
        if len(ca) != 32:
            raise CommandError("--ca must be a 32-byte Ed25519 public key")
    for text in args.cert:
        data = read_input(text)
        try:
            cert = cwt.parse_cwt(data) if ca is None else cwt.verify_cwt(data, ca)
        except ProtocolError as err:
            raise CommandError(f"--cert {text}: {err}") from None
        keys.append(cert.public_key)
    return keys or None


def run_verify(args: argparse.Namespace) -> int:
    from edge_agent.eventlog import chain
    from edge_agent.eventlog.store import EventLogFile
    from edge_agent.journal.schema import SchemaError

    keys = _trusted_keys(args)
    try:
        if args.db:
            log = EventLogFile.open_readonly(args.db)
            try:
                gateway, report = log.gateway_id, log.verify(keys)
            finally:
                log.close()
        else:
            with open(args.export, encoding="utf-8") as lines:
                first = lines.readline()
                gateway = chain.parse_header(first).gateway
                lines.seek(0)
                try:
                    reader = chain.ExportReader.from_lines(lines)
                    report = reader.verify(keys)
                except chain.FormatError as err:
                    report = chain.Report(chain.Problem(chain.MALFORMED, str(err)), 0, None, None,
                                          0, None, 0)
    except (OSError, UnicodeDecodeError, sqlite3.Error, SchemaError, chain.FormatError) as err:
        raise CommandError(f"cannot read the journal: {err}") from None
    _print_report(report, gateway, "given" if keys else "embedded", args.json)
    return 0 if report.ok else 1


def _print_report(report: Report, gateway: str, trust: str, as_json: bool) -> None:
    problem = report.problem
    if as_json:
        print(json.dumps({
            "status": "intact" if problem is None else "tampered",
            "reason": None if problem is None else problem.reason,
            "message": None if problem is None else problem.message,
            "seq": None if problem is None else problem.seq,
            "index": None if problem is None else problem.index,
            "gateway": gateway, "entries": report.entries, "first_seq": report.first_seq,
            "last_seq": report.last_seq, "checkpoints": report.checkpoints,
            "covered_through": report.covered_through, "uncovered": report.uncovered,
            "trust": trust,
        }, sort_keys=True))
        return
    if problem is not None:
        print(f"event journal of {gateway} TAMPERED ({problem.reason}): {problem.message}")
        return
    span = (f"seq {report.first_seq}..{report.last_seq}" if report.entries else "empty")
    print(f"event journal of {gateway} intact: {report.entries} entries ({span}), "
          f"{report.checkpoints} signed checkpoints"
          + (f", signed through seq {report.covered_through}" if report.covered_through else ""))
    if report.uncovered:
        print(f"warning: {report.uncovered} entries at the end are not yet covered by a signed "
              "checkpoint (a deletion there would not show; the centre's copy of the "
              "checkpoints bounds it)")
    if trust == "embedded":
        print("note: checked against the key recorded in the journal itself, which proves "
              "consistency, not origin; pass --key or --cert")


def run_export(args: argparse.Namespace) -> int:
    from edge_agent.eventlog.store import EventLogFile
    from edge_agent.journal.schema import SchemaError

    since, until = _instant("--since", args.since), _instant("--until", args.until)
    try:
        log = EventLogFile.open_readonly(args.db)
        try:
            summary = log.export(args.out, since=since, until=until)
        finally:
            log.close()
    except (OSError, sqlite3.Error, SchemaError) as err:
        raise CommandError(f"cannot export the journal: {err}") from None
    span = (f"seq {summary.first_seq}..{summary.last_seq}" if summary.entries
            else "no entries in that window")
    print(f"exported {summary.entries} entries ({span}) and {summary.checkpoints} signed "
          f"checkpoints to {summary.path}")
    return 0
