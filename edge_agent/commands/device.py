"""`vitalbridge device`: find, enroll, list and take out of service the patients' devices.

  vitalbridge device scan [--seconds S] [--ble] [--serial] [--json]
  vitalbridge device enroll (--port PATH | --address AA:BB:CC:DD:EE:FF) [--id DEV]
                            [--confirm CODE | --code-from-label CODE] [--patient P]
                            [--registration NUMBER --registration-valid-until ISO]
                            [--calibration-due ISO] [--lifetime-days N] [--timeout S]
  vitalbridge device register DEV --transport ble|serial (--address ADDR | --port PATH |
                            --usb VID:PID[:SERIAL]) --model M --serial S [--firmware F]
                            [--registration NUMBER --registration-valid-until ISO]
                            [--calibration-due ISO] [--patient P]
  vitalbridge device list [--at ISO] [--all] [--json]
  vitalbridge device show DEV [--at ISO] [--json]
  vitalbridge device bind DEV --patient P [--since ISO]      device unbind DEV [--until ISO]
  vitalbridge device retire DEV --reason TEXT
  vitalbridge device compromise DEV --reason TEXT [--wait S]
  (each also takes --data-dir, --actor where it writes, --json)

Enrollment (docs/technician-cli.md, protocol.enrollment): the gateway sends a challenge; the
device answers with a request signed by its NEW keys; the CLI checks the proofs of
possession, the device's identity and clock, and shows the six-digit confirmation code that
the device also shows. Only after the technician confirmed that both codes match does the
gateway issue the device's certificate, record it and send it to the device.
Confirming: type the code at the prompt; without a terminal, the first run stops with exit
status 3 and prints the code, and `--confirm CODE` (within 10 minutes) finishes it;
`--code-from-label CODE` compares in one run with a code the technician already has.

`register` records a standard device (a BLE health device or a third-party serial device
such as a CMS50): it has no keys and cannot seal, so the gateway attests its readings; once
registered (and bound) they are attributed to the patient and evaluated. `compromise` also
tells the running agent through its inbox (docs/manual-entry.md), which drops the device's
sessions at once, informs the centre and raises a technical alarm.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.cli import CommandError
from edge_agent.commands import common

if TYPE_CHECKING:
    from edge_agent.registry import Registry
    from protocol.enrollment import Challenge, EnrollRequest

AWAITING_CONFIRMATION = 3
PENDING_DIR = "enroll-pending"
PENDING_TTL = 600  # the device keeps its challenge only so long; the nonce must stay fresh
CLOCK_TOLERANCE = 300
CLOCK_SET_AFTER = 1_577_836_800  # 2020-01-01: an earlier device time means "clock not set"
DEFAULT_TIMEOUT = 30.0
DEVICE_LINK_BAUDRATE = 115200

SERVICE_KINDS = {
    "heart_rate": "heart-rate monitor",
    "health_thermometer": "thermometer",
    "blood_pressure": "blood-pressure monitor",
    "pulse_oximeter": "pulse oximeter",
    "weight_scale": "weight scale",
    "glucose": "glucose meter",
}


class LinkFailure(CommandError):
    """The device link failed or the device did not answer (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, common.FAILED)


# -- parser -----------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    actions = common.command_group(sub, "device", "scan, enroll, list and retire devices",
                                   __doc__)
    scan = common.action(actions, "scan", "BLE and serial discovery: what each device is",
                         run_scan, data_dir=False)
    scan.add_argument("--seconds", type=float, default=5.0, help="BLE scan time (default 5)")
    scan.add_argument("--ble", action="store_true", help="only BLE")
    scan.add_argument("--serial", action="store_true", help="only serial ports")

    enroll = common.action(actions, "enroll", "enroll a VitalBridge device over its link",
                           run_enroll, actor=True)
    link = enroll.add_mutually_exclusive_group(required=True)
    link.add_argument("--port", help="serial port of the device (e.g. /dev/ttyACM0)")
    link.add_argument("--address", help="BLE address of the device")
    enroll.add_argument("--id", dest="device_id", help="the device id you expect (default: "
                        "the id the device reports)")
    code = enroll.add_mutually_exclusive_group()
    code.add_argument("--confirm", metavar="CODE", help="finish a waiting enrollment: the "
                      "code the device shows")
    code.add_argument("--code-from-label", metavar="CODE", help="compare with this code in "
                      "one run (no prompt)")
    enroll.add_argument("--patient", help="bind the device to this pseudonymous patient id")
    enroll.add_argument("--registration", help="regulatory registration number")
    enroll.add_argument("--registration-valid-until", help="ISO date")
    enroll.add_argument("--calibration-due", help="ISO date")
    enroll.add_argument("--lifetime-days", type=int, default=365,
                        help="certificate lifetime (default 365, never beyond the gateway's)")
    enroll.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the device (default {DEFAULT_TIMEOUT:g})")

    register_action = common.action(actions, "register", "record a standard (non-sealing) "
                                    "BLE or serial device", run_register, actor=True)
    register_action.add_argument("device")
    register_action.add_argument("--transport", required=True, choices=("ble", "serial"))
    where = register_action.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="BLE address, AA:BB:CC:DD:EE:FF")
    where.add_argument("--port", help="serial port path, as in gateway.toml")
    where.add_argument("--usb", metavar="VID:PID[:SERIAL]", help="USB serial device ids")
    register_action.add_argument("--model", required=True, help="model, as on the label")
    register_action.add_argument("--serial", required=True, help="serial number, as on the "
                                 "label")
    register_action.add_argument("--firmware", default="unknown", help="firmware version")
    register_action.add_argument("--registration", help="regulatory registration number")
    register_action.add_argument("--registration-valid-until", help="ISO date")
    register_action.add_argument("--calibration-due", help="ISO date")
    register_action.add_argument("--patient", help="bind the device to this pseudonymous "
                                 "patient id from now")

    listing = common.action(actions, "list", "devices with certificate and currency states",
                            run_list, at=True)
    listing.add_argument("--all", action="store_true", help="include retired and compromised")
    common.action(actions, "show", "one device: keys, certificates, bindings", run_show,
                  at=True).add_argument("device")

    bind = common.action(actions, "bind", "attribute a device's readings to a patient",
                         run_bind, actor=True)
    bind.add_argument("device")
    bind.add_argument("--patient", required=True, help="pseudonymous patient id, e.g. p-4f7a2c")
    bind.add_argument("--since", help="ISO instant (default now)")
    unbind = common.action(actions, "unbind", "end a device's current patient binding",
                           run_unbind, actor=True)
    unbind.add_argument("device")
    unbind.add_argument("--until", help="ISO instant (default now)")

    for name, helptext, handler in (
            ("retire", "take a device out of service (keys destroyed within ten days)",
             run_retire),
            ("compromise", "withdraw everything a device holds, at once", run_compromise)):
        end_action = common.action(actions, name, helptext, handler, actor=True)
        end_action.add_argument("device")
        end_action.add_argument("--reason", required=True, help="why (journaled)")
        if name == "compromise":
            end_action.add_argument("--wait", type=float, default=5.0, metavar="S",
                                    help="seconds to wait for the running agent to act "
                                    "(default 5)")


