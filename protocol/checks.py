"""Small argument checks shared by the protocol modules (MicroPython-compatible)."""

import binascii

from protocol.errors import ValidationError


def is_int(value):
    """An integer that is not a bool (True is an int in Python, never a valid count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def fixed_bytes(field, value, size):
    """`value` as bytes of exactly `size`; ValidationError naming `field` otherwise."""
    if not isinstance(value, (bytes, bytearray)):
        raise ValidationError(field, "must be bytes, not %s" % type(value).__name__)
    if len(value) != size:
        raise ValidationError(field, "must be %d bytes, not %d" % (size, len(value)))
    return bytes(value)


def hexstr(raw):
    return binascii.hexlify(bytes(raw)).decode()
