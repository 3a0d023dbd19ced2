"""The BlueZ pairing agent: who may bond with this gateway, and how (docs/ble-ingest.md).

bleak registers no `org.bluez.Agent1`, so BlueZ asks the *default agent* whenever pairing
needs a decision (a device that starts pairing itself, a numeric comparison, a passkey).
This module is that agent:

* `decide(method, device_path, allowed, technician)`: the pure policy. Only devices whose
  address is in the allow-list (the `ble.devices` configured with `bonding = true`) are
  ever accepted; Just Works is accepted unattended; passkey entry, passkey display and
  numeric comparison need a technician (`vitalbridge ble pair`); legacy PIN codes and
  everything else are rejected.
* `PairingAgent`: the `org.bluez.Agent1` D-Bus object that applies the policy and answers
  BlueZ, rejecting with `org.bluez.Error.Rejected` (or `.Canceled`). Each final answer
  (accepted or refused, after the technician when one is asked) goes to `on_decision` as a
  `PairingOutcome`: the commands record it in the tamper-evident event journal.
* `register_agent` / `unregister_agent` / `serve_agent`: `AgentManager1` registration, kept
  alive across bluetoothd restarts (`NameOwnerChanged`) and `Release`.

Passkeys never reach the log: they go to the `Technician` only.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the
# evaluated annotations, and a postponed "None" return annotation breaks it.
import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

log = logging.getLogger("vitalbridge.ble.pairing")

BLUEZ = "org.bluez"
AGENT_MANAGER_PATH = "/org/bluez"
AGENT_MANAGER = "org.bluez.AgentManager1"
AGENT_INTERFACE = "org.bluez.Agent1"
AGENT_PATH = "/org/vitalbridge/pairing_agent"
ERROR_REJECTED = "org.bluez.Error.Rejected"
ERROR_CANCELED = "org.bluez.Error.Canceled"

JUST_WORKS = "NoInputNoOutput"  # unattended: no passkey can be shown or typed
TECHNICIAN = "KeyboardDisplay"  # `vitalbridge ble pair`: a person reads and types passkeys

ACCEPT, ASK, REJECT = "accept", "ask", "reject"

# BlueZ asks RequestAuthorization for Just Works it did not start through Device1.Pair
# (e.g. a meter's security request), AuthorizeService for an incoming service connection.
_UNATTENDED_METHODS = frozenset(("RequestAuthorization", "AuthorizeService"))
_PASSKEY_METHODS = frozenset(("RequestPasskey", "DisplayPasskey", "RequestConfirmation"))
_PIN_METHODS = frozenset(("RequestPinCode", "DisplayPinCode"))
_DEVICE_PATH = re.compile(r"/org/bluez/[A-Za-z0-9_]+/dev_((?:[0-9A-Fa-f]{2}_){5}[0-9A-Fa-f]{2})")
_DECISIONS_KEPT = 256
_MAX_PASSKEY = 999_999  # six decimal digits (Bluetooth Core, SMP passkey entry)


# --- the policy (pure) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer one agent request: `action` is ACCEPT (reply at once), ASK (the
    technician decides) or REJECT; `reason` is safe to log (it never holds a passkey)."""

    action: str
    reason: str
    address: str | None


@dataclass(frozen=True, slots=True)
class PairingOutcome:
    """The agent's final answer to one request: `accepted` or not, and why (never a
    passkey). `address` is None when BlueZ named no readable device object."""

    method: str
    address: str | None
    accepted: bool
    reason: str
    capability: str


def address_from_device_path(path: object) -> str | None:
    """`/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF` -> `AA:BB:CC:DD:EE:FF`; None for anything else
    (BlueZ names device objects this way; a path we cannot read is never trusted)."""
    if not isinstance(path, str):
        return None
    match = _DEVICE_PATH.fullmatch(path)
    return match.group(1).replace("_", ":").upper() if match else None


