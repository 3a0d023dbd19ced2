"""Security hygiene that needs no running agent (issue 8, item 4).

* Every writer of private key material creates its file 0600 inside a 0700 directory, with
  a permissive umask too (the modes must not depend on the caller's umask): the gateway's
  key files (edge_agent.ca.keyfiles), the organisation CA, the verifier's session-key
  store (edge_agent.pipeline.state_store, with its WAL files) and the firmware keystore on
  the MicroPython unix port (the simulator runs firmware that way).
* No logging or print call in edge_agent/ or simulator/ formats a variable whose name says
  key, seed, secret, private, token or password (AST scan; the few public exceptions are
  listed with the reason and must stay in use).
* pip-audit over the installed environment, when it can reach a vulnerability service.
  When it cannot, the test is skipped with the exact reason; it never passes blind.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def assert_private(files: list[Path]) -> None:
    assert files, "nothing was written"
    for path in files:
        assert mode(path) == PRIVATE_FILE, f"{path} is {mode(path):04o}, not 0600"
        assert mode(path.parent) == PRIVATE_DIR, \
            f"{path.parent} is {mode(path.parent):04o}, not 0700"


# ---------------------------------------------------------------- gateway key files


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_gateway_key_writers_make_0600_files_in_0700_dirs(tmp_path: Path, mask: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from edge_agent.ca import keyfiles

    keys = tmp_path / "gw" / "keys"
    with umask(mask):
        written = [
            keyfiles.write_private(keys / "raw.key", b"\x01" * 32),
            keyfiles.save_ed25519_seed(keys / "gateway-signing.key", b"\x02" * 32),
            keyfiles.save_x25519_private(keys / "gateway-agreement.key", b"\x03" * 32),
            keyfiles.save_private_key(keys / "broker.key", ec.generate_private_key(ec.SECP256R1())),
            keyfiles.write_private(keys / "raw.key", b"\x04" * 32, replace=True),
        ]
    assert_private(written)
    # Nothing else (no temporary file left behind by the atomic write) in the directory.
    assert sorted(p.name for p in keys.iterdir()) == sorted({p.name for p in written})
    assert keyfiles.read_private(keys / "raw.key") == b"\x04" * 32


def test_existing_loose_key_directory_is_refused(tmp_path: Path) -> None:
    from edge_agent.ca import keyfiles

    loose = tmp_path / "keys"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(keyfiles.KeyFileError, match="0755"):
        keyfiles.write_private(loose / "k.key", b"secret")
    assert not (loose / "k.key").exists()


def test_org_ca_private_files_are_0600_in_a_0700_dir(tmp_path: Path) -> None:
    from edge_agent.ca import org_ca

    with umask(0o000):
        ca = org_ca.OrgCA.init(tmp_path / "ca", "Example Health", now=1_700_000_000)
    private = [ca.directory / name for name in
               (org_ca.SIGNING_KEY_FILE, org_ca.TLS_KEY_FILE, org_ca.STATE_FILE)]
    assert_private(private)
    for path in ca.directory.iterdir():  # public material may be 0644, never writable by others
        assert mode(path) & 0o022 == 0, f"{path} is {mode(path):04o}"


# ---------------------------------------------------------------- verifier session keys


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_session_key_store_is_0600_in_a_0700_dir(tmp_path: Path, mask: int) -> None:
    from edge_agent.pipeline.state_store import SessionRow, StateStore

    path = tmp_path / "agent" / "state" / "sessions.db"  # directories created by open()
    with umask(mask):
        store = StateStore.open(path)
        try:
            store.put_session(SessionRow(b"kid-0001", "ox-1", 1.0, b"\x01" * 32, b"\x02" * 32,
                                         b"cert", b"tracker"))
            files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
            # The WAL and shared-memory files carry the keys too: SQLite gives them the
            # database file's mode.
            assert {p.name for p in files} >= {path.name, path.name + "-wal"}
            assert_private(files)
        finally:
            store.close()


# ---------------------------------------------------------------- firmware keystore


KEYSTORE_SCRIPT = """
import os, sys
sys.path.insert(0, ".")
from firmware import keystore
ks = keystore.KeyStore(sys.argv[1], os.urandom, lambda: 1700000000)
ks.load()
print(len(ks.provision()))
"""

# MicroPython's os has no chmod/umask: the launcher (`vitalbridge firmware run-sim`) runs
# the firmware under umask 077 in an owner-only state directory. This test spawns the
# keystore through the same launcher helpers from a process with umask 022.


@pytest.mark.micropython
def test_firmware_keystore_on_unix_port_is_0600_in_0700(tmp_path: Path) -> None:
    from edge_agent.commands import firmware as fw_command

    micropython = Path(sys.executable).parent / "micropython"
    if not micropython.exists():
        pytest.fail("micropython not installed: run scripts/setup.sh (pip extra 'dev')")
    script = tmp_path / "provision.py"
    script.write_text(KEYSTORE_SCRIPT)
    flash = tmp_path / "state" / "flash"
    keys = flash / "keys"
    with umask(0o022):
        fw_command.make_private_dirs(flash.parent, flash)
        proc = fw_command.spawn_firmware(
            [str(micropython), "-X", "heapsize=8M", str(script), str(keys)], dict(os.environ),
            ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.strip() == "2"  # key-generated events: signing and agreement key
    for directory in (flash.parent, flash):
        assert mode(directory) == 0o700, f"{directory} is {mode(directory):04o}"
    assert_private(sorted(keys.glob("*.key")))


# ---------------------------------------------------------------- secrets in log calls


SECRET_NAME = re.compile(r"key|seed|secret|private|token|passw", re.IGNORECASE)
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
SCANNED = ("edge_agent", "simulator")
# (file, name) -> why that name is public. Every entry must still match a call (below).
ALLOWED = {
    ("edge_agent/commands/device.py", "keys"):
        "the withdrawn keys' ids and purposes (result['keys'] holds kid + purpose only)",
    ("edge_agent/commands/device.py", "key"):
        "one {kid, purpose} entry of that list: prints key['kid'] and key['purpose']",
    ("edge_agent/commands/inspect_view.py", "key"):
        "a decoded GATT characteristic's field name (inspect shows a device's value)",
    ("simulator/scenario_run.py", "seed"):
        "the scenario's physiology RNG seed (summary['seed']), printed so a run can be repeated",
}


def _is_output_call(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id == "print"
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "print":  # rich consoles: what a technician's terminal shows
        return True
    return func.attr in LOG_METHODS and re.search("log", ast.unparse(func.value),
                                                 re.IGNORECASE) is not None


def _names(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr
        elif isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Constant) \
                and isinstance(sub.slice.value, str):
            yield sub.slice.value  # row["private_key"]


def secret_names_in_output(source: str) -> list[tuple[int, str]]:
    """(line, name) of every secret-looking name formatted by a log or print call."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _is_output_call(node):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                hits += [(node.lineno, n) for n in _names(arg) if SECRET_NAME.search(n)]
    return hits


