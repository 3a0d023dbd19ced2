# Topic names and message envelope on MicroPython.
from protocol import cbor, messages, topics
from protocol.errors import DecodeError, ValidationError, VersionError


def _raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type:
        return
    raise AssertionError("expected %s" % exc_type.__name__)


def test_topic_round_trip():
    t = topics.up("gw-1", topics.UP_READINGS, "dev-7")
    assert t == "vb/v1/gw/gw-1/up/readings/dev-7"
    assert topics.parse(t) == ("gw-1", "up", "readings", "dev-7")
    assert topics.parse(topics.down("gw-1", "receipt")) == ("gw-1", "down", "receipt", None)


def test_topic_rejects_wildcards():
    _raises(ValidationError, topics.up, "gw/+", "status")
    _raises(ValidationError, topics.parse, "vb/v1/gw/gw-1/sideways/x")


def test_message_envelope():
    data = messages.encode("alarm", {1: 2})
    assert messages.decode(data) == ("alarm", {1: 2})
    _raises(VersionError, messages.decode, cbor.dumps([99, 21, {}]))
    _raises(DecodeError, messages.decode, cbor.dumps({"v": 1}))
