# Firmware identity on the MicroPython unix port: keys made and never exported, rotation and
# destruction, enrollment against the gateway-side checks, sequence numbers across 50
# reboots with power cuts at every step of the atomic write. Each test works in its own
# directory under /tmp and removes it. Helpers here are also used by test_fw_outbox.
import os

from firmware import enrollment as fw_enrollment
from firmware import fileio, keystore, seqstore
from protocol import cbor, cose, crypto, cwt, device_link, enrollment
from protocol.checks import hexstr
from protocol.errors import ProtocolError

NOW = 1700000000


# ---------------------------------------------------------------- helpers


def rmtree(path):
    for name in os.listdir(path):
        full = path + "/" + name
        if os.stat(full)[0] & 0x4000:
            rmtree(full)
        else:
            os.remove(full)
    os.rmdir(path)


class Workspace:
    """A fresh directory under /tmp; call close() to remove it."""

    def __init__(self, name):
        self.path = "/tmp/vb-%s-%s" % (name, hexstr(os.urandom(4)))
        os.mkdir(self.path)

    def close(self):
        restore_fileio()
        rmtree(self.path)


def in_workspace(name):
    """Decorator: run the test with a fresh Workspace, removed afterwards."""
    def wrap(test):
        def run():
            ws = Workspace(name)
            try:
                test(ws)
            finally:
                ws.close()
        return run
    return wrap


class Clock:
    def __init__(self, t=NOW):
        self.t = t

    def __call__(self):
        return self.t


class RecordingRng:
    """Deterministic RNG that remembers every output (so tests know the private keys)."""

    def __init__(self):
        self.counter = 0
        self.outputs = []

    def __call__(self, n):
        out = b""
        while len(out) < n:
            self.counter += 1
            out += crypto.sha256(b"rng" + str(self.counter).encode())
        self.outputs.append(out[:n])
        return out[:n]


class PowerCut(Exception):
    pass


_REAL = (fileio._open, fileio._rename, fileio._remove)


def restore_fileio():
    fileio._open, fileio._rename, fileio._remove = _REAL


class _CuttingFile:
    def __init__(self, f, cutter):
        self._f = f
        self._cutter = cutter

    def write(self, data):
        if self._cutter.step():
            keep = self._cutter.keep(len(data))
            self._f.write(data[:keep])
            self._f.flush()
            raise PowerCut()
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


class Cutter:
    """Counts file-system steps (each write, each rename, each remove) and cuts the power
    at step `at`: a write keeps only part of its bytes, a rename or remove does not happen."""

    def __init__(self, at, partial=0):
        self.at = at
        self.partial = partial
        self.count = 0

    def step(self):
        self.count += 1
        return self.count == self.at

    def keep(self, n):
        return min(n, self.partial)

    def install(self):
        real_open, real_rename, real_remove = _REAL
        cutter = self

        def cut_open(path, mode="r"):
            f = real_open(path, mode)
            return _CuttingFile(f, cutter) if "r" not in mode or "+" in mode else f

        def cut_rename(a, b):
            if cutter.step():
                raise PowerCut()
            real_rename(a, b)

        def cut_remove(path):
            if cutter.step():
                raise PowerCut()
            real_remove(path)

        fileio._open = cut_open
        fileio._rename = cut_rename
        fileio._remove = cut_remove


def contains(haystack, needle):
    return bytes(haystack).find(bytes(needle)) >= 0


def flatten(obj):
    """Every bytes/str in a nested structure, for searching outputs."""
    out = []
    if isinstance(obj, (bytes, bytearray)):
        out.append(bytes(obj))
    elif isinstance(obj, str):
        out.append(obj.encode())
    elif isinstance(obj, dict):
        for k in obj:
            out.extend(flatten(k))
            out.extend(flatten(obj[k]))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            out.extend(flatten(item))
    return out


def provisioned(ws, clock=None, rng=None):
    """A KeyStore with an active pair (as after enrollment)."""
    clock = clock or Clock()
    rng = rng or RecordingRng()
    ks = keystore.KeyStore(ws.path + "/keys", rng, clock)
    ks.load()
    ks.provision()
    ks.activate(ks.find(keystore.SIGN, keystore.PENDING)["kid"])
    return ks


