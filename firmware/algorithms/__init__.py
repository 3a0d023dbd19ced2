"""Signal processing that runs on the device. Pure code: no HAL, no I/O.

Every module here must import on MicroPython and on CPython alike (the CPython tests use
hypothesis on the same code), so nothing MicroPython-only (no `micropython.const`).
"""
