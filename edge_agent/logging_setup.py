"""Structured logs for the agent: one JSON object per line on stderr (journald keeps them),
and a redaction filter in front of every handler.

The agent's own code never logs key material or measured patient values; the filter is
the second line of defence for what a library or an exception message might carry:

* byte strings among the arguments are replaced by their length ("<32 bytes>");
* text that looks like 32+ bytes of key material (a long hex or base64 run, the same test
  the event journal applies: edge_agent.eventlog.kinds.looks_like_blob) becomes
  "[redacted]";
* "<quantity>=<number>", "<quantity>: <number>" and "<quantity> <number>" for every
  vital-sign quantity name (protocol.vitals) and for "value" lose the number (a verifier
  reason such as "hr 400 beat/min is outside the possible range" keeps its shape).

Redaction runs on the formatted message and on the traceback text, so nothing escapes
through `%r` or an exception's arguments.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from edge_agent.eventlog.kinds import looks_like_blob
from protocol import vitals

REDACTED = "[redacted]"
_BLOB = re.compile(r"[0-9a-fA-F]{64,}|[A-Za-z0-9+/_=-]{43,}")
_QUANTITY_NAMES = sorted({*vitals.QUANTITIES, "value", "values", "v"}, key=len, reverse=True)
_VALUE = re.compile(r"\b(" + "|".join(re.escape(q) for q in _QUANTITY_NAMES) +
                    r")(\s*[=:]\s*|\s+)(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
# What a LogRecord has of its own; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


def redact(text: str) -> str:
    """`text` without key-like blobs and without numbers attached to vital-sign names."""
    text = _BLOB.sub(lambda m: REDACTED if looks_like_blob(m.group(0)) else m.group(0), text)
    return _VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


class _Length:
    """Stands in for a byte string in a log record: "%s" and "%r" both show its length."""

    def __init__(self, size: int) -> None:
        self.text = f"<{size} bytes>"

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def _safe_arg(arg: object) -> object:
    if isinstance(arg, bytes | bytearray | memoryview):
        return _Length(len(arg))
    return arg


class RedactionFilter(logging.Filter):
    """Rewrites each record in place: message formatted and redacted, args dropped,
    traceback text redacted. Attached to handlers, so records of every logger pass it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            args = tuple(_safe_arg(a) for a in args)
        elif isinstance(args, dict):
            args = {k: _safe_arg(v) for k, v in args.items()}
        try:
            message = str(record.msg) % args if args else str(record.msg)
        except (TypeError, ValueError):
            message = f"{record.msg!s} {args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, redact(value) if isinstance(value, str)
                        else _safe_arg(value))
        return True


class JsonLinesFormatter(logging.Formatter):
    """{"ts": "...Z", "level": "INFO", "logger": "...", "msg": "...", [extra fields],
    ["exc": traceback]} per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "json",
                      stream: TextIO | None = None) -> logging.Handler:
    """Route every logger to one handler on `stream` (stderr) with redaction; replaces a
    handler installed by an earlier call. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("vitalbridge-agent")
    handler.addFilter(RedactionFilter())
    if fmt == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "vitalbridge-agent":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
