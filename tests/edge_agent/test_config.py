"""gateway.toml: parsed into the components' own settings, every problem named by its key
path, hostile documents refused with ConfigError only; `vitalbridge agent check-config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms.grades import Grade
from edge_agent.commands import agent as agent_command
from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.serial_ingest import UsbMatch

FULL = """\
[gateway]
id = "gw-0042"
data_dir = "/var/lib/vitalbridge"

[broker]
host = "broker.example.org"
keepalive_s = 20

[broker.tls]
ca = "/etc/vitalbridge/org-tls-ca.pem"
cert = "certs/broker-client.pem"
key = "/var/lib/vitalbridge/keys/broker-client.key"

[uplink]
max_in_flight = 32
urgent_reserve = 4
receipt_timeout_s = 120

[[serial]]
name = "bed1-board"
device = "ox-1"
usb = "303a:1001:F4:12:FA:00:11:22"

[[serial]]
name = "bed1-oximeter"
device = "cms-1"
driver = "contec-cms50"
path = "/dev/serial/by-id/usb-Prolific-if00"
baudrate = 4800

[ble]
max_connections = 2

[[ble.devices]]
name = "chest-band"
device = "hr-1"
address = "aa:bb:cc:dd:ee:ff"

[[ble.devices]]
name = "meter"
device = "glu-1"
local_name = "Gluco"
service_uuid = "1808"
bonding = true

[journal]
retention_days = 400
disk_budget_mb = 512

[alarms]
escalate_after_s = 90
critical_grade = "orange"

[eventlog]
transmissions = "refusals"

[metrics]
port = 9464

