"""Where sealing and verifying spend their time, stage by stage, on either interpreter.

    .venv/bin/micropython -X heapsize=8M bench/protocol_profile.py [STAGE ...]
    .venv/bin/python bench/protocol_profile.py [--cprofile] [STAGE ...]

Prints one line per stage: the best, over ROUNDS samples, of the mean microseconds per call
in a sample of CALLS calls (MicroPython: time.ticks_us; CPython: time.perf_counter). Two
batch shapes: "fw", what the firmware seals each second (hr and spo2 as unrounded floats,
sometimes a temperature), and "gw10", the 10-record batch of bench/protocol_bench.py. With
STAGE names only those run. --cprofile (CPython) adds a cProfile table of seal + open.

This is a diagnostic, not a benchmark with goals: bench/protocol_bench.py and
bench/firmware_bench.py hold the goals. Plain MicroPython: no CPython-only modules at the top.
"""

import gc
import sys
import time

sys.path.insert(0, ".")

from protocol import cbor, checkpoint, cose, crypto, sealing, senml  # noqa: E402

ROUNDS = 40
CALLS = 10
BASE_NAME = "urn:dev:vb:ox-1:"
T0 = 1700000000
KEY = bytes(range(32))
KID = b"\x01" * 8

if hasattr(time, "ticks_us"):
    def _now_us():
        return time.ticks_us()

    def _since_us(start):
        return time.ticks_diff(time.ticks_us(), start)
else:
    def _now_us():
        return time.perf_counter() * 1e6

    def _since_us(start):
        return time.perf_counter() * 1e6 - start


def per_call_us(fn):
    """Best over ROUNDS of the mean time of CALLS calls of fn (a collection before each)."""
    best = None
    for _ in range(ROUNDS):
        gc.collect()
        start = _now_us()
        for _ in range(CALLS):
            fn()
        took = _since_us(start) / CALLS
        if best is None or took < best:
            best = took
    return best


def firmware_records(first_seq):
    """The firmware's batch: unrounded float hr/spo2 and a 2-decimal temperature."""
    records = [
        senml.make_record("hr", 72.01684881247699, time=T0),
        senml.make_record("spo2", 96.94390379786606, time=T0),
        senml.make_record("temp", 36.79, unit="Cel", time=T0),
    ]
    for i in range(len(records)):
        records[i][senml.SEQ] = first_seq + i
    return records


def gateway_records(first_seq):
    return [senml.make_record("hr" if i % 2 else "spo2", 70 + i, time=T0 + i, seq=first_seq + i)
            for i in range(10)]


def stages(shape, make_records):
    """(name, fn) pairs for one batch shape."""
    records = make_records(0)
    payload = senml.encode_pack(records, base_name=BASE_NAME, base_time=T0)
    plain_pack = cbor.loads(payload)
    sealed = sealing.seal_batch(KEY, KID, records, BASE_NAME, base_time=T0)
    protected = cose.mac0_parse(sealed).protected_bytes
    chain = checkpoint.HashChain(KID)
    next_seq = [0]

    def seal_chained():
        batch = make_records(next_seq[0])
        next_seq[0] += len(batch)
        sealing.seal_batch(KEY, KID, batch, BASE_NAME, base_time=T0, chain=chain)

    return [
        (shape + ".senml.encode_pack",
         lambda: senml.encode_pack(records, base_name=BASE_NAME, base_time=T0)),
        (shape + ".cbor.dumps(pack)", lambda: cbor.dumps(plain_pack)),
        (shape + ".cbor.dumps(MAC_structure)",
         lambda: cbor.dumps(["MAC0", protected, b"", payload])),
        (shape + ".crypto.hmac_sha256", lambda: crypto.hmac_sha256(KEY, payload)),
        (shape + ".cose.mac0_create",
         lambda: cose.mac0_create(KEY, payload, kid=KID, content_type=cose.CT_SENML_CBOR)),
        (shape + ".cbor.loads(sealed)", lambda: cbor.loads(sealed)),
        (shape + ".cose.mac0_parse", lambda: cose.mac0_parse(sealed)),
        (shape + ".make_records", lambda: make_records(0)),
        (shape + ".make_records+seal_batch+chain", seal_chained),
        (shape + ".cbor.loads(payload)", lambda: cbor.loads(payload)),
        (shape + ".senml.resolve", lambda: senml.resolve(plain_pack)),
        (shape + ".senml.decode_pack", lambda: senml.decode_pack(payload)),
        (shape + ".sealing.open_batch", lambda: sealing.open_batch(KEY, KID, sealed)),
    ]


def run_cprofile():
    import cProfile
    import pstats

    records = gateway_records(0)

    def loop():
        for _ in range(2000):
            sealed = sealing.seal_batch(KEY, KID, records, BASE_NAME, base_time=T0)
            sealing.open_batch(KEY, KID, sealed)

    profiler = cProfile.Profile()
    profiler.runcall(loop)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main():
    args = sys.argv[1:]
    profile = "--cprofile" in args
    wanted = [arg for arg in args if not arg.startswith("--")]
    version = ".".join(str(v) for v in sys.implementation.version[:3])
    print("{} {}: us per call (best of {} x {} calls)".format(
        sys.implementation.name, version, ROUNDS, CALLS))
    for shape, make in (("fw", firmware_records), ("gw10", gateway_records)):
        for name, fn in stages(shape, make):
            if wanted and not [w for w in wanted if w in name]:
                continue
            print("{:<48} {:9.1f}".format(name, per_call_us(fn)))
    if profile:
        run_cprofile()


main()
