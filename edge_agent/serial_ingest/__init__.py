"""Serial ingest: USB/UART devices in, transport-neutral events out (docs/serial.md).

  ports       find a port by explicit path or USB VID/PID (pure matching + pyserial listing)
  link        one open port on the asyncio loop (pyserial opens it, add_reader reads it)
  drivers     byte protocols -> events: VitalBridge frames, Contec CMS50 oximeters
  supervisor  keeps configured ports open, detects unplug, reopens with backoff, counts junk
"""

from edge_agent.serial_ingest.drivers import (
    DRIVERS,
    DeviceStatus,
    DriverError,
    Frame,
    LinkNote,
    LinkStatus,
    Measurement,
    SerialDriver,
    SerialEvent,
    SerialSettings,
    make_driver,
)
from edge_agent.serial_ingest.link import LinkError, LinkLost, SerialLink
from edge_agent.serial_ingest.ports import PortInfo, PortNotFound, UsbMatch, find_ports
from edge_agent.serial_ingest.supervisor import (
    Backoff,
    PortConfig,
    PortEvent,
    PortState,
    PortStatus,
    PortUnavailable,
    SerialSupervisor,
)

__all__ = [
    "DRIVERS",
    "Backoff",
    "DeviceStatus",
    "DriverError",
    "Frame",
    "LinkError",
    "LinkLost",
    "LinkNote",
    "LinkStatus",
    "Measurement",
    "PortConfig",
    "PortEvent",
    "PortInfo",
    "PortNotFound",
    "PortState",
    "PortStatus",
    "PortUnavailable",
    "SerialDriver",
    "SerialEvent",
    "SerialLink",
    "SerialSettings",
    "SerialSupervisor",
    "UsbMatch",
    "find_ports",
    "make_driver",
]
