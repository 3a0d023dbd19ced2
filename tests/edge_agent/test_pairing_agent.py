"""The BlueZ pairing agent: the pure policy, and the real D-Bus object on a private bus.

The D-Bus tests start a private `dbus-daemon` and put a stand-in `org.bluez` on it that
records AgentManager1 calls and then calls our agent's org.bluez.Agent1 methods the way
bluetoothd does. Real: the D-Bus daemon, the wire messages, dbus-fast, our agent object and
registration. Not real: BlueZ itself (its choice of which agent method to call).
"""

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ble.pairing_agent import (
    ACCEPT,
    AGENT_PATH,
    ASK,
    ERROR_CANCELED,
    ERROR_REJECTED,
    JUST_WORKS,
    REJECT,
    TECHNICIAN,
    PairingAgent,
    address_from_device_path,
    decide,
    normalise_allow_list,
    register_agent,
    serve_agent,
)
from edge_agent.cli import CommandError
from edge_agent.commands import pairing as pairing_command
from tests.edge_agent.aio_harness import run_bounded

METER = "C8:FD:19:00:33:44"
METER_PATH = "/org/bluez/hci0/dev_C8_FD_19_00_33_44"
STRANGER_PATH = "/org/bluez/hci0/dev_11_22_33_44_55_66"
ALLOWED = frozenset({METER})
METHODS = ("RequestPinCode", "DisplayPinCode", "RequestPasskey", "DisplayPasskey",
           "RequestConfirmation", "RequestAuthorization", "AuthorizeService")
SIGNATURES = {  # org.bluez.Agent1 in-signatures (BlueZ doc/org.bluez.Agent.rst)
    "RequestPinCode": ("o", []), "DisplayPinCode": ("os", ["0000"]),
    "RequestPasskey": ("o", []), "DisplayPasskey": ("ouq", [123456, 0]),
    "RequestConfirmation": ("ou", [123456]), "RequestAuthorization": ("o", []),
    "AuthorizeService": ("os", ["0000180f-0000-1000-8000-00805f9b34fb"]),
}


# --- the policy --------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "address"), [
    (METER_PATH, METER),
    ("/org/bluez/hci1/dev_c8_fd_19_00_33_44", METER),
    ("/org/bluez/hci0/dev_C8_FD_19_00_33_44/service0010", None),
    ("/org/bluez/hci0/dev_C8_FD_19_00_33", None),
    ("/org/bluez/hci0/dev_C8_FD_19_00_33_44_55", None),
    ("/org/bluez/hci0/dev_C8:FD:19:00:33:44", None),
    ("/org/bluez/dev_C8_FD_19_00_33_44", None),
    ("/org/other/hci0/dev_C8_FD_19_00_33_44", None),
    ("/org/bluez/hci0/dev_G8_FD_19_00_33_44", None),
    ("/org/bluez/hci0/dev_C8_FD_19_00_33_44\n", None),
    ("", None), (None, None), (b"/org/bluez/hci0/dev_C8_FD_19_00_33_44", None), (42, None),
])
def test_device_paths_are_read_strictly(path, address):
    assert address_from_device_path(path) == address


