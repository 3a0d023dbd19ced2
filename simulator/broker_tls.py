"""A TLS broker site for tests and the simulator: the organisation's TLS CA, the broker's
server files, client certificates, and a real mosquitto running exactly the configuration the
product generates (edge_agent.ca.mosquitto_config: TLS listener, client certificates, CRL,
per-gateway ACL).

    TlsSite    organisation TLS CA (edge_agent.ca.org_ca), broker files, client credentials
    TlsBroker  simulator.broker.Broker running write_broker_config's output
    Probe      a paho MQTT 5 client that records CONNACK / PUBACK / SUBACK reason codes

Keys are generated where they are used (0600 in 0700 directories); only certificate requests
travel to the CA. Certificates are issued against the real clock: TLS peers check it.
"""

from __future__ import annotations

import os
import pwd
import queue
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.ca import keyfiles
from edge_agent.ca.mosquitto_config import TLSFiles, write_broker_config
from edge_agent.ca.org_ca import OrgCA, new_tls_key, tls_request
from simulator.broker import Broker, BrokerError, find_mosquitto

CENTRE_NAME = "vb-centre"  # the centre's broker identity (its certificate's name)
ORG = "Test Org"
WAIT_S = 5.0


def mosquitto_available() -> bool:
    try:
        find_mosquitto()
    except BrokerError:
        return False
    return True


@dataclass(frozen=True)
class Credential:
    """A client's certificate and private key files (and the certificate's PEM)."""

    cert: Path
    key: Path
    pem: bytes


@dataclass
class TlsSite:
    """An organisation CA, the broker's TLS files and client credentials under `root`."""

    root: Path
    ca: OrgCA
    files: TLSFiles
    clients: dict[str, Credential]

    @classmethod
    def create(cls, root: Path, gateways: tuple[str, ...] = ("gw-1", "gw-2"), *,
               centre: str = CENTRE_NAME, now: int | None = None) -> TlsSite:
        """CA in root/ca, broker files in root/broker-tls, one credential per gateway (by
        default two: one can play the attacker of the other) and one for the centre, in
        root/clients/<name>."""
        now = int(time.time()) if now is None else now
        ca = OrgCA.init(root / "ca", ORG, now=now)
        broker_dir = keyfiles.ensure_private_dir(root / "broker-tls")
        server_key = new_tls_key()
        keyfiles.save_private_key(broker_dir / "server.key", server_key)
        keyfiles.write_public(broker_dir / "server.pem", ca.issue_broker_tls(
            tls_request("localhost", server_key), hostnames=["localhost"],
            ip_addresses=["127.0.0.1"], now=now))
        keyfiles.write_public(broker_dir / "ca.pem", ca.tls_certificate_pem)
        ca.write_crl(now, broker_dir / "crl.pem")
        files = TLSFiles(broker_dir / "ca.pem", broker_dir / "server.pem",
                         broker_dir / "server.key", broker_dir / "crl.pem")
        site = cls(root, ca, files, {})
        for gateway in gateways:
            site.clients[gateway] = site.credential(
                gateway, lambda r, g=gateway: ca.issue_gateway_tls(r, g, now=now))
        site.clients[centre] = site.credential(centre,
                                               lambda r: ca.issue_centre_tls(r, now=now))
        return site

    def credential(self, name: str, issue: Callable[[bytes], bytes]) -> Credential:
        """A new key for `name` and the certificate `issue(request)` returns for it."""
        key = new_tls_key()
        directory = keyfiles.ensure_private_dir(self.root / "clients" / name)
        key_path = keyfiles.save_private_key(directory / "client.key", key)
        pem = issue(tls_request(name, key))
        return Credential(keyfiles.write_public(directory / "client.pem", pem), key_path, pem)


