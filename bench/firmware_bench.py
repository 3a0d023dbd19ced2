#!/usr/bin/env python3
"""Firmware budgets on the MicroPython unix port, with ESP32 (32-bit, 240 MHz) estimates.

    .venv/bin/python bench/firmware_bench.py [--json FILE] [--seconds S] [--quick]

1. Peak heap of the real firmware modules (MAX30102 + MAX30205 drivers on the simulated
   board, the SpO2 algorithm, Sealer, SeqStore, flash Outbox, framing) while sampling and
   sealing one batch a second, and while also signing a checkpoint every 10 s, on top of
   the resident firmware (modules imported, keys, session, drivers: reported separately):
   * peak (the reported figure): live high-water, gc.collect(); gc.mem_alloc() sampled
     after every step of the loop;
   * bound (not --quick): the smallest `-X heapsize` with which the same run completes
     (bisection) minus the resident heap. It adds transient garbage inside a step (an
     Ed25519 signature's bigints), fragmentation in a tight heap, and the simulated
     sensors' own allocations, which a real board does not have: an upper bound.
   The unix port is 64-bit: a GC block is 32 bytes and every pointer 8. A heap census
   (micropython.mem_info(1)) of what the loop added to the live heap splits blocks into
   typed objects (tuple, list, dict, str/bytes header, float, array, function, module:
   words only, exactly half the size on 32-bit) and untyped ones (data areas: between half
   and the same size). 32-bit figures use the upper bound (untyped counted at full size).
2. Total .mpy size of protocol/ and firmware/ (mpy-cross -march=xtensawin).
3. Per-reading seal cost: protocol.sealing.seal_batch of the loop's batches (encode, MAC,
   chain) timed on this machine, scaled to an ESP32 by the brief's ~1 ms per
   HMAC-SHA256 there over an HMAC timed here (the ruler: pure_hmac's per-call-pad code
   as it was when that figure was adopted, frozen in this file, best of 5); cross-check:
   the brief's Ed25519 signing time on an ESP32 (1.1 s, the upper end) over ours here.
Baselines measured in the same run: the idle firmware heap, protocol/ alone for size, a
bare HMAC-SHA256 of the batch payload for CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = Path(sys.executable).parent / "micropython"
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"

GOAL_SEAL_MS = 2.0
GOAL_HEAP_SAMPLING = 64 * 1024
GOAL_HEAP_CHECKPOINT = 96 * 1024
ESP32_ED25519_SIGN_S = (0.6, 1.1)  # design brief, measured on an ESP32 at 240 MHz
ESP32_HMAC_MS = 1.0  # design brief: HMAC-SHA256 with hardware SHA-256
TYPED_BLOCKS = "TLDSAFBM"  # gc dump head letters of word-only objects (py/gc.c)

WORKLOAD = r"""
import gc, hashlib, json, os, sys, time
sys.path.insert(0, ".")
import micropython
from firmware import sealer as sealer_mod
from firmware.algorithms.spo2 import PulseOximeter
from firmware.drivers.max30102 import Max30102
from firmware.drivers.max30205 import Max30205
from firmware.hal.sim import SimHal
from firmware.keystore import AGREE, PENDING, SIGN, KeyStore
from firmware.outbox import FlashSegments, Outbox
from firmware.seqstore import SeqStore
from protocol import crypto, messages, senml, session
from protocol.checkpoint import HashChain
from protocol.frames import encode_frame
from protocol.sealing import seal_batch

gc.collect()
imported = gc.mem_alloc()
MODE = os.getenv("VB_BENCH_MODE")
SECONDS = int(os.getenv("VB_BENCH_SECONDS"))
WORK = os.getenv("VB_BENCH_DIR")