# ---------------------------------------------------------------- keys


@in_workspace("keys")
def test_keys_generated_and_never_exported(ws):
    rng = RecordingRng()
    clock = Clock()
    ks = keystore.KeyStore(ws.path + "/keys", rng, clock)
    events = ks.load() + ks.provision()
    seed, xpriv = rng.outputs[0], rng.outputs[1]
    sign = ks.find(keystore.SIGN, keystore.PENDING)
    agree = ks.find(keystore.AGREE, keystore.PENDING)
    assert sign["public"] == crypto.ed25519_public_key(seed)
    assert agree["public"] == crypto.x25519_public_key(xpriv)
    assert sign["kid"] == cose.key_id(sign["public"])
    assert [e["event"] for e in events] == ["key-generated", "key-generated"]
    names = sorted(os.listdir(ws.path + "/keys"))
    assert names == sorted([hexstr(k["kid"]) + ".key" for k in (sign, agree)])
    events += ks.activate(sign["kid"])
    # Exercise every public output and search it for either private key.
    peer = crypto.x25519_public_key(b"\x05" * 32)
    outputs = [ks.keys(), ks.key(sign["kid"]), ks.find(keystore.SIGN, keystore.ACTIVE),
               ks.sign1(b"payload"), ks.agree(peer), repr(ks),
               ks.handshake("ox-1", peer).hello(), events]
    for event in events:
        outputs.append(device_link.encode_event(event))
    blob = b"".join(flatten(outputs)) + cbor.dumps(outputs)
    for secret in (seed, xpriv):
        assert not contains(blob, secret)
    for name in dir(ks):
        assert "priv" not in name or name.startswith("_")
    ks2 = keystore.KeyStore(ws.path + "/keys", rng, clock)
    assert ks2.load() == []
    assert ks2.find(keystore.SIGN, keystore.ACTIVE)["public"] == sign["public"]
    cose.sign1_verify(sign["public"], ks2.sign1(b"x"))
    cose.sign1_verify(sign["public"], ks2.sign1(b"x", detached=True), detached_payload=b"x")


@in_workspace("rng")
def test_bad_rng_refused(ws):
    ks = keystore.KeyStore(ws.path, lambda n: bytes(n), Clock())
    ks.load()
    try:
        ks.provision()
    except keystore.KeyStoreError:
        pass
    else:
        raise AssertionError("constant RNG accepted")
    assert os.listdir(ws.path) == []


@in_workspace("rotate")
def test_rotation_and_destruction_overwrite_before_delete(ws):
    clock = Clock()
    ks = provisioned(ws, clock)
    old_sign = ks.find(keystore.SIGN, keystore.ACTIVE)
    old_agree = ks.find(keystore.AGREE, keystore.ACTIVE)
    clock.t += 100
    events = ks.rotate()
    assert [e["event"] for e in events] == ["key-generated", "key-generated"]
    assert ks.find(keystore.SIGN, keystore.ACTIVE)["kid"] == old_sign["kid"]  # still in use
    new_sign = ks.find(keystore.SIGN, keystore.PENDING)
    events = ks.activate(new_sign["kid"])
    assert [e["event"] for e in events] == ["key-activated", "key-activated",
                                            "key-retired", "key-retired"]
    assert ks.key(old_sign["kid"])["state"] == keystore.RETIRED
    try:
        ks.sign1(b"x", kid=old_sign["kid"])
    except keystore.KeyStoreError:
        pass
    else:
        raise AssertionError("a retired key signed")
    try:
        ks.destroy(new_sign["kid"])
    except keystore.KeyStoreError:
        pass
    else:
        raise AssertionError("the active key was destroyed")
    # Watch the file at each write and just before its removal.
    path = "%s/keys/%s.key" % (ws.path, hexstr(old_sign["kid"]))
    original = open(path, "rb").read()
    seen = {}
    real_open, real_rename, real_remove = _REAL

    def spy_remove(p):
        seen[p] = open(p, "rb").read()
        real_remove(p)

    fileio._remove = spy_remove
    events = ks.destroy(old_sign["kid"])
    restore_fileio()
    assert seen[path] == bytes(len(original))  # zeros were the last content
    assert not fileio.exists(path)
    assert events == [{"event": "key-destroyed", "time": clock.t, "kid": old_sign["kid"],
                       "purpose": "sign", "bytes": len(original), "passes": 2,
                       "removed": True}]
    assert ks.key(old_sign["kid"]) is None
    assert ks.destroy(old_sign["kid"])[0]["event"] == "key-absent"
    assert ks.destroy(old_agree["kid"])[0]["event"] == "key-destroyed"
    ks2 = keystore.KeyStore(ws.path + "/keys", RecordingRng(), clock)
    assert ks2.load() == []
    assert [k["state"] for k in ks2.keys()] == ["active", "active"]


