"""The tamper-evident event journal: chain format, verification reasons, SQLite store, export.

Properties: any single edit, deletion, swap or insertion — in an exported chain or in the
SQLite file (written by an attacker who drops the triggers) — is detected with the reason
that names it; a checkpoint signed by another key is rejected; the triggers refuse UPDATE
and DELETE; export -> offline verification round-trips; the secrets/patient-data rule holds.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.eventlog import chain, kinds
from edge_agent.eventlog.chain import (
    CHECKPOINT_MISMATCH,
    CHECKPOINT_MISSING,
    DELETED,
    EDITED,
    FORGED_CHECKPOINT,
    FORKED,
    INSERTED,
    MALFORMED,
    REORDERED,
    TRUNCATED,
    WRONG_START,
)
from edge_agent.eventlog.store import EventLog, EventLogFile
from protocol import crypto
from protocol.errors import ValidationError

SEED = bytes(range(32))
PUBLIC = crypto.ed25519_public_key(SEED)
OTHER_SEED = bytes(range(100, 132))
OTHER_PUBLIC = crypto.ed25519_public_key(OTHER_SEED)
GW = "gw-0001"
N = 12
EVERY = 4  # checkpoints end at seq 4, 8, 12
T0 = 1_700_000_000_000
DIGEST = "ab" * 32


def sample_details(i: int) -> tuple[str, str, str, dict[str, object]]:
    """A varied, valid event for position i."""
    options = [
        ("transmission.published", "agent", "vb/v1/gw/gw-0001/up/readings/ox-1",
         {"topic": "vb/v1/gw/gw-0001/up/readings/ox-1", "message_id": i, "digest": DIGEST,
          "count": 10, "priority": "routine"}),
        ("alarm.raised", "agent", f"alarm:a-{i}",
         {"alarm_id": f"a-{i}", "grade": "red", "patient": "p-4f7a2c", "level": 0}),
        ("alarm.acknowledged", "clinician:c-1234", f"alarm:a-{i}",
         {"alarm_id": f"a-{i}", "grade": "red"}),
        ("key.generated", "agent", "key:0011223344556677",
         {"key_id": "0011223344556677", "owner": "gw-0001", "purpose": "signing",
          "public_key": PUBLIC.hex()}),
        ("reception.received", "agent", "device:ox-1",
         {"device": "ox-1", "transport": "ble", "verdict": "sealed", "count": 3,
          "first_seq": 3 * i, "last_seq": 3 * i + 2, "flags": ["cert-expired"]}),
        ("maintenance.fault", "agent", "component:uplink",
         {"component": "uplink", "fault": "broker-unreachable", "severity": "warning"}),
    ]
    return options[i % len(options)]


def build_chain(n: int = N, every: int = EVERY, seed: bytes = SEED
                ) -> tuple[list[chain.Entry], list[chain.Checkpoint]]:
    entries: list[chain.Entry] = []
    checkpoints: list[chain.Checkpoint] = []
    prev = chain.genesis_hash(GW)
    for i in range(n):
        kind, actor, subject, details = sample_details(i)
        entry = chain.make_entry(prev, i + 1, T0 + 1000 * i, kind, actor, subject, details)
        entries.append(entry)
        prev = entry.hash
        if entry.seq % every == 0 or entry.seq == n:
            first = checkpoints[-1].last + 1 if checkpoints else 1
            checkpoints.append(chain.sign_checkpoint(seed, GW, first, entry.seq, entry.hash,
                                                     T0 + 1000 * i))
    return entries, checkpoints


ENTRIES, CHECKPOINTS = build_chain()
BOUNDARIES = {cp.last for cp in CHECKPOINTS}


def verify(entries: list[chain.Entry], checkpoints: list[chain.Checkpoint] = CHECKPOINTS,
           keys: tuple[bytes, ...] = (PUBLIC,)) -> chain.Report:
    return chain.verify_chain(entries, checkpoints, gateway_id=GW, trusted_keys=keys)


def rechain(entries: list[chain.Entry]) -> list[chain.Entry]:
    """What a forger who knows the format does: renumber and recompute every hash."""
    out: list[chain.Entry] = []
    prev = chain.genesis_hash(GW)
    for i, e in enumerate(entries):
        out.append(chain.make_entry(prev, i + 1, e.time, e.kind, e.actor, e.subject, e.details))
        prev = out[-1].hash
    return out


# ---------------------------------------------------------------- the intact chain


def test_intact_chain_verifies_and_reports_coverage() -> None:
    report = verify(ENTRIES)
    assert report.ok
    assert (report.entries, report.first_seq, report.last_seq) == (N, 1, N)
    assert report.checkpoints == 3 and report.covered_through == N and report.uncovered == 0


def test_hash_is_sha256_of_prev_and_deterministic_cbor() -> None:
    e = ENTRIES[0]
    body = (b"\xa6" + b"\x63seq\x01" + b"\x64kind" + bytes([0x60 + len(e.kind)]) + e.kind.encode())
    # The exact body is protocol.cbor's deterministic map; check its defining properties.
    assert e.body() == chain.entry_body(1, e.time, e.kind, e.actor, e.subject, e.details)
    assert e.body().startswith(body)  # 6 pairs, keys in length-first order: seq, kind, ...
    assert e.hash == crypto.sha256(chain.genesis_hash(GW) + e.body())
    assert ENTRIES[1].prev == e.hash


def test_golden_vector() -> None:
    """The worked example of docs/eventlog.md, byte for byte."""
    genesis = chain.genesis_hash("gw-0001")
    assert genesis.hex() == "b53a6dd1fec026942e5e185209f90988305920cf78cc3be7bb084cb2f43eafc3"
    entry = chain.make_entry(genesis, 1, 1_700_000_000_000, "agent.started", "agent",
                             "gateway:gw-0001", {"version": "0.1.0"})
    assert entry.body().hex() == (
        "a6" "63736571" "01" "646b696e64" "6d6167656e742e73746172746564"
        "6474696d65" "1b0000018bcfe56800" "656163746f72" "656167656e74"
        "6764657461696c73" "a1" "6776657273696f6e" "65302e312e30"
        "677375626a656374" "6f676174657761793a67772d30303031")
    assert entry.hash.hex() == "77c669dec1c55155e267ad46df2897777a68cd83f17dd2dba5bb0b0bc7ae2444"
    cp = chain.sign_checkpoint(SEED, "gw-0001", 1, 1, entry.hash, 1_700_000_000_500)
    assert cp.cose.hex().startswith("d28443a10127a1044856475aa75463474c5853a5646865616458")
    assert cp.cose.hex().endswith("701cdeb79c7490da66280c")  # Ed25519 is deterministic
    assert chain.verify_chain([entry], [cp], gateway_id="gw-0001", trusted_keys=[PUBLIC]).ok


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))


@given(st.dictionaries(st.text(max_size=10), JSON_SCALARS | st.lists(JSON_SCALARS, max_size=4),
                       max_size=6),
       st.integers(1, 2**40), st.integers(0, 2**50))
def test_body_is_canonical_cbor_and_survives_the_export(details: dict[str, object], seq: int,
                                                        time_ms: int) -> None:
    """An independent encoder (cbor2, canonical = RFC 8949 length-first order) gives the
    same bytes, and an entry written as a JSON line reads back with the same hash."""
    import hashlib

    import cbor2

    entry = chain.make_entry(bytes(32), seq, time_ms, "k", "a", "s", details)
    oracle = cbor2.dumps({"seq": seq, "time": time_ms, "kind": "k", "actor": "a",
                          "subject": "s", "details": details}, canonical=True)
    assert entry.body() == oracle
    assert entry.hash == hashlib.sha256(bytes(32) + oracle).digest()
    back = chain.parse_entry_line(json.loads(chain.entry_line(entry)))
    assert back == entry and back.self_consistent()


def test_checkpoint_verifies_with_an_independent_cose_implementation() -> None:
    """Sig_structure = ["Signature1", protected, external_aad, payload] (RFC 9052 4.4),
    assembled with cbor2 and checked with PyNaCl."""
    import cbor2
    import nacl.signing

    cp = CHECKPOINTS[0]
    tagged = cbor2.loads(cp.cose)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    assert cbor2.loads(protected) == {1: -8}
    assert unprotected == {4: crypto.sha256(PUBLIC)[:8]}
    assert cbor2.loads(payload) == {"gateway": GW, "first": 1, "last": 4, "head": cp.head,
                                    "time": cp.time}
    to_sign = cbor2.dumps(["Signature1", protected, chain.CHECKPOINT_AAD, payload])
    nacl.signing.VerifyKey(PUBLIC).verify(to_sign, signature)


def test_uncovered_tail_is_counted_not_called_tampering() -> None:
    report = verify(ENTRIES + rechain(ENTRIES + ENTRIES[:3])[N:], CHECKPOINTS)
    assert report.ok and report.covered_through == N and report.uncovered == 3
    # Truncating after the last checkpoint cannot be seen locally (docs/eventlog.md).
    shorter = verify(ENTRIES[:N - 2], CHECKPOINTS[:-1])
    assert shorter.ok and shorter.covered_through == 8 and shorter.uncovered == 2


# ---------------------------------------------------------------- single mutations, pure chain

FIELDS = ("time", "kind", "actor", "subject", "details", "prev", "hash", "seq")


def edited(entry: chain.Entry, name: str, salt: int) -> chain.Entry:
    value = getattr(entry, name)
    if name in ("time", "seq"):
        new: object = value + 1 + salt
    elif name in ("prev", "hash"):
        new = bytes([value[0] ^ (1 + salt % 255)]) + value[1:]
    elif name == "details":
        new = {**value, "note_" + str(salt): salt} if salt % 2 else {**value, "extra": True}
    else:
        new = value + "x"
    return dataclasses.replace(entry, **{name: new})


@given(st.integers(0, N - 1), st.sampled_from(FIELDS), st.integers(0, 1000))
def test_any_edit_is_reported_as_edited_at_that_entry(index: int, name: str, salt: int) -> None:
    entries = list(ENTRIES)
    entries[index] = edited(entries[index], name, salt)
    problem = verify(entries).problem
    assert problem is not None and problem.reason == EDITED
    assert problem.index == index


@given(st.integers(0, N - 1))
def test_any_deletion_is_reported(index: int) -> None:
    problem = verify(ENTRIES[:index] + ENTRIES[index + 1:]).problem
    assert problem is not None
    if index == N - 1:  # the last entry: the final checkpoint still names it
        assert (problem.reason, problem.seq) == (TRUNCATED, N)
    else:
        assert (problem.reason, problem.seq, problem.index) == (DELETED, index + 1, index)


@given(st.lists(st.integers(0, N - 1), min_size=2, max_size=2, unique=True))
def test_any_swap_is_reported_as_reordered(pair: list[int]) -> None:
    i, j = sorted(pair)
    entries = list(ENTRIES)
    entries[i], entries[j] = entries[j], entries[i]
    problem = verify(entries).problem
    assert problem is not None
    assert (problem.reason, problem.seq, problem.index) == (REORDERED, i + 1, i)


@given(st.integers(0, N - 1), st.integers(0, N))
def test_any_inserted_copy_is_reported_as_inserted(source: int, position: int) -> None:
    entries = list(ENTRIES)
    entries.insert(position, ENTRIES[source])
    problem = verify(entries).problem
    assert problem is not None and problem.reason == INSERTED
    assert problem.seq == source + 1


@given(st.integers(0, N - 1), st.text(min_size=1, max_size=20).filter(str.isprintable))
def test_forged_well_chained_insert_is_detected(position: int, note: str) -> None:
    """A forger computes a correct hash for a new entry that claims the next seq."""
    prev = ENTRIES[position - 1].hash if position else chain.genesis_hash(GW)
    forged = chain.make_entry(prev, position + 1, T0, "agent.stopped", "agent", "gateway:gw",
                              {"reason": note})
    entries = list(ENTRIES)
    entries.insert(position, forged)
    problem = verify(entries).problem
    assert problem is not None
    # Where the forged entry lands on a signed head, the head check fires first.
    expected = CHECKPOINT_MISMATCH if position + 1 in BOUNDARIES else INSERTED
    assert problem.reason == expected and problem.seq == position + 1


@given(st.integers(0, N - 1), st.integers(0, 1000))
def test_rechained_insert_is_caught_by_the_next_signed_checkpoint(position: int, n: int) -> None:
    """(At position N it would be an append after the last checkpoint: uncovered, above.)"""
    forged = chain.make_entry(chain.genesis_hash(GW), 1, T0, "agent.stopped", "agent",
                              "gateway:gw", {"reason": f"forged {n}"})
    entries = rechain(ENTRIES[:position] + [forged] + ENTRIES[position:])
    problem = verify(entries).problem
    assert problem is not None and problem.reason == CHECKPOINT_MISMATCH
    assert problem.seq == min(b for b in BOUNDARIES if b >= position + 1)


@given(st.integers(0, N - 1))
def test_edit_with_its_own_hash_recomputed_is_pinned(index: int) -> None:
    e = ENTRIES[index]
    forged = chain.make_entry(e.prev, e.seq, e.time + 1, e.kind, e.actor, e.subject, e.details)
    entries = list(ENTRIES)
    entries[index] = forged
    problem = verify(entries).problem
    assert problem is not None
    if e.seq in BOUNDARIES:
        assert (problem.reason, problem.seq) == (CHECKPOINT_MISMATCH, e.seq)
    else:  # the next entry still records the original hash
        assert (problem.reason, problem.seq) == (EDITED, e.seq)


def test_wrong_start_and_wrong_gateway() -> None:
    rebased = rechain(ENTRIES)  # same content, genesis of GW: fine
    assert verify(rebased).ok
    other = chain.make_entry(chain.genesis_hash("gw-other"), 1, T0, "agent.started", "agent",
                             "gateway:gw", {"version": "1"})
    problem = verify([other], []).problem
    assert problem is not None and problem.reason == WRONG_START


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_signed_by_another_key_is_rejected() -> None:
    _, foreign = build_chain(seed=OTHER_SEED)
    problem = verify(ENTRIES, [CHECKPOINTS[0], foreign[1], CHECKPOINTS[2]]).problem
    assert problem is not None and problem.reason == FORGED_CHECKPOINT
    assert "unknown key" in problem.message
    # Trusting only the other key rejects the genuine ones.
    problem = verify(ENTRIES, keys=(OTHER_PUBLIC,)).problem
    assert problem is not None and problem.reason == FORGED_CHECKPOINT


def test_checkpoint_with_bad_signature_or_gateway_or_readable_field() -> None:
    cp = CHECKPOINTS[1]
    bad_sig = dataclasses.replace(cp, cose=cp.cose[:-1] + bytes([cp.cose[-1] ^ 1]))
    wrong_gw = chain.sign_checkpoint(SEED, "gw-9999", cp.first, cp.last, cp.head, cp.time)
    wrong_gw = dataclasses.replace(wrong_gw, gateway=GW)
    readable = dataclasses.replace(cp, head=bytes(32))
    for forged, words in ((bad_sig, "signature invalid"), (wrong_gw, "gw-9999"),
                          (readable, "readable fields differ")):
        problem = verify(ENTRIES, [CHECKPOINTS[0], forged, CHECKPOINTS[2]]).problem
        assert problem is not None and problem.reason == FORGED_CHECKPOINT, forged
        assert words in problem.message


def test_checkpoint_signed_without_the_checkpoint_aad_is_rejected() -> None:
    from protocol import cose

    cp = CHECKPOINTS[0]
    payload = chain.checkpoint_payload(GW, cp.first, cp.last, cp.head, cp.time)
    plain = cose.sign1_create(SEED, payload, kid=cose.key_id(PUBLIC))  # no domain separation
    problem = verify(ENTRIES, [dataclasses.replace(cp, cose=plain), *CHECKPOINTS[1:]]).problem
    assert problem is not None and problem.reason == FORGED_CHECKPOINT


@given(st.binary(max_size=200) | st.builds(lambda cut, flip: (cut, flip), st.integers(0, 200),
                                           st.integers(0, 255)))
def test_hostile_checkpoint_bytes_are_forged_never_a_crash(junk: object) -> None:
    cp = CHECKPOINTS[1]
    if isinstance(junk, tuple):  # a truncated or bit-flipped genuine checkpoint
        cut, flip = junk
        raw = bytearray(cp.cose[:max(1, len(cp.cose) - cut)])
        raw[flip % len(raw)] ^= 0x5A
        junk = bytes(raw)
    problem = verify(ENTRIES, [CHECKPOINTS[0], dataclasses.replace(cp, cose=junk),
                               CHECKPOINTS[2]]).problem
    assert problem is not None and problem.reason == FORGED_CHECKPOINT


def test_missing_middle_checkpoint_forked_and_truncated() -> None:
    problem = verify(ENTRIES, [CHECKPOINTS[0], CHECKPOINTS[2]]).problem
    assert problem is not None and (problem.reason, problem.seq) == (CHECKPOINT_MISSING, 5)
    problem = verify(ENTRIES, CHECKPOINTS[1:]).problem
    assert problem is not None and problem.reason == CHECKPOINT_MISSING
    overlap = chain.sign_checkpoint(SEED, GW, 3, 8, ENTRIES[7].hash, T0)
    problem = verify(ENTRIES, [*CHECKPOINTS, overlap]).problem
    assert problem is not None and problem.reason == FORKED
    problem = verify(ENTRIES[:6]).problem
    assert problem is not None and (problem.reason, problem.seq) == (TRUNCATED, 7)
    # The same checkpoint twice is not a fork.
    assert verify(ENTRIES, [*CHECKPOINTS, CHECKPOINTS[1]]).ok


# ---------------------------------------------------------------- export lines


def export_lines(entries: list[chain.Entry] = ENTRIES,
                 checkpoints: list[chain.Checkpoint] = CHECKPOINTS) -> list[str]:
    header = chain.ExportHeader(GW, 1, chain.genesis_hash(GW), (chain.Signer(PUBLIC),), T0)
    return ([chain.header_line(header)] + [chain.checkpoint_line(c) for c in checkpoints]
            + [chain.entry_line(e) for e in entries])


def verify_lines(lines: list[str], keys: tuple[bytes, ...] | None = (PUBLIC,)) -> chain.Report:
    try:
        reader = chain.ExportReader.from_lines(lines)
    except chain.FormatError as err:
        return chain.Report(chain.Problem(MALFORMED, str(err)), 0, None, None, 0, None, 0)
    return reader.verify(keys)


LINES = export_lines()
HEAD = 1 + len(CHECKPOINTS)  # index of the first entry line


def edit_line(line: str, name: str, salt: int) -> str:
    obj = json.loads(line)
    value = obj[name]
    if isinstance(value, int):
        obj[name] = value + 1 + salt
    elif name in ("prev", "hash"):
        obj[name] = ("0" if value[0] != "0" else "1") + value[1:]
    elif isinstance(value, dict):
        obj[name] = {**value, "x": salt}
    else:
        obj[name] = value + "y"
    return json.dumps(obj)


@given(st.integers(0, N - 1), st.sampled_from(FIELDS), st.integers(0, 100))
def test_export_edit_detected(index: int, name: str, salt: int) -> None:
    lines = list(LINES)
    lines[HEAD + index] = edit_line(lines[HEAD + index], name, salt)
    problem = verify_lines(lines).problem
    assert problem is not None and (problem.reason, problem.index) == (EDITED, index)


@given(st.data())
def test_export_deletion_swap_insertion_detected(data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(["delete", "swap", "insert"]))
    lines = list(LINES)
    i = data.draw(st.integers(0, N - 1))
    if op == "delete":
        del lines[HEAD + i]
        want = TRUNCATED if i == N - 1 else DELETED
    elif op == "swap":
        j = data.draw(st.integers(0, N - 1).filter(lambda j: j != i))
        a, b = HEAD + i, HEAD + j
        lines[a], lines[b] = lines[b], lines[a]
        want = REORDERED
    else:
        lines.insert(HEAD + data.draw(st.integers(0, N)), lines[HEAD + i])
        want = INSERTED
    problem = verify_lines(lines).problem
    assert problem is not None and problem.reason == want


def test_export_format_errors_are_malformed_not_crashes() -> None:
    lines = list(LINES)
    lines[HEAD + 2] = lines[HEAD + 2].replace('"seq":3', '"seq":"3"')
    assert verify_lines(lines).problem.reason == MALFORMED
    lines = list(LINES)
    lines[HEAD + 2] = lines[HEAD + 2][:-5]  # cut JSON
    assert verify_lines(lines).problem.reason == MALFORMED
    lines = list(LINES)
    lines[HEAD] = lines[HEAD].replace("{", '{"seq":1,', 1)  # a repeated key hides a value
    lines[HEAD] = lines[HEAD].replace('"seq":1,', '"seq":1,"seq":1,', 1)
    assert verify_lines(lines).problem.reason == MALFORMED
    lines = list(LINES)
    lines.append(LINES[1])  # a checkpoint after the entries
    assert verify_lines(lines).problem.reason == MALFORMED
    with pytest.raises(chain.FormatError):
        chain.ExportReader.from_lines(['{"format": "something else"}'])


@pytest.mark.parametrize("needle, replacement", [
    ('"actor":"agent"', '"actor":"\\ud800"'),  # a lone surrogate: not encodable text
    ('"seq":3', '"seq":' + "9" * 5000),  # past Python's int parsing limit
    ('"seq":3', '"seq":3.0'),
    ('"seq":3', '"seq":NaN'),
    ('"details":{', '"details":{"deep":' + "[" * 50 + "]" * 50 + ","),
])
def test_hostile_json_values_are_malformed(needle: str, replacement: str) -> None:
    lines = list(LINES)
    line = next(i for i in range(HEAD, len(lines)) if needle in lines[i])
    lines[line] = lines[line].replace(needle, replacement, 1)
    problem = verify_lines(lines).problem
    assert problem is not None and problem.reason == MALFORMED


@pytest.mark.parametrize("change", [{"signers": 5}, {"gateway": 7}, {"first_seq": 0},
                                    {"anchor": "zz"}, {"version": 2}])
def test_bad_headers_are_format_errors(change: dict[str, object]) -> None:
    header = {**json.loads(LINES[0]), **change}
    with pytest.raises(chain.FormatError):
        chain.ExportReader.from_lines([json.dumps(header), *LINES[1:]])


@given(st.binary(max_size=300))
def test_garbage_lines_never_crash_the_reader(junk: bytes) -> None:
    lines = list(LINES)
    lines[HEAD + 1] = junk.decode("latin-1")
    report = verify_lines(lines)
    assert report.problem is not None


def test_export_trusting_its_own_signers_and_header_swap() -> None:
    assert verify_lines(LINES, keys=None).ok
    header = json.loads(LINES[0])
    header["gateway"] = "gw-other"
    problem = verify_lines([json.dumps(header), *LINES[1:]]).problem
    assert problem is not None and problem.reason == WRONG_START
    header["anchor"] = chain.genesis_hash("gw-other").hex()  # consistent header, still caught
    problem = verify_lines([json.dumps(header), *LINES[1:]]).problem
    assert problem is not None and problem.reason == FORGED_CHECKPOINT


# ---------------------------------------------------------------- the SQLite store


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fill(log: EventLog, n: int, clock: FakeClock) -> None:
    for i in range(n):
        clock.now += 1
        log.append(*sample_details(i))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed journal of N entries, checkpoints at 4, 8 and (on close) 12."""
    path = tmp_path_factory.mktemp("eventlog") / "events.db"
    clock = FakeClock()
    log = EventLog.open(path, GW, SEED, checkpoint_every=EVERY, clock=clock)
    fill(log, N, clock)
    log.close()
    return path