hal = SimHal(flash_dir=WORK + "/flash", seed=5)
hal.physiology.set(hr=72, spo2=97, temp=36.8)
now = hal.time
ks = KeyStore(WORK + "/keys", hal.random_bytes, now)
ks.load()
ks.provision()
ks.activate(ks.find(SIGN, PENDING)["kid"])
gw_x = bytes(range(1, 33))
shake = ks.handshake("bench-1", crypto.x25519_public_key(gw_x))
gw_session, accept = session.gateway_accept(shake.hello(), ks.find(AGREE, "active")["public"],
                                            gw_x, now=now())
seqs = SeqStore(WORK + "/seq")
seqs.load()
box = Outbox(FlashSegments(WORK + "/outbox"), now)
box.load()
seal = sealer_mod.Sealer("bench-1", ks, seqs, box, now, checkpoint_interval=10 ** 9)
seal.start_session(shake.finish(accept))
oximeter_drv = Max30102(hal.i2c(), hal)
oximeter_drv.start()
thermo = Max30205(hal.i2c(), hal)
thermo.start()
oximeter = PulseOximeter(oximeter_drv.output_rate, window_s=8)
del shake, gw_session, accept
gc.collect()
setup = gc.mem_alloc()
live_peak = setup
seal_us = 0
cpu_us = 0
scratch_chain = HashChain(b"\x00" * 8)
scratch_seq = 0
batches = 0
readings = 0
sign_us = []
frames = 0


def sample_live():
    global live_peak
    gc.collect()
    used = gc.mem_alloc()
    if used > live_peak:
        live_peak = used


if MODE != "idle":
    for second in range(SECONDS):
        for _ in range(4):
            hal.clock.advance_ms(250)
            batch = oximeter_drv.read_fifo()
            oximeter.add(batch.red, batch.ir, batch.gap)
            sample_live()
        estimate = oximeter.estimate()
        records = []
        t = now()
        if estimate.valid():
            records.append(senml.make_record("hr", estimate.hr, time=t))
            records.append(senml.make_record("spo2", estimate.spo2, time=t))
        if second % 5 == 0:
            records.append(senml.make_record("temp", round(thermo.measure(), 2), unit="Cel",
                                             time=t))
        sample_live()
        if records:
            # The computation alone (encode, MAC, chain) on numbered copies...
            numbered = []
            for record in records:
                copy = dict(record)
                copy[senml.SEQ] = scratch_seq
                scratch_seq += 1
                numbered.append(copy)
            start = time.ticks_us()
            seal_batch(b"\x11" * 32, b"\x22" * 8, numbered, "urn:dev:vb:bench-1:",
                       base_time=t, chain=scratch_chain)
            cpu_us += time.ticks_diff(time.ticks_us(), start)
            # ...and the firmware's whole path: reserve seqs on flash, seal, outbox.
            start = time.ticks_us()
            seal.seal(records, base_time=t)
            seal_us += time.ticks_diff(time.ticks_us(), start)
            batches += 1
            readings += len(records)
        sample_live()
        if MODE == "checkpoint" and second % 10 == 9:
            start = time.ticks_us()
            seal.checkpoint()
            sign_us.append(time.ticks_diff(time.ticks_us(), start))
            sample_live()
        for entry in box.take_unsent():
            encode_frame(messages.encode("sealed", entry.data))
            frames += 1
        box.tick()
        sample_live()



def ruler_hmac(key, data):
    # The ruler: HMAC-SHA256 exactly as protocol/crypto/pure_hmac.py wrote it when the
    # ~1 ms ESP32 figure was adopted (pads XORed per call). Frozen here so that speeding
    # up the protocol's HMAC does not move the ruler the seal is measured against.
    key = bytes(key) + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(key[i] ^ 0x36 for i in range(64)))
    inner.update(data)
    outer = hashlib.sha256(bytes(key[i] ^ 0x5C for i in range(64)))
    outer.update(inner.digest())
    return outer.digest()


payload = bytes(120)
key = bytes(32)
assert ruler_hmac(key, payload) == crypto.hmac_sha256(key, payload)
hmac_us = None
for _ in range(5):  # best of 5: other processes on the machine only ever add time
    start = time.ticks_us()
    for _ in range(100):
        ruler_hmac(key, payload)
    took = time.ticks_diff(time.ticks_us(), start) / 100
    hmac_us = took if hmac_us is None or took < hmac_us else hmac_us
