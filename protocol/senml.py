"""SenML records and packs (RFC 8428, CBOR representation) for VitalBridge readings.

A record is a plain dict keyed by RFC 8428 CBOR integer labels (N, V, T, ...) plus two
VitalBridge profile labels: SEQ (per-device sequence number, mandatory) and UCUM_UNIT (a
UCUM unit SenML has no symbol for, e.g. "mm[Hg]"; must-understand). A pack is a list of
records; on the wire it is CBOR via protocol.cbor (deterministic). The profile rules are
in docs/senml.md; in short:

* base name = device URN ("urn:dev:vb:<serial>:"), record name = quantity ("hr"), so the
  resolved name is base name + quantity and the quantity is the text after the last ':';
* `encode_pack` puts bn/bt in the first record only, writes times relative to bt, and
  leaves out a unit that the vocabulary implies (a quantity with a single allowed unit);
* `decode_pack` resolves base fields and relative times and validates every record
  against the vocabulary (protocol.vitals), returning `Reading` objects;
* an unknown integer label is an error (the profile reserves integers for fields a reader
  must understand), an unknown text label ending in "_" is an error (RFC 8428 section 4.4),
  any other unknown text label is ignored.

Decoders raise only DecodeError (CBOR) and ValidationError(field, reason) (SenML/vitals),
with `field` naming the record, e.g. "records[3].v". Runs on MicroPython.
"""

from protocol import cbor, vitals
from protocol.errors import ValidationError

# Module-level aliases of hot builtins: a cached global hit on MicroPython instead of a
# walk through the module dict to the builtins (see protocol/cbor.py).
_isinstance = isinstance
_len = len
_type = type

# RFC 8428 Table 4 (CBOR labels). The table is conclusive: no other integer label will
# ever be registered, which is what makes the profile's integers below collision-free.
BVER = -1
BN = -2
BT = -3
BU = -4
BV = -5
BS = -6
N = 0
U = 1
V = 2
VS = 3
VB = 4
S = 5
T = 6
UT = 7
VD = 8
# VitalBridge profile labels (one-byte CBOR keys, outside RFC 8428's -6..8).
SEQ = 21
UCUM_UNIT = 22

SENML_VERSION = 10  # RFC 8428's version; a pack declaring a higher bver is refused
ABSOLUTE_TIME_MIN = 1 << 28  # RFC 8428 section 4.5.3: smaller times are relative to "now"
TIME_MAX = 1 << 33  # year 2242: anything later is garbage, and keeps times within int64
SEQ_LIMIT = 1 << 32
UPDATE_TIME_LIMIT = 1 << 32
MAX_FIELDS = 32  # per record, bounds the work a hostile record can cause

# label -> (name used in error fields, expected kind)
LABELS = {
    BVER: ("bver", "uint"),
    BN: ("bn", "str"),
    BT: ("bt", "num"),
    BU: ("bu", "str"),
    BV: ("bv", "num"),
    BS: ("bs", "num"),
    N: ("n", "str"),
    U: ("u", "str"),
    V: ("v", "num"),
    VS: ("vs", "str"),
    VB: ("vb", "bool"),
    S: ("s", "num"),
    T: ("t", "num"),
    UT: ("ut", "num"),
    VD: ("vd", "bytes"),
    SEQ: ("seq", "int"),
    UCUM_UNIT: ("ucum_", "str"),
}
# Text spellings of the profile labels (their JSON names), accepted in CBOR too.
TEXT_LABELS = {"seq": SEQ, "ucum_": UCUM_UNIT}
VALUE_LABELS = (V, VS, VB, VD)
# make_record(**extras) names -> labels
EXTRA_LABELS = {"ut": UT, "s": S}

_NAME_START = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NAME_CHARS = _NAME_START + "-:./_"