@pytest.fixture
def copy(stored: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.db"
    shutil.copy(stored, target)
    return target


def attacker(path: Path) -> sqlite3.Connection:
    """A connection that removed the append-only triggers, as anyone with the file can."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                ).fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def verify_file(path: Path, keys: bytes | None = PUBLIC) -> chain.Report:
    log = EventLogFile.open_readonly(path)
    try:
        return log.verify(keys)
    finally:
        log.close()


@contextmanager
def tmp_copy(stored: Path) -> Iterator[Path]:
    """A fresh copy per hypothesis example (function-scoped fixtures are not reset)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "events.db"
        shutil.copy(stored, target)
        yield target


def test_store_verifies_and_counts(stored: Path) -> None:
    report = verify_file(stored)
    assert report.ok and report.entries == N and report.checkpoints == 3 and report.uncovered == 0
    log = EventLogFile.open_readonly(stored)
    assert [cp.last for cp in log.checkpoints()] == [4, 8, 12]
    assert log.stats().covered_through == N and log.gateway_id == GW
    log.close()


@pytest.mark.parametrize("sql", [
    "UPDATE entries SET actor = 'someone' WHERE seq = 3",
    "DELETE FROM entries WHERE seq = 12",
    "UPDATE checkpoints SET head = zeroblob(32)",
    "DELETE FROM checkpoints",
    "UPDATE meta SET value = 'gw-9' WHERE name = 'gateway'",
    "DELETE FROM signers",
    "INSERT OR REPLACE INTO entries SELECT * FROM entries WHERE seq = 2",
    "INSERT INTO entries SELECT seq + 100, time, kind, actor, subject, details, prev, hash "
    "FROM entries WHERE seq = 2",
    "INSERT OR REPLACE INTO meta VALUES ('gateway', 'gw-9')",
    "INSERT INTO checkpoints SELECT last_seq + 1, first_seq, head, time, gateway, kid, cose "
    "FROM checkpoints WHERE last_seq = 12",
])
def test_triggers_refuse_changes(copy: Path, sql: str) -> None:
    conn = sqlite3.connect(copy, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(sql)
    conn.close()
    assert verify_file(copy).ok


STORE_COLUMNS = ("time", "kind", "actor", "subject", "details", "prev", "hash")


@settings(max_examples=60)
@given(st.integers(1, N), st.sampled_from(STORE_COLUMNS))
def test_store_edit_detected(stored: Path, seq: int, column: str) -> None:
    with tmp_copy(stored) as path:
        conn = attacker(path)
        if column in ("prev", "hash"):
            conn.execute(f"UPDATE entries SET {column} = zeroblob(32) WHERE seq = ?", (seq,))
        elif column == "time":
            conn.execute("UPDATE entries SET time = time + 1 WHERE seq = ?", (seq,))
        elif column == "details":
            conn.execute("UPDATE entries SET details = '{\"reason\":\"edited\"}' WHERE seq = ?",
                         (seq,))
        else:
            conn.execute(f"UPDATE entries SET {column} = {column} || 'x' WHERE seq = ?", (seq,))
        conn.close()
        problem = verify_file(path).problem
    assert problem is not None and (problem.reason, problem.seq) == (EDITED, seq)


@settings(max_examples=40)
@given(st.integers(1, N))
def test_store_deletion_detected(stored: Path, seq: int) -> None:
    with tmp_copy(stored) as path:
        conn = attacker(path)
        conn.execute("DELETE FROM entries WHERE seq = ?", (seq,))
        conn.close()
        problem = verify_file(path).problem
    assert problem is not None
    assert (problem.reason, problem.seq) == (TRUNCATED if seq == N else DELETED, seq)


@settings(max_examples=40)
@given(st.lists(st.integers(1, N), min_size=2, max_size=2, unique=True))
def test_store_swap_detected(stored: Path, pair: list[int]) -> None:
    """Rows are read in seq order, so swapping two rows rewrites their seq: an edit."""
    a, b = sorted(pair)
    with tmp_copy(stored) as path:
        conn = attacker(path)
        cols = "time, kind, actor, subject, details, prev, hash"
        row_a = conn.execute(f"SELECT {cols} FROM entries WHERE seq = ?", (a,)).fetchone()
        row_b = conn.execute(f"SELECT {cols} FROM entries WHERE seq = ?", (b,)).fetchone()
        sets = ", ".join(f"{c} = ?" for c in cols.split(", "))
        conn.execute(f"UPDATE entries SET {sets} WHERE seq = ?", (*row_b, a))
        conn.execute(f"UPDATE entries SET {sets} WHERE seq = ?", (*row_a, b))
        conn.close()
        problem = verify_file(path).problem
    assert problem is not None and (problem.reason, problem.seq) == (EDITED, a)


@settings(max_examples=30)
@given(st.integers(0, N - 1))
def test_store_insertion_with_rechained_hashes_detected(stored: Path, position: int) -> None:
    with tmp_copy(stored) as path:
        log = EventLogFile.open_readonly(path)
        entries = list(log.entries())
        log.close()
        forged = chain.make_entry(chain.genesis_hash(GW), 1, T0, "agent.stopped", "agent",
                                  "gateway:gw", {"reason": "forged"})
        entries = rechain(entries[:position] + [forged] + entries[position:])
        conn = attacker(path)
        conn.execute("DELETE FROM entries")
        conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(e.seq, e.time, e.kind, e.actor, e.subject,
                           chain.details_to_json(e.details), e.prev, e.hash) for e in entries])
        conn.close()
        problem = verify_file(path).problem
    assert problem is not None and problem.reason == CHECKPOINT_MISMATCH


