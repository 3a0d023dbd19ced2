"""Map bumble's discovered GATT proxies onto bleak's service collection, as BlueZ shows it.

BlueZ conventions kept on purpose, because the agent runs on BlueZ in production:
- a characteristic's ``handle`` is its *declaration* handle (BlueZ names the D-Bus object
  ``charXXXX`` after it); the value handle, used on the air, is always declaration + 1
  (Core Vol 3 Part G 3.3);
- the Generic Access service (0x1800) is hidden: BlueZ claims it for itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.uuids import normalize_uuid_16
from bumble.core import UUID
from bumble.gatt_client import CharacteristicProxy, ServiceProxy

GENERIC_ACCESS_SERVICE = normalize_uuid_16(0x1800)
CLIENT_CHARACTERISTIC_CONFIGURATION = normalize_uuid_16(0x2902)
BLUEZ_HIDDEN_SERVICES = frozenset({GENERIC_ACCESS_SERVICE})


def bleak_uuid(bumble_uuid: UUID) -> str:
    """bumble stores UUIDs little-endian; bleak uses lowercase 128-bit text."""
    return str(uuid.UUID(bytes=bumble_uuid.uuid_128_bytes[::-1]))


def property_names(properties: int) -> list[CharacteristicPropertyName]:
    """Characteristic property bits -> BlueZ/bleak names, in bit order."""
    return [name for bit, name in sorted(CHARACTERISTIC_PROPERTIES.items()) if properties & bit]


def value_handle(characteristic: BleakGATTCharacteristic) -> int:
    return characteristic.handle + 1


def build_service_collection(
    services: Iterable[ServiceProxy],
    max_write_without_response_size: Callable[[], int],
    hidden_services: frozenset[str] = BLUEZ_HIDDEN_SERVICES,
) -> BleakGATTServiceCollection:
    collection = BleakGATTServiceCollection()
    for service in services:
        service_uuid = bleak_uuid(service.uuid)
        if service_uuid in hidden_services:
            continue
        bleak_service = BleakGATTService(service, service.handle, service_uuid)
        collection.add_service(bleak_service)
        for characteristic in service.characteristics:
            bleak_characteristic = _map_characteristic(
                characteristic, bleak_service, max_write_without_response_size
            )
            collection.add_characteristic(bleak_characteristic)
            for descriptor in characteristic.descriptors:
                collection.add_descriptor(
                    BleakGATTDescriptor(
                        descriptor,
                        descriptor.handle,
                        bleak_uuid(descriptor.type),
                        bleak_characteristic,
                    )
                )
    return collection


def _map_characteristic(
    characteristic: CharacteristicProxy[bytes],
    service: BleakGATTService,
    max_write_without_response_size: Callable[[], int],
) -> BleakGATTCharacteristic:
    return BleakGATTCharacteristic(
        characteristic,
        characteristic.handle - 1,  # declaration handle, as BlueZ reports it
        bleak_uuid(characteristic.uuid),
        property_names(int(characteristic.properties)),
        max_write_without_response_size,
        service,
    )
