"""BLE ingest: standard health devices and VitalBridge boards in, transport-neutral events out.

  profiles    which SIG characteristics we subscribe to; decoded value -> Readings (pure)
  connection  one device: establish_connection, setup on every reconnect, RACP, fragments
  manager     scanner, allow-list, connection cap, RSSI/last-seen, status, send

See docs/ble-ingest.md. Wire bytes are decoded only by protocol/ (gatt, fragments).
"""

from edge_agent.ble_ingest.connection import (
    BleEvent,
    BleIngestEvent,
    ConnectionOptions,
    ConnectionState,
    CursorStore,
    DeviceConditions,
    DeviceConfig,
    DeviceUnavailable,
    FirmwareMessage,
    LinkNote,
    LinkStatus,
    MemoryCursorStore,
    ReconnectPolicy,
    Rejected,
)
from edge_agent.ble_ingest.manager import Advertiser, BleDeviceStatus, BleManager
from edge_agent.ble_ingest.profiles import PROFILES, CharacteristicProfile, Reading, interpret

__all__ = [
    "PROFILES",
    "Advertiser",
    "BleDeviceStatus",
    "BleEvent",
    "BleIngestEvent",
    "BleManager",
    "CharacteristicProfile",
    "ConnectionOptions",
    "ConnectionState",
    "CursorStore",
    "DeviceConditions",
    "DeviceConfig",
    "DeviceUnavailable",
    "FirmwareMessage",
    "LinkNote",
    "LinkStatus",
    "MemoryCursorStore",
    "Reading",
    "ReconnectPolicy",
    "Rejected",
    "interpret",
]
