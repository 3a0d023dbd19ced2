"""The running agent's destroyer (hook in edge_agent/service.py `_lifecycle_tick`).

Re-seals first (keeper.Resealer, signed by the agent's CURRENT key, with the session MAC keys
still in the session store), then: retired gateway keys are wiped from keys/retired/, other
keys go to the agent's own destroyer (device session keys). A session key the session table
still owes a device (SessionTable.owed: it may re-send its outbox) is left alone until it is
no longer owed, so its rows are re-sealed `valid`, not `key-wiped`. A failed re-seal keeps the key,
logs an error and journals a `maintenance.fault` (component "lifecycle", fault
"reseal-failed"); the task shows as overdue after its ten-day deadline.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.ca import keyfiles
from edge_agent.lifecycle.engine import Destroyer, DestructionTask
from edge_agent.reseal.keeper import Resealer, wipe_retired_gateway_key
from edge_agent.reseal.plan import ResealOutcome

log = logging.getLogger(__name__)
SIGNING_KEY_FILE = "gateway-signing.key"


def reseal_guard(service: Any, inner: Destroyer) -> Destroyer:
    """A destroyer for `service` (an AgentService) wrapping its own `inner` one."""
    keys_dir = service.config.gateway.keys_dir
    mac_keys = {row.kid: row.device_mac_key for row in service.state_store.sessions()
                if row.device_mac_key is not None}

    def failed(task: DestructionTask, outcome: ResealOutcome) -> None:
        ref, why = outcome.failures[0]
        log.error("key %s is kept: %d items could not be re-sealed (%s: %s); it must be "
                  "destroyed by %d", task.kid, len(outcome.failures), ref, why, task.deadline)
        service.recorder.record("maintenance.fault", "agent", f"key:{task.kid}", {
            "component": "lifecycle", "fault": "reseal-failed", "severity": "error",
            "detail": f"{len(outcome.failures)} items not re-sealed; kept"[:200]})

    def destroy(task: DestructionTask) -> bool:
        if task.holder_kind == "gateway":
            wiped = wipe_retired_gateway_key(keys_dir, task)
            if wiped and task.purpose == "agreement":  # SESSIONS: no hello answered under it
                service.directory.gateway_keys().forget_agreement(bytes.fromhex(task.kid))
            return wiped
        return inner(task)

    resealer = Resealer(service.config.gateway.data_dir, service.gateway_id,
                        keyfiles.load_ed25519_seed(keys_dir / SIGNING_KEY_FILE),
                        service.registry, mac_key_of=mac_keys.get,
                        record=service.recorder.record, on_failure=failed)
    guarded = resealer.guard(destroy, service._clock)

    def keep_owed(task: DestructionTask) -> bool:
        # SESSIONS: a session key a device may still re-send under is neither re-sealed nor
        # wiped yet (SessionTable.owed); its rows are re-sealed `valid` once it may go.
        if task.purpose == "session" and task.held_at == "gateway":
            sess = service.sessions.get(bytes.fromhex(task.kid))
            if sess is not None and service.sessions.owed(sess, service._clock()) is not None:
                return False
        return guarded(task)
    return keep_owed
