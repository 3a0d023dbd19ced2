"""COSE_Mac0 and COSE_Sign1 (RFC 9052 structures, RFC 9053 algorithms).

Only what VitalBridge seals with: HMAC 256/256 (alg 5, full 32-byte tag) for readings and
EdDSA/Ed25519 (alg -8) for checkpoints and certificates. Verification follows the RFC
exactly, so any conforming COSE library can create or check our seals (the tests prove it
with pycose and with a hand-built cbor2 + hmac/PyNaCl implementation):

    COSE_Mac0  = #6.17([protected: bstr .cbor map, unprotected: map,
                        payload: bstr / nil, tag: bstr])
    COSE_Sign1 = #6.18([protected, unprotected, payload, signature: bstr])
    MAC_structure = ["MAC0", protected, external_aad, payload]
    Sig_structure = ["Signature1", protected, external_aad, payload]

The MAC/signature covers the protected header *as received* (never re-encoded). The
unprotected header is not covered; that is why verifiers take an expected `kid`: a receiver
that picked its key by kid must insist the message names that same key.

Every failure raises SealError whose message is the specific reason (see docs/seals.md).
Runs on MicroPython: plain classes, no typing.
"""

from protocol import cbor, crypto
from protocol.checks import hexstr, is_int
from protocol.errors import DecodeError, SealError, ValidationError

TAG_MAC0 = 17
TAG_SIGN1 = 18
ALG_HMAC_256_256 = 5
ALG_EDDSA = -8

# Common header parameter labels (RFC 9052 §3.1).
H_ALG = 1
H_CRIT = 2
H_CONTENT_TYPE = 3
H_KID = 4

# CoAP Content-Format number of application/senml+cbor (RFC 8428 §12.3). An int costs one
# or two bytes where the media-type string would cost 23.
CT_SENML_CBOR = 112

MAC_KEY_SIZE = 32
MAC_TAG_SIZE = 32
SIGNATURE_SIZE = 64
KID_MAX = 64
KEY_ID_SIZE = 8

# Labels a `crit` header may list: we process these ourselves (RFC 9052 §3.1 "crit").
_UNDERSTOOD = (H_ALG, H_CONTENT_TYPE, H_KID)
# Builtins bound as module globals: MicroPython looks a builtin up in the module's globals
# first, and that miss costs more than a hit (docs/cbor.md, "Hot-path pass").
_type = type
_len = len
_NAMES = {TAG_MAC0: "COSE_Mac0", TAG_SIGN1: "COSE_Sign1"}



def _is_bytes(value):
    return isinstance(value, (bytes, bytearray))


def key_id(public_key):
    """The kid VitalBridge uses for a public key: the first 8 bytes of SHA-256(key)."""
    if not _is_bytes(public_key):
        raise ValidationError("public_key", "must be bytes")
    return crypto.sha256(bytes(public_key))[:KEY_ID_SIZE]


class CoseMessage:
    """A structurally valid COSE_Mac0 / COSE_Sign1 (verified only if `verified` is True).

    protected/unprotected are the decoded header maps, protected_bytes the exact bstr the
    MAC or signature covers, `tag` the MAC tag or the signature.
    """

    def __init__(self, structure, tagged, protected_bytes, protected, unprotected, payload, tag):
        self.structure = structure
        self.tagged = tagged
        self.protected_bytes = protected_bytes
        self.protected = protected
        self.unprotected = unprotected
        self.payload = payload
        self.tag = tag
        self.verified = False

    def header(self, label):
        """A header parameter from whichever bucket holds it, or None."""
        if label in self.protected:
            return self.protected[label]
        return self.unprotected.get(label)

    @property
    def alg(self):
        return self.protected.get(H_ALG)

    @property
    def kid(self):
        return self.header(H_KID)

    @property
    def content_type(self):
        return self.header(H_CONTENT_TYPE)

    @property
    def detached(self):
        return self.payload is None

    def __repr__(self):
        return "<%s alg=%r kid=%r payload=%s>" % (
            self.structure,
            self.alg,
            self.kid,
            "detached" if self.payload is None else "%d bytes" % len(self.payload),
        )


class Mac0(CoseMessage):
    """A COSE_Mac0; `tag` is the 32-byte HMAC."""


