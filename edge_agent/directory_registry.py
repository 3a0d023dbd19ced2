"""The verifier's DeviceDirectory over the real registry and lifecycle engine.

The verifier asks several questions per message (certificate, its status, may_accept,
withdrawal, currency, and the patient per reading); the registry answers each with a few
SQLite queries. Answers are therefore cached per device, and the cache is dropped whenever
its answers might have changed:

* any commit to the registry file, by this process or another one (the technician's
  `vitalbridge` commands write the same file): SQLite's `PRAGMA data_version`, read on a
  connection of our own, changes with every commit made through another connection, so
  one cheap query tells;
* a lifecycle event of the engine (compromise, renewal, retirement), via `invalidate()`;
* the next instant at which any key or certificate changes state by time alone (expiry,
  renewal due), from `LifecycleEngine.next_event` — computed once per cache fill.

`data_version` is read at most every `recheck_s` (50 ms by default): a compromise declared
by a technician in another process takes effect within that time.

Registry failures (locked, disk gone) raise `DirectoryUnavailable`, never a wrong answer;
unknown devices get None / False / () as the protocol requires. The registry and this
adapter must be used from one thread (the event loop).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from edge_agent.lifecycle import states
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.pipeline.directory import DirectoryUnavailable, GatewayKeys
from edge_agent.registry.store import (
    Binding,
    CertificateRecord,
    NotFoundError,
    Registry,
    RegistryError,
)

T = TypeVar("T")

_ENDS = (states.COMPROMISED, states.REVOKED, states.RETIRED)  # most decisive first


@dataclass(slots=True)
class _DeviceFacts:
    """What the registry says about one device, loaded once per cache generation."""

    known: bool
    status: str | None = None
    end_reason: str | None = None
    ended_at: int | None = None
    currency: Callable[[int], tuple[str, ...]] | None = None
    certificates: list[CertificateRecord] = field(default_factory=list)  # oldest first
    bindings: list[Binding] = field(default_factory=list)
    # kid -> (answer, instant it was computed at); valid up to the time horizon
    accept: dict[bytes, tuple[tuple[bool, str], int]] = field(default_factory=dict)
    # certificate index -> its end steps as (state, instant), most decisive first
    ends: dict[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    currency_at: tuple[int, tuple[str, ...]] | None = None  # the last currency answer


class RegistryDirectory:
    """`DeviceDirectory` for the running agent (see the module docstring)."""

    def __init__(self, registry: Registry, engine: LifecycleEngine, keys: GatewayKeys, *,
                 recheck_s: float = 0.05, monotonic: Callable[[], float] = time.monotonic
                 ) -> None:
        self.registry = registry
        self.engine = engine
        self._keys = keys
        self._recheck_s = recheck_s
        self._monotonic = monotonic
        self._watch = sqlite3.connect(f"file:{registry.path}?mode=ro", uri=True,
                                      isolation_level=None)
        self._version: int | None = None
        self._checked_at = -1.0
        self._devices: dict[str, _DeviceFacts] = {}
        self._horizon: int | None = None  # acceptance answers hold for now < horizon
        self._horizon_base = 0
        self.fills = 0  # cache generations loaded (tests and metrics)

    def close(self) -> None:
        self._watch.close()

    def invalidate(self) -> None:
        """Forget every cached answer (the service calls this on lifecycle events)."""
        self._devices.clear()
        self._horizon = None

    # -- cache ----------------------------------------------------------------------------

    def _guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except sqlite3.Error as exc:
            raise DirectoryUnavailable(f"registry unavailable: {exc}") from exc

    def _fresh(self) -> None:
        tick = self._monotonic()
        if tick - self._checked_at >= self._recheck_s:
            self._checked_at = tick
            version = self._guard(lambda: self._watch.execute("PRAGMA data_version")
                                  .fetchone()[0])
            if version != self._version:
                self._version = version
                self.invalidate()

    def _facts(self, device_id: str) -> _DeviceFacts:
        # Several questions per batch: the freshness check of _fresh inlined (same test)
        if self._monotonic() - self._checked_at >= self._recheck_s:
            self._fresh()
        facts = self._devices.get(device_id)
        if facts is None:
            facts = self._devices[device_id] = self._guard(lambda: self._load(device_id))
            self.fills += 1
        return facts

    def _horizon_after(self, now: int) -> int:
        """The next instant after `now` at which a key or certificate changes state by time
        (cached acceptance answers stay valid until then)."""
        if self._horizon is None or not self._horizon_base <= now < self._horizon:
            self._horizon = self._guard(lambda: self.engine.next_event(now)) or (1 << 62)
            self._horizon_base = now
            for facts in self._devices.values():  # computed in another window of time
                facts.accept.clear()
        return self._horizon

    def _load(self, device_id: str) -> _DeviceFacts:
        reg = self.registry
        try:
            device = reg.device(device_id)
        except (NotFoundError, RegistryError):
            return _DeviceFacts(known=False)
        certificates = []
        for key in reg.keys("device", device_id, "signing"):
            try:
                certificates.append(reg.certificate_of_key(key.kid, "cwt"))
            except NotFoundError:
                continue
        certificates.sort(key=lambda c: (c.not_before, c.id))
        return _DeviceFacts(True, device.status, device.end_reason, device.ended_at,
                            device.currency_flags, certificates,
                            reg.bindings(device_id=device_id))

    @staticmethod
    def _certificate_index(facts: _DeviceFacts, at: int) -> int | None:
        """Index of the newest certificate of the device issued by `at` (renewals take over
        from their issue time); the oldest one for instants before the first."""
        if not facts.certificates:
            return None
        chosen = 0
        for index, record in enumerate(facts.certificates):
            if record.not_before <= at:
                chosen = index
        return chosen

    # -- DeviceDirectory ----------------------------------------------------------------------

    def gateway_keys(self) -> GatewayKeys:
        return self._keys

    def certificate(self, device_id: str, at: int) -> bytes | None:
        facts = self._facts(device_id)
        index = self._certificate_index(facts, at)
        return None if index is None else facts.certificates[index].raw

    def certificate_status(self, device_id: str, at: int) -> str | None:
        facts = self._facts(device_id)
        index = self._certificate_index(facts, at)
        if index is None:
            return None
        ends = facts.ends.get(index)
        if ends is None:
            # record.facts.as_of(at) knows a step when it happened at or before `at`
            steps = facts.certificates[index].facts.step_times()
            ends = facts.ends[index] = tuple((end, steps[end]) for end in _ENDS if end in steps)
        for end, since in ends:
            if since <= at:
                return end
        return None

    def patient_at(self, device_id: str, at: int) -> str | None:
        for binding in self._facts(device_id).bindings:
            if binding.since <= at and (binding.until is None or at < binding.until):
                return binding.patient_id
        return None

    def may_accept(self, device_id: str, key_id: bytes, now: int) -> tuple[bool, str]:
        facts = self._facts(device_id)
        if not facts.known:
            return False, f"device {device_id!r} is not enrolled"
        horizon = self._horizon_after(now)
        cached = facts.accept.get(key_id)
        if cached is not None and cached[1] <= now < horizon:  # no state change in between
            return cached[0]
        answer = self._guard(lambda: self.engine.may_accept(device_id, key_id, now))
        facts.accept[key_id] = (answer, now)
        return answer

    def withdrawn(self, device_id: str, now: int) -> str | None:
        facts = self._facts(device_id)
        if facts.status != states.COMPROMISED or facts.ended_at is None or facts.ended_at > now:
            return None
        return facts.end_reason or "compromised"

    def currency_flags(self, device_id: str, now: int) -> tuple[str, ...]:
        facts = self._facts(device_id)
        if facts.currency is None:
            return ()
        last = facts.currency_at  # a pure function of `now`: batches of one second share it
        if last is not None and last[0] == now and type(now) is int:
            return last[1]
        flags = facts.currency(now)
        facts.currency_at = (now, flags)
        return flags

    def session_started(self, device_id: str, session_id: bytes, now: int) -> None:
        """Journal the session key (LifecycleEngine.start_session). A refusal is raised as
        the ProtocolError it is (the verifier notes it and the session still opens)."""
        try:
            self._guard(lambda: self.engine.start_session(device_id, session_id, now))
        finally:
            self._devices.pop(device_id, None)  # a new key: acceptance answers change
