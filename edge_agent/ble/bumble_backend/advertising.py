"""Decode BLE advertising data (AD structures) into the fields of bleak's AdvertisementData.

Pure functions. Advertising bytes come from the air, so malformed structures are normal:
a truncated structure ends the data, a field of the wrong size is skipped, and nothing
here raises on any input.
"""

from __future__ import annotations

import dataclasses
import uuid

from bleak.uuids import normalize_uuid_16, normalize_uuid_32

# AD type codes, Bluetooth Assigned Numbers "Common Data Types".
_UUID16_LISTS = (0x02, 0x03)
_UUID32_LISTS = (0x04, 0x05)
_UUID128_LISTS = (0x06, 0x07)
_SHORTENED_LOCAL_NAME = 0x08
_COMPLETE_LOCAL_NAME = 0x09
_TX_POWER_LEVEL = 0x0A
_SERVICE_DATA_UUID16 = 0x16
_SERVICE_DATA_UUID32 = 0x20
_SERVICE_DATA_UUID128 = 0x21
_MANUFACTURER_SPECIFIC_DATA = 0xFF


@dataclasses.dataclass(frozen=True)
class DecodedAdvertisement:
    """The subset of advertising data bleak exposes, UUIDs in bleak's 128-bit text form."""

    local_name: str | None = None
    manufacturer_data: dict[int, bytes] = dataclasses.field(default_factory=dict)
    service_data: dict[str, bytes] = dataclasses.field(default_factory=dict)
    service_uuids: list[str] = dataclasses.field(default_factory=list)
    tx_power: int | None = None

    def merged_over(self, older: DecodedAdvertisement) -> DecodedAdvertisement:
        """Newer fields win, absent fields keep older values (BlueZ accumulates them too)."""
        return DecodedAdvertisement(
            local_name=self.local_name if self.local_name is not None else older.local_name,
            manufacturer_data={**older.manufacturer_data, **self.manufacturer_data},
            service_data={**older.service_data, **self.service_data},
            service_uuids=_unique(older.service_uuids + self.service_uuids),
            tx_power=self.tx_power if self.tx_power is not None else older.tx_power,
        )


def split_ad_structures(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) pairs; a zero length ends significant data (Core Vol 3 Part C 11)."""
    structures: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        length = data[offset]
        if length == 0:
            break
        end = offset + 1 + length
        if end > len(data):
            break  # truncated structure: the rest is not trustworthy
        structures.append((data[offset + 1], bytes(data[offset + 2 : end])))
        offset = end
    return structures


def decode_advertising_data(data: bytes) -> DecodedAdvertisement:
    complete_name: str | None = None
    shortened_name: str | None = None
    manufacturer_data: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    service_uuids: list[str] = []
    tx_power: int | None = None
    for ad_type, payload in split_ad_structures(data):
        if ad_type in _UUID16_LISTS:
            service_uuids += _uuid_list(payload, 2)
        elif ad_type in _UUID32_LISTS:
            service_uuids += _uuid_list(payload, 4)
        elif ad_type in _UUID128_LISTS:
            service_uuids += _uuid_list(payload, 16)
        elif ad_type == _COMPLETE_LOCAL_NAME:
            complete_name = payload.decode("utf-8", errors="replace")
        elif ad_type == _SHORTENED_LOCAL_NAME:
            shortened_name = payload.decode("utf-8", errors="replace")
        elif ad_type == _TX_POWER_LEVEL and len(payload) == 1:
            tx_power = int.from_bytes(payload, "little", signed=True)
        elif ad_type == _MANUFACTURER_SPECIFIC_DATA and len(payload) >= 2:
            manufacturer_data[int.from_bytes(payload[:2], "little")] = payload[2:]
        elif ad_type == _SERVICE_DATA_UUID16 and len(payload) >= 2:
            service_data[_uuid_text(payload[:2])] = payload[2:]
        elif ad_type == _SERVICE_DATA_UUID32 and len(payload) >= 4:
            service_data[_uuid_text(payload[:4])] = payload[4:]
        elif ad_type == _SERVICE_DATA_UUID128 and len(payload) >= 16:
            service_data[_uuid_text(payload[:16])] = payload[16:]
    return DecodedAdvertisement(
        local_name=complete_name if complete_name is not None else shortened_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=_unique(service_uuids),
        tx_power=tx_power,
    )


def _uuid_list(payload: bytes, size: int) -> list[str]:
    whole = len(payload) - len(payload) % size  # a trailing partial UUID is dropped
    return [_uuid_text(payload[i : i + size]) for i in range(0, whole, size)]


def _uuid_text(little_endian: bytes) -> str:
    if len(little_endian) == 2:
        return normalize_uuid_16(int.from_bytes(little_endian, "little"))
    if len(little_endian) == 4:
        return normalize_uuid_32(int.from_bytes(little_endian, "little"))
    return str(uuid.UUID(bytes=little_endian[::-1]))


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