class Reading:
    """One resolved, validated record, as callers outside protocol/ see it.

    name: resolved SenML name (device base name + quantity); device: the base-name part;
    quantity: vocabulary name ("hr"); unit: unit token (never None); value: number;
    time: absolute POSIX seconds (int or float); seq: per-device sequence number;
    extras: other fields kept from the record, by label name ({"ut": 60}).
    """

    def __init__(self, name, quantity, unit, value, time, seq, extras=None):
        self.name = name
        self.device = name[: _len(name) - _len(quantity)]
        self.quantity = quantity
        self.unit = unit
        self.value = value
        self.time = time
        self.seq = seq
        self.extras = extras if extras is not None else {}

    def to_record(self):
        """The record for `encode_pack(records, base_name=reading.device)`."""
        return make_record(self.quantity, self.value, self.unit, self.time, self.seq, **self.extras)

    def as_dict(self):
        return {
            "name": self.name,
            "device": self.device,
            "quantity": self.quantity,
            "unit": self.unit,
            "value": self.value,
            "time": self.time,
            "seq": self.seq,
            "extras": dict(self.extras),
        }

    def __eq__(self, other):
        return _isinstance(other, Reading) and self.as_dict() == other.as_dict()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Reading(%r, %r %s, t=%r, seq=%r)" % (
            self.name, self.value, self.unit, self.time, self.seq,
        )


# ---------------------------------------------------------------- building


def make_record(name, value, unit=None, time=None, seq=None, **extras):
    """A record for quantity `name`; `unit` defaults to the quantity's canonical unit.

    `time` is POSIX seconds (int preferred: an ESP32 float has 24 bits); `extras` may be
    ut (update time) and s (sum). The value is not range-checked here: `validate_record`
    and `encode_pack` do that. Raises ValidationError for an unknown quantity, a unit the
    quantity does not allow, or an unknown extra.
    """
    unit = vitals.check_unit(name, unit)
    record = {N: name, V: value}
    record[_unit_label(unit)] = unit
    if time is not None:
        record[T] = time
    if seq is not None:
        record[SEQ] = seq
    for key in extras:
        label = EXTRA_LABELS.get(key)
        if label is None:
            raise ValidationError(key, "unknown extra field (allowed: ut, s)")
        record[label] = extras[key]
    return record


def _unit_label(unit):
    return U if unit in vitals.SENML_UNITS else UCUM_UNIT



# ---------------------------------------------------------------- validation


def _prefix(index):
    return "" if index is None else "records[%d]." % index


def _check_kind(value, kind, field):
    if kind == "num":
        ok = vitals.is_number(value)
    elif kind == "str":
        ok = _type(value) is str
    elif kind == "int" or kind == "uint":
        ok = _type(value) is int and (kind == "int" or value >= 0)
    elif kind == "bool":
        ok = _type(value) is bool
    else:
        ok = _isinstance(value, (bytes, bytearray))
    if not ok:
        expected = {
            "num": "a number",
            "str": "a text string",
            "int": "an integer",
            "uint": "an unsigned integer",
            "bool": "a boolean",
            "bytes": "a byte string",
        }[kind]
        raise ValidationError(field, "must be %s, not %s" % (expected, _type(value).__name__))


def _labelled_fields(record, index, strict=False):
    """Record fields keyed by known label, unknowns handled per the profile; types checked.

    strict (for records we are about to encode) refuses text labels instead of ignoring.
    """
    prefix = _prefix(index)
    if not _isinstance(record, dict):
        raise ValidationError(prefix[:-1] or "record", "record is not a map")
    if _len(record) > MAX_FIELDS:
        raise ValidationError(prefix[:-1] or "record", "more than %d fields" % MAX_FIELDS)
    fields = {}
    for key in record:
        kind = _type(key)
        if kind is str:
            label = TEXT_LABELS.get(key)
            if label is None:
                if strict:
                    raise ValidationError(prefix + key, "not a label this profile encodes")
                if key.endswith("_"):
                    raise ValidationError(prefix + key, "unknown must-understand label")
                continue  # RFC 8428 section 4.4: ignore fields we do not recognise
        elif kind is int:
            label = key
            if label not in LABELS:
                raise ValidationError(
                    prefix + str(key), "unknown integer label (integers are must-understand)"
                )
        else:
            raise ValidationError(prefix[:-1] or "record", "label of type %s" % kind.__name__)
        name, expected = LABELS[label]
        if label in fields:
            raise ValidationError(prefix + name, "field given twice")
        _check_kind(record[key], expected, prefix + name)
        fields[label] = record[key]
    return fields