def test_store_checkpoint_replaced_by_another_key(copy: Path) -> None:
    conn = attacker(copy)
    row = conn.execute("SELECT first_seq, last_seq, head, time FROM checkpoints "
                       "WHERE last_seq = 8").fetchone()
    forged = chain.sign_checkpoint(OTHER_SEED, GW, row[0], row[1], row[2], row[3])
    conn.execute("UPDATE checkpoints SET cose = ? WHERE last_seq = 8", (forged.cose,))
    conn.close()
    problem = verify_file(copy).problem
    assert problem is not None and problem.reason == FORGED_CHECKPOINT
    # The key recorded in the file is only a fallback: an attacker can add his own.
    assert verify_file(copy, keys=None).problem is not None


def test_store_malformed_row_is_reported(copy: Path) -> None:
    conn = attacker(copy)
    conn.execute("UPDATE entries SET details = 'not json' WHERE seq = 5")
    conn.close()
    problem = verify_file(copy).problem
    assert problem is not None and (problem.reason, problem.index) == (MALFORMED, 4)


def test_periodic_checkpoints_by_count_and_age(tmp_path: Path) -> None:
    clock = FakeClock()
    published: list[chain.Checkpoint] = []
    log = EventLog.open(tmp_path / "e.db", GW, SEED, checkpoint_every=5,
                        checkpoint_interval_s=60, clock=clock, on_checkpoint=published.append)
    fill(log, 7, clock)
    assert [cp.last for cp in published] == [5]
    assert log.maybe_checkpoint() is None  # 2 uncovered, 2 s old
    clock.now += 61
    cp = log.maybe_checkpoint()
    assert cp is not None and (cp.first, cp.last) == (6, 7) and published[-1] == cp
    assert log.stats().uncovered == 0 and log.checkpoint() is None
    with log.batch():  # one transaction; the count rule is applied when it commits
        fill(log, 6, clock)
    assert published[-1].last == 13
    fill(log, 1, clock)
    log.close()  # graceful shutdown signs the tail
    assert published[-1].last == 14
    assert verify_file(tmp_path / "e.db").ok


