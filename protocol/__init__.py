"""VitalBridge wire protocol: the single place that knows wire bytes.

Importable on MicroPython and CPython alike (see docs/protocol.md for the rules this
imposes). Sub-modules are imported explicitly by callers, so a small board only loads
what it uses.
"""

PROTOCOL_VERSION = 1
