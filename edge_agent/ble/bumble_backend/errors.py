"""Translate bumble's exceptions into bleak's, so the agent's typed handling is exercised.

Two bumble behaviours need care:
- an ATT Error Response becomes ``att.ATT_Error``: bleak 3.x raises
  ``BleakGATTProtocolError(code)`` for it on every backend;
- when the link drops, bumble *cancels* the future a pending request waits on, so the
  waiting coroutine sees ``CancelledError`` although nobody cancelled its task. That is a
  disconnection, not a cancellation, and must surface as ``BleakError`` — while a real
  cancellation of the caller's task must still propagate untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core

T = TypeVar("T")

NOT_CONNECTED = "Not connected"


def caller_is_being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def bleak_errors(operation: Awaitable[T], what: str) -> T:
    """Await a bumble GATT/SMP operation, raising only bleak exceptions on failure."""
    try:
        return await operation
    except att.ATT_Error as error:
        raise BleakGATTProtocolError(error.error_code) from error
    except asyncio.CancelledError:
        if caller_is_being_cancelled():
            raise
        raise BleakError(f"{what} failed: {NOT_CONNECTED}") from None
    except core.TimeoutError as error:
        raise BleakError(f"{what} failed: ATT transaction timed out") from error
    except core.BaseBumbleError as error:
        raise BleakError(f"{what} failed: {error!r}") from error
