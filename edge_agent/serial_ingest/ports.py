"""Finding serial ports: an explicit path, or a USB device by VID/PID (and serial number).

The matching is a pure function over port descriptions, so it is tested with port
objects built by hand; `system_ports()` is the only call that asks the OS
(serial.tools.list_ports). On a gateway, prefer explicit /dev/serial/by-id/... paths for
devices behind generic USB-serial bridges, and VID/PID matching for devices whose USB ids
are their own (docs/serial.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PortInfo:
    """What the OS says about one serial port (the fields of pyserial's ListPortInfo)."""

    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    description: str = ""

    @classmethod
    def from_listing(cls, info: Any) -> PortInfo:
        """From a pyserial ListPortInfo or any object with the same attributes."""
        return cls(
            device=str(info.device),
            vid=getattr(info, "vid", None),
            pid=getattr(info, "pid", None),
            serial_number=getattr(info, "serial_number", None),
            manufacturer=getattr(info, "manufacturer", None),
            product=getattr(info, "product", None),
            description=getattr(info, "description", "") or "",
        )

    @property
    def usb_id(self) -> str:
        if self.vid is None or self.pid is None:
            return "not USB"
        return f"{self.vid:04x}:{self.pid:04x}"


def _parse_hex16(text: str, what: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not hexadecimal") from None
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what} {text!r} is not a 16-bit USB id")
    return value


@dataclass(frozen=True, slots=True)
class UsbMatch:
    """A USB serial device by vendor and product id, optionally narrowed by serial number."""

    vid: int
    pid: int
    serial_number: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("vid", self.vid), ("pid", self.pid)):
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                raise ValueError(f"usb {what} must be an integer 0..0xffff, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> UsbMatch:
        """From "303a:1001" or "303a:1001:SERIAL" (the form lsusb prints, plus serial)."""
        parts = text.strip().split(":", 2)
        if len(parts) < 2:
            raise ValueError(f"usb id {text!r} must look like VID:PID or VID:PID:SERIAL")
        serial_number = parts[2] if len(parts) == 3 and parts[2] else None
        return cls(_parse_hex16(parts[0], "vid"), _parse_hex16(parts[1], "pid"), serial_number)

    def matches(self, port: PortInfo) -> bool:
        if port.vid != self.vid or port.pid != self.pid:
            return False
        return self.serial_number is None or port.serial_number == self.serial_number

    def __str__(self) -> str:
        text = f"{self.vid:04x}:{self.pid:04x}"
        return f"{text}:{self.serial_number}" if self.serial_number else text


def find_ports(listing: Iterable[Any], match: UsbMatch) -> list[PortInfo]:
    """The ports of `listing` (ListPortInfo-like objects) that `match` selects, by device."""
    ports = (PortInfo.from_listing(info) for info in listing)
    return sorted((port for port in ports if match.matches(port)), key=lambda p: p.device)


class PortNotFound(LookupError):
    """No port, or more than one, answers to a configured USB match right now."""


def resolve_usb(listing: Iterable[Any], match: UsbMatch) -> PortInfo:
    """Exactly one port for `match`; PortNotFound if none or several (never guess between
    two devices that could belong to different patients)."""
    found = find_ports(listing, match)
    if not found:
        raise PortNotFound(f"no serial port with usb id {match}")
    if len(found) > 1:
        devices = ", ".join(port.device for port in found)
        raise PortNotFound(
            f"{len(found)} serial ports with usb id {match} ({devices}): "
            "add the serial number to choose one"
        )
    return found[0]


def system_ports() -> list[Any]:
    """The OS's serial ports (pyserial ListPortInfo objects)."""
    from serial.tools import list_ports

    return list(list_ports.comports())


PortLister = Callable[[], Iterable[Any]]
