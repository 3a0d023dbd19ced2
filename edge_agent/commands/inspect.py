"""`vitalbridge inspect`: decode a captured frame, seal, certificate or CBOR item.

Exit status: 0 every seal checked is valid (or there was none), 1 a seal is invalid,
2 the input cannot be read. Errors are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import string
import sys
from pathlib import Path
from typing import Any

from edge_agent.cli import CommandError

GATT_NAMES = {
    "2A37": 0x2A37, "2A1C": 0x2A1C, "2A35": 0x2A35, "2A5E": 0x2A5E, "2A5F": 0x2A5F,
    "2A18": 0x2A18, "2A52": 0x2A52, "2A9D": 0x2A9D, "2A08": 0x2A08,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="decode a captured frame / COSE seal / certificate / CBOR and check seals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="hex, base64, a file path, @FILE, or - for standard input")
    p.add_argument("--key", help="hex key: MAC key for COSE_Mac0, Ed25519 public key for "
                                 "COSE_Sign1 and for a certificate's issuer")
    p.add_argument("--cert", help="device certificate (CWT) as hex, base64 or file: its key "
                                  "verifies checkpoints")
    p.add_argument("--kid", help="hex key id the seal must carry (COSE leaves the kid "
                                 "unprotected, so it only counts when you say what to expect)")
    p.add_argument("--gatt", metavar="UUID", help="decode a Bluetooth SIG characteristic value "
                   "instead, e.g. 2A37 (" + ", ".join(GATT_NAMES) + ")")
    p.add_argument("--at", help="ISO-8601 instant for certificate states (default: now)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def read_input(text: str) -> bytes:
    """Hex (spaces, colons and 0x allowed), base64, a file, @file or '-'."""
    if text == "-":
        return _bytes_from_text_or_raw(sys.stdin.buffer.read())
    path = Path(text[1:] if text.startswith("@") else text)
    if text.startswith("@") or _is_file(path):
        try:
            return _bytes_from_text_or_raw(path.read_bytes())
        except OSError as err:
            raise CommandError(f"cannot read {path}: {err.strerror}") from None
    return _decode_text(text)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a long hex string is "File name too long"
        return False


def _bytes_from_text_or_raw(raw: bytes) -> bytes:
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return raw
    if text and all(c in string.printable for c in text):
        try:
            return _decode_text(text)
        except CommandError:
            return raw
    return raw


def _decode_text(text: str) -> bytes:
    compact = "".join(text.split()).replace(":", "")
    if compact.lower().startswith("0x"):
        compact = compact[2:]
    if compact and all(c in string.hexdigits for c in compact):
        if len(compact) % 2:
            raise CommandError("hex input has an odd number of digits")
        return bytes.fromhex(compact)
    try:
        padded = compact + "=" * (-len(compact) % 4)
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError("input is neither hex, base64 nor a readable file") from None


def _parse_hex(option: str, text: str | None, size: int | None = None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex("".join(text.split()))
    except ValueError:
        raise CommandError(f"{option} must be hex") from None
    if size is not None and len(value) != size:
        raise CommandError(f"{option} must be {size} bytes ({2 * size} hex digits), "
                           f"got {len(value)} bytes")
    return value


def _parse_at(text: str | None) -> float | None:
    if text is None:
        return None
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--at {text!r} is not an ISO-8601 date/time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def run(args: argparse.Namespace) -> int:
    from edge_agent import inspection
    from protocol.errors import ProtocolError

    data = read_input(args.data)
    if args.gatt:
        return _run_gatt(args, data)
    try:
        keys = inspection.Keys(key=_parse_hex("--key", args.key, 32),
                               cert=read_input(args.cert) if args.cert else None,
                               kid=_parse_hex("--kid", args.kid))
    except ProtocolError as err:
        raise CommandError(f"--cert is not a certificate: {err}") from None
    try:
        report = inspection.analyse(data, keys, now=_parse_at(args.at))
    except inspection.InspectionError as err:
        raise CommandError(str(err)) from None
    except ProtocolError as err:
        raise CommandError(f"cannot decode: {err}") from None
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        from edge_agent.commands.inspect_view import render

        render(report)
    return inspection.exit_status(report)


def _run_gatt(args: argparse.Namespace, data: bytes) -> int:
    from protocol.errors import ProtocolError
    from protocol.gatt import characteristics as gatt

    uuid = args.gatt.upper().removeprefix("0X")
    if uuid not in GATT_NAMES:
        raise CommandError(f"--gatt {args.gatt}: unknown characteristic "
                           f"(known: {', '.join(GATT_NAMES)})")
    try:
        decoded = gatt.decode(GATT_NAMES[uuid], data)
    except ProtocolError as err:
        raise CommandError(f"0x{uuid}: {err}") from None
    if args.json:
        print(json.dumps(decoded, indent=2, default=_json_default))
    else:
        from edge_agent.commands.inspect_view import render_gatt

        render_gatt(uuid, decoded)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value)