# The whole table, written out (not derived from the code under test).
EXPECTED = {
    # method: (allowed device unattended, allowed device with a technician)
    "RequestPinCode": (REJECT, REJECT),
    "DisplayPinCode": (REJECT, REJECT),
    "RequestPasskey": (REJECT, ASK),
    "DisplayPasskey": (REJECT, ASK),
    "RequestConfirmation": (REJECT, ASK),
    "RequestAuthorization": (ACCEPT, ACCEPT),
    "AuthorizeService": (ACCEPT, ACCEPT),
    "Release": (REJECT, REJECT),  # not a request: never "accepted" by the policy
    "SomethingNew": (REJECT, REJECT),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
@pytest.mark.parametrize("technician", [False, True])
def test_policy_table_for_configured_devices(method, technician):
    decision = decide(method, METER_PATH, ALLOWED, technician)
    assert decision.action == EXPECTED[method][technician]
    assert decision.address == METER


@pytest.mark.parametrize("method", sorted(EXPECTED))
@pytest.mark.parametrize("technician", [False, True])
@pytest.mark.parametrize("path", [STRANGER_PATH, "/org/bluez/hci0", "not a path", None])
def test_policy_rejects_every_request_from_unconfigured_devices(method, technician, path):
    decision = decide(method, path, ALLOWED, technician)
    assert decision.action == REJECT
    assert decision.reason in ("not configured for bonding", "not a BlueZ device object")


def test_empty_allow_list_rejects_everything():
    for method in EXPECTED:
        assert decide(method, METER_PATH, frozenset(), True).action == REJECT


@given(method=st.one_of(st.sampled_from(sorted(EXPECTED)), st.text(max_size=30)),
       path=st.one_of(st.text(max_size=60), st.none(), st.binary(max_size=20),
                      st.builds(lambda octets: "/org/bluez/hci0/dev_" + "_".join(
                          f"{o:02X}" for o in octets), st.lists(st.integers(0, 255),
                                                                min_size=6, max_size=6))),
       technician=st.booleans())
def test_policy_never_raises_and_only_admits_allowed_addresses(method, path, technician):
    decision = decide(method, path, ALLOWED, technician)
    assert decision.action in (ACCEPT, ASK, REJECT)
    if decision.action != REJECT:
        assert decision.address == METER and address_from_device_path(path) == METER
    if decision.action == ASK:
        assert technician


def test_allow_list_normalises_and_refuses_malformed_addresses():
    assert normalise_allow_list(["c8:fd:19:00:33:44", METER]) == ALLOWED
    for bad in ("C8:FD:19:00:33", "C8-FD-19-00-33-44", "", "C8:FD:19:00:33:4G", None):
        with pytest.raises(ValueError):
            normalise_allow_list([bad])


def test_bonding_addresses_come_from_the_ble_config():
    from edge_agent.ble_ingest import DeviceConfig
    from edge_agent.config import BleDevice, BleSettings

    class Config:
        ble = BleSettings(4, (
            BleDevice("meter-1", DeviceConfig("meter", address=METER, bonding=True)),
            BleDevice("thermo-1", DeviceConfig("thermo", address="A4:C1:38:00:11:22")),
            BleDevice("cuff-1", DeviceConfig("cuff", local_name="BP7000", bonding=True)),
        ))

    assert pairing_command.bonding_addresses(Config()) == ([METER], ["cuff"])


# --- a private D-Bus and a stand-in BlueZ -------------------------------------------------


@pytest.fixture(scope="module")
def bus_address(tmp_path_factory):
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip("dbus-daemon is not installed: the D-Bus agent tests need a private bus")
    socket = tmp_path_factory.mktemp("dbus") / "bus"
    process = subprocess.Popen(
        [daemon, "--session", "--nofork", "--nopidfile", "--print-address=1",
         f"--address=unix:path={socket}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    address = process.stdout.readline().decode().strip()
    if not address:
        process.kill()
        pytest.skip("dbus-daemon did not start: " + process.stderr.read().decode()[:200])
    yield address
    process.terminate()
    process.wait(timeout=5)


class FakeBluez:
    """Owns `org.bluez`; records AgentManager1 calls; calls agents like bluetoothd does.
    Device1.Pair of `pair_device_path` asks the caller's agent for a passkey and succeeds
    only when it equals `pair_passkey`; Adapter1.StartDiscovery makes the device known."""

    def __init__(self, bus: MessageBus, pair_passkey: int = 0, known: bool = True,
                 refuse_trust: bool = False) -> None:
        self.bus = bus
        self.trusted = False
        self.refuse_trust = refuse_trust
        self.calls: list[tuple[str, str, list]] = []  # (sender, member, body)
        self.agents: dict[str, tuple[str, str]] = {}  # sender -> (path, capability)
        self.default: tuple[str, str] | None = None  # (sender, path)
        self.pair_passkey = pair_passkey
        self.device_known = known
        self.paired = False

    @classmethod
    async def start(cls, address: str, **kwargs) -> "FakeBluez":
        bus = await MessageBus(bus_address=address).connect()
        fake = cls(bus, **kwargs)
        bus.add_message_handler(fake._handle)
        await bus.request_name("org.bluez")
        return fake

    def stop(self) -> None:
        self.bus.disconnect()

    def _handle(self, msg: Message):
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        self.calls.append((msg.sender, msg.member, list(msg.body)))
        if msg.interface == "org.bluez.AgentManager1":
            return self._agent_manager(msg)
        if msg.interface == "org.freedesktop.DBus.Properties" and msg.member == "Get":
            if msg.path != METER_PATH or not self.device_known:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", "")
            value = {"Address": Variant("s", METER), "Paired": Variant("b", self.paired),
                     "Trusted": Variant("b", self.trusted)}
            if msg.body[1] not in value:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "")
            return Message.new_method_return(msg, "v", [value[msg.body[1]]])
        if msg.interface == "org.freedesktop.DBus.Properties" and msg.member == "Set":
            interface, name, value = msg.body
            if msg.path != METER_PATH or (interface, name) != ("org.bluez.Device1",
                                                                "Trusted"):
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "")
            if self.refuse_trust:
                return Message.new_error(msg, "org.bluez.Error.Failed", "Not allowed")
            self.trusted = value.signature == "b" and value.value is True
            return Message.new_method_return(msg)
        if msg.interface == "org.bluez.Adapter1":
            if msg.member == "StartDiscovery":
                asyncio.get_running_loop().call_later(0.3, setattr, self, "device_known", True)
            return Message.new_method_return(msg)
        if msg.interface == "org.bluez.Device1" and msg.member == "Pair":
            asyncio.ensure_future(self._pair(msg))
            return True
        return None

    def _agent_manager(self, msg: Message) -> Message:
        error = "org.bluez.Error."
        if msg.member == "RegisterAgent":
            path, capability = msg.body
            if msg.sender in self.agents:
                return Message.new_error(msg, error + "AlreadyExists", "Already Exists")
            if capability not in ("DisplayOnly", "DisplayYesNo", "KeyboardOnly",
                                  "NoInputNoOutput", "KeyboardDisplay", ""):
                return Message.new_error(msg, error + "InvalidArguments", "Invalid Arguments")
            self.agents[msg.sender] = (path, capability)
        elif msg.member == "RequestDefaultAgent":
            if self.agents.get(msg.sender, ("",))[0] != msg.body[0]:
                return Message.new_error(msg, error + "DoesNotExist", "Does Not Exist")
            self.default = (msg.sender, msg.body[0])
        elif msg.member == "UnregisterAgent":
            if self.agents.pop(msg.sender, None) is None:
                return Message.new_error(msg, error + "DoesNotExist", "Does Not Exist")
            if self.default and self.default[0] == msg.sender:
                self.default = None
        return Message.new_method_return(msg)

    async def _pair(self, msg: Message) -> None:
        agent = self.agents.get(msg.sender)
        if agent is None:
            self.bus.send(Message.new_error(msg, "org.bluez.Error.AuthenticationFailed", ""))
            return
        reply = await self.ask(msg.sender, agent[0], "RequestPasskey", "o", [METER_PATH])
        if reply.message_type == MessageType.ERROR or reply.body != [self.pair_passkey]:
            self.bus.send(Message.new_error(msg, "org.bluez.Error.AuthenticationFailed",
                                            "Authentication Failed"))
            return
        self.paired = True
        self.bus.send(Message.new_method_return(msg))

    async def ask(self, sender: str, path: str, member: str, signature: str,
                  body: list) -> Message:
        return await self.bus.call(Message(destination=sender, path=path,
                                           interface="org.bluez.Agent1", member=member,
                                           signature=signature, body=body))

    async def ask_default(self, member: str, device: str = METER_PATH) -> Message:
        assert self.default is not None, "no default agent registered"
        signature, extra = SIGNATURES.get(member, ("", []))
        body = ([device] if signature.startswith("o") else []) + extra
        return await self.ask(*self.default, member, signature, body)


class ScriptedTechnician:
    """Answers like a technician would; records what it was shown."""

    def __init__(self, passkey: int | None = 123456, confirm: bool = True,
                 hang: bool = False) -> None:
        self.passkey, self.confirm, self.hang = passkey, confirm, hang
        self.shown: list[tuple[str, int, int]] = []
        self.asked: list[str] = []
        self.cancels = 0

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def enter_passkey(self, address):
        self.asked.append(address)
        await self._maybe_hang()
        return self.passkey

    async def show_passkey(self, address, passkey, entered):
        self.shown.append((address, passkey, entered))

    async def confirm_passkey(self, address, passkey):
        self.asked.append(address)
        await self._maybe_hang()
        return self.confirm and passkey == 123456

    def cancelled(self):
        self.cancels += 1


@contextlib.asynccontextmanager
async def registered_agent(address: str, technician=None) -> AsyncIterator[
        tuple[FakeBluez, PairingAgent, MessageBus]]:
    bluez = await FakeBluez.start(address)
    bus = await MessageBus(bus_address=address).connect()
    agent = PairingAgent([METER], technician)
    bus.export(AGENT_PATH, agent)
    try:
        await register_agent(bus, agent)
        yield bluez, agent, bus
    finally:
        bus.disconnect()
        bluez.stop()


def error_of(reply: Message) -> str | None:
    return reply.error_name if reply.message_type == MessageType.ERROR else None


# --- the agent over D-Bus ------------------------------------------------------------------


def test_agent_registers_as_default_just_works_agent(bus_address):
    async def scenario():
        async with registered_agent(bus_address) as (bluez, _agent, bus):
            members = [(sender, member, body) for sender, member, body in bluez.calls]
            assert members == [(bus.unique_name, "RegisterAgent", [AGENT_PATH, JUST_WORKS]),
                               (bus.unique_name, "RequestDefaultAgent", [AGENT_PATH])]
            assert bluez.default == (bus.unique_name, AGENT_PATH)

    run_bounded(scenario, 10)


def test_unattended_agent_answers_bluez_by_policy(bus_address, caplog):
    caplog.set_level(logging.INFO, "vitalbridge.ble.pairing")

    async def scenario():
        async with registered_agent(bus_address) as (bluez, agent, _bus):
            for member in ("RequestAuthorization", "AuthorizeService"):
                assert error_of(await bluez.ask_default(member)) is None, member
                assert error_of(await bluez.ask_default(member, STRANGER_PATH)) == \
                    ERROR_REJECTED, member
            for member in ("RequestPinCode", "DisplayPinCode", "RequestPasskey",
                           "DisplayPasskey", "RequestConfirmation"):
                assert error_of(await bluez.ask_default(member)) == ERROR_REJECTED, member
            assert error_of(await bluez.ask_default("RequestAuthorization",
                                                    "/org/bluez/hci0")) == ERROR_REJECTED
            assert len(agent.decisions) == 10  # the policy saw every request
            # BlueZ's Cancel with nothing pending, then Release: both plain replies.
            assert error_of(await bluez.ask_default("Cancel")) is None
            assert error_of(await bluez.ask_default("Release")) is None
            assert agent.released.is_set()

    run_bounded(scenario, 10)
    assert "11:22:33:44:55:66: reject (not configured for bonding)" in caplog.text
    assert "123456" not in caplog.text and "0000" not in caplog.text.replace(
        "0000180f", "")  # neither passkeys nor PINs reach the log


def test_technician_agent_enters_shows_and_confirms_passkeys(bus_address, caplog):
    caplog.set_level(logging.DEBUG)
    technician = ScriptedTechnician(passkey=987654)

    async def scenario():
        async with registered_agent(bus_address, technician) as (bluez, _agent, _bus):
            assert bluez.agents[bluez.default[0]][1] == TECHNICIAN
            reply = await bluez.ask_default("RequestPasskey")
            assert error_of(reply) is None and reply.body == [987654]
            assert error_of(await bluez.ask_default("DisplayPasskey")) is None
            assert technician.shown == [(METER, 123456, 0)]
            assert error_of(await bluez.ask_default("RequestConfirmation")) is None
            technician.confirm = False
            assert error_of(await bluez.ask_default("RequestConfirmation")) == ERROR_REJECTED
            # A technician never hears about a device outside the allow-list.
            asked = list(technician.asked)
            assert error_of(await bluez.ask_default("RequestPasskey", STRANGER_PATH)) == \
                ERROR_REJECTED
            assert technician.asked == asked
            technician.passkey = None  # declined
            assert error_of(await bluez.ask_default("RequestPasskey")) == ERROR_REJECTED

    run_bounded(scenario, 10)
    assert "987654" not in caplog.text and "123456" not in caplog.text


def test_bluez_cancel_ends_a_pending_prompt_with_canceled(bus_address):
    technician = ScriptedTechnician(hang=True)

    async def scenario():
        async with registered_agent(bus_address, technician) as (bluez, _agent, _bus):
            pending = asyncio.ensure_future(bluez.ask_default("RequestPasskey"))
            while not technician.asked:
                await asyncio.sleep(0.01)
            assert not pending.done()
            assert error_of(await bluez.ask_default("Cancel")) is None
            assert error_of(await pending) == ERROR_CANCELED
            assert technician.cancels == 1

    run_bounded(scenario, 10)


def test_serve_agent_survives_bluez_restarts_and_release(bus_address):
    async def scenario():
        bus = await MessageBus(bus_address=bus_address).connect()
        agent = PairingAgent([METER])
        bus.export(AGENT_PATH, agent)
        stop = asyncio.Event()
        serving = asyncio.ensure_future(serve_agent(bus, agent, stop, retry_s=0.2))
        try:
            await asyncio.sleep(0.3)  # no BlueZ yet: registration keeps being retried
            assert not serving.done()
            first = await FakeBluez.start(bus_address)
            await wait_for(lambda: first.default is not None)
            assert error_of(await first.ask_default("RequestAuthorization")) is None
            first.stop()  # bluetoothd exits without Release
            second = await FakeBluez.start(bus_address)
            await wait_for(lambda: second.default == (bus.unique_name, AGENT_PATH))
            assert error_of(await second.ask_default("RequestAuthorization")) is None
            # Release (e.g. another default agent took over): register again.
            second.agents.clear()
            second.default = None
            assert error_of(await second.ask(bus.unique_name, AGENT_PATH, "Release", "",
                                             [])) is None
            await wait_for(lambda: second.default is not None)
            stop.set()
            await serving
            assert second.calls[-1][1] == "UnregisterAgent" and second.default is None
            second.stop()
        finally:
            stop.set()
            serving.cancel()
            bus.disconnect()

    run_bounded(scenario, 15)


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


# --- vitalbridge ble agent / ble pair ---------------------------------------------------------


def test_unattended_command_reloads_its_allow_list(bus_address):
    allow_lists = [["A4:C1:38:00:11:22"]]

    async def scenario():
        bluez = await FakeBluez.start(bus_address)
        stop = asyncio.Event()
        serving = asyncio.ensure_future(pairing_command.serve_unattended(
            bus_address, [METER], lambda: allow_lists[0], stop))
        try:
            await wait_for(lambda: bluez.default is not None)
            assert error_of(await bluez.ask_default("RequestAuthorization")) is None
            os.kill(os.getpid(), signal.SIGHUP)  # the service's "reload configuration"
            async with asyncio.timeout(5):
                while error_of(await bluez.ask_default("RequestAuthorization")) is None:
                    await asyncio.sleep(0.02)
            assert error_of(await bluez.ask_default(
                "RequestAuthorization", "/org/bluez/hci0/dev_A4_C1_38_00_11_22")) is None
        finally:
            stop.set()
            await serving
            bluez.stop()

    run_bounded(scenario, 10)


@pytest.fixture
def gateway_home(tmp_path: Path) -> Path:
    """A provisioned gateway's data directory: its keys sign the event journal."""
    from simulator.agent_home import provision_home

    return provision_home(tmp_path / "data", "gw-1", [("ox-1", "p-0001")]).data_dir


def events_of(home: Path, actor: str) -> "pairing_command.PairingEvents":
    return pairing_command.PairingEvents.for_gateway("gw-1", home, home / "keys", actor)


def journaled(data_dir: Path, prefix: str = "pairing.") -> list[tuple[str, str, str, dict]]:
    """(kind, actor, subject, details) of the event journal's entries of `prefix` kinds,
    after checking the whole journal verifies (chain and signed checkpoints)."""
    from edge_agent.eventlog import EventLogFile

    journal = EventLogFile.open_readonly(data_dir / "events.sqlite3")
    try:
        assert journal.verify().ok
        return [(e.kind, e.actor, e.subject, dict(e.details)) for e in journal.entries()
                if e.kind.startswith(prefix)]
    finally:
        journal.close()


def test_unattended_decisions_are_recorded_in_the_event_journal(bus_address, gateway_home):
    events = events_of(gateway_home, "ble-agent")

    async def scenario():
        bluez = await FakeBluez.start(bus_address)
        stop = asyncio.Event()
        serving = asyncio.ensure_future(pairing_command.serve_unattended(
            bus_address, [METER], lambda: [METER], stop, events=events))
        try:
            await wait_for(lambda: bluez.default is not None)
            assert error_of(await bluez.ask_default("RequestAuthorization")) is None
            assert error_of(await bluez.ask_default("RequestAuthorization",
                                                    STRANGER_PATH)) == ERROR_REJECTED
            assert error_of(await bluez.ask_default("RequestPasskey")) == ERROR_REJECTED
            for _ in range(5):  # a stranger retrying: counted, not written each time
                await bluez.ask_default("RequestAuthorization", STRANGER_PATH)
            assert error_of(await bluez.ask_default("RequestAuthorization",
                                                    "/org/bluez/hci0")) == ERROR_REJECTED
        finally:
            stop.set()
            await serving
            bluez.stop()

    run_bounded(scenario, 10)
    assert journaled(gateway_home) == [
        ("pairing.decision", "ble-agent", f"bluetooth:{METER}",
         {"decision": "accepted", "method": "RequestAuthorization", "capability": JUST_WORKS,
          "reason": "Just Works with a device configured for bonding"}),
        ("pairing.decision", "ble-agent", "bluetooth:11:22:33:44:55:66",
         {"decision": "refused", "method": "RequestAuthorization", "capability": JUST_WORKS,
          "reason": "not configured for bonding"}),
        ("pairing.decision", "ble-agent", f"bluetooth:{METER}",
         {"decision": "refused", "method": "RequestPasskey", "capability": JUST_WORKS,
          "reason": "passkey pairing needs a technician (vitalbridge ble pair)"}),
        ("pairing.decision", "ble-agent", "bluetooth:unknown",
         {"decision": "refused", "method": "RequestAuthorization", "capability": JUST_WORKS,
          "reason": "not a BlueZ device object", "suppressed": 5}),
    ]


def test_repeated_decisions_are_counted_into_the_next_entry():
    from edge_agent.ble.pairing_agent import PairingOutcome

    written: list = []
    now = [0.0]
    events = pairing_command.PairingEvents(written.extend, "ble-agent", clock=lambda: now[0])
    refused = PairingOutcome("RequestAuthorization", "11:22:33:44:55:66", False, "why",
                             JUST_WORKS)
    for _ in range(3):
        events.decision(refused)
    assert len(written) == 1 and events.suppressed == 2
    now[0] = pairing_command.REPEAT_WINDOW_S  # the window has passed: written again
    events.decision(refused)
    assert len(written) == 2 and written[1][3]["suppressed"] == 2 and events.suppressed == 0
    # Rotating addresses: at most MAX_PER_WINDOW entries per window, the rest counted.
    for n in range(3 * pairing_command.MAX_PER_WINDOW):
        events.decision(PairingOutcome("RequestAuthorization", f"02:00:00:00:{n // 256:02X}:"
                                       f"{n % 256:02X}", False, "why", JUST_WORKS))
    assert len(written) == 1 + pairing_command.MAX_PER_WINDOW
    assert events.suppressed == 3 * pairing_command.MAX_PER_WINDOW - \
        (pairing_command.MAX_PER_WINDOW - 1)


def test_pair_command_bonds_trusts_and_journals_a_configured_device(bus_address,
                                                                    gateway_home):
    events = events_of(gateway_home, "technician:t-7")

    async def scenario():
        bluez = await FakeBluez.start(bus_address, pair_passkey=424242, known=False)
        try:
            outcome = await pairing_command.pair_device(
                bus_address, METER, ScriptedTechnician(passkey=424242), timeout_s=5,
                events=events)
            assert outcome == f"{METER} bonded" and bluez.paired and bluez.trusted
            members = [member for _sender, member, _body in bluez.calls]
            assert members[:1] == ["RegisterAgent"] and "RequestDefaultAgent" not in members
            assert {"SetDiscoveryFilter", "StartDiscovery", "StopDiscovery", "Pair",
                    "UnregisterAgent"} <= set(members)
            assert members.index("Set") > members.index("Pair")  # trusted once bonded
            assert bluez.agents == {}  # unregistered at the end
            again = await pairing_command.pair_device(
                bus_address, METER, ScriptedTechnician(), timeout_s=5, events=events)
            assert "already bonded" in again
        finally:
            bluez.stop()

    run_bounded(scenario, 10)
    subject = f"bluetooth:{METER}"
    assert journaled(gateway_home) == [
        ("pairing.decision", "technician:t-7", subject,
         {"decision": "accepted", "method": "RequestPasskey", "capability": TECHNICIAN,
          "reason": "passkey entered by the technician"}),
        ("pairing.bond", "technician:t-7", subject,
         {"outcome": "bonded", "adapter": "hci0", "trusted": "set"}),
        ("pairing.bond", "technician:t-7", subject,
         {"outcome": "already-bonded", "adapter": "hci0", "trusted": "already"}),
    ]
    assert "424242" not in str(journaled(gateway_home, ""))  # no passkey in the evidence


def test_pair_command_reports_a_wrong_passkey_a_timeout_and_a_refused_trust(
        bus_address, gateway_home):
    events = events_of(gateway_home, "technician:t-7")

    async def scenario():
        bluez = await FakeBluez.start(bus_address, pair_passkey=424242)
        try:
            with pytest.raises(pairing_command.PairingFailed, match="AuthenticationFailed"):
                await pairing_command.pair_device(bus_address, METER,
                                                  ScriptedTechnician(passkey=111111),
                                                  timeout_s=5, events=events)
            assert not bluez.paired
            with pytest.raises(pairing_command.PairingFailed, match="timed out"):
                await pairing_command.pair_device(bus_address, METER,
                                                  ScriptedTechnician(hang=True),
                                                  timeout_s=0.5, events=events)
            assert bluez.calls[-2][1] == "CancelPairing"  # then UnregisterAgent
            bluez.refuse_trust = True
            with pytest.raises(pairing_command.PairingFailed, match="did not mark it trusted"):
                await pairing_command.pair_device(bus_address, METER,
                                                  ScriptedTechnician(passkey=424242),
                                                  timeout_s=5, events=events)
            assert bluez.paired and not bluez.trusted
        finally:
            bluez.stop()

    run_bounded(scenario, 10)
    bonds = [(details["outcome"], details.get("trusted"))
             for kind, _actor, _subject, details in journaled(gateway_home)
             if kind == "pairing.bond"]
    assert bonds == [("failed", None), ("timed-out", None), ("bonded", "failed")]
    decisions = [details["decision"] for kind, _actor, _subject, details
                 in journaled(gateway_home) if kind == "pairing.decision"]
    # 111111 accepted by us (BlueZ then fails); the hung prompt: cancelled = refused; the
    # third passkey entry repeats the first within a minute: counted, not written
    assert decisions == ["accepted", "refused"] and events.suppressed == 1


def test_pair_command_without_bluez_is_a_one_line_error(bus_address):
    async def scenario():
        with pytest.raises(CommandError, match="BlueZ is not available"):
            await pairing_command.pair_device(bus_address, METER, ScriptedTechnician(),
                                              timeout_s=2)

    run_bounded(scenario, 10)


def test_pair_refuses_devices_not_configured_for_bonding(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(pairing_command, "_allow_list", lambda _path: [METER])
    args = pairing_command.argparse.Namespace(address="11:22:33:44:55:66", config="gw.toml",
                                              bus=None, adapter="hci0", timeout=5.0)
    with pytest.raises(CommandError, match="bonding = true"):
        pairing_command.run_pair(args)
    args.address = "not-an-address"
    with pytest.raises(CommandError, match="not a Bluetooth address"):
        pairing_command.run_pair(args)


def test_terminal_technician_reads_passkeys_and_answers(capsys):
    lines = iter(["12ab", "0042", "y"])
    technician = pairing_command.TerminalTechnician(read_line=lambda _prompt: next(lines))

    async def scenario():
        assert await technician.enter_passkey(METER) == 42
        assert await technician.confirm_passkey(METER, 7) is True
        await technician.show_passkey(METER, 7, 2)

    run_bounded(scenario, 5)
    out = capsys.readouterr().out
    assert "up to six digits" in out and "Type 000007 on " + METER in out


GATEWAY_TOML = """\
[gateway]
id = "gw-1"

[broker]
host = "localhost"

[[ble.devices]]
name = "meter"
device = "glu-1"
address = "c8:fd:19:00:33:44"
bonding = true

[[ble.devices]]
name = "cuff"
device = "bp-1"
local_name = "BP7000"
bonding = true

[[ble.devices]]
name = "chest-band"
device = "hr-1"
address = "aa:bb:cc:dd:ee:ff"
"""


def test_allow_list_is_read_from_gateway_toml(tmp_path: Path, caplog):
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY_TOML)
    assert pairing_command._allow_list(str(config)) == [METER]
    assert "'cuff' has bonding = true but no address" in caplog.text
    config.write_text(GATEWAY_TOML.replace("bonding = true", "bonding = false"))
    assert pairing_command._allow_list(str(config)) == []
    assert "every pairing request will be rejected" in caplog.text


def test_ble_command_parses(tmp_path: Path):
    import argparse

    parser = argparse.ArgumentParser()
    pairing_command.register(parser.add_subparsers())
    args = parser.parse_args(["ble", "pair", METER, "--config", "gw.toml", "--timeout", "30"])
    assert args.handler is pairing_command.run_pair and args.adapter == "hci0"
    args = parser.parse_args(["ble", "agent", "--config", "gw.toml", "--bus", "unix:path=/x"])
    assert args.handler is pairing_command.run_agent and args.bus == "unix:path=/x"
