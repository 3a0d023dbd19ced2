"""Structured logs: one JSON object per line; keys and measured values never get through."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from edge_agent.logging_setup import REDACTED, configure_logging, redact

KEY_HEX = "9f" * 32


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("DEBUG", "json", stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_extra_fields(captured: io.StringIO) -> None:
    log = logging.getLogger("vitalbridge.test")
    log.info("serial %s: opened %s", "bed1", "/dev/ttyACM0", extra={"port": "bed1"})
    log.warning("second\nline")
    first, second = lines(captured)
    assert first["level"] == "INFO" and first["logger"] == "vitalbridge.test"
    assert first["msg"] == "serial bed1: opened /dev/ttyACM0" and first["port"] == "bed1"
    assert str(first["ts"]).endswith("Z")
    assert second["msg"] == "second\nline"


def test_keys_bytes_and_values_are_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("vitalbridge.test")
    log.info("session key %s", KEY_HEX)
    log.info("payload %r", b"\x01\x02secret")
    log.info("reading spo2=88 hr: 131 temp 38.5 value=12.5 from ox-1 seqs 10..12")
    try:
        raise ValueError(f"bad key {KEY_HEX}, hr 400 beat/min is outside the possible range")
    except ValueError:
        log.exception("verification failed")
    # Everything but the timestamp, whose milliseconds may spell a value ("...05.131Z").
    text = "\n".join(json.dumps({k: v for k, v in entry.items() if k != "ts"})
                     for entry in lines(captured))
    assert KEY_HEX not in text and "secret" not in text
    for value in ("88", "131", "38.5", "12.5", "400 beat"):
        assert value not in text
    key, payload, reading, failure = lines(captured)
    assert key["msg"] == f"session key {REDACTED}"
    assert payload["msg"] == "payload <8 bytes>"
    assert reading["msg"] == (f"reading spo2={REDACTED} hr: {REDACTED} temp {REDACTED} "
                              f"value={REDACTED} from ox-1 seqs 10..12")
    assert "ValueError" in str(failure["exc"]) and REDACTED in str(failure["exc"])


def test_ordinary_identifiers_survive() -> None:
    text = ("device ox-1 session 6d6d9d01491df974 topic vb/v1/gw/gw-1/up/readings/ox-1 "
            "digest prefix 0011223344556677 port /dev/serial/by-id/usb-Espressif_USB_JTAG")
    assert redact(text) == text
    assert redact("base64 " + "Ab3" * 15) == f"base64 {REDACTED}"


def test_text_format(captured: io.StringIO) -> None:
    stream = io.StringIO()
    handler = configure_logging("WARNING", "text", stream)
    try:
        logging.getLogger("vitalbridge.test").info("not shown")
        logging.getLogger("vitalbridge.test").error("spo2 85 on %s", "ox-1")
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().strip().endswith(f"ERROR vitalbridge.test: spo2 {REDACTED} on ox-1")
