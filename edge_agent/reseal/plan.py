"""Pure re-sealing logic: no files, no clock, no keys on disk.

An `Item` is something stored that only a retired key can verify (its exact bytes and that
key's kid). `reseal_items` asks a checker for each item's verdict under the retired key and a
signer for the statement the current gateway key makes about it (protocol.reseal). An item that
cannot be checked or signed is a failure: the caller must then keep the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from protocol import crypto, reseal
from protocol.errors import ProtocolError, ValidationError

Checker = Callable[["Item"], str]  # -> reseal.VALID | INVALID | KEY_WIPED; raises if it cannot
Signer = Callable[["Item", str], bytes]  # (item, verdict) -> statement (COSE_Sign1 bytes)


@dataclass(frozen=True, slots=True)
class Item:
    kind: str  # protocol.reseal.KINDS
    ref: str  # where it is stored, e.g. "eventlog:checkpoint:120", "journal:message:7"
    original: bytes = b""  # the exact sealed bytes (checkpoint Sign1, device Mac0)
    original_kid: bytes = b""

    @property
    def digest(self) -> bytes:
        return crypto.sha256(self.original)


@dataclass(frozen=True, slots=True)
class Statement:
    kind: str
    ref: str
    digest: bytes
    original_kid: bytes
    verdict: str
    at: int
    signer_kid: bytes
    statement: bytes


@dataclass(frozen=True, slots=True)
class ResealOutcome:
    key: str  # hex kid of the retired key
    statements: tuple[Statement, ...] = ()
    already: int = 0  # items re-sealed by an earlier run (a retry after a failure)
    failures: tuple[tuple[str, str], ...] = ()  # (ref, why)

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, verdict: str) -> int:
        return sum(1 for s in self.statements if s.verdict == verdict)


def reseal_items(key: str, items: Iterable[Item], done: set[tuple[str, bytes, bytes]],
                 check: Checker, sign: Signer, now: int) -> ResealOutcome:
    """Re-seal every item not in `done` ({(kind, digest, original kid)}). One failing item
    does not stop the others; every failure is reported with its reason."""
    statements: list[Statement] = []
    failures: list[tuple[str, str]] = []
    already = 0
    for item in items:
        if (item.kind, item.digest, item.original_kid) in done:
            already += 1
            continue
        try:
            verdict = check(item)
            if verdict not in reseal.VERDICTS:
                raise ValueError(f"checker answered {verdict!r}")
            statement = sign(item, verdict)
            signer = reseal.signer_kid(statement)
        except Exception as exc:  # noqa: BLE001 - reported per item; the key is then kept
            failures.append((item.ref, f"{type(exc).__name__}: {exc}"))
            continue
        statements.append(Statement(item.kind, item.ref, item.digest, item.original_kid,
                                    verdict, now, signer, statement))
    return ResealOutcome(key, tuple(statements), already, tuple(failures))


@dataclass(frozen=True, slots=True)
class Problem:
    ref: str
    reason: str  # bad-signature | unknown-signer | altered | not-resealed | invalid-verdict


def check_statements(statements: Iterable[Statement], stored: dict[str, bytes],
                     trusted: dict[bytes, bytes], gateway_id: str) -> tuple[int, list[Problem]]:
    """Verify stored statements: signed by a trusted gateway key (kid -> public key), for this
    gateway, and matching the item still stored at `ref` (items purged by retention are
    skipped). Returns (statements verified, problems)."""
    verified = 0
    problems: list[Problem] = []
    for row in statements:
        public = trusted.get(row.signer_kid)
        if public is None:
            problems.append(Problem(row.ref, "unknown-signer"))
            continue
        try:
            found = reseal.verify(public, row.statement, stored.get(row.ref), gateway_id)
        except ValidationError as exc:
            problems.append(Problem(row.ref, "altered" if exc.field == "digest"
                                    else "bad-statement"))
            continue
        except ProtocolError:
            problems.append(Problem(row.ref, "bad-signature"))
            continue
        if (found.kind, found.digest, found.original_kid, found.verdict) != \
                (row.kind, row.digest, row.original_kid, row.verdict):
            problems.append(Problem(row.ref, "bad-statement"))
            continue
        verified += 1
        if found.verdict == reseal.INVALID:
            problems.append(Problem(row.ref, "invalid-verdict"))
    return verified, problems


def missing(items: Iterable[Item], statements: Iterable[Statement]) -> list[Problem]:
    """Items of destroyed keys that no statement covers: they can no longer be verified."""
    covered = {(s.kind, s.digest, s.original_kid) for s in statements}
    return [Problem(i.ref, "not-resealed") for i in items
            if (i.kind, i.digest, i.original_kid) not in covered]