def test_failed_batch_rolls_back_and_chain_continues(tmp_path: Path) -> None:
    clock = FakeClock()
    log = EventLog.open(tmp_path / "e.db", GW, SEED, clock=clock)
    fill(log, 2, clock)
    with pytest.raises(ValidationError), log.batch():
        fill(log, 2, clock)
        log.append("alarm.raised", "agent", "alarm:x", {"alarm_id": "x", "value": 31})
    assert log.stats().last_seq == 2
    fill(log, 3, clock)
    assert log.verify(PUBLIC).ok and log.stats().last_seq == 5
    log.close()


def test_reopen_with_renewed_key_and_other_gateway(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "e.db"
    log = EventLog.open(path, GW, SEED, clock=clock)
    fill(log, 3, clock)
    log.close()
    log = EventLog.open(path, GW, OTHER_SEED, clock=clock)  # key renewed
    fill(log, 3, clock)
    log.close()
    assert verify_file(path, keys=None).ok
    log = EventLogFile.open_readonly(path)
    assert log.verify([PUBLIC, OTHER_PUBLIC]).ok
    assert log.verify(PUBLIC).problem.reason == FORGED_CHECKPOINT
    assert [s.public_key for s in log.signers()] == [PUBLIC, OTHER_PUBLIC]
    log.close()
    from edge_agent.journal.schema import SchemaError

    with pytest.raises(SchemaError, match="gw-0001"):
        EventLog.open(path, "gw-0002", SEED, clock=clock)


def test_export_round_trip_offline(stored: Path, tmp_path: Path) -> None:
    log = EventLogFile.open_readonly(stored)
    summary = log.export(tmp_path / "all.jsonl")
    assert (summary.entries, summary.checkpoints, summary.first_seq) == (N, 3, 1)
    # Entry seq s was appended at base + s. A window 5..9 by time is extended to the end of
    # the checkpoint covering seq 9 (12) and carries the checkpoint ending at 4 (its anchor).
    base = 1_700_000_000.0
    window = log.export(tmp_path / "part.jsonl", since=base + 5, until=base + 9)
    mid = log.export(tmp_path / "mid.jsonl", since=base + 6, until=base + 7)
    empty = log.export(tmp_path / "none.jsonl", since=base + 1000)
    log.close()
    assert (window.first_seq, window.last_seq, window.checkpoints) == (5, 12, 3)
    assert (mid.first_seq, mid.last_seq, mid.checkpoints) == (6, 8, 1)
    assert empty.entries == 0
    for name in ("all.jsonl", "part.jsonl", "mid.jsonl", "none.jsonl"):
        with open(tmp_path / name, encoding="utf-8") as lines:
            report = chain.ExportReader.from_lines(lines).verify([PUBLIC])
        assert report.ok, (name, report)
    with open(tmp_path / "part.jsonl", encoding="utf-8") as lines:
        report = chain.ExportReader.from_lines(lines).verify([PUBLIC])
    assert (report.first_seq, report.last_seq, report.covered_through) == (5, 12, 12)
    # The anchor of a slice is checked against the signed head just before it, if exported,
    # and in any case against the first entry's recorded prev.
    for name, reason in (("part.jsonl", CHECKPOINT_MISMATCH), ("mid.jsonl", WRONG_START)):
        lines = (tmp_path / name).read_text().splitlines()
        header = json.loads(lines[0])
        header["anchor"] = "00" * 32
        problem = verify_lines([json.dumps(header), *lines[1:]]).problem
        assert problem is not None and problem.reason == reason


def test_other_sqlite_files_are_not_event_journals(tmp_path: Path) -> None:
    from edge_agent.journal.schema import SchemaError
    from edge_agent.journal.store import JournalStore

    JournalStore.open(tmp_path / "readings.db").close()  # also SQLite, also user_version 1
    with pytest.raises(SchemaError, match="not a VitalBridge event journal"):
        EventLogFile.open_readonly(tmp_path / "readings.db")
    with pytest.raises(SchemaError, match="not a VitalBridge event journal"):
        EventLog.open(tmp_path / "readings.db", GW, SEED)


def test_export_rejects_unknown_format(stored: Path, tmp_path: Path) -> None:
    log = EventLogFile.open_readonly(stored)
    with pytest.raises(ValueError, match="jsonl"):
        log.export(tmp_path / "x.csv", format="csv")
    log.close()


# ---------------------------------------------------------------- the rule for details


@pytest.mark.parametrize("details", [
    {"private_key": "00"},
    {"seed": "abc"},
    {"session_secret": "x"},
    {"api_token": "abc"},
    {"password": "hunter2"},
    {"mac_key": "00" * 16},
])
def test_secret_named_fields_are_refused(details: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="secret"):
        kinds.validate_details("maintenance.fault", {"component": "c", "fault": "f", **details})


@pytest.mark.parametrize("details", [
    {"value": 88}, {"spo2": 88}, {"hr": 140}, {"reading": "88"}, {"patient_name": "Ann"},
    {"date_of_birth": "1950"}, {"email": "a@b"},
])
def test_patient_values_are_refused(details: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="patient"):
        kinds.validate_details("alarm.raised", {"alarm_id": "a1", "grade": "red", **details})


def test_patient_ids_must_be_pseudonyms() -> None:
    ok = {"alarm_id": "a1", "grade": "red", "patient": "p-4f7a2c"}
    assert kinds.validate_details("alarm.raised", ok) == ok
    with pytest.raises(ValidationError) as err:
        kinds.validate_details("alarm.raised", {**ok, "patient": "Ann Smith"})
    assert err.value.field == "patient"


@given(st.binary(min_size=32, max_size=64), st.sampled_from(["hex", "b64", "b64url"]),
       st.text(alphabet="abc -:", max_size=10))
def test_blobs_of_32_bytes_are_refused_in_text(blob: bytes, encoding: str, prefix: str) -> None:
    if encoding == "hex":
        text = blob.hex()
    elif encoding == "b64":
        text = base64.b64encode(blob).decode()
    else:
        text = base64.urlsafe_b64encode(blob).decode().rstrip("=")
    if encoding != "hex" and not kinds.looks_like_blob(text):
        # Base64 without all of upper, lower and digit: about 1e-9 per 32 random bytes.
        return
    with pytest.raises(ValidationError, match="blob"):
        kinds.validate_details("maintenance.fault", {"component": "c", "fault": "f",
                                                     "detail": prefix + text})


def test_bytes_refused_and_public_values_allowed() -> None:
    with pytest.raises(ValidationError, match="byte strings"):
        kinds.validate_details("key.generated", {"key_id": "00" * 8, "owner": "gw",
                                                 "purpose": "signing", "public_key": PUBLIC})
    details = {"key_id": "00" * 8, "owner": "gw", "purpose": "signing",
               "public_key": PUBLIC.hex()}
    assert kinds.validate_details("key.generated", details) == details
    with pytest.raises(ValidationError, match="blob"):
        kinds.validate_actor("technician:" + "A1b" * 15)
    with pytest.raises(ValidationError, match="blob"):
        kinds.validate_subject("key:" + SEED.hex())
    # A topic (one case, slashes) is not mistaken for base64.
    kinds.validate_subject("vb/v1/gw/gateway-0001/up/readings/oximeter-0001")


def test_every_kind_accepts_its_required_fields_and_refuses_less() -> None:
    samples = {kinds.TEXT: "text", kinds.IDENT: "id-1", kinds.PSEUDONYM: "p-1234",
               kinds.COUNT: 1, kinds.BYTE: 0x87, kinds.NUMBER: 1.5, kinds.NAMES: ["a", "b"],
               kinds.DIGEST: DIGEST, kinds.PUBLIC_KEY: PUBLIC.hex(), kinds.KID: "00" * 8}
    for kind in kinds.KINDS.values():
        details = {}
        for name, ftype in kind.required.items():
            details[name] = ftype.choices[0] if ftype.choices else samples[ftype]
        assert kinds.validate_details(kind.name, details) == details
        for missing in kind.required:
            partial = {k: v for k, v in details.items() if k != missing}
            with pytest.raises(ValidationError) as err:
                kinds.validate_details(kind.name, partial)
            assert err.value.field == missing
    with pytest.raises(ValidationError, match="unknown event kind"):
        kinds.validate_details("alarm.deleted", {})
    with pytest.raises(ValidationError, match="not a field"):
        kinds.validate_details("agent.started", {"version": "1", "uptime": 3})


def test_append_refuses_bad_details_and_records_nothing(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "e.db", GW, SEED)
    with pytest.raises(ValidationError):
        log.append("key.retired", "agent", "key:1", {"key_id": "00" * 8, "owner": "gw",
                                                    "private_key": "00" * 32})
    with pytest.raises(ValidationError):
        log.append("agent.started", "Dr Smith", "gateway:gw", {"version": "1"})
    assert log.stats().last_seq == 0
    log.close()
