"""How a bleak backend instance finds the virtual central it runs on.

bleak constructs backends itself (``BleakScanner(backend=cls)``), so the central travels
in one of three ways, first match wins: a ``central=`` keyword (bleak forwards unknown
keywords to the backend), the ``BLEDevice.details`` of a device our scanner found, or a
backend class bound to one central (``VirtualCentral.scanner_backend``/``client_backend``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from bleak.exc import BleakError
from bumble import hci

if TYPE_CHECKING:
    from edge_agent.ble.virtual_radio import VirtualCentral

DETAILS_SOURCE = "vitalbridge-virtual-radio"


@dataclasses.dataclass(frozen=True)
class BumbleDeviceDetails:
    """``BLEDevice.details`` for a device seen on the virtual radio.

    Not a dict with a ``"path"`` key on purpose: bleak-retry-connector treats such
    details as BlueZ D-Bus objects and would query D-Bus for them.
    """

    central: VirtualCentral
    address: hci.Address  # with its address type, which a bare string lacks
    source: str = DETAILS_SOURCE


def resolve_central(*candidates: VirtualCentral | None) -> VirtualCentral:
    for central in candidates:
        if central is not None:
            return central
    raise BleakError(
        "no virtual central: use backend=central.scanner_backend / central.client_backend, "
        "pass central=..., or a BLEDevice found by a virtual-radio scanner"
    )
