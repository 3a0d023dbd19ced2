"""`vitalbridge commission`: the acceptance checklist of an installation, with measured
values, written as a report signed by the gateway's key.

  vitalbridge commission --report FILE [--data-dir DIR] [--at ISO] [--journal PATH]
                         [--ntp-server HOST[:PORT]] [--max-clock-offset S]
                         [--window-minutes N] [--min-signal PCT] [--min-cert-days N]
                         [--disk-budget-mb N] [--min-free-percent P] [--actor NAME]
  vitalbridge commission verify REPORT (--key HEX | --cert FILE [--ca FILE] | --ca FILE)

Checks (docs/technician-cli.md says how each is measured):
  broker        TLS with this gateway's client certificate; CONNACK; a publish into another
                gateway's subtree must be refused (PUBACK >= 0x80, mosquitto says 0x87)
  clock         SNTP offset against --ntp-server, else the kernel's NTP state (adjtimex,
                what `timedatectl` reports as NTPSynchronized) and its maximum error
  device:<id>   each device bound to a patient: readings in the journal within the window,
                every one inside the vitals vocabulary's possible range, signal quality
                (`sq`) at least --min-signal when the device reports it
  certificates  organisation CA, gateway (CWT and TLS) and device certificates usable with
                more than --min-cert-days left at --at
  currency      each active device's calibration and regulatory registration current at --at
  disk          free space on the data directory's file system, journal size vs the budget

The report is JSON: {"report": {...}, "signature": base64 COSE_Sign1 (EdDSA, detached payload
= deterministic CBOR of "report", external AAD "vitalbridge commission report v1", kid = the
gateway key id), "gateway_certificate": base64 CWT}, next to a readable HTML page (FILE with
.html). Exit status 0 every check passed, 1 a check failed, 2 usage or state error.
verify: 0 the signature holds, 1 it does not (altered, or another key), 2 unreadable.
--at moves the certificate, currency and journal-window checks to that instant; the broker,
clock and disk are measured now.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ctypes
import html
import json
import os
import queue
import shutil
import socket
import sqlite3
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.cli import CommandError
from edge_agent.commands import common

REPORT_FORMAT = "vitalbridge-commission-report/1"
REPORT_AAD = b"vitalbridge commission report v1"
PROBE_GATEWAY = "vb-acl-probe"
NTP_EPOCH_OFFSET = 2_208_988_800
STA_UNSYNC = 0x0040
TIME_ERROR = 5
MAX_REPORT = 4 << 20
DAY = 86400


@dataclass
class Check:
    name: str
    passed: bool
    summary: str
    measured: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "result": "pass" if self.passed else "fail",
                "summary": self.summary, "measured": self.measured, "advice": self.advice}


# -- parser ----------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("commission", help="acceptance checklist, signed report",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", help="report file to write (JSON; HTML next to it)")
    parser.add_argument("--journal", help="reading journal (default DATA_DIR/journal.sqlite3)")
    parser.add_argument("--ntp-server", metavar="HOST[:PORT]",
                        help="measure the clock offset against this (S)NTP server")
    parser.add_argument("--max-clock-offset", type=float, default=1.0,
                        help="seconds (default 1)")
    parser.add_argument("--window-minutes", type=float, default=15.0,
                        help="readings must be this recent (default 15)")
    parser.add_argument("--min-signal", type=float, default=60.0,
                        help="lowest acceptable signal quality, percent (default 60)")
    parser.add_argument("--min-cert-days", type=int, default=30,
                        help="certificates must have more days left (default 30)")
    parser.add_argument("--disk-budget-mb", type=float, help="the reading journal's budget")
    parser.add_argument("--min-free-percent", type=float, default=10.0,
                        help="free space the file system must keep (default 10)")
    parser.add_argument("--timeout", type=float, default=5.0, help="network waits, seconds")
    common.add_at(parser)
    common.add_data_dir(parser)
    common.add_actor(parser)
    common.add_json(parser)
    parser.set_defaults(handler=run_commission)
    actions = parser.add_subparsers(dest="commission_command", metavar="verify")
    verify = actions.add_parser("verify", help="check a report's signature")
    verify.add_argument("report_file", metavar="REPORT")
    key = verify.add_mutually_exclusive_group()
    key.add_argument("--key", help="the gateway's Ed25519 public key, hex")
    key.add_argument("--cert", help="the gateway's certificate (gateway.cwt)")
    verify.add_argument("--ca", help="the organisation CA certificate (ca.cwt): the gateway "
                        "certificate (--cert, else the one in the report) must be issued by it")
    common.add_json(verify)
    verify.set_defaults(handler=run_verify)


# -- broker ----------------------------------------------------------------------------------


def probe_broker(settings: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Connect as this gateway over TLS, subscribe to its own down/, and publish into another
    gateway's subtree: what happened, measured."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.uplink.mqtt_link import TlsFiles, make_ssl_context
    from protocol import topics

    gateway_id = settings["gateway_id"]
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"{gateway_id}-commission-{os.urandom(3).hex()}")
    client.on_connect = lambda c, u, f, rc, p: events.put(("connack", rc))
    client.on_disconnect = lambda c, u, f, rc, p: events.put(("disconnect", rc))
    client.on_subscribe = lambda c, u, mid, rcs, p: events.put(("suback", rcs))
    client.on_publish = lambda c, u, mid, rc, p: events.put(("puback", rc))
    measured: dict[str, Any] = {"host": settings["host"], "port": settings["port"]}
    started = time.monotonic()
    try:
        tls = settings["tls"]
        client.tls_set_context(make_ssl_context(TlsFiles(tls["ca_file"], tls["cert_file"],
                                                         tls["key_file"])))
        client.connect(settings["host"], int(settings["port"]), keepalive=10)
    except (ssl.SSLError, OSError, KeyError, TypeError, ValueError) as exc:
        measured["error"] = f"{type(exc).__name__}: {exc}"
        return measured
    client.loop_start()
    try:
        kind, code = _wait(events, timeout)
        measured["connect_ms"] = round((time.monotonic() - started) * 1000, 1)
        measured["connack"] = getattr(code, "value", code)
        if kind != "connack" or measured["connack"] != 0:
            measured["error"] = f"{kind}: {code}"
            return measured
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket):
            measured["tls_version"] = sock.version()
            measured["cipher"] = (sock.cipher() or ("?",))[0]
        client.subscribe(topics.gateway_down_filter(gateway_id), qos=1)
        kind, codes = _wait(events, timeout)
        measured["own_subscribe"] = [getattr(c, "value", c) for c in codes] \
            if kind == "suback" else kind
        other = PROBE_GATEWAY if gateway_id != PROBE_GATEWAY else PROBE_GATEWAY + "-2"
        measured["foreign_topic"] = topics.up(other, topics.UP_EVENT)
        client.publish(measured["foreign_topic"], b"commissioning ACL probe", qos=1)
        kind, code = _wait(events, timeout)
        measured["foreign_publish"] = getattr(code, "value", code) if kind == "puback" else kind
    finally:
        client.disconnect()
        client.loop_stop()
    return measured


def _wait(events: queue.Queue[tuple[str, Any]], timeout: float) -> tuple[str, Any]:
    try:
        return events.get(timeout=timeout)
    except queue.Empty:
        return "timeout", None


def check_broker(directory: Path, timeout: float) -> Check:
    path = directory / common.BROKER_FILE
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Check("broker", False, f"no broker settings ({exc})", {},
                     "provision the gateway (`vitalbridge gateway provision`)")
    missing = [k for k in ("gateway_id", "host", "port", "tls")
               if not isinstance(settings, dict) or k not in settings]
    if missing:
        return Check("broker", False, f"{path} lacks {', '.join(missing)}", {},
                     "restore broker.json (written by `gateway install-cert`)")
    measured = probe_broker(settings, timeout)
    if "error" in measured:
        return Check("broker", False, f"cannot connect over TLS: {measured['error']}", measured,
                     "check the broker address, that it runs, the gateway's certificate and "
                     "the CRL")
    refused = measured.get("foreign_publish")
    if not isinstance(refused, int) or refused < 0x80:
        return Check("broker", False, "a publish into another gateway's subtree was NOT "
                     f"refused ({refused}): the ACL is not enforced", measured,
                     "install the generated acl_file (edge_agent.ca.mosquitto_config) and "
                     "`use_identity_as_username true`, then reload the broker")
    return Check("broker", True, f"TLS {measured.get('tls_version')} in "
                 f"{measured['connect_ms']} ms; foreign publish refused with "
                 f"0x{refused:02x}", measured)


# -- clock -----------------------------------------------------------------------------------


def sntp_offset(host: str, port: int, timeout: float) -> tuple[float, float]:
    """(offset of the server's clock from ours, round-trip delay), seconds (RFC 4330)."""
    def to_ntp(seconds: float) -> bytes:
        whole = int(seconds) + NTP_EPOCH_OFFSET
        return struct.pack("!II", whole, int((seconds % 1) * 2**32))

    def from_ntp(data: bytes) -> float:
        whole, fraction = struct.unpack("!II", data)
        return whole - NTP_EPOCH_OFFSET + fraction / 2**32

    request = bytearray(48)
    request[0] = 0x23  # leap 0, version 4, mode 3 (client)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        t1 = time.time()
        request[40:48] = to_ntp(t1)
        sock.sendto(bytes(request), (host, port))
        answer, _ = sock.recvfrom(512)
        t4 = time.time()
    if len(answer) < 48 or answer[0] & 0x07 != 4 or not 0 < answer[1] < 16:
        raise OSError("not an (S)NTP server answer (mode, stratum)")
    if answer[24:32] != bytes(request[40:48]):
        raise OSError("the answer does not echo our request (spoofed or stale)")
    t2, t3 = from_ntp(answer[32:40]), from_ntp(answer[40:48])
    return ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("padding", ctypes.c_long * 40)]


