# Every vector of protocol/vectors/vectors.json recomputed on MicroPython: same input, same bytes.
import json

from protocol import vectors


def _load():
    with open("protocol/vectors/vectors.json") as f:
        return json.load(f)["vectors"]


def test_vectors_file_is_not_empty():
    kinds = set([v["kind"] for v in _load()])
    assert len(kinds) == len(vectors.KINDS), kinds


def test_every_vector_same_bytes():
    problems = vectors.check_all(_load())
    assert not problems, "; ".join(problems)
