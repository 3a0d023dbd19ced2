"""The event journal's hash chain, its signed checkpoints and their verification. Pure: no
I/O, no clock; the SQLite store and the export file both feed this code.

Entry (docs/eventlog.md has every byte):
    body  = deterministic CBOR (protocol.cbor) of the map
            {"seq": uint, "time": int ms, "kind": text, "actor": text, "subject": text,
             "details": map}
    hash  = SHA-256(prev || body)           prev = hash of entry seq-1, or the genesis hash
    genesis(gateway) = SHA-256(CBOR(["vitalbridge-eventlog", 1, gateway id]))
Each stored or exported entry carries its own `prev` and `hash` besides the fields, so an
edit is pinned to the entry that was changed, not only "somewhere before seq N".

Checkpoint: a COSE_Sign1 (EdDSA, kid = key_id(gateway public key), external_aad =
CHECKPOINT_AAD) over CBOR {"gateway": text, "first": uint, "last": uint, "head": bstr 32,
"time": int ms}: "the chain from seq `first` to `last` ends in `head`". The aad separates
these signatures from everything else the gateway key signs (certificates, attestations).

`verify_chain` walks entries in the order given and returns the FIRST problem found, checks
in this order: checkpoint signatures and continuity, then per entry (self-hash, sequence,
link, signed head), then truncation. A chain that only re-hashes everything after an edit
is caught by the first signed checkpoint after it; entries after the last checkpoint are
reported as `uncovered`, because nothing signed vouches for them yet.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol import cbor, cose, crypto
from protocol.checks import hexstr
from protocol.errors import ProtocolError

FORMAT_VERSION = 1
HASH_SIZE = 32
CHECKPOINT_AAD = b"vitalbridge/eventlog/checkpoint/v1"
EXPORT_FORMAT = "vitalbridge-eventlog-export"
MAX_SEQ = (1 << 63) - 1
MAX_CHECKPOINT_BYTES = 1024

# Reasons a verification fails (Problem.reason).
EDITED = "edited"  # an entry's fields, prev or hash changed (or it was changed and re-hashed)
DELETED = "deleted"  # a gap in seq
REORDERED = "reordered"  # the expected seq comes later
INSERTED = "inserted"  # a seq seen twice: an entry copied or forged in
WRONG_START = "wrong-start"  # the first entry does not chain from the genesis / anchor
CHECKPOINT_MISMATCH = "checkpoint-mismatch"  # the chain does not end in the signed head
FORGED_CHECKPOINT = "forged-checkpoint"  # bad signature, unknown key, other gateway
CHECKPOINT_MISSING = "checkpoint-missing"  # a signed checkpoint was removed
FORKED = "forked"  # two validly signed checkpoints that disagree
TRUNCATED = "truncated"  # entries a signed checkpoint covers are gone
MALFORMED = "malformed"  # an entry or checkpoint that is not of the format
REASONS = (EDITED, DELETED, REORDERED, INSERTED, WRONG_START, CHECKPOINT_MISMATCH,
           FORGED_CHECKPOINT, CHECKPOINT_MISSING, FORKED, TRUNCATED, MALFORMED)


# Containers details may nest, the details map itself included (deeper is not of the format).
MAX_DETAILS_DEPTH = 4
_BODY_DEPTH = 1 + MAX_DETAILS_DEPTH  # the body map holds the details map


class FormatError(ValueError):
    """Input that is not an entry, checkpoint or export of this format."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hash_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise FormatError(f"{name} must be {HASH_SIZE} bytes")
    return value


def genesis_hash(gateway_id: str) -> bytes:
    """The `prev` of entry 1: binds a chain to its gateway and to this format version."""
    return crypto.sha256(cbor.dumps(["vitalbridge-eventlog", FORMAT_VERSION, gateway_id]))


