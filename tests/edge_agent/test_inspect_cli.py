"""`vitalbridge inspect` on seals made here and by independent implementations.

Independent makers: pycose, and cbor2 + hmac / PyNaCl assembled by hand from RFC 9052.
Every seal verifies; the same seal with any one byte changed is rejected with a reason
(exit 1); unreadable input is one line on stderr with exit 2.
"""

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import cbor2
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycose.algorithms import HMAC256, EdDSA
from pycose.headers import KID as KidHeader
from pycose.headers import Algorithm, ContentType
from pycose.keys import OKPKey, SymmetricKey
from pycose.keys.curves import Ed25519
from pycose.messages import Mac0Message, Sign1Message

from edge_agent.cli import main
from protocol import checkpoint, cose, crypto, cwt, frames, messages, sealing, senml

MAC_KEY = bytes(range(32))
SEED = bytes(range(32, 64))
PUBLIC = crypto.ed25519_public_key(SEED)
KID = b"\x07" * 8
BASE = "urn:dev:vb:ox-1:"
PACK = senml.encode_pack(
    [senml.make_record("spo2", 97, time=1_700_000_000, seq=1),
     senml.make_record("hr", 71, time=1_700_000_000, seq=2)],
    base_name=BASE,
)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["inspect", *args])
    out, err = capsys.readouterr()
    return status, out, err


def pycose_mac0() -> bytes:
    msg = Mac0Message(phdr={Algorithm: HMAC256, ContentType: 112}, uhdr={KidHeader: KID},
                      payload=PACK)
    msg.key = SymmetricKey(k=MAC_KEY)
    return msg.encode()


def pycose_sign1() -> bytes:
    msg = Sign1Message(phdr={Algorithm: EdDSA}, uhdr={KidHeader: KID}, payload=b"signed")
    msg.key = OKPKey(crv=Ed25519, d=SEED, x=PUBLIC)
    return msg.encode()


def handmade_mac0() -> bytes:
    protected = cbor2.dumps({1: 5, 3: 112})
    to_mac = cbor2.dumps(["MAC0", protected, b"", PACK])
    tag = hmac.new(MAC_KEY, to_mac, hashlib.sha256).digest()
    return cbor2.dumps(cbor2.CBORTag(17, [protected, {4: KID}, PACK, tag]))


def handmade_sign1() -> bytes:
    protected = cbor2.dumps({1: -8})
    to_sign = cbor2.dumps(["Signature1", protected, b"", b"signed"])
    sig = nacl.signing.SigningKey(SEED).sign(to_sign).signature
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {4: KID}, b"signed", sig]))


MAKERS = {
    "pycose-mac0": (pycose_mac0, MAC_KEY),
    "pycose-sign1": (pycose_sign1, PUBLIC),
    "hand-mac0": (handmade_mac0, MAC_KEY),
    "hand-sign1": (handmade_sign1, PUBLIC),
    "ours-mac0": (lambda: sealing.seal_batch(MAC_KEY, KID, [
        senml.make_record("temp", 37.2, time=1_700_000_000, seq=9)], BASE), MAC_KEY),
}


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_independent_seals_verify(capsys: pytest.CaptureFixture[str], maker: str) -> None:
    make, key = MAKERS[maker]
    status, out, _ = run(capsys, make().hex(), "--key", key.hex(), "--json")
    report = json.loads(out)
    assert status == 0
    assert [s["verdict"] for s in report["seals"]] == ["valid"]


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_every_byte_change_is_rejected_with_a_reason(capsys: pytest.CaptureFixture[str],
                                                     maker: str) -> None:
    make, key = MAKERS[maker]
    sealed = make()
    for position in range(len(sealed)):
        forged = bytearray(sealed)
        forged[position] ^= 0x01
        status, out, err = run(capsys, bytes(forged).hex(), "--key", key.hex(),
                               "--kid", KID.hex(), "--json")
        if status == 2:
            # Not readable as COSE any more (e.g. the tag or an array header changed).
            assert err.startswith("vitalbridge inspect: error:") and "\n" == err[-1]
            assert err.count("\n") == 1
            continue
        report = json.loads(out)
        verdicts = [s["verdict"] for s in report["seals"]]
        assert status == 1 and "invalid" in verdicts, (position, report)
        assert all(s["reason"] for s in report["seals"])


