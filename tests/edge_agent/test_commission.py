"""`vitalbridge commission` against a simulated home: a REAL mosquitto running the generated
TLS + ACL configuration (edge_agent.ca.mosquitto_config, as test_broker_acl.py does), a
gateway provisioned through the CLI, a device enrolled with a certificate issued by that
gateway's key, a reading journal with sealed readings written through JournalStore, and an
SNTP server on loopback whose clock the test sets. The report is signed by the gateway key;
`commission verify` accepts it and refuses it with any byte of the signed part changed.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_broker_acl
from test_broker_acl import Site, TLSBroker, needs_mosquitto
from test_cli_technician import command_runner

from edge_agent.ca import keyfiles
from edge_agent.commands import commission
from edge_agent.eventlog import EventLogFile
from edge_agent.journal import JournalStore, NewMessage
from edge_agent.registry import Registry
from protocol import crypto, cwt, sealing, senml, topics, uplink

DAY = 86400
NOT_AUTHORIZED = 0x87
pytestmark = needs_mosquitto
# The organisation CA with the broker's TLS files, and the real broker running the generated
# configuration: the fixtures of test_broker_acl.py.
site = test_broker_acl.site
broker = test_broker_acl.broker


class SntpServer:
    """An SNTP server on loopback answering with its own clock = ours + `skew` seconds."""

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = skew
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _ntp(seconds: float) -> bytes:
        return struct.pack("!II", int(seconds) + 2_208_988_800, int((seconds % 1) * 2**32))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            received = time.time() + self.skew
            answer = bytearray(48)
            answer[0] = 0x24  # leap 0, version 4, mode 4 (server)
            answer[1] = 2  # stratum
            answer[24:32] = request[40:48]  # originate = the client's transmit time
            answer[32:40] = self._ntp(received)
            answer[40:48] = self._ntp(time.time() + self.skew)
            self.sock.sendto(bytes(answer), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@dataclass
class Home:
    root: Path
    data: Path
    ca: Path
    broker: TLSBroker
    gateway_seed: bytes


@pytest.fixture
def vb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def home(site: Site, broker: TLSBroker, vb: Any,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """test_broker_acl's organisation CA and real TLS broker, and gateway gw-1 provisioned
    through the CLI against them."""
    data = site.root / "data"
    provisioned = vb("gateway", "provision", "--data-dir", data, "--id", "gw-1", "--ca-dir",
                     site.ca.directory, "--broker", f"127.0.0.1:{broker.port}", "--json")
    assert provisioned.status == 0, provisioned.err
    monkeypatch.setenv("VITALBRIDGE_DATA_DIR", str(data))
    seed = keyfiles.load_ed25519_seed(data / "keys" / "gateway-signing.key")
    yield Home(site.root, data, site.ca.directory, broker, seed)


def enroll(home: Home, device_id: str, serial: str, *, calibration_due: int,
           patient: str | None = "p-4f7a2c") -> None:
    """A device enrolled with a certificate issued by the gateway's own key."""
    now = int(time.time())
    seed = crypto.random_bytes(32)
    agreement = crypto.x25519_public_key(crypto.random_bytes(32))
    certificate = cwt.issue_cwt(home.gateway_seed, "gw-1", device_id,
                                crypto.ed25519_public_key(seed), now, now + 300 * DAY,
                                agreement_key=agreement, role="device", model="VB-OX1",
                                serial=serial)
    with Registry.open_in(home.data) as registry:
        registry.enroll_device(device_id, "gw-1", certificate, model="VB-OX1", serial=serial,
                               firmware="1.2.0", registration_number="EU-MDR-1",
                               registration_valid_until=now + 900 * DAY,
                               calibration_due=calibration_due, actor="technician:t-0042",
                               now=now)
        if patient is not None:
            if patient not in registry.patients():
                registry.add_patient(patient, actor="technician:t-0042", now=now)
            registry.bind(device_id, patient, since=now, actor="technician:t-0042")


def journal_readings(home: Home, device_id: str, signal_quality: int, batches: int = 3) -> None:
    """Sealed batches (spo2, pr, sq) as the verification pipeline journals them."""
    mac_key, kid = crypto.random_bytes(32), crypto.random_bytes(8)
    store = JournalStore.open(home.data / "journal.sqlite3")
    try:
        now = time.time()
        messages = []
        for batch in range(batches):
            first = 1 + 3 * batch
            at = int(now) - 120 + 30 * batch
            records = [senml.make_record("spo2", 96, time=at, seq=first),
                       senml.make_record("pr", 71, time=at, seq=first + 1),
                       senml.make_record("sq", signal_quality, time=at, seq=first + 2)]
            sealed = sealing.seal_batch(mac_key, kid, records, f"urn:dev:vb:{device_id}:")
            payload = uplink.encode_readings(device_id, sealed, "sealed", at * 1000)
            messages.append(NewMessage(topics.UP_READINGS, device_id, payload, session=kid,
                                       first_seq=first, last_seq=first + 2, count=3,
                                       received_at=at + 1))
        store.append(messages)
    finally:
        store.close()


