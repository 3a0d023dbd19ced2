"""Serial transport: protocol.frames (COBS + CRC-32) over a HAL UART.

Outbound, each envelope is one frame, written in chunks so other tasks run between them;
send() calls are serialised so frames never interleave. On a UART that the console also
writes to (hal.uart_shares_console: ESP32 UART0 with the REPL), a print from another task
between two chunks would land inside the frame, so there each frame is written in one
call, with no yield: prints fall between frames, where the host's splitter takes them.
Inbound, a FrameDecoder turns whatever arrives into payloads: garbage, truncated frames
and oversized runs are dropped and counted (`frames_bad`, `bytes_discarded`), never
raised, and the decoder resynchronises at the next 0x00 delimiter. Memory is bounded by
`max_payload`.

Link detection on a plain UART (no carrier, no DTR on the reference board): the link is
reported up as soon as the transport starts -- a frame written to an absent gateway is
harmless and the outbox keeps everything until it is acknowledged -- and is kept up while
the gateway answers (base.AnswerWatch). When a hello, sealed batch or checkpoint goes
unanswered for answer_timeout_ms the link is reported down, and up again after a
back-off (2 s, 4 s, ... 60 s): the app's new handshake is the periodic probe. A valid
frame from the gateway while down brings the link up at once (it is delivered after the
up callback). `gateway_heard` tells whether the gateway has answered since start.
"""

import asyncio

from firmware.transport.base import (
    DEFAULT_ANSWER_TIMEOUT_MS,
    DEFAULT_MAX_RETRY_MS,
    DEFAULT_RETRY_MS,
    AnswerWatch,
    Transport,
    TransportDown,
    message_kind,
)
from protocol.frames import MAX_FRAME_PAYLOAD, FrameDecoder, encode_frame

DEFAULT_BAUDRATE = 115200
DEFAULT_PORT = 0


class UartTransport(Transport):
    """hal: the Hal (time, sleeps); uart: an object with read(n)/write(b)/any() (default
    hal.uart(port, baudrate))."""

    name = "uart"

    def __init__(self, hal, uart=None, port=DEFAULT_PORT, baudrate=DEFAULT_BAUDRATE,
                 max_payload=MAX_FRAME_PAYLOAD, poll_ms=10, read_chunk=256, write_chunk=128,
                 answer_timeout_ms=DEFAULT_ANSWER_TIMEOUT_MS, retry_ms=DEFAULT_RETRY_MS,
                 max_retry_ms=DEFAULT_MAX_RETRY_MS):
        super().__init__()
        self.hal = hal
        self.uart = uart if uart is not None else hal.uart(port, baudrate)
        shares = getattr(hal, "uart_shares_console", None)
        self.whole_frames = bool(shares is not None and shares(port))
        self.max_payload = max_payload
        self.poll_ms = poll_ms
        self.read_chunk = read_chunk
        self.write_chunk = write_chunk
        self.decoder = FrameDecoder(max_payload)
        self.watch = AnswerWatch(hal.ticks_diff, answer_timeout_ms, retry_ms, max_retry_ms)
        self._write_lock = asyncio.Lock()
        self._retry_at = None
        self.frames_in = 0
        self.frames_out = 0
        self.link_changes = 0

    @property
    def frames_bad(self):
        return self.decoder.frames_bad

    @property
    def bytes_discarded(self):
        return self.decoder.bytes_discarded

    def take_errors(self):
        """Reasons for dropped inbound frames since the last call (bounded list)."""
        return self.decoder.take_errors()

    async def start(self):
        if self._task is not None:
            return
        self.decoder.reset()
        self.watch.reset()
        self._retry_at = None
        self._task = asyncio.create_task(self._run())
        self._link(True)

    async def stop(self):
        await self._stop_task()
        self._link(False)

    async def send(self, message):
        if not self.connected:
            raise TransportDown("uart link is down")
        frame = encode_frame(message, self.max_payload)  # FrameError if too large
        kind = message_kind(message)
        async with self._write_lock:
            if not self.connected:
                raise TransportDown("uart link went down")
            await self._write_all(frame)
            self.frames_out += 1
            self.watch.sent(kind, self.hal.ticks_ms())

    async def _write_all(self, data):
        if self.whole_frames:
            self._write_whole(data)
            return
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            written = self.uart.write(view[sent:sent + self.write_chunk])
            if written:
                sent += written
            # Yield between chunks (and wait for room when the driver took nothing).
            await self.hal.asleep_ms(0 if written else self.poll_ms)

    def _write_whole(self, data):
        # No await until the frame is out: nothing else in this interpreter can print.
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            written = self.uart.write(view[sent:])
            if written:
                sent += written
            else:
                self.hal.sleep_ms(1)  # driver buffer full: wait for the wire, blocking

    def _link(self, up):
        if up != self.connected:
            self.link_changes += 1
        self._set_link(up)

    def poll(self):
        """One service step: read what is waiting, deliver frames, check liveness.
        Returns True if bytes were read (the task then polls again at once)."""
        data = self.uart.read(self.read_chunk) if self.uart.any() else None
        now = self.hal.ticks_ms()
        if data:
            for payload in self.decoder.feed(data):
                self.frames_in += 1
                self.watch.heard_from_gateway(now)
                self._retry_at = None
                self._link(True)
                self._deliver(payload)
        if self.connected and self.watch.overdue(now):
            self._retry_at = self.hal.ticks_add(now, self.watch.gave_up())
            self._link(False)
        elif (not self.connected and self._retry_at is not None
              and self.hal.ticks_diff(now, self._retry_at) >= 0):
            self._retry_at = None
            self.watch.reset()
            self._link(True)
        return bool(data)

    async def _run(self):
        while True:
            busy = self.poll()
            await self.hal.asleep_ms(0 if busy else self.poll_ms)
