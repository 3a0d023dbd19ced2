"""Reconnect delays: exponential growth with random jitter (pure; no I/O, no clock).

A fleet of gateways that lost the same broker must not reconnect in lock-step, so each delay
is drawn from [base * (1 - jitter), base] where base grows by `multiplier` per failed attempt up
to `maximum_s`. A connection that stayed up for `stable_after_s` resets the growth. One that
dropped sooner restarts the growth from the number of such short connections in a row, not
from the failed attempts of the outage before it: a broker that accepts and immediately kicks
us (a duplicate client id, an ACL reload) is not hammered at the minimum delay, yet a broker
that restarts soon after an outage ended is retried within a second or two instead of at the
outage's 30-60 s step (found by the fleet runs: a red alarm waited that long with the broker
up).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float = 0.5
    maximum_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the base delay that may be removed at random
    stable_after_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("initial_s", "maximum_s", "multiplier", "jitter", "stable_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"backoff {name} must be a finite number")
        if self.initial_s <= 0 or self.maximum_s < self.initial_s:
            raise ValueError("backoff needs 0 < initial_s <= maximum_s")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")
        if self.stable_after_s < 0:
            raise ValueError("backoff stable_after_s must be >= 0")


def base_delay(policy: BackoffPolicy, attempt: int) -> float:
    """The un-jittered delay before reconnect attempt number `attempt` (0 = first)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # Compare exponents instead of computing multiplier**attempt, which overflows.
    if policy.multiplier == 1 or attempt * math.log(policy.multiplier) >= math.log(
        policy.maximum_s / policy.initial_s
    ):
        return policy.initial_s if policy.multiplier == 1 else policy.maximum_s
    return policy.initial_s * policy.multiplier**attempt


def jittered_delay(policy: BackoffPolicy, attempt: int, unit_random: float) -> float:
    """`base_delay` with jitter; `unit_random` is a uniform draw from [0, 1)."""
    if not 0 <= unit_random < 1:
        raise ValueError("unit_random must be in [0, 1)")
    return base_delay(policy, attempt) * (1 - policy.jitter * unit_random)


class Backoff:
    """Counts failed attempts; `next_delay()` after each failure, `connected()` and
    `disconnected()` around each connection. Not thread-safe: one owner (the network thread)."""

    def __init__(
        self, policy: BackoffPolicy | None = None, rng: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy or BackoffPolicy()
        self._rng = rng
        self.attempts = 0
        self.short_connections = 0  # consecutive connections that ended before stable_after_s
        self._up_since: float | None = None

    def next_delay(self) -> float:
        delay = jittered_delay(self.policy, self.attempts, self._rng())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0

    def connected(self, now: float) -> None:
        self._up_since = now

    def disconnected(self, now: float) -> None:
        """Reset the growth if the connection that just ended had been stable; otherwise
        grow it by one step per short connection in a row."""
        if self._up_since is None:
            return
        if now - self._up_since >= self.policy.stable_after_s:
            self.short_connections = 0
            self.reset()
        else:
            self.short_connections += 1
            self.attempts = self.short_connections
        self._up_since = None