class Sign1(CoseMessage):
    """A COSE_Sign1; `tag` (alias `signature`) is the 64-byte Ed25519 signature."""

    @property
    def signature(self):
        return self.tag


# ---------------------------------------------------------------- decoding


def _load(data, what, max_size):
    if not _is_bytes(data):
        raise SealError("%s must be bytes, not %s" % (what, type(data).__name__))
    try:
        return cbor.loads(data, max_size=max_size)
    except DecodeError as exc:
        raise SealError("%s is not valid CBOR: %s" % (what, exc)) from None


def _check_labels(header, bucket):
    for label in header:
        if not is_int(label) and not isinstance(label, str):
            raise SealError("%s header label %r is neither int nor text" % (bucket, label))


def _decode_protected(raw):
    if not isinstance(raw, bytes):
        raise SealError("protected header must be a bstr-wrapped map")
    if len(raw) == 0:
        return {}  # RFC 9052 §3: no protected parameters is a zero-length bstr
    try:
        header = cbor.loads(raw)
    except DecodeError as exc:
        raise SealError("protected header is not valid CBOR: %s" % exc) from None
    if not isinstance(header, dict):
        raise SealError("protected header must be a bstr-wrapped map")
    return header


def _check_headers(protected, unprotected, expected_alg):
    _check_labels(protected, "protected")
    _check_labels(unprotected, "unprotected")
    for label in protected:
        if label in unprotected:
            raise SealError("label %r in both protected and unprotected headers" % (label,))
    if H_ALG not in protected:
        if H_ALG in unprotected:
            raise SealError("alg must be in protected header")
        raise SealError("alg missing from protected header")
    alg = protected[H_ALG]
    if alg != expected_alg or not is_int(alg):
        raise SealError("unsupported alg %r" % (alg,))
    if H_CRIT in unprotected:
        raise SealError("crit must be in protected header")
    if H_CRIT in protected:
        crit = protected[H_CRIT]
        if not isinstance(crit, list) or not crit:
            raise SealError("crit must be a non-empty array of labels")
        for label in crit:
            if label not in _UNDERSTOOD or not is_int(label):
                raise SealError("crit label %r not understood" % (label,))
            if label not in protected:
                raise SealError("crit label %r not in protected header" % (label,))
    for bucket in (protected, unprotected):
        if H_KID in bucket:
            kid = bucket[H_KID]
            if not isinstance(kid, bytes):
                raise SealError("kid not bytes")
            if len(kid) > KID_MAX:
                raise SealError("kid longer than %d bytes" % KID_MAX)
        if H_CONTENT_TYPE in bucket and not _valid_content_type(bucket[H_CONTENT_TYPE]):
            raise SealError("content type must be a uint16 or text")


def _valid_content_type(value):
    return (is_int(value) and 0 <= value <= 65535) or isinstance(value, str)


def _parse(data, cose_tag, expected_alg, tag_size, max_size, cls):
    name = _NAMES[cose_tag]
    obj = _load(data, name, max_size)
    tagged = False
    if isinstance(obj, cbor.Tag):
        if obj.tag != cose_tag:
            raise SealError("not a %s (tag %d)" % (name, obj.tag))
        obj = obj.value
        tagged = True
    if not isinstance(obj, list):
        raise SealError("not a %s (tag %d or a 4-item array expected)" % (name, cose_tag))
    if len(obj) != 4:
        raise SealError("%s must have 4 items, not %d" % (name, len(obj)))
    protected_bytes, unprotected, payload, tag = obj
    protected = _decode_protected(protected_bytes)
    if not isinstance(unprotected, dict):
        raise SealError("unprotected header must be a map")
    _check_headers(protected, unprotected, expected_alg)
    if payload is not None and not isinstance(payload, bytes):
        raise SealError("payload must be bstr or nil")
    if not isinstance(tag, bytes):
        raise SealError("%s must be a bstr" % ("tag" if cose_tag == TAG_MAC0 else "signature"))
    if len(tag) != tag_size:
        raise SealError(
            "%s must be %d bytes, not %d"
            % ("tag" if cose_tag == TAG_MAC0 else "signature", tag_size, len(tag))
        )
    return cls(name, tagged, protected_bytes, protected, unprotected, payload, tag)