def _valid_name(name):
    if not name or name[0] not in _NAME_START:
        return False
    for ch in name:
        if ch not in _NAME_CHARS:
            return False
    return True


def _reading(record, index):
    """Validate one self-contained (resolved) record and return its Reading."""
    prefix = _prefix(index)
    fields = _labelled_fields(record, index)
    for label in (BVER, BN, BT, BU, BV, BS):
        if label in fields:
            raise ValidationError(prefix + LABELS[label][0], "base field in a resolved record")
    name = fields.get(N)
    if not name:
        raise ValidationError(prefix + "n", "missing name")
    if not _valid_name(name):
        raise ValidationError(prefix + "n", "name %r has characters RFC 8428 forbids" % (name,))
    quantity = name[name.rfind(":") + 1 :]
    try:
        entry = vitals.quantity(quantity)
    except ValidationError as exc:
        raise ValidationError(prefix + "n", exc.reason) from None
    present = [label for label in VALUE_LABELS if label in fields]
    if _len(present) > 1:
        raise ValidationError(prefix + "v", "more than one value field")
    if not present:
        raise ValidationError(prefix + "v", "missing value")
    if present[0] != V:
        raise ValidationError(prefix + LABELS[present[0]][0], "vitals need a numeric value (v)")
    value = fields[V]
    unit, unit_field = _record_unit(fields, entry, quantity, prefix)
    try:
        vitals.check_value(quantity, value, unit)
    except ValidationError as exc:
        field = unit_field if exc.field == "u" else exc.field
        raise ValidationError(prefix + field, exc.reason) from None
    seq = fields.get(SEQ)
    if seq is None:
        raise ValidationError(prefix + "seq", "missing sequence number")
    if seq < 0 or seq >= SEQ_LIMIT:
        raise ValidationError(prefix + "seq", "sequence number %d is outside 0..2**32-1" % seq)
    time = fields.get(T)
    if time is not None and not (vitals.is_finite(time) and -TIME_MAX < time < TIME_MAX):
        raise ValidationError(prefix + "t", "time %r is not a finite time in range" % (time,))
    extras = {}
    for label in (UT, S):
        if label in fields:
            extra = fields[label]
            if not vitals.is_finite(extra):
                raise ValidationError(prefix + LABELS[label][0], "not finite")
            if label == UT and not (0 <= extra < UPDATE_TIME_LIMIT):
                raise ValidationError(prefix + "ut", "update time must be 0..2**32-1 seconds")
            extras[LABELS[label][0]] = extra
    return Reading(name, quantity, unit, value, time, seq, extras)


def _record_unit(fields, entry, quantity, prefix):
    """(unit token, error field) for a record, applying the vocabulary's implied unit."""
    if U in fields and UCUM_UNIT in fields:
        raise ValidationError(prefix + "u", "two units: u and ucum_")
    if U in fields:
        unit = fields[U]
        if unit not in vitals.SENML_UNITS:
            raise ValidationError(
                prefix + "u",
                "%r is not a SenML unit this vocabulary uses (SenML '%%' is a 0..1 ratio; "
                "UCUM units such as percent travel in ucum_)" % (unit,),
            )
        return unit, "u"
    if UCUM_UNIT in fields:
        unit = fields[UCUM_UNIT]
        if unit in vitals.SENML_UNITS:
            raise ValidationError(prefix + "ucum_", "%r is a SenML unit: it travels in u" % unit)
        return unit, "ucum_"
    if _len(entry["units"]) > 1:
        raise ValidationError(
            prefix + "u", "unit required: %s has more than one allowed unit" % quantity
        )
    return entry["units"][0], "u"


