"""Limit commands: a patient's alarm limits as prescribed by the monitoring centre.

Wire form: a tagged COSE_Sign1 (EdDSA, kid = key_id(organisation public key)) over the
deterministic CBOR map

    1 version (uint, 1)          2 command id (bstr, 8..32 bytes, unique per command)
    3 patient id (text)          4 issued at (uint seconds)
    5 valid from (uint seconds)  6 valid until (uint seconds; absent = open-ended)
    7 limits {quantity: [unit, [[grade, low, high], ...]]}
    8 issuer (text: who prescribed, e.g. "dr.ada@centre")
    9 SpO2 scale (1 or 2; optional)   10 supplemental oxygen prescribed (bool; optional)

A band [grade, low, high] means: alarm at `grade` ("red", "orange", "yellow") when the
value is < low or > high; either bound may be null. Every key is checked and an unknown
key is refused: a field a newer centre adds may restrict what a limit means, so it must
not be silently dropped (a new field means a new version). docs/alarms.md has the reasons.

Replay protection (ReplayGuard): per patient, issued-at never goes back, and a command id
seen at the latest issued-at is refused. That is complete (a replay is either older or a
repeat of the newest second) and needs memory per patient only for the newest second.

Every failure raises a ProtocolError subclass whose message is the reason. Runs on
MicroPython: plain classes, no typing.
"""

from protocol import cbor, crypto, vitals
from protocol.checks import is_int
from protocol.cose import key_id, sign1_create, sign1_parse, sign1_verify
from protocol.errors import DecodeError, SealError, ValidationError, VersionError

VERSION = 1

K_VERSION = 1
K_COMMAND_ID = 2
K_PATIENT = 3
K_ISSUED_AT = 4
K_VALID_FROM = 5
K_VALID_UNTIL = 6
K_LIMITS = 7
K_ISSUER = 8
K_SPO2_SCALE = 9
K_OXYGEN = 10
_KNOWN_KEYS = (K_VERSION, K_COMMAND_ID, K_PATIENT, K_ISSUED_AT, K_VALID_FROM, K_VALID_UNTIL,
               K_LIMITS, K_ISSUER, K_SPO2_SCALE, K_OXYGEN)
_REQUIRED_KEYS = (K_VERSION, K_COMMAND_ID, K_PATIENT, K_ISSUED_AT, K_VALID_FROM, K_LIMITS,
                  K_ISSUER)

# Clinical grades a limit may raise, most severe first. Blue (technical) is never a limit.
GRADES = ("red", "orange", "yellow")
SPO2_SCALES = (1, 2)

COMMAND_ID_MIN = 8
COMMAND_ID_MAX = 32
PATIENT_MAX = 64
ISSUER_MAX = 128
MAX_QUANTITIES = 16
MAX_SIZE = 4096
MAX_TIME = 0xFFFFFFFFFFFF
DEFAULT_MAX_SKEW = 300  # seconds a command's issued-at may lie ahead of our clock


def _text(field, value, limit):
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValidationError(field, "must be text of 1..%d characters" % limit)
    return value


def _time(field, value):
    if not is_int(value) or value < 0 or value > MAX_TIME:
        raise ValidationError(field, "must be an integer time in seconds")
    return value


def _command_id(value):
    if not isinstance(value, (bytes, bytearray)):
        raise ValidationError("command_id", "must be bytes")
    if len(value) < COMMAND_ID_MIN or len(value) > COMMAND_ID_MAX:
        raise ValidationError(
            "command_id", "must be %d..%d bytes" % (COMMAND_ID_MIN, COMMAND_ID_MAX))
    return bytes(value)


def _bound(field, quantity, unit, value):
    if value is None:
        return None
    if not vitals.is_finite(value):
        raise ValidationError(field, "bound must be a finite number or null")
    try:
        vitals.check_value(quantity, value, unit)
    except ValidationError as exc:
        raise ValidationError(field, exc.reason) from None
    return value


