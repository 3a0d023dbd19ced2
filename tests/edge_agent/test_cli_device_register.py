"""`vitalbridge device register / list / show` through the CLI entry point (edge_agent.cli.main)
against a data directory provisioned as for the running agent (simulator/agent_home), made
writable for the technician's commands the way `gateway provision` + `install-cert` leave it.

What is checked: a BLE and a serial standard device are registered and bound; list/show report
them (certificate state "none (standard)", link address, the patient; `--at` in the future
shows the calibration and registration that will have lapsed by then); refusals leave the
registry, the key journal and the event journal untouched; a standard device never gets a key
or a key-journal row.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_cli_technician import command_runner, journal_entries

from edge_agent.commands import common
from edge_agent.registry import Registry
from simulator.agent_home import Home, provision_home, write_gateway_state

GW = "gw-1"
BLE_ADDRESS = "c0:ff:ee:00:00:01"
USB_ID = "10c4:ea60:CMS-77"
ACTOR = "technician:t-0042"  # command_runner runs as USER=t-0042


def cli_home(data_dir: Path, devices: list[tuple[str, str | None]]) -> Home:
    home = provision_home(data_dir, GW, devices)
    write_gateway_state(home)
    return home


@pytest.fixture
def vb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = cli_home(tmp_path / "data", [("ox-1", "p-0001")])
    monkeypatch.setenv(common.DATA_DIR_ENV, str(home.data_dir))
    monkeypatch.setenv("COLUMNS", "200")  # tables are not cut to the captured terminal
    return home.data_dir


def register_ble(vb: Any, device: str = "plx-1", address: str = BLE_ADDRESS,
                 *extra: object, serial: str = "A1") -> Any:
    return vb("device", "register", device, "--transport", "ble", "--address", address,
              "--model", "PLX-9", "--serial", serial, "--firmware", "2.1", *extra)


def register_serial(vb: Any, device: str = "cms-1", *where: object,
                    serial: str = "C77") -> Any:
    return vb("device", "register", device, "--transport", "serial",
              *(where or ("--usb", USB_ID)), "--model", "CMS50D+", "--serial", serial)


def snapshot(data: Path) -> dict[str, Any]:
    """Everything a refused command must leave as it was."""
    with sqlite3.connect(data / "registry.sqlite3") as conn:
        tables = {name: conn.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()
                  for name in ("devices", "patients", "bindings", "keys", "key_steps")}
    events = journal_entries(data) if (data / common.EVENTS_FILE).exists() else []
    return {**tables, "events": [(e.kind, e.subject) for e in events]}


# ---------------------------------------------------------------- registering and listing


def test_a_ble_and_a_serial_device_are_registered_bound_and_listed(vb: Any, data: Path) -> None:
    with Registry.open_in(data) as registry:
        key_steps_before = registry.key_journal()
        keys_before = registry.keys()

    ble = register_ble(vb, "plx-1", BLE_ADDRESS, "--patient", "p-0001", "--calibration-due",
                       "2030-01-01", "--registration", "EU-MDR-9",
                       "--registration-valid-until", "2031-06-30", "--json")
    assert ble.status == 0, ble.err
    assert ble.json == {"device_id": "plx-1", "kind": "standard", "transport": "ble",
                        "address": BLE_ADDRESS.upper(), "model": "PLX-9", "serial": "A1",
                        "patient": "p-0001"}
    serial = register_serial(vb, "cms-1", "--usb", USB_ID)
    assert serial.status == 0, serial.err
    assert "registered standard device cms-1" in serial.out
    assert "usb:10c4:ea60:CMS-77" in serial.out and "gateway.toml" in serial.out
    by_path = register_serial(vb, "cms-2", "--port", "/dev/serial/by-id/usb-cms50-if00",
                              serial="C78")
    assert by_path.status == 0, by_path.err

    listing = vb("device", "list", "--json")
    assert listing.status == 0, listing.err
    rows = {row["id"]: row for row in listing.json["devices"]}
    assert set(rows) == {"ox-1", "plx-1", "cms-1", "cms-2"}
    assert rows["plx-1"]["patient"] == "p-0001" and rows["ox-1"]["patient"] == "p-0001"
    assert rows["cms-1"]["patient"] is None
    for device, transport, address in (("plx-1", "ble", BLE_ADDRESS.upper()),
                                       ("cms-1", "serial", "usb:10c4:ea60:CMS-77"),
                                       ("cms-2", "serial",
                                        "path:/dev/serial/by-id/usb-cms50-if00")):
        row = rows[device]
        assert (row["kind"], row["transport"], row["address"]) == ("standard", transport,
                                                                   address)
        assert (row["certificate_state"], row["certificate_expires"]) == \
            ("none (standard)", None)
    assert rows["ox-1"]["kind"] == "sealing" and rows["ox-1"]["certificate_state"] == "active"
    assert rows["plx-1"]["flags"] == []
    assert set(rows["cms-1"]["flags"]) == {"registration-missing", "registration-unknown",
                                           "calibration-unknown"}

    table = vb("device", "list")
    assert table.status == 0 and "plx-1" in table.out and "none (standard)" in table.out

    with Registry.open_in(data) as registry:
        assert registry.key_journal() == key_steps_before  # no key, no key-journal row
        assert registry.keys() == keys_before
        for device in ("plx-1", "cms-1", "cms-2"):
            assert registry.keys("device", device) == []
            assert registry.device(device).enrolled_by == ACTOR
        assert registry.device_at_link("serial", "usb:10c4:ea60:CMS-77").id == "cms-1"
        [binding] = registry.bindings(device_id="plx-1")
        assert (binding.patient_id, binding.until, binding.created_by) == ("p-0001", None, ACTOR)

    entries = journal_entries(data)  # verified chain, signed by the gateway key
    assert not any(e.kind.startswith(("key.", "certificate.")) for e in entries)
    changes = [(e.subject, e.details["source"]) for e in entries if e.kind == "config.changed"]
    assert changes == [("device:plx-1", "device-register"), ("device:plx-1", "device-binding"),
                       ("device:cms-1", "device-register"), ("device:cms-2", "device-register")]
    assert all(e.actor == ACTOR for e in entries)


def test_show_and_list_at_a_future_instant_show_what_will_have_lapsed(vb: Any,
                                                                       data: Path) -> None:
    assert register_ble(vb, "plx-1", BLE_ADDRESS, "--patient", "p-0001", "--calibration-due",
                        "2030-01-01", "--registration", "EU-MDR-9",
                        "--registration-valid-until", "2031-06-30").status == 0
    now = vb("device", "show", "plx-1", "--json")
    assert now.status == 0, now.err
    assert now.json["flags"] == [] and now.json["keys"] == [] and now.json["certificates"] == []
    assert now.json["certificate_state"] == "none (standard)"
    assert [b["patient"] for b in now.json["bindings"]] == ["p-0001"]

    soon = vb("device", "show", "plx-1", "--at", "2029-12-15", "--json")
    assert soon.json["flags"] == ["calibration-due-soon"]
    lapsed = vb("device", "list", "--at", "2031-07-01T00:00:00Z", "--json")
    [row] = [r for r in lapsed.json["devices"] if r["id"] == "plx-1"]
    assert row["flags"] == ["registration-expired", "calibration-overdue"]
    assert row["patient"] == "p-0001" and lapsed.json["at"] == "2031-07-01T00:00:00Z"
    # ...while the sealing device's certificate (one year) has expired by then
    [sealing] = [r for r in lapsed.json["devices"] if r["id"] == "ox-1"]
    assert sealing["certificate_state"] == "expired"

    text = vb("device", "show", "plx-1", "--at", "2031-07-01")
    assert text.status == 0, text.err
    assert "none (standard)" in text.out
    assert "registration-expired" in text.out and "calibration-overdue" in text.out


# ---------------------------------------------------------------- refusals


def test_the_same_device_or_an_address_in_use_is_refused(vb: Any, data: Path) -> None:
    assert register_ble(vb, "plx-1").status == 0
    assert register_serial(vb, "cms-1").status == 0
    before = snapshot(data)

    twice = register_ble(vb, "plx-1", "c0:ff:ee:00:00:02", serial="A2")
    assert twice.status == 2 and "device 'plx-1' is already enrolled" in twice.err
    assert "Traceback" not in twice.err
    same_address = register_ble(vb, "plx-2", BLE_ADDRESS.upper(), serial="A2")  # same radio
    assert same_address.status == 2
    assert "address" in same_address.err and "plx-1" in same_address.err
    same_port = register_serial(vb, "cms-2", "--usb", USB_ID.upper())
    assert same_port.status == 2 and "cms-1" in same_port.err
    sealing_id = register_ble(vb, "ox-1", "c0:ff:ee:00:00:03", serial="A3")  # enrolled device
    assert sealing_id.status == 2 and "already enrolled" in sealing_id.err
    relabelled = register_serial(vb, "cms-2", "--port", "/dev/ttyUSB3")  # same model + serial
    assert relabelled.status == 2 and "already enrolled as device 'cms-1'" in relabelled.err
    assert snapshot(data) == before

    # once the device is retired, its address may be given to a replacement
    retired = vb("device", "retire", "plx-1", "--reason", "battery swollen")
    assert retired.status == 0, retired.err
    replacement = register_ble(vb, "plx-2", BLE_ADDRESS, serial="A2")
    assert replacement.status == 0, replacement.err


@pytest.mark.parametrize(("argv", "message"), [
    (("--transport", "ble", "--address", "c0:ff:ee"), "AA:BB:CC:DD:EE:FF"),
    (("--transport", "ble", "--address", "c0:ff:ee:00:00:01\nx"), "AA:BB:CC:DD:EE:FF"),
    (("--transport", "ble", "--address", "zz:ff:ee:00:00:01"), "AA:BB:CC:DD:EE:FF"),
    (("--transport", "ble", "--port", "/dev/ttyUSB0"), "--address"),
    (("--transport", "serial", "--address", BLE_ADDRESS), "--port PATH or --usb"),
    (("--transport", "serial", "--port", "ttyUSB0"), "absolute path"),
    (("--transport", "serial", "--port", "/dev/tty\nUSB0"), "path:/dev/"),
    (("--transport", "serial", "--usb", "10c4"), "--usb"),
    (("--transport", "serial", "--usb", "10c4:zzzz"), "--usb"),
    (("--transport", "serial", "--usb", "10c4:ea60:bad serial"), "usb:VVVV:PPPP"),
    (("--transport", "ble", "--address", BLE_ADDRESS, "--patient", "Jane Doe"), "pseudonym"),
    (("--transport", "ble", "--address", BLE_ADDRESS, "--registration", "EU-1"),
     "go together"),
    (("--transport", "ble", "--address", BLE_ADDRESS, "--calibration-due", "soon"),
     "ISO-8601"),
    (("--transport", "ble", "--address", BLE_ADDRESS, "--model", "M\nX"), "model"),
])
def test_bad_links_and_options_are_refused_and_nothing_is_recorded(
        vb: Any, data: Path, argv: tuple[str, ...], message: str) -> None:
    before = snapshot(data)
    result = vb("device", "register", "dev-9", "--model", "M", "--serial", "S", *argv)
    assert result.status == 2, (result.out, result.err)
    assert message in result.err and "Traceback" not in result.err
    assert result.err.count("\n") <= 1 or result.err.startswith("usage:")
    assert snapshot(data) == before


def test_an_unknown_patient_pseudonym_is_registered_as_device_bind_does(vb: Any,
                                                                         data: Path) -> None:
    """`--patient` follows `device bind` / `device enroll`: a new pseudonym is recorded with
    the binding (only names are refused). A failing binding leaves no device behind."""
    result = register_ble(vb, "plx-1", BLE_ADDRESS, "--patient", "p-0099")
    assert result.status == 0, result.err
    with Registry.open_in(data) as registry:
        assert "p-0099" in registry.patients()
        assert registry.patient_at("plx-1", common.now() + 1) == "p-0099"
    # the binding fails after the device row was written: the transaction takes both back
    before = snapshot(data)
    refused = register_serial(vb, "cms-1", "--usb", USB_ID, "--patient", "x")
    assert refused.status == 2
    assert snapshot(data) == before


def test_register_needs_a_provisioned_gateway(vb: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = register_ble(vb, "plx-1", BLE_ADDRESS, "--data-dir", empty)
    assert result.status == 2 and "provision" in result.err
    assert list(empty.iterdir()) == []