def validate_record(record, index=None):
    """Check a self-contained record against the profile and the vitals vocabulary.

    `record` carries its full name (or just the quantity) and absolute time, as returned
    by `make_record` or `resolve`. Raises ValidationError naming the field, prefixed with
    "records[<index>]." when `index` is given; returns the record's Reading.
    """
    return _reading(record, index)


# ---------------------------------------------------------------- plain-record tables

# The fast paths below (`_encode_plain`, `_decode_plain`) handle the records VitalBridge
# itself writes: integer labels n, v, u/ucum_, t, seq, ut, s (+ bn/bt when decoding),
# a known quantity as n, absolute times. They never raise: on anything else they return
# None and the general code runs from the start, so every error is the general code's.
# Their answers equal the general code's (differential check: docs/senml.md, "Speed").


def _plain_quantities():
    """quantity -> (wire of `n: quantity`, implied unit or None, {unit: unit rule}, quantity).

    A unit rule is (label it travels in, lowest, highest, wire of `label: unit` when the
    encoder writes it else b"", unit). Derived once from the vocabulary, checked the same
    way the general path checks names and units.
    """
    table = {}
    for name in vitals.QUANTITIES:
        if not _valid_name(name) or ":" in name:
            continue  # resolves differently: leave such a name to the general path
        entry = vitals.QUANTITIES[name]
        units = entry["units"]
        rules = {}
        for unit in units:
            low, high = entry["limits"][unit][0], entry["limits"][unit][1]
            label = _unit_label(unit)
            wire = cbor.dumps(label) + cbor.dumps(unit) if _len(units) > 1 else b""
            rules[unit] = (label, low, high, wire, unit)
        implied = units[0] if _len(units) == 1 else None
        table[name] = (cbor.dumps(N) + cbor.dumps(name), implied, rules, name)
    return table


def _plain_prefix(base_name):
    """True if base_name + quantity is a valid name whose quantity part is `quantity`."""
    return base_name == "" or (
        base_name[-1] == ":" and base_name[0] in _NAME_START and not base_name.strip(_NAME_CHARS)
    )


def _plain_record(record):
    """(bn, bt, quantity rule, unit rule, v, t, seq, ut, s) of a plain record, or None.

    Checked here: only integer labels n v u ucum_ t seq ut s bn bt, no null; the rest in
    `_plain_fields`.
    """
    if _type(record) is not dict:
        return None
    get = record.get
    unit = get(U)
    ucum = get(UCUM_UNIT)
    time = get(T)
    update = get(UT)
    total = get(S)
    bn = get(BN)
    bt = get(BT)
    # n, v and seq are required (checked below); a label outside these ten, or a null,
    # makes the record longer than what was found.
    if _len(record) != 3 + (unit is not None) + (ucum is not None) + (time is not None) + (
        update is not None
    ) + (total is not None) + (bn is not None) + (bt is not None):
        return None
    for key in record:
        if _type(key) is not int:  # True == 1 and 2.0 == 2 would find an int's field
            return None
    return _plain_fields(get(N), get(V), get(SEQ), unit, ucum, time, update, total, bn, bt)


def _plain_fields(name, value, seq, unit, ucum, time, update, total, bn, bt):
    """The record's fields as `_plain_record` returns them, or None. Checked here: n a
    known quantity; the unit rules of `_record_unit`; v a number in the possible range;
    seq, ut and s as `_reading` wants them. Left to the caller: bn, bt and t."""
    if _type(name) is not str:
        return None
    rule = _PLAIN.get(name)
    if rule is None:
        return None
    if unit is None and ucum is None:
        if rule[1] is None:
            return None
        unit_rule = rule[2][rule[1]]
    else:
        unit_rule = _plain_unit(rule, unit, ucum)
        if unit_rule is None:
            return None
    kind = _type(value)
    if (kind is not int and kind is not float) or not unit_rule[1] <= value <= unit_rule[2]:
        return None
    if _type(seq) is not int or seq < 0 or seq >= SEQ_LIMIT:
        return None
    if update is not None:
        kind = _type(update)
        if (kind is not int and kind is not float) or not 0 <= update < UPDATE_TIME_LIMIT:
            return None
    if total is not None:
        kind = _type(total)
        # Within CBOR's int range too: a bigger int is the encoder's ValueError to raise.
        if not (kind is float and total - total == 0) and not (
            kind is int and -(1 << 64) <= total < (1 << 64)
        ):
            return None
    return bn, bt, rule, unit_rule, value, time, seq, update, total