# -- scan -------------------------------------------------------------------------------------


def kind_of_services(service_uuids: Iterable[str]) -> str:
    """What an advertiser is, from the services it advertises."""
    from protocol import ble_service

    kinds = []
    for uuid in service_uuids:
        if uuid.lower() == ble_service.SERVICE_UUID:
            return "VitalBridge device"
        name = ble_service.SERVICES.get(ble_service.uuid16_of(uuid) or -1)
        if name in SERVICE_KINDS:
            kinds.append(SERVICE_KINDS[name])
    return ", ".join(kinds) if kinds else "unknown"


async def scan_ble(seconds: float, scanner_backend: type | None = None) -> list[dict[str, Any]]:
    """Listen for `seconds` and describe every advertiser, strongest first."""
    from edge_agent.ble_ingest.manager import BleManager

    manager = BleManager([], lambda _event: None, scanner_backend=scanner_backend)
    async with manager:
        await asyncio.sleep(seconds)
        heard = manager.nearby()
    return [{"transport": "ble", "address": a.address, "name": a.name, "rssi": a.rssi,
             "kind": kind_of_services(a.service_uuids),
             "services": list(a.service_uuids)} for a in heard]


def describe_ports(listing: Iterable[Any]) -> list[dict[str, Any]]:
    """Serial ports with their USB ids and the driver that fits, if one does."""
    from edge_agent.serial_ingest.drivers import driver_for_usb
    from edge_agent.serial_ingest.ports import PortInfo

    found = []
    for port in sorted((PortInfo.from_listing(p) for p in listing), key=lambda p: p.device):
        driver = driver_for_usb(port.vid, port.pid)
        if driver == "vitalbridge":
            kind = "VitalBridge device"
        elif port.vid is None:
            kind = "not USB: configure its driver explicitly"
        else:
            kind = "USB serial bridge: configure its driver explicitly (e.g. contec-cms50)"
        found.append({"transport": "serial", "address": port.device, "name": port.product or
                      port.description or None, "usb_id": port.usb_id, "driver": driver,
                      "serial_number": port.serial_number, "kind": kind})
    return found


def run_scan(args: argparse.Namespace) -> int:
    from edge_agent.serial_ingest.ports import system_ports

    if not 0 < args.seconds <= 300:
        raise CommandError("--seconds must be more than 0 and at most 300")
    both = not (args.ble or args.serial)
    found: list[dict[str, Any]] = []
    problems: list[str] = []
    if args.serial or both:
        try:
            found += describe_ports(system_ports())
        except OSError as exc:
            problems.append(f"serial ports could not be listed: {exc}")
    if args.ble or both:
        try:
            found += asyncio.run(scan_ble(args.seconds))
        except Exception as exc:  # bleak raises backend-specific errors (no adapter, no D-Bus)
            problems.append(f"BLE scan failed ({type(exc).__name__}: {exc}); is the adapter "
                            "on (`bluetoothctl power on`)?")
    if args.json:
        common.print_json({"devices": found, "problems": problems})
    else:
        render_scan(found, problems)
    return common.FAILED if problems else 0


def render_scan(found: list[dict[str, Any]], problems: list[str]) -> None:
    out = common.console()
    table = common.table("devices nearby", ("transport", "address", "name", "RSSI / USB id",
                                            "what it is"))
    for item in found:
        signal = f"{item['rssi']} dBm" if item["transport"] == "ble" else item["usb_id"]
        table.add_row(item["transport"], item["address"], item["name"] or "-", str(signal),
                      item["kind"])
    out.print(table)
    for problem in problems:
        out.print(f"[red]{problem}[/]")


# -- device links -----------------------------------------------------------------------------