class TlsBroker(Broker):
    """mosquitto running exactly the configuration the product generates."""

    def __init__(self, workdir: Path, files: TLSFiles) -> None:
        super().__init__(workdir, allow_anonymous=False)
        self.files = files

    def write_config(self) -> None:
        # Started as root, mosquitto would switch to the "mosquitto" user, which cannot read
        # a private 0700 key directory: stay as whoever runs it.
        user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
        write_broker_config(self.workdir, files=self.files, port=self.port,
                            bind_address="127.0.0.1", log_dest=f"file {self.log_path}",
                            user=user)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its CRL and ACL file (handled asynchronously)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Probe:
    """MQTT 5 client (paho, threaded loop) recording reason codes; `credential=None` with a
    CA file is a TLS client without a certificate, `ca_file=None` is plain TCP."""

    def __init__(self, name: str, port: int, ca_file: Path | None,
                 credential: Credential | None = None) -> None:
        self.port = port
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.acks: dict[int, object] = {}
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2,
                                client_id=f"{name}-{time.time_ns()}", protocol=mqtt.MQTTv5)
        if ca_file is not None:
            self.mqtt.tls_set(ca_certs=str(ca_file),
                              certfile=str(credential.cert) if credential else None,
                              keyfile=str(credential.key) if credential else None)
        self.mqtt.on_connect = lambda c, u, f, rc, p: self.events.put(("connack", rc))
        self.mqtt.on_disconnect = lambda c, u, f, rc, p: self.events.put(("disconnect", rc))
        self.mqtt.on_connect_fail = lambda c, u: self.events.put(("connect-fail", None))
        self.mqtt.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.mqtt.on_subscribe = lambda c, u, mid, rcs, p: self.acks.__setitem__(mid, rcs)
        self.mqtt.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))

    def connect(self) -> tuple[bool, str]:
        """(connected, what happened): a CONNACK Success, or how the attempt failed."""
        try:
            self.mqtt.connect("127.0.0.1", self.port, keepalive=10)
        except (ssl.SSLError, OSError) as exc:
            return False, f"handshake refused: {exc}"
        self.mqtt.loop_start()
        try:
            kind, detail = self.events.get(timeout=WAIT_S)
        except queue.Empty:
            self.close()
            return False, "no answer"
        ok = kind == "connack" and isinstance(detail, ReasonCode) and detail.value == 0
        if not ok:
            self.close()
        return ok, f"{kind}: {detail}"

    def _ack(self, mid: int) -> object:
        deadline = time.monotonic() + WAIT_S
        while mid not in self.acks:
            if time.monotonic() > deadline:
                raise TimeoutError("no acknowledgement from the broker")
            time.sleep(0.005)
        return self.acks.pop(mid)

    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None) -> int:
        """QoS 1 publish -> the PUBACK reason code."""
        properties = None
        if correlation is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        ack = self._ack(self.mqtt.publish(topic, payload, qos=1, properties=properties).mid)
        assert isinstance(ack, ReasonCode)
        return ack.value

    def subscribe(self, topic: str) -> list[int]:
        """QoS 1 subscribe -> the SUBACK reason codes."""
        result, mid = self.mqtt.subscribe(topic, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe not sent: {mqtt.error_string(result)}")
        return [rc.value for rc in self._ack(mid)]  # type: ignore[attr-defined]

    def received(self, until_topic: str) -> list[tuple[str, bytes]]:
        """Messages up to and including the first one on `until_topic`, then a short grace
        period for anything that would arrive out of order."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + WAIT_S
        while not any(t == until_topic for t, _ in got):
            got.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
        return got + self.drain(0.2)

    def drain(self, wait_s: float = 0.5) -> list[tuple[str, bytes]]:
        """Whatever arrived within `wait_s`."""
        time.sleep(wait_s)
        got = []
        while not self.messages.empty():
            got.append(self.messages.get_nowait())
        return got

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def plain_connect_answer(port: int) -> bytes:
    """An MQTT 3.1.1 CONNECT in clear text on the TLS port -> whatever came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(bytes.fromhex("100c00044d5154540402003c0000"))
        try:
            return sock.recv(16)
        except (ConnectionResetError, TimeoutError):
            return b""