# ---------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry as stored: the hashed fields plus its recorded prev and hash."""

    seq: int
    time: int  # POSIX milliseconds, gateway wall clock
    kind: str
    actor: str
    subject: str
    details: Mapping[str, Any]
    prev: bytes
    hash: bytes

    def body(self) -> bytes:
        return entry_body(self.seq, self.time, self.kind, self.actor, self.subject,
                          self.details)

    def self_consistent(self) -> bool:
        """Its recorded hash is SHA-256(prev || body): fields, prev and hash agree."""
        return hmac.compare_digest(entry_hash(self.prev, self.body()), self.hash)


def entry_body(seq: int, time_ms: int, kind: str, actor: str, subject: str,
               details: Mapping[str, Any]) -> bytes:
    """The deterministic CBOR the hash covers."""
    body = plain_entry_body(seq, time_ms, kind, actor, subject, details)
    if body is None:
        body = cbor.dumps({"seq": seq, "time": time_ms, "kind": kind, "actor": actor,
                           "subject": subject, "details": dict(details)})
    return body


def plain_entry_body(seq: int, time_ms: int, kind: str, actor: str, subject: str,
                     details: Mapping[str, Any]) -> bytes | None:
    """`entry_body` by protocol.cbor's fast path when every field is a plain JSON value
    (`cbor.plain_dumps`: exact str, int within 64 bits, finite float, bool, None, lists and
    str-keyed dicts, details nested at most MAX_DETAILS_DEPTH deep); None for anything else
    (a tuple, a str or int subclass, a Mapping that is not a dict): the caller then takes
    the general path. For the values it accepts, reading the stored JSON back gives the
    same values, so the hash covers exactly what the row holds without a JSON round trip."""
    return cbor.plain_dumps({"seq": seq, "time": time_ms, "kind": kind, "actor": actor,
                             "subject": subject, "details": details}, _BODY_DEPTH)


def entry_hash(prev: bytes, body: bytes) -> bytes:
    return crypto.sha256(prev + body)


def make_entry(prev: bytes, seq: int, time_ms: int, kind: str, actor: str, subject: str,
               details: Mapping[str, Any]) -> Entry:
    """The next entry after the one whose hash is `prev`."""
    _hash_bytes("prev", prev)
    details = dict(details)
    body = entry_body(seq, time_ms, kind, actor, subject, details)
    return Entry(seq, time_ms, kind, actor, subject, details, prev, entry_hash(prev, body))


def stored_entry(prev: bytes, seq: int, time_ms: int, kind: str, actor: str, subject: str,
                 details: Mapping[str, Any]) -> tuple[Entry, str]:
    """The next entry after `prev` exactly as reading its row back will give it, and the
    JSON text of its details for that row."""
    digest, details_json, details = stored_hash(prev, seq, time_ms, kind, actor, subject,
                                                details)
    return Entry(seq, time_ms, kind, actor, subject, details, prev, digest), details_json


def stored_hash(prev: bytes, seq: int, time_ms: int, kind: str, actor: str, subject: str,
                details: Mapping[str, Any]) -> tuple[bytes, str, dict[str, Any]]:
    """(hash, details JSON text, details as the row reads back) of the entry after `prev`.
    Plain details (plain_entry_body) are hashed as they are; anything else is first
    normalised by a JSON round trip (a tuple becomes a list, a str subclass a str), so the
    hash always covers exactly what the row holds."""
    details_json = details_to_json(details)
    body = plain_entry_body(seq, time_ms, kind, actor, subject, details)
    if body is None:
        details = details_from_json(details_json)
        body = entry_body(seq, time_ms, kind, actor, subject, details)
    return entry_hash(prev, body), details_json, details  # type: ignore[return-value]


def _check_text(name: str, value: object) -> str:
    """Text that UTF-8 can encode (JSON may smuggle in lone surrogates: "\\ud800")."""
    if not isinstance(value, str):
        raise FormatError(f"{name} must be text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{name} is not valid Unicode text") from None
    return value