def check_bands(quantity, unit, bands):
    """Validate one quantity's bands -> (unit, tuple of (grade, low, high)), most severe first.

    `bands` is a sequence of (grade, low, high). Rules: known quantity and allowed unit
    (None = canonical); 1..3 bands with distinct grades from GRADES; each band has at least
    one bound and low <= high; and some value lies inside every band (max low <= min high),
    so a worse value can never yield a lower grade. Raises ValidationError.
    """
    field = "limits.%s" % (quantity,)
    try:
        unit = vitals.check_unit(quantity, unit)
    except ValidationError as exc:
        raise ValidationError(field, exc.reason) from None
    if not isinstance(bands, (list, tuple)) or not bands or len(bands) > len(GRADES):
        raise ValidationError(field, "must hold 1..%d bands" % len(GRADES))
    checked = {}
    for band in bands:
        if not isinstance(band, (list, tuple)) or len(band) != 3:
            raise ValidationError(field, "a band is [grade, low, high]")
        grade, low, high = band
        if not isinstance(grade, str) or grade not in GRADES:
            raise ValidationError(field, "grade must be one of %s" % ", ".join(GRADES))
        if grade in checked:
            raise ValidationError(field, "grade %s given twice" % grade)
        low = _bound(field, quantity, unit, low)
        high = _bound(field, quantity, unit, high)
        if low is None and high is None:
            raise ValidationError(field, "%s band needs a low or a high bound" % grade)
        if low is not None and high is not None and low > high:
            raise ValidationError(field, "%s band has low > high" % grade)
        checked[grade] = (grade, low, high)
    lows = [b[1] for b in checked.values() if b[1] is not None]
    highs = [b[2] for b in checked.values() if b[2] is not None]
    if lows and highs and max(lows) > min(highs):
        raise ValidationError(field, "no value is inside every band (max low > min high)")
    return unit, tuple([checked[g] for g in GRADES if g in checked])


def _check_limits(limits):
    if not isinstance(limits, dict):
        raise ValidationError("limits", "must be a map of quantity -> [unit, bands]")
    if len(limits) > MAX_QUANTITIES:
        raise ValidationError("limits", "at most %d quantities" % MAX_QUANTITIES)
    checked = {}
    for quantity in limits:
        if not isinstance(quantity, str):
            raise ValidationError("limits", "quantity names must be text")
        entry = limits[quantity]
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValidationError("limits.%s" % quantity, "must be [unit, bands]")
        unit, bands = entry
        if unit is not None and not isinstance(unit, str):
            raise ValidationError("limits.%s" % quantity, "unit must be text")
        checked[quantity] = check_bands(quantity, unit, bands)
    return checked


def _check_settings(spo2_scale, oxygen):
    if spo2_scale is not None and (not is_int(spo2_scale) or spo2_scale not in SPO2_SCALES):
        raise ValidationError("spo2_scale", "must be 1 or 2")
    if oxygen is not None and not isinstance(oxygen, bool):
        raise ValidationError("oxygen", "must be true or false")


class LimitsCommand:
    """A structurally valid limit command; `verified` is True only from verify_command.

    limits: {quantity: (unit, ((grade, low, high), ...))} with bands most severe first.
    valid_until None means open-ended. spo2_scale / oxygen are None when not prescribed.
    """

    def __init__(self, body, kid):
        if not isinstance(body, dict):
            raise ValidationError("command", "must be a map")
        for key in body:
            if not is_int(key) or key not in _KNOWN_KEYS:
                raise ValidationError("command", "unknown key %r" % (key,))
        for key in _REQUIRED_KEYS:
            if key not in body:
                raise ValidationError("command", "key %d missing" % key)
        version = body[K_VERSION]
        if not is_int(version):
            raise ValidationError("version", "must be an integer")
        if version != VERSION:
            raise VersionError("limit command version %d is not supported" % version)
        self.command_id = _command_id(body[K_COMMAND_ID])
        self.patient = _text("patient", body[K_PATIENT], PATIENT_MAX)
        self.issued_at = _time("issued_at", body[K_ISSUED_AT])
        self.valid_from = _time("valid_from", body[K_VALID_FROM])
        self.valid_until = None
        if K_VALID_UNTIL in body:
            self.valid_until = _time("valid_until", body[K_VALID_UNTIL])
            if self.valid_until <= self.valid_from:
                raise ValidationError("valid_until", "must be after valid_from")
        self.limits = _check_limits(body[K_LIMITS])
        self.issuer = _text("issuer", body[K_ISSUER], ISSUER_MAX)
        self.spo2_scale = body.get(K_SPO2_SCALE)
        self.oxygen = body.get(K_OXYGEN)
        _check_settings(self.spo2_scale, self.oxygen)
        if not self.limits and self.spo2_scale is None and self.oxygen is None:
            raise ValidationError("limits", "a command must set limits or a setting")
        self.kid = kid
        self.verified = False

    def in_force(self, now):
        """True if the command applies at time `now` (valid_from <= now < valid_until)."""
        return self.valid_from <= now and (self.valid_until is None or now < self.valid_until)

    def __repr__(self):
        return "<LimitsCommand patient=%s issued_at=%d quantities=%s>" % (
            self.patient, self.issued_at, ",".join(sorted(self.limits)))


