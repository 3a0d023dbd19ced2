"""The pieces of the DUT interface that a real board needs and the simulated board does not
exercise: console text and frames sharing one serial line, and expect() semantics."""

from __future__ import annotations

import threading

import pytest

from hil_tests.console import Console, ExpectTimeout
from hil_tests.link import ConsoleSplitter
from protocol import messages
from protocol.frames import encode_frame


def test_shared_line_separates_text_and_frames_byte_by_byte() -> None:
    console = Console()
    splitter = ConsoleSplitter(console)
    hello = messages.encode("hello", {0: 1})
    ack = messages.encode("device-ack", b"\x00\x01" * 20)  # zeros inside the payload
    stream = (b"rst:0x1 (POWERON_RESET)\r\nboot ok\n" + encode_frame(hello)
              + b"event command-done command=feedback id=2 pattern=red\n"
              + encode_frame(ack) + encode_frame(hello))
    payloads = []
    for i in range(len(stream)):  # the worst case: one byte per read
        payloads.extend(splitter.feed(stream[i:i + 1]))
    assert payloads == [hello, ack, hello]
    assert console.lines() == ["rst:0x1 (POWERON_RESET)", "boot ok",
                               "event command-done command=feedback id=2 pattern=red"]


def test_a_print_inside_a_frame_costs_that_frame_only() -> None:
    console = Console()
    splitter = ConsoleSplitter(console)
    frame = encode_frame(messages.encode("hello", {0: 1, 1: "vb-025642000001"}))
    broken = frame[:8] + b"hal: text\n" + frame[8:]
    payloads = splitter.feed(broken + encode_frame(messages.encode("accept", {0: 1})))
    assert payloads == [messages.encode("accept", {0: 1})]
    assert "hal: text" in "\n".join(console.lines())


def test_expect_reads_forward_and_times_out_with_the_tail() -> None:
    console = Console()
    console.feed(b"event a\nevent b\n")
    assert console.expect(r"event (\w)").group(1) == "a"
    assert console.expect(r"event (\w)").group(1) == "b"
    later = threading.Timer(0.1, console.feed, args=(b"event c\n",))
    later.start()
    assert console.expect(r"event c", timeout=5)
    with pytest.raises(ExpectTimeout, match="event d"):
        console.expect(r"event d", timeout=0.2)
    console.feed(b"fatal\nevent e\n")
    with pytest.raises(AssertionError, match="fatal"):
        console.expect(r"event e", timeout=1, not_matching=r"fatal")
