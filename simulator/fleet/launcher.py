"""Run one fleet gateway: the real AgentService from a gateway.toml, in its own process, with
its BLE devices on a virtual radio in the same process.

  python -m simulator.fleet.launcher --config gateway.toml [--disk-budget-bytes N]
                                     [--ble-spec ble.json --control control.sock]

The same service `vitalbridge agent run` starts. Simulator knobs: a disk budget below the
configuration file's 1 MB minimum (so a run of a minute can fill it), and BLE: each device of
--ble-spec (simulator.fleet.ble_device) is a bumble peripheral on a `VirtualRadio` whose
central is the agent's bleak backend; the agent reconnects quickly (ReconnectPolicy 0.1 s
.. 1 s instead of 1 s .. 60 s) because a fleet run lasts a minute. The devices live and die
with this process: a SIGKILL of it is also their power cut (their flash file survives).
The broker reconnect backoff is compressed the same way (FLEET_BROKER_BACKOFF): with the
production policy a broker restart within 10 s of the end of an outage waits 8-32 s (the
growth is not reset by a connection shorter than stable_after_s), longer than a CI drain
can afford (docs/fleet.md, "Why a drain was slow").

--control: a Unix stream socket; one JSON line per connection, one JSON line answered:
  {"op": "disconnect", "device": ID, "how": "terminate"|"out-of-range", "for_s": S}
  -> {"ok": true, "links": N, ...} or {"ok": false, "error": "..."}
Exit status as `vitalbridge agent run`: 0 after SIGTERM, 2 when it cannot start, 1 when the
agent or a device failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

MB = 1024 * 1024
log = logging.getLogger("vitalbridge.fleet")
# Broker reconnects (edge_agent.uplink.BackoffPolicy; production: 0.5 s .. 60 s, growth reset
# after 10 s up): 0.2 s .. 2 s, reset after 2 s up. No config key exists for it (yet), so
# the launcher's service overrides the link configuration it builds.
FLEET_BROKER_BACKOFF = {"initial_s": 0.2, "maximum_s": 2.0, "stable_after_s": 2.0}


def fleet_service(config: Any, **kwargs: Any) -> Any:
    """The real AgentService, with FLEET_BROKER_BACKOFF for its broker link."""
    from edge_agent import service as agent_service
    from edge_agent.uplink import BackoffPolicy

    class FleetAgentService(agent_service.AgentService):
        def _link_config(self) -> Any:
            return dataclasses.replace(super()._link_config(),
                                       backoff=BackoffPolicy(**FLEET_BROKER_BACKOFF))

    return FleetAgentService(config, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.fleet.launcher")
    parser.add_argument("--config", required=True)
    parser.add_argument("--disk-budget-bytes", type=int, default=None)
    parser.add_argument("--ble-spec", default=None)
    parser.add_argument("--control", default=None)
    args = parser.parse_args(argv)

    from edge_agent import service as agent_service
    from edge_agent.config import ConfigError, load_config
    from edge_agent.logging_setup import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if args.disk_budget_bytes is not None:
        journal = dataclasses.replace(config.journal, disk_budget_mb=args.disk_budget_bytes / MB)
        config = dataclasses.replace(config, journal=journal)
    configure_logging(config.logging.level, config.logging.format)
    specs = [] if args.ble_spec is None else json.loads(Path(args.ble_spec).read_text())
    try:
        return asyncio.run(serve(config, specs, args.control))
    except agent_service.AgentStartError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("the agent failed")
        return 1


async def serve(config: Any, specs: list[dict[str, Any]], control: str | None) -> int:
    """The agent, and when there are BLE devices, the radio, the devices and the control
    socket around it. Returns the exit status."""
    from edge_agent import service as agent_service

    if not specs:
        await fleet_service(config).run()
        return 0

    from edge_agent.ble.virtual_radio import VirtualRadio
    from edge_agent.ble_ingest import ConnectionOptions, ReconnectPolicy
    from simulator.fleet.ble_device import BleDeviceSpec, BleSealingDevice

    failed: list[str] = []
    async with VirtualRadio() as radio:
        central = await radio.add_central()
        devices = {}
        for doc in specs:
            device = BleSealingDevice(BleDeviceSpec.from_json(doc))
            await device.attach(radio)
            devices[device.spec.device_id] = device
        options = ConnectionOptions(
            client_backend=central.client_backend, connect_timeout_s=10.0,
            setup_timeout_s=5.0,
            reconnect=ReconnectPolicy(initial_s=0.1, maximum_s=1.0, stable_after_s=5.0))
        service = fleet_service(config, ble=agent_service.BleBackends(
            central.scanner_backend, central.client_backend, options))

        def on_device_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                failed.append(f"{task.get_name()}: {task.exception()!r}")
                log.error("ble device %s failed", task.get_name(), exc_info=task.exception())
                service.request_stop("a BLE device failed")

        tasks = []
        for device_id, device in devices.items():
            task = asyncio.create_task(device.run(), name=device_id)
            task.add_done_callback(on_device_done)
            tasks.append(task)
        server = None
        if control is not None:
            with contextlib.suppress(FileNotFoundError):
                Path(control).unlink()  # left by a killed predecessor
            server = await asyncio.start_unix_server(
                lambda r, w: _control(devices, r, w), control)
        try:
            await service.run()
        finally:
            if server is not None:
                server.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return 1 if failed else 0


async def _control(devices: dict[str, Any], reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    try:
        request = json.loads(await reader.readline())
        device = devices.get(request.get("device"))
        if request.get("op") != "disconnect" or device is None:
            answer: dict[str, Any] = {"ok": False, "error": f"bad request {request!r}"}
        else:
            answer = {"ok": True, **await device.force_disconnect(
                request.get("how"), float(request.get("for_s", 1.0)))}
    except (ValueError, TypeError, AttributeError) as exc:
        answer = {"ok": False, "error": repr(exc)}
    writer.write((json.dumps(answer) + "\n").encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


if __name__ == "__main__":
    sys.exit(main())
