"""The agent inbox: the SQLite file on disk, body validation, and the consumer's exactly-once
outcome (also after a crash between preparing and finishing an entry)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.inbox import client, entries
from edge_agent.inbox.consumer import InboxConsumer, Refused
from edge_agent.inbox.store import ACCEPTED, FILE_NAME, REFUSED, InboxStore
from protocol.errors import ValidationError

GOOD = {"patient": "p-0001", "values": {"spo2": 94, "hr": 88}, "at": 1_700_000_000}


def test_the_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with InboxStore.open(tmp_path) as store:
            store.enqueue(entries.MANUAL_READING, GOOD, "nurse:n-1", 1.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_outcome_is_recorded_once_and_the_entry_is_then_immutable(tmp_path: Path) -> None:
    with InboxStore.open(tmp_path) as store:
        entry = store.enqueue(entries.MANUAL_READING, GOOD, "nurse:n-1", 1.0)
        assert store.prepare(entry.id, {"work": 1}).prepared == {"work": 1}
        assert store.prepare(entry.id, {"work": 2}).prepared == {"work": 1}  # first one kept
        assert store.finish(entry.id, ACCEPTED, "ok", 2.0)
        assert not store.finish(entry.id, REFUSED, "late", 3.0)
        done = store.get(entry.id)
        assert (done.outcome, done.reason, done.processed_at) == (ACCEPTED, "ok", 2.0)
        assert store.open_entries() == []
    with sqlite3.connect(tmp_path / FILE_NAME) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE entries SET body = '{}' WHERE id = ?", (entry.id,))


def test_enqueue_refuses_an_invalid_body_before_storing(tmp_path: Path) -> None:
    with InboxStore.open(tmp_path) as store:
        with pytest.raises(ValidationError) as refused:
            store.enqueue(entries.MANUAL_READING, {**GOOD, "values": {}}, "nurse:n-1", 1.0)
        assert refused.value.field == "values"
        assert store.open_entries() == []


@pytest.mark.parametrize(("body", "field"), [
    ({**GOOD, "values": {"spo2": 101}}, "spo2"),
    ({**GOOD, "values": {"spo2": True}}, "spo2"),
    ({**GOOD, "values": {"sys": 80, "dia": 80}}, "sys"),
    ({**GOOD, "values": {"glucose": 5.4}}, "glucose"),
    ({**GOOD, "values": {"bat": 50}}, "bat"),
    ({**GOOD, "units": {"spo2": "ppm"}}, "spo2"),
    ({**GOOD, "patient": "Jane Doe"}, "patient_id"),
    ({**GOOD, "at": float("nan")}, "at"),
    ({**GOOD, "extra": 1}, "extra"),
    ({"patient": "p-0001", "values": {"hr": 60}}, "at"),
])
def test_manual_bodies_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        entries.validate(entries.MANUAL_READING, body)
    assert refused.value.field == field


def test_a_valid_manual_body_is_normalised_with_units() -> None:
    body = entries.validate(entries.MANUAL_READING, {
        **GOOD, "values": {"glucose": 99, "sys": 120, "dia": 80},
        "units": {"glucose": "mg/dL"}})
    assert body["units"] == {"sys": "mm[Hg]", "dia": "mm[Hg]", "glucose": "mg/dL"}
    assert body["at"] == 1_700_000_000.0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(deadline=None)
@given(kind=st.sampled_from([*entries.KINDS, "other"]), body=_json)
def test_any_body_is_validated_or_refused_with_a_validation_error(kind: str,
                                                                  body: object) -> None:
    try:
        normal = entries.validate(kind, body)
    except ValidationError:
        return
    # accepted bodies are plain JSON that survives the stored form unchanged
    assert entries.decode_body(entries.encode_body(normal)) == normal
    assert entries.validate(kind, normal) == normal


@settings(deadline=None)
@given(text=st.text(max_size=64))
def test_decoding_a_stored_body_never_fails_other_than_with_a_validation_error(
        text: str) -> None:
    try:
        entries.decode_body(text)
    except ValidationError:
        pass


@pytest.mark.parametrize("actor", ["nurse:n-0042", "clinician:dr.x", "patient:p-0001"])
def test_actor_forms_that_fit_the_journal_flag(actor: str) -> None:
    assert entries.check_actor(actor) == actor


@pytest.mark.parametrize("actor", ["n-0042", "Nurse:n-1", "nurse:N-1", "nurse:", "cook:x",
                                   "nurse:" + "a" * 41, "nurse:a b"])
def test_actor_forms_that_are_refused(actor: str) -> None:
    with pytest.raises(ValidationError):
        entries.check_actor(actor)


class Recorder:
    """A handler that counts its calls; `fail_apply` raises like a journal that is down."""

    def __init__(self, refuse: str | None = None) -> None:
        self.prepared = 0
        self.applied: list[Any] = []
        self.refuse = refuse
        self.fail_apply = False

    def prepare(self, entry: Any, body: dict[str, Any]) -> Any:
        self.prepared += 1
        return Refused(self.refuse) if self.refuse else {"n": self.prepared}

    async def apply(self, entry: Any, body: dict[str, Any], prepared: Any) -> str:
        if self.fail_apply:
            raise OSError("journal down")
        self.applied.append(prepared)
        return f"done {prepared.get('n', prepared)}"


def _consume(tmp_path: Path, handler: Recorder) -> InboxConsumer:
    return InboxConsumer(tmp_path, {entries.MANUAL_READING: handler}, poll_s=0.02)


def test_entries_written_while_stopped_are_processed_at_start(tmp_path: Path) -> None:
    with InboxStore.open(tmp_path) as store:
        first = store.enqueue(entries.MANUAL_READING, GOOD, "nurse:n-1", 1.0)
        second = store.enqueue(entries.DEVICE_COMPROMISED,
                               {"device": "ox-1", "reason": "lost", "at": 5}, "technician:t", 1.0)
    handler = Recorder()

    async def scenario() -> None:
        consumer = _consume(tmp_path, handler)
        await consumer.start()
        await consumer.stop()

    asyncio.run(scenario())
    with InboxStore.open(tmp_path) as store:
        assert store.get(first.id).outcome == ACCEPTED
        assert store.get(first.id).reason == "done 1"
        # no handler for that kind in this consumer: refused, not left hanging
        assert store.get(second.id).outcome == REFUSED
    assert handler.applied == [{"n": 1}]


def test_a_failing_apply_is_retried_and_never_recorded_as_refused(tmp_path: Path) -> None:
    handler = Recorder()
    handler.fail_apply = True

    async def scenario() -> str:
        consumer = _consume(tmp_path, handler)
        await consumer.start()
        result = await asyncio.to_thread(client.submit, tmp_path, entries.MANUAL_READING, GOOD,
                                         "nurse:n-1", wait_s=0.3)
        assert result["state"] == client.QUEUED and result["agent_running"]
        handler.fail_apply = False
        for _ in range(100):
            if handler.applied:
                break
            await asyncio.sleep(0.02)
        await consumer.stop()
        return result["id"]

    entry_id = asyncio.run(scenario())
    assert handler.prepared == 1  # prepared once, applied after the failures
    assert handler.applied == [{"n": 1}]
    with InboxStore.open(tmp_path) as store:
        assert store.get(entry_id).outcome == ACCEPTED


def test_a_refusal_is_the_outcome_the_command_prints(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        consumer = _consume(tmp_path, Recorder(refuse="patient unknown"))
        await consumer.start()
        try:
            return await asyncio.to_thread(client.submit, tmp_path, entries.MANUAL_READING,
                                           GOOD, "nurse:n-1", wait_s=5.0)
        finally:
            await consumer.stop()

    result = asyncio.run(scenario())
    assert (result["state"], result["reason"]) == (REFUSED, "patient unknown")


def test_without_an_agent_the_entry_is_queued_and_kept(tmp_path: Path) -> None:
    result = client.submit(tmp_path, entries.MANUAL_READING, GOOD, "nurse:n-1", wait_s=0.1)
    assert (result["state"], result["agent_running"]) == (client.QUEUED, False)
    with InboxStore.open(tmp_path) as store:
        assert [e.id for e in store.open_entries()] == [result["id"]]


_KILLED_CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from edge_agent.inbox import entries
    from edge_agent.inbox.consumer import InboxConsumer

    class DiesAfterPreparing:
        def prepare(self, entry, body):
            return {"built": "once"}
        async def apply(self, entry, body, prepared):
            os.kill(os.getpid(), signal.SIGKILL)  # after `prepared` is durable

    async def main():
        consumer = InboxConsumer(Path(sys.argv[1]),
                                 {entries.MANUAL_READING: DiesAfterPreparing()})
        await consumer.start()

    asyncio.run(main())
""")


def test_a_kill_after_preparing_applies_the_same_prepared_work_once(tmp_path: Path) -> None:
    with InboxStore.open(tmp_path) as store:
        entry = store.enqueue(entries.MANUAL_READING, GOOD, "nurse:n-1", 1.0)
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(tmp_path)],
                           cwd=Path(__file__).resolve().parents[2], timeout=60,
                           capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    with InboxStore.open(tmp_path) as store:
        killed = store.get(entry.id)
    assert killed.outcome is None and killed.prepared == {"built": "once"}

    handler = Recorder()

    async def restart() -> None:
        consumer = _consume(tmp_path, handler)
        await consumer.start()
        await consumer.stop()

    asyncio.run(restart())
    assert handler.prepared == 0  # not rebuilt: the stored work is applied
    assert handler.applied == [{"built": "once"}]
    with InboxStore.open(tmp_path) as store:
        assert store.get(entry.id).outcome == ACCEPTED
