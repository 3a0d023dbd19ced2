"""Device side of enrollment: answer the gateway's challenge with a signed request, show the
confirmation code, install the certificate the gateway returns and keep it across reboots.

    on_challenge(challenge)            "enroll" command: first enrollment (provisioning mode)
    on_challenge(challenge, True)      "rotate-keys" command: new pair, endorsed by the old
    on_certificate(body)               the gateway's certificate delivery

The certificate is installed only if it binds our new public keys and identity and was
issued by the gateway whose keys the confirmation code covered (protocol.enrollment
.verify_delivery). It is written to flash before the key pair is activated: a cut between
the two is finished by load() at the next boot.

Identity file: a fileio record holding the CBOR map {0: 1, 1: certificate body}.
"""

from firmware import fileio
from firmware.keystore import ACTIVE, AGREE, PENDING, SIGN
from protocol import cbor, enrollment

IDENTITY_FILE = "identity"
FILE_VERSION = 1

UNENROLLED = "unenrolled"
ENROLLED = "enrolled"
KEY_MISMATCH = "key-mismatch"


class EnrollmentError(Exception):
    """The device cannot do this enrollment step now (state, not wire input)."""


def blink_counts(code):
    """LED form of a code: one group of blinks per digit, 0 shown as ten blinks."""
    return [int(ch) or 10 for ch in code]


def console_display(code):
    print("VitalBridge enrollment code: %s %s" % (code[:3], code[3:]))


class Enrollment:
    """Enrollment state of one device. show_code(code) presents the six digits (serial
    console, LED via blink_counts, display); ca_public: the organisation CA key if the
    firmware carries one (the gateway's certificate must then chain to it)."""

    def __init__(self, directory, keystore, device_id, model, serial, firmware_version, now,
                 show_code=console_display, ca_public=None, provisioning=False):
        self._path = directory + "/" + IDENTITY_FILE
        self._dir = directory
        self._keys = keystore
        self.device_id = device_id
        self.model = model
        self.serial = serial
        self.firmware_version = firmware_version
        self._now = now
        self._show = show_code
        self._ca_public = ca_public
        self.provisioning = provisioning
        self.delivery = None
        self._challenge = None
        self._challenge_at = 0
        self.state = UNENROLLED

    @property
    def enrolled(self):
        return self.state == ENROLLED

    @property
    def certificate(self):
        return None if self.delivery is None else self.delivery.device_cert

    @property
    def gateway_agree_key(self):
        return None if self.delivery is None else self.delivery.agree_key

    def load(self):
        """Read the installed certificate and match it to the keys -> events."""
        fileio.make_dirs(self._dir)
        payload, where = fileio.read_record(self._path)
        self.delivery = None
        self.state = UNENROLLED
        if where == fileio.MISSING:
            return []
        try:
            if payload is None:
                raise ValueError("CRC")
            body = cbor.loads(payload)
            if not isinstance(body, dict) or body.get(0) != FILE_VERSION:
                raise ValueError("version")
            # Signatures were checked at installation; the record CRC guards the bytes since.
            self.delivery = enrollment.parse_delivery(body.get(1))
        except ValueError:  # ProtocolError is a ValueError too
            return [self._event("identity-invalid", cause="identity file unreadable")]
        bound = self.delivery.device_cert.public_key
        for state in (ACTIVE, PENDING):
            info = self._keys.find(SIGN, state)
            if info is not None and info["public"] == bound:
                self.state = ENROLLED
                return self._keys.activate(info["kid"]) if state == PENDING else []
        self.state = KEY_MISMATCH
        return [self._event("identity-invalid", cause="certificate binds no key of ours")]

    def _event(self, name, **details):
        details["event"] = name
        details["time"] = self._now()
        return details

    def on_challenge(self, challenge, rotate=False):
        """Answer a challenge -> (enroll-request body, code, events). rotate=True is a key
        rotation (enrolled devices; the request is endorsed by the current key)."""
        if rotate:
            if not self.enrolled:
                raise EnrollmentError("cannot rotate keys before enrollment")
            events = self._keys.rotate()
        elif self.enrolled:
            if not self.provisioning:
                raise EnrollmentError("already enrolled: re-enrollment needs provisioning mode")
            events = self._keys.rotate()
        else:
            # Reuses a pending pair from an unanswered challenge, else makes the first pair.
            events = self._keys.provision()
        sign = self._keys.find(SIGN, PENDING)
        agree = self._keys.find(AGREE, PENDING)
        if sign is None or agree is None:
            raise EnrollmentError("no pending key pair to enroll")

        def sign_request(payload, aad):
            return self._keys.sign1(payload, aad, kid=sign["kid"])

        def agree_request(peer):
            return self._keys.agree(peer, kid=agree["kid"])

        def endorse(payload, aad):
            return self._keys.sign1(payload, aad, detached=True)

        body = enrollment.build_request(
            challenge, self.device_id, self.model, self.serial, self.firmware_version,
            sign["public"], agree["public"], self._now(), sign_request, agree_request,
            endorse if self.enrolled else None)
        code = enrollment.confirmation_code(sign["public"], agree["public"], challenge.sign_key,
                                            challenge.agree_key, challenge.nonce)
        if not rotate:
            self._show(code)
        self._challenge = challenge
        self._challenge_at = self._now()
        return body, code, events

    def on_certificate(self, body):
        """Install the delivered certificate -> events. Raises ProtocolError subclasses when
        it does not fit (nothing is changed then) and EnrollmentError without a challenge."""
        if self._challenge is None:
            raise EnrollmentError("no enrollment in progress")
        sign = self._keys.find(SIGN, PENDING)
        agree = self._keys.find(AGREE, PENDING)
        if sign is None or agree is None:
            raise EnrollmentError("the pending key pair is gone")
        # Judge validity by the gateway's clock (ours may not be set) plus time elapsed here.
        reference = self._challenge.time + max(0, self._now() - self._challenge_at)
        delivery = enrollment.verify_delivery(body, self._challenge, sign["public"],
                                              agree["public"], self.device_id, reference,
                                              self._ca_public)
        fileio.write_record(self._path, cbor.dumps({0: FILE_VERSION, 1: delivery.to_map()}))
        events = self._keys.activate(sign["kid"])
        self.delivery = delivery
        self.state = ENROLLED
        self._challenge = None
        cert = delivery.device_cert
        events.append(self._event("certificate-installed", kid=sign["kid"],
                                  issuer=cert.issuer, expires=cert.expires))
        return events
