"""The transport interface the firmware app drives, and the link-liveness rule shared by
every transport (docs/firmware-transports.md).

A transport carries whole protocol.messages envelopes between the device and its gateway:

    name                    "uart", "ble", "mqtt"
    connected               True while send() may be called (the link is up)
    await start()/stop()    bring the link machinery up / down (idempotent)
    await send(message)     one envelope out; TransportDown if the link is down or drops
                            while sending; FrameError if it is too large for the link
    set_receiver(cb)        cb(message) for each complete inbound envelope
    set_link_callback(cb)   cb(up) on every change of `connected`
    publish_standard(q, v)  latest standard value (hr, pr, spo2, pi, temp) for
                            transports that expose standard services (BLE); else no-op

Callbacks run in the transport's own task. An exception in one is counted in
`callback_errors` and dropped: a bug in the app must not kill the link.

Link liveness (AnswerWatch): most links cannot tell whether a gateway is listening (a
UART has no carrier; a BLE central may be a phone that never subscribed to our service;
a broker may hold messages for an absent gateway). Messages of the kinds in
ANSWERED_KINDS are always answered by a gateway (hello -> accept, sealed/checkpoint ->
device-ack). If one of them stays unanswered -- nothing valid arrives -- for
`answer_timeout_ms`, the transport reports the link down, waits a back-off (doubling
from `retry_ms` up to `max_retry_ms`) and reports it up again: the app then starts a new
handshake, so a silent gateway is probed by a periodic hello that slows down while it
stays silent. Anything valid heard from the gateway resets the back-off.
"""

import asyncio

from protocol import messages
from protocol.errors import ProtocolError

# Kinds a gateway answers promptly. enroll-request is answered by a certificate only
# after a technician confirmed the enrollment code, which may take minutes.
ANSWERED_KINDS = ("hello", "sealed", "checkpoint")

DEFAULT_ANSWER_TIMEOUT_MS = 15000
DEFAULT_RETRY_MS = 2000
DEFAULT_MAX_RETRY_MS = 60000


class TransportDown(Exception):
    """The link is down: nothing was (completely) sent. The outbox keeps the message."""


def message_kind(message):
    """The envelope type name of an outgoing message, or None if it is not one."""
    try:
        kind, _ = messages.decode(message)
    except ProtocolError:
        return None
    return kind


class AnswerWatch:
    """Pure link-liveness state: is an answered-kind message overdue, and how long to
    back off before trying again. Times are ticks_ms values compared with `ticks_diff`."""

    def __init__(self, ticks_diff, answer_timeout_ms=DEFAULT_ANSWER_TIMEOUT_MS,
                 retry_ms=DEFAULT_RETRY_MS, max_retry_ms=DEFAULT_MAX_RETRY_MS):
        self._diff = ticks_diff
        self.answer_timeout_ms = answer_timeout_ms
        self.retry_ms = retry_ms
        self.max_retry_ms = max_retry_ms
        self._waiting_since = None  # when the oldest unanswered answered-kind left
        self._failures = 0
        self.heard = False  # the gateway has answered at least once since start
        self.timeouts = 0

    def sent(self, kind, now):
        if kind in ANSWERED_KINDS and self._waiting_since is None:
            self._waiting_since = now

    def heard_from_gateway(self, now):
        self._waiting_since = None
        self._failures = 0
        self.heard = True

    def overdue(self, now):
        if self._waiting_since is None:
            return False
        return self._diff(now, self._waiting_since) > self.answer_timeout_ms

    def gave_up(self):
        """The link is being reported down for silence -> ms to wait before retrying."""
        self._waiting_since = None
        self.timeouts += 1
        delay = self.retry_ms
        for _ in range(self._failures):
            delay *= 2
            if delay >= self.max_retry_ms:
                delay = self.max_retry_ms
                break
        self._failures += 1
        return delay

    def reset(self):
        """A new link (reconnect): nothing is outstanding on it yet."""
        self._waiting_since = None


class Transport:
    """Base class: callback plumbing and link-state reporting. Subclasses implement
    start/stop/send and call _set_link(), _deliver() and _sent()/_heard()."""

    name = "abstract"

    def __init__(self):
        self._receiver = None
        self._link_callback = None
        self._up = False
        self._task = None  # the transport's service task while started
        self.watch = None  # an AnswerWatch, for transports that use the answer rule
        self.callback_errors = 0
        self.last_callback_error = None

    @property
    def connected(self):
        return self._up

    @property
    def gateway_heard(self):
        """The gateway has answered since start."""
        return self.watch is not None and self.watch.heard

    def set_receiver(self, callback):
        self._receiver = callback

    def set_link_callback(self, callback):
        self._link_callback = callback

    def publish_standard(self, quantity, value):
        """Expose the latest standard value; False: this transport has no such service."""
        return False

    async def start(self):
        raise NotImplementedError

    async def stop(self):
        raise NotImplementedError

    async def send(self, message):
        raise NotImplementedError

    async def _stop_task(self):
        """Cancel the service task and wait until it has ended."""
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _set_link(self, up):
        up = bool(up)
        if up == self._up:
            return
        self._up = up
        if self._link_callback is not None:
            self._call(self._link_callback, up)

    def _deliver(self, message):
        if self._receiver is not None:
            self._call(self._receiver, message)

    def _call(self, callback, argument):
        try:
            callback(argument)
        except Exception as exc:  # the app's bug must not stop the link task
            self.callback_errors += 1
            self.last_callback_error = repr(exc)
