"""`vitalbridge journal verify|export` on real journal files.

edge_agent/cli.py does not list the module yet, so the parser is built here the same way
cli.build_parser does (register() on a subparsers object) and CommandError is mapped to its
exit status as cli.main does. Exit codes: 0 intact, 1 tampered, 2 unreadable.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from edge_agent.cli import CommandError
from edge_agent.commands import journal
from edge_agent.eventlog.store import EventLog
from protocol import crypto, cwt

SEED = bytes(range(32))
PUBLIC = crypto.ed25519_public_key(SEED)
CA_SEED = bytes(range(64, 96))
CA_PUBLIC = crypto.ed25519_public_key(CA_SEED)
GW = "gw-0001"
BASE = 1_700_000_000.0


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vitalbridge")
    journal.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    try:
        status = args.handler(args)
    except CommandError as err:
        print(f"vitalbridge {args.command}: error: {err}", file=sys.stderr)
        status = err.status
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    log = EventLog.open(path, GW, SEED, checkpoint_every=5, clock=lambda: BASE + 20)
    for i in range(12):  # seq s at BASE + s - 1; checkpoints end at 5, 10 and 12
        log.append("transmission.puback", "agent", f"message:{i}",
                   {"digest": f"{i:064x}", "message_id": i, "reason_code": 0}, at=BASE + i)
    log.close()  # the final checkpoint covers all 12
    return path


def tamper(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql)
    conn.close()


def test_verify_intact_text_and_json(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--key", PUBLIC.hex())
    assert status == 0
    assert "intact: 12 entries (seq 1..12), 3 signed checkpoints, signed through seq 12" in out
    assert "note:" not in out
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--json")
    result = json.loads(out)
    assert status == 0 and result["status"] == "intact" and result["trust"] == "embedded"
    assert (result["entries"], result["uncovered"], result["gateway"]) == (12, 0, GW)


def test_verify_without_key_says_what_it_proves(capsys: pytest.CaptureFixture[str],
                                                db: Path) -> None:
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db))
    assert status == 0 and "consistency, not origin" in out


def test_verify_tampered_names_the_reason(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    tamper(db, "UPDATE entries SET actor = 'centre' WHERE seq = 7")
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--key", PUBLIC.hex(),
                         "--json")
    result = json.loads(out)
    assert status == 1 and (result["reason"], result["seq"]) == ("edited", 7)
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--key", PUBLIC.hex())
    assert status == 1 and "TAMPERED (edited)" in out and "seq 7" in out


def test_verify_deleted_entry(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    tamper(db, "DELETE FROM entries WHERE seq = 3")
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--key", PUBLIC.hex())
    assert status == 1 and "(deleted)" in out and "seq 3 missing" in out


def test_verify_with_wrong_key_rejects_checkpoints(capsys: pytest.CaptureFixture[str],
                                                   db: Path) -> None:
    other = crypto.ed25519_public_key(bytes(32))
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--key", other.hex())
    assert status == 1 and "forged-checkpoint" in out


def test_verify_with_certificate_and_ca(capsys: pytest.CaptureFixture[str], db: Path,
                                        tmp_path: Path) -> None:
    cert = cwt.issue_cwt(CA_SEED, "org-ca", GW, PUBLIC, int(BASE) - 10, int(BASE) + 86400 * 365,
                         role="gateway")
    cert_file = tmp_path / "gw.cwt"
    cert_file.write_bytes(cert)
    status, out, _ = cli(capsys, "journal", "verify", "--db", str(db), "--cert", str(cert_file),
                         "--ca", CA_PUBLIC.hex())
    assert status == 0 and "intact" in out
    status, _, err = cli(capsys, "journal", "verify", "--db", str(db), "--cert", str(cert_file),
                         "--ca", PUBLIC.hex())  # not the issuer
    assert status == 2 and "--cert" in err


@pytest.mark.parametrize("content", [None, b"not a database at all" * 100, b""])
def test_unreadable_journal_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    content: bytes | None) -> None:
    path = tmp_path / "x.db"
    if content is not None:
        path.write_bytes(content)
    status, out, err = cli(capsys, "journal", "verify", "--db", str(path))
    assert status == 2 and out == "" and "cannot read the journal" in err
    assert "Traceback" not in err


def test_bad_key_argument_exits_2(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, _, err = cli(capsys, "journal", "verify", "--db", str(db), "--key", "abcd")
    assert status == 2 and "32-byte" in err


def test_export_then_verify_offline(capsys: pytest.CaptureFixture[str], db: Path,
                                    tmp_path: Path) -> None:
    out_file = tmp_path / "audit.jsonl"
    status, out, _ = cli(capsys, "journal", "export", "--db", str(db), "--out", str(out_file))
    assert status == 0 and "exported 12 entries (seq 1..12) and 3 signed checkpoints" in out
    status, out, _ = cli(capsys, "journal", "verify", "--export", str(out_file), "--key",
                         PUBLIC.hex())
    assert status == 0 and "intact: 12 entries" in out
    # A window by ISO time (naive = UTC), 7..8, extended to the checkpoint ending at 10.
    part = tmp_path / "part.jsonl"
    since = "2023-11-14T22:13:26"  # BASE + 6 s
    status, out, _ = cli(capsys, "journal", "export", "--db", str(db), "--out", str(part),
                         "--since", since, "--until", "2023-11-14T22:13:27+00:00")
    assert status == 0 and "(seq 7..10)" in out
    status, out, _ = cli(capsys, "journal", "verify", "--export", str(part), "--key",
                         PUBLIC.hex(), "--json")
    result = json.loads(out)
    assert status == 0 and (result["first_seq"], result["last_seq"]) == (7, 10)


def test_tampered_or_unreadable_export(capsys: pytest.CaptureFixture[str], db: Path,
                                       tmp_path: Path) -> None:
    out_file = tmp_path / "audit.jsonl"
    cli(capsys, "journal", "export", "--db", str(db), "--out", str(out_file))
    lines = out_file.read_text().splitlines()
    lines[-3], lines[-2] = lines[-2], lines[-3]
    out_file.write_text("\n".join(lines) + "\n")
    status, out, _ = cli(capsys, "journal", "verify", "--export", str(out_file), "--key",
                         PUBLIC.hex())
    assert status == 1 and "(reordered)" in out
    out_file.write_text("hello\n")
    status, _, err = cli(capsys, "journal", "verify", "--export", str(out_file))
    assert status == 2 and "cannot read the journal" in err
    status, _, err = cli(capsys, "journal", "export", "--db", str(tmp_path / "none.db"),
                         "--out", str(out_file), "--since", "yesterday")
    assert status == 2 and "ISO-8601" in err
