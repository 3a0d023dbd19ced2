# Run by bench/protocol_bench.py on the MicroPython unix port: prints one JSON line of
# microsecond costs. Plain MicroPython: no CPython modules.
import gc
import json
import sys
import time

sys.path.insert(0, ".")

from protocol import checkpoint, cose, crypto, sealing, senml  # noqa: E402

BATCH = 10
ROUNDS = 30


def records(first_seq):
    return [senml.make_record("hr" if i % 2 else "spo2", 70 + i, time=1700000000 + i,
                              seq=first_seq + i) for i in range(BATCH)]


def best_us(fn, rounds):
    best = None
    for _ in range(rounds):
        gc.collect()
        start = time.ticks_us()
        fn()
        took = time.ticks_diff(time.ticks_us(), start)
        if best is None or took < best:
            best = took
    return best


def main():
    key = bytes(range(32))
    kid = b"\x01" * 8
    seed = bytes(range(32, 64))
    kid_sign = cose.key_id(crypto.ed25519_public_key(seed))  # also builds the base table
    recs = records(0)
    payload = senml.encode_pack(recs, base_name="urn:dev:vb:ox-1:", base_time=1700000000)
    encode_us = best_us(lambda: senml.encode_pack(recs, base_name="urn:dev:vb:ox-1:",
                                                  base_time=1700000000), ROUNDS)
    mac_us = best_us(lambda: cose.mac0_create(key, payload, kid=kid,
                                              content_type=cose.CT_SENML_CBOR), ROUNDS)
    chain = checkpoint.HashChain(kid)
    seq = [0]

    def seal():
        sealing.seal_batch(key, kid, records(seq[0]), "urn:dev:vb:ox-1:",
                           base_time=1700000000, chain=chain)
        seq[0] += BATCH

    seal_us = best_us(seal, ROUNDS)

    def sign():
        chain.extend(seq[0], b"\x22" * 32)
        seq[0] += 1
        chain.checkpoint(seed, "ox-1", 1700000100, kid_sign)

    sign_us = best_us(sign, 5)
    gc.collect()
    print(json.dumps({
        "batch": BATCH,
        "senml_encode_batch_us": encode_us,
        "mac0_batch_us": mac_us,
        "seal_batch_us": seal_us,
        "checkpoint_sign_us": sign_us,
    }))


main()
