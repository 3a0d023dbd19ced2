"""bleak scanner backend: LE scanning through the virtual central's bumble host."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakError
from bumble.device import Advertisement, Device

from edge_agent.ble.bumble_backend.advertising import DecodedAdvertisement, decode_advertising_data
from edge_agent.ble.bumble_backend.binding import BumbleDeviceDetails, resolve_central
from edge_agent.ble.virtual_radio import VirtualCentral, VirtualRadioError


class BumbleScannerBackend(BaseBleakScanner):
    """Scans on a virtual central; each advertising report becomes one detection callback.

    As on BlueZ, the fields of a device's advertisements accumulate for as long as the
    scanner runs (a name seen once in a scan response stays), and ``BLEDevice.name``
    falls back to the address with dashes when no name was ever advertised.
    """

    _bound_central: ClassVar[VirtualCentral | None] = None

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        central: VirtualCentral | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if scanning_mode not in ("active", "passive"):
            raise BleakError(f"invalid scanning mode: {scanning_mode!r}")
        self._central = resolve_central(central, type(self)._bound_central)
        self._active = scanning_mode == "active"
        self._scan_token: int | None = None
        self._accumulated: dict[str, DecodedAdvertisement] = {}

    async def start(self) -> None:
        if self._scan_token is not None:
            raise BleakError("scanner already started")
        self.seen_devices = {}
        self._accumulated = {}
        self._central.device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        try:
            self._scan_token = await self._central.start_scan(active=self._active)
        except VirtualRadioError as error:
            self._central.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            raise BleakBluetoothNotAvailableError(
                str(error), BleakBluetoothNotAvailableReason.POWERED_OFF
            ) from error
        except BaseException:
            self._central.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            raise

    async def stop(self) -> None:
        token, self._scan_token = self._scan_token, None
        if token is None:
            return
        self._central.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await self._central.stop_scan(token)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        address = advertisement.address.to_string(with_type_qualifier=False)
        # bytes(advertisement.data) is advertising data + scan response when bumble merged them.
        decoded = decode_advertising_data(bytes(advertisement.data))
        previous = self._accumulated.get(address)
        if previous is not None:
            decoded = decoded.merged_over(previous)
        self._accumulated[address] = decoded
        if not self.is_allowed_uuid(decoded.service_uuids):
            return
        advertisement_data = AdvertisementData(
            local_name=decoded.local_name,
            manufacturer_data=dict(decoded.manufacturer_data),
            service_data=dict(decoded.service_data),
            service_uuids=list(decoded.service_uuids),
            tx_power=decoded.tx_power,
            rssi=advertisement.rssi,
            platform_data=(advertisement,),
        )
        device = self.create_or_update_device(
            address,
            address,
            decoded.local_name or address.replace(":", "-"),
            BumbleDeviceDetails(self._central, advertisement.address),
            advertisement_data,
        )
        self.call_detection_callbacks(device, advertisement_data)