def _plain_unit(rule, unit, ucum):
    """The unit rule for explicit unit fields, or None if the general path must judge."""
    if unit is not None:
        if ucum is not None or _type(unit) is not str:
            return None
        found = rule[2].get(unit)
        return found if found is not None and found[0] == U else None
    if _type(ucum) is not str:
        return None
    found = rule[2].get(ucum)
    return found if found is not None and found[0] == UCUM_UNIT else None


def _is_time(value):
    """A number `_reading` accepts as a time (finite, within +-TIME_MAX)."""
    kind = _type(value)
    return (kind is int or kind is float) and -TIME_MAX < value < TIME_MAX


_PLAIN = _plain_quantities()
# UTF-8 bytes of each plain quantity -> the quantity (for `_decode_wire`).
_PLAIN_NAMES = {}
for _name in _PLAIN:
    _PLAIN_NAMES[_name.encode("utf-8")] = _name

# ---------------------------------------------------------------- packs


def resolve(pack, now=None):
    """Resolve a decoded pack (list of records) into RFC 8428 resolved records.

    Applies bn/bt/bu/bv/bs, checks bver and the value-field rules, and turns relative times
    (below 2**28) into absolute ones using `now` (POSIX seconds of reception); a relative
    time without `now` is a ValidationError. Unknown labels follow the profile (see module
    docstring); ignored text labels are dropped. Returned records keep the pack's order.
    """
    if not _isinstance(pack, list):
        raise ValidationError("pack", "SenML pack must be an array")
    if not pack:
        raise ValidationError("pack", "SenML pack is empty")
    version = SENML_VERSION
    base_name = ""
    base_time = 0
    base_unit = None
    base_value = 0
    base_sum = None
    resolved = []
    for index in range(_len(pack)):
        prefix = _prefix(index)
        fields = _labelled_fields(pack[index], index)
        if BVER in fields:
            bver = fields[BVER]
            if bver > SENML_VERSION:
                raise ValidationError(
                    prefix + "bver", "SenML version %d is newer than %d" % (bver, SENML_VERSION)
                )
            if index == 0:
                version = bver
            elif bver != version:
                raise ValidationError(prefix + "bver", "records of one pack differ in version")
        if BN in fields:
            base_name = fields[BN]
        if BT in fields:
            base_time = fields[BT]
        if BU in fields:
            base_unit = fields[BU]
        if BV in fields:
            base_value = fields[BV]
        if BS in fields:
            base_sum = fields[BS]
        count = 0
        for label in VALUE_LABELS:
            if label in fields:
                count += 1
        if count > 1:
            raise ValidationError(prefix + "v", "more than one value field")
        if count == 0 and S not in fields and base_sum is None:
            raise ValidationError(prefix + "v", "missing value (and no sum)")
        out = {N: base_name + fields.get(N, "")}
        if V in fields:
            out[V] = base_value + fields[V]
        for label in (VS, VB, VD, UT, SEQ, U, UCUM_UNIT):
            if label in fields:
                out[label] = fields[label]
        if U not in fields and UCUM_UNIT not in fields and base_unit is not None:
            out[U] = base_unit
        if S in fields or base_sum is not None:
            out[S] = (base_sum or 0) + fields.get(S, 0)
        time = base_time + fields.get(T, 0)
        if time < ABSOLUTE_TIME_MIN:
            if now is None:
                raise ValidationError(prefix + "t", "relative time and no reception time given")
            time = now + time
            if time < ABSOLUTE_TIME_MIN:
                raise ValidationError(prefix + "t", "relative time reaches back before 1978")
        out[T] = time
        resolved.append(out)
    return resolved


