"""BLE fragmentation: split a message into GATT notifications that fit the ATT MTU.

Each fragment is a 3-byte header followed by a slice of the message (docs/framing.md):

    byte 0  message id      0..255, rolling per sender
    byte 1  fragment index  0..count-1
    byte 2  fragment count  1..255 (the same in every fragment of a message)

A notification carries at most MTU - 3 bytes (ATT opcode + handle) and an attribute value
at most 512 bytes. The BLE link layer already checks integrity and the message inside is
sealed (COSE), so fragments carry no CRC of their own.

`Reassembler` is pure logic: the caller passes the time, nothing here reads a clock.
`add()` never raises; every dropped fragment or message is counted and given a reason.
"""

from protocol.errors import FrameError
from protocol.frames import crc32

HEADER_SIZE = 3
MIN_ATT_MTU = 23  # Bluetooth Core: the default and smallest ATT_MTU on LE
ATT_NOTIFY_OVERHEAD = 3  # opcode + attribute handle
MAX_ATTRIBUTE_VALUE = 512  # Bluetooth Core: longest attribute value
MAX_FRAGMENTS = 255
MAX_KEPT_ERRORS = 32  # reasons kept between take_errors() calls; the rest are only counted


def fragment_capacity(mtu: int) -> int:
    """Message bytes one fragment carries at this ATT MTU."""
    return min(mtu - ATT_NOTIFY_OVERHEAD, MAX_ATTRIBUTE_VALUE) - HEADER_SIZE


