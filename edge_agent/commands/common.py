"""Shared helpers of the technician's commands: options, the data directory, the gateway's
identity on disk, the event journal, refusals as one-line errors, and rich output.

Data directory layout (docs/technician-cli.md):

    registry.sqlite3      devices, keys, certificates (edge_agent.registry)
    events.sqlite3        tamper-evident event journal (edge_agent.eventlog)
    journal.sqlite3       reading journal (edge_agent.journal)
    maintenance.sqlite3   faults found on inspection (edge_agent.maintenance)
    gateway.json          this gateway's id, state and file names (public)
    broker.json           MQTT connection settings for the uplink (public)
    keys/   (0700)        gateway-signing.key, gateway-agreement.key, broker-client.key (0600)
    certs/                org-ca.cwt, org-tls-ca.pem, gateway.cwt, broker-client.pem,
                          gateway-request.cose (until the certificate is installed)

Exit statuses shared by every command: 0 done, 1 the operation failed (a device or broker
did not answer, a check failed, a code did not match), 2 usage or state error (one line
saying what is wrong and what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.cli import CommandError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from edge_agent.eventlog import EventLog
    from edge_agent.registry import Registry

DEFAULT_DATA_DIR = "/var/lib/vitalbridge"
DATA_DIR_ENV = "VITALBRIDGE_DATA_DIR"
EVENTS_FILE = "events.sqlite3"
JOURNAL_FILE = "journal.sqlite3"
GATEWAY_FILE = "gateway.json"
BROKER_FILE = "broker.json"
KEYS_DIR = "keys"
CERTS_DIR = "certs"
SIGNING_KEY = "gateway-signing.key"
AGREEMENT_KEY = "gateway-agreement.key"
BROKER_KEY = "broker-client.key"
CA_CERT = "org-ca.cwt"
TLS_CA_CERT = "org-tls-ca.pem"
GATEWAY_CERT = "gateway.cwt"
BROKER_CERT = "broker-client.pem"
REQUEST_FILE = "gateway-request.cose"

FAILED = 1
STATE_ERROR = 2

# Same shape as the event journal's actor ids (edge_agent.eventlog.kinds).
_ACTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")

STATE_STYLE = {
    "active": "green",
    "valid": "green",
    "pass": "bold green",
    "renewal-due": "yellow",
    "due-soon": "yellow",
    "expiring": "dark_orange",
    "pending": "cyan",
    "expired": "bold red",
    "overdue": "bold red",
    "missing": "red",
    "fail": "bold red",
    "revoked": "magenta",
    "compromised": "bold red",
    "retired": "dim",
    "destroyed": "dim",
    "open": "yellow",
    "closed": "dim",
}


# -- options ----------------------------------------------------------------------------------


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=f"the agent's data directory (default ${DATA_DIR_ENV} "
                        f"or {DEFAULT_DATA_DIR})")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_at(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--at", help="ISO-8601 instant to evaluate states at, e.g. the next "
                        "visit (default: now; without a zone: UTC)")


def add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who does this, recorded in the journals "
                        "(default: $USER)")


def command_group(sub: argparse._SubParsersAction, name: str, helptext: str,
                  doc: str | None) -> argparse._SubParsersAction:
    """`vitalbridge NAME ACTION ...`: the parser of a command with actions."""
    parser = sub.add_parser(name, help=helptext, description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def action(actions: argparse._SubParsersAction, name: str, helptext: str, handler: Any, *,
           data_dir: bool = True, at: bool = False, actor: bool = False,
           json_output: bool = True) -> argparse.ArgumentParser:
    """One action with the shared options it takes; the caller adds its own arguments."""
    parser = actions.add_parser(name, help=helptext)
    if data_dir:
        add_data_dir(parser)
    if at:
        add_at(parser)
    if actor:
        add_actor(parser)
    if json_output:
        add_json(parser)
    parser.set_defaults(handler=handler)
    return parser


def data_dir(args: argparse.Namespace) -> Path:
    chosen = getattr(args, "data_dir", None) or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen)


def now() -> int:
    return int(time.time())


def parse_instant(option: str, text: str) -> int:
    """An ISO-8601 date or date-time as integer POSIX seconds (no zone: UTC)."""
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise CommandError(f"{option} {text!r} is not an ISO-8601 date/time "
                           "(e.g. 2026-03-01 or 2026-03-01T09:30:00+01:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int(when.timestamp())
    if seconds < 0:
        raise CommandError(f"{option} {text!r} is before 1970")
    return seconds


def at_or_now(args: argparse.Namespace) -> int:
    text = getattr(args, "at", None)
    return now() if text is None else parse_instant("--at", text)


def actor(args: argparse.Namespace) -> str:
    """The technician as journaled: "technician:<name>" from --actor or the login name."""
    name = getattr(args, "actor", None)
    if name is None:
        try:
            name = os.environ.get("USER") or getpass.getuser()
        except (KeyError, OSError):
            name = None
    if not name:
        raise CommandError("cannot tell who you are: pass --actor NAME")
    if not _ACTOR_NAME.match(name):
        raise CommandError(f"--actor {name!r}: use 1-64 letters, digits and . _ @ - "
                           "(a pseudonymous technician id, e.g. t-0042)")
    return f"technician:{name}"


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def duration(seconds: float) -> str:
    """'3 d 4 h', '2 h 5 min', '40 s' — for clock differences and remaining lifetimes."""
    rest = int(abs(seconds))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


# -- refusals ---------------------------------------------------------------------------------


@contextlib.contextmanager
def refusals(status: int = STATE_ERROR) -> Iterator[None]:
    """Turn the libraries' refusals into one-line CommandErrors (no traceback)."""
    from edge_agent.ca.keyfiles import KeyFileError
    from protocol.errors import ProtocolError, ValidationError

    try:
        yield
    except ValidationError as exc:  # RegistryError, CAError, TransitionError, ...
        raise CommandError(f"{exc.field}: {exc.reason}", status) from None
    except ProtocolError as exc:
        raise CommandError(str(exc), status) from None
    except KeyFileError as exc:
        raise CommandError(str(exc), status) from None