@in_workspace("shred")
def test_shred_writes_random_then_zeros(ws):
    path = ws.path + "/secret"
    with open(path, "wb") as f:
        f.write(b"\x5a" * 40)
    writes = []
    real_open = _REAL[0]

    class Spy:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            writes.append(bytes(data))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    fileio._open = lambda p, mode="r": Spy(real_open(p, mode))
    assert fileio.shred(path, RecordingRng()) == 40
    restore_fileio()
    assert len(writes) == 2 and writes[1] == bytes(40)
    assert writes[0] != bytes(40) and writes[0] != b"\x5a" * 40
    assert not fileio.exists(path)


@in_workspace("tamper")
def test_corrupt_and_missing_key_files_are_reported(ws):
    clock = Clock()
    ks = provisioned(ws, clock)
    sign = ks.find(keystore.SIGN, keystore.ACTIVE)
    agree = ks.find(keystore.AGREE, keystore.ACTIVE)
    hexkid = hexstr(agree["kid"])
    path = "%s/keys/%s.key" % (ws.path, hexkid)
    raw = bytearray(open(path, "rb").read())
    raw[20] ^= 1
    with open(path, "wb") as f:
        f.write(raw)
    events = keystore.KeyStore(ws.path + "/keys", RecordingRng(), clock).load()
    assert events[0] == {"event": "tamper", "time": clock.t, "cause": "key-file-corrupt",
                         "file": hexkid + ".key"}
    assert events[1] == {"event": "tamper", "time": clock.t, "cause": "key-missing",
                         "kid": agree["kid"]}
    assert not fileio.exists(path)  # the damaged file (private bytes) was shredded
    # A first write cut before its rename is silent: the key was never used.
    with open(ws.path + "/keys/00112233aabbccdd.key.tmp", "wb") as f:
        f.write(b"VBR1\x10")
    ks3 = keystore.KeyStore(ws.path + "/keys", RecordingRng(), clock)
    assert [e["cause"] for e in ks3.load()] == ["key-missing"]
    assert not fileio.exists(ws.path + "/keys/00112233aabbccdd.key.tmp")
    # Tamper response: everything is destroyed.
    events = ks3.zeroize("case opened")
    assert events[0]["event"] == "tamper" and events[1]["event"] == "key-destroyed"
    assert events[1]["kid"] == sign["kid"] and ks3.keys() == []


# ---------------------------------------------------------------- enrollment

CA_SEED = b"\xca" * 32
GW_SEED = b"\x06" * 32
GW_X = b"\x07" * 32