def _check_value(value: object, depth: int = 0) -> None:
    """The JSON data model (what details may hold): hashing and export must agree."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text("a details value", value)
        return
    if _is_int(value):
        if not -(1 << 64) <= value < (1 << 64):  # type: ignore[operator]
            raise FormatError("integer out of range")
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise FormatError("non-finite number")
        return
    if depth < MAX_DETAILS_DEPTH and isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
        return
    if depth < MAX_DETAILS_DEPTH and isinstance(value, dict):
        for key, item in value.items():
            _check_text("a details key", key)
            _check_value(item, depth + 1)
        return
    raise FormatError(f"value of type {type(value).__name__} is not allowed in details")


def entry_from_fields(seq: object, time_ms: object, kind: object, actor: object,
                      subject: object, details: object, prev: object, hash_: object) -> Entry:
    """An Entry from untrusted values (a database row or an export line): FormatError if a
    value has the wrong type, so tampering with types is reported, never a crash."""
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:  # type: ignore[operator]
        raise FormatError("seq must be an integer >= 1")
    if not _is_int(time_ms) or not 0 <= time_ms < (1 << 53):  # type: ignore[operator]
        raise FormatError("time must be integer milliseconds >= 0")
    for name, value in (("kind", kind), ("actor", actor), ("subject", subject)):
        _check_text(name, value)
    if not isinstance(details, dict):
        raise FormatError("details must be a map")
    _check_value(details)
    return Entry(seq, time_ms, kind, actor, subject, details,  # type: ignore[arg-type]
                 _hash_bytes("prev", prev), _hash_bytes("hash", hash_))


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint as stored or exported: the readable fields and the signed COSE bytes.
    Only `cose` is evidence; verification insists the readable fields say the same."""

    first: int
    last: int
    head: bytes
    time: int
    gateway: str
    cose: bytes


def checkpoint_payload(gateway_id: str, first: int, last: int, head: bytes, time_ms: int
                       ) -> bytes:
    return cbor.dumps({"gateway": gateway_id, "first": first, "last": last,
                       "head": _hash_bytes("head", head), "time": time_ms})


def sign_checkpoint(seed: bytes, gateway_id: str, first: int, last: int, head: bytes,
                    time_ms: int) -> Checkpoint:
    """Sign "entries first..last end in head" with the gateway's Ed25519 seed."""
    if not 1 <= first <= last:
        raise ValueError("a checkpoint covers at least one entry: 1 <= first <= last")
    payload = checkpoint_payload(gateway_id, first, last, head, time_ms)
    kid = cose.key_id(crypto.ed25519_public_key(seed))
    signed = cose.sign1_create(seed, payload, kid=kid, external_aad=CHECKPOINT_AAD)
    return Checkpoint(first, last, head, time_ms, gateway_id, signed)