def checks_of(report_file: Path) -> dict[str, dict[str, Any]]:
    document = json.loads(report_file.read_text())
    return {c["name"]: c for c in document["report"]["checks"]}


def test_commissioning_passes_and_the_signed_report_verifies(vb: Any, home: Home) -> None:
    enroll(home, "ox-1", "SN-1", calibration_due=int(time.time()) + 200 * DAY)
    journal_readings(home, "ox-1", signal_quality=92)
    sntp = SntpServer(skew=0.0)
    report = home.root / "commissioning.json"
    try:
        result = vb("commission", "--report", report, "--ntp-server", sntp.address,
                    "--max-clock-offset", "2", "--min-free-percent", "0", "--json")
    finally:
        sntp.close()
    assert result.status == 0, result.out + result.err
    checks = checks_of(report)
    assert set(checks) == {"broker", "clock", "device:ox-1", "certificates", "currency", "disk"}
    assert all(c["result"] == "pass" for c in checks.values())
    broker = checks["broker"]["measured"]
    assert broker["foreign_publish"] == NOT_AUTHORIZED and broker["connack"] == 0
    assert broker["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert abs(checks["clock"]["measured"]["offset_s"]) < 2  # the server's skew is 0
    device = checks["device:ox-1"]["measured"]
    assert (device["batches"], device["readings"], device["signal_min"]) == (3, 9, 92)
    assert device["quantities"] == ["pr", "spo2", "sq"]
    html = report.with_suffix(".html").read_text()
    assert "PASSED" in html and "device:ox-1" in html

    cert, ca_cert = home.data / "certs" / "gateway.cwt", home.ca / "ca.cwt"
    public = crypto.ed25519_public_key(home.gateway_seed).hex()
    for options in (("--cert", cert, "--ca", ca_cert), ("--key", public), ("--ca", ca_cert)):
        verified = vb("commission", "verify", report, *options, "--json")
        assert verified.status == 0, (options, verified.err)
        assert verified.json["valid"] and verified.json["passed"] is True
    stranger = vb("commission", "verify", report, "--key", crypto.ed25519_public_key(
        crypto.random_bytes(32)).hex())
    assert stranger.status == 1 and "INVALID" in stranger.out
    # Another CA: the gateway certificate does not check out under it.
    vb("ca", "init", "--dir", home.root / "other-ca")
    foreign_ca = vb("commission", "verify", report, "--cert", cert, "--ca",
                    home.root / "other-ca" / "ca.cwt")
    assert foreign_ca.status == 2 and "does not check out" in foreign_ca.err


def test_any_changed_byte_of_the_signed_report_fails_verification(vb: Any, home: Home) -> None:
    enroll(home, "ox-1", "SN-1", calibration_due=int(time.time()) + 200 * DAY)
    journal_readings(home, "ox-1", signal_quality=92)
    report = home.root / "r.json"
    vb("commission", "--report", report, "--max-clock-offset", "100000", "--json")
    original = report.read_bytes()
    cert = home.data / "certs" / "gateway.cwt"
    assert vb("commission", "verify", report, "--cert", cert).status == 0
    document = original.decode()
    # The signed part: the whole "report" object, and the signature.
    start = document.index('"report": {')
    end = document.index('"signature":')
    signature_at = document.index('"', end + len('"signature":') + 1) + 1
    positions = random.Random(7).sample(range(start + len('"report": {'), end - 3), 40)
    positions += random.Random(8).sample(range(signature_at, signature_at + 80), 8)
    tampered_file = home.root / "tampered.json"
    statuses = set()
    for position in positions:
        tampered = bytearray(original)
        tampered[position] ^= 0x01
        tampered_file.write_bytes(bytes(tampered))
        result = vb("commission", "verify", tampered_file, "--cert", cert)
        assert result.status in (1, 2), (position, chr(original[position]), result)
        statuses.add(result.status)
    assert statuses == {1, 2}  # altered values: invalid signature; broken JSON: unreadable
    # One byte inside a value keeps valid JSON and must still fail on the signature.
    text = document.replace('"technician": "technician:t-0042"',
                            '"technician": "technician:t-0043"')
    tampered_file.write_text(text)
    result = vb("commission", "verify", tampered_file, "--cert", cert)
    assert result.status == 1 and "INVALID" in result.out


def test_failures_are_measured_signed_and_journaled(vb: Any, home: Home) -> None:
    now = int(time.time())
    enroll(home, "ox-1", "SN-1", calibration_due=now - DAY)  # calibration overdue
    enroll(home, "ox-2", "SN-2", calibration_due=now + 200 * DAY, patient="p-77b1")
    journal_readings(home, "ox-1", signal_quality=30)  # poor signal; ox-2 sends nothing
    sntp = SntpServer(skew=120.0)
    report = home.root / "failed.json"
    try:
        result = vb("commission", "--report", report, "--ntp-server", sntp.address,
                    "--min-free-percent", "0", "--disk-budget-mb", "0.01")
    finally:
        sntp.close()
    assert result.status == 1
    checks = checks_of(report)
    failed = {name for name, c in checks.items() if c["result"] == "fail"}
    assert failed == {"clock", "device:ox-1", "device:ox-2", "currency", "disk"}
    assert "of its budget" in checks["disk"]["summary"]
    assert 119 < checks["clock"]["measured"]["offset_s"] < 121
    assert checks["device:ox-1"]["measured"]["signal_min"] == 30
    assert "no readings" in checks["device:ox-2"]["summary"]
    assert "calibration-overdue" in checks["currency"]["summary"]
    assert all(c["advice"] for c in checks.values() if c["result"] == "fail")
    assert "FAILED" in report.with_suffix(".html").read_text()
    verified = vb("commission", "verify", report, "--cert", home.data / "certs" / "gateway.cwt",
                  "--json")
    assert verified.status == 0 and verified.json["passed"] is False
    log = EventLogFile.open_readonly(home.data / "events.sqlite3")
    try:
        faults = {e.details["fault"] for e in log.entries() if e.kind == "maintenance.fault"}
    finally:
        log.close()
    assert faults == {"commission-clock", "commission-device", "commission-currency",
                      "commission-disk"}
    # A year later: the certificates are expiring and the readings are old.
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 340 * DAY))
    ahead = vb("commission", "--report", home.root / "later.json", "--at", later,
               "--max-clock-offset", "100000", "--json")
    assert ahead.status == 1
    checks = checks_of(home.root / "later.json")
    assert checks["certificates"]["result"] == "fail"
    assert "device:ox-1" in checks["certificates"]["summary"]


