"""Where items only a retired key can verify are stored, and how that key checks them.

* A gateway signing key signed event-log checkpoints (`events.sqlite3`, table checkpoints).
* A device session MAC key sealed the batches stored in the reading journal
  (`journal.sqlite3`, table messages, verdict "sealed", column session = the kid); the
  journal row holds the uplink `readings` message whose field carries the device's COSE_Mac0.
Reading is read-only: nothing here changes those files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from edge_agent.eventlog import chain
from edge_agent.eventlog.store import EventLogFile
from edge_agent.reseal.plan import Checker, Item
from protocol import cose, reseal, uplink
from protocol.errors import ProtocolError

EVENTS_FILE = "events.sqlite3"
JOURNAL_FILE = "journal.sqlite3"
CHECKPOINT = "eventlog-checkpoint"
JOURNAL_SEAL = "journal-seal"


def checkpoint_ref(last_seq: int) -> str:
    return f"eventlog:checkpoint:{last_seq}"


def message_ref(row_id: int) -> str:
    return f"journal:message:{row_id}"


def checkpoint_items(events_path: Path, kid: bytes | None = None) -> list[Item]:
    """Checkpoints in the event log signed by `kid` (every checkpoint when None)."""
    if not events_path.is_file():
        return []
    log = EventLogFile.open_readonly(events_path)
    try:
        items = []
        for cp in log.checkpoints():
            try:
                signed_by = cose.sign1_parse(cp.cose).kid
            except ProtocolError:
                signed_by = b""  # unreadable: still an item, its check says "invalid"
            if kid is None or signed_by == kid:
                items.append(Item(CHECKPOINT, checkpoint_ref(cp.last), bytes(cp.cose),
                                  signed_by or kid or b"\x00"))
        return items
    finally:
        log.close()


def checkpoint_checker(gateway_id: str, public_key: bytes,
                       events_path: Path) -> Checker:
    """Verdict of a checkpoint under the retired gateway key: the signature, and the readable
    copy stored next to it says the same as the signed payload."""
    readable = {}
    if events_path.is_file():
        log = EventLogFile.open_readonly(events_path)
        try:
            readable = {checkpoint_ref(cp.last): cp for cp in log.checkpoints()}
        finally:
            log.close()

    def check(item: Item) -> str:
        cp = readable.get(item.ref)
        try:
            msg = cose.sign1_verify(public_key, item.original,
                                    external_aad=chain.CHECKPOINT_AAD,
                                    kid=cose.key_id(public_key))
        except ProtocolError:
            return reseal.INVALID
        if cp is None or msg.payload != chain.checkpoint_payload(
                gateway_id, cp.first, cp.last, cp.head, cp.time):
            return reseal.INVALID
        return reseal.VALID
    return check


def journal_items(journal_path: Path, session_kid: bytes) -> list[Item]:
    """Sealed journal rows of one session (the device's Mac0 bytes, not the envelope)."""
    if not journal_path.is_file():
        return []
    conn = sqlite3.connect(journal_path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, payload FROM messages WHERE session = ? AND "
                            "verdict = 'sealed' ORDER BY id", (session_kid,)).fetchall()
    finally:
        conn.close()
    items = []
    for row_id, payload in rows:
        try:
            sealed = uplink.decode_readings(bytes(payload))[1]
        except ProtocolError:
            sealed = bytes(payload)  # not a readings envelope: the check says "invalid"
        items.append(Item(JOURNAL_SEAL, message_ref(row_id), sealed, session_kid))
    return items


def seal_checker(mac_key_of: Callable[[bytes], bytes | None]) -> Checker:
    """Verdict of a device seal under its session MAC key; "key-wiped" when the session
    store no longer holds the key (the verdict recorded at receipt then stands)."""
    def check(item: Item) -> str:
        key = mac_key_of(item.original_kid)
        if key is None:
            return reseal.KEY_WIPED
        try:
            cose.mac0_verify(key, item.original, kid=item.original_kid)
        except ProtocolError:
            return reseal.INVALID
        return reseal.VALID
    return check


def stored_originals(data_dir: Path) -> dict[str, bytes]:
    """ref -> current bytes of every item a statement may refer to (for verification)."""
    found = {i.ref: i.original for i in checkpoint_items(data_dir / EVENTS_FILE)}
    journal = data_dir / JOURNAL_FILE
    if journal.is_file():
        conn = sqlite3.connect(journal.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT id, payload FROM messages WHERE verdict = 'sealed' "
                                "AND session IS NOT NULL").fetchall()
        finally:
            conn.close()
        for row_id, payload in rows:
            try:
                found[message_ref(row_id)] = uplink.decode_readings(bytes(payload))[1]
            except ProtocolError:
                found[message_ref(row_id)] = bytes(payload)
    return found
