"""A bleak backend built on bumble: bleak's real API over simulated BLE peripherals.

``BumbleScannerBackend`` and ``BumbleClientBackend`` implement bleak 3.x's backend
interfaces on a ``VirtualCentral`` of ``edge_agent.ble.virtual_radio``. Pass them as
``backend=`` to ``BleakScanner`` / ``BleakClient`` (bleak expects a class). The easiest
way is a class bound to one central: ``central.scanner_backend``, ``central.client_backend``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.ble.bumble_backend.binding import BumbleDeviceDetails
from edge_agent.ble.bumble_backend.client import BumbleClientBackend
from edge_agent.ble.bumble_backend.scanner import BumbleScannerBackend

if TYPE_CHECKING:
    from edge_agent.ble.virtual_radio import VirtualCentral


def bind_scanner_backend(central: VirtualCentral) -> type[BumbleScannerBackend]:
    """A BumbleScannerBackend subclass whose instances scan on ``central``."""
    return type("BumbleScannerBackend", (BumbleScannerBackend,), {"_bound_central": central})


def bind_client_backend(central: VirtualCentral) -> type[BumbleClientBackend]:
    """A BumbleClientBackend subclass whose instances connect through ``central``."""
    return type("BumbleClientBackend", (BumbleClientBackend,), {"_bound_central": central})


__all__ = [
    "BumbleClientBackend",
    "BumbleDeviceDetails",
    "BumbleScannerBackend",
    "bind_client_backend",
    "bind_scanner_backend",
]
