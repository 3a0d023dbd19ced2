"""EventRecorder.close() never drops a batch the flusher already took off the queue.

Found as a flaky manual-entry test: close() used to cancel the flusher while it waited for
the busy worker thread, so the batch it held was neither written nor queued again. Here the
worker thread is held busy on purpose, which made the loss happen every time.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from edge_agent.agent.recorder import EventRecorder
from edge_agent.eventlog import EventLogFile


async def close_while_the_worker_is_busy(path: Path) -> None:
    recorder = await EventRecorder.open(path, "gw-1", bytes(32), checkpoint_every=1000,
                                        checkpoint_interval_s=60.0)
    release = threading.Event()
    busy = asyncio.get_running_loop().run_in_executor(recorder._executor, release.wait)
    assert recorder.record("agent.started", "agent", "gateway:gw-1", {"version": "x"})
    await asyncio.sleep(0.2)  # the flusher has taken the entry and waits for the thread
    closing = asyncio.create_task(recorder.close())
    await asyncio.sleep(0.05)
    release.set()
    await closing
    await busy


def test_an_entry_taken_by_the_flusher_is_written_by_close(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    asyncio.run(close_while_the_worker_is_busy(path))
    log = EventLogFile.open_readonly(path)
    try:
        assert [entry.kind for entry in log.entries()] == ["agent.started"]
    finally:
        log.close()
