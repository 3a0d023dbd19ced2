"""The error types every wire decoder and validator in `protocol` raises.

One family, so callers can catch `ProtocolError` at a trust boundary and know that
nothing else escapes a decoder fed hostile bytes. Runs on MicroPython: plain classes only.
"""


class ProtocolError(ValueError):
    """Base of every error raised for bad wire input or bad protocol state."""


class DecodeError(ProtocolError):
    """CBOR (or another container) is malformed, truncated, has trailing bytes or breaks a limit."""


class ValidationError(ProtocolError):
    """A decoded value breaks a rule. `field` names what was wrong."""

    def __init__(self, field, message):
        super().__init__("%s: %s" % (field, message))
        self.field = field
        self.reason = message


class SealError(ProtocolError):
    """A COSE seal or signature is malformed or does not verify. The message is the reason."""


class CertificateError(ProtocolError):
    """A CWT certificate is malformed or unusable."""


class FrameError(ProtocolError):
    """A serial frame or BLE fragment is malformed, oversized or fails its CRC."""


class VersionError(ProtocolError):
    """A message carries a protocol version this code does not speak."""


class GattError(ProtocolError):
    """A Bluetooth SIG characteristic value is truncated or inconsistent."""