def _signed_claims(cp: Checkpoint, keys: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The verified payload of `cp`, or FormatError / ProtocolError saying why not."""
    if not isinstance(cp.cose, bytes) or len(cp.cose) > MAX_CHECKPOINT_BYTES:
        raise FormatError("signed checkpoint missing or too large")
    kid = cose.sign1_parse(cp.cose).kid
    if kid is None:
        raise FormatError("signed checkpoint names no key (kid)")
    public_key = keys.get(kid)
    if public_key is None:
        raise FormatError(f"signed by an unknown key (kid {hexstr(kid)})")
    msg = cose.sign1_verify(public_key, cp.cose, external_aad=CHECKPOINT_AAD, kid=kid)
    claims = cbor.loads(msg.payload)
    if not isinstance(claims, dict) or set(claims) != {"gateway", "first", "last", "head",
                                                       "time"}:
        raise FormatError("signed payload is not a checkpoint")
    first, last, head = claims["first"], claims["last"], claims["head"]
    if not (_is_int(first) and _is_int(last) and 1 <= first <= last <= MAX_SEQ):
        raise FormatError("signed range is not 1 <= first <= last")
    _hash_bytes("signed head", head)
    return claims


def _check_checkpoint(cp: Checkpoint, keys: Mapping[bytes, bytes], gateway_id: str
                      ) -> str | None:
    try:
        claims = _signed_claims(cp, keys)
    except (FormatError, ProtocolError) as err:
        return str(err)
    if claims["gateway"] != gateway_id:
        return f"signed for gateway {claims['gateway']!r}, not {gateway_id!r}"
    readable = {"gateway": cp.gateway, "first": cp.first, "last": cp.last, "head": cp.head,
                "time": cp.time}
    if readable != claims:
        changed = sorted(k for k in claims if readable[k] != claims[k])
        return "readable fields differ from the signed ones: " + ", ".join(changed)
    return None


# ---------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str  # one of REASONS
    message: str
    seq: int | None = None  # the seq the problem is about, when there is one
    index: int | None = None  # position of the offending entry in the input (0-based)


@dataclass(frozen=True, slots=True)
class Report:
    problem: Problem | None
    entries: int  # entries checked before the verdict
    first_seq: int | None
    last_seq: int | None
    checkpoints: int  # checkpoints whose signature verified
    covered_through: int | None  # last seq vouched for by a signed checkpoint
    uncovered: int  # entries after that: intact as far as the chain shows, not yet signed

    @property
    def ok(self) -> bool:
        return self.problem is None


def _order_checkpoints(checkpoints: Iterable[Checkpoint], keys: Mapping[bytes, bytes],
                       gateway_id: str, start_seq: int
                       ) -> tuple[list[Checkpoint], Problem | None]:
    unique: dict[tuple[int, int, bytes], Checkpoint] = {}
    for cp in checkpoints:
        why = _check_checkpoint(cp, keys, gateway_id)
        if why:
            return [], Problem(FORGED_CHECKPOINT, f"checkpoint for seq {cp.first}..{cp.last}: "
                               + why, seq=cp.last)
        # The same signed statement twice (even re-encoded) says nothing new.
        unique.setdefault((cp.first, cp.last, cp.head), cp)
    ordered = sorted(unique.values(), key=lambda c: (c.last, c.first))
    if start_seq == 1 and ordered and ordered[0].first != 1:
        gap_end = ordered[0].first - 1
        return [], Problem(CHECKPOINT_MISSING, f"signed checkpoints for seq 1..{gap_end} are "
                           "missing", seq=1)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.first > before.last + 1:
            return [], Problem(CHECKPOINT_MISSING, f"signed checkpoints for seq "
                               f"{before.last + 1}..{after.first - 1} are missing",
                               seq=before.last + 1)
        if after.first <= before.last:
            return [], Problem(FORKED, f"signed checkpoints {before.first}..{before.last} and "
                               f"{after.first}..{after.last} overlap: two histories were signed",
                               seq=after.first)
    return ordered, None


def _scan_rest(rest: Iterator[Entry], seq: int, expected: int) -> tuple[bool, bool]:
    """(seq appears again, expected appears) in the rest of the input."""
    again = found = False
    try:
        for entry in rest:
            again = again or entry.seq == seq
            found = found or entry.seq == expected
    except FormatError:
        pass
    return again, found


def _out_of_sequence(entry: Entry, expected: int, start_seq: int, index: int,
                     rest: Iterator[Entry]) -> Problem:
    seq = entry.seq
    if seq < expected:
        where = "before the first entry" if seq < start_seq else "already present"
        return Problem(INSERTED, f"entry seq {seq} at position {index} is {where}: an entry was "
                       "copied or forged in", seq=seq, index=index)
    again, found = _scan_rest(rest, seq, expected)
    if again:
        return Problem(INSERTED, f"seq {seq} appears twice: an entry was copied or forged in",
                       seq=seq, index=index)
    if found:
        return Problem(REORDERED, f"entry seq {seq} comes before seq {expected}: entries were "
                       "reordered", seq=expected, index=index)
    missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
    return Problem(DELETED, f"{missing} missing ({seq - expected} entries): deleted", seq=expected,
                   index=index)


def verify_chain(entries: Iterable[Entry], checkpoints: Iterable[Checkpoint], *,
                 gateway_id: str, trusted_keys: Iterable[bytes], start_seq: int = 1,
                 anchor: bytes | None = None) -> Report:
    """Check `entries` (in their given order) against `checkpoints` signed by one of
    `trusted_keys` (32-byte Ed25519 public keys). A slice that starts after seq 1 passes
    `start_seq` and `anchor` (the prev of its first entry): the anchor is taken on trust
    until a signed head that depends on it matches, which authenticates it too.

    Iterating `entries` may raise FormatError: that is reported as MALFORMED.
    """
    keys = {cose.key_id(k): k for k in trusted_keys}
    genesis = genesis_hash(gateway_id)
    if start_seq == 1 and anchor is not None and anchor != genesis:
        return Report(Problem(WRONG_START, "a chain starting at seq 1 must start from the "
                              f"genesis hash of gateway {gateway_id!r}", seq=1),
                      0, None, None, 0, None, 0)
    running = genesis if anchor is None else anchor
    ordered, problem = _order_checkpoints(checkpoints, keys, gateway_id, start_seq)
    heads = {cp.last: cp for cp in ordered}
    expected, count, first_seq = start_seq, 0, None

    def report(problem: Problem | None) -> Report:
        last_seq = expected - 1 if count else None
        covered = max((cp.last for cp in ordered if cp.last <= expected - 1), default=None)
        uncovered = count if covered is None else max(0, min(count, expected - 1 - covered))
        return Report(problem, count, first_seq, last_seq, len(ordered), covered, uncovered)

    if problem:
        return report(problem)
    before_start = heads.get(start_seq - 1)
    if before_start is not None and before_start.head != running:
        return report(Problem(CHECKPOINT_MISMATCH, f"the export's anchor is not the signed head "
                              f"at seq {start_seq - 1}", seq=start_seq - 1))
    iterator = iter(entries)
    index = -1
    try:
        for index, entry in enumerate(iterator):
            if not entry.self_consistent():
                return report(Problem(EDITED, f"entry seq {entry.seq} does not hash to its "
                                      "recorded hash: its fields, prev or hash were changed",
                                      seq=entry.seq, index=index))
            if entry.seq != expected:
                return report(_out_of_sequence(entry, expected, start_seq, index, iterator))
            if entry.prev != running:
                if count == 0:
                    start = ("the genesis hash of gateway " + repr(gateway_id)
                             if start_seq == 1 else "the export's anchor")
                    return report(Problem(WRONG_START, f"entry seq {entry.seq} does not chain "
                                          f"from {start}", seq=entry.seq, index=index))
                return report(Problem(EDITED, f"entry seq {expected - 1} was changed and "
                                      f"re-hashed: entry seq {entry.seq} records another hash "
                                      "for it", seq=expected - 1, index=index - 1))
            running = entry.hash
            first_seq = entry.seq if count == 0 else first_seq
            count += 1
            expected += 1
            signed = heads.get(entry.seq)
            if signed is not None and signed.head != running:
                return report(Problem(CHECKPOINT_MISMATCH, f"the chain up to seq {entry.seq} "
                                      "does not end in the signed head: entries in seq "
                                      f"{signed.first}..{signed.last} (or before) were changed "
                                      "and the chain re-hashed", seq=entry.seq, index=index))
    except FormatError as err:
        return report(Problem(MALFORMED, f"entry at position {index + 1}: {err}",
                              index=index + 1))
    if ordered and ordered[-1].last > expected - 1:
        end = ordered[-1].last
        return report(Problem(TRUNCATED, f"a signed checkpoint covers up to seq {end} but the "
                              f"journal ends at seq {expected - 1}: seq {expected}..{end} removed",
                              seq=expected))
    return report(None)


# ---------------------------------------------------------------- export (JSON lines)
# Line 1: header; then checkpoints; then entries, in seq order. Bytes as lower-case hex.


def _hex(value: bytes) -> str:
    return value.hex()


def _unhex(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{name} must be hex text")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise FormatError(f"{name} is not hex") from None


@dataclass(frozen=True, slots=True)
class Signer:
    """A key that signed checkpoints: its public key and, if known, its certificate."""

    public_key: bytes
    certificate: bytes | None = None

    @property
    def kid(self) -> bytes:
        return cose.key_id(self.public_key)


@dataclass(frozen=True, slots=True)
class ExportHeader:
    gateway: str
    first_seq: int  # seq of the first exported entry (1 for a full export)
    anchor: bytes  # prev of that entry (the genesis hash for a full export)
    signers: tuple[Signer, ...]
    exported_at: int  # ms
    since: int | None = None  # the requested window, ms
    until: int | None = None


def header_line(header: ExportHeader) -> str:
    return _dump({
        "format": EXPORT_FORMAT, "version": FORMAT_VERSION, "gateway": header.gateway,
        "first_seq": header.first_seq, "anchor": _hex(header.anchor),
        "exported_at": header.exported_at, "since": header.since, "until": header.until,
        "signers": [{"kid": _hex(s.kid), "public_key": _hex(s.public_key),
                     "certificate": None if s.certificate is None else _hex(s.certificate)}
                    for s in header.signers],
    })


def entry_line(entry: Entry) -> str:
    return _dump({"type": "entry", "seq": entry.seq, "time": entry.time, "kind": entry.kind,
                  "actor": entry.actor, "subject": entry.subject, "details": entry.details,
                  "prev": _hex(entry.prev), "hash": _hex(entry.hash)})


def checkpoint_line(cp: Checkpoint) -> str:
    return _dump({"type": "checkpoint", "first": cp.first, "last": cp.last,
                  "head": _hex(cp.head), "time": cp.time, "gateway": cp.gateway,
                  "cose": _hex(cp.cose)})


# One encoder for every line: json.dumps with these options builds a new one per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False)


def _dump(obj: Mapping[str, Any]) -> str:
    return _ENCODER.encode(obj)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise FormatError("a JSON object repeats a key")
    return obj


def _no_constants(name: str) -> float:
    raise FormatError(f"{name} is not a number")


def details_to_json(details: Mapping[str, Any]) -> str:
    """The JSON text of a details map, as the store keeps it and the export writes it."""
    return _dump(details)


def details_from_json(text: object) -> dict[str, Any]:
    """Details parsed back from untrusted JSON text; FormatError if it is not a map."""
    if not isinstance(text, str):
        raise FormatError("details must be JSON text")
    details = _load_line(text)
    _check_value(details)
    return details


def _load_line(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except FormatError:
        raise
    except (ValueError, RecursionError) as err:  # ValueError: also ints past 4300 digits
        raise FormatError(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise FormatError("a line must hold a JSON object")
    return obj


def _fields(obj: Mapping[str, Any], names: Sequence[str], what: str) -> list[Any]:
    if set(obj) != set(names):
        raise FormatError(f"{what} must have exactly the fields " + ", ".join(sorted(names)))
    return [obj[name] for name in names]


def parse_header(line: str) -> ExportHeader:
    obj = _load_line(line)
    if obj.get("format") != EXPORT_FORMAT:
        raise FormatError("not a VitalBridge event journal export")
    if obj.get("version") != FORMAT_VERSION:
        raise FormatError(f"export version {obj.get('version')!r} is not supported")
    gateway, first_seq, anchor = obj.get("gateway"), obj.get("first_seq"), obj.get("anchor")
    _check_text("gateway", gateway)
    if not _is_int(first_seq) or not 1 <= first_seq <= MAX_SEQ:
        raise FormatError("header needs first_seq (integer >= 1)")
    if not isinstance(obj.get("signers"), list):
        raise FormatError("header needs a list of signers")
    signers = []
    for item in obj["signers"]:
        if not isinstance(item, dict):
            raise FormatError("signers must be objects")
        public_key = _unhex("public_key", item.get("public_key"))
        if len(public_key) != 32:
            raise FormatError("a signer's public key must be 32 bytes")
        cert = item.get("certificate")
        signers.append(Signer(public_key, None if cert is None else _unhex("certificate", cert)))
    times = [obj.get(name) for name in ("exported_at", "since", "until")]
    if not all(t is None or _is_int(t) for t in times):
        raise FormatError("header times must be integer milliseconds")
    return ExportHeader(gateway, first_seq, _hash_bytes("anchor", _unhex("anchor", anchor)),
                        tuple(signers), times[0] or 0, times[1], times[2])


def parse_entry_line(obj: Mapping[str, Any]) -> Entry:
    seq, time_ms, kind, actor, subject, details, prev, hash_, _ = _fields(
        obj, ("seq", "time", "kind", "actor", "subject", "details", "prev", "hash", "type"),
        "an entry")
    return entry_from_fields(seq, time_ms, kind, actor, subject, details,
                             _unhex("prev", prev), _unhex("hash", hash_))


def parse_checkpoint_line(obj: Mapping[str, Any]) -> Checkpoint:
    first, last, head, time_ms, gateway, signed, _ = _fields(
        obj, ("first", "last", "head", "time", "gateway", "cose", "type"), "a checkpoint")
    if not (_is_int(first) and _is_int(last) and _is_int(time_ms) and isinstance(gateway, str)):
        raise FormatError("a checkpoint's first, last, time are integers and gateway is text")
    return Checkpoint(first, last, _unhex("head", head), time_ms, gateway, _unhex("cose", signed))


@dataclass
class ExportReader:
    """An export read from lines: header and checkpoints at once, entries lazily (so a
    large export is verified in constant memory)."""

    header: ExportHeader
    checkpoints: list[Checkpoint]
    _first_entry: Mapping[str, Any] | None
    _lines: Iterator[str]

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> ExportReader:
        """FormatError if the header or a checkpoint line is not of the format."""
        it = iter(lines)
        first = next(it, None)
        if first is None:
            raise FormatError("empty export")
        header = parse_header(first)
        checkpoints: list[Checkpoint] = []
        for line in it:
            if not line.strip():
                continue
            obj = _load_line(line)
            if obj.get("type") != "checkpoint":
                if obj.get("type") != "entry":
                    raise FormatError("a line is neither a checkpoint nor an entry")
                return cls(header, checkpoints, obj, it)
            checkpoints.append(parse_checkpoint_line(obj))
        return cls(header, checkpoints, None, it)

    def entries(self) -> Iterator[Entry]:
        """Entries in file order; FormatError for a line that is not one."""
        if self._first_entry is None:
            return
        yield parse_entry_line(self._first_entry)
        for line in self._lines:
            if not line.strip():
                continue
            obj = _load_line(line)
            if obj.get("type") != "entry":
                raise FormatError("checkpoints must come before the entries")
            yield parse_entry_line(obj)

    def verify(self, trusted_keys: Iterable[bytes] | None = None) -> Report:
        """Verify against `trusted_keys`, or (None) the signers the export names itself,
        which proves consistency, not origin."""
        keys = [s.public_key for s in self.header.signers] if trusted_keys is None else trusted_keys
        return verify_chain(self.entries(), self.checkpoints, gateway_id=self.header.gateway,
                            trusted_keys=keys, start_seq=self.header.first_seq,
                            anchor=self.header.anchor)