[logging]
level = "debug"
format = "text"
"""

MINIMAL = {"gateway": {"id": "gw-1"}, "broker": {"host": "localhost"}}


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, Path("/etc/vitalbridge/gateway.toml"))
    return caught.value.problems


def with_(section: str, **values: Any) -> dict[str, Any]:
    doc = {key: dict(value) for key, value in MINIMAL.items()}
    doc.setdefault(section, {}).update(values)
    return doc


def test_a_full_file_maps_onto_the_components_settings(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.gateway.id == "gw-0042"
    assert config.gateway.keys_dir == Path("/var/lib/vitalbridge/keys")
    assert (config.broker.host, config.broker.port, config.broker.keepalive_s) == \
        ("broker.example.org", 8883, 20)  # TLS: the MQTT-over-TLS port by default
    assert config.broker.tls is not None
    assert config.broker.tls.cert == tmp_path / "certs/broker-client.pem"  # relative: file dir
    assert (config.uplink.max_in_flight, config.uplink.urgent_reserve,
            config.uplink.receipt_timeout_s) == (32, 4, 120.0)
    board, oximeter = config.serial
    assert board.device == "ox-1"
    assert board.port.usb == UsbMatch.parse("303a:1001:F4:12:FA:00:11:22")
    assert board.port.driver_name == "vitalbridge"  # implied by the USB ids
    assert (oximeter.port.driver, oximeter.port.baudrate) == ("contec-cms50", 4800)
    band, meter = config.ble.devices
    assert config.ble.max_connections == 2
    assert band.config.address == "AA:BB:CC:DD:EE:FF" and band.device == "hr-1"
    assert meter.config.service_uuid == "00001808-0000-1000-8000-00805f9b34fb"
    assert meter.config.bonding is True
    assert config.journal.retention_s == 400 * 86400
    assert config.journal.budget_bytes == 512 * 1024 * 1024
    assert config.alarms.critical is Grade.ORANGE and config.alarms.escalate_after_s == 90
    assert config.eventlog.transmissions == "refusals"
    assert config.metrics.port == 9464 and config.metrics.addr == "127.0.0.1"
    assert (config.logging.level, config.logging.format) == ("DEBUG", "text")


def test_defaults_of_a_minimal_file() -> None:
    config = parse_config(MINIMAL, Path("/etc/vitalbridge/gateway.toml"))
    assert config.broker.port == 1883 and config.broker.tls is None
    assert config.gateway.data_dir == Path("/var/lib/vitalbridge")
    assert config.serial == () and config.ble.devices == ()
    assert config.journal.budget_bytes is None and config.metrics.port is None
    assert config.alarms.critical is Grade.YELLOW


def test_errors_name_the_key_path_and_the_problem() -> None:
    assert problems(with_("broker", port="abc")) == [
        'broker.port: must be an integer 1..65535, got "abc"']
    assert problems(with_("broker", port=70000)) == [
        "broker.port: must be an integer 1..65535, got 70000"]
    assert problems(with_("broker", port=True)) == [
        "broker.port: must be an integer 1..65535, got true"]
    assert problems(with_("journal", retention_days=0)) == [
        "journal.retention_days: must be a number > 0, got 0"]
    assert problems(with_("logging", level="loud")) == [
        'logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got "loud"']
    assert problems(with_("gateway", id="gw 1")) == [
        'gateway.id: must be 1-64 of letters, digits, \'-\', \'_\', \'.\' (a topic segment), '
        'got "gw 1"']
    assert problems(with_("uplink", max_in_flight=8, urgent_reserve=8)) == [
        "uplink.urgent_reserve: must be below uplink.max_in_flight (8), got 8"]


def test_every_problem_is_reported_at_once() -> None:
    doc = {"gateway": {"id": "gw-1", "data_dri": "/x"}, "broker": {"port": "x"},
           "metrics": {"port": -1}, "extra": 1}
    found = problems(doc)
    assert "gateway.data_dri: unknown key; did you mean 'data_dir'?" in found
    assert "broker.host: missing" in found
    assert 'broker.port: must be an integer 1..65535, got "x"' in found
    assert "metrics.port: must be an integer 0..65535, got -1" in found
    assert any(p.startswith("extra: unknown key") for p in found)


def test_missing_sections_and_wrong_shapes() -> None:
    assert problems({"broker": {"host": "h"}}) == ["gateway: missing table"]
    assert problems({"gateway": {"id": "g"}, "broker": "localhost"}) == [
        'broker: must be a table, got "localhost"']
    assert problems(dict(MINIMAL, serial={"name": "x"})) == [
        "serial: must be an array of tables ([[serial]]), got a table"]


def test_serial_and_ble_entries_are_checked_where_they_are() -> None:
    found = problems(dict(MINIMAL, serial=[
        {"name": "a", "device": "ox-1", "driver": "vitalbridge", "path": "/dev/x",
         "usb": "303a:1001"},
        {"name": "b", "device": "ox-2", "driver": "modem", "path": "/dev/y"},
        {"name": "c", "device": "ox-3", "usb": "zz"},
        {"name": "d", "path": "/dev/z", "driver": "vitalbridge"},
    ]))
    assert "serial[0]: give exactly one of 'path' or 'usb'" in found
    assert 'serial[1].driver: must be one of vitalbridge, contec-cms50, got "modem"' in found
    assert any(p.startswith("serial[2].usb: usb id 'zz' must look like VID:PID") for p in found)
    assert "serial[3].device: missing" in found
    found = problems(dict(MINIMAL, ble={"devices": [
        {"name": "x", "device": "hr-1", "address": "not-an-address"},
        {"name": "y", "device": "hr-2"},
        {"name": "z", "device": "hr-3", "service_uuid": "nope"}]}))
    assert "ble.devices[0]: 'address' must look like AA:BB:CC:DD:EE:FF" in found
    assert "ble.devices[1]: give 'address', 'local_name' or 'service_uuid'" in found
    assert 'ble.devices[2].service_uuid: is not a UUID, got "nope"' in found


def test_one_device_one_link_and_unique_names() -> None:
    found = problems(dict(MINIMAL, serial=[
        {"name": "a", "device": "ox-1", "driver": "vitalbridge", "path": "/dev/x"},
        {"name": "a", "device": "ox-2", "driver": "vitalbridge", "path": "/dev/y"}],
        ble={"devices": [{"name": "b", "device": "ox-1", "local_name": "B"}]}))
    assert "serial: name must be unique, repeated: a" in found
    assert "serial/ble: device must be unique, repeated: ox-1" in found


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[gateway]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=True), st.text(max_size=12))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_SECTION_KEYS = st.sampled_from(["id", "data_dir", "host", "port", "tls", "name", "device",
                                 "driver", "path", "usb", "baudrate", "address", "devices",
                                 "max_connections", "retention_days", "disk_budget_mb",
                                 "level", "format", "ca", "cert", "key", "bonding",
                                 "critical_grade", "transmissions", "max_in_flight"])
_SECTIONS = st.sampled_from(["gateway", "broker", "uplink", "serial", "ble", "journal",
                             "alarms", "eventlog", "metrics", "logging"])
_DOCS = st.dictionaries(_SECTIONS, st.one_of(
    _VALUES, st.dictionaries(_SECTION_KEYS, _VALUES, max_size=6),
    st.lists(st.dictionaries(_SECTION_KEYS, _VALUES, max_size=6), max_size=3)), max_size=8)


@settings(deadline=None)
@given(_DOCS)
def test_hostile_documents_raise_only_config_error(doc: dict[str, Any]) -> None:
    try:
        parse_config(doc, Path("/etc/vitalbridge/gateway.toml"))
    except ConfigError as exc:
        assert exc.problems and all(": " in p for p in exc.problems)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "gateway.toml"
    good.write_text(FULL)
    assert agent_command.main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: gateway gw-0042")
    assert "note: gateway signing key /var/lib/vitalbridge/keys/gateway-signing.key" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "gw-1"\n[broker]\nhost = "h"\nport = "abc"\n')
    assert agent_command.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f'{bad}: broker.port: must be an integer 1..65535, got "abc"' in err
    assert "1 problem(s)" in err