def test_mac0_without_key_is_unverifiable_but_readings_shown(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, handmade_mac0().hex(), "--json")
    report = json.loads(out)
    assert status == 0
    assert report["seals"][0]["verdict"] == "unverifiable"
    assert [r["quantity"] for r in report["items"][0]["readings"]] == ["spo2", "hr"]


def test_serial_frame_with_envelope_in_base64(capsys: pytest.CaptureFixture[str]) -> None:
    sealed = handmade_mac0()
    wire = frames.encode_frame(messages.encode("sealed", sealed))
    status, out, _ = run(capsys, base64.b64encode(wire).decode(), "--key", MAC_KEY.hex(),
                         "--json")
    report = json.loads(out)
    assert status == 0
    assert report["layers"][0]["frames"] == 1
    assert report["items"][0]["type"] == "sealed"
    assert report["items"][0]["content"]["seal"]["verdict"] == "valid"


def test_checkpoint_with_certificate(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    issuer_seed = bytes(32)
    cert = cwt.issue_cwt(issuer_seed, "gw-1", "ox-1", PUBLIC, 1_700_000_000, 1_800_000_000,
                         issuer_kid=cose.key_id(crypto.ed25519_public_key(issuer_seed)))
    cert_file = tmp_path / "device.cwt"
    cert_file.write_bytes(cert)
    chain = checkpoint.HashChain(KID)
    chain.extend(1, b"\x11" * 32)
    cp = chain.checkpoint(SEED, "ox-1", 1_700_000_500, cose.key_id(PUBLIC))
    status, out, _ = run(capsys, cp.hex(), "--cert", str(cert_file), "--json",
                         "--at", "2024-01-01T00:00:00")
    report = json.loads(out)
    assert status == 0
    assert report["items"][0]["payload_kind"] == "checkpoint"
    assert report["given_certificate"]["state_now"] == "valid"
    # The certificate itself, checked against its issuer's key, and against a wrong one.
    issuer_pub = crypto.ed25519_public_key(issuer_seed)
    status, out, _ = run(capsys, cert.hex(), "--key", issuer_pub.hex(), "--json")
    assert status == 0 and json.loads(out)["items"][0]["payload_kind"] == "certificate"
    status, out, _ = run(capsys, cert.hex(), "--key", PUBLIC.hex(), "--json")
    assert status == 1


@pytest.mark.parametrize(
    ("arg", "message"),
    [("zz", "neither CBOR"), ("abc", "odd number"), ("@/nonexistent/x", "cannot read"),
     ("0000", "nor a valid serial frame")],
)
def test_unreadable_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], arg: str,
                                            message: str) -> None:
    status, out, err = run(capsys, arg)
    assert status == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_bad_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, handmade_mac0().hex(), "--key", "abcd")
    assert status == 2 and "32 bytes" in err


@given(st.binary(max_size=200))
def test_random_input_never_tracebacks(data: bytes) -> None:
    try:
        status = main(["inspect", data.hex() or "00", "--json"])
    except SystemExit as exc:  # argparse only, never for data
        pytest.fail(f"argparse exit {exc}")
    assert status in (0, 1, 2)


def test_gatt_heart_rate(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["inspect", "--gatt", "2A37", "16480004", "--json"])
    out, _ = capsys.readouterr()
    assert status == 0
    assert json.loads(out)["values"] == [{"n": "hr", "v": 72.0, "u": "beat/min"}]
    status = main(["inspect", "--gatt", "2A37", "17"])
    _, err = capsys.readouterr()
    assert status == 2 and "0x2A37" in err


def test_console_entry_point_human_output() -> None:
    exe = Path(sys.executable).parent / "vitalbridge"
    proc = subprocess.run([str(exe), "inspect", handmade_mac0().hex(), "--key", MAC_KEY.hex()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "spo2" in proc.stdout