class Gateway:
    """The gateway's side of enrollment, with protocol functions only."""

    def __init__(self):
        self.pub = crypto.ed25519_public_key(GW_SEED)
        self.xpub = crypto.x25519_public_key(GW_X)
        self.cert = cwt.issue_cwt(CA_SEED, "org-ca", "gw-1", self.pub, NOW - 86400,
                                  NOW + 5 * 365 * 86400, agreement_key=self.xpub,
                                  role="gateway")

    def challenge(self, nonce):
        return enrollment.make_challenge("gw-1", self.pub, self.xpub, NOW, nonce=nonce)

    def agree(self, peer):
        return crypto.x25519_shared(GW_X, peer)

    def issue(self, request, subject="ox-1"):
        device = cwt.issue_cwt(GW_SEED, "gw-1", subject, request.sign_key, NOW,
                               NOW + 365 * 86400, agreement_key=request.agree_key,
                               role="device", model=request.model, serial=request.serial)
        return enrollment.make_delivery(device, self.cert, self.xpub)


def _device(ws, clock, shown, rng, provisioning=False):
    ks = keystore.KeyStore(ws.path + "/keys", rng, clock)
    ks.load()
    dev = fw_enrollment.Enrollment(ws.path, ks, "ox-1", "VB-Ox", "SN-1", "0.1.0", clock,
                                   show_code=shown.append,
                                   ca_public=crypto.ed25519_public_key(CA_SEED),
                                   provisioning=provisioning)
    return ks, dev


@in_workspace("enroll")
def test_enrollment_round_trip_and_rotation(ws):
    clock = Clock(NOW + 3)
    shown = []
    rng = RecordingRng()
    ks, dev = _device(ws, clock, shown, rng)
    assert dev.load() == [] and not dev.enrolled
    gw = Gateway()
    challenge = gw.challenge(b"\x11" * 16)
    body, code, events = dev.on_challenge(challenge)
    assert shown == [code] and len(code) == 6
    assert fw_enrollment.blink_counts("105090") == [1, 10, 5, 10, 9, 10]
    assert [e["event"] for e in events] == ["key-generated", "key-generated"]
    request = enrollment.verify_request(body, challenge, gw.agree)
    assert enrollment.request_code(request, challenge) == code  # both screens agree
    # A certificate for someone else, or from another gateway, changes nothing.
    for bad in (gw.issue(request, subject="ox-2"),):
        try:
            dev.on_certificate(bad)
        except ProtocolError:
            pass
        else:
            raise AssertionError("foreign certificate installed")
    assert not dev.enrolled and ks.find(keystore.SIGN, keystore.ACTIVE) is None
    events = dev.on_certificate(gw.issue(request))
    assert [e["event"] for e in events] == ["key-activated", "key-activated",
                                            "certificate-installed"]
    assert dev.enrolled and dev.gateway_agree_key == gw.xpub
    assert dev.certificate.public_key == request.sign_key
    # After a reboot the identity is still there.
    ks2, dev2 = _device(ws, clock, shown, rng)
    assert dev2.load() == [] and dev2.enrolled
    # A second unsealed "enroll" is refused outside provisioning mode.
    try:
        dev2.on_challenge(gw.challenge(b"\x12" * 16))
    except fw_enrollment.EnrollmentError:
        pass
    else:
        raise AssertionError("re-enrollment without provisioning mode")
    # Rotation: endorsed by the current key, old pair retired on installation.
    old = ks2.find(keystore.SIGN, keystore.ACTIVE)
    challenge = gw.challenge(b"\x13" * 16)
    body, _, events = dev2.on_challenge(challenge, rotate=True)
    request = enrollment.verify_request(body, challenge, gw.agree,
                                        previous_public=old["public"])
    assert request.endorsed and request.sign_key != old["public"]
    events = dev2.on_certificate(gw.issue(request))
    assert [e["event"] for e in events] == ["key-activated", "key-activated",
                                            "key-retired", "key-retired",
                                            "certificate-installed"]
    assert ks2.key(old["kid"])["state"] == keystore.RETIRED


