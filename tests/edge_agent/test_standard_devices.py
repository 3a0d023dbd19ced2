"""Standard (non-sealing) devices bound to patients, and compromise forwarding to a running
agent: registry rules, then the agent with the bumble-backed BLE pulse oximeter, real
mosquitto and the reference centre."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.inbox import DEVICE_COMPROMISED, client
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.registry import ConflictError, Registry, RegistryError
from simulator.agent_home import provision_home
from tests.edge_agent.test_service_integration import (
    GW,
    Rig,
    close_rig,
    make_rig,
    play,
    started,
    until,
)

ADDRESS = "c0:ff:ee:00:00:01"


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    home = provision_home(tmp_path / "data", GW, [("ox-1", "p-0001")])
    with Registry.open_in(home.data_dir) as reg:
        yield reg


def test_a_standard_device_is_registered_without_keys_and_can_be_bound(registry: Any) -> None:
    now = int(time.time())
    device = registry.register_standard_device(
        "plx-1", GW, transport="ble", address=ADDRESS, model="PLX-9", serial="A1",
        calibration_due=now + 86400 * 100, actor="technician:t-1", now=now)
    assert (device.kind, device.transport, device.address) == ("standard", "ble",
                                                               ADDRESS.upper())
    assert registry.keys("device", "plx-1") == []
    registry.bind("plx-1", "p-0001", since=now, actor="technician:t-1")
    assert registry.patient_at("plx-1", now + 1) == "p-0001"
    assert registry.device_at_link("ble", ADDRESS).id == "plx-1"
    with pytest.raises(ConflictError) as taken:
        registry.register_standard_device("plx-2", GW, transport="ble", address=ADDRESS,
                                          model="PLX-9", serial="A2", actor="t", now=now)
    assert taken.value.field == "address"


@pytest.mark.parametrize(("transport", "address"), [
    ("ble", "c0:ff:ee"), ("ble", "path:/dev/ttyUSB0"), ("serial", "/dev/ttyUSB0"),
    ("serial", "usb:303A:1001"), ("wifi", ADDRESS)])
def test_link_addresses_are_checked(registry: Any, transport: str, address: str) -> None:
    with pytest.raises(RegistryError):
        registry.register_standard_device("x-1", GW, transport=transport, address=address,
                                          model="M", serial="S", actor="t", now=1)


def test_a_link_configured_under_another_id_uses_the_registered_one(registry: Any) -> None:
    from edge_agent.registry import links

    registry.register_standard_device("cms-1", GW, transport="serial",
                                      address="usb:10c4:ea60", model="CMS50D+", serial="C1",
                                      actor="t", now=1)
    chosen, notes = links.resolve(registry, [
        links.LinkClaim("serial", "oxi", "whatever", "usb:10c4:ea60"),
        links.LinkClaim("ble", "hr", "hr-1", None)])
    assert chosen == {("serial", "oxi"): "cms-1", ("ble", "hr"): "hr-1"}
    assert len(notes) == 1 and "cms-1" in notes[0]


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    built = make_rig(tmp_path)
    yield built
    close_rig(built)


def test_a_bound_ble_oximeter_low_spo2_raises_the_alarm_for_its_patient(rig: Rig) -> None:
    from edge_agent.ble.virtual_radio import VirtualRadio
    from edge_agent.ble_ingest import ConnectionOptions, ConnectionState
    from edge_agent.service import BleBackends
    from simulator.ble_devices import PulseOximeter

    async def scenario() -> None:
        async with VirtualRadio() as radio:
            central = await radio.add_central()
            oximeter = PulseOximeter("PLX")
            await oximeter.attach(radio)
            now = int(time.time())
            with Registry.open_in(rig.home.data_dir) as registry:
                registry.register_standard_device(
                    "plx-1", GW, transport="ble", address=oximeter.address, model="PLX-9",
                    serial="A1", actor="technician:t-1", now=now)
                registry.bind("plx-1", "p-0002", since=now - 5, actor="technician:t-1")
            options = ConnectionOptions(client_backend=central.client_backend,
                                        connect_timeout_s=10.0, setup_timeout_s=5.0)
            # configured under another id: the registered one wins (it holds the binding)
            config = rig.config(serial=[], ble={"devices": [
                {"name": "plx", "device": "plx-old", "address": oximeter.address}]})
            service = await started(config, ble=BleBackends(central.scanner_backend,
                                                            central.client_backend, options))
            try:
                async with asyncio.timeout(10):
                    await service.ble.wait_for_state("plx", ConnectionState.CONNECTED)
                await oximeter.wait_subscribed(oximeter.measurement)
                await oximeter.measure(spo2=85, pr=90)
                assert await until(lambda: any(
                    a.key == "spo2:low" and a.grade == "red" and a.patient == "p-0002"
                    for a in rig.centre.active_alarms(GW)))
                assert await until(lambda: len(rig.centre.store.readings("plx-1")) >= 2)
            finally:
                await service.stop("test over")
        rows = rig.centre.store.readings("plx-1")
        assert {r["verdict"] for r in rows} == {"attested"}
        assert not any("unbound" in r["gateway_verdict"] for r in rows)
        assert rig.centre.store.readings("plx-old") == []
    play(scenario)


def test_a_compromise_declared_elsewhere_reaches_the_running_agent(rig: Rig) -> None:
    """What `vitalbridge device compromise` does: the registry first (another connection),
    then the inbox entry. The agent drops the sessions, tells the centre, raises orange."""
    data = rig.home.data_dir

    async def scenario() -> dict[str, Any]:
        service = await started(rig.config(serial=[]))
        try:
            now = int(time.time())
            with Registry.open_in(data) as registry:
                LifecycleEngine(registry).compromise("ox-1", "device lost", "technician:t-1",
                                                     now)
            result = await asyncio.to_thread(
                client.submit, data, DEVICE_COMPROMISED,
                {"device": "ox-1", "reason": "device lost", "at": now}, "technician:t-1",
                wait_s=10.0)
            assert await until(lambda: any(
                a.key == "compromised:ox-1" and a.grade == "orange" and a.patient == "p-0001"
                for a in rig.centre.active_alarms(GW)))
            assert service.directory.withdrawn("ox-1", now + 1) == "device lost"
            return result
        finally:
            await service.stop("test over")

    result = asyncio.run(asyncio.wait_for(scenario(), 45))
    assert result["state"] == "accepted", result
    assert "orange technical alarm raised" in result["reason"]