def _payload_to_check(msg, detached_payload):
    if msg.payload is None:
        if detached_payload is None:
            raise SealError("payload detached (nil) but no detached payload given")
        if not _is_bytes(detached_payload):
            raise SealError("detached payload must be bytes")
        return bytes(detached_payload)
    if detached_payload is not None:
        raise SealError("payload is attached; a detached payload was not expected")
    return msg.payload


def _check_kid(msg, kid):
    if kid is None:
        return
    if msg.kid is None:
        raise SealError("kid missing (expected %s)" % hexstr(kid))
    if not crypto.constant_time_equal(bytes(msg.kid), bytes(kid)):
        raise SealError("kid mismatch")



def _bytes_arg(field, value):
    if _type(value) is bytes:
        return value  # the common case, without a copy
    if not _is_bytes(value):
        raise ValidationError(field, "must be bytes, not %s" % type(value).__name__)
    return bytes(value)


# Protected header bytes per (alg, content_type): a device seals every batch with the same
# pair, so the map is encoded once. Only validated None/int/str content types are cached.
_protected_cache = {}


def _build_protected(alg, content_type):
    if content_type is not None and not _valid_content_type(content_type):
        raise ValidationError("content_type", "must be a uint16 CoAP format or a text type")
    cache_key = (alg, content_type)
    protected = _protected_cache.get(cache_key)
    if protected is None:
        header = {H_ALG: alg}
        if content_type is not None:
            header[H_CONTENT_TYPE] = content_type
        protected = cbor.dumps(header)
        if len(_protected_cache) < 8:
            _protected_cache[cache_key] = protected
    return protected


def _check_kid_arg(kid):
    if kid is None:
        return None
    kid = _bytes_arg("kid", kid)
    if _len(kid) > KID_MAX:
        raise ValidationError("kid", "longer than %d bytes" % KID_MAX)
    return kid


# The COSE arrays are written head by head below instead of through cbor.dumps of nested
# lists and dicts: every item is a bstr, nil or the one-entry {4: kid} map, so the
# deterministic encoding is fixed and the generic walk (a third of a seal on MicroPython)
# buys nothing. tests/firmware/test_seal_fast_path.py and tests/mpy/test_fw_seal.py hold
# these bytes to the cbor.dumps construction.
_put_head = cbor.encode_head_into

# ["MAC0", ...] and ["Signature1", ...]: array(4) then the context text string.
_MAC0_CONTEXT = b"\x84\x64MAC0"
_SIGN1_CONTEXT = b"\x84\x6aSignature1"


def _put_bstr(out, data):
    _put_head(out, 0x40, _len(data))
    out += data


def _structure_head(context, protected_bytes, external_aad, payload_size):
    """MAC_structure / Sig_structure (RFC 9052 §6.3, §4.4) as deterministic CBOR, up to
    and including the payload's bstr head: the payload bytes follow it."""
    out = bytearray(context)
    _put_bstr(out, protected_bytes)
    _put_bstr(out, external_aad)
    _put_head(out, 0x40, payload_size)
    return out


def _emit(cose_tag, protected_bytes, kid, payload, tag, tagged):
    """[protected, {4: kid} or {}, payload or nil, tag], optionally as tag 17/18."""
    out = bytearray()
    if tagged:
        out.append(0xC0 | cose_tag)  # 17 and 18 are below 24: a one-byte tag head
    out.append(0x84)
    _put_bstr(out, protected_bytes)
    if kid is None:
        out.append(0xA0)
    else:
        out.append(0xA1)
        out.append(H_KID)
        _put_bstr(out, kid)
    if payload is None:
        out.append(0xF6)
    else:
        _put_bstr(out, payload)
    _put_bstr(out, tag)
    return bytes(out)


# ---------------------------------------------------------------- COSE_Mac0


def _mac_key(key):
    key = _bytes_arg("key", key)
    if _len(key) != MAC_KEY_SIZE:
        raise ValidationError("key", "HMAC 256/256 key must be %d bytes" % MAC_KEY_SIZE)
    return key


def _mac(key, protected_bytes, external_aad, payload):
    # crypto.hmac_key: a session MACs every batch and ack under the same key, padded once.
    head = _structure_head(_MAC0_CONTEXT, protected_bytes, external_aad, _len(payload))
    return crypto.hmac_key(key).digest(head, payload)


