"""The fleet's BLE sealing device and its gateway configuration, without a whole fleet.

* its flash: what survives the host process (seqs, outbox with the session of each entry,
  truth), and acks applied per session, as the firmware applies them;
* a device against the real agent on the virtual radio: a forced disconnect while it keeps
  measuring, then a reboot from its flash file (a new session): every sealed seq reaches the
  agent's journal, the outbox drains, acks naming the old session included;
* the `[journal] housekeeping_s` key the fleet's gateway.toml sets.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config, parse_config
from protocol import device_link
from simulator.fleet.ble_device import BleDeviceSpec, DeviceFlash, OutboxEntry
from simulator.fleet.devices import Sealed
from simulator.fleet.gateway import HOUSEKEEPING_S, gateway_toml

OLD, NEW = b"\x01" * 8, b"\x02" * 8


def entry(session_id: bytes, first: int) -> OutboxEntry:
    return OutboxEntry(session_id, first, first + 1, b"m%d" % first)


def test_flash_survives_a_reload_byte_for_byte(tmp_path: Path) -> None:
    flash = DeviceFlash(tmp_path / "flash.json", next_seq=4,
                        outbox=[entry(OLD, 0), entry(NEW, 2)],
                        truth={0: Sealed("spo2", 97.0, 100, 100.25),
                               1: Sealed("pr", 70.0, 100, 100.25)},
                        boots=2, handshakes=3, subscriptions=5, replayed=1,
                        forced=[{"how": "terminate", "links": 1}])
    flash.save()
    assert DeviceFlash.load(flash.path) == flash
    assert not (tmp_path / "flash.tmp").exists()  # written aside, then renamed
    assert DeviceFlash.load(tmp_path / "blank.json") == DeviceFlash(tmp_path / "blank.json")


def test_an_ack_drops_only_what_it_covers_of_the_session_it_names(tmp_path: Path) -> None:
    flash = DeviceFlash(tmp_path / "f.json",
                        outbox=[entry(OLD, 0), entry(OLD, 2), entry(OLD, 6), entry(NEW, 8),
                                entry(NEW, 10)])
    # an ack for the old session (sent under the new one after a reboot): upto + a range
    assert flash.apply_ack(device_link.Ack(OLD, upto=1, ranges=[(6, 7)])) == 2
    assert [(e.session_id, e.first) for e in flash.outbox] == [(OLD, 2), (NEW, 8), (NEW, 10)]
    # a range that covers half a batch does not drop it; another session's seqs are apart
    assert flash.apply_ack(device_link.Ack(NEW, ranges=[(9, 11)])) == 1
    assert flash.apply_ack(device_link.Ack(NEW, upto=3)) == 0
    assert [(e.session_id, e.first) for e in flash.outbox] == [(OLD, 2), (NEW, 8)]


def test_the_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = BleDeviceSpec("gw-01-ble1", "D1:00:00:00:01:01", b"s" * 32, b"a" * 32, b"g" * 32,
                         tmp_path / "flash.json", 7, 1000.5, 1.0, 1035.5)
    assert BleDeviceSpec.from_json(spec.to_json()) == spec


# ---------------------------------------------------------------- configuration


def test_the_fleet_gateway_toml_sets_housekeeping_and_ble_addresses(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml("gw-01", tmp_path / "data", 1883,
                                 [("gw-01-ox1", tmp_path / "tty")],
                                 [("gw-01-ble1", "D1:00:00:00:01:01")]))
    config = load_config(path)
    assert config.journal.housekeeping_s == HOUSEKEEPING_S
    (ble,) = config.ble.devices
    assert (ble.device, ble.config.address) == ("gw-01-ble1", "D1:00:00:00:01:01")


def test_housekeeping_s_defaults_to_a_minute_and_refuses_nonsense(tmp_path: Path) -> None:
    base = {"gateway": {"id": "gw", "data_dir": str(tmp_path)},
            "broker": {"host": "127.0.0.1", "port": 1883}}
    assert parse_config(base, tmp_path / "g.toml").journal.housekeeping_s == 60.0
    for bad, shown in ((0.1, "0.1"), (-1, "-1"), (7200, "7200"), ("2", '"2"'),
                       (True, "true")):
        with pytest.raises(ConfigError) as caught:
            parse_config({**base, "journal": {"housekeeping_s": bad}}, tmp_path / "g.toml")
        assert caught.value.problems == [
            f"journal.housekeeping_s: must be a number >= 0.5 and <= 3600, got {shown}"], bad
    good = {**base, "journal": {"housekeeping_s": 2}}
    assert parse_config(good, tmp_path / "g.toml").journal.housekeeping_s == 2.0


# ---------------------------------------------------------------- against the real agent


def journal_seqs(data_dir: Path, device: str) -> set[int]:
    """Seqs of the device's sealed batches the agent's journal holds (first..last)."""
    conn = sqlite3.connect(f"file:{data_dir / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT first_seq, last_seq FROM messages WHERE device_id = ? AND "
                            "kind = 'readings'", (device,)).fetchall()
    finally:
        conn.close()
    return {seq for first, last in rows if first is not None for seq in range(first, last + 1)}


def test_a_device_replays_its_outbox_after_a_disconnect_and_after_a_reboot(
        tmp_path: Path) -> None:
    import time

    from edge_agent.ble.virtual_radio import VirtualRadio
    from edge_agent.ble_ingest import ConnectionOptions, ReconnectPolicy
    from edge_agent.service import AgentService, BleBackends
    from simulator.agent_home import provision_home
    from simulator.fleet.ble_device import BleSealingDevice

    device_id, address = "gw-01-ble1", "D1:00:00:00:01:01"
    home = provision_home(tmp_path / "data", "gw-01", [(device_id, "p-0001")])
    keys = home.devices[device_id]
    spec = BleDeviceSpec(device_id, address, keys.seed, keys.agreement,
                         home.gateway_x25519_public, tmp_path / "flash.json", 1, time.time(),
                         5.0, time.time() + 3600)
    config = parse_config({
        "gateway": {"id": "gw-01", "data_dir": str(home.data_dir)},
        "broker": {"host": "127.0.0.1", "port": 9},  # none: acks do not wait for it
        "ble": {"devices": [{"name": "b", "device": device_id, "address": address}]},
        "logging": {"level": "WARNING"}}, tmp_path / "g.toml")

    async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)

    async def gateway(radio: VirtualRadio) -> AgentService:
        central = await radio.add_central()
        options = ConnectionOptions(
            client_backend=central.client_backend, connect_timeout_s=10.0,
            setup_timeout_s=5.0,
            reconnect=ReconnectPolicy(initial_s=0.05, maximum_s=0.4, stable_after_s=5.0))
        service = AgentService(config, ble=BleBackends(central.scanner_backend,
                                                       central.client_backend, options))
        await service.start()
        return service

    async def boot(radio: VirtualRadio) -> tuple[BleSealingDevice, asyncio.Task[None]]:
        """The device powered on from its flash file, living as a task."""
        device = BleSealingDevice(spec)
        await device.attach(radio)
        return device, asyncio.create_task(device.run())

    async def scenario() -> None:
        async with VirtualRadio() as radio:
            service = await gateway(radio)
            device, life = await boot(radio)
            try:
                await until(lambda: device.flash.next_seq >= 6 and device.subscribed())
                outage = await device.force_disconnect("out-of-range", for_s=1.5)
                assert outage["links"] == 1
                await until(lambda: not device.subscribed(), 3.0)
                away_from = device.flash.next_seq
                await until(lambda: device.flash.next_seq >= away_from + 4, 3.0)
                assert len(device.flash.outbox) >= 2  # measured with no link: waiting
                await until(lambda: device.flash.subscriptions >= 2)  # the agent is back
                await until(lambda: not device.flash.outbox)  # replayed and acknowledged
                assert device.flash.replayed >= 2
                # the gateway goes away; the device seals on under its session
                await service.stop("gateway down")
                stopped_at = device.flash.next_seq
                await until(lambda: device.flash.next_seq >= stopped_at + 4, 3.0)
                old_session = device.session
            finally:
                life.cancel()
                await asyncio.gather(life, return_exceptions=True)
        assert old_session is not None
        waiting = DeviceFlash.load(spec.flash).outbox
        assert waiting and {e.session_id for e in waiting} == {old_session.session_id}
        # the whole process again (as after the fleet's agent-kill): a new radio, agent and
        # device booted from its flash; new session, old-session batches acked and dropped
        async with VirtualRadio() as radio:
            service = await gateway(radio)
            reborn, life = await boot(radio)
            try:
                await until(lambda: reborn.session is not None and not reborn.flash.outbox)
                assert reborn.session.session_id != old_session.session_id
            finally:
                life.cancel()
                await asyncio.gather(life, return_exceptions=True)
                await service.stop("test over")
        flash = DeviceFlash.load(spec.flash)
        assert flash.boots == 2 and flash.handshakes == 2
        assert set(flash.truth) == set(range(flash.next_seq))
        assert set(flash.truth) <= journal_seqs(home.data_dir, device_id)

    asyncio.run(scenario())
