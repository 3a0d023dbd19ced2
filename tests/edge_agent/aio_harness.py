"""Shared by the asyncio test modules here: run one scenario in a fresh, bounded loop."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


def run_bounded(scenario: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """Run `scenario` in a fresh loop within `timeout_s`; any error logged by a loop
    callback (which asyncio would otherwise only print) fails the test."""
    loop_errors: list[dict[str, Any]] = []

    async def bounded() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        async with asyncio.timeout(timeout_s):
            await scenario()

    asyncio.run(bounded())
    assert not loop_errors, [str(ctx.get("exception") or ctx["message"]) for ctx in loop_errors]
