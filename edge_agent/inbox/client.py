"""The command side: enqueue an entry, wait a little for the running agent's outcome.

An entry is durable once `submit` has stored it; waiting only decides what the person is told.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.inbox.store import Entry, InboxStore

WAIT_POLL_S = 0.05
# A running agent refreshes its heartbeat every consumer.HEARTBEAT_S (5 s).
AGENT_ALIVE_S = 15.0

QUEUED = "queued"  # no outcome yet: the agent is not running, or busy


def submit(data_dir: Path, kind: str, body: Any, actor: str, *, wait_s: float,
           clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Enqueue, then wait up to `wait_s` for the outcome -> a result document:
    {id, kind, state: accepted|refused|queued, reason, processed_at, agent_running}."""
    with InboxStore.open(data_dir) as store:
        entry = store.enqueue(kind, body, actor, clock())
        deadline = time.monotonic() + max(0.0, wait_s)
        while not entry.done and time.monotonic() < deadline:
            time.sleep(WAIT_POLL_S)
            entry = store.get(entry.id)
        polled = store.consumer_polled_at()
    running = polled is not None and clock() - polled <= AGENT_ALIVE_S
    return result(entry, running)


def result(entry: Entry, agent_running: bool) -> dict[str, Any]:
    return {"id": entry.id, "kind": entry.kind, "state": entry.outcome or QUEUED,
            "reason": entry.reason, "processed_at": entry.processed_at,
            "agent_running": agent_running}