if os.getenv("VB_BENCH_CENSUS"):
    gc.collect()
    micropython.mem_info(1)
print("RESULT " + json.dumps({
    "mode": MODE, "imported": imported, "setup": setup, "live_peak": live_peak,
    "gc_total": gc.mem_alloc() + gc.mem_free(), "seal_us": seal_us, "cpu_us": cpu_us,
    "batches": batches,
    "readings": readings, "sign_us": sign_us, "hmac_us": hmac_us, "frames": frames}))
"""


def run_workload(mode: str, seconds: int, heapsize: int, census: bool = False) -> dict | None:
    """One run of the MicroPython workload; None if it ran out of memory."""
    with tempfile.TemporaryDirectory(prefix="vb-fwbench-") as work:
        script = Path(work) / "workload.py"
        script.write_text(WORKLOAD)
        env = {"VB_BENCH_MODE": mode, "VB_BENCH_SECONDS": str(seconds), "VB_BENCH_DIR": work,
               "PATH": "/usr/bin:/bin"}
        if census:
            env["VB_BENCH_CENSUS"] = "1"
        proc = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heapsize}", str(script)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        if "MemoryError" in proc.stderr + proc.stdout:
            return None
        raise SystemExit(f"workload {mode} failed:\n{proc.stderr}")
    result_line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result = json.loads(result_line[len("RESULT "):])
    if census:
        result["census"] = heap_census(proc.stdout)
    return result


def heap_census(dump: str) -> dict[str, int]:
    """Count 64-bit GC blocks of typed (word-only) and untyped allocations in a
    micropython.mem_info(1) dump: heads are letters, tails '=', free '.'."""
    typed = untyped = 0
    current = None
    for line in dump.splitlines():
        match = re.match(r"^[0-9a-f]{8}: (\S+)$", line)
        if not match:
            continue
        for char in match.group(1):
            if char == "=":
                if current == "typed":
                    typed += 1
                elif current == "untyped":
                    untyped += 1
            elif char == ".":
                current = None
            elif char in TYPED_BLOCKS:
                current = "typed"
                typed += 1
            else:
                current = "untyped"
                untyped += 1
    return {"typed_blocks": typed, "untyped_blocks": untyped}


def bit32_factor(typed: int, untyped: int) -> float:
    """Upper bound of 32-bit/64-bit heap bytes for a census (1.0 when it is empty)."""
    total = typed + untyped
    return (0.5 * typed + untyped) / total if total else 1.0


def min_heapsize(mode: str, seconds: int, low: int, high: int, step: int = 2048) -> int:
    """Smallest -X heapsize (to `step` bytes) with which the workload completes."""
    if run_workload(mode, seconds, high) is None:
        raise SystemExit(f"{mode}: does not fit even in {high} bytes")
    while high - low > step:
        middle = (low + high) // 2
        if run_workload(mode, seconds, middle) is None:
            low = middle
        else:
            high = middle
    return high


def mpy_sizes() -> dict[str, int]:
    """.mpy bytes for xtensawin: protocol/, firmware/, and firmware/ without the simulator."""
    sizes = {"protocol": 0, "firmware": 0, "firmware_sim": 0}
    with tempfile.TemporaryDirectory(prefix="vb-mpy-") as out:
        for package in ("protocol", "firmware"):
            for source in sorted((ROOT / package).rglob("*.py")):
                target = Path(out) / source.relative_to(ROOT).with_suffix(".mpy")
                target.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run([str(MPY_CROSS), "-march=xtensawin", "-o", str(target),
                                str(source)], check=True, cwd=ROOT)
                size = target.stat().st_size
                sizes[package] += size
                if package == "firmware" and source.parent.name == "hal" and \
                        source.name.startswith("sim"):
                    sizes["firmware_sim"] += size
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--seconds", type=int, default=60, help="simulated seconds per run")
    parser.add_argument("--quick", action="store_true",
                        help="skip the heapsize bisection (live high-water only)")
    args = parser.parse_args()
    big = 8 * 1024 * 1024

    idle = run_workload("idle", args.seconds, big, census=True)
    sampling = run_workload("sampling", args.seconds, big, census=True)
    checkpoint = run_workload("checkpoint", args.seconds, big)
    assert idle and sampling and checkpoint
    # 32-bit bytes per 64-bit byte: typed blocks exactly 0.5, untyped at most 1.0; for the
    # resident heap from the idle census, for the working heap from what the loop added.
    factor_resident = bit32_factor(idle["census"]["typed_blocks"],
                                   idle["census"]["untyped_blocks"])
    census = {key: sampling["census"][key] - idle["census"][key]
              for key in ("typed_blocks", "untyped_blocks")}
    factor_high = bit32_factor(max(census["typed_blocks"], 0),
                               max(census["untyped_blocks"], 0))
    factor_low = 0.5

    figures: dict[str, float] = {
        "resident_heap_bytes_64bit": idle["setup"],
        "imported_heap_bytes_64bit": idle["imported"],
        "live_peak_sampling_64bit": sampling["live_peak"] - idle["setup"],
        "live_peak_checkpoint_64bit": checkpoint["live_peak"] - idle["setup"],
        "bit32_factor_high": factor_high,
        "bit32_factor_low": factor_low,
    }
    # The sampled live high-water (the brief's definition) is the reported peak; the
    # bisection adds an upper bound: transient garbage, fragmentation in a tight heap and
    # the simulated sensors' own allocations (which a real board does not have).
    figures["peak_heap_bytes_sampling"] = figures["live_peak_sampling_64bit"] * factor_high
    figures["peak_heap_bytes_checkpoint"] = figures["live_peak_checkpoint_64bit"] * factor_high
    if not args.quick:
        idle_heap = min_heapsize("idle", args.seconds, 16 * 1024, 2 * 1024 * 1024)
        sampling_heap = min_heapsize("sampling", args.seconds, idle_heap, 2 * 1024 * 1024)
        checkpoint_heap = min_heapsize("checkpoint", args.seconds, idle_heap, 4 * 1024 * 1024)
        figures.update({
            "min_heapsize_idle_64bit": idle_heap,
            "min_heapsize_sampling_64bit": sampling_heap,
            "min_heapsize_checkpoint_64bit": checkpoint_heap,
            "needed_heap_bytes_sampling": (sampling_heap - idle["setup"]) * factor_high,
            "needed_heap_bytes_checkpoint": (checkpoint_heap - idle["setup"]) * factor_high,
        })
    figures["resident_heap_bytes"] = idle["setup"] * factor_resident
    figures["bit32_factor_resident"] = factor_resident

    sizes = mpy_sizes()
    figures["mpy_total_bytes"] = sizes["protocol"] + sizes["firmware"]
    figures["mpy_protocol_bytes"] = sizes["protocol"]
    figures["mpy_board_bytes"] = figures["mpy_total_bytes"] - sizes["firmware_sim"]

    sign_s = sum(checkpoint["sign_us"]) / len(checkpoint["sign_us"]) / 1e6
    per_batch_readings = sampling["readings"] / sampling["batches"]
    cpu_batch_us = sampling["cpu_us"] / sampling["batches"]
    # Primary scale: the brief's ~1 ms HMAC-SHA256 on the ESP32 runs this same code
    # (pure_hmac: interpreted pads around native SHA-256), as sealing mixes interpreted
    # CBOR/COSE work with native hashing. Cross-check: the brief's Ed25519 signature time
    # over ours here -- bigint-bound, where a 64-bit host gains most, so an upper bound.
    scale = ESP32_HMAC_MS * 1000 / sampling["hmac_us"]
    scale_ed25519 = ESP32_ED25519_SIGN_S[1] / sign_s
    figures.update({
        "seal_cpu_us_per_reading_here": cpu_batch_us / per_batch_readings,
        "seal_full_us_per_reading_here": sampling["seal_us"] / sampling["readings"],
        "hmac_us_here": sampling["hmac_us"],
        "ed25519_sign_ms_here": sign_s * 1000,
        "esp32_scale": scale,
        "esp32_scale_ed25519": scale_ed25519,
        "readings_per_batch": per_batch_readings,
        "seal_ms_esp32_estimate": cpu_batch_us * scale / 1000 / per_batch_readings,
        "seal_ms_esp32_estimate_ed25519_scale":
            cpu_batch_us * scale_ed25519 / 1000 / per_batch_readings,
        "esp32_checkpoint_sign_ms_estimate": sign_s * 1000 * scale,
    })

    rows = [
        ("live peak, sampling+sealing (B, 32-bit)", figures["peak_heap_bytes_sampling"],
         GOAL_HEAP_SAMPLING, "resident firmware heap", figures["resident_heap_bytes"]),
        ("live peak, with checkpoint (B, 32-bit)", figures["peak_heap_bytes_checkpoint"],
         GOAL_HEAP_CHECKPOINT, "resident firmware heap", figures["resident_heap_bytes"]),
    ]
    if not args.quick:
        rows += [
            ("  bound: tight-heap need, sampling", figures["needed_heap_bytes_sampling"],
             GOAL_HEAP_SAMPLING, "resident firmware heap", figures["resident_heap_bytes"]),
            ("  bound: tight-heap need, checkpoint", figures["needed_heap_bytes_checkpoint"],
             GOAL_HEAP_CHECKPOINT, "resident firmware heap", figures["resident_heap_bytes"]),
        ]
    rows += [
        ("seal per reading, ESP32 est. (ms)", figures["seal_ms_esp32_estimate"], GOAL_SEAL_MS,
         "HMAC-SHA256 on ESP32 (ms)", ESP32_HMAC_MS),
        ("seal per reading, this machine (us)", figures["seal_cpu_us_per_reading_here"], None,
         "HMAC-SHA256 here (us)", figures["hmac_us_here"]),
        ("  + seq reservation, outbox (us)", figures["seal_full_us_per_reading_here"], None,
         "HMAC-SHA256 here (us)", figures["hmac_us_here"]),
        (".mpy protocol/ + firmware/ (B)", figures["mpy_total_bytes"], None,
         "protocol/ alone", figures["mpy_protocol_bytes"]),
    ]
    print(f"{'measure':44} {'value':>10} {'goal':>8} {'/goal':>6}  {'baseline':26} "
          f"{'value':>10} {'/base':>6}")
    for name, value, goal, base_name, base in rows:
        goal_text = f"{goal:8.0f}" if goal else f"{'-':>8}"
        ratio_goal = f"{value / goal:6.2f}" if goal else f"{'-':>6}"
        print(f"{name:44} {value:10.1f} {goal_text} {ratio_goal}  {base_name:26} {base:10.1f} "
              f"{value / base:6.2f}")
    print(f"64-bit: resident {idle['setup']} B (modules {idle['imported']} B), live peak "
          f"+{figures['live_peak_sampling_64bit']} / +{figures['live_peak_checkpoint_64bit']} B"
          + ("" if args.quick else
             f"; min heapsize idle {figures['min_heapsize_idle_64bit']}, sampling "
             f"{figures['min_heapsize_sampling_64bit']}, checkpoint "
             f"{figures['min_heapsize_checkpoint_64bit']}"))
    print(f"32-bit factor {factor_low:.2f}..{factor_high:.2f} (census: "
          f"{census['typed_blocks']} typed, {census['untyped_blocks']} untyped blocks); "
          f"ESP32 scale {scale:.0f}x from HMAC {sampling['hmac_us']:.1f} us here (Ed25519 "
          f"cross-check {scale_ed25519:.0f}x: {figures['seal_ms_esp32_estimate_ed25519_scale']:.1f}"
          f" ms/reading); {per_batch_readings:.2f} readings per batch")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