def kernel_clock() -> dict[str, Any] | None:
    """The kernel's NTP discipline state (Linux adjtimex, read only), as timedatectl reads
    it: synchronized = the STA_UNSYNC bit is clear. None where adjtimex is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    timex = _Timex()
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        return None
    return {"source": "kernel", "synchronized": state != TIME_ERROR and
            not timex.status & STA_UNSYNC, "max_error_ms": round(timex.maxerror / 1000, 1),
            "estimated_error_ms": round(timex.esterror / 1000, 1)}


def check_clock(ntp_server: str | None, max_offset: float, timeout: float) -> Check:
    advice = ("enable time synchronisation (`timedatectl set-ntp true`), check that NTP "
              "(UDP 123) reaches the network, then commission again")
    if ntp_server is not None:
        host, _, port = ntp_server.rpartition(":") if ntp_server.count(":") == 1 \
            else (ntp_server, "", "123")
        try:
            offset, delay = sntp_offset(host or ntp_server, int(port or 123), timeout)
        except (OSError, ValueError) as exc:
            return Check("clock", False, f"no answer from {ntp_server}: {exc}",
                         {"source": "sntp", "server": ntp_server}, advice)
        measured = {"source": "sntp", "server": ntp_server, "offset_s": round(offset, 3),
                    "delay_ms": round(delay * 1000, 1), "limit_s": max_offset}
        passed = abs(offset) <= max_offset
        summary = f"offset {offset:+.3f} s against {ntp_server} (delay {delay * 1000:.1f} ms)"
        return Check("clock", passed, summary, measured, "" if passed else advice)
    state = kernel_clock()
    if state is None:
        return Check("clock", False, "cannot read the clock's synchronisation state here",
                     {"source": "none"}, "pass --ntp-server HOST to measure the offset")
    passed = bool(state["synchronized"]) and state["max_error_ms"] <= max_offset * 1000
    summary = (f"kernel clock {'synchronised' if state['synchronized'] else 'NOT synchronised'}"
               f", maximum error {state['max_error_ms']} ms")
    return Check("clock", passed, summary, state, "" if passed else advice)


# -- devices and their readings -------------------------------------------------------------


def _journal_rows(path: Path, device_id: str, since: float,
                  until: float) -> list[tuple[bytes, float, str]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT payload, received_at, flags FROM messages WHERE kind = 'readings' AND "
            "device_id = ? AND received_at > ? AND received_at <= ? ORDER BY received_at",
            (device_id, since, until)).fetchall()
    finally:
        conn.close()


def readings_of(payload: bytes) -> list[Any]:
    """The SenML readings of a journaled readings message (seal parsed, not verified: the
    journal holds what the pipeline verified on arrival). ProtocolError if they do not
    decode or lie outside the vitals vocabulary's possible ranges."""
    from protocol import cose, senml, uplink

    _, sealed, _, _ = uplink.decode_readings(payload)
    structure = cose.peek(sealed)["structure"]
    message = cose.mac0_parse(sealed) if structure == "COSE_Mac0" else cose.sign1_parse(sealed)
    if message.payload is None:
        from protocol.errors import SealError

        raise SealError("detached payload")
    return senml.decode_pack(message.payload)


