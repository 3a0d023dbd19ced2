"""Cross-interpreter test vectors: inputs in vectors.json, outputs recomputed here.

`compute(kind, inputs)` turns one vector's inputs into its output bytes (hex strings)
using the real protocol code. scripts/make_vectors.py writes vectors.json on CPython;
tests/mpy/test_vectors.py and tests/protocol/test_vectors.py recompute every vector on
MicroPython and CPython and require the same bytes. JSON has no bytes, non-string keys or
tags, so CBOR values travel in a small tagged form: {"$b": hex}, {"$map": [[k, v], ...]},
{"$tag": n, "$v": value}, {"$f": "nan" | "inf" | "-inf"}.
"""

import binascii

from protocol import (
    cbor,
    checkpoint,
    cose,
    crypto,
    cwt,
    fragments,
    frames,
    messages,
    sealing,
    senml,
    session,
)


def unhex(text):
    return binascii.unhexlify(text)


def tohex(raw):
    return binascii.hexlify(raw).decode()


def from_json(value):
    """Tagged JSON form -> the CBOR data model."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if "$b" in value:
            return unhex(value["$b"])
        if "$map" in value:
            out = {}
            for pair in value["$map"]:
                out[from_json(pair[0])] = from_json(pair[1])
            return out
        if "$tag" in value:
            return cbor.Tag(value["$tag"], from_json(value["$v"]))
        if "$f" in value:
            return float(value["$f"])
        out = {}
        for key in value:
            out[key] = from_json(value[key])
        return out
    return value


def _records(items):
    return [senml.make_record(r["n"], r["v"], unit=r.get("u"), time=r.get("t"), seq=r.get("seq"))
            for r in items]


def _cbor(inp):
    return {"bytes": tohex(cbor.dumps(from_json(inp["value"])))}


def _senml(inp):
    pack = senml.encode_pack(_records(inp["records"]), base_name=inp.get("base_name"),
                             base_time=inp.get("base_time"))
    return {"bytes": tohex(pack)}


def _mac0(inp):
    sealed = cose.mac0_create(unhex(inp["key"]), unhex(inp["payload"]), kid=unhex(inp["kid"]),
                              content_type=inp.get("content_type"),
                              external_aad=unhex(inp.get("aad", "")))
    return {"bytes": tohex(sealed)}


def _sign1(inp):
    signed = cose.sign1_create(unhex(inp["seed"]), unhex(inp["payload"]), kid=unhex(inp["kid"]),
                               external_aad=unhex(inp.get("aad", "")))
    return {"bytes": tohex(signed)}


def _sealed_batch(inp):
    sealed = sealing.seal_batch(unhex(inp["key"]), unhex(inp["kid"]), _records(inp["records"]),
                                inp["base_name"], base_time=inp.get("base_time"))
    return {"bytes": tohex(sealed)}


def _session(inp):
    device_private = unhex(inp["device_private"])
    gateway_private = unhex(inp["gateway_private"])
    gateway_public = crypto.x25519_public_key(gateway_private)
    device = session.DeviceHandshake(inp["device_id"], device_private, gateway_public,
                                     nonce=unhex(inp["device_nonce"]))
    hello = device.hello()
    gw_session, accept = session.gateway_accept(
        hello, crypto.x25519_public_key(device_private), gateway_private, now=inp["now"],
        ephemeral_private=unhex(inp["ephemeral_private"]), nonce=unhex(inp["gateway_nonce"]))
    dev_session = device.finish(accept)
    if dev_session.device_mac_key != gw_session.device_mac_key:
        raise AssertionError("device and gateway derived different keys")
    return {
        "hello": tohex(messages.encode("hello", hello)),
        "accept": tohex(messages.encode("accept", accept)),
        "device_mac_key": tohex(gw_session.device_mac_key),
        "gateway_mac_key": tohex(gw_session.gateway_mac_key),
        "session_id": tohex(gw_session.session_id),
    }


def _checkpoint(inp):
    seed = unhex(inp["seed"])
    chain = checkpoint.HashChain(unhex(inp["session_id"]))
    for seq, tag in inp["tags"]:
        chain.extend(seq, unhex(tag))
    kid = cose.key_id(crypto.ed25519_public_key(seed))
    return {"bytes": tohex(chain.checkpoint(seed, inp["device_id"], inp["time"], kid))}


def _cwt(inp):
    issuer_seed = unhex(inp["issuer_seed"])
    subject_public = crypto.ed25519_public_key(unhex(inp["subject_seed"]))
    token = cwt.issue_cwt(
        issuer_seed, inp["issuer"], inp["subject"], subject_public, inp["nbf"], inp["exp"],
        role=inp.get("role"), model=inp.get("model"), serial=inp.get("serial"),
        cti=unhex(inp["cti"]), issuer_kid=cose.key_id(crypto.ed25519_public_key(issuer_seed)))
    cert = cwt.parse_cwt(token)
    states = [cwt.validity_state(cert, t) for t in inp["instants"]]
    return {"bytes": tohex(token), "states": ",".join(states)}


def _frame(inp):
    return {"bytes": tohex(frames.encode_frame(unhex(inp["payload"])))}


def _fragments(inp):
    parts = fragments.fragment(unhex(inp["message"]), inp["mtu"], inp["message_id"])
    return {"bytes": ",".join([tohex(p) for p in parts])}


def _envelope(inp):
    return {"bytes": tohex(messages.encode(inp["type"], from_json(inp["body"])))}


KINDS = {
    "cbor": _cbor,
    "senml": _senml,
    "mac0": _mac0,
    "sign1": _sign1,
    "sealed_batch": _sealed_batch,
    "session": _session,
    "checkpoint": _checkpoint,
    "cwt": _cwt,
    "frame": _frame,
    "fragments": _fragments,
    "envelope": _envelope,
}


def compute(kind, inputs):
    """Outputs (name -> hex or text) of one vector, from its inputs."""
    return KINDS[kind](inputs)


def check_all(vectors):
    """Recompute every vector; return a list of "name: what differs" (empty when all match)."""
    problems = []
    for vec in vectors:
        try:
            got = compute(vec["kind"], vec["inputs"])
        except Exception as exc:  # report, keep checking the rest
            problems.append("%s: raised %s %s" % (vec["name"], type(exc).__name__, exc))
            continue
        for key in vec["outputs"]:
            if got.get(key) != vec["outputs"][key]:
                problems.append("%s: %s differs" % (vec["name"], key))
    return problems
