"""Small-file durability on the device's flash: atomic replacement and CRC-checked records.

    write_atomic(path, data)   write path.tmp, flush, sync, rename over path
    write_record / read_record one CRC-framed record per file (keys, seq reservation, ...)
    shred(path, random_bytes)  overwrite with random bytes, then zeros, then delete

Record layout (little endian):  b"VBR1" | u32 payload length | payload | u32 CRC-32
(CRC over the magic, length and payload, so a torn or bit-rotted file is refused).

Rename is atomic on LittleFS (the ESP32 default) and POSIX (the unix port). FAT cannot
rename over a file, so MicroPython's FAT driver unlinks the target first: a cut between the
unlink and the rename leaves only path.tmp, which read_record() falls back to (a valid
CRC proves the tmp file was written completely). docs/firmware-identity.md has the limits.

The file primitives are module-level names (_open, _rename, _remove, _sync_file) so tests
can interpose a simulated power cut at every step. Runs on MicroPython and CPython.
"""

import os
import struct

from protocol.frames import crc32

MAGIC = b"VBR1"
TMP_SUFFIX = ".tmp"
_HEAD = "<4sI"
_HEAD_SIZE = 8
_CRC_SIZE = 4
MAX_RECORD = 65536

OK = "ok"
FROM_TMP = "tmp"
MISSING = "missing"
CORRUPT = "corrupt"


def _sync_file(f):
    """Push a written file to the medium: fsync where it exists (CPython), else the
    MicroPython VFS-wide os.sync() if this port has it. flush() always runs first."""
    f.flush()
    fsync = getattr(os, "fsync", None)
    if fsync is not None:
        fsync(f.fileno())
        return
    sync = getattr(os, "sync", None)
    if sync is not None:
        sync()


_open = open
_rename = os.rename
_remove = os.remove


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def size(path):
    """File size in bytes, or -1 if it does not exist."""
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def make_dirs(path):
    """mkdir -p (MicroPython's os has no makedirs)."""
    prefix = "/" if path.startswith("/") else ""
    current = ""
    for part in path.split("/"):
        if not part:
            continue
        current = current + "/" + part if current else prefix + part
        if not exists(current):
            os.mkdir(current)


def remove_if_exists(path):
    try:
        _remove(path)
    except OSError:
        return False
    return True


def read_file(path):
    """Whole file as bytes, or None if it cannot be opened."""
    try:
        f = _open(path, "rb")
    except OSError:
        return None
    try:
        return f.read()
    finally:
        f.close()


def _write_synced(path, mode, data):
    f = _open(path, mode)
    try:
        f.write(data)
        _sync_file(f)
    finally:
        f.close()


def write_atomic(path, data):
    """Replace `path` by `data` so a power cut leaves the old or the new content whole."""
    _write_synced(path + TMP_SUFFIX, "wb", data)
    _rename(path + TMP_SUFFIX, path)


def append_synced(path, data):
    """Append `data` to `path` and push it to the medium before returning."""
    _write_synced(path, "ab", data)


def encode_record(payload):
    payload = bytes(payload)
    if len(payload) > MAX_RECORD:
        raise ValueError("record larger than %d bytes" % MAX_RECORD)
    body = struct.pack(_HEAD, MAGIC, len(payload)) + payload
    return body + struct.pack("<I", crc32(body))


def decode_record(data):
    """The payload of one record file, or None if it is torn, padded or its CRC fails."""
    if data is None or len(data) < _HEAD_SIZE + _CRC_SIZE:
        return None
    magic, length = struct.unpack(_HEAD, data[:_HEAD_SIZE])
    if magic != MAGIC or len(data) != _HEAD_SIZE + length + _CRC_SIZE:
        return None
    body = data[: _HEAD_SIZE + length]
    if struct.unpack("<I", data[_HEAD_SIZE + length:])[0] != crc32(body):
        return None
    return bytes(body[_HEAD_SIZE:])


def write_record(path, payload):
    write_atomic(path, encode_record(payload))


def read_record(path):
    """-> (payload, state). state: "ok"; "tmp" (the main file is missing or corrupt but an
    interrupted write left a complete path.tmp); "missing" (no main file and no complete
    tmp: nothing was ever committed, a torn first write at most); "corrupt" (the main file
    exists but neither copy passes its CRC). payload is None unless ok/tmp."""
    main = read_file(path)
    payload = decode_record(main)
    if payload is not None:
        return payload, OK
    payload = decode_record(read_file(path + TMP_SUFFIX))
    if payload is not None:
        return payload, FROM_TMP
    # On FAT the rename unlinks the main file only once the tmp is complete, so no main
    # file and a torn tmp means the very first write was cut.
    return None, MISSING if main is None else CORRUPT


def shred(path, random_bytes):
    """Overwrite the file's bytes with random data, then zeros (each pass synced), then
    delete it. Returns the number of bytes overwritten, or -1 if there was no file.

    On flash with copy-on-write or wear levelling (LittleFS, FTL) an overwrite may land in
    new blocks: this removes the data from the file system, not necessarily from the
    chip. docs/firmware-identity.md explains what flash encryption adds.
    """
    length = size(path)
    if length < 0:
        return -1
    f = _open(path, "r+b")
    try:
        for fill in (random_bytes(length), bytes(length)):
            f.seek(0)
            f.write(fill)
            _sync_file(f)
    finally:
        f.close()
    _remove(path)
    return length