@in_workspace("install")
def test_interrupted_installation_is_finished_at_boot(ws):
    clock = Clock(NOW + 3)
    rng = RecordingRng()
    ks, dev = _device(ws, clock, [], rng)
    dev.load()
    gw = Gateway()
    challenge = gw.challenge(b"\x21" * 16)
    body, _, _ = dev.on_challenge(challenge)
    delivery = gw.issue(enrollment.verify_request(body, challenge, gw.agree))
    # Power cut after the identity file is written, before the keys are activated.
    Cutter(at=3).install()  # steps: identity write, rename, first key write
    try:
        dev.on_certificate(delivery)
    except PowerCut:
        pass
    restore_fileio()
    ks2, dev2 = _device(ws, clock, [], rng)
    events = dev2.load()
    assert [e["event"] for e in events] == ["key-activated", "key-activated"]
    assert dev2.enrolled and ks2.find(keystore.SIGN, keystore.ACTIVE) is not None


# ---------------------------------------------------------------- sequence numbers


@in_workspace("seq")
def test_seq_never_reused_across_50_reboots_with_cuts(ws):
    path = ws.path + "/seq"
    issued = []
    rng = RecordingRng()
    cuts = {1: 0, 2: 0, 3: 0}
    for boot in range(50):
        store = seqstore.SeqStore(path, block=8)
        assert store.load() in (seqstore.NEW, seqstore.RESUMED)
        # Cut the power at step 1 (writing the tmp file: 0..12 of its ~17 bytes land),
        # 2 (the rename) or 3 (the next reservation's tmp write); every fifth boot
        # runs without a cut and ends in a plain reset.
        at = 1 + boot % 3
        cutter = Cutter(at=at, partial=boot % 13)
        if boot % 5 != 4:
            cutter.install()
        try:
            for _ in range(12):
                first = store.take(1 + rng(1)[0] % 3)
                issued.extend(range(first, store.next))
        except PowerCut:
            cuts[at] += 1
        restore_fileio()
    assert cuts[1] >= 10 and cuts[2] >= 10 and cuts[3] >= 10, cuts
    assert len(issued) == len(set(issued)), "a sequence number was issued twice"
    assert issued == sorted(issued)
    # Wear: one flash write per block of seqs (plus the cut attempts).
    store = seqstore.SeqStore(path, block=8)
    store.load()
    first = store.take(1)
    for _ in range(63):
        store.take(1)
    assert store.writes == 8 and first > issued[-1]


@in_workspace("seqbad")
def test_corrupt_seq_file_blocks_until_a_floor(ws):
    path = ws.path + "/seq"
    store = seqstore.SeqStore(path, block=4)
    store.load()
    store.take(10)
    with open(path, "wb") as f:
        f.write(b"VBR1garbage")
    store = seqstore.SeqStore(path, block=4)
    assert store.load() == seqstore.BLOCKED
    try:
        store.take()
    except seqstore.SeqStoreError:
        pass
    else:
        raise AssertionError("blocked store issued a seq")
    store.set_floor(500)
    assert store.take() == 500
    store = seqstore.SeqStore(path, block=4)
    assert store.load() == seqstore.RESUMED and store.take() >= 501
    # A failed seal leaves its reserved seqs for the next batch.
    first = store.reserve(3)
    assert store.reserve(3) == first


def test_device_link_bodies_on_micropython():
    key = b"\x09" * 32
    sid = b"\x05" * 8
    challenge = Gateway().challenge(b"\x31" * 16)
    unsealed = device_link.decode_command(device_link.encode_command(1, "enroll",
                                                                     challenge.to_map()))
    assert unsealed.name == "enroll" and unsealed.args.nonce == challenge.nonce
    sealed = device_link.encode_command(2, "destroy-key", b"\xaa" * 8, key, sid)
    cmd = device_link.decode_command(sealed, key, sid, last_id=1)
    assert cmd.authenticated and cmd.args == b"\xaa" * 8
    for hostile in ({0: 1, 1: 3, 2: "destroy-key", 3: b"\xaa" * 8}, sealed[:-1], b"\xff", 7):
        try:
            device_link.decode_command(hostile, key, sid, last_id=2)
        except ProtocolError:
            continue
        raise AssertionError("accepted %r" % (hostile,))
    event = {"event": "key-retired", "time": NOW, "kid": b"\x01" * 8, "purpose": "agree"}
    body = device_link.encode_event(event, key, sid)
    assert device_link.decode_event(body, key, sid).to_dict() == event