def normalise_allow_list(addresses: Iterable[str]) -> frozenset[str]:
    """Upper-case `AA:BB:...` addresses; `ValueError` naming the first malformed one."""
    allowed = set()
    for address in addresses:
        path = "/org/bluez/hci0/dev_" + address.replace(":", "_") if isinstance(address, str) \
            else None
        normal = address_from_device_path(path)
        if normal is None:
            raise ValueError(f"not a Bluetooth address: {address!r}")
        allowed.add(normal)
    return frozenset(allowed)


def decide(method: str, device_path: object, allowed: frozenset[str],
           technician: bool) -> Decision:
    """The agent's policy for one `org.bluez.Agent1` request about `device_path`.

    `allowed`: upper-case addresses configured for bonding; `technician`: a person is at
    the gateway (`vitalbridge ble pair`) and can read or type a passkey."""
    address = address_from_device_path(device_path)
    if address is None:
        return Decision(REJECT, "not a BlueZ device object", None)
    if address not in allowed:
        return Decision(REJECT, "not configured for bonding", address)
    if method in _UNATTENDED_METHODS:
        return Decision(ACCEPT, "Just Works with a device configured for bonding", address)
    if method in _PASSKEY_METHODS:
        if technician:
            return Decision(ASK, "passkey pairing with a technician", address)
        return Decision(REJECT, "passkey pairing needs a technician (vitalbridge ble pair)",
                        address)
    if method in _PIN_METHODS:
        return Decision(REJECT, "legacy PIN pairing is not used", address)
    return Decision(REJECT, "unknown agent request", address)


# --- the person at the gateway (I/O lives in edge_agent/commands/pairing.py) -------------


class Technician(Protocol):
    """Asked only for devices the policy allows, only in `ASK` cases."""

    async def enter_passkey(self, address: str) -> int | None:
        """The six digits the device displays; None when the technician declines."""

    async def show_passkey(self, address: str, passkey: int, entered: int) -> None:
        """Show the passkey to type on the device (`entered` keys typed so far)."""

    async def confirm_passkey(self, address: str, passkey: int) -> bool:
        """True when the device shows the same six digits."""

    def cancelled(self) -> None:
        """BlueZ withdrew the pending request (timeout, device gone)."""


# --- the D-Bus object --------------------------------------------------------------------


