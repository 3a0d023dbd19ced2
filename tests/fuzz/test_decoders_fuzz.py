"""Hypothesis fuzzing of every decoder in targets.py: random bytes and mutated valid seeds.

Each target must raise nothing but its documented errors (targets.Target.allowed) on any
input. Mutations start from valid seeds (protocol/vectors/vectors.json, the GATT golden
vectors, the protocol's own encoders) and are edits hypothesis can shrink: bit flips,
truncations, insertions, deletions, CBOR head bytes, and CBOR-aware tree edits that are
re-encoded (fuzz_mutators.py). Crash sites already recorded as open findings (see
test_findings.py, where they are strict xfails) are tolerated here so the rest keeps
running; any other escape fails. The long-run mode is tests/fuzz/long_run.py.
"""

from __future__ import annotations

import functools

import fuzz_mutators as M
import pytest
import targets
from hypothesis import given, settings
from hypothesis import strategies as st
from targets import TARGETS

NAMES = sorted(TARGETS)
# 120 examples keep the whole file near 20 s under the dev and ci profiles (58 targets x 2
# tests); a deeper profile (HYPOTHESIS_PROFILE=long) is used as it is.
PROFILE_EXAMPLES = settings().max_examples
FUZZ = settings(max_examples=min(PROFILE_EXAMPLES, 120)) if PROFILE_EXAMPLES <= 300 \
    else settings()


def check(name: str, data: bytes) -> None:
    target = TARGETS[name]
    exc = targets.unexpected(target, data)
    if exc is not None and not targets.is_open_finding(name, exc):
        raise AssertionError(f"{name} raised {type(exc).__name__} outside its contract "
                             f"(allowed: {[t.__name__ for t in target.allowed]}) "
                             f"on {data!r}") from exc


@functools.cache
def seeds_of(name: str) -> list[bytes]:
    return TARGETS[name].seeds()


def mutation(cbor_at: int | None) -> st.SearchStrategy[M.Mutation]:
    kinds = M.KINDS if cbor_at is not None else M.KINDS[:-1]
    return st.tuples(st.sampled_from(kinds), st.integers(0, 1 << 16), st.integers(0, 1 << 16),
                     st.binary(min_size=1, max_size=16))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(name: str, data: bytes) -> None:
    check(name, data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(draw=st.data())
def test_mutated_seeds(name: str, draw: st.DataObject) -> None:
    target = TARGETS[name]
    seed = draw.draw(st.sampled_from(seeds_of(name)), label="seed")
    edits = draw.draw(st.lists(mutation(target.cbor_at), min_size=1, max_size=4), label="edits")
    check(name, M.apply(seed, edits, target.cbor_at))


@pytest.mark.parametrize("name", NAMES)
def test_some_seed_passes_the_whole_decoder(name: str) -> None:
    """A seed the decoder accepts proves the mutations start deep inside it; a format
    change that made every seed stale would otherwise leave only early refusals fuzzed."""
    target = TARGETS[name]
    accepted = 0
    for seed in target.seeds():
        try:
            target.run(seed)
        except Exception:  # noqa: S112 - counting, not judging: the fuzz tests judge
            continue
        accepted += 1
    assert accepted, f"no seed of {name} is accepted"


def test_cbor_mutation_reaches_embedded_payloads() -> None:
    """The CBOR-aware edit changes the SenML inside a sealed batch, not only the envelope."""
    from protocol import cose

    (sealed,) = targets.S.vector_bytes("sealed_batch")
    original = cose.mac0_parse(sealed).payload
    changed_inside = 0
    for a in range(200):
        mutated = M.apply(sealed, [(M.CBOR_NODE, a, 7 * a + 1, b"")])
        try:
            payload = cose.mac0_parse(mutated).payload
        except Exception:  # noqa: S112 - the edit broke the COSE layer itself
            continue
        changed_inside += payload is not None and payload != original
    assert changed_inside >= 20


def test_unexpected_separates_contract_errors_from_bugs() -> None:
    """The oracle every fuzz test relies on: allowed errors pass, anything else is caught."""
    from protocol.errors import DecodeError

    def refuse(_data: bytes) -> None:
        raise DecodeError("refused")

    def crash(data: bytes) -> None:
        _ = data[1000]

    allowed = targets.Target("t.refuse", refuse, (DecodeError,), lambda: [b""])
    buggy = targets.Target("t.crash", crash, (DecodeError,), lambda: [b""])
    never = targets.Target("t.never", refuse, targets.NEVER, lambda: [b""])
    assert targets.unexpected(allowed, b"x") is None
    assert isinstance(targets.unexpected(buggy, b"x"), IndexError)
    assert isinstance(targets.unexpected(never, b"x"), DecodeError)
