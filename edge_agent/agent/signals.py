"""The hand-off between synchronous producers and one consumer task on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class WorkSignal:
    """Wakes the consumer when work is added; tells anyone waiting when it ran out of work."""

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def added(self) -> None:
        """Call after adding work (synchronously, on the event loop)."""
        self._idle.clear()
        self._wake.set()

    async def work(self, has_work: Callable[[], bool]) -> None:
        """The consumer: return once `has_work()`; while there is none it counts as idle."""
        while not has_work():
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    async def idle(self) -> None:
        """Return once the consumer found nothing left to do."""
        await self._idle.wait()