def device_check(device_id: str, rows: list[tuple[bytes, float, str]], at: int,
                 window_s: float, min_signal: float) -> Check:
    from protocol.errors import ProtocolError

    quantities: set[str] = set()
    implausible = flagged = readings = 0
    signal: float | None = None
    for payload, _, flags in rows:
        if flags:
            flagged += 1
        try:
            decoded = readings_of(bytes(payload))
        except ProtocolError:
            implausible += 1
            continue
        readings += len(decoded)
        for reading in decoded:
            quantities.add(reading.quantity)
            if reading.quantity == "sq":
                signal = reading.value if signal is None else min(signal, reading.value)
    last = max((row[1] for row in rows), default=None)
    measured = {"batches": len(rows), "readings": readings, "implausible_batches": implausible,
                "flagged_batches": flagged, "quantities": sorted(quantities),
                "last_received": common.iso(last),
                "age_s": None if last is None else round(at - last, 1),
                "signal_min": signal, "signal_limit": min_signal,
                "window_s": window_s}
    name = f"device:{device_id}"
    if not rows:
        return Check(name, False, f"no readings in the last {window_s / 60:g} min", measured,
                     "check the device is on, worn and in range, then commission again")
    if implausible:
        return Check(name, False, f"{implausible} of {len(rows)} batches are implausible",
                     measured, "check the sensor's placement; replace it if it persists")
    if signal is not None and signal < min_signal:
        return Check(name, False, f"signal quality {signal:g} % below {min_signal:g} %",
                     measured, "reposition the sensor or the device, then commission again")
    signal_text = "signal not reported" if signal is None else f"signal >= {signal:g} %"
    return Check(name, True, f"{readings} readings in {len(rows)} batches, last "
                 f"{common.duration(at - last)} ago, {signal_text}", measured)


