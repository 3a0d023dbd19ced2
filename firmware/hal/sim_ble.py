"""A simulated bluetooth.BLE for the MicroPython unix port, bridged to a CPython peer.

`SimBle` implements the subset of MicroPython's bluetooth.BLE API a GATT peripheral uses
(active, config, irq, gatts_register_services, gatts_set_buffer, gatts_read,
gatts_write(send_update), gatts_notify, gatts_indicate, gap_advertise, gap_disconnect)
with the stack's documented behaviour: value handles from registration, 20-byte value
buffers that truncate longer client writes until gatts_set_buffer/gatts_write grow them,
notify/indicate sent whatever the client subscribed, send_update only to subscribers,
OSError(ENOMEM) when the stack's transmit buffers are used up, OSError(ENOTCONN) for a
gone connection. `UUID` stands in for bluetooth.UUID.

Everything radio-side happens in the peer, simulator/firmware_ble_bridge.py: a bumble
GATT server on edge_agent's VirtualRadio, built from what the firmware registered. The
two talk over a TCP or Unix socket, one JSON object per line (bytes as hex):

  firmware -> peer   {"op": "register", "services": [{"uuid": U, "chars": [{"uuid": U,
                       "flags": F, "handle": H}]}]}      U: int (16-bit) or UUID text
                     {"op": "config", "gap_name": S, "mtu": N}
                     {"op": "advertise", "interval_us": N|null, "adv": X, "resp": X,
                      "connectable": B}
                     {"op": "write", "handle": H, "value": X, "update": B}
                     {"op": "notify"|"indicate", "conn": C, "handle": H, "value": X}
                     {"op": "disconnect", "conn": C}
  peer -> firmware   {"ev": "connect"|"disconnect", "conn": C, "addr_type": T, "addr": X}
                     {"ev": "write", "conn": C, "handle": H, "value": X}
                     {"ev": "mtu", "conn": C, "mtu": N}
                     {"ev": "indicate_done", "conn": C, "handle": H, "status": S}
                     {"ev": "credit", "n": N}     transmit buffers freed

Events are read by an asyncio task (started by active(True)) that calls the IRQ handler,
so like on the chip they arrive whenever the firmware yields to the event loop. Use a
realtime SimClock with it: the peer runs in real time. Address from VB_SIM_BLE:
"tcp:HOST:PORT" or "unix:PATH".
"""

import asyncio
import binascii
import errno
import json
import os
import select
import socket

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_GATTS_INDICATE_DONE = 20
_IRQ_MTU_EXCHANGED = 21

_FLAG_NOTIFY = 0x10
_FLAG_INDICATE = 0x20
DEFAULT_BUFFER = 20  # the stack's default value buffer
DEFAULT_TX_BUFFERS = 12  # notifications the stack holds before ENOMEM (NimBLE-like)
MAX_LINE = 4096
_SEND_TIMEOUT_MS = 2000


class UUID:
    """bluetooth.UUID: a 16-bit int or a 128-bit UUID text."""

    def __init__(self, value):
        if isinstance(value, UUID):
            value = value.value
        if isinstance(value, int):
            if not 0 <= value <= 0xFFFF:
                raise ValueError("invalid UUID")
        elif isinstance(value, str):
            value = value.lower()
            if len(value) != 36 or value.count("-") != 4:
                raise ValueError("invalid UUID")
        else:
            raise ValueError("invalid UUID")
        self.value = value

    def __eq__(self, other):
        return isinstance(other, UUID) and other.value == self.value

    def __hash__(self):
        return hash(self.value)

    def __repr__(self):
        if isinstance(self.value, int):
            return "UUID(0x%04x)" % self.value
        return "UUID('%s')" % self.value


def _hex(data):
    return binascii.hexlify(bytes(data)).decode()


