"""`vitalbridge ble`: the BlueZ pairing agent, unattended or with a technician.

  vitalbridge ble agent --config /etc/vitalbridge/gateway.toml
  vitalbridge ble pair C8:FD:19:00:33:44 --config /etc/vitalbridge/gateway.toml

`agent` keeps a NoInputNoOutput agent registered as BlueZ's default agent until SIGTERM
(the vitalbridge-ble-agent service): Just Works pairing is accepted only for the
`[[ble.devices]]` with `bonding = true` and an `address`; SIGHUP re-reads that list.
`pair` bonds one such device now, with a KeyboardDisplay agent of its own: it shows the
passkey to type on the device, or asks for the one the device shows, and marks the bonded
device Trusted in BlueZ. Exit status: 0 bonded (or already bonded) and trusted, 1 pairing
failed or timed out (or Trusted could not be set), 2 usage, configuration, gateway not
provisioned or BlueZ unavailable.

Both record every pairing decision (accepted or refused, method, address, why) and `pair`
its outcome in the gateway's tamper-evident event journal, the way the other technician
commands do (`EventLog`, which takes concurrent writers: each append reads the head in
its own transaction), in the files and with the key the agent uses (`[gateway]` of
gateway.toml). Identical decisions repeated within a minute, and any beyond 20 a minute,
are counted into the next entry (`suppressed`) instead of each written: a device in range
may retry pairing forever.
Details: docs/ble-ingest.md, "Bonding and the BlueZ pairing agent".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.cli import CommandError

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from edge_agent.ble.pairing_agent import PairingOutcome
    from edge_agent.config import AgentConfig

log = logging.getLogger("vitalbridge.ble.pairing")

_DEVICE1 = "org.bluez.Device1"
_ADAPTER1 = "org.bluez.Adapter1"
_PROPERTIES = "org.freedesktop.DBus.Properties"
_PAIR_FAILED = 1
_PASSKEY_ATTEMPTS = 3
UNATTENDED_ACTOR = "ble-agent"
REPEAT_WINDOW_S = 60.0  # an identical decision is recorded at most once per window
MAX_PER_WINDOW = 20  # and at most this many decisions of any kind per window


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ble", help="BlueZ pairing agent: bond configured BLE devices",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="ble_command", metavar="ACTION", required=True)
    agent = actions.add_parser("agent", help="run the unattended (Just Works) default agent")
    pair = actions.add_parser("pair", help="bond one configured device with a technician")
    pair.add_argument("address", help="the device's address, AA:BB:CC:DD:EE:FF")
    pair.add_argument("--adapter", default="hci0", help="BlueZ adapter (default hci0)")
    pair.add_argument("--timeout", type=float, default=90.0,
                      help="seconds for discovery plus pairing (default 90)")
    pair.add_argument("--actor", help="who pairs, recorded in the event journal "
                      "(default: $USER)")
    for action in (agent, pair):
        action.add_argument("--config", required=True, help="gateway.toml")
        action.add_argument("--bus", help="D-Bus address (default: the system bus)")
    agent.set_defaults(handler=run_agent)
    pair.set_defaults(handler=run_pair)


# --- configuration -------------------------------------------------------------------------


def bonding_addresses(config: AgentConfig) -> tuple[list[str], list[str]]:
    """(addresses allowed to bond, names of bonding devices without an address). A device
    matched by name or service only cannot be allow-listed: advertised names are not proof
    of identity, and BlueZ identifies the peer by address."""
    allowed, unaddressed = [], []
    for device in config.ble.devices:
        if device.config.bonding:
            if device.config.address:
                allowed.append(device.config.address)
            else:
                unaddressed.append(device.config.name)
    return allowed, unaddressed


def _allow_list(path: str, config: AgentConfig | None = None) -> list[str]:
    from edge_agent.commands.agent import _load

    allowed, unaddressed = bonding_addresses(config or _load(path))
    for name in unaddressed:
        log.warning("ble device %r has bonding = true but no address: the pairing agent "
                    "cannot accept it (add its address)", name)
    if not allowed:
        log.warning("no [[ble.devices]] with bonding = true and an address in %s: every "
                    "pairing request will be rejected", path)
    return allowed


# --- the event journal ------------------------------------------------------------------------


Entries = list[tuple[str, str, str, dict[str, Any]]]


def subject_of(address: str | None) -> str:
    return f"bluetooth:{address or 'unknown'}"


class PairingEvents:
    """Pairing decisions and outcomes as event-journal entries (kinds `pairing.decision`,
    `pairing.bond`), written by `write(entries)`; repeats are counted, not each written."""

    def __init__(self, write: Callable[[Entries], None], actor: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self.actor = actor
        self._clock = clock
        self._last: dict[tuple[object, ...], float] = {}  # decision -> when last written
        self._written: deque[float] = deque()  # times of the entries in the last window
        self.suppressed = 0

    @classmethod
    def for_gateway(cls, gateway_id: str, data_dir: Path, keys_dir: Path,
                    actor: str) -> PairingEvents:
        """Entries go to the agent's event journal (`data_dir`/events.sqlite3), checkpoints
        signed with the gateway key in `keys_dir`: the files and key the agent itself uses
        (`[gateway]` of gateway.toml). CommandError when the key cannot be read."""
        from edge_agent.ca import keyfiles
        from edge_agent.eventlog import EventLog
        from edge_agent.service import EVENTS_FILE, SIGNING_KEY_FILE

        try:
            seed = keyfiles.load_ed25519_seed(Path(keys_dir) / SIGNING_KEY_FILE)
        except (OSError, ValueError) as exc:
            raise CommandError(f"the gateway's signing key: {exc}") from None
        path = Path(data_dir) / EVENTS_FILE

        def write(entries: Entries) -> None:
            journal = EventLog.open(path, gateway_id, seed)
            try:
                with journal.batch():
                    for kind, actor_, subject, details in entries:
                        journal.append(kind, actor_, subject, details)
            finally:
                journal.close()  # signs what it wrote

        return cls(write, actor)

    def _due(self, key: tuple[object, ...]) -> bool:
        now = self._clock()
        while self._written and now - self._written[0] >= REPEAT_WINDOW_S:
            self._written.popleft()
        last = self._last.get(key)
        if (last is not None and now - last < REPEAT_WINDOW_S) \
                or len(self._written) >= MAX_PER_WINDOW:
            self.suppressed += 1
            return False
        if len(self._last) > 4 * MAX_PER_WINDOW:  # forget decisions past their window
            self._last = {k: t for k, t in self._last.items() if now - t < REPEAT_WINDOW_S}
        self._last[key] = now
        self._written.append(now)
        return True

    def decision(self, outcome: PairingOutcome) -> None:
        """PairingAgent's `on_decision`: record (or count) one answer to BlueZ."""
        verdict = "accepted" if outcome.accepted else "refused"
        if not self._due((outcome.address, outcome.method, verdict, outcome.reason)):
            return
        details: dict[str, Any] = {"decision": verdict, "method": outcome.method,
                                   "reason": outcome.reason, "capability": outcome.capability}
        if self.suppressed:
            details["suppressed"] = self.suppressed
        self._write([("pairing.decision", self.actor, subject_of(outcome.address), details)])
        self.suppressed = 0

    def bond(self, address: str, adapter: str, outcome: str, *, trusted: str | None = None,
             reason: str | None = None) -> None:
        """The outcome of `ble pair` (always written)."""
        details: dict[str, Any] = {"outcome": outcome, "adapter": adapter}
        if trusted is not None:
            details["trusted"] = trusted
        if reason:
            details["reason"] = reason[:200]
        self._write([("pairing.bond", self.actor, subject_of(address), details)])


