"""The DUT's console as an expect-style buffer (the shape of pytest-embedded's `dut.expect`).

Bytes arrive from a background reader (a process's stdout, a serial port) through
`feed()`; `expect()` searches what has arrived since the previous match, waiting up to a
timeout, and consumes the console up to the end of the match, so consecutive expects read
forward like pexpect. The whole log is kept for failure messages and for `lines()`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

DEFAULT_TIMEOUT_S = 30.0
_TAIL_CHARS = 1500  # console tail shown when an expect times out


class ExpectTimeout(AssertionError):
    """No match within the timeout; the message carries the unmatched console tail."""


class Console:
    """Text console of one DUT. `writer(bytes)` sends input (None: read-only console)."""

    def __init__(self, writer: Callable[[bytes], None] | None = None) -> None:
        self._writer = writer
        self._text = ""
        self._position = 0  # start of the unconsumed part
        self._changed = threading.Condition()

    def feed(self, data: bytes) -> None:
        """Append bytes from the DUT (undecodable bytes become U+FFFD, never an error)."""
        if not data:
            return
        with self._changed:
            self._text += data.decode("utf-8", "replace").replace("\r\n", "\n")
            self._changed.notify_all()

    def write(self, line: str) -> None:
        """Send one line to the DUT's console input."""
        if self._writer is None:
            raise RuntimeError("this console has no input")
        self._writer(line.encode() + b"\r\n")

    def expect(self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT_S,
               not_matching: str | re.Pattern[str] | None = None) -> re.Match[str]:
        """Wait for `pattern` (regex) after the last match -> the match; the console is
        consumed up to its end. not_matching: fail at once if this appears first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        forbidden = (re.compile(not_matching) if isinstance(not_matching, str)
                     else not_matching)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search(self._text, self._position)
                if forbidden is not None:
                    bad = forbidden.search(self._text, self._position,
                                           match.start() if match else len(self._text))
                    if bad is not None:
                        raise AssertionError(f"console showed {bad.group()!r} before "
                                             f"{regex.pattern!r}:\n{self.tail()}")
                if match is not None:
                    self._position = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExpectTimeout(f"no {regex.pattern!r} on the console within "
                                        f"{timeout} s; unmatched tail:\n{self.tail()}")
                self._changed.wait(left)

    def expect_exact(self, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> re.Match[str]:
        return self.expect(re.escape(text), timeout)

    def mark(self) -> int:
        """Position to search from later (see `since`)."""
        with self._changed:
            return len(self._text)

    def since(self, mark: int) -> str:
        with self._changed:
            return self._text[mark:]

    def skip_to_end(self) -> None:
        """Forget what arrived so far: the next expect sees only new output."""
        with self._changed:
            self._position = len(self._text)

    def lines(self) -> list[str]:
        with self._changed:
            return self._text.splitlines()

    def tail(self, chars: int = _TAIL_CHARS) -> str:
        return self._text[max(self._position, len(self._text) - chars):]
