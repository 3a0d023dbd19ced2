"""The technician's commands driven through `edge_agent.cli.main` (ca, gateway, device, fault).

The command modules are the ones registered in edge_agent/cli.py (COMMAND_MODULES).
Enrollment runs over a real PTY with pyserial on both ends; the device on the far end runs
the firmware's own keystore and enrollment modules (firmware/keystore.py,
firmware/enrollment.py) on CPython, so the gateway side is checked against the real device
logic, not a copy. BLE scanning and enrollment run over the bumble virtual radio.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent import cli
from edge_agent.ca import org_ca
from edge_agent.commands import device as device_cmd
from edge_agent.eventlog import EventLogFile
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.registry import Registry
from edge_agent.serial_ingest.ports import PortInfo
from firmware.enrollment import Enrollment
from firmware.keystore import KeyStore
from protocol import device_link, messages
from simulator.serial_devices import PtySerialDevice

MODULES = tuple(f"edge_agent.commands.{name}"
                for name in ("ca", "gateway", "device", "commission", "fault"))
DAY = 86400


@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def command_runner(monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> Any:
    """`vitalbridge ARGV...` through cli.main, as technician t-0042 -> Result (also used by
    test_commission.py)."""
    missing = [m for m in MODULES if m not in cli.COMMAND_MODULES]
    assert not missing, f"not registered in edge_agent/cli.py: {missing}"
    monkeypatch.setenv("USER", "t-0042")

    def run(*argv: object) -> Result:
        status = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return run


@pytest.fixture
def vb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def site(tmp_path: Path, vb: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab CA and a provisioned gateway gw-1; VITALBRIDGE_DATA_DIR points at it."""
    assert vb("ca", "init", "--dir", tmp_path / "ca", "--org", "Test Org").status == 0
    data = tmp_path / "data"
    result = vb("gateway", "provision", "--data-dir", data, "--id", "gw-1", "--ca-dir",
                tmp_path / "ca", "--broker", "127.0.0.1:8883", "--json")
    assert result.status == 0, result.err
    monkeypatch.setenv("VITALBRIDGE_DATA_DIR", str(data))
    return data


def journal_entries(data: Path) -> list[Any]:
    log = EventLogFile.open_readonly(data / "events.sqlite3")
    try:
        assert log.verify().ok
        return list(log.entries())
    finally:
        log.close()


# -- a device in provisioning mode at the far end of a PTY --------------------------------------