class PairingAgent(ServiceInterface):
    """`org.bluez.Agent1` applying `decide` with the current allow-list.

    `allowed` may be replaced at any time (`set_allowed`, e.g. on a configuration reload);
    `released` is set when BlueZ calls Release (the registration is gone). `on_decision` is
    called with every final answer before BlueZ receives it; its exceptions are logged, never
    turned into an answer (recording must not change the decision)."""

    def __init__(self, allowed: Iterable[str], technician: Technician | None = None,
                 on_decision: Callable[[PairingOutcome], None] | None = None) -> None:
        super().__init__(AGENT_INTERFACE)
        self._allowed = normalise_allow_list(allowed)
        self._technician = technician
        self._on_decision = on_decision
        self._pending: asyncio.Future | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.released = asyncio.Event()
        # The latest answers, for status and tests; bounded: a device may retry forever.
        self.decisions: deque[tuple[str, Decision]] = deque(maxlen=_DECISIONS_KEPT)

    @property
    def capability(self) -> str:
        return TECHNICIAN if self._technician is not None else JUST_WORKS

    @property
    def allowed(self) -> frozenset[str]:
        return self._allowed

    def set_allowed(self, addresses: Iterable[str]) -> None:
        self._allowed = normalise_allow_list(addresses)

    def _decide(self, method: str, device: str) -> Decision:
        decision = decide(method, device, self._allowed, self._technician is not None)
        self.decisions.append((method, decision))
        level = logging.INFO if decision.action != REJECT else logging.WARNING
        log.log(level, "pairing agent: %s from %s: %s (%s)", method,
                decision.address or "unknown device", decision.action, decision.reason)
        if decision.action == REJECT:
            self._refuse(method, decision.address, decision.reason)
        if decision.action == ACCEPT:
            self._report(method, decision.address, True, decision.reason)
        return decision

    def _report(self, method: str, address: str | None, accepted: bool, reason: str) -> None:
        if self._on_decision is None:
            return
        try:
            self._on_decision(PairingOutcome(method, address, accepted, reason,
                                             self.capability))
        except Exception:
            log.exception("pairing agent: decision on %s not recorded", address)

    def _refuse(self, method: str, address: str | None, reason: str,
                error: str = ERROR_REJECTED) -> NoReturn:
        """Record the refusal, then answer BlueZ with `error`."""
        self._report(method, address, False, reason)
        raise DBusError(error, reason)

    async def _ask_technician(self, method: str, address: str,
                              question: Coroutine[Any, Any, object]) -> object:
        """`_ask`, with a cancelled prompt recorded as refused."""
        try:
            return await self._ask(question)
        except DBusError as exc:
            if exc.type == ERROR_CANCELED:
                self._report(method, address, False, "cancelled before the technician answered")
            raise

    async def _ask(self, question: Coroutine[Any, Any, object]) -> object:
        """Run one technician prompt; BlueZ's Cancel ends it with org.bluez.Error.Canceled."""
        self._pending = asyncio.ensure_future(question)
        self._idle.clear()
        try:
            return await self._pending
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being shut down ourselves
            log.warning("pairing agent: request cancelled (by BlueZ or the technician command)")
            raise DBusError(ERROR_CANCELED, "cancelled") from None
        finally:
            self._pending = None
            self._idle.set()

    async def withdraw(self) -> None:
        """End a pending technician prompt (BlueZ gets org.bluez.Error.Canceled) before the
        bus closes: dbus-fast would otherwise try to reply on a closed connection."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            await self._idle.wait()
            await asyncio.sleep(0)  # the reply is sent from the method's done-callback

    @dbus_method()
    def Release(self) -> None:  # D-Bus member names are CamelCase
        log.warning("pairing agent: released by BlueZ")
        self.released.set()

    @dbus_method()
    def RequestPinCode(self, device: DBusObjectPath) -> DBusStr:
        self._decide("RequestPinCode", device)
        raise DBusError(ERROR_REJECTED, "legacy PIN pairing is not used")  # not reached

    @dbus_method()
    def DisplayPinCode(self, device: DBusObjectPath, pincode: DBusStr) -> None:
        self._decide("DisplayPinCode", device)

    @dbus_method()
    async def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        decision = self._decide("RequestPasskey", device)
        assert self._technician is not None and decision.address is not None  # policy: ASK
        passkey = await self._ask_technician("RequestPasskey", decision.address,
                                             self._technician.enter_passkey(decision.address))
        if not isinstance(passkey, int) or not 0 <= passkey <= _MAX_PASSKEY:
            self._refuse("RequestPasskey", decision.address, "no passkey entered")
        self._report("RequestPasskey", decision.address, True,
                     "passkey entered by the technician")
        return passkey

    @dbus_method()
    async def DisplayPasskey(self, device: DBusObjectPath, passkey: DBusUInt32,
                             entered: DBusUInt16) -> None:
        decision = self._decide("DisplayPasskey", device)
        assert self._technician is not None and decision.address is not None
        await self._ask_technician("DisplayPasskey", decision.address,
                                   self._technician.show_passkey(decision.address, passkey,
                                                                 entered))
        if not entered:  # BlueZ calls again for every key typed on the device: record once
            self._report("DisplayPasskey", decision.address, True,
                         "passkey shown to the technician")

    @dbus_method()
    async def RequestConfirmation(self, device: DBusObjectPath,
                                  passkey: DBusUInt32) -> None:
        decision = self._decide("RequestConfirmation", device)
        assert self._technician is not None and decision.address is not None
        if await self._ask_technician(
                "RequestConfirmation", decision.address,
                self._technician.confirm_passkey(decision.address, passkey)) is not True:
            self._refuse("RequestConfirmation", decision.address,
                         "the technician did not confirm the passkey")
        self._report("RequestConfirmation", decision.address, True,
                     "the technician confirmed the passkey")

    @dbus_method()
    def RequestAuthorization(self, device: DBusObjectPath) -> None:
        self._decide("RequestAuthorization", device)

    @dbus_method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        self._decide("AuthorizeService", device)

    @dbus_method()
    def Cancel(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        if self._technician is not None:
            self._technician.cancelled()


# --- registration with BlueZ -------------------------------------------------------------


async def call_bluez(bus: MessageBus, path: str, interface: str, member: str,
                     signature: str = "", body: list | None = None) -> Message:
    """Call a method of `org.bluez`; its D-Bus error is raised as DBusError."""
    reply = await bus.call(Message(destination=BLUEZ, path=path, interface=interface,
                                   member=member, signature=signature, body=body or []))
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text)
    return reply


async def _call_manager(bus: MessageBus, member: str, signature: str, body: list) -> None:
    await call_bluez(bus, AGENT_MANAGER_PATH, AGENT_MANAGER, member, signature, body)


async def register_agent(bus: MessageBus, agent: PairingAgent, *, path: str = AGENT_PATH,
                         default: bool = True) -> None:
    """Register `agent` (exported at `path` on `bus`) with BlueZ's AgentManager1 with its
    capability; `default`: also make it the agent for requests nobody else owns.
    Raises DBusError (e.g. `org.freedesktop.DBus.Error.ServiceUnknown` without bluetoothd)."""
    agent.released.clear()
    await _call_manager(bus, "RegisterAgent", "os", [path, agent.capability])
    if default:
        await _call_manager(bus, "RequestDefaultAgent", "o", [path])
    log.info("pairing agent registered (%s%s) for %d device(s)", agent.capability,
             ", default" if default else "", len(agent.allowed))


async def unregister_agent(bus: MessageBus, *, path: str = AGENT_PATH) -> None:
    """Tell BlueZ to forget the agent; a BlueZ that is gone has forgotten it already."""
    try:
        await _call_manager(bus, "UnregisterAgent", "o", [path])
    except DBusError as exc:
        log.info("pairing agent: unregister: %s", exc.type)


async def serve_agent(bus: MessageBus, agent: PairingAgent, stop: asyncio.Event, *,
                      path: str = AGENT_PATH, retry_s: float = 5.0) -> None:
    """Keep `agent` registered as BlueZ's default agent until `stop` is set.

    Registers again whenever bluetoothd (re)appears on the bus or releases the agent; while
    BlueZ is absent it retries every `retry_s` (one log line per distinct failure)."""
    bluez_changed = asyncio.Event()

    def on_message(message: Message) -> None:
        if message.message_type == MessageType.SIGNAL and \
                message.member == "NameOwnerChanged" and message.body[:1] == [BLUEZ]:
            bluez_changed.set()

    bus.add_message_handler(on_message)
    await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=["type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
              f"member='NameOwnerChanged',arg0='{BLUEZ}'"]))
    last_failure = None
    try:
        while not stop.is_set():
            bluez_changed.clear()
            try:
                await register_agent(bus, agent, path=path)
                last_failure = None
                wait = None
            except DBusError as exc:
                if exc.type != last_failure:
                    log.warning("pairing agent: cannot register with BlueZ yet: %s %s",
                                exc.type, exc.text)
                last_failure = exc.type
                wait = retry_s
            await _first_of((stop.wait(), bluez_changed.wait(), agent.released.wait()), wait)
        await unregister_agent(bus, path=path)
    finally:
        bus.remove_message_handler(on_message)


async def _first_of(waits: tuple, timeout: float | None) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