def check_devices(registry: Any, journal_path: Path, at: int, window_s: float,
                  min_signal: float) -> list[Check]:
    bound = [d for d in registry.devices(status="active")
             if registry.patient_at(d.id, at) is not None]
    if not bound:
        return [Check("devices", False, "no device is bound to a patient", {},
                      "enroll the devices with --patient, or `vitalbridge device bind`")]
    if not journal_path.is_file():
        return [Check("devices", False, f"no reading journal at {journal_path}", {},
                      "start the agent (or pass --journal) and let the devices send")]
    checks = []
    for device in bound:
        try:
            rows = _journal_rows(journal_path, device.id, at - window_s, at)
        except sqlite3.Error as exc:
            return [Check("devices", False, f"the reading journal {journal_path} is "
                          f"unreadable: {exc}", {}, "check --journal and the agent's data")]
        checks.append(device_check(device.id, rows, at, window_s, min_signal))
    return checks


# -- certificates, currency, disk ------------------------------------------------------------


def check_certificates(registry: Any, gateway_id: str, at: int, min_days: int) -> Check:
    from edge_agent.commands.device import certificate_state
    from edge_agent.commands.gateway import gateway_certificates
    from edge_agent.lifecycle import states

    items: list[dict[str, Any]] = []
    for ca in registry.org_cas():
        cert = registry.certificate_of_key(ca.kid, "cwt")
        items.append({"subject": f"ca:{ca.name}", "state": cert.state(at),
                      "expires": cert.expires})
    for cert in gateway_certificates(registry, gateway_id, at):
        items.append({"subject": f"gateway:{gateway_id}:{cert['purpose']}",
                      "state": cert["state"], "expires": cert["expires"]})
    for device in registry.devices(status="active"):
        state, expires = certificate_state(registry, device, at)
        items.append({"subject": f"device:{device.id}", "state": state, "expires": expires})
    failing = []
    for item in items:
        left = None if item["expires"] is None else (item["expires"] - at) / DAY
        item["days_left"] = None if left is None else round(left, 1)
        item["expires"] = common.iso(item["expires"])
        if item["state"] not in states.USABLE or left is None or left <= min_days:
            failing.append(item["subject"])
    measured = {"min_days": min_days, "certificates": items}
    if failing:
        return Check("certificates", False, f"{len(failing)} certificates unusable or with "
                     f"{min_days} days or less left: {', '.join(failing)}", measured,
                     "renew them before leaving (or plan the renewal visit)")
    soonest = min((i["days_left"] for i in items), default=None)
    return Check("certificates", True, f"{len(items)} certificates usable, soonest expiry in "
                 f"{soonest} days", measured)


