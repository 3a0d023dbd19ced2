"""Retention and disk-budget decisions for the journal: pure functions over plain data, no I/O.

The store feeds these functions rows it read (oldest first) and applies what they decide; the
rules live here so they can be tested exhaustively without a database.

Budget order (docs/journal.md explains why):
  1. routine messages the centre already confirmed (`received`), oldest first — even before
     their retention ends: the centre holds them, so only the local copy is lost;
  2. quarantined input, oldest first — evidence, but not patient data;
  3. thinning of routine messages not yet confirmed, oldest first: of each run of k blocks
     (~`block_bytes` of consecutive messages, i.e. a window of time across all devices) the
     first is kept and the others deleted.
Why blocks and not "every k-th message": SQLite returns a b-tree page to the freelist only
when it is nearly empty (it rebalances a page below ~1/3 full). Deleting every 2nd or 3rd row
leaves every page of the region partly full and frees almost nothing — measured: deleting
1268 of 3000 interleaved rows freed 2% of what they occupied. Deleting whole runs of
consecutive rows empties whole pages. Every device loses the same windows of time.
Critical readings and alarms (priority >= 1) are never chosen, whatever the pressure.
Every step that removes something returns a BudgetAction whose `description` the caller raises
as a technical alarm; the store also records it in its `deletions` table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

ROUTINE = 0

# Bytes a message row costs beyond its payload, session and device id: record header, the
# three index entries (digest, delivery, age) and page slack. Measured ~140 B with 300 B payloads
# on SQLite 3.40; only an estimate — the store re-measures pages after deleting.
ROW_OVERHEAD_BYTES = 140

STEP_RECEIVED_EARLY = "budget:received-before-retention"
STEP_QUARANTINE = "budget:quarantine"
STEP_THINNED = "budget:thinned-unsent"


@dataclass(frozen=True, slots=True)
class RowInfo:
    """What the budget policy needs to know about one message row."""

    id: int
    device_id: str | None
    kind: str
    priority: int
    state: str
    received_at: float
    size: int  # estimated bytes the row occupies


@dataclass(frozen=True, slots=True)
class QuarantineInfo:
    id: int
    received_at: float
    size: int


@dataclass(frozen=True, slots=True)
class BudgetAction:
    """One kind of deletion the policy decided, described for the technical alarm."""

    step: str
    ids: tuple[int, ...]
    bytes: int
    oldest: float
    newest: float
    devices: tuple[str, ...]
    description: str


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    need_bytes: int  # estimated bytes to free to get back to the target
    actions: tuple[BudgetAction, ...]
    shortfall_bytes: int  # need that no allowed deletion can cover (0 when covered)

    @property
    def planned_bytes(self) -> int:
        return sum(action.bytes for action in self.actions)

    def ids(self, step: str) -> tuple[int, ...]:
        return tuple(i for action in self.actions if action.step == step for i in action.ids)


def retention_cutoff(now: float, retention_s: float) -> float:
    """Rows received at or before this wall time have completed their retention."""
    if not math.isfinite(now):
        raise ValueError("now must be a finite time")
    if not math.isfinite(retention_s) or retention_s <= 0:
        raise ValueError("retention must be a positive number of seconds")
    return now - retention_s


def retention_elapsed(state: str, received_at: float, now: float, retention_s: float) -> bool:
    """The normal exit rule: confirmed by the centre AND older than the retention period."""
    return state == "received" and received_at <= retention_cutoff(now, retention_s)


def bytes_to_free(used_bytes: int, budget_bytes: int, target_fraction: float) -> int:
    """Nothing while within budget; once over it, free down to target_fraction of the budget
    so that the next few commits do not trigger another round at once."""
    if budget_bytes <= 0:
        raise ValueError("budget must be positive")
    if not 0 < target_fraction <= 1:
        raise ValueError("target_fraction must be in (0, 1]")
    if used_bytes <= budget_bytes:
        return 0
    return used_bytes - int(budget_bytes * target_fraction)


def plan_budget(
    used_bytes: int,
    budget_bytes: int,
    *,
    received: Iterable[RowInfo],
    quarantine: Iterable[QuarantineInfo],
    unsent: Iterable[RowInfo],
    keep_every: int = 2,
    block_bytes: int = 64 * 1024,
    target_fraction: float = 0.9,
) -> BudgetPlan:
    """Decide what to delete to bring `used_bytes` back under the budget.

    `received`, `quarantine` and `unsent` must each be ordered oldest first; they are consumed
    lazily and only as far as needed. Rows that do not qualify for a step (wrong state, or any
    priority above routine) are skipped, whatever the caller passed.
    """
    if keep_every < 2:
        raise ValueError("keep_every must be >= 2 (1 would delete nothing)")
    if block_bytes < 1:
        raise ValueError("block_bytes must be >= 1")
    need = bytes_to_free(used_bytes, budget_bytes, target_fraction)
    if need == 0:
        return BudgetPlan(0, (), 0)

    actions: list[BudgetAction] = []
    remaining = need

    early = [r for r in _take_until(_routine(received, ("received",)), remaining)]
    if early:
        actions.append(_describe_rows(STEP_RECEIVED_EARLY, early, keep_every))
        remaining -= actions[-1].bytes

    if remaining > 0:
        evidence = list(_take_until(iter(quarantine), remaining))
        if evidence:
            actions.append(_describe_quarantine(evidence))
            remaining -= actions[-1].bytes

    if remaining > 0:
        candidates = _routine(unsent, ("stored", "sent"))
        thinned = list(_thin(candidates, keep_every, block_bytes, remaining))
        if thinned:
            actions.append(_describe_rows(STEP_THINNED, thinned, keep_every))
            remaining -= actions[-1].bytes

    return BudgetPlan(need, tuple(actions), max(0, remaining))


def _routine(rows: Iterable[RowInfo], states: tuple[str, ...]) -> Iterable[RowInfo]:
    for row in rows:
        if row.priority == ROUTINE and row.state in states:
            yield row


def _take_until(
    rows: Iterable[RowInfo] | Iterable[QuarantineInfo], need: int
) -> Iterable[RowInfo | QuarantineInfo]:
    freed = 0
    for row in rows:
        if freed >= need:
            return
        freed += row.size
        yield row


def _thin(
    rows: Iterable[RowInfo], keep_every: int, block_bytes: int, need: int
) -> Iterable[RowInfo]:
    """Oldest first, cut the candidates into blocks of ~block_bytes; keep blocks 0, k, 2k...
    and delete the rest, until `need` bytes are freed."""
    block = 0
    filled = 0
    freed = 0
    for row in rows:
        if freed >= need:
            return
        if block % keep_every:
            freed += row.size
            yield row
        filled += row.size
        if filled >= block_bytes:
            block += 1
            filled = 0


def _utc(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return repr(t)


def _describe_rows(step: str, rows: list[RowInfo], keep_every: int) -> BudgetAction:
    size = sum(r.size for r in rows)
    oldest = min(r.received_at for r in rows)
    newest = max(r.received_at for r in rows)
    devices = tuple(sorted({r.device_id for r in rows if r.device_id is not None}))
    span = f"received {_utc(oldest)} .. {_utc(newest)}"
    if step == STEP_RECEIVED_EARLY:
        what = (
            f"deleted {len(rows)} routine messages already confirmed by the centre before "
            "their retention ended"
        )
    else:
        what = (
            f"thinned {len(rows)} routine messages NOT yet confirmed by the centre, keeping "
            f"1 block of time in {keep_every}"
        )
    description = f"disk budget: {what} ({len(devices)} devices, {span}, ~{size} bytes)"
    return BudgetAction(step, tuple(r.id for r in rows), size, oldest, newest, devices, description)


def _describe_quarantine(rows: list[QuarantineInfo]) -> BudgetAction:
    size = sum(r.size for r in rows)
    oldest = min(r.received_at for r in rows)
    newest = max(r.received_at for r in rows)
    description = (
        f"disk budget: deleted {len(rows)} quarantined inputs "
        f"(received {_utc(oldest)} .. {_utc(newest)}, ~{size} bytes)"
    )
    ids = tuple(r.id for r in rows)
    return BudgetAction(STEP_QUARANTINE, ids, size, oldest, newest, (), description)