def build_command(org_seed, command_id, patient, issued_at, valid_from, limits, issuer,
                  valid_until=None, spo2_scale=None, oxygen=None, kid=None):
    """Sign a limit command with the organisation's Ed25519 `org_seed` -> COSE_Sign1 bytes.

    limits: {quantity: (unit or None, [(grade, low, high), ...])}. kid defaults to
    key_id(organisation public key). Validates exactly as parsing does (ValidationError).
    """
    body = {
        K_VERSION: VERSION,
        K_COMMAND_ID: command_id,
        K_PATIENT: patient,
        K_ISSUED_AT: issued_at,
        K_VALID_FROM: valid_from,
        K_ISSUER: issuer,
    }
    if valid_until is not None:
        body[K_VALID_UNTIL] = valid_until
    if spo2_scale is not None:
        body[K_SPO2_SCALE] = spo2_scale
    if oxygen is not None:
        body[K_OXYGEN] = oxygen
    wire_limits = {}
    for quantity, (unit, bands) in _check_limits(limits).items():
        wire_limits[quantity] = [unit, [list(band) for band in bands]]
    body[K_LIMITS] = wire_limits
    LimitsCommand(body, None)  # refuse to sign what a receiver would refuse
    if kid is None:
        kid = key_id(crypto.ed25519_public_key(org_seed))
    return sign1_create(org_seed, cbor.dumps(body), kid=kid)


def _command(msg):
    if msg.payload is None:
        raise SealError("limit command payload is detached")
    try:
        body = cbor.loads(msg.payload, max_size=MAX_SIZE)
    except DecodeError as exc:
        raise DecodeError("limit command is not valid CBOR: %s" % exc) from None
    return LimitsCommand(body, msg.kid)


def parse_command(data):
    """Read a limit command without checking its signature (for inspection only)."""
    return _command(sign1_parse(data, MAX_SIZE))


def verify_command(data, org_public, now=None, max_skew=DEFAULT_MAX_SKEW):
    """Verify the organisation's signature and the command -> LimitsCommand (verified).

    The kid must name `org_public` (else "signed by another key"). With `now`: refused if
    issued more than `max_skew` s in the future or if its validity has already ended.
    Replay is a separate question: see ReplayGuard. Raises ProtocolError(reason).
    """
    msg = sign1_parse(data, MAX_SIZE)
    if msg.kid is None:
        raise SealError("kid missing: a limit command must name the organisation key")
    if msg.kid != key_id(org_public):
        raise SealError("signed by another key (kid mismatch)")
    msg = sign1_verify(org_public, data, max_size=MAX_SIZE)
    command = _command(msg)
    if now is not None:
        if command.issued_at > now + max_skew:
            raise ValidationError("issued_at", "issued in the future (clock skew?)")
        if command.valid_until is not None and command.valid_until <= now:
            raise ValidationError("valid_until", "command has already expired")
    command.verified = True
    return command


class ReplayGuard:
    """Refuses replayed or superseded limit commands, per patient.

    check(cmd) raises ValidationError with the reason; record(cmd) remembers an applied
    command (call it only once the command is durably applied); admit does both.
    State round-trips through to_state()/from_state() for the gateway's store.
    """

    def __init__(self):
        self._latest = {}  # patient -> [issued_at, [command ids at that issued_at]]

    def check(self, command):
        latest = self._latest.get(command.patient)
        if latest is None:
            return
        if command.issued_at < latest[0]:
            raise ValidationError(
                "issued_at", "older than a command already applied for this patient")
        if command.issued_at == latest[0] and command.command_id in latest[1]:
            raise ValidationError("command_id", "replayed: command already applied")

    def record(self, command):
        latest = self._latest.get(command.patient)
        if latest is None or command.issued_at > latest[0]:
            self._latest[command.patient] = [command.issued_at, [command.command_id]]
        elif command.command_id not in latest[1]:
            latest[1].append(command.command_id)

    def admit(self, command):
        self.check(command)
        self.record(command)

    def to_state(self):
        state = {}
        for patient, latest in self._latest.items():
            state[patient] = [latest[0], list(latest[1])]
        return state

    @classmethod
    def from_state(cls, state):
        guard = cls()
        if not isinstance(state, dict):
            raise ValidationError("state", "must be a map")
        for patient in state:
            entry = state[patient]
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ValidationError("state", "entry must be [issued_at, ids]")
            issued_at = _time("state.issued_at", entry[0])
            if not isinstance(entry[1], (list, tuple)):
                raise ValidationError("state", "ids must be a list")
            ids = [_command_id(i) for i in entry[1]]
            guard._latest[_text("state.patient", patient, PATIENT_MAX)] = [issued_at, ids]
        return guard