CURRENCY_FAILURES = ("registration-missing", "registration-expired", "registration-unknown",
                     "calibration-overdue", "calibration-unknown")


def check_currency(registry: Any, at: int) -> Check:
    devices = []
    failing = []
    for device in registry.devices(status="active"):
        flags = list(device.currency_flags(at))
        devices.append({"device": device.id,
                        "calibration_due": common.iso(device.calibration_due),
                        "registration_number": device.registration_number,
                        "registration_valid_until": common.iso(device.registration_valid_until),
                        "flags": flags})
        bad = [f for f in flags if f in CURRENCY_FAILURES]
        if bad:
            failing.append(f"{device.id} ({', '.join(bad)})")
    measured = {"devices": devices}
    if failing:
        return Check("currency", False, "not current: " + "; ".join(failing), measured,
                     "calibrate the device or record its registration (`device enroll` "
                     "options), or replace it")
    soon = [d["device"] for d in devices if any(f.endswith("due-soon") for f in d["flags"])]
    note = f"; due within 30 days: {', '.join(soon)}" if soon else ""
    return Check("currency", True, f"{len(devices)} devices calibrated and registered{note}",
                 measured)


def check_disk(directory: Path, journal_path: Path, budget_mb: float | None,
               min_free_percent: float) -> Check:
    usage = shutil.disk_usage(directory)
    journal_bytes = sum(os.stat(p).st_size for p in (journal_path,
                                                       Path(f"{journal_path}-wal"))
                        if p.exists())
    free_fraction = usage.free / usage.total if usage.total else 0.0
    measured: dict[str, Any] = {"free_bytes": usage.free, "total_bytes": usage.total,
                                "free_percent": round(free_fraction * 100, 1),
                                "journal_bytes": journal_bytes}
    problems = []
    if free_fraction * 100 < min_free_percent:
        problems.append(f"only {free_fraction:.0%} of the file system is free")
    if budget_mb is not None:
        budget = int(budget_mb * 1024 * 1024)
        measured["budget_bytes"] = budget
        measured["budget_used_percent"] = round(journal_bytes / budget * 100, 1)
        if journal_bytes > 0.8 * budget:
            problems.append(f"the journal uses {journal_bytes / budget:.0%} of its budget")
        if usage.free < budget - journal_bytes:
            problems.append("the file system cannot hold the journal's full budget")
    if problems:
        return Check("disk", False, "; ".join(problems), measured,
                     "free space, or a larger SD card; check retention and the budget")
    return Check("disk", True, f"{measured['free_percent']} % free, journal "
                 f"{journal_bytes} bytes", measured)


# -- the signed report -------------------------------------------------------------------


def sign_report(report: dict[str, Any], seed: bytes, certificate: bytes) -> dict[str, Any]:
    from protocol import cbor, cose, crypto

    public = crypto.ed25519_public_key(seed)
    signature = cose.sign1_create(seed, cbor.dumps(report), kid=cose.key_id(public),
                                  external_aad=REPORT_AAD, detached=True)
    return {"report": report, "signature": base64.b64encode(signature).decode(),
            "gateway_certificate": base64.b64encode(certificate).decode(),
            "signature_format": "COSE_Sign1 EdDSA, detached payload = deterministic CBOR of "
                                "'report', external AAD 'vitalbridge commission report v1'"}


def verify_report(document: Any, public_key: bytes) -> dict[str, Any]:
    """The report, if `document` carries a valid signature by `public_key`. SealError /
    ProtocolError when it does not; ValueError when the document has no report shape."""
    from protocol import cbor, cose

    if not isinstance(document, dict) or not isinstance(document.get("report"), dict):
        raise ValueError("no 'report' object")
    try:
        signature = base64.b64decode(document.get("signature", ""), validate=True)
    except (binascii.Error, TypeError):
        raise ValueError("'signature' is not base64") from None
    report = document["report"]
    cose.sign1_verify(public_key, signature, external_aad=REPORT_AAD,
                      kid=cose.key_id(public_key), detached_payload=cbor.dumps(report))
    return report