def mac0_create(key, payload, kid=None, content_type=None, external_aad=b"", tagged=True,
                detached=False):
    """COSE_Mac0 bytes over `payload` with HMAC 256/256 under the 32-byte `key`.

    alg and content_type go in the protected header, kid in the unprotected one.
    detached=True sends nil in place of the payload (the MAC still covers it).
    """
    key = _mac_key(key)
    payload = _bytes_arg("payload", payload)
    external_aad = _bytes_arg("external_aad", external_aad)
    protected_bytes = _build_protected(ALG_HMAC_256_256, content_type)
    kid = _check_kid_arg(kid)
    tag = _mac(key, protected_bytes, external_aad, payload)
    return _emit(TAG_MAC0, protected_bytes, kid, None if detached else payload, tag, tagged)


def mac0_parse(data, max_size=65536):
    """Structural checks only (no key): -> Mac0 with verified=False. Raises SealError."""
    msg = _mac0_common(data, max_size)
    if msg is not None:
        return msg
    return _parse(data, TAG_MAC0, ALG_HMAC_256_256, MAC_TAG_SIZE, max_size, Mac0)


# The COSE_Mac0 a sealed batch arrives as (what mac0_create writes for content type 112
# and a kid): tag 17, array(4), the protected bstr {1: 5, 3: 112}, then {4: kid}.
_MAC0_SENML_HEAD = b"\xd1\x84\x46\xa2\x01\x05\x03\x18\x70\xa1\x04"
_MAC0_SENML_PROTECTED = b"\xa2\x01\x05\x03\x18\x70"


def _mac0_common(data, max_size):
    """`_parse`'s Mac0 for exactly that shape (a kid of 1..23 bytes, an attached payload
    below 64 KiB, the 32-byte tag last), read by slicing instead of decoding; None for
    anything else, and the general `_parse` then decides. Every check `_parse` makes holds
    for this shape by construction (alg 5, content type 112, kid size, tag size)."""
    if _type(data) is not bytes or not data.startswith(_MAC0_SENML_HEAD):
        return None
    end = _len(data)
    if end > max_size or end < 48:  # the smallest: 11 + kid 2 + payload 1 + tag 34
        return None
    head = data[11]
    if not 0x40 < head < 0x58:
        return None
    start = 12 + head - 0x40  # the payload's head
    head = data[start]
    if 0x40 <= head < 0x58:
        size = head - 0x40
        start += 1
    elif head == 0x58:
        size = data[start + 1]
        start += 2
    elif head == 0x59:
        size = (data[start + 1] << 8) | data[start + 2]
        start += 3
    else:
        return None
    stop = start + size
    if stop + 34 != end or data[stop] != 0x58 or data[stop + 1] != MAC_TAG_SIZE:
        return None
    return Mac0(_NAMES[TAG_MAC0], True, _MAC0_SENML_PROTECTED,
                {H_ALG: ALG_HMAC_256_256, H_CONTENT_TYPE: CT_SENML_CBOR},
                {H_KID: data[12:12 + data[11] - 0x40]}, data[start:stop], data[stop + 2:])


def mac0_verify(key, data, external_aad=b"", kid=None, detached_payload=None, max_size=65536):
    """Verify a COSE_Mac0 (tagged or untagged) -> Mac0 with verified=True.

    kid: if given, the message must carry exactly this kid. detached_payload: required
    when (and only when) the message carries nil as payload. Raises SealError(reason).
    """
    key = _mac_key(key)
    external_aad = _bytes_arg("external_aad", external_aad)
    return _mac0_check(key, mac0_parse(data, max_size), external_aad, kid, detached_payload)


def mac0_verify_parsed(key, msg, external_aad=b"", kid=None, detached_payload=None):
    """`mac0_verify` for a message `mac0_parse` returned: a receiver that parsed it to
    read the kid (and pick its key) need not decode the bytes a second time. Same checks
    in the same order, same SealError reasons; `msg` must not have been verified yet."""
    key = _mac_key(key)
    external_aad = _bytes_arg("external_aad", external_aad)
    if not isinstance(msg, Mac0) or msg.verified:
        raise ValidationError("msg", "must be an unverified Mac0 from mac0_parse")
    return _mac0_check(key, msg, external_aad, kid, detached_payload)