def _events_for(config: AgentConfig, actor: str) -> PairingEvents:
    gateway = config.gateway
    try:
        return PairingEvents.for_gateway(gateway.id, gateway.data_dir, gateway.keys_dir, actor)
    except CommandError as exc:
        raise CommandError(f"pairing decisions are recorded in the gateway's event journal, "
                           f"which is not available: {exc}") from None


async def _connect(address: str | None) -> MessageBus:
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    try:
        if address:
            return await MessageBus(bus_address=address).connect()
        return await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, ValueError, EOFError) as exc:  # dbus-fast auth failures are ValueError-like
        raise CommandError(f"cannot connect to D-Bus ({address or 'system bus'}): {exc}") \
            from None


# --- vitalbridge ble agent -------------------------------------------------------------------


def run_agent(args: argparse.Namespace) -> int:
    from edge_agent.commands.agent import _load
    from edge_agent.logging_setup import configure_logging

    config = _load(args.config)
    configure_logging(config.logging.level, config.logging.format)
    allowed = _allow_list(args.config, config)
    events = _events_for(config, UNATTENDED_ACTOR)
    asyncio.run(serve_unattended(args.bus, allowed, lambda: _allow_list(args.config),
                                 events=events))
    return 0


async def serve_unattended(bus_address: str | None, allowed: list[str],
                           reload: Callable[[], list[str]],
                           stop: asyncio.Event | None = None,
                           events: PairingEvents | None = None) -> None:
    """Serve the Just Works default agent until SIGTERM/SIGINT (or `stop`); SIGHUP calls
    `reload` for a new allow-list (a configuration error keeps the current one). Each
    decision goes to `events` (the event journal) before BlueZ gets its answer."""
    from edge_agent.ble.pairing_agent import AGENT_PATH, PairingAgent, serve_agent

    stop = stop or asyncio.Event()
    bus = await _connect(bus_address)
    agent = PairingAgent(allowed, on_decision=events.decision if events else None)
    bus.export(AGENT_PATH, agent)

    def on_hangup() -> None:
        try:
            agent.set_allowed(reload())
        except (CommandError, ValueError) as exc:
            log.error("pairing agent: configuration not reloaded: %s", exc)
            return
        log.info("pairing agent: allow-list reloaded (%d device(s))", len(agent.allowed))

    loop = asyncio.get_running_loop()
    handled = _add_signal_handlers(loop, {signal.SIGTERM: stop.set, signal.SIGINT: stop.set,
                                          signal.SIGHUP: on_hangup})
    try:
        await serve_agent(bus, agent, stop)
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        bus.disconnect()