def render_html(report: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return "<br>".join(f"{html.escape(str(k))}: {cell(v)}" for k, v in value.items())
        if isinstance(value, list):
            return "<br>".join(cell(v) for v in value) or "-"
        return html.escape("-" if value is None else str(value))

    rows = "\n".join(
        f"<tr class='{c['result']}'><td>{html.escape(c['name'])}</td>"
        f"<td>{c['result'].upper()}</td><td>{html.escape(c['summary'])}</td>"
        f"<td class='m'>{cell(c['measured'])}</td><td>{html.escape(c['advice'])}</td></tr>"
        for c in report["checks"])
    verdict = "PASSED" if report["passed"] else "FAILED"
    gateway = html.escape(report["gateway_id"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Commissioning report {gateway}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #999; padding: .4em; vertical-align: top; text-align: left; }}
tr.pass td:nth-child(2) {{ color: #176b2c; font-weight: bold; }}
tr.fail td:nth-child(2) {{ color: #b00020; font-weight: bold; }}
td.m {{ font-size: .85em; font-family: monospace; }}
</style></head><body>
<h1>Commissioning report: gateway {gateway} &mdash; {verdict}</h1>
<p>Evaluated at {html.escape(report["evaluated_at"])}, generated
{html.escape(report["generated_at"])} by {html.escape(report["technician"])}.
Gateway key id {html.escape(report["gateway_key_id"])}.</p>
<table><tr><th>check</th><th>result</th><th>summary</th><th>measured</th><th>advice</th></tr>
{rows}
</table>
<p>This page is a reading aid. The evidence is the signed JSON report: verify it with
<code>vitalbridge commission verify REPORT --cert gateway.cwt</code>.</p>
</body></html>
"""


def run_commission(args: argparse.Namespace) -> int:
    from edge_agent.registry import Registry
    from protocol import cose

    if args.report is None:
        raise CommandError("--report FILE is required (or use `commission verify REPORT`)")
    for option, value in (("--window-minutes", args.window_minutes),
                          ("--timeout", args.timeout), ("--max-clock-offset",
                                                        args.max_clock_offset)):
        if not value > 0:
            raise CommandError(f"{option} must be positive")
    for option, value in (("--min-signal", args.min_signal),
                          ("--min-free-percent", args.min_free_percent)):
        if not 0 <= value <= 100:
            raise CommandError(f"{option} is a percentage 0..100")
    if args.disk_budget_mb is not None and not args.disk_budget_mb > 0:
        raise CommandError("--disk-budget-mb must be positive")
    directory = common.data_dir(args)
    who = common.actor(args)
    identity = common.load_gateway(directory)
    certificate = identity.certificate()
    at = common.at_or_now(args)
    journal_path = Path(args.journal) if args.journal else directory / common.JOURNAL_FILE
    report_path = Path(args.report)
    if not report_path.parent.is_dir():
        raise CommandError(f"--report: directory {report_path.parent} does not exist")
    common.open_registry(directory).close()
    checks: list[Check] = []
    with common.steps(not args.json, 6) as step:
        step("broker: TLS, ACL")
        checks.append(check_broker(directory, args.timeout))
        step("clock")
        checks.append(check_clock(args.ntp_server, args.max_clock_offset, args.timeout))
        with Registry.open_in(directory) as registry:
            step("devices: readings and signal")
            checks += check_devices(registry, journal_path, at, args.window_minutes * 60,
                                    args.min_signal)
            step("certificates")
            checks.append(check_certificates(registry, identity.gateway_id, at,
                                             args.min_cert_days))
            step("calibration and registration")
            checks.append(check_currency(registry, at))
        step("disk")
        checks.append(check_disk(directory, journal_path, args.disk_budget_mb,
                                 args.min_free_percent))
    passed = all(c.passed for c in checks)
    report = {"format": REPORT_FORMAT, "gateway_id": identity.gateway_id,
              "gateway_key_id": cose.key_id(identity.public_key).hex(), "technician": who,
              "generated_at": common.iso(time.time()), "evaluated_at": common.iso(at),
              "passed": passed, "checks": [c.to_dict() for c in checks]}
    document = sign_report(report, identity.seed, certificate)
    from edge_agent.ca import keyfiles

    keyfiles.write_public(report_path, (json.dumps(document, indent=2, sort_keys=True)
                                        + "\n").encode())
    html_path = report_path.with_suffix(".html")
    keyfiles.write_public(html_path, render_html(report).encode())
    common.journal(identity, [
        ("maintenance.fault", who, "commissioning",
         {"component": c.name.split(":", 1)[1] if c.name.startswith("device:") else "gateway",
          "fault": f"commission-{c.name.split(':', 1)[0]}", "severity": "error",
          "detail": c.summary[:200]})
        for c in checks if not c.passed])
    if args.json:
        common.print_json({"passed": passed, "report": str(report_path),
                           "html": str(html_path), "checks": report["checks"]})
    else:
        _render_checks(report, report_path, html_path)
    return 0 if passed else common.FAILED


def _render_checks(report: dict[str, Any], report_path: Path, html_path: Path) -> None:
    table = common.table(f"commissioning {report['gateway_id']} at {report['evaluated_at']}",
                         ("check", "result", "measured"))
    for check in report["checks"]:
        table.add_row(check["name"], common.styled(check["result"]), check["summary"])
    out = common.console()
    out.print(table)
    verdict = "[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]"
    out.print(f"{verdict}: signed report {report_path}, readable {html_path}")


def _verify_key(args: argparse.Namespace, document: dict[str, Any]) -> tuple[bytes, str | None]:
    """(public key, certified gateway id or None) from --key, --cert and/or --ca."""
    from edge_agent.commands.ca import read_file
    from protocol import cwt
    from protocol.errors import ProtocolError

    if args.key is not None:
        if args.ca is not None:
            raise CommandError("--ca goes with --cert (or alone), not with --key")
        try:
            key = bytes.fromhex(args.key)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise CommandError("--key must be 64 hex digits (an Ed25519 public key)")
        return key, None
    try:
        if args.cert is not None:
            raw = read_file("--cert", args.cert)
        else:
            raw = base64.b64decode(str(document.get("gateway_certificate", "")), validate=True)
        if args.ca is not None:
            ca_raw = read_file("--ca", args.ca)
            ca = cwt.verify_cwt(ca_raw, cwt.parse_cwt(ca_raw).public_key)
            cert = cwt.verify_issued_by(raw, ca)
        else:
            cert = cwt.parse_cwt(raw)
    except ProtocolError as exc:
        raise CommandError(f"the gateway certificate does not check out: {exc}") from None
    except ValueError as exc:  # base64
        raise CommandError(f"the report's gateway certificate is unreadable: {exc}") from None
    if cert.role != "gateway":
        raise CommandError(f"the certificate is a {cert.role or 'plain'} certificate, not a "
                           "gateway's")
    return cert.public_key, cert.subject


def run_verify(args: argparse.Namespace) -> int:
    from protocol.errors import ProtocolError

    if args.key is None and args.cert is None and args.ca is None:
        raise CommandError("say whose signature to expect: --key HEX, --cert gateway.cwt or "
                           "--ca ca.cwt (the report's own certificate proves nothing alone)")
    data = _read_report(args.report_file)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise CommandError(f"{args.report_file} is not JSON ({exc}); it was damaged") from None
    key, subject = _verify_key(args, document if isinstance(document, dict) else {})
    try:
        report = verify_report(document, key)
        valid, reason = True, "signature valid"
    except ValueError as exc:
        if not isinstance(exc, ProtocolError):
            raise CommandError(f"{args.report_file} is not a commissioning report: {exc}") \
                from None
        report, valid, reason = document.get("report", {}), False, str(exc)
    if valid and subject is not None and report.get("gateway_id") != subject:
        valid, reason = False, (f"signed by gateway {subject}, but the report names "
                                f"{report.get('gateway_id')!r}")
    result = {"valid": valid, "reason": reason, "gateway_id": report.get("gateway_id"),
              "passed": report.get("passed") if valid else None,
              "evaluated_at": report.get("evaluated_at")}
    if args.json:
        common.print_json(result)
    elif valid:
        outcome = "all checks passed" if report.get("passed") else "some checks FAILED"
        common.console().print(f"[bold green]valid[/]: report of gateway "
                               f"{report.get('gateway_id')} at {report.get('evaluated_at')}, "
                               f"{outcome}")
    else:
        common.console().print(f"[bold red]INVALID[/]: {reason}; this report was altered or "
                               "signed by another key")
    return 0 if valid else common.FAILED


def _read_report(path: str) -> bytes:
    from edge_agent.commands.ca import read_file

    return read_file("REPORT", path, MAX_REPORT)