# -- the registry and the gateway's identity --------------------------------------------------


def open_registry(directory: Path) -> Registry:
    """The registry of a provisioned gateway (refuses to create one anywhere else)."""
    from edge_agent.registry import FILE_NAME, Registry

    if not (directory / FILE_NAME).is_file():
        raise CommandError(f"no registry in {directory}: provision this gateway first "
                           "(`vitalbridge gateway provision`), or pass --data-dir / set "
                           f"${DATA_DIR_ENV}")
    with refusals():
        return Registry.open_in(directory)


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """This gateway as the data directory knows it. Private keys stay in this object."""

    directory: Path
    gateway_id: str
    state: str  # "awaiting-certificate" | "active"
    seed: bytes
    agreement_private: bytes

    def __repr__(self) -> str:  # never print key material
        return f"GatewayIdentity({self.gateway_id!r}, {self.state!r})"

    @property
    def public_key(self) -> bytes:
        from protocol import crypto

        return crypto.ed25519_public_key(self.seed)

    @property
    def agreement_public(self) -> bytes:
        from protocol import crypto

        return crypto.x25519_public_key(self.agreement_private)

    def path(self, *parts: str) -> Path:
        return self.directory.joinpath(*parts)

    def certificate(self) -> bytes:
        path = self.path(CERTS_DIR, GATEWAY_CERT)
        if self.state != "active" or not path.is_file():
            raise CommandError(f"gateway {self.gateway_id} has no certificate yet: install it "
                               "with `vitalbridge gateway install-cert RESPONSE`")
        return path.read_bytes()


def read_gateway_file(directory: Path) -> dict[str, Any] | None:
    path = directory / GATEWAY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path} is unreadable ({exc}); restore it from the backup") from None
    if not isinstance(data, dict) or not isinstance(data.get("gateway_id"), str):
        raise CommandError(f"{path} is not a VitalBridge gateway file")
    return data


def write_gateway_file(directory: Path, data: Mapping[str, Any]) -> None:
    from edge_agent.ca import keyfiles

    keyfiles.write_public(directory / GATEWAY_FILE,
                          (json.dumps(dict(data), indent=2, sort_keys=True) + "\n").encode())