def test_scanner_flags_secrets_and_passes_public_values() -> None:
    source = """
import logging
log = logging.getLogger(__name__)
log.info("seed %s", seed)
self._log.warning(f"session {session.device_mac_key.hex()}")
logging.getLogger("x").error("token=%s", extra={"t": auth_token})
print(row["private_key"])
console.print(f"{kid} {public}")
log.info("%d readings", count)
"""
    assert [name for _, name in secret_names_in_output(source)] == [
        "seed", "device_mac_key", "auth_token", "private_key"]


def test_no_log_or_print_call_formats_a_secret() -> None:
    hits = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, name in secret_names_in_output(path.read_text()):
                hits.append((rel, line, name))
    unexplained = [h for h in hits if (h[0], h[2]) not in ALLOWED]
    assert not unexplained, "log/print calls format secret-looking names:\n" + "\n".join(
        f"  {rel}:{line}: {name}" for rel, line, name in unexplained)
    stale = set(ALLOWED) - {(rel, name) for rel, _, name in hits}
    assert not stale, f"allow-list entries no longer needed: {sorted(stale)}"


# ---------------------------------------------------------------- dependency audit


def _pip_audit() -> str:
    found = Path(sys.executable).parent / "pip-audit"
    if found.exists():
        return str(found)
    which = shutil.which("pip-audit")
    if which is None:
        pytest.skip("pip-audit is not installed in this environment (pip install pip-audit)")
    return which


def test_dependency_audit_finds_no_known_vulnerability() -> None:
    proc = subprocess.run(
        [_pip_audit(), "--local", "--format", "json", "--progress-spinner", "off",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        pytest.skip(f"pip-audit could not run (exit {proc.returncode}): "
                    f"{proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads(proc.stdout)
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    # The project itself is installed from this tree, not from PyPI: its skip is expected.
    skipped = [d for d in deps if "skip_reason" in d and d["name"] != "vitalbridge"]
    if not audited:
        pytest.skip(f"pip-audit reached no vulnerability service: all {len(skipped)} "
                    f"dependencies skipped, e.g. {skipped[0]['skip_reason']!r}"
                    if skipped else "pip-audit listed no dependencies")
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in audited if d["vulns"]}
    assert not vulnerable, f"known vulnerabilities: {vulnerable}"
    assert not skipped, f"dependencies pip-audit could not check: {skipped}"