def decode_pack(data, max_records=256, now=None):
    """Decode CBOR bytes into validated Readings (absolute name and time).

    Raises DecodeError for malformed CBOR and ValidationError for anything SenML or the
    vitals vocabulary forbids (see `resolve` and `validate_record`).
    """
    readings = _decode_wire(data, max_records)
    if readings is not None:
        return readings
    pack = cbor.loads(data, max_depth=4, max_items=1 + max_records * (2 * MAX_FIELDS + 1))
    if _isinstance(pack, list) and _len(pack) > max_records:
        raise ValidationError("pack", "more than %d records" % max_records)
    readings = _decode_plain(pack)
    if readings is not None:
        return readings
    records = resolve(pack, now)
    return [_reading(records[i], i) for i in range(_len(records))]


def _decode_plain(pack):
    """`resolve` + `_reading` in one pass for a pack of plain records with absolute times
    (module notes above `_plain_quantities`), or None: then the general path decides."""
    if _type(pack) is not list or not pack:
        return None
    rows = []
    for record in pack:
        fields = _plain_record(record)
        if fields is None:
            return None
        rows.append(fields)
    return _plain_readings(rows)


def _decode_wire(data, max_records):
    """`_decode_plain(cbor.loads(data))` read straight from the bytes, without the decoded
    pack's dicts, for the shape `_encode_plain` writes: an array of 1..255 maps, each of
    one-byte keys in increasing order (canonical order; so no key twice) whose values are
    ints, floats or text strings. None on anything else (another shape or key order,
    more than `max_records` records, truncated or trailing bytes, invalid UTF-8, ...): the
    general path then decodes and judges the same bytes. Items other than one-byte uints
    and quantity names are read by protocol.cbor's own item reader (`cbor.scalar_at`), so
    every field value is the one `cbor.loads` would put in the dict."""
    if _type(data) is not bytes:
        return None
    end = _len(data)
    if end < 2 or end > cbor.MAX_SIZE:
        return None
    head = data[0]
    if 0x80 < head < 0x98:
        count = head - 0x80
        pos = 1
    elif head == 0x98:
        count = data[1]
        pos = 2
    else:
        return None
    if count == 0 or count > max_records:
        return None
    scalar_at = cbor.scalar_at
    names = _PLAIN_NAMES
    rows = []
    for _ in range(count):
        if pos >= end:
            return None
        head = data[pos]
        pos += 1
        if not 0xA0 < head < 0xB8:
            return None
        name = value = seq = unit = ucum = time = update = total = bn = bt = None
        last = -1
        for _ in range(head - 0xA0):
            if pos + 1 >= end:
                return None  # a key and its value need two bytes at least
            key = data[pos]
            if key <= last:
                return None  # out of canonical order, or twice
            last = key
            item = data[pos + 1]
            if item < 0x18:  # a one-byte uint
                pos += 2
            elif item == 0x18 and pos + 2 < end:  # a uint of one argument byte
                item = data[pos + 2]
                pos += 3
            elif item == 0x19 and pos + 3 < end:  # two bytes (seqs from 256 on)
                item = (data[pos + 2] << 8) | data[pos + 3]
                pos += 4
            elif key == N and 0x60 < item < 0x78:
                # A quantity name: its bytes are the key (a UTF-8 text has one encoding).
                pos += 2 + item - 0x60
                item = names.get(data[pos - item + 0x60:pos])
                if item is None or pos > end:
                    return None
            else:
                found = scalar_at(data, pos + 1)
                if found is None:
                    return None
                item, pos = found
            if key == N:
                name = item
            elif key == V:
                value = item
            elif key == SEQ:
                seq = item
            elif key == T:
                time = item
            elif key == 0x21:  # -2 (bn) as one byte
                bn = item
            elif key == 0x22:  # -3 (bt)
                bt = item
            elif key == U:
                unit = item
            elif key == UCUM_UNIT:
                ucum = item
            elif key == UT:
                update = item
            elif key == S:
                total = item
            else:
                return None
        fields = _plain_fields(name, value, seq, unit, ucum, time, update, total, bn, bt)
        if fields is None:
            return None
        rows.append(fields)
    if pos != end:
        return None
    return _plain_readings(rows)


