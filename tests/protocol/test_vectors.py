"""protocol/vectors/vectors.json: up to date with its generator, and reproduced on CPython.

The MicroPython side recomputes the same file in tests/mpy/test_vectors.py.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

from protocol import vectors

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "vectors.json").read_text())["vectors"]


def test_file_matches_generator() -> None:
    proc = subprocess.run([sys.executable, "scripts/make_vectors.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_kind_is_covered() -> None:
    assert {v["kind"] for v in VECTORS} == set(vectors.KINDS)


def test_cpython_reproduces_every_vector() -> None:
    assert vectors.check_all(VECTORS) == []


def test_check_all_notices_a_wrong_output() -> None:
    broken = copy.deepcopy(VECTORS)
    target = next(v for v in broken if v["kind"] == "mac0")
    out = target["outputs"]["bytes"]
    target["outputs"]["bytes"] = out[:-2] + ("00" if out[-2:] != "00" else "01")
    assert vectors.check_all(broken) == [f"{target['name']}: bytes differs"]


def test_vectors_match_independent_cbor2() -> None:
    import cbor2

    for vec in VECTORS:
        if vec["kind"] == "cbor":
            value = vectors.from_json(vec["inputs"]["value"])
            if isinstance(value, float) and value != value:
                continue
            expected = cbor2.dumps(_to_cbor2(value), canonical=True).hex()
            assert vec["outputs"]["bytes"] == expected, vec["name"]


def _to_cbor2(value):  # type: ignore[no-untyped-def]
    import cbor2

    from protocol import cbor

    if isinstance(value, cbor.Tag):
        return cbor2.CBORTag(value.tag, _to_cbor2(value.value))
    if isinstance(value, list):
        return [_to_cbor2(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_cbor2(v) for k, v in value.items()}
    return value