def test_a_broker_that_does_not_enforce_the_acl_fails_the_check(vb: Any, home: Home) -> None:
    enroll(home, "ox-1", "SN-1", calibration_due=int(time.time()) + 200 * DAY)
    journal_readings(home, "ox-1", signal_quality=92)
    acl = home.broker.workdir / "acl"
    acl.write_text("pattern write vb/v1/gw/+/up/#\npattern read vb/v1/gw/%u/down/#\n")
    assert home.broker.process is not None
    home.broker.process.send_signal(signal.SIGHUP)  # mosquitto re-reads its ACL file
    settings = json.loads((home.data / "broker.json").read_text())
    deadline = time.monotonic() + 10
    while commission.probe_broker(settings, 5)["foreign_publish"] == NOT_AUTHORIZED:
        assert time.monotonic() < deadline, "the broker did not reload its ACL"
        time.sleep(0.1)  # the reload happens in the broker's main loop, a moment later
    report = home.root / "open-acl.json"
    result = vb("commission", "--report", report, "--max-clock-offset", "100000", "--json")
    assert result.status == 1
    broker = checks_of(report)["broker"]
    assert broker["result"] == "fail" and "NOT refused" in broker["summary"]
    assert broker["measured"]["foreign_publish"] in (0x00, 0x10)


def test_unreachable_broker_and_bad_options(vb: Any, home: Home) -> None:
    home.broker.stop()
    report = home.root / "down.json"
    result = vb("commission", "--report", report, "--max-clock-offset", "100000",
                "--timeout", "2", "--json")
    assert result.status == 1
    broker = checks_of(report)["broker"]
    assert broker["result"] == "fail" and "cannot connect" in broker["summary"]
    assert "devices" in checks_of(report)  # nothing bound: that is a failure too
    for argv, expected in (((), "--report"),
                           (("--report", report, "--window-minutes", "0"), "positive"),
                           (("--report", report, "--min-signal", "101"), "percentage"),
                           (("--report", report, "--min-free-percent", "-1"), "percentage"),
                           (("--report", home.root / "nope" / "r.json"), "does not exist")):
        bad = vb("commission", *argv)
        assert bad.status == 2 and expected in bad.err, (argv, bad.err)
    missing = vb("commission", "verify", home.root / "absent.json", "--key", "00" * 32)
    assert missing.status == 2 and "cannot read" in missing.err
    report.write_text("{not json")
    broken = vb("commission", "verify", report, "--key", "00" * 32)
    assert broken.status == 2 and "not JSON" in broken.err
    nokey = vb("commission", "verify", report)
    assert nokey.status == 2 and "--key" in nokey.err


def test_kernel_clock_state_is_read_like_timedatectl() -> None:
    state = commission.kernel_clock()
    if state is None:
        pytest.skip("adjtimex is not available on this system")
    assert isinstance(state["synchronized"], bool) and state["max_error_ms"] >= 0
    check = commission.check_clock(None, 1.0, 1.0)
    assert check.measured["source"] == "kernel"
    assert check.passed == (state["synchronized"] and state["max_error_ms"] <= 1000)
