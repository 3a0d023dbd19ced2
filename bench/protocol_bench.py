#!/usr/bin/env python3
"""Protocol costs and sizes, each against a baseline measured in the same run.

    .venv/bin/python bench/protocol_bench.py [--json FILE] [--seconds S]

1. CPython: readings/s through seal + verify + SenML encode/decode (batches of 10), against
   plain cbor2.dumps/loads of the same records (no seal, no validation).
2. MicroPython unix port: per-reading MAC seal cost and the checkpoint signature cost
   (bench/mpy_protocol_bench.py run by the real `micropython` binary).
3. Bytes per reading in a sealed batch of 10, against the same readings as SenML JSON.
Goals (issue 2): sealed reading <= 48 bytes amortised; MAC seal <= 1/100 of a signature.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cbor2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import cose, sealing, senml  # noqa: E402

BATCH = 10
BASE_NAME = "urn:dev:vb:ox-1:"
T0 = 1_700_000_000
KEY = bytes(range(32))
KID = b"\x01" * 8


def batch_records(first_seq: int) -> list[dict]:
    return [senml.make_record("hr" if i % 2 else "spo2", 70 + i, time=T0 + i, seq=first_seq + i)
            for i in range(BATCH)]


def rate(fn, seconds: float) -> float:
    """Calls per second of fn over about `seconds` (best of 3 slices)."""
    best = 0.0
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while time.perf_counter() < deadline:
            fn()
            n += 1
        best = max(best, n / (time.perf_counter() - start))
    return best


def cpython_figures(seconds: float) -> dict[str, float]:
    records = batch_records(0)

    def ours() -> None:
        sealed = sealing.seal_batch(KEY, KID, records, BASE_NAME, base_time=T0)
        opened = sealing.open_batch(KEY, KID, sealed)
        assert len(opened.readings) == BATCH

    plain = [{-2: BASE_NAME, -3: T0, 0: r[0], 2: r[2], 6: r.get(6, 0), 21: r[21]}
             for r in records]

    def baseline() -> None:
        assert len(cbor2.loads(cbor2.dumps(plain))) == BATCH

    ours_per_s = rate(ours, seconds) * BATCH
    base_per_s = rate(baseline, seconds) * BATCH
    return {"cpython_seal_verify_per_s": ours_per_s, "cpython_baseline_per_s": base_per_s}


def size_figures() -> dict[str, float]:
    records = batch_records(0)
    sealed = sealing.seal_batch(KEY, KID, records, BASE_NAME, base_time=T0)
    as_json = []
    for i, r in enumerate(records):
        item = {"n": r[0], "v": r[2], "t": r.get(6, 0), "seq": r[21]}
        if i == 0:
            item = {"bn": BASE_NAME, "bt": T0, **item}
        as_json.append(item)
    # Units as a JSON sender would write them (ours leave implied units off the wire).
    units = {"hr": "beat/min", "spo2": "%"}
    for item in as_json:
        item["u"] = units[item["n"]]
    json_bytes = len(json.dumps(as_json, separators=(",", ":")).encode())
    return {
        "bytes_per_reading_sealed": len(sealed) / BATCH,
        "bytes_per_reading_json": json_bytes / BATCH,
        "sealed_batch_bytes": len(sealed),
        "seal_overhead_bytes": len(sealed) - len(cose.mac0_parse(sealed).payload),
    }


def micropython_figures() -> dict[str, float]:
    exe = Path(sys.executable).parent / "micropython"
    proc = subprocess.run([str(exe), "-X", "heapsize=8M", "bench/mpy_protocol_bench.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"micropython benchmark failed: {proc.stderr.strip()}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    batch = raw["batch"]
    return {
        "micropython_mac_seal_us": raw["mac0_batch_us"] / batch,
        "micropython_full_seal_us": raw["seal_batch_us"] / batch,
        "micropython_senml_encode_us": raw["senml_encode_batch_us"] / batch,
        "micropython_checkpoint_sign_us": raw["checkpoint_sign_us"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per CPython rate")
    args = parser.parse_args()

    figures: dict[str, float] = {}
    figures.update(size_figures())
    figures.update(cpython_figures(args.seconds))
    figures.update(micropython_figures())
    figures["cpython_ratio_to_baseline"] = (figures["cpython_seal_verify_per_s"]
                                            / figures["cpython_baseline_per_s"])
    figures["micropython_mac_to_signature_ratio"] = (figures["micropython_mac_seal_us"]
                                                     / figures["micropython_checkpoint_sign_us"])
    figures["micropython_full_seal_to_signature_ratio"] = (
        figures["micropython_full_seal_us"] / figures["micropython_checkpoint_sign_us"])

    rows = [
        ("sealed reading, batch of 10 (bytes)", figures["bytes_per_reading_sealed"],
         "SenML JSON, unsealed", figures["bytes_per_reading_json"],
         figures["bytes_per_reading_sealed"] / figures["bytes_per_reading_json"], "<= 48 B"),
        ("CPython seal+verify+encode/decode (readings/s)", figures["cpython_seal_verify_per_s"],
         "cbor2 dumps+loads", figures["cpython_baseline_per_s"],
         figures["cpython_ratio_to_baseline"], "-"),
        ("MicroPython MAC seal per reading (us)", figures["micropython_mac_seal_us"],
         "Ed25519 checkpoint signature", figures["micropython_checkpoint_sign_us"],
         figures["micropython_mac_to_signature_ratio"], "<= 0.01"),
        ("MicroPython encode+seal per reading (us)", figures["micropython_full_seal_us"],
         "Ed25519 checkpoint signature", figures["micropython_checkpoint_sign_us"],
         figures["micropython_full_seal_to_signature_ratio"], "(info)"),
    ]
    print(f"{'measure':48} {'value':>12}  {'baseline':30} {'value':>12} {'ratio':>8}  goal")
    for name, value, base_name, base, ratio, goal in rows:
        print(f"{name:48} {value:12.1f}  {base_name:30} {base:12.1f} {ratio:8.4f}  {goal}")
    print(f"sealed batch of {BATCH}: {figures['sealed_batch_bytes']} bytes, of which "
          f"{figures['seal_overhead_bytes']} are COSE_Mac0 overhead")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
