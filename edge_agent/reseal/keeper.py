"""Re-seal before destruction: the destroyer the lifecycle scheduler calls.

`Resealer.guard(inner)` wraps a destroyer. For a retired gateway signing key it re-seals every
event-log checkpoint that key signed; for a device session key every sealed journal row of that
session; then it stores the statements (reseal.sqlite3), journals a `key.resealed` event and
only then lets `inner` destroy the key. If anything could not be re-sealed the key is kept
(the destroyer answers False), `on_failure` raises the technical alarm, and the lifecycle
engine reports the task `overdue` once the ten-day deadline passes. A retry re-seals only
what is still missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.ca import keyfiles
from edge_agent.lifecycle.engine import Destroyer, DestructionTask
from edge_agent.lifecycle.gateway_keys import RETIRED_DIR
from edge_agent.registry.store import Registry
from edge_agent.reseal import sources
from edge_agent.reseal.plan import ResealOutcome, reseal_items
from edge_agent.reseal.store import ResealStore
from protocol import cose, crypto, reseal

ACTOR = "lifecycle"

Recorder = Callable[[str, str, str, dict[str, Any]], None]  # (kind, actor, subject, details)


def retired_key_path(keys_dir: Path, kid: str) -> Path:
    return keys_dir / RETIRED_DIR / f"{kid}.key"


def wipe_retired_gateway_key(keys_dir: Path, task: DestructionTask) -> bool:
    """Destroy a retired gateway key file (zeroed, fsynced, unlinked). True once no copy is
    left under keys/retired/; False for anything that is not a gateway-held gateway key."""
    if task.holder_kind != "gateway" or task.held_at != "gateway":
        return False
    path = retired_key_path(keys_dir, task.kid)
    if path.exists():
        keyfiles.remove_private(path)
    return not path.exists()


@dataclass
class Resealer:
    data_dir: Path
    gateway_id: str
    seed: bytes  # the CURRENT gateway signing seed: it signs the statements
    registry: Registry
    mac_key_of: Callable[[bytes], bytes | None] = lambda kid: None
    record: Recorder | None = None
    on_failure: Callable[[DestructionTask, ResealOutcome], None] | None = None

    def __repr__(self) -> str:  # never print key material
        return f"Resealer({self.gateway_id!r})"

    @property
    def signer_kid(self) -> bytes:
        return cose.key_id(crypto.ed25519_public_key(self.seed))

    def reseal(self, task: DestructionTask, now: int) -> ResealOutcome | None:
        """Re-seal what only `task`'s key can verify; None when that key seals nothing stored
        (agreement and TLS keys)."""
        kid = bytes.fromhex(task.kid)
        if task.holder_kind == "gateway" and task.purpose == "signing":
            if kid == self.signer_kid:
                return ResealOutcome(task.kid, failures=(
                    ("gateway", "this is the current signing key; it cannot vouch for "
                     "itself: renew the gateway first"),))
            public = self.registry.key(task.kid).public_key
            if public is None:
                return ResealOutcome(task.kid, failures=(("registry", "no public key"),))
            events = self.data_dir / sources.EVENTS_FILE
            items = sources.checkpoint_items(events, kid)
            check = sources.checkpoint_checker(self.gateway_id, public, events)
        elif task.purpose == "session":
            items = sources.journal_items(self.data_dir / sources.JOURNAL_FILE, kid)
            check = sources.seal_checker(self.mac_key_of)
        else:
            return None

        def sign(item: sources.Item, verdict: str) -> bytes:
            return reseal.create(self.seed, self.gateway_id, item.kind, item.original,
                                 item.original_kid, verdict, now)

        with ResealStore.open_in(self.data_dir) as store:
            outcome = reseal_items(task.kid, items, store.done(kid), check, sign, now)
            try:
                store.add(outcome.statements)
            except Exception as exc:  # noqa: BLE001 - nothing stored: keep the key, alarm
                outcome = ResealOutcome(task.kid, (), outcome.already, outcome.failures + (
                    ("reseal.sqlite3", f"{type(exc).__name__}: {exc}"),))
        self._journal(task, outcome)
        return outcome

    def _journal(self, task: DestructionTask, outcome: ResealOutcome) -> None:
        if self.record is None:
            return
        details: dict[str, Any] = {
            "key_id": task.kid, "new_key_id": self.signer_kid.hex(), "owner": task.holder_id,
            "items": len(outcome.statements), "valid": outcome.count(reseal.VALID),
            "invalid": outcome.count(reseal.INVALID), "wiped": outcome.count(reseal.KEY_WIPED),
            "failed": len(outcome.failures)}
        if outcome.statements:
            details["digest"] = crypto.sha256(b"".join(
                s.statement for s in outcome.statements)).hex()
        if outcome.failures:
            ref, why = outcome.failures[0]
            details["reason"] = f"{ref}: {why}"[:200]
        self.record("key.resealed", ACTOR, f"key:{task.kid}", details)

    def guard(self, inner: Destroyer, clock: Callable[[], float]) -> Destroyer:
        """A destroyer that re-seals first and destroys (through `inner`) only when every
        item was re-sealed."""
        def destroy(task: DestructionTask) -> bool:
            outcome = self.reseal(task, int(clock()))
            if outcome is not None and not outcome.ok:
                if self.on_failure is not None:
                    self.on_failure(task, outcome)
                return False
            return inner(task)
        return destroy


def verify_reseals(data_dir: Path, gateway_id: str, registry: Registry
                   ) -> dict[str, Any]:
    """Check the re-seal table: every statement signed by one of this gateway's signing keys
    and matching the item still stored; every item of a DESTROYED key re-sealed."""
    from edge_agent.reseal import plan

    keys = registry.keys("gateway", gateway_id, "signing")
    trusted = {bytes.fromhex(k.kid): k.public_key for k in keys if k.public_key is not None}
    stored = sources.stored_originals(data_dir)
    with ResealStore.open_in(data_dir) as store:
        statements = store.statements()
    verified, problems = plan.check_statements(statements, stored, trusted, gateway_id)
    destroyed = [k for k in registry.keys() if k.facts.destroyed is not None]
    for key in destroyed:
        kid = bytes.fromhex(key.kid)
        if key.holder_kind == "gateway" and key.purpose == "signing":
            items = sources.checkpoint_items(data_dir / sources.EVENTS_FILE, kid)
        elif key.purpose == "session":
            items = sources.journal_items(data_dir / sources.JOURNAL_FILE, kid)
        else:
            continue
        problems += plan.missing(items, statements)
    return {"statements": len(statements), "verified": verified,
            "destroyed_keys": len(destroyed),
            "problems": [{"ref": p.ref, "reason": p.reason} for p in problems],
            "verdict": "pass" if not problems else "fail"}