def _connect(address):
    kind, _, rest = address.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        info = socket.getaddrinfo(host, int(port))[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.connect(info[-1])
    elif kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(rest)
    else:
        raise ValueError("VB_SIM_BLE must be tcp:HOST:PORT or unix:PATH, not %r" % address)
    return sock


class _Attr:
    def __init__(self, uuid, flags):
        self.uuid = uuid
        self.flags = flags
        self.value = b""
        self.capacity = DEFAULT_BUFFER
        self.append = False


class SimBle:
    """See the module docstring. `address`: the peer's socket address."""

    UUID = UUID  # what a transport uses when the HAL has no ble_uuid()

    def __init__(self, address, tx_buffers=DEFAULT_TX_BUFFERS):
        self.address = address
        self.tx_buffers = tx_buffers
        self._credits = tx_buffers
        self._active = False
        self._sock = None
        self._poller = None
        self._reader = None
        self._handler = None
        self._attrs = {}
        self._connections = set()
        self._config = {"gap_name": "MPY", "mtu": 23, "rxbuf": 1024,
                        "mac": (1, b"\xd0\xb1\xe0\x00\x00\x01")}
        self.closed = False
        self.bad_lines = 0

    @classmethod
    def from_environment(cls):
        """A SimBle for VB_SIM_BLE, or None when it is not set (no radio)."""
        address = os.getenv("VB_SIM_BLE")
        return cls(address) if address else None

    # --- configuration ---------------------------------------------------------------
    def active(self, state=None):
        if state is not None and bool(state) != self._active:
            if state:
                self._sock = _connect(self.address)
                self._sock.setblocking(False)
                self._poller = select.poll()
                self._poller.register(self._sock, select.POLLOUT)
                self._reader = asyncio.create_task(self._read_events())
                self._active = True
                self._send({"op": "config", "gap_name": self._config["gap_name"],
                            "mtu": self._config["mtu"]})
            else:
                self._close()
            self._active = bool(state)
        return self._active

    def config(self, *args, **kwargs):
        if args:
            if len(args) != 1 or kwargs:
                raise TypeError("config() takes one name or keyword settings")
            if args[0] not in self._config:
                raise ValueError("unknown config param")
            return self._config[args[0]]
        for name in kwargs:
            if name not in ("gap_name", "mtu", "rxbuf"):
                raise ValueError("unknown config param")
            if name == "mtu" and not 23 <= kwargs[name] <= 517:
                raise ValueError("mtu out of range")
            self._config[name] = kwargs[name]
        self._send({"op": "config", "gap_name": self._config["gap_name"],
                    "mtu": self._config["mtu"]})
        return None

    def irq(self, handler):
        self._handler = handler

    # --- GATT server -------------------------------------------------------------------
    def gatts_register_services(self, definitions):
        self._check_active()
        self._attrs = {}
        handle = 0
        result = []
        described = []
        for service in definitions:
            service_uuid, characteristics = service[0], service[1]
            if not isinstance(service_uuid, UUID):
                raise ValueError("invalid service UUID")
            handle += 1  # service declaration
            handles = []
            chars = []
            for char in characteristics:
                if not isinstance(char[0], UUID):
                    raise ValueError("invalid characteristic UUID")
                flags = char[1]
                handle += 2  # declaration, value
                self._attrs[handle] = _Attr(char[0], flags)
                handles.append(handle)
                chars.append({"uuid": char[0].value, "flags": flags, "handle": handle})
                if flags & (_FLAG_NOTIFY | _FLAG_INDICATE):
                    handle += 1  # the CCCD the stack adds
                for descriptor in (char[2] if len(char) > 2 else ()):
                    handle += 1
                    self._attrs[handle] = _Attr(descriptor[0], descriptor[1])
                    handles.append(handle)
            result.append(tuple(handles))
            described.append({"uuid": service_uuid.value, "chars": chars})
        self._send({"op": "register", "services": described})
        return tuple(result)

    def _attr(self, handle):
        attr = self._attrs.get(handle)
        if attr is None:
            raise ValueError("invalid handle")  # as MicroPython's stack reports it
        return attr

    def gatts_set_buffer(self, handle, length, append=False):
        attr = self._attr(handle)
        attr.capacity = length
        attr.append = bool(append)
        attr.value = attr.value[:length]

    def gatts_read(self, handle):
        attr = self._attr(handle)
        value = attr.value
        if attr.append:
            attr.value = b""
        return value

    def gatts_write(self, handle, data, send_update=False):
        attr = self._attr(handle)
        attr.value = bytes(data)
        if len(attr.value) > attr.capacity:
            attr.capacity = len(attr.value)  # a local write grows the buffer
        self._send({"op": "write", "handle": handle, "value": _hex(data),
                    "update": bool(send_update)})

    def gatts_notify(self, conn_handle, value_handle, data=None):
        self._transmit("notify", conn_handle, value_handle, data)

    def gatts_indicate(self, conn_handle, value_handle, data=None):
        self._transmit("indicate", conn_handle, value_handle, data)

    def _transmit(self, op, conn_handle, value_handle, data):
        attr = self._attr(value_handle)
        if conn_handle not in self._connections:
            raise OSError(errno.ENOTCONN)
        if self._credits <= 0:
            raise OSError(errno.ENOMEM)
        self._credits -= 1
        value = attr.value if data is None else bytes(data)
        self._send({"op": op, "conn": conn_handle, "handle": value_handle, "value": _hex(value)})

    # --- GAP -----------------------------------------------------------------------------
    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        self._check_active()
        message = {"op": "advertise", "interval_us": interval_us, "connectable": connectable}
        if adv_data is not None:
            message["adv"] = _hex(adv_data)
        if resp_data is not None:
            message["resp"] = _hex(resp_data)
        self._send(message)

    def gap_disconnect(self, conn_handle):
        if conn_handle not in self._connections:
            return False
        self._send({"op": "disconnect", "conn": conn_handle})
        return True

    # --- the socket ------------------------------------------------------------------------
    def _check_active(self):
        if not self._active:
            raise OSError(errno.EPERM)  # the stack refuses calls while inactive

    def _send(self, message):
        if self._sock is None or self.closed:
            if self._active:
                raise OSError(errno.ENOTCONN)
            return  # config() before active(True): applied when the radio starts
        data = (json.dumps(message) + "\n").encode()
        poller = self._poller
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                count = self._sock.send(view[sent:])
            except OSError as exc:
                if exc.args[0] != errno.EAGAIN:
                    self._lost()
                    raise
                count = 0
            sent += count
            if count == 0 and not poller.poll(_SEND_TIMEOUT_MS):
                self._lost()
                raise OSError(errno.ETIMEDOUT)

    async def _read_events(self):
        stream = asyncio.StreamReader(self._sock)
        pending = b""
        while not self.closed:
            chunk = await stream.read(MAX_LINE)
            if not chunk:
                break
            pending += chunk
            while True:
                end = pending.find(b"\n")
                if end < 0:
                    break
                self._dispatch(pending[:end])
                pending = pending[end + 1:]
            if len(pending) > MAX_LINE:
                self.bad_lines += 1
                pending = b""
        self._lost()

    def _dispatch(self, line):
        try:
            event = json.loads(line)
            kind = event["ev"]
        except (ValueError, KeyError, TypeError):
            self.bad_lines += 1
            return
        if kind == "credit":
            self._credits = min(self.tx_buffers, self._credits + event.get("n", 1))
        elif kind == "connect":
            self._connections.add(event["conn"])
            self._irq(_IRQ_CENTRAL_CONNECT, (event["conn"], event.get("addr_type", 1),
                                             memoryview(binascii.unhexlify(event["addr"]))))
        elif kind == "disconnect":
            self._connections.discard(event["conn"])
            self._irq(_IRQ_CENTRAL_DISCONNECT, (event["conn"], event.get("addr_type", 1),
                                                memoryview(binascii.unhexlify(event["addr"]))))
        elif kind == "write":
            self._client_write(event["conn"], event["handle"], binascii.unhexlify(event["value"]))
        elif kind == "mtu":
            self._irq(_IRQ_MTU_EXCHANGED, (event["conn"], event["mtu"]))
        elif kind == "indicate_done":
            self._irq(_IRQ_GATTS_INDICATE_DONE, (event["conn"], event["handle"],
                                                 event.get("status", 0)))
        else:
            self.bad_lines += 1

    def _client_write(self, conn, handle, value):
        attr = self._attrs.get(handle)
        if attr is None or conn not in self._connections:
            return
        # The stack copies at most `capacity` bytes: longer writes are truncated.
        if attr.append:
            attr.value = (attr.value + value)[:attr.capacity]
        else:
            attr.value = value[:attr.capacity]
        self._irq(_IRQ_GATTS_WRITE, (conn, handle))

    def _irq(self, event, data):
        if self._handler is not None:
            self._handler(event, data)

    def _lost(self):
        """The peer went away: like a radio reset, every central is gone."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self._connections):
            self._connections.discard(conn)
            self._irq(_IRQ_CENTRAL_DISCONNECT, (conn, 1, memoryview(bytes(6))))

    def _close(self):
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._connections = set()
        self._credits = self.tx_buffers
