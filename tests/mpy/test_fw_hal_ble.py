# SimHal's radio: ble() is a SimBle bridged to the configured peer (VB_SIM_BLE), or None
# without one; ble_uuid() builds the UUID objects gatts_register_services needs.
from firmware.hal.sim import SimHal
from firmware.hal.sim_ble import UUID, SimBle


def _hal(tmp, ble=None):
    return SimHal(flash_dir="/tmp/vb-mpy-hal-ble-" + tmp, seed=1, ble=ble)


def test_no_address_no_radio():
    assert _hal("a").ble() is None


def test_address_gives_one_simble_not_yet_connected():
    hal = _hal("b", ble="tcp:127.0.0.1:9")
    radio = hal.ble()
    assert isinstance(radio, SimBle) and radio.address == "tcp:127.0.0.1:9"
    assert hal.ble() is radio  # one radio per board, like bluetooth.BLE()
    assert not radio.closed and radio.active() is False  # nothing dialled before active(True)


def test_bad_address_refused_at_boot():
    try:
        _hal("c", ble="127.0.0.1:9")
    except ValueError as exc:
        assert "tcp:HOST:PORT" in str(exc)
    else:
        raise AssertionError("a malformed VB_SIM_BLE was accepted")


def test_ble_uuid_builds_uuid_objects():
    hal = _hal("d")
    short = hal.ble_uuid(0x180D)
    long = hal.ble_uuid("C7FC0001-0000-4000-8000-00805F9B34FB")
    assert isinstance(short, UUID) and isinstance(long, UUID)
    assert short == UUID(0x180D) and long == UUID("c7fc0001-0000-4000-8000-00805f9b34fb")
    try:
        hal.ble_uuid(0x10000)
    except ValueError:
        pass
    else:
        raise AssertionError("a 17-bit UUID was accepted")


def test_ble_transport_uses_the_hal_radio_and_uuids():
    from firmware.transport.ble import BleTransport

    hal = _hal("e", ble="unix:/tmp/vb-no-such-socket")
    transport = BleTransport(hal)
    assert transport.ble is hal.ble()
    assert transport._uuid == hal.ble_uuid


class _FakeBluetooth:
    """Stands in for the ESP32 port's `bluetooth` module (records what UUID() got)."""

    class UUID:
        def __init__(self, value):
            self.value = value


def test_esp32_ble_uuid_is_bluetooth_uuid():
    import sys

    from test_fw_drivers import _forget_fake_machine, _import_esp32_hal

    esp32 = _import_esp32_hal()
    sys.modules["bluetooth"] = _FakeBluetooth
    try:
        hal = esp32.Esp32Hal(flash_dir="/tmp/vb-mpy-hal-ble-esp32")
        uuid = hal.ble_uuid(0x1822)
        assert isinstance(uuid, _FakeBluetooth.UUID) and uuid.value == 0x1822
    finally:
        sys.modules.pop("bluetooth", None)
        _forget_fake_machine()
