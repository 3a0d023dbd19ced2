"""BLE GATT peripheral transport through the HAL's `ble()` (MicroPython bluetooth.BLE API).

Services registered (docs/firmware-transports.md has the table):

  Heart Rate 0x180D        Heart Rate Measurement 0x2A37 (notify)
  Pulse Oximeter 0x1822    PLX Continuous Measurement 0x2A5F (notify), PLX Features 0x2A60 (read)
  Health Thermometer 0x1809  Temperature Measurement 0x2A1C (indicate)
  VitalBridge (protocol.ble_service)  uplink (notify), downlink (write), provisioning (read)

Standard values (publish_standard) are encoded with protocol.gatt and written with
gatts_write(..., send_update=True), so the stack notifies or indicates exactly the
centrals that subscribed -- any health app can read the device. VitalBridge envelopes go
out as protocol.fragments fragments sized to each link's negotiated ATT MTU with
gatts_notify (sent whether or not the central subscribed: a central that did not is not
our gateway and drops them); downlink writes are reassembled per connection.

Link state: up while a central is connected and `settle_ms` have passed since it
connected (time for the gateway to discover services and subscribe; the stack tells a
MicroPython peripheral nothing about subscriptions), plus the answer rule of
base.AnswerWatch. The uplink goes to the connection that last delivered a complete
downlink message (the gateway), or to every connection until one has.

IRQ handlers only queue (bounded) events; the transport's task does the work, so the
app's receiver never runs in the radio's context.
"""

import asyncio
import binascii

from firmware.transport.base import (
    DEFAULT_ANSWER_TIMEOUT_MS,
    DEFAULT_MAX_RETRY_MS,
    DEFAULT_RETRY_MS,
    AnswerWatch,
    Transport,
    TransportDown,
    message_kind,
)
from protocol import ble_service
from protocol.errors import GattError
from protocol.fragments import MAX_ATTRIBUTE_VALUE, MIN_ATT_MTU, Reassembler, fragment
from protocol.gatt import characteristics as gatt_codecs

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_MTU_EXCHANGED = 21

_ENOTCONN = 107  # errno as MicroPython's stack reports a vanished connection

# GAP advertising data types (Bluetooth Core Specification Supplement, Part A 1.1-1.3)
AD_FLAGS = 0x01
AD_UUID16_COMPLETE = 0x03
AD_UUID128_COMPLETE = 0x07
AD_NAME_SHORT = 0x08
AD_NAME_COMPLETE = 0x09
AD_FLAG_GENERAL_DISCOVERABLE_NO_BREDR = 0x06
LEGACY_ADV_MAX = 31

# PLX Features 0x2A60: Supported Features uint16, no optional field supported.
PLX_FEATURES_VALUE = b"\x00\x00"

DEFAULT_NAME = "VitalBridge"
DEFAULT_MTU = 247  # 247 + 4 (L2CAP) = 251: one LE data PDU with data length extension
DEFAULT_ADV_INTERVAL_US = 250000
STANDARD_QUANTITIES = ("hr", "pr", "spo2", "pi", "temp")


class TransportUnavailable(Exception):
    """This board (or HAL) has no BLE radio."""


def ad_structure(ad_type, data):
    """One AD structure: length, type, data."""
    return bytes((len(data) + 1, ad_type)) + bytes(data)


def uuid128_bytes(text):
    """A 128-bit UUID in its text form -> the 16 bytes as sent over the air (LSB first)."""
    return bytes(reversed(binascii.unhexlify(text.replace("-", ""))))


def advertising_payloads(name, uuid16s, uuid128):
    """(advertising data, scan response): flags, 16-bit service list and the name (cut
    to fit, as a Shortened Local Name) advertise; the 128-bit VitalBridge service UUID
    goes in the scan response. ValueError if even the fixed parts exceed 31 bytes."""
    adv = ad_structure(AD_FLAGS, bytes((AD_FLAG_GENERAL_DISCOVERABLE_NO_BREDR,)))
    adv += ad_structure(AD_UUID16_COMPLETE,
                        b"".join(bytes((u & 0xFF, u >> 8)) for u in uuid16s))
    room = LEGACY_ADV_MAX - len(adv) - 2
    if room < 0:
        raise ValueError("advertising data longer than %d bytes" % LEGACY_ADV_MAX)
    encoded = name.encode()
    if len(encoded) <= room:
        adv += ad_structure(AD_NAME_COMPLETE, encoded)
    elif room > 0:
        adv += ad_structure(AD_NAME_SHORT, encoded[:room])
    resp = ad_structure(AD_UUID128_COMPLETE, uuid128_bytes(uuid128)) if uuid128 else b""
    return adv, resp


