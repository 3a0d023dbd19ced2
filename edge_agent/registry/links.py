"""Which registry device a configured link carries, for standard devices.

gateway.toml names a device id for every serial port and BLE device it lists. A standard
device registered with `vitalbridge device register` is recorded with its link address (BLE
address, serial path or USB ids); when a configured link has that address, the registry's
device id is the one used — it is the one the technician bound to a patient — and a
different id in the configuration is reported, not silently kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.registry.store import Registry, RegistryError


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """One configured link: transport, its name in the configuration, the device id the
    configuration gives it, and its address in registry spelling (None: matched by name or
    service only, so no address is known before it is found)."""

    transport: str
    name: str
    configured_device: str
    address: str | None


def serial_address(path: str | None, usb: object | None) -> str | None:
    """Registry spelling of a configured serial port: "path:..." or "usb:vvvv:pppp[:sn]"."""
    if path is not None:
        return f"path:{path}"
    if usb is not None:
        vid, pid, serial = usb.vid, usb.pid, usb.serial_number  # type: ignore[attr-defined]
        return f"usb:{vid:04x}:{pid:04x}" + (f":{serial}" if serial else "")
    return None


def resolve(registry: Registry, links: Iterable[LinkClaim]
            ) -> tuple[dict[tuple[str, str], str], list[str]]:
    """-> ({(transport, name): device id}, notes for the log)."""
    chosen: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for link in links:
        device_id = link.configured_device
        if link.address is not None:
            try:
                registered = registry.device_at_link(link.transport, link.address)
            except RegistryError:
                registered = None  # an address the registry cannot hold: nothing registered
            if registered is not None and registered.id != device_id:
                notes.append(f"{link.transport} {link.name!r} ({link.address}) is registered as "
                             f"device {registered.id!r}, configured as {device_id!r}: using "
                             f"{registered.id!r}; correct gateway.toml")
                device_id = registered.id
        chosen[(link.transport, link.name)] = device_id
    return chosen, notes


def registered_links(registry: Registry, config: Any, serial_devices: dict[str, str],
                     ble_devices: dict[str, str]) -> list[str]:
    """Update the agent's {link name: device id} maps of an AgentConfig's serial ports and
    BLE devices from the registry (see `resolve`) -> notes for the log."""
    claims = [LinkClaim("serial", d.port.name, d.device,
                        serial_address(d.port.path, d.port.usb)) for d in config.serial]
    claims += [LinkClaim("ble", d.config.name, d.device, d.config.address)
               for d in config.ble.devices]
    chosen, notes = resolve(registry, claims)
    for (transport, name), device in chosen.items():
        (serial_devices if transport == "serial" else ble_devices)[name] = device
    return notes