def _mac0_check(key, msg, external_aad, kid, detached_payload):
    _check_kid(msg, kid)
    payload = _payload_to_check(msg, detached_payload)
    expected = _mac(key, msg.protected_bytes, external_aad, payload)
    if not crypto.constant_time_equal(expected, msg.tag):
        raise SealError("tag mismatch")
    msg.payload = payload
    msg.verified = True
    return msg


# ---------------------------------------------------------------- COSE_Sign1


def _to_sign(protected_bytes, external_aad, payload):
    out = _structure_head(_SIGN1_CONTEXT, protected_bytes, external_aad, _len(payload))
    out += payload
    return bytes(out)


def sign1_create(seed, payload, kid=None, content_type=None, external_aad=b"", tagged=True,
                 detached=False):
    """COSE_Sign1 bytes over `payload`, EdDSA (Ed25519) with the 32-byte private `seed`."""
    seed = _bytes_arg("seed", seed)
    if len(seed) != 32:
        raise ValidationError("seed", "Ed25519 seed must be 32 bytes")
    payload = _bytes_arg("payload", payload)
    external_aad = _bytes_arg("external_aad", external_aad)
    protected_bytes = _build_protected(ALG_EDDSA, content_type)
    kid = _check_kid_arg(kid)
    signature = crypto.ed25519_sign(seed, _to_sign(protected_bytes, external_aad, payload))
    return _emit(TAG_SIGN1, protected_bytes, kid, None if detached else payload, signature,
                 tagged)


def sign1_parse(data, max_size=65536):
    """Structural checks only (no key): -> Sign1 with verified=False. Raises SealError."""
    return _parse(data, TAG_SIGN1, ALG_EDDSA, SIGNATURE_SIZE, max_size, Sign1)


def sign1_verify(public_key, data, external_aad=b"", kid=None, detached_payload=None,
                 max_size=65536):
    """Verify a COSE_Sign1 against a 32-byte Ed25519 public key -> Sign1 (verified=True)."""
    public_key = _bytes_arg("public_key", public_key)
    if len(public_key) != 32:
        raise ValidationError("public_key", "Ed25519 public key must be 32 bytes")
    external_aad = _bytes_arg("external_aad", external_aad)
    msg = sign1_parse(data, max_size)
    _check_kid(msg, kid)
    payload = _payload_to_check(msg, detached_payload)
    if not crypto.ed25519_verify(public_key, _to_sign(msg.protected_bytes, external_aad, payload),
                                 msg.tag):
        raise SealError("signature invalid")
    msg.payload = payload
    msg.verified = True
    return msg


# ---------------------------------------------------------------- inspection


def peek(data, max_size=65536):
    """What a seal is, without keys and leniently: a dict for `vitalbridge inspect`.

    Keys: structure ("COSE_Mac0", "COSE_Sign1" or "unknown"), tagged, alg, kid,
    content_type, payload_size (None when detached). Untagged messages are named by
    their alg. Raises SealError only if the bytes are not a COSE message at all.
    """
    obj = _load(data, "seal", max_size)
    tagged = isinstance(obj, cbor.Tag)
    structure = "unknown"
    if tagged:
        if obj.tag not in _NAMES:
            raise SealError("not a COSE_Mac0 or COSE_Sign1 (tag %d)" % obj.tag)
        structure = _NAMES[obj.tag]
        obj = obj.value
    if not isinstance(obj, list) or len(obj) != 4:
        raise SealError("not a COSE_Mac0 or COSE_Sign1 (4-item array expected)")
    try:
        protected = _decode_protected(obj[0])
    except SealError:
        protected = {}
    unprotected = obj[1] if isinstance(obj[1], dict) else {}
    alg = protected.get(H_ALG)
    if structure == "unknown" and is_int(alg):
        if alg == ALG_HMAC_256_256:
            structure = "COSE_Mac0"
        elif alg == ALG_EDDSA:
            structure = "COSE_Sign1"
    payload = obj[2]
    return {
        "structure": structure,
        "tagged": tagged,
        "alg": alg,
        "kid": protected.get(H_KID, unprotected.get(H_KID)),
        "content_type": protected.get(H_CONTENT_TYPE, unprotected.get(H_CONTENT_TYPE)),
        "payload_size": len(payload) if isinstance(payload, bytes) else None,
    }