class DeviceOnPty:
    """The firmware's enrollment logic behind a PTY: answers `enroll`, shows its code
    (queued in `shown`, as a technician would read it), installs the certificate and reports
    its events, exactly as the firmware modules produce them."""

    def __init__(self, root: Path, device_id: str = "ox-1", serial: str = "SN-0001",
                 clock_skew: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{device_id}.tty"
        self.pty = PtySerialDevice(self.path)
        self.shown: queue.Queue[str] = queue.Queue()
        self.commands: list[str] = []
        self.received: list[str] = []
        self.errors: list[Exception] = []
        flash = str(root / f"{device_id}-flash")

        def now() -> int:
            return int(time.time()) + clock_skew

        self.keys = KeyStore(flash + "/keys", os.urandom, now)
        self.keys.load()
        self.enrollment = Enrollment(flash, self.keys, device_id, "VB-OX1", serial, "1.2.0",
                                     now, show_code=self.shown.put)
        self.enrollment.load()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DeviceOnPty:
        self.pty.plug()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pty.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for payload in self.pty.receive_frames(1, 0.05):
                try:
                    self._handle(payload)
                except Exception as exc:  # recorded for the test to assert on
                    self.errors.append(exc)

    def _handle(self, payload: bytes) -> None:
        kind, body = messages.decode(payload)
        self.received.append(kind)
        if kind == "device-command":
            command = device_link.decode_command(body)
            self.commands.append(command.name)
            if command.name == "enroll":
                request, _code, events = self.enrollment.on_challenge(command.args)
                self._events(events)
                self.pty.send_frame(messages.encode("enroll-request", request))
        elif kind == "certificate":
            self._events(self.enrollment.on_certificate(body))

    def _events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.pty.send_frame(messages.encode("device-event", device_link.encode_event(event)))


class TypingTechnician:
    """A terminal on which the technician types the code the device's display shows."""

    def __init__(self, shown: queue.Queue[str], wrong: bool = False) -> None:
        self.shown = shown
        self.wrong = wrong

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        code = self.shown.get(timeout=10)
        if self.wrong:
            code = f"{(int(code) + 1) % 10**6:06d}"
        return f"{code[:3]} {code[3:]}\n"


def enroll_two_step(vb: Any, device: DeviceOnPty, *extra: object) -> Result:
    """First run without a terminal (waits for confirmation), then --confirm with the code
    the device shows."""
    first = vb("device", "enroll", "--port", device.path, "--id", "ox-1", "--json", *extra)
    assert first.status == device_cmd.AWAITING_CONFIRMATION, first.err
    shown = device.shown.get(timeout=5)
    assert first.json["code"] == shown  # both sides show the same six digits
    return vb("device", "enroll", "--port", device.path, "--id", "ox-1", "--confirm", shown,
              "--json", *extra)


# -- CA and gateway provisioning ------------------------------------------------------------


def test_lab_provisioning_keys_certificates_broker_settings_and_journal(vb: Any,
                                                                        site: Path) -> None:
    keys = site / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("gateway-signing.key", "gateway-agreement.key", "broker-client.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    broker = json.loads((site / "broker.json").read_text())
    assert (broker["host"], broker["port"], broker["gateway_id"]) == ("127.0.0.1", 8883, "gw-1")
    assert Path(broker["tls"]["key_file"]) == (keys / "broker-client.key").resolve()
    with Registry.open_in(site) as registry:
        assert [g.id for g in registry.gateways()] == ["gw-1"]
        purposes = sorted(k.purpose for k in registry.keys("gateway", "gw-1"))
        assert purposes == ["agreement", "signing", "tls-client"]
        assert all(s.actor == "technician:t-0042" for k in registry.keys("gateway", "gw-1")
                   for s in k.steps if s.step == "activated")
    kinds = [(e.kind, e.actor) for e in journal_entries(site)]
    assert kinds.count(("key.generated", "technician:t-0042")) == 3
    assert kinds.count(("certificate.issued", "technician:t-0042")) == 2
    assert ("config.changed", "technician:t-0042") in kinds
    shown = vb("gateway", "show", "--json").json
    assert [c["state"] for c in shown["certificates"]] == ["active", "active"]
    # State errors: provisioning twice, and a CA directory that already holds a CA.
    again = vb("gateway", "provision", "--id", "gw-1", "--ca-dir", site.parent / "ca",
               "--broker", "127.0.0.1:8883")
    assert again.status == 2 and "already holds gateway gw-1" in again.err
    twice = vb("ca", "init", "--dir", site.parent / "ca")
    assert twice.status == 2 and "already holds a CA" in twice.err


def test_production_provisioning_through_request_and_response_files(vb: Any,
                                                                     tmp_path: Path) -> None:
    vb("ca", "init", "--dir", tmp_path / "ca")
    vb("ca", "init", "--dir", tmp_path / "other-ca")
    data = tmp_path / "gw"
    first = vb("gateway", "provision", "--data-dir", data, "--id", "gw-9", "--ca-cert",
               tmp_path / "ca" / "ca.cwt", "--broker", "[::1]:8883", "--json")
    assert first.status == 0 and first.json["state"] == "awaiting-certificate"
    request = first.json["request"]
    # Devices cannot be enrolled before the gateway holds its certificate.
    early = vb("device", "list", "--data-dir", data)
    assert early.status == 2 and "provision this gateway first" in early.err
    # A response from another organisation's CA is refused: it is not the installed CA.
    assert vb("ca", "sign-request", request, "--dir", tmp_path / "other-ca", "--out",
              tmp_path / "foreign.resp").status == 0
    foreign = vb("gateway", "install-cert", tmp_path / "foreign.resp", "--data-dir", data)
    assert foreign.status == 2 and "not signed by the organisation CA" in foreign.err
    # A response to another gateway's request is refused too.
    other = tmp_path / "gw-other"
    vb("gateway", "provision", "--data-dir", other, "--id", "gw-8", "--ca-cert",
       tmp_path / "ca" / "ca.cwt", "--broker", "h:1", "--json")
    vb("ca", "sign-request", other / "certs" / "gateway-request.cose", "--dir", tmp_path / "ca",
       "--out", tmp_path / "gw8.resp")
    crossed = vb("gateway", "install-cert", tmp_path / "gw8.resp", "--data-dir", data)
    assert crossed.status == 2 and "answers another request" in crossed.err
    signed = vb("ca", "sign-request", request, "--dir", tmp_path / "ca", "--out",
                tmp_path / "gw9.resp", "--json")
    assert signed.status == 0 and signed.json["gateway_id"] == "gw-9"
    installed = vb("gateway", "install-cert", tmp_path / "gw9.resp", "--data-dir", data,
                   "--json")
    assert installed.status == 0, installed.err
    assert installed.json["broker"]["host"] == "::1"
    assert not (data / "certs" / "gateway-request.cose").exists()
    with Registry.open_in(data) as registry:
        (ca,) = registry.org_cas()
        assert ca.x509_pem is not None  # the TLS CA came inside the CA-signed response
    again = vb("gateway", "install-cert", tmp_path / "gw9.resp", "--data-dir", data)
    assert again.status == 2 and "already has its certificates" in again.err


def test_bad_arguments_and_clocks_are_refused_with_one_line(vb: Any, tmp_path: Path,
                                                            site: Path) -> None:
    cases = [
        (("gateway", "provision", "--data-dir", tmp_path / "a", "--id", "gw/1", "--ca-dir",
          tmp_path / "ca", "--broker", "h:1"), "--id"),
        (("gateway", "provision", "--data-dir", tmp_path / "a", "--id", "gw-2", "--ca-dir",
          tmp_path / "ca", "--broker", "nohostport"), "HOST:PORT"),
        (("gateway", "provision", "--data-dir", tmp_path / "a", "--id", "vb-centre",
          "--ca-dir", tmp_path / "ca", "--broker", "h:1"), "centre"),
        (("gateway", "provision", "--data-dir", tmp_path / "a", "--id", "gw-2", "--ca-dir",
          tmp_path / "ca", "--broker", "h:1", "--lifetime-days", "99999"), "before the CA"),
        (("device", "list", "--at", "next tuesday"), "ISO-8601"),
        (("device", "retire", "ghost", "--reason", "lost"), "no device 'ghost'"),
        (("device", "compromise", "ghost", "--reason", "lost"), "no device 'ghost'"),
        (("device", "show", "ghost"), "no device 'ghost'"),
        (("device", "retire", "ghost", "--reason", " "), "--reason"),
        (("device", "bind", "ghost", "--patient", "Jane Doe"), "pseudonymous"),
        (("fault", "add", "--device", "ghost", "--kind", "cable", "--note", "x"), "ghost"),
        (("fault", "close", "99", "--resolution", "fixed"), "no fault 99"),
        (("device", "list", "--data-dir", tmp_path / "nowhere"), "no registry"),
        (("device", "retire", "ox-1", "--reason", "x", "--actor", "bad actor!"), "--actor"),
        (("device", "enroll", "--port", "/dev/null", "--confirm", "123456"), "--id"),
        (("device", "enroll", "--port", "/dev/null", "--id", "ox-9", "--confirm", "1"),
         "no enrollment of ox-9 is waiting"),
        (("device", "enroll", "--port", "/dev/null", "--registration", "EU-1"), "go together"),
    ]
    for argv, expected in cases:
        result = vb(*argv)
        assert result.status == 2, (argv, result)
        assert expected in result.err and result.err.count("\n") == 1, (argv, result.err)
        assert "Traceback" not in result.err
    # The CA certificate of a gateway whose clock is far behind: valid only "in the future".
    future = org_ca.OrgCA.init(tmp_path / "future-ca", "Future Org", now=int(time.time()) + 9 * DAY)
    clock = vb("gateway", "provision", "--data-dir", tmp_path / "b", "--id", "gw-3",
               "--ca-cert", future.directory / "ca.cwt", "--broker", "h:1")
    assert clock.status == 2 and "set the clock" in clock.err
    assert not (tmp_path / "b").exists()  # refused before any key was generated
    device_cert = vb("gateway", "provision", "--data-dir", tmp_path / "c", "--id", "gw-4",
                     "--ca-cert", site / "certs" / "gateway.cwt", "--broker", "h:1")
    assert device_cert.status == 2 and "not a self-signed CA certificate" in device_cert.err


# -- device enrollment over a PTY -----------------------------------------------------------


def test_enroll_over_serial_waits_for_the_code_then_confirms(vb: Any, site: Path,
                                                             tmp_path: Path) -> None:
    with DeviceOnPty(tmp_path) as device:
        done = enroll_two_step(vb, device, "--patient", "p-4f7a2c", "--registration",
                               "EU-MDR-123", "--registration-valid-until", "2031-01-01",
                               "--calibration-due", "2030-06-01")
        assert done.status == 0, done.err
        assert done.json["installed"] is True and done.json["state"] == "enrolled"
        assert device.enrollment.enrolled and not device.errors
        assert device.enrollment.certificate.issuer == "gw-1"
    with Registry.open_in(site) as registry:
        dev = registry.device("ox-1")
        assert (dev.model, dev.serial, dev.firmware) == ("VB-OX1", "SN-0001", "1.2.0")
        assert registry.patient_at("ox-1", int(time.time())) == "p-4f7a2c"
        (signing,) = registry.keys("device", "ox-1", "signing")
        assert signing.kid == done.json["kid"]
        assert {s.step: s.actor for s in signing.steps} == {
            "created": "device:ox-1", "activated": "technician:t-0042"}
        engine = LifecycleEngine(registry)
        assert engine.may_accept("ox-1", signing.kid, int(time.time()))[0]
    kinds = [(e.kind, e.actor, e.details.get("owner")) for e in journal_entries(site)]
    assert ("key.generated", "device:ox-1", "device:ox-1") in kinds
    assert ("key.activated", "technician:t-0042", "device:ox-1") in kinds
    listed = vb("device", "list", "--json").json["devices"]
    assert [(d["id"], d["patient"], d["certificate_state"], d["flags"]) for d in listed] == [
        ("ox-1", "p-4f7a2c", "active", [])]


def test_enroll_interactively_and_refuse_a_second_enrollment(vb: Any, site: Path,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    with DeviceOnPty(tmp_path) as device:
        monkeypatch.setattr("sys.stdin", TypingTechnician(device.shown))
        done = vb("device", "enroll", "--port", device.path, "--json")
        assert done.status == 0, done.err
        assert done.json["device_id"] == "ox-1" and device.enrollment.enrolled
        commands = len(device.commands)
        again = vb("device", "enroll", "--port", device.path, "--id", "ox-1")
        assert again.status == 2 and "already enrolled" in again.err
        assert len(device.commands) == commands  # refused before anything was sent
    with DeviceOnPty(tmp_path / "twin", device_id="ox-2") as twin:  # same model and serial
        monkeypatch.setattr("sys.stdin", TypingTechnician(twin.shown))
        clash = vb("device", "enroll", "--port", twin.path)
        assert clash.status == 2 and "already enrolled as device ox-1" in clash.err


def test_a_code_mismatch_or_a_skewed_device_clock_issues_nothing(vb: Any, site: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    with DeviceOnPty(tmp_path) as device:
        monkeypatch.setattr("sys.stdin", TypingTechnician(device.shown, wrong=True))
        typed = vb("device", "enroll", "--port", device.path)
        assert typed.status == 1 and "the codes differ" in typed.err
        label = vb("device", "enroll", "--port", device.path, "--code-from-label", "1234567")
        assert label.status == 1 and "the codes differ" in label.err
        monkeypatch.setattr("sys.stdin", io.StringIO())  # no terminal: two steps
        first = vb("device", "enroll", "--port", device.path, "--id", "ox-1", "--json")
        wrong = f"{(int(first.json['code']) + 1) % 10**6:06d}"
        confirm = vb("device", "enroll", "--port", device.path, "--id", "ox-1", "--confirm",
                     wrong)
        assert confirm.status == 1 and "nothing was issued" in confirm.err
        # The waiting enrollment was used up: the right code no longer issues anything.
        late = vb("device", "enroll", "--port", device.path, "--id", "ox-1", "--confirm",
                  first.json["code"])
        assert late.status == 2 and "waiting" in late.err
        assert "certificate" not in device.received and not device.enrollment.enrolled
    with DeviceOnPty(tmp_path / "skewed", clock_skew=3 * 3600 + 150) as skewed:
        monkeypatch.setattr("sys.stdin", TypingTechnician(skewed.shown))
        clock = vb("device", "enroll", "--port", skewed.path)
        assert clock.status == 2 and "clock is 3 h 2 min ahead of the gateway's" in clock.err
    with Registry.open_in(site) as registry:
        assert registry.devices() == [] and registry.keys("device", "ox-1") == []


def test_an_unanswered_link_fails_with_advice(vb: Any, site: Path, tmp_path: Path) -> None:
    silent = PtySerialDevice(tmp_path / "silent.tty")
    silent.plug()
    try:
        result = vb("device", "enroll", "--port", silent.path, "--timeout", "0.5")
    finally:
        silent.close()
    assert result.status == 1 and "provisioning mode" in result.err
    missing = vb("device", "enroll", "--port", tmp_path / "no-such-tty")
    assert missing.status == 1 and "cannot open" in missing.err


# -- listings, retire, compromise -----------------------------------------------------------


def test_list_at_a_future_visit_show_retire_and_compromise(vb: Any, site: Path,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    soon = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 20 * DAY))
    for device_id, serial in (("ox-1", "SN-1"), ("ox-2", "SN-2")):
        with DeviceOnPty(tmp_path / device_id, device_id, serial) as device:
            monkeypatch.setattr("sys.stdin", TypingTechnician(device.shown))
            assert vb("device", "enroll", "--port", device.path, "--calibration-due", soon,
                      "--registration", "EU-1", "--registration-valid-until",
                      "2031-01-01").status == 0
    now_rows = {d["id"]: d for d in vb("device", "list", "--json").json["devices"]}
    assert now_rows["ox-1"]["certificate_state"] == "active"
    assert now_rows["ox-1"]["flags"] == ["calibration-due-soon"]
    visit = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 340 * DAY))
    later = {d["id"]: d for d in vb("device", "list", "--at", visit, "--json").json["devices"]}
    assert later["ox-1"]["certificate_state"] == "expiring"
    assert later["ox-1"]["flags"] == ["calibration-overdue"]
    gone = vb("device", "list", "--at", "2040-01-01", "--json").json["devices"]
    assert {d["certificate_state"] for d in gone} == {"expired"}
    monkeypatch.setenv("COLUMNS", "160")  # at 80 columns rich folds the cells
    table = vb("device", "list", "--at", visit)
    assert table.status == 0 and "expiring" in table.out and "ox-2" in table.out
    shown = vb("device", "show", "ox-1", "--json").json
    assert sorted(k["purpose"] for k in shown["keys"]) == ["agreement", "signing"]

    retired = vb("device", "retire", "ox-1", "--reason", "end of treatment", "--json")
    assert retired.status == 0 and len(retired.json["keys"]) == 2
    again = vb("device", "retire", "ox-1", "--reason", "again")
    assert again.status == 2 and "already retired" in again.err
    compromised = vb("device", "compromise", "ox-2", "--reason", "tamper seal broken")
    assert compromised.status == 0 and "2 keys and 1 certificates withdrawn" in compromised.out
    twice = vb("device", "compromise", "ox-2", "--reason", "again")
    assert twice.status == 2 and "already declared compromised" in twice.err
    with Registry.open_in(site) as registry:
        engine = LifecycleEngine(registry)
        for device_id in ("ox-1", "ox-2"):
            (key,) = registry.keys("device", device_id, "signing")
            assert not engine.may_accept(device_id, key.kid, int(time.time()))[0]
    entries = journal_entries(site)
    assert sum(e.kind == "key.retired" for e in entries) == 2
    assert sum(e.kind == "key.compromised" for e in entries) == 2
    assert any(e.kind == "certificate.compromised" and e.details["reason"] ==
               "tamper seal broken" for e in entries)
    everything = vb("device", "list", "--all", "--json").json["devices"]
    assert {d["id"]: d["certificate_state"] for d in everything} == {
        "ox-1": "retired", "ox-2": "compromised"}


# -- maintenance journal ----------------------------------------------------------------------


def test_fault_add_list_close_with_journal(vb: Any, site: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with DeviceOnPty(tmp_path) as device:
        monkeypatch.setattr("sys.stdin", TypingTechnician(device.shown))
        assert vb("device", "enroll", "--port", device.path).status == 0
    added = vb("fault", "add", "--device", "ox-1", "--kind", "cable", "--note",
               "strain relief cracked", "--json")
    assert added.status == 0 and added.json["id"] == 1
    seal = vb("fault", "add", "--device", "ox-1", "--kind", "tamper-seal", "--severity",
              "critical", "--note", "seal torn", "--json")
    assert "device compromise ox-1" in seal.json["advice"]
    assert vb("fault", "add", "--component", "gateway", "--kind", "power", "--note",
              "loose plug").status == 0
    # The event journal keeps key material out; the fault is refused before it is stored.
    pasted = vb("fault", "add", "--component", "gateway", "--kind", "other", "--note",
                "psk " + "ab" * 32)
    assert pasted.status == 2 and "nothing was recorded" in pasted.err
    before_close = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    time.sleep(1.1)
    closed = vb("fault", "close", "1", "--resolution", "cable replaced", "--json")
    assert closed.status == 0 and closed.json["state"] == "closed"
    open_now = vb("fault", "list", "--open", "--json").json["faults"]
    assert [f["id"] for f in open_now] == [2, 3]
    open_then = vb("fault", "list", "--open", "--at", before_close, "--json").json["faults"]
    assert [f["id"] for f in open_then] == [1, 2, 3]
    assert vb("fault", "list").status == 0
    again = vb("fault", "close", "1", "--resolution", "again")
    assert again.status == 2 and "already closed" in again.err
    entries = [(e.kind, e.actor, e.details.get("fault")) for e in journal_entries(site)]
    assert ("maintenance.fault", "technician:t-0042", "cable") in entries
    assert ("maintenance.cleared", "technician:t-0042", "cable") in entries


# -- discovery -------------------------------------------------------------------------------


def test_scan_describes_serial_ports_by_usb_id(vb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [PortInfo("/dev/ttyACM0", 0x303A, 0x1001, "AB12", "Espressif", "USB JTAG"),
             PortInfo("/dev/ttyUSB0", 0x1A86, 0x7523, None, None, "USB Serial"),
             PortInfo("/dev/pts/3")]
    monkeypatch.setattr("edge_agent.serial_ingest.ports.system_ports", lambda: ports)
    result = vb("device", "scan", "--serial", "--json")
    assert result.status == 0
    found = {d["address"]: d for d in result.json["devices"]}
    assert found["/dev/ttyACM0"]["driver"] == "vitalbridge"
    assert found["/dev/ttyACM0"]["kind"] == "VitalBridge device"
    assert found["/dev/ttyUSB0"]["usb_id"] == "1a86:7523"
    assert found["/dev/ttyUSB0"]["driver"] is None and "explicitly" in found["/dev/ttyUSB0"]["kind"]
    assert found["/dev/pts/3"]["usb_id"] == "not USB"
    assert vb("device", "scan", "--seconds", "0").status == 2


def test_ble_scan_and_enrollment_over_the_virtual_radio(vb: Any, site: Path,
                                                        tmp_path: Path) -> None:
    from edge_agent.ble.virtual_radio import VirtualRadio
    from simulator.ble_devices import FirmwareLinkDevice, HeartRateMonitor, PulseOximeter

    parser = cli.build_parser()
    shown: list[str] = []
    now = lambda: int(time.time())  # noqa: E731
    keys = KeyStore(str(tmp_path / "flash" / "keys"), os.urandom, now)
    keys.load()
    firmware = Enrollment(str(tmp_path / "flash"), keys, "hr-7", "VB-HR", "SN-7", "2.0.0",
                          now, show_code=shown.append)
    firmware.load()

    async def play_device(device: FirmwareLinkDevice) -> None:
        for _ in range(2):
            kind, body = messages.decode(await device.next_message(20))
            if kind == "device-command":
                request, _, _ = firmware.on_challenge(device_link.decode_command(body).args)
                await device.send_message(messages.encode("enroll-request", request))
            elif kind == "certificate":
                for event in firmware.on_certificate(body):
                    await device.send_message(
                        messages.encode("device-event", device_link.encode_event(event)))

    async def scenario() -> int:
        async with VirtualRadio() as radio:
            central = await radio.add_central()
            strap, oximeter = HeartRateMonitor("Strap"), PulseOximeter("Oxi")
            node = FirmwareLinkDevice("VB-HR-7")
            for peripheral in (strap, oximeter, node):
                await peripheral.attach(radio)
            found = await device_cmd.scan_ble(1.0, scanner_backend=central.scanner_backend)
            kinds = {d["address"]: d["kind"] for d in found}
            assert kinds[strap.address] == "heart-rate monitor"
            assert kinds[oximeter.address] == "pulse oximeter"
            assert kinds[node.address] == "VitalBridge device"
            assert all(isinstance(d["rssi"], int) for d in found)
            args = parser.parse_args(["device", "enroll", "--address", node.address,
                                      "--code-from-label", "1234567", "--json"])
            device_task = asyncio.create_task(play_device(node))
            link = device_cmd.BleLink(node.address, scanner_backend=central.scanner_backend,
                                      client_backend=central.client_backend, timeout=20)
            with pytest.raises(cli.CommandError) as refused:  # the label code is wrong
                await device_cmd.enroll_async(args, link)
            assert "the codes differ" in str(refused.value)
            device_task.cancel()
            args.code_from_label = None
            args.confirm = None
            device_task = asyncio.create_task(play_device(node))
            link = device_cmd.BleLink(node.address, scanner_backend=central.scanner_backend,
                                      client_backend=central.client_backend, timeout=20)
            args.device_id = "hr-7"
            first = await device_cmd.enroll_async(args, link)
            assert first == device_cmd.AWAITING_CONFIRMATION
            args.confirm = shown[-1]
            link = device_cmd.BleLink(node.address, scanner_backend=central.scanner_backend,
                                      client_backend=central.client_backend, timeout=20)
            status = await device_cmd.enroll_async(args, link)
            await asyncio.wait_for(device_task, 10)
            return status

    assert asyncio.run(scenario()) == 0
    assert firmware.enrolled and firmware.certificate.subject == "hr-7"
    with Registry.open_in(site) as registry:
        assert registry.device("hr-7").model == "VB-HR"