def _plain_readings(rows):
    """Readings of a pack's plain records (`_plain_record` tuples, in order), resolving
    bn, bt and relative record times, or None when the general path must decide."""
    base_name = ""
    base_time = 0
    prefix_ok = True
    readings = []
    for fields in rows:
        bn, bt, rule, unit_rule, value, time, seq, update, total = fields
        if bn is not None:
            if _type(bn) is not str:
                return None
            base_name = bn
            prefix_ok = _plain_prefix(bn)
        if not prefix_ok:
            return None
        if bt is not None:
            if not _is_time(bt):
                return None
            base_time = bt
        if time is None:
            time = base_time
        else:
            kind = _type(time)  # `_is_time`, inline: this runs for every record
            if (kind is not int and kind is not float) or not -TIME_MAX < time < TIME_MAX:
                return None
            time = base_time + time
        if not ABSOLUTE_TIME_MIN <= time < TIME_MAX:
            return None  # relative, or out of range: the general path applies `now` or refuses
        extras = {}
        if update is not None:
            extras["ut"] = update
        if total is not None:
            extras["s"] = 0 + total
        # 0 + value, as resolve adds the (absent) base value: -0.0 resolves to 0.0.
        readings.append(Reading(base_name + rule[3], rule[3], unit_rule[4], 0 + value, time,
                                seq, extras))
    return readings


def _compact_number(x):
    # An integral float encodes smaller as an int (1 byte for 0..23 instead of 3).
    if _type(x) is float and -(1 << 53) < x < (1 << 53) and x == int(x):
        return int(x)
    return x


def _offsets_exact(times, base_time):
    # bt + t must give back each time bit for bit; floats far apart can lose low bits.
    for time in times:
        if base_time + _compact_number(time - base_time) != time:
            return False
    return True


def encode_pack(records, base_name=None, base_time=None):
    """Encode records (as from `make_record`) into the smallest deterministic CBOR pack.

    Record names are quantities relative to `base_name`, which goes into the first record
    as bn. Times are written relative to bt: `base_time`, or else the first record's time
    (or none when that could not reproduce every time exactly); either every record has a
    time or none has. A unit the vocabulary implies is left out. Every record is validated
    first; ValidationError names the field ("records[2].v", "bt", ...).
    """
    if not _isinstance(records, (list, tuple)) or not records:
        raise ValidationError("records", "a pack needs at least one record")
    if base_name is not None and _type(base_name) is not str:
        raise ValidationError("bn", "base name must be a text string")
    if base_time is not None and not (
        vitals.is_finite(base_time) and -TIME_MAX < base_time < TIME_MAX
    ):
        raise ValidationError("bt", "base time must be a finite number in range")
    prefix_name = base_name or ""
    plain = _encode_plain(records, prefix_name, base_time)
    if plain is not None:
        return plain
    names = []
    readings = []
    for index in range(_len(records)):
        fields = _labelled_fields(records[index], index, strict=True)
        full = dict(fields)
        full[N] = prefix_name + fields.get(N, "")
        names.append(fields.get(N, ""))
        readings.append(_reading(full, index))
    timed = [reading.time is not None for reading in readings]
    if any(timed) or base_time is not None:
        for index in range(_len(readings)):
            if not timed[index]:
                raise ValidationError(_prefix(index) + "t", "missing time (others carry one)")
        if base_time is None:
            base_time = _compact_number(readings[0].time)
            if not _offsets_exact([reading.time for reading in readings], base_time):
                base_time = 0  # absolute times in every record: exact, a little bigger
        else:
            base_time = _compact_number(base_time)
            if not _offsets_exact([reading.time for reading in readings], base_time):
                raise ValidationError("bt", "base time cannot express every record time exactly")
    out = []
    for index in range(_len(readings)):
        reading = readings[index]
        item = {}
        if index == 0:
            if prefix_name:
                item[BN] = prefix_name
            if base_time:
                item[BT] = base_time
        if names[index]:
            item[N] = names[index]
        item[V] = _compact_number(reading.value)
        if base_time is not None:
            offset = _compact_number(reading.time - base_time)
            if offset != 0:
                item[T] = offset
        item[SEQ] = reading.seq
        if _len(vitals.quantity(reading.quantity)["units"]) > 1:
            item[_unit_label(reading.unit)] = reading.unit
        for key in reading.extras:
            item[EXTRA_LABELS[key]] = _compact_number(reading.extras[key])
        out.append(item)
    return cbor.dumps(out)