def service_definitions(uuid):
    """The gatts_register_services() argument; `uuid` makes the radio's UUID objects."""
    notify = ble_service.PROP_NOTIFY
    return (
        (uuid(ble_service.HEART_RATE_SERVICE),
         ((uuid(ble_service.HEART_RATE_MEASUREMENT), notify),)),
        (uuid(ble_service.PULSE_OXIMETER_SERVICE),
         ((uuid(ble_service.PLX_CONTINUOUS_MEASUREMENT), notify),
          (uuid(ble_service.PLX_FEATURES), ble_service.PROP_READ))),
        (uuid(ble_service.HEALTH_THERMOMETER_SERVICE),
         ((uuid(ble_service.TEMPERATURE_MEASUREMENT), ble_service.PROP_INDICATE),)),
        (uuid(ble_service.SERVICE_UUID),
         tuple((uuid(u), props) for u, props in ble_service.CHARACTERISTICS)),
    )


class _Link:
    """One connected central."""

    def __init__(self, conn, now_ms, reassembler):
        self.conn = conn
        self.mtu = MIN_ATT_MTU
        self.connected_at = now_ms
        self.reassembler = reassembler


class BleTransport(Transport):
    """hal: the Hal (time, sleeps); ble: a bluetooth.BLE-like object (default hal.ble());
    uuid: callable building the radio's UUID objects (default hal.ble_uuid, else
    ble.UUID). identity: the provisioning characteristic's message (set_provisioning)."""

    name = "ble"

    def __init__(self, hal, ble=None, uuid=None, device_name=DEFAULT_NAME, identity=b"",
                 mtu=DEFAULT_MTU, adv_interval_us=DEFAULT_ADV_INTERVAL_US, max_connections=2,
                 settle_ms=1500, poll_ms=20, max_events=64, max_message=8192,
                 fragment_timeout_s=5, notify_retry_ms=10, notify_attempts=50,
                 answer_timeout_ms=DEFAULT_ANSWER_TIMEOUT_MS, retry_ms=DEFAULT_RETRY_MS,
                 max_retry_ms=DEFAULT_MAX_RETRY_MS):
        super().__init__()
        self.hal = hal
        self.ble = ble if ble is not None else hal.ble()
        if self.ble is None:
            raise TransportUnavailable("this HAL has no BLE radio")
        if uuid is None:
            uuid = getattr(hal, "ble_uuid", None) or getattr(self.ble, "UUID", None)
        if uuid is None:
            raise TransportUnavailable("the HAL offers no ble_uuid() to build GATT UUIDs")
        self._uuid = uuid
        self.device_name = device_name
        self.mtu = mtu
        self.adv_interval_us = adv_interval_us
        self.max_connections = max_connections
        self.settle_ms = settle_ms
        self.poll_ms = poll_ms
        self.max_events = max_events
        self.max_message = max_message
        self.fragment_timeout_s = fragment_timeout_s
        self.notify_retry_ms = notify_retry_ms
        self.notify_attempts = notify_attempts
        self.watch = AnswerWatch(hal.ticks_diff, answer_timeout_ms, retry_ms, max_retry_ms)
        self._handles = {}  # value handles once the services are registered
        self._identity = b""
        self.set_provisioning(identity)
        self._events = []  # filled by the IRQ handler, drained by the task (bounded)
        self._links = {}  # conn handle -> _Link
        self._gateway = None  # conn handle that last delivered a whole message
        self._send_lock = asyncio.Lock()
        self._message_id = 0
        self._retry_at = None
        self._advertising = False
        self._mono_ms = 0
        self._last_ticks = hal.ticks_ms()
        self._latest = {}
        self.events_dropped = 0
        self.fragment_errors = 0
        self.messages_in = 0
        self.messages_out = 0
        self.notify_retries = 0
        self.publish_errors = 0

    # --- public ------------------------------------------------------------------
    @property
    def connections(self):
        return len(self._links)

    def mtu_of(self, conn):
        link = self._links.get(conn)
        return link.mtu if link is not None else None

    def set_provisioning(self, message):
        """The provisioning characteristic's value: one whole identity device-event."""
        message = bytes(message)
        if len(message) > ble_service.MAX_PROVISIONING_VALUE:
            raise ValueError("provisioning value longer than %d bytes"
                             % ble_service.MAX_PROVISIONING_VALUE)
        self._identity = message
        if self._handles:
            self.ble.gatts_write(self._handles["provisioning"], message)

    async def start(self):
        if self._task is not None:
            return
        ble = self.ble
        ble.active(True)
        ble.config(gap_name=self.device_name)
        ble.config(mtu=self.mtu)
        ble.irq(self._irq)
        hr, plx, hts, vb = ble.gatts_register_services(service_definitions(self._uuid))
        self._handles = {
            "hr": hr[0], "plx": plx[0], "plx_features": plx[1], "temp": hts[0],
            "uplink": vb[0], "downlink": vb[1], "provisioning": vb[2],
        }
        # Writes longer than the value buffer (20 bytes by default) would be truncated.
        ble.gatts_set_buffer(self._handles["downlink"], MAX_ATTRIBUTE_VALUE)
        ble.gatts_write(self._handles["plx_features"], PLX_FEATURES_VALUE)
        ble.gatts_write(self._handles["provisioning"], self._identity)
        self._adv, self._resp = advertising_payloads(
            self.device_name,
            (ble_service.HEART_RATE_SERVICE, ble_service.PULSE_OXIMETER_SERVICE,
             ble_service.HEALTH_THERMOMETER_SERVICE),
            ble_service.SERVICE_UUID)
        self._advertise(True)
        self._task = asyncio.create_task(self._run())

    async def stop(self):
        await self._stop_task()
        self._advertise(False)
        for conn in list(self._links):
            self.ble.gap_disconnect(conn)
            self._drop_link(conn)
        self._events = []
        self._set_link(False)

    async def send(self, message):
        if not self.connected:
            raise TransportDown("no BLE gateway link")
        kind = message_kind(message)
        async with self._send_lock:
            message_id = self._message_id
            self._message_id = (message_id + 1) & 0xFF
            targets = [self._gateway] if self._gateway in self._links else list(self._links)
            delivered = 0
            for conn in targets:
                link = self._links.get(conn)
                if link is None:
                    continue
                parts = fragment(message, link.mtu, message_id)  # FrameError if too big
                if await self._notify_all(conn, parts):
                    delivered += 1
            if not delivered:
                raise TransportDown("the BLE link dropped while sending")
            self.messages_out += 1
            self.watch.sent(kind, self.hal.ticks_ms())

    def publish_standard(self, quantity, value):
        """Encode and write the latest hr/pr, spo2, pi or temp value; subscribed centrals
        are notified (temperature: indicated). None or an unencodable value -> False."""
        if quantity not in STANDARD_QUANTITIES or value is None:
            return False
        latest = self._latest
        latest[quantity] = value
        if not self._handles:
            return False
        try:
            if quantity in ("hr", "pr"):
                self._update("hr", gatt_codecs.encode_heart_rate(int(value + 0.5)))
                if "spo2" in latest:
                    self._publish_plx(latest)
            elif quantity in ("spo2", "pi"):
                if "spo2" in latest:
                    self._publish_plx(latest)
            else:
                self._update("temp", gatt_codecs.encode_temperature(value, decimals=2))
        except (GattError, OSError, TypeError, ValueError):
            self.publish_errors += 1
            return False
        return True

    # --- internals -----------------------------------------------------------------
    def _publish_plx(self, latest):
        rate = latest.get("pr", latest.get("hr"))
        value = gatt_codecs.encode_plx_continuous(
            latest["spo2"], "nan" if rate is None else rate, pai=latest.get("pi"))
        self._update("plx", value)

    def _update(self, key, value):
        self.ble.gatts_write(self._handles[key], value, True)

    def _advertise(self, on):
        want = on and len(self._links) < self.max_connections
        if want == self._advertising:
            return
        if want:
            self.ble.gap_advertise(self.adv_interval_us, adv_data=self._adv,
                                   resp_data=self._resp, connectable=True)
        else:
            self.ble.gap_advertise(None)
        self._advertising = want

    def _irq(self, event, data):
        # Runs in the radio's context: copy what is needed and return at once.
        if event == _IRQ_GATTS_WRITE:
            conn, handle = data
            if not self._handles or handle != self._handles["downlink"]:
                return
            if len(self._events) >= self.max_events:
                self.events_dropped += 1
                return
            self._events.append((event, conn, bytes(self.ble.gatts_read(handle))))
        elif event in (_IRQ_CENTRAL_CONNECT, _IRQ_CENTRAL_DISCONNECT):
            # Never dropped: losing one would leave the link table wrong.
            self._events.append((event, data[0], None))
        elif event == _IRQ_MTU_EXCHANGED:
            self._events.append((event, data[0], data[1]))

    def _now_s(self):
        now = self.hal.ticks_ms()
        self._mono_ms += self.hal.ticks_diff(now, self._last_ticks)
        self._last_ticks = now
        return self._mono_ms / 1000

    def _drop_link(self, conn):
        link = self._links.pop(conn, None)
        if link is not None:
            link.reassembler.reset()
            self.fragment_errors += len(link.reassembler.take_errors())
        if self._gateway == conn:
            self._gateway = None

    def _handle_event(self, event, conn, value, now_ms):
        if event == _IRQ_CENTRAL_CONNECT:
            self._links[conn] = _Link(conn, now_ms, Reassembler(
                self.max_message, max_pending=2, timeout_s=self.fragment_timeout_s))
            self._advertising = False  # the stack stops advertising on a connection
            self._advertise(True)
        elif event == _IRQ_CENTRAL_DISCONNECT:
            self._drop_link(conn)
            self._advertising = False
            self._advertise(True)
        elif event == _IRQ_MTU_EXCHANGED:
            link = self._links.get(conn)
            if link is not None:
                link.mtu = value
        elif event == _IRQ_GATTS_WRITE:
            link = self._links.get(conn)
            if link is None:
                return
            message = link.reassembler.add(value, self._now_s())
            self.fragment_errors += len(link.reassembler.take_errors())
            if message is not None:
                self.messages_in += 1
                self._gateway = conn
                self.watch.heard_from_gateway(now_ms)
                self._retry_at = None
                self._set_link(True)
                self._deliver(message)

    def poll(self):
        """One service step: handle queued radio events, then the link state."""
        events = self._events
        while events:
            event, conn, value = events.pop(0)
            self._handle_event(event, conn, value, self.hal.ticks_ms())
        now = self.hal.ticks_ms()
        for link in self._links.values():
            link.reassembler.expire(self._now_s())
        if not self._links:
            self.watch.reset()
            self._retry_at = None
            self._set_link(False)
        elif self.connected:
            if self.watch.overdue(now):
                self._retry_at = self.hal.ticks_add(now, self.watch.gave_up())
                self._set_link(False)
        elif self._retry_at is not None:
            if self.hal.ticks_diff(now, self._retry_at) >= 0:
                self._retry_at = None
                self.watch.reset()
                self._set_link(True)
        elif self._settled(now):
            self.watch.reset()
            self._set_link(True)

    def _settled(self, now):
        for link in self._links.values():
            if self.hal.ticks_diff(now, link.connected_at) >= self.settle_ms:
                return True
        return False

    async def _notify_all(self, conn, parts):
        for part in parts:
            attempts = 0
            while True:
                if conn not in self._links:
                    return False
                try:
                    self.ble.gatts_notify(conn, self._handles["uplink"], part)
                    break
                except OSError as exc:
                    if exc.args and exc.args[0] == _ENOTCONN:
                        return False
                    # Out of stack buffers (ENOMEM) or busy: wait for the radio to drain.
                    attempts += 1
                    self.notify_retries += 1
                    if attempts >= self.notify_attempts:
                        raise TransportDown("notification not accepted: %r" % (exc,)) from None
                    await self.hal.asleep_ms(self.notify_retry_ms)
            await self.hal.asleep_ms(0)
        return True

    async def _run(self):
        while True:
            self.poll()
            await self.hal.asleep_ms(self.poll_ms)