class SerialLink:
    """The device's framed serial link (protocol.frames), opened by pyserial."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._port: Any = None
        self._frames: list[bytes] = []
        self._driver: Any = None

    async def __aenter__(self) -> SerialLink:
        import serial

        from edge_agent.serial_ingest.drivers import VitalBridgeFrameDriver

        self._driver = VitalBridgeFrameDriver()
        try:
            self._port = serial.Serial(self.path, timeout=0.05, write_timeout=2.0,
                                       **self._driver.settings.pyserial_kwargs())
        except (serial.SerialException, OSError) as exc:
            raise LinkFailure(f"--port {self.path}: cannot open it ({exc}); check the cable "
                              "and `vitalbridge device scan --serial`") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._port is not None:
            self._port.close()

    async def send(self, message: bytes) -> None:
        await asyncio.to_thread(self._port.write, self._driver.encode_outgoing(message))

    async def receive(self, timeout: float) -> bytes | None:
        from edge_agent.serial_ingest.drivers import Frame

        deadline = time.monotonic() + timeout
        while not self._frames and time.monotonic() < deadline:
            data = await asyncio.to_thread(self._port.read, 4096)
            self._frames += [e.payload for e in self._driver.feed(data) if isinstance(e, Frame)]
        return self._frames.pop(0) if self._frames else None


class BleLink:
    """The VitalBridge GATT service of one device, through the agent's BleManager."""

    NAME = "enrolling"

    def __init__(self, address: str, *, scanner_backend: type | None = None,
                 client_backend: type | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._backends = (scanner_backend, client_backend)
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._manager: Any = None

    async def __aenter__(self) -> BleLink:
        from edge_agent.ble_ingest.connection import (
            ConnectionOptions,
            ConnectionState,
            DeviceConfig,
        )
        from edge_agent.ble_ingest.manager import BleManager

        try:
            config = DeviceConfig(self.NAME, address=self.address)
        except ValueError as exc:
            raise CommandError(f"--address: {exc}") from None
        scanner, client = self._backends
        self._manager = BleManager([config], self._on_event, scanner_backend=scanner,
                                   options=ConnectionOptions(client_backend=client))
        try:
            await self._manager.start()
            async with asyncio.timeout(self.timeout):
                await self._manager.wait_for_state(self.NAME, ConnectionState.CONNECTED)
        except TimeoutError:
            await self._manager.stop()
            raise LinkFailure(f"no device connected at {self.address} within "
                              f"{self.timeout:g} s: is it on, near and advertising?") from None
        except Exception as exc:  # bleak backend errors: no adapter, no D-Bus
            await self._manager.stop()
            raise LinkFailure(f"BLE failed ({type(exc).__name__}: {exc}); is Bluetooth "
                              "available here (bluetoothd running, `bluetoothctl power "
                              "on`)?") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._manager.stop()

    def _on_event(self, event: Any) -> None:
        from edge_agent.ble_ingest.connection import FirmwareMessage

        if isinstance(event.event, FirmwareMessage) and event.event.channel == "uplink":
            self._inbox.put_nowait(event.event.payload)

    async def send(self, message: bytes) -> None:
        await self._manager.send(self.NAME, message)

    async def receive(self, timeout: float) -> bytes | None:
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.get()
        except TimeoutError:
            return None


def make_link(args: argparse.Namespace) -> Any:
    if args.port:
        return SerialLink(args.port)
    return BleLink(args.address, timeout=args.timeout)


async def next_message(link: Any, wanted: str, timeout: float) -> Any:
    """The body of the next `wanted` message; other messages (the device's event hints,
    garbage) are skipped. LinkFailure when nothing came in time."""
    from protocol import messages
    from protocol.errors import ProtocolError

    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        data = await link.receive(left)
        if data is None:
            break
        try:
            kind, body = messages.decode(data)
        except ProtocolError:
            continue
        if kind == wanted:
            return body
    raise LinkFailure(f"the device sent no {wanted} within {timeout:g} s: is it in "
                      "provisioning mode and on this link?")


# -- enrollment -------------------------------------------------------------------------------


@dataclass
class Enrollment:
    """One device enrollment at this gateway, from challenge to delivered certificate."""

    identity: common.GatewayIdentity
    registry: Registry
    actor: str
    expected_id: str | None = None
    patient: str | None = None
    registration: str | None = None
    registration_valid_until: int | None = None
    calibration_due: int | None = None
    lifetime_days: int = 365
    timeout: float = DEFAULT_TIMEOUT
    prompt: Callable[[str], str] = field(default=lambda text: ask_terminal(text))
    notes: list[str] = field(default_factory=list)

    # -- before anything is sent ------------------------------------------------------------

    def check_gateway(self, now: int) -> int:
        """The gateway may issue now; returns when its certificate expires."""
        from edge_agent.lifecycle import states

        key = self.registry.current_key("gateway", self.identity.gateway_id, "signing", now)
        if key is None or key.state(now) not in states.USABLE:
            state = "missing" if key is None else key.state(now)
            raise CommandError(f"this gateway's signing key is {state}: it may not issue "
                               "certificates; renew the gateway's certificate first")
        cert = self.registry.certificate_of_key(key.kid, "cwt")
        if cert.state(now) not in states.USABLE:
            raise CommandError(f"this gateway's certificate is {cert.state(now)}: renew it "
                               "before enrolling devices")
        return cert.expires

    def check_device_id(self, device_id: str) -> None:
        """Refuse an id that is enrolled, or was and may not come back."""
        from edge_agent.registry import NotFoundError

        try:
            device = self.registry.device(device_id)
        except NotFoundError:
            return
        if device.status == "active":
            raise CommandError(f"device {device_id} is already enrolled (since "
                               f"{common.iso(device.enrolled_at)}); to enroll it again, "
                               f"retire it first (`vitalbridge device retire {device_id} "
                               "--reason ...`) and enroll it under a new id")
        raise CommandError(f"device id {device_id} was {device.status} on "
                           f"{common.iso(device.ended_at)}; ids are never reused: give the "
                           "device a new id in provisioning mode and enroll that")

    # -- the exchange -----------------------------------------------------------------------

    def challenge(self, now: int) -> Challenge:
        from protocol import enrollment

        return enrollment.make_challenge(self.identity.gateway_id, self.identity.public_key,
                                         self.identity.agreement_public, now)

    async def ask(self, link: Any, challenge: Challenge) -> EnrollRequest:
        from protocol import device_link, messages

        command = device_link.encode_command(1, "enroll", challenge.to_map())
        await link.send(messages.encode("device-command", command))
        body = await next_message(link, "enroll-request", self.timeout)
        return self.verify(body, challenge)

    def verify(self, body: Any, challenge: Challenge) -> EnrollRequest:
        from protocol import crypto, enrollment
        from protocol.errors import ProtocolError

        try:
            return enrollment.verify_request(
                body, challenge,
                lambda peer: crypto.x25519_shared(self.identity.agreement_private, peer))
        except ProtocolError as exc:
            raise CommandError(f"the device's enrollment request is invalid ({exc}); nothing "
                               "was issued: restart the device in provisioning mode and try "
                               "again", common.FAILED) from None

    def check_request(self, request: EnrollRequest, now: int) -> None:
        """What the device says about itself must fit the registry and our clock."""
        if self.expected_id is not None and request.device_id != self.expected_id:
            raise CommandError(f"the device on this link calls itself {request.device_id}, "
                               f"not {self.expected_id}: check you are at the right device")
        self.check_device_id(request.device_id)
        for device in self.registry.devices(status="active"):
            if (device.model, device.serial) == (request.model, request.serial):
                raise CommandError(f"{request.model} serial {request.serial} is already "
                                   f"enrolled as device {device.id}; retire that one first")
        if request.time < CLOCK_SET_AFTER:
            self.notes.append("the device clock is not set; it takes the gateway's time")
        elif abs(request.time - now) > CLOCK_TOLERANCE:
            ahead = "ahead of" if request.time > now else "behind"
            raise CommandError(
                f"the device's clock is {common.duration(request.time - now)} {ahead} the "
                f"gateway's (device {common.iso(request.time)}, gateway {common.iso(now)}): "
                "its readings would be misdated; set the device's clock, or check the "
                "gateway's (`timedatectl`), then enroll again")

    def code(self, request: EnrollRequest, challenge: Challenge) -> str:
        from protocol import enrollment

        return enrollment.request_code(request, challenge)

    async def confirm_interactively(self, code: str) -> None:
        shown = f"{code[:3]} {code[3:]}"
        typed = await asyncio.to_thread(
            self.prompt, f"The device must show the code {shown}. Type the code the DEVICE "
            "shows (Enter to abort): ")
        compare_codes(code, typed)

    # -- issuing ----------------------------------------------------------------------------

    def issue(self, request: EnrollRequest, now: int, gateway_expires: int) -> bytes:
        """Issue, record and journal the device certificate (one registry transaction)."""
        from protocol import cwt

        expires = min(now + self.lifetime_days * 86400, gateway_expires)
        with common.refusals():
            certificate = cwt.issue_cwt(
                self.identity.seed, self.identity.gateway_id, request.device_id,
                request.sign_key, now, expires, agreement_key=request.agree_key,
                role="device", model=request.model, serial=request.serial)
            with self.registry.transaction():
                self.registry.enroll_device(
                    request.device_id, self.identity.gateway_id, certificate,
                    model=request.model, serial=request.serial, firmware=request.firmware,
                    registration_number=self.registration,
                    registration_valid_until=self.registration_valid_until,
                    calibration_due=self.calibration_due, actor=self.actor, now=now)
                if self.patient is not None:
                    bind_patient(self.registry, request.device_id, self.patient, now,
                                 self.actor)
        common.journal(self.identity, enrollment_entries(request, certificate, self.identity,
                                                         self.actor), at=now)
        return certificate

    async def deliver(self, link: Any, request: EnrollRequest, certificate: bytes) -> bool:
        """Send the certificate; True when the device reports it installed."""
        from protocol import device_link, enrollment, messages
        from protocol.errors import ProtocolError

        body = enrollment.make_delivery(certificate, self.identity.certificate(),
                                        self.identity.agreement_public)
        await link.send(messages.encode("certificate", body))
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = device_link.decode_event(await next_message(link, "device-event", left))
            except ProtocolError:
                continue
            except LinkFailure:
                break
            # Unsealed: a hint that the device took it, not proof (docs/firmware-identity.md).
            if event.name == "certificate-installed" and \
                    event.details.get("kid") == request.sign_kid:
                return True
        return False


def ask_terminal(text: str) -> str:
    """One line from the technician; the question goes to stderr so --json output stays
    clean."""
    sys.stderr.write(text)
    sys.stderr.flush()
    return sys.stdin.readline()


def compare_codes(expected: str, typed: str | None) -> None:
    """Refuse unless `typed` (spaces allowed) is the expected six digits."""
    given = "".join((typed or "").split())
    if not given:
        raise CommandError("enrollment aborted: no code confirmed; nothing was issued",
                           common.FAILED)
    if given != expected:
        raise CommandError(
            f"the codes differ (this gateway: {expected[:3]} {expected[3:]}, typed: {given}): "
            "someone may be between the device and the gateway, or this is another device; "
            "nothing was issued. Check the device, restart its provisioning mode and enroll "
            "again", common.FAILED)


def bind_patient(registry: Registry, device_id: str, patient: str, since: int,
                 who: str) -> None:
    if patient not in registry.patients():
        registry.add_patient(patient, actor=who, now=since)
    registry.bind(device_id, patient, since=since, actor=who)


def enrollment_entries(request: EnrollRequest, certificate: bytes,
                       identity: common.GatewayIdentity,
                       who: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    from protocol import cwt

    cert = cwt.parse_cwt(certificate)
    owner = f"device:{request.device_id}"
    entries: list[tuple[str, str, str, dict[str, Any]]] = []
    for purpose, public, algorithm in (("signing", request.sign_key, "Ed25519"),
                                       ("agreement", request.agree_key, "X25519")):
        kid = cwt.key_id(public).hex()
        entries.append(("key.generated", owner, f"key:{kid}",
                        {"key_id": kid, "owner": owner, "purpose": purpose,
                         "public_key": public.hex(), "algorithm": algorithm}))
        entries.append(("key.activated", who, f"key:{kid}", {"key_id": kid, "owner": owner}))
    entries.append(("certificate.issued", who, owner,
                    {"cert_digest": common.digest_hex(certificate),
                     "subject_id": request.device_id, "issuer": identity.gateway_id,
                     "key_id": request.sign_kid.hex(), "not_before": cert.not_before,
                     "expires": cert.expires, "role": "device"}))
    return entries


# -- pending confirmations --------------------------------------------------------------------


def _pending_path(directory: Path, device_id: str) -> Path:
    return directory / PENDING_DIR / f"{device_id}.cbor"


def save_pending(directory: Path, challenge: Challenge, body: Any, device_id: str,
                 now: int) -> None:
    from edge_agent.ca import keyfiles
    from protocol import cbor

    data = cbor.dumps({0: 1, 1: challenge.to_map(), 2: body, 3: now})
    keyfiles.write_private(_pending_path(directory, device_id), data, replace=True)


def load_pending(directory: Path, device_id: str, now: int) -> tuple[Challenge, Any, int]:
    """(challenge, request body, when it was received) of an enrollment waiting for
    --confirm; the file is used once."""
    from protocol import cbor, enrollment
    from protocol.errors import ProtocolError

    path = _pending_path(directory, device_id)
    if not path.is_file():
        raise CommandError(f"no enrollment of {device_id} is waiting for confirmation: run "
                           f"`vitalbridge device enroll --id {device_id}` with its link first")
    try:
        data = cbor.loads(path.read_bytes())
        path.unlink()
        challenge = enrollment.parse_challenge(data[1])
        created = int(data[3])
        body = data[2]
    except (ProtocolError, KeyError, TypeError, ValueError, OSError) as exc:
        raise CommandError(f"the waiting enrollment of {device_id} is unreadable ({exc}); "
                           "enroll again") from None
    if not 0 <= now - created <= PENDING_TTL:
        raise CommandError(f"the enrollment of {device_id} waited more than "
                           f"{PENDING_TTL // 60} minutes for confirmation; enroll again")
    return challenge, body, created


# -- enroll command ---------------------------------------------------------------------------


def _enrollment_from(args: argparse.Namespace, registry: Registry,
                     identity: common.GatewayIdentity) -> Enrollment:
    from edge_agent.registry import check_pseudonym
    from protocol import topics
    from protocol.errors import ValidationError

    try:
        if args.device_id is not None:
            topics.check_id("--id", args.device_id)
        if args.patient is not None:
            check_pseudonym(args.patient)
    except ValidationError as exc:
        raise CommandError(f"{exc.field}: {exc.reason}") from None
    if not 1 <= args.lifetime_days <= 3650:
        raise CommandError("--lifetime-days must be 1..3650")
    if not 0 < args.timeout <= 600:
        raise CommandError("--timeout must be more than 0 and at most 600 seconds")
    valid_until = (None if args.registration_valid_until is None else
                   common.parse_instant("--registration-valid-until",
                                        args.registration_valid_until))
    if (args.registration is None) != (valid_until is None):
        raise CommandError("--registration and --registration-valid-until go together")
    return Enrollment(
        identity, registry, common.actor(args), expected_id=args.device_id,
        patient=args.patient, registration=args.registration,
        registration_valid_until=valid_until,
        calibration_due=(None if args.calibration_due is None else
                         common.parse_instant("--calibration-due", args.calibration_due)),
        lifetime_days=args.lifetime_days, timeout=args.timeout)


def run_enroll(args: argparse.Namespace) -> int:
    return asyncio.run(enroll_async(args, make_link(args)))


async def enroll_async(args: argparse.Namespace, link: Any) -> int:
    """`device enroll` over `link` (a SerialLink or BleLink): see the module docstring."""
    directory = common.data_dir(args)
    identity = common.load_gateway(directory)
    if args.confirm is not None and args.device_id is None:
        raise CommandError("--confirm needs --id DEV: the device waiting for confirmation")
    with common.open_registry(directory) as registry:
        job = _enrollment_from(args, registry, identity)
        now = common.now()
        gateway_expires = job.check_gateway(now)
        if args.device_id is not None and args.confirm is None:
            job.check_device_id(args.device_id)
        if args.confirm is not None:
            challenge, body, received = load_pending(directory, args.device_id, now)
            request = job.verify(body, challenge)
            job.check_request(request, received)
            compare_codes(job.code(request, challenge), args.confirm)
            async with link:
                return await _finish(args, job, link, request, now, gateway_expires)
        async with link:
            challenge = job.challenge(now)
            request = await job.ask(link, challenge)
            now = common.now()
            job.check_request(request, now)
            code = job.code(request, challenge)
            if args.code_from_label is not None:
                compare_codes(code, args.code_from_label)
            elif _interactive():
                await job.confirm_interactively(code)
            else:
                save_pending(directory, challenge, _request_body(request), request.device_id,
                             now)
                return _awaiting(args, request, code)
            return await _finish(args, job, link, request, now, gateway_expires)


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def _request_body(request: EnrollRequest) -> dict[int, Any]:
    from protocol import enrollment

    body: dict[int, Any] = {enrollment.B_REQUEST: request.raw_request}
    if request.endorsement is not None:
        body[enrollment.B_ENDORSEMENT] = request.endorsement
    return body


def _awaiting(args: argparse.Namespace, request: EnrollRequest, code: str) -> int:
    result = {"device_id": request.device_id, "state": "awaiting-confirmation", "code": code,
              "model": request.model, "serial": request.serial,
              "expires_in_s": PENDING_TTL}
    if args.json:
        common.print_json(result)
    else:
        common.console().print(
            f"device [bold]{request.device_id}[/] ({request.model} {request.serial}) shows "
            f"code [bold]{code[:3]} {code[3:]}[/] here. If the DEVICE shows the same, run "
            f"within {PENDING_TTL // 60} min: `vitalbridge device enroll --id "
            f"{request.device_id} --confirm CODE` with the same link and options")
    return AWAITING_CONFIRMATION


async def _finish(args: argparse.Namespace, job: Enrollment, link: Any,
                  request: EnrollRequest, now: int, gateway_expires: int) -> int:
    from protocol import cwt

    certificate = job.issue(request, now, gateway_expires)
    installed = await job.deliver(link, request, certificate)
    cert = cwt.parse_cwt(certificate)
    result = {"device_id": request.device_id, "state": "enrolled", "model": request.model,
              "serial": request.serial, "firmware": request.firmware,
              "kid": request.sign_kid.hex(), "expires": common.iso(cert.expires),
              "patient": job.patient, "installed": installed, "notes": job.notes}
    if args.json:
        common.print_json(result)
    else:
        out = common.console()
        out.print(f"[green]enrolled[/] [bold]{request.device_id}[/] ({request.model} "
                  f"{request.serial}, firmware {request.firmware}); certificate until "
                  f"{result['expires']}")
        for note in job.notes:
            out.print(f"  note: {note}")
    if not installed:
        raise LinkFailure(
            f"{request.device_id} is recorded, but the device did not confirm installing its "
            f"certificate within {job.timeout:g} s; if it does not show as enrolled, retire "
            f"it (`vitalbridge device retire {request.device_id} --reason 'certificate not "
            "installed'`) and enroll it again under a new id")
    return 0


# -- listings ---------------------------------------------------------------------------------


def certificate_state(registry: Registry, device: Any, at: int) -> tuple[str, int | None]:
    """(state, expires) of the device's certificate as it stands at `at`."""
    from edge_agent.commands.gateway import combined_state

    if device.kind != "sealing":
        return f"none ({device.kind})", None
    if device.status != "active" and device.ended_at is not None and device.ended_at <= at:
        keys = registry.keys("device", device.id, "signing")
        return device.status, keys[-1].expires if keys else None
    keys = [k for k in registry.keys("device", device.id, "signing")
            if k.facts.created is not None and k.facts.created <= at]
    if not keys:
        return "missing", None
    key = keys[-1]
    cert = registry.certificate_of_key(key.kid, "cwt")
    return combined_state(key.state(at), cert.state(at)), cert.expires


def device_row(registry: Registry, device: Any, at: int) -> dict[str, Any]:
    state, expires = certificate_state(registry, device, at)
    flags = device.currency_flags(at) if device.status == "active" else ()
    return {
        "id": device.id, "status": device.status, "model": device.model,
        "serial": device.serial, "firmware": device.firmware,
        "patient": registry.patient_at(device.id, at),
        "certificate_state": state, "certificate_expires": common.iso(expires),
        "calibration_due": common.iso(device.calibration_due),
        "registration_number": device.registration_number,
        "registration_valid_until": common.iso(device.registration_valid_until),
        "battery": device.battery, "last_seen": common.iso(device.last_seen),
        "flags": list(flags), "kind": device.kind, "transport": device.transport,
        "address": device.address,
    }


def _deadline_style(flags: Iterable[str], what: str) -> str:
    for flag in flags:
        if flag.startswith(what):
            return "overdue" if flag.endswith(("overdue", "expired", "missing")) else "due-soon"
    return ""


def run_list(args: argparse.Namespace) -> int:
    from rich.text import Text

    at = common.at_or_now(args)
    with common.open_registry(common.data_dir(args)) as registry:
        devices = registry.devices(status=None if args.all else "active")
        rows = [device_row(registry, d, at) for d in devices]
    if args.json:
        common.print_json({"at": common.iso(at), "devices": rows})
        return 0
    table = common.table(f"devices at {common.iso(at)}",
                         ("id", "model", "serial", "patient", "certificate", "calibrate by",
                          "registered to", "battery", "last seen"))
    for row in rows:
        calibration = _deadline_style(row["flags"], "calibration")
        registration = _deadline_style(row["flags"], "registration")
        table.add_row(
            row["id"], row["model"], row["serial"], row["patient"] or "-",
            common.styled(row["certificate_state"]),
            Text((row["calibration_due"] or "unknown")[:10],
                 style=common.STATE_STYLE.get(calibration, "")),
            Text((row["registration_valid_until"] or "unknown")[:10],
                 style=common.STATE_STYLE.get(registration, "")),
            "-" if row["battery"] is None else f"{row['battery']:.0f} %",
            (row["last_seen"] or "never")[:16].replace("T", " "))
    common.console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from rich.text import Text

    at = common.at_or_now(args)
    with common.open_registry(common.data_dir(args)) as registry, common.refusals():
        device = registry.device(args.device)
        row = device_row(registry, device, at)
        keys = [{"kid": k.kid, "purpose": k.purpose, "state": k.state(at),
                 "expires": common.iso(k.expires),
                 "steps": [{"step": s.step, "at": common.iso(s.at), "actor": s.actor,
                            "reason": s.reason} for s in k.steps]}
                for k in registry.keys("device", device.id)]
        certificates = [{"serial": c.serial, "format": c.format, "kid": c.kid,
                         "issuer": c.issuer, "state": c.state(at),
                         "expires": common.iso(c.expires)}
                        for k in registry.keys("device", device.id)
                        for c in registry.certificates(k.kid)]
        bindings = [{"patient": b.patient_id, "since": common.iso(b.since),
                     "until": common.iso(b.until), "by": b.created_by}
                    for b in registry.bindings(device_id=device.id)]
    result = {**row, "at": common.iso(at), "enrolled_at": common.iso(device.enrolled_at),
              "enrolled_by": device.enrolled_by, "ended_at": common.iso(device.ended_at),
              "end_reason": device.end_reason, "keys": keys, "certificates": certificates,
              "bindings": bindings}
    if args.json:
        common.print_json(result)
        return 0
    out = common.console()
    out.print(Text.assemble(f"device {device.id} {device.model} {device.serial} firmware "
                            f"{device.firmware}: {device.status}, certificate ",
                            common.styled(row["certificate_state"]), f" at {common.iso(at)}"))
    out.print(f"  enrolled {result['enrolled_at']} by {device.enrolled_by}; patient "
              f"{row['patient'] or '-'}; flags: {', '.join(row['flags']) or 'none'}")
    table = common.table("keys (key journal)", ("kid", "purpose", "state", "expires", "steps"))
    for key in keys:
        steps = "; ".join(f"{s['step']} {s['at']} by {s['actor']}" for s in key["steps"])
        table.add_row(key["kid"], key["purpose"], common.styled(key["state"]),
                      key["expires"][:10], steps)
    out.print(table)
    return 0


# -- binding, retiring, compromise --------------------------------------------------------


def _binding_entry(who: str, device_id: str, text: str) -> tuple[str, str, str, dict[str, Any]]:
    return ("config.changed", who, f"device:{device_id}",
            {"source": "device-binding", "digest": common.digest_hex(text.encode()),
             "settings": ["patient-binding"]})


def _writer(args: argparse.Namespace) -> tuple[Path, str, common.GatewayIdentity]:
    """What every command that changes the registry needs: where, who, and the gateway."""
    directory = common.data_dir(args)
    return directory, common.actor(args), common.load_gateway(directory)


def _instant(option: str, text: str | None) -> int:
    return common.now() if text is None else common.parse_instant(option, text)


def run_bind(args: argparse.Namespace) -> int:
    directory, who, identity = _writer(args)
    since = _instant("--since", args.since)
    with common.open_registry(directory) as registry, common.refusals():
        with registry.transaction():
            bind_patient(registry, args.device, args.patient, since, who)
    common.journal(identity, [_binding_entry(who, args.device,
                                             f"bind {args.device} {args.patient} {since}")])
    result = {"device_id": args.device, "patient": args.patient, "since": common.iso(since)}
    common.output(args, result, f"[green]done[/]: {args.device} bound to {args.patient} from "
                  f"{result['since']}")
    return 0


def run_unbind(args: argparse.Namespace) -> int:
    directory, who, identity = _writer(args)
    until = _instant("--until", args.until)
    with common.open_registry(directory) as registry, common.refusals():
        registry.device(args.device)
        open_bindings = [b for b in registry.bindings(device_id=args.device) if b.until is None]
        if not open_bindings:
            raise CommandError(f"{args.device} is not bound to a patient; nothing to end")
        binding = registry.end_binding(open_bindings[0].id, until=until, actor=who)
    common.journal(identity, [_binding_entry(who, args.device,
                                             f"unbind {args.device} {binding.id} {until}")])
    result = {"device_id": args.device, "patient": binding.patient_id,
              "until": common.iso(until)}
    common.output(args, result, f"[green]done[/]: {args.device} no longer bound to "
                  f"{binding.patient_id} from {result['until']}")
    return 0


def _reason(args: argparse.Namespace) -> str:
    reason = args.reason.strip()
    if not reason or len(reason) > 200 or not reason.isprintable():
        raise CommandError("--reason: say why in 1..200 printable characters (e.g. 'device "
                           "lost', 'end of treatment')")
    return reason


def _end_entries(registry: Registry, event: Any, step: str,
                 who: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Journal entries for every key and certificate a retire/compromise ended."""
    owner = f"{event.holder_kind}:{event.holder_id}"
    entries: list[tuple[str, str, str, dict[str, Any]]] = []
    for kid in event.keys:
        entries.append((f"key.{step}", who, f"key:{kid}",
                        {"key_id": kid, "owner": owner, "reason": event.reason[:200]}))
    serials = set(event.certificates)
    for key in registry.keys(event.holder_kind, event.holder_id):
        for cert in registry.certificates(key.kid):
            if cert.serial in serials:
                entries.append((f"certificate.{step}", who, owner,
                                {"cert_digest": common.digest_hex(cert.raw),
                                 "subject_id": event.holder_id,
                                 "reason": event.reason[:200]}))
    return entries


def _end_device(args: argparse.Namespace, step: str) -> int:
    from edge_agent.lifecycle import states
    from edge_agent.lifecycle.engine import LifecycleEngine

    reason = _reason(args)
    # checked before anything is recorded: a compromise cannot be taken back
    if step == "compromised" and not 0 <= args.wait <= 120:
        raise CommandError("--wait must be 0..120 seconds")
    directory, who, identity = _writer(args)
    now = common.now()
    with common.open_registry(directory) as registry, common.refusals():
        engine = LifecycleEngine(registry)
        if step == "retired":
            event = engine.retire_device(args.device, who, now, reason)
        else:
            event = engine.compromise(args.device, reason, who, now)
        entries = _end_entries(registry, event, step, who)
        purposes = {k.kid: k.purpose for k in registry.keys("device", args.device)}
    common.journal(identity, entries, at=now)
    forwarded = _forward_compromise(args, directory, who, now, reason) \
        if step == "compromised" else None
    result = {"device_id": args.device, "state": step, "at": common.iso(now),
              "reason": reason, "severity": event.severity,
              "keys": [{"kid": kid, "purpose": purposes.get(kid)} for kid in event.keys],
              "certificates": list(event.certificates),
              "destroy_by": common.iso(now + states.DESTRUCTION_WINDOW)}
    if forwarded is not None:
        result["agent"] = forwarded
    if args.json:
        common.print_json(result)
        return 0
    out = common.console()
    colour = "bold red" if step == "compromised" else "green"
    out.print(f"[{colour}]{args.device} {step}[/]: {len(event.keys)} keys and "
              f"{len(event.certificates)} certificates withdrawn")
    for key in result["keys"]:
        out.print(f"  key {key['kid']} ({key['purpose']})")
    for serial in event.certificates:
        out.print(f"  certificate {serial}")
    if forwarded is not None:
        out.print("  readings under these keys are no longer accepted; " + {
            "accepted": f"the running agent acted: {forwarded['reason']}",
            "refused": f"[bold red]the agent refused the notice[/]: {forwarded['reason']}",
        }.get(forwarded["state"], "the agent has not acted yet (not running?): it drops the "
              "sessions, tells the centre and raises the alarm when it processes inbox entry "
              f"{forwarded['id']}"))
    out.print(f"  every copy is destroyed by {result['destroy_by']}: the gateway's by its "
              "scheduler, the device's on command")
    return 0


def run_retire(args: argparse.Namespace) -> int:
    return _end_device(args, "retired")


def run_compromise(args: argparse.Namespace) -> int:
    return _end_device(args, "compromised")


def _forward_compromise(args: argparse.Namespace, directory: Path, who: str, now: int,
                        reason: str) -> dict[str, Any]:
    """Tell the running agent (inbox): it drops the device's sessions, informs the centre
    and raises the alarm. The registry already holds the compromise, so an agent that is
    not running acts on the entry when it starts."""
    from edge_agent.inbox import DEVICE_COMPROMISED, client

    try:
        return client.submit(directory, DEVICE_COMPROMISED,
                             {"device": args.device, "reason": reason, "at": now}, who,
                             wait_s=args.wait)
    except OSError as exc:
        raise CommandError(f"{args.device} is compromised in the registry, but the agent's "
                           f"inbox could not be written ({exc}); restart the agent so it "
                           "drops the device's sessions", common.FAILED) from None


def _link_address(args: argparse.Namespace) -> str:
    if args.transport == "ble":
        if args.address is None:
            raise CommandError("--transport ble needs --address AA:BB:CC:DD:EE:FF")
        return args.address
    if args.address is not None:
        raise CommandError("--transport serial needs --port PATH or --usb VID:PID")
    if args.port is not None:
        if not args.port.startswith("/"):
            raise CommandError("--port: give the absolute path, e.g. /dev/serial/by-id/...")
        return f"path:{args.port}"
    from edge_agent.serial_ingest.ports import UsbMatch

    try:
        usb = UsbMatch.parse(args.usb)
    except ValueError as exc:
        raise CommandError(f"--usb: {exc}") from None
    from edge_agent.registry.links import serial_address

    return serial_address(None, usb) or ""


def run_register(args: argparse.Namespace) -> int:
    directory, who, identity = _writer(args)
    address = _link_address(args)
    now = common.now()
    valid_until = _optional_instant("--registration-valid-until", args.registration_valid_until)
    if (args.registration is None) != (valid_until is None):
        raise CommandError("--registration and --registration-valid-until go together")
    calibration = _optional_instant("--calibration-due", args.calibration_due)
    with common.open_registry(directory) as registry, common.refusals():
        with registry.transaction():
            device = registry.register_standard_device(
                args.device, identity.gateway_id, transport=args.transport, address=address,
                model=args.model, serial=args.serial, firmware=args.firmware,
                registration_number=args.registration, registration_valid_until=valid_until,
                calibration_due=calibration, actor=who, now=now)
            if args.patient is not None:
                bind_patient(registry, device.id, args.patient, now, who)
    journal_entries = [("config.changed", who, f"device:{device.id}",
                        {"source": "device-register", "settings": ["device-registry"],
                         "digest": common.digest_hex(
                             f"register {device.id} {device.transport} {device.address} "
                             f"{device.model} {device.serial}".encode())})]
    if args.patient is not None:
        journal_entries.append(_binding_entry(who, device.id,
                                              f"bind {device.id} {args.patient} {now}"))
    common.journal(identity, journal_entries)
    result = {"device_id": device.id, "kind": device.kind, "transport": device.transport,
              "address": device.address, "model": device.model, "serial": device.serial,
              "patient": args.patient}
    common.output(args, result, f"[green]registered[/] standard device [bold]{device.id}[/] "
                  f"({device.model} {device.serial}) at {device.transport} {device.address}"
                  + (f", bound to {args.patient}" if args.patient else "")
                  + "; its readings are attested by this gateway. Add it to gateway.toml "
                  f"with device = \"{device.id}\" if it is not there yet")
    return 0


def _optional_instant(option: str, text: str | None) -> int | None:
    return None if text is None else common.parse_instant(option, text)