def _encode_plain(records, prefix_name, base_time):
    """`encode_pack` for plain records (notes above `_plain_quantities`) in one pass that
    writes each record's fields in canonical key order straight into the output; None
    whenever the general path must decide (it then also finds any error)."""
    if prefix_name:
        prefix_wire = _prefix_wire(prefix_name)
        if prefix_wire is None:
            return None
    out = bytearray()
    cbor.encode_head_into(out, 0x80, _len(records))
    timed = False
    first = True
    for record in records:
        fields = _plain_record(record)
        if fields is None:
            return None
        bn, bt, rule, unit_rule, value, time, seq, update, total = fields
        if bn is not None or bt is not None:
            return None  # base fields in a record to encode: the general path refuses them
        if first:  # the first record fixes bt, and whether records carry times
            timed = time is not None or base_time is not None
            if timed:
                if time is None:
                    return None
                base_time = _compact_number(time if base_time is None else base_time)
        elif (time is not None) != timed:
            return None
        offset = 0
        if timed:
            if not _is_time(time):
                return None
            offset = time - base_time
            if _type(offset) is float:
                offset = _compact_number(offset)
                if base_time + offset != time:
                    return None  # bt cannot give the time back exactly: general path
        unit_wire = unit_rule[3]
        # Keys in canonical order: n 0, u 1, v 2, s 5, t 6, ut 7, seq 21, ucum_ 22, bn -2,
        # bt -3. A label in 0..23 is its own one-byte CBOR key, so v/s/t/ut/seq go as is.
        count = 3 + (unit_wire != b"") + (total is not None) + (offset != 0) + (update is not None)
        if first:
            count += (prefix_name != "") + (not not base_time)
        out.append(0xA0 | count)  # a map of at most 10 pairs: one-byte head
        out += rule[0]
        if unit_wire and unit_rule[0] == U:
            out += unit_wire
        out.append(V)
        _put_number(out, value)
        if total is not None:
            out.append(S)
            _put_number(out, total)
        if offset != 0:
            out.append(T)
            _put_number(out, offset)
        if update is not None:
            out.append(UT)
            _put_number(out, update)
        out.append(SEQ)
        cbor.encode_head_into(out, 0x00, seq)
        if unit_wire and unit_rule[0] == UCUM_UNIT:
            out += unit_wire
        if first:
            first = False
            if prefix_name:
                out += prefix_wire
            if base_time:
                out += _BT_KEY
                _put_number(out, base_time)
    return bytes(out)


def _put_number(out, x):
    """Append a checked number as `encode_pack` writes it (integral floats as ints)."""
    if _type(x) is float:
        x = _compact_number(x)
        if _type(x) is float:
            out += cbor.float_bytes(x)
            return
    if 0 <= x < 24:
        out.append(x)
    elif x >= 0:
        cbor.encode_head_into(out, 0x00, x)
    else:
        cbor.encode_into(out, x)


_BT_KEY = cbor.dumps(BT)
_last_prefix = ("", b"")


def _prefix_wire(prefix_name):
    """The bytes of `bn: prefix_name` if the base name suits plain records, else None.
    One-entry cache: a device seals every batch under the same base name."""
    global _last_prefix
    if _last_prefix[0] == prefix_name:
        return _last_prefix[1]
    if not _plain_prefix(prefix_name):
        return None
    wire = cbor.dumps(BN) + cbor.dumps(prefix_name)
    _last_prefix = (prefix_name, wire)
    return wire