def load_gateway(directory: Path, *, active: bool = True) -> GatewayIdentity:
    """This gateway's identity and keys; `active` also requires its certificate installed."""
    from edge_agent.ca import keyfiles

    data = read_gateway_file(directory)
    if data is None:
        raise CommandError(f"{directory} holds no provisioned gateway: run `vitalbridge "
                           "gateway provision` first, or pass --data-dir / set "
                           f"${DATA_DIR_ENV}")
    state = str(data.get("state"))
    if active and state != "active":
        raise CommandError(f"gateway {data['gateway_id']} is {state}: install its certificate "
                           "with `vitalbridge gateway install-cert RESPONSE` first")
    with refusals():
        seed = keyfiles.load_ed25519_seed(directory / KEYS_DIR / SIGNING_KEY)
        agreement = keyfiles.load_x25519_private(directory / KEYS_DIR / AGREEMENT_KEY)
    return GatewayIdentity(directory, data["gateway_id"], state, seed, agreement)


# -- the event journal ------------------------------------------------------------------------


@contextlib.contextmanager
def event_log(identity: GatewayIdentity) -> Iterator[EventLog]:
    """The gateway's event journal, signed with its key; closed (and checkpointed) on exit."""
    from edge_agent.eventlog import EventLog
    from edge_agent.journal.schema import SchemaError

    certificate = identity.path(CERTS_DIR, GATEWAY_CERT)
    try:
        log = EventLog.open(identity.path(EVENTS_FILE), identity.gateway_id, identity.seed,
                            certificate=certificate.read_bytes() if certificate.is_file()
                            else None)
    except SchemaError as exc:
        raise CommandError(f"event journal: {exc}") from None
    try:
        yield log
    finally:
        log.close()


def check_entries(entries: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    """Refuse, before anything is changed, what the event journal would refuse (its rule
    keeps key material and patient data out: e.g. a note that looks like a key)."""
    from edge_agent.eventlog import kinds
    from protocol.errors import ValidationError

    for kind, who, subject, details in entries:
        try:
            kinds.validate(kind, who, subject, details)
        except ValidationError as exc:
            raise CommandError(f"{exc.field}: {exc.reason}; nothing was recorded") from None


def journal(identity: GatewayIdentity, entries: list[tuple[str, str, str, dict[str, Any]]],
            at: int | None = None) -> None:
    """Append (kind, actor, subject, details) entries to the event journal in one batch."""
    if not entries:
        return
    with event_log(identity) as log, log.batch():
        for kind, who, subject, details in entries:
            log.append(kind, who, subject, details, at=at)


def as_ident(text: str) -> str:
    """`text` as an event-journal identifier (a CA name may contain spaces)."""
    cleaned = re.sub(r"[^A-Za-z0-9._:/@-]", "-", text)[:128]
    return cleaned if cleaned[:1].isalnum() else "x" + cleaned[:127]


def digest_hex(data: bytes) -> str:
    from protocol import crypto

    return crypto.sha256(data).hex()


# -- output -----------------------------------------------------------------------------------


def console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False)


def table(title: str, columns: Iterable[str]) -> Table:
    """A rich table whose cells wrap (never "…"): a technician must see every value, also
    on an 80-column terminal."""
    from rich.table import Table

    result = Table(title=title)
    for column in columns:
        result.add_column(column, overflow="fold")
    return result


def styled(state: str) -> Text:
    from rich.text import Text

    return Text(state, style=STATE_STYLE.get(state, ""))


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=_json_default)
    sys.stdout.write("\n")


def output(args: argparse.Namespace, result: Any, *lines: str) -> None:
    """`result` as JSON with --json, else the human `lines` (rich markup)."""
    if getattr(args, "json", False):
        print_json(result)
        return
    out = console()
    for line in lines:
        out.print(line)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, Path):
        return str(value)
    return str(value)


@contextlib.contextmanager
def steps(enabled: bool, total: int) -> Iterator[Any]:
    """A progress display for long operations: `advance(text)` before each step. Silent
    when disabled (--json), so machine output stays clean."""
    if not enabled:
        yield lambda _text: None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), console=console()) as progress:
        task = progress.add_task("starting", total=total)
        started = [False]

        def advance(text: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=text)

        yield advance
        progress.update(task, completed=total, description="done")