def _add_signal_handlers(loop: asyncio.AbstractEventLoop,
                         handlers: dict[int, Callable[[], None]]) -> list[int]:
    added = []
    for signum, handler in handlers.items():
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(signum, handler)
            added.append(signum)
    return added


# --- vitalbridge ble pair ----------------------------------------------------------------------


class TerminalTechnician:
    """The technician at a terminal: passkeys are printed here and nowhere else.

    `read_line(prompt)` runs on a daemon thread, so a request BlueZ cancels (or a finished
    command) never waits for the Enter key."""

    def __init__(self, read_line: Callable[[str], str] = input,
                 write: Callable[[str], None] = print) -> None:
        self._read_line = read_line
        self._write = write

    async def _ask(self, prompt: str) -> str:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()

        def deliver(line: str) -> None:
            if not answer.done():
                answer.set_result(line)

        def worker() -> None:
            try:
                line = self._read_line(prompt)
            except (EOFError, OSError):
                line = ""
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(deliver, line)

        threading.Thread(target=worker, name="passkey-prompt", daemon=True).start()
        return await answer

    async def enter_passkey(self, address: str) -> int | None:
        for _ in range(_PASSKEY_ATTEMPTS):
            text = (await self._ask(f"Passkey shown on {address} (6 digits, empty to refuse): "))
            text = text.strip()
            if not text:
                return None
            if text.isdigit() and len(text) <= 6:
                return int(text)
            self._write("A passkey is up to six digits.")
        return None

    async def show_passkey(self, address: str, passkey: int, entered: int) -> None:
        self._write(f"Type {passkey:06d} on {address} and confirm on the device"
                    + (f" ({entered} typed)" if entered else "") + ".")

    async def confirm_passkey(self, address: str, passkey: int) -> bool:
        answer = await self._ask(f"Does {address} show {passkey:06d}? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    def cancelled(self) -> None:
        self._write("BlueZ cancelled the request (timed out or the device went away).")


class PairingFailed(Exception):
    """Pairing did not complete; the message is for the technician."""


def run_pair(args: argparse.Namespace) -> int:
    from edge_agent.ble.pairing_agent import normalise_allow_list
    from edge_agent.commands import common
    from edge_agent.commands.agent import _load

    try:
        (address,) = normalise_allow_list([args.address])
    except ValueError:
        raise CommandError(f"not a Bluetooth address: {args.address!r} "
                           "(AA:BB:CC:DD:EE:FF)") from None
    if address not in normalise_allow_list(_allow_list(args.config)):
        raise CommandError(f"{address} is not a [[ble.devices]] entry with bonding = true in "
                           f"{args.config}: configure it first")
    if args.timeout <= 0:
        raise CommandError("--timeout must be positive")
    events = _events_for(_load(args.config), common.actor(args))
    try:
        outcome = asyncio.run(pair_device(args.bus, address, TerminalTechnician(),
                                          adapter=args.adapter, timeout_s=args.timeout,
                                          events=events))
    except PairingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _PAIR_FAILED
    print(outcome)
    return 0


async def pair_device(bus_address: str | None, address: str, technician: object, *,
                      adapter: str = "hci0", timeout_s: float = 90.0,
                      events: PairingEvents | None = None) -> str:
    """Bond `address` through BlueZ with a KeyboardDisplay agent of our own (BlueZ uses the
    agent of whoever calls Device1.Pair), then mark it Trusted. Discovers the device first
    if BlueZ does not know it. Every agent decision and the outcome go to `events`.
    Returns a one-line outcome; raises PairingFailed or CommandError."""
    from dbus_fast import DBusError

    from edge_agent.ble.pairing_agent import (
        AGENT_PATH,
        PairingAgent,
        register_agent,
        unregister_agent,
    )

    bus = await _connect(bus_address)
    agent = PairingAgent([address], technician,  # type: ignore[arg-type]
                         on_decision=events.decision if events else None)
    bus.export(AGENT_PATH, agent)
    device_path = f"/org/bluez/{adapter}/dev_{address.replace(':', '_')}"

    def outcome(result: str, trusted: str | None = None, reason: str | None = None) -> None:
        if events is not None:
            events.bond(address, adapter, result, trusted=trusted, reason=reason)

    try:
        try:
            await register_agent(bus, agent, default=False)
        except DBusError as exc:
            raise CommandError(f"BlueZ is not available on D-Bus ({exc.type})") from None
        async with asyncio.timeout(timeout_s):
            if not await _device_known(bus, device_path):
                await _discover(bus, adapter, device_path)
            already = await _get_property(bus, device_path, _DEVICE1, "Paired") is True
            if not already:
                reply = await _call(bus, device_path, _DEVICE1, "Pair", "", [])
                if reply is not None:
                    outcome("failed", reason=reply)
                    raise PairingFailed(f"pairing with {address} failed: {reply}")
            trusted, problem = await _trust(bus, device_path)
        result = "already-bonded" if already else "bonded"
        outcome(result, trusted, problem)
        if problem is not None:
            raise PairingFailed(f"{address} is bonded but BlueZ did not mark it trusted: "
                                f"{problem}")
        log.info("pairing: %s %s, trusted", address, result)
        if already:
            return f"{address} is already bonded (remove it with bluetoothctl to pair again)"
        return f"{address} bonded"
    except TimeoutError:
        await _call(bus, device_path, _DEVICE1, "CancelPairing", "", [])
        outcome("timed-out", reason=f"no bond within {timeout_s:g} s")
        raise PairingFailed(f"pairing with {address} timed out after {timeout_s:g} s") from None
    finally:
        await agent.withdraw()
        await unregister_agent(bus)
        bus.disconnect()


async def _trust(bus: MessageBus, device_path: str) -> tuple[str, str | None]:
    """Set Device1.Trusted (BlueZ then authorizes the bonded device's reconnections and
    services without asking an agent) -> ("set" | "already" | "failed", problem)."""
    from dbus_fast import Variant

    if await _get_property(bus, device_path, _DEVICE1, "Trusted") is True:
        return "already", None
    problem = await _call(bus, device_path, _PROPERTIES, "Set", "ssv",
                          [_DEVICE1, "Trusted", Variant("b", True)])
    if problem is None and await _get_property(bus, device_path, _DEVICE1, "Trusted") is True:
        return "set", None
    return "failed", problem or "Trusted is still false"


async def _call(bus: MessageBus, path: str, interface: str, member: str, signature: str,
                body: list) -> str | None:
    """Call a BlueZ method: None on success, else "<error name>: <text>"."""
    from dbus_fast import DBusError

    from edge_agent.ble.pairing_agent import call_bluez

    try:
        await call_bluez(bus, path, interface, member, signature, body)
    except DBusError as exc:
        return f"{exc.type}: {exc.text}".rstrip(": ")
    return None


async def _get_property(bus: MessageBus, path: str, interface: str, name: str) -> object:
    from dbus_fast import DBusError, Variant

    from edge_agent.ble.pairing_agent import call_bluez

    try:
        reply = await call_bluez(bus, path, _PROPERTIES, "Get", "ss", [interface, name])
    except DBusError:
        return None
    value = reply.body[0] if reply.body else None
    return value.value if isinstance(value, Variant) else None


async def _device_known(bus: MessageBus, device_path: str) -> bool:
    return await _get_property(bus, device_path, _DEVICE1, "Address") is not None


async def _discover(bus: MessageBus, adapter: str, device_path: str) -> None:
    """LE discovery until BlueZ has the device object (the caller's timeout bounds it)."""
    from dbus_fast import Variant

    adapter_path = f"/org/bluez/{adapter}"
    problem = await _call(bus, adapter_path, _ADAPTER1, "SetDiscoveryFilter", "a{sv}",
                          [{"Transport": Variant("s", "le")}])
    problem = problem or await _call(bus, adapter_path, _ADAPTER1, "StartDiscovery", "", [])
    if problem is not None:
        raise PairingFailed(f"cannot scan on {adapter}: {problem}")
    print(f"Scanning for {device_path.rsplit('dev_', 1)[1].replace('_', ':')}: "
          "wake the device or put it in pairing mode ...")
    try:
        while not await _device_known(bus, device_path):
            await asyncio.sleep(0.5)
    finally:
        await _call(bus, adapter_path, _ADAPTER1, "StopDiscovery", "", [])