def fragment(message, mtu: int, message_id: int) -> list:
    """Split `message` into notification values; FrameError if it cannot be carried."""
    if isinstance(message, memoryview):
        message = bytes(message)
    if not isinstance(message, (bytes, bytearray)):
        raise FrameError("message is not bytes")
    if not isinstance(mtu, int) or mtu < MIN_ATT_MTU:
        raise FrameError("mtu %r below the ATT minimum %d" % (mtu, MIN_ATT_MTU))
    if not isinstance(message_id, int) or not 0 <= message_id <= 255:
        raise FrameError("message id %r outside 0..255" % (message_id,))
    chunk = fragment_capacity(mtu)
    count = max(1, (len(message) + chunk - 1) // chunk)
    if count > MAX_FRAGMENTS:
        raise FrameError(
            "message of %d bytes needs %d fragments at mtu %d (max %d)"
            % (len(message), count, mtu, MAX_FRAGMENTS)
        )
    return [
        bytes((message_id, i, count)) + bytes(message[i * chunk : (i + 1) * chunk])
        for i in range(count)
    ]


class _Partial:
    """A message being collected. `parts` is None once it was rejected as oversized."""

    def __init__(self, message_id, count, now):
        self.message_id = message_id
        self.count = count
        self.parts = [None] * count
        self.received = 0
        self.size = 0
        self.last_progress = now


class _Completed:
    """A recently delivered message, remembered by per-fragment CRC to spot late duplicates."""

    def __init__(self, message_id, crcs, now):
        self.message_id = message_id
        self.crcs = crcs
        self.done_at = now


class Reassembler:
    """Rebuilds messages from fragments of one sender (use one per connection).

    Holds at most `max_pending` partial messages of at most `max_message` bytes each, plus
    the per-fragment CRCs of the last `max_pending` delivered messages. A partial message
    with no new fragment for more than `timeout_s` is dropped.
    """

    def __init__(self, max_message: int = 8192, max_pending: int = 4, timeout_s: float = 5.0):
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_message = max_message
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._pending = []
        self._completed = []
        self._errors = []
        self.messages_ok = 0
        self.messages_dropped = 0
        self.fragments_bad = 0
        self.fragments_duplicate = 0
        self.bytes_discarded = 0
        self.errors_overflow = 0

    @property
    def errors(self) -> list:
        """Reasons since the last take_errors() (a copy)."""
        return list(self._errors)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Message bytes held in partial messages (at most max_pending * max_message)."""
        return sum(p.size for p in self._pending)

    def take_errors(self) -> list:
        errors = self._errors
        self._errors = []
        return errors

    def reset(self):
        """Forget all state, e.g. when the connection drops; partials are reported dropped."""
        for p in self._pending:
            if p.parts is not None:
                self._drop(
                    p,
                    "reset: message %d had %d of %d fragments"
                    % (p.message_id, p.received, p.count),
                )
        self._pending = []
        self._completed = []

    def _note(self, reason):
        if len(self._errors) < MAX_KEPT_ERRORS:
            self._errors.append(reason)
        else:
            self.errors_overflow += 1

    def _drop(self, partial, reason):
        self.messages_dropped += 1
        self.bytes_discarded += partial.size
        self._note(reason)

    def expire(self, now):
        """Drop partial messages idle for more than timeout_s, and old duplicate records."""
        keep = []
        for p in self._pending:
            if now - p.last_progress > self.timeout_s:
                if p.parts is not None:  # a rejected message was reported already
                    self._drop(
                        p,
                        "timeout: message %d had %d of %d fragments"
                        % (p.message_id, p.received, p.count),
                    )
            else:
                keep.append(p)
        self._pending = keep
        self._completed = [c for c in self._completed if now - c.done_at <= self.timeout_s]

    def add(self, fragment, now):
        """Take one fragment received at time `now`; return the whole message when complete."""
        if isinstance(fragment, memoryview):
            fragment = bytes(fragment)
        if not isinstance(fragment, (bytes, bytearray)):
            return self._bad("malformed: fragment is not bytes")
        if len(fragment) < HEADER_SIZE:
            return self._bad("malformed: %d bytes, shorter than the header" % len(fragment))
        message_id = fragment[0]
        index = fragment[1]
        count = fragment[2]
        if count == 0:
            return self._bad("malformed: message %d has fragment count 0" % message_id)
        if index >= count:
            return self._bad(
                "malformed: message %d fragment index %d >= count %d" % (message_id, index, count)
            )
        body = bytes(fragment[HEADER_SIZE:])
        self.expire(now)

        partial = self._find_pending(message_id)
        if partial is not None:
            if partial.parts is None and partial.count == count:
                self.bytes_discarded += len(body)  # rest of a message rejected as oversized
                return None
            if partial.count != count:
                self._abandon(
                    partial,
                    "conflict: message %d count changed from %d to %d"
                    % (message_id, partial.count, count),
                )
                partial = None
            elif partial.parts[index] is not None:
                if partial.parts[index] == body:
                    self.fragments_duplicate += 1
                    return None
                self._abandon(
                    partial,
                    "conflict: message %d fragment %d differs from an "
                    "earlier copy" % (message_id, index),
                )
                partial = None
        if partial is None:
            if self._is_late_duplicate(message_id, index, count, body):
                self.fragments_duplicate += 1
                return None
            if count == 1:
                return self._single(message_id, body, now)
            partial = self._start(message_id, count, now)
        return self._store(partial, index, body, now)

    def _abandon(self, partial, reason):
        """Take a partial out of the table; report it unless it was already reported."""
        self._pending = [p for p in self._pending if p is not partial]
        if partial.parts is not None:
            self._drop(partial, reason)

    def _bad(self, reason):
        self.fragments_bad += 1
        self._note(reason)
        return None

    def _find_pending(self, message_id):
        for p in self._pending:
            if p.message_id == message_id:
                return p
        return None

    def _is_late_duplicate(self, message_id, index, count, body):
        for c in self._completed:
            if c.message_id == message_id:
                if len(c.crcs) == count and c.crcs[index] == crc32(body):
                    return True
                # Same id, different content: the sender's id counter came round again.
                self._completed = [k for k in self._completed if k is not c]
                return False
        return False

    def _start(self, message_id, count, now):
        if len(self._pending) >= self.max_pending:
            oldest = self._pending[0]
            for p in self._pending:
                if p.last_progress < oldest.last_progress:
                    oldest = p
            self._abandon(
                oldest,
                "interrupted: message %d had %d of %d fragments when "
                "message %d began" % (oldest.message_id, oldest.received, oldest.count, message_id),
            )
        partial = _Partial(message_id, count, now)
        self._pending.append(partial)
        return partial

    def _store(self, partial, index, body, now):
        if partial.size + len(body) > self.max_message:
            self._drop(
                partial,
                "oversized: message %d exceeds %d bytes" % (partial.message_id, self.max_message),
            )
            self.bytes_discarded += len(body)
            partial.parts = None  # keep the entry so its remaining fragments are discarded
            partial.size = 0
            return None
        partial.parts[index] = body
        partial.received += 1
        partial.size += len(body)
        partial.last_progress = now
        if partial.received < partial.count:
            return None
        self._pending = [p for p in self._pending if p is not partial]
        self._remember(partial.message_id, partial.parts, now)
        self.messages_ok += 1
        return b"".join(partial.parts)

    def _single(self, message_id, body, now):
        """A one-fragment message completes at once and never occupies a pending slot."""
        if len(body) > self.max_message:
            self.messages_dropped += 1
            self.bytes_discarded += len(body)
            self._note("oversized: message %d exceeds %d bytes" % (message_id, self.max_message))
            return None
        self._remember(message_id, [body], now)
        self.messages_ok += 1
        return body

    def _remember(self, message_id, parts, now):
        self._completed = [c for c in self._completed if c.message_id != message_id]
        self._completed.append(_Completed(message_id, [crc32(part) for part in parts], now))
        if len(self._completed) > self.max_pending:
            self._completed = self._completed[1:]
