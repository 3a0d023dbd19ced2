"""Mutations of valid inputs, shared by the hypothesis tests and the long-run engine.

A mutation is data, `(kind, a, b, chunk)`, applied by `apply`: the hypothesis tests draw
the tuple (so a failure shrinks to a small edit of a known-good seed), the long run draws
it from `random`. Byte-level kinds edit at position `a`; the CBOR kind decodes the input,
edits one node of the tree (`a`, `b` choose which node and what edit) and re-encodes it
deterministically, descending into byte strings that themselves hold CBOR (a COSE payload,
a sealed body inside an envelope), which is where most decoders hide their logic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from protocol import cbor
from protocol.errors import DecodeError

FLIP = 0
TRUNCATE = 1
INSERT = 2
DELETE = 3
OVERWRITE = 4
INTERESTING = 5
DUPLICATE = 6
CBOR_NODE = 7
KINDS = (FLIP, TRUNCATE, INSERT, DELETE, OVERWRITE, INTERESTING, DUPLICATE, CBOR_NODE)

# Bytes that are CBOR heads with special meaning: argument sizes 24..27, reserved 28..30,
# indefinite lengths, tags 17/18 (COSE), simple values, half/single/double floats, break.
INTERESTING_BYTES = bytes((0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x38,
                           0x3B, 0x40, 0x58, 0x5B, 0x5F, 0x60, 0x78, 0x7B, 0x7F, 0x80, 0x98,
                           0x9B, 0x9F, 0xA0, 0xB8, 0xBB, 0xBF, 0xC0, 0xC2, 0xD1, 0xD2, 0xD8,
                           0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFF))

# Replacement values for CBOR-aware edits: boundaries of every integer width and of the
# protocol's own limits (2**28 relative/absolute SenML time, 2**32 seqs, 2**33 times),
# float specials, empty and oversized strings, wrong types and COSE-looking tags.
INTERESTING_VALUES: tuple[object, ...] = (
    0, 1, -1, 2, 23, 24, -24, -25, 255, 256, 65535, 65536, (1 << 28) - 1, 1 << 28,
    (1 << 32) - 1, 1 << 32, 1 << 33, (1 << 53) + 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
    -(1 << 63), -(1 << 64), 0.0, -0.0, 0.5, 1e300, -1e300, float("nan"), float("inf"),
    float("-inf"), "", "a", "x" * 65, "x" * 300, "\u0000", "\ud7ff", "urn:dev:vb:ox-1:",
    "hr", "spo2", "%", "beat/min", "mmHg", "red", b"", b"\x00", b"\x00" * 8, b"\x00" * 16,
    b"\x00" * 32, b"\xff" * 64, None, True, False, [], [None], {}, {0: 0},
    cbor.Tag(17, []), cbor.Tag(18, [b"", {}, None, b""]), cbor.Tag(61, b""), cbor.Tag(0, "x"),
)

MAX_GROWTH = 4096  # a mutated input never grows past seed size + this


Mutation = tuple[int, int, int, bytes]


def _flip(data: bytes, a: int, b: int) -> bytes:
    if not data:
        return bytes([b & 0xFF])
    pos = a % len(data)
    return data[:pos] + bytes([data[pos] ^ (1 << (b % 8))]) + data[pos + 1:]


def _truncate(data: bytes, a: int) -> bytes:
    return data[:a % (len(data) + 1)]


def _insert(data: bytes, a: int, chunk: bytes) -> bytes:
    pos = a % (len(data) + 1)
    return data[:pos] + chunk + data[pos:]


def _delete(data: bytes, a: int, b: int) -> bytes:
    if not data:
        return data
    pos = a % len(data)
    return data[:pos] + data[pos + 1 + b % 16:]


def _overwrite(data: bytes, a: int, chunk: bytes) -> bytes:
    if not data:
        return chunk
    pos = a % len(data)
    return data[:pos] + chunk + data[pos + len(chunk):]


def _interesting(data: bytes, a: int, b: int) -> bytes:
    byte = INTERESTING_BYTES[b % len(INTERESTING_BYTES)]
    if not data:
        return bytes([byte])
    pos = a % len(data)
    return data[:pos] + bytes([byte]) + data[pos + 1:]


def _duplicate(data: bytes, a: int, b: int) -> bytes:
    if not data:
        return data
    start = a % len(data)
    piece = data[start:start + 1 + b % 64]
    return data[:start] + piece + data[start:]


# ---------------------------------------------------------------- CBOR-aware edits


def _slots(tree: object) -> list[tuple[object, object]]:
    """Every (container, key) in a decoded tree: list index, map key, or Tag's "value"."""
    out: list[tuple[object, object]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for i, item in enumerate(node):
                out.append((node, i))
                stack.append(item)
        elif isinstance(node, dict):
            for key, item in node.items():
                out.append((node, key))
                stack.append(item)
        elif isinstance(node, cbor.Tag):
            out.append((node, "value"))
            stack.append(node.value)
    return out


def _get(container: object, key: object) -> object:
    if isinstance(container, cbor.Tag):
        return container.value
    return container[key]  # type: ignore[index]


def _set(container: object, key: object, value: object) -> None:
    if isinstance(container, cbor.Tag):
        container.value = value
    else:
        container[key] = value  # type: ignore[index]


def _edit_value(value: object, choice: int, rng: random.Random) -> object:
    """A replacement for one node."""
    if isinstance(value, bytes) and choice % 3 == 0:
        inner = _mutate_cbor(value, rng)  # descend into embedded CBOR (COSE payloads etc.)
        if inner is not None:
            return inner
    if isinstance(value, bool) or value is None:
        return INTERESTING_VALUES[choice % len(INTERESTING_VALUES)]
    if isinstance(value, int) and choice % 2 == 0:
        return value + rng.choice((-1, 1, -(1 << 32), 1 << 32))
    if isinstance(value, str) and choice % 4 == 1:
        return value.encode()  # text where bytes were... and the reverse below
    if isinstance(value, bytes) and choice % 4 == 1:
        return value.decode("latin-1")
    if isinstance(value, (bytes, str)) and choice % 4 == 2:
        return value[: rng.randrange(len(value) + 1)] + value * rng.randrange(2)
    if choice % 7 == 3:
        return [value]  # one level deeper
    return INTERESTING_VALUES[rng.randrange(len(INTERESTING_VALUES))]


def _edit_tree(tree: object, a: int, b: int, rng: random.Random) -> object:
    """One structural edit of a decoded tree; returns the (possibly new) root."""
    slots = _slots(tree)
    if not slots:
        return _edit_value(tree, b, rng)
    container, key = slots[a % len(slots)]
    action = b % 6
    if action == 0 and isinstance(container, dict):
        del container[key]
    elif action == 0 and isinstance(container, list):
        del container[key]  # type: ignore[arg-type]
    elif action == 1 and isinstance(container, list):
        container.append(_get(container, key))
    elif action == 1 and isinstance(container, dict):
        new_key = rng.choice((rng.randrange(-8, 32), "seq", "ucum_", "x_", "", 1.5, 1e300,
                              b"k", -(1 << 64), None))
        container[new_key] = INTERESTING_VALUES[rng.randrange(len(INTERESTING_VALUES))]
    elif action == 2 and isinstance(container, dict):
        value = container.pop(key)
        container[rng.choice((rng.randrange(-8, 32), "n", str(key)))] = value
    else:
        _set(container, key, _edit_value(_get(container, key), b // 6, rng))
    return tree


def _loads(data: bytes) -> object:
    return cbor.loads(data, max_depth=64, max_items=100_000, max_size=1 << 20)


def _embedded(tree: object) -> list[tuple[object, object]]:
    """Slots holding byte strings that are CBOR themselves (COSE payloads, sealed bodies)."""
    found = []
    for container, key in _slots(tree):
        value = _get(container, key)
        if isinstance(value, bytes) and len(value) > 1:
            try:
                _loads(value)
            except DecodeError:
                continue
            found.append((container, key))
    return found


def _mutate_cbor(data: bytes, rng: random.Random) -> bytes | None:
    """`data` with one tree edit, or None when it is not CBOR (or the edit cannot encode).

    Most of the time the edit goes into an embedded CBOR byte string if there is one: the
    outer layers (envelope, COSE structure) are few slots, and the decoders' logic is in
    the layers inside them.
    """
    try:
        tree = _loads(data)
    except DecodeError:
        return None
    embedded = _embedded(tree)
    if embedded and rng.random() < 0.6:
        container, key = rng.choice(embedded)
        inner = _mutate_cbor(_get(container, key), rng)  # type: ignore[arg-type]
        if inner is None:
            return None
        _set(container, key, inner)
    else:
        tree = _edit_tree(tree, rng.randrange(1 << 16), rng.randrange(1 << 16), rng)
    try:
        return cbor.dumps(tree)
    except (ValueError, TypeError):  # e.g. a map key the edit made unhashable
        return None


# ---------------------------------------------------------------- applying mutations


def apply_one(data: bytes, mutation: Mutation, cbor_at: int | None = 0) -> bytes:
    """One mutation; `cbor_at`: where the CBOR item starts (None: the input is not CBOR)."""
    kind, a, b, chunk = mutation
    kind %= len(KINDS)
    if kind == FLIP:
        return _flip(data, a, b)
    if kind == TRUNCATE:
        return _truncate(data, a)
    if kind == INSERT:
        return _insert(data, a, chunk)
    if kind == DELETE:
        return _delete(data, a, b)
    if kind == OVERWRITE:
        return _overwrite(data, a, chunk)
    if kind == INTERESTING:
        return _interesting(data, a, b)
    if kind == DUPLICATE:
        return _duplicate(data, a, b)
    if cbor_at is None:
        return data
    edited = _mutate_cbor(data[cbor_at:], random.Random(a * 65537 + b))
    return data if edited is None else data[:cbor_at] + edited


def apply(seed: bytes, mutations: Sequence[Mutation], cbor_at: int | None = 0) -> bytes:
    data = seed
    for mutation in mutations:
        data = apply_one(data, mutation, cbor_at)
        if len(data) > len(seed) + MAX_GROWTH:
            data = data[:len(seed) + MAX_GROWTH]
    return data


def random_mutation(rng: random.Random, cbor_aware: bool) -> Mutation:
    """One mutation for the long-run engine (CBOR edits only for CBOR targets)."""
    kinds = KINDS + (CBOR_NODE,) * 2 if cbor_aware else KINDS[:-1]
    kind = rng.choice(kinds)
    size = rng.choice((1, 1, 2, 4, 8, 9, rng.randrange(1, 64)))
    roll = rng.random()
    if roll < 0.6:
        chunk = rng.randbytes(size)
    elif roll < 0.85:
        chunk = bytes(rng.choice(INTERESTING_BYTES) for _ in range(size))
    else:  # one head repeated: deep nesting (0x81...), long runs of zeros or of 0xff
        chunk = bytes([rng.choice(INTERESTING_BYTES)]) * rng.randrange(1, 80)
    return kind, rng.randrange(1 << 16), rng.randrange(1 << 16), chunk


def splice(first: bytes, second: bytes, rng: random.Random) -> bytes:
    """The head of one input joined to the tail of another."""
    return first[:rng.randrange(len(first) + 1)] + second[rng.randrange(len(second) + 1):]
