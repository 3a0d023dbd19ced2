"""Field-level helpers shared by the GATT characteristic codecs.

A bounds-checked little-endian reader whose errors name the field, the field-table
interpreter every flag-driven decoder uses (`decode_flagged`), little-endian packers and
the `Writer` the encoders use, the 7-byte Date Time field (GSS "Date Time",
org.bluetooth.characteristic.date_time) and the measurement-entry dicts every decoder
returns. Runs on MicroPython.
"""

from protocol.errors import GattError
from protocol.gatt import ieee11073


class Reader:
    """Reads fields of one characteristic value; every error names characteristic.field."""

    def __init__(self, data, name):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise GattError("%s: expected bytes, got %s" % (name, type(data).__name__))
        self.data = bytes(data)
        self.pos = 0
        self.name = name

    def error(self, field, reason):
        return GattError("%s.%s: %s" % (self.name, field, reason))

    def take(self, size, field):
        end = self.pos + size
        if end > len(self.data):
            raise self.error(
                field,
                "truncated: needs %d bytes at offset %d, only %d left"
                % (size, self.pos, len(self.data) - self.pos),
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size, field):
        pos = self.pos
        if pos + size > len(self.data):
            self.take(size, field)  # raises the truncation error
        self.pos = pos + size
        return int.from_bytes(self.data[pos : pos + size], "little")

    # u8/u16 are the hot path: direct indexing, and few locals (see FlaggedLayout.decode).
    def u8(self, field):
        pos = self.pos
        if pos >= len(self.data):
            self.take(1, field)  # raises the truncation error
        self.pos = pos + 1
        return self.data[pos]

    def u16(self, field):
        pos = self.pos
        if pos + 2 > len(self.data):
            self.take(2, field)  # raises the truncation error
        self.pos = pos + 2
        return self.data[pos] | self.data[pos + 1] << 8

    def s16(self, field):
        value = self.u16(field)
        return value - 0x10000 if value & 0x8000 else value

    def u24(self, field):
        return self.uint(3, field)

    def remaining(self):
        return len(self.data) - self.pos

    def finish(self, rfu_flags):
        """Reject trailing bytes unless an RFU flag announces fields we do not know."""
        extra = self.remaining()
        if extra and not rfu_flags:
            raise GattError(
                "%s: %d trailing bytes after the last field the flags announce" % (self.name, extra)
            )


# --- field tables -------------------------------------------------------------
#
# A flag-driven characteristic is described by rows (flag mask, key, read), one per
# field in the order the GSS field table puts them on the wire. The field is present
# when the mask is ALWAYS or shares a bit with the flags; read(reader, flags, result)
# returns its value, stored under `key` (None when absent). A key None means read
# appends to result["values"] itself; a tuple of keys takes one value per key.
# Rows that read no bytes (FLAG, derived values) sit where their key belongs in
# the result, so the decoded dict keeps one fixed key order.

ALWAYS = 0
FLAG = "flag"  # a row (mask, key, FLAG) stores bool(flags & mask): a flag bit, no bytes


def read_fields(reader, flags, rows, result):
    """Read the present fields of `rows` into `result`, which holds None for every key."""
    for mask, key, read in rows:
        if read is FLAG:
            result[key] = flags & mask != 0
        elif not mask or flags & mask:
            value = read(reader, flags, result)
            if key.__class__ is str:
                result[key] = value
            elif key is not None:
                _store_each(result, key, value)


def _store_each(result, keys, values):
    for i in range(len(keys)):
        result[keys[i]] = values[i]


class FlaggedLayout:
    """A characteristic made of a flags byte and the fields `rows` describe."""

    def __init__(self, name, uuid, rfu_mask, rows):
        self.name = name
        self.uuid = uuid
        self.rfu_mask = rfu_mask
        self.rows = rows
        # Every key, None for now, in result order: one right-sized copy per decode.
        template = {"characteristic": name, "uuid": uuid, "flags": 0, "rfu_flags": 0}
        template["values"] = None
        for _mask, key, _read in rows:
            for each in (key,) if key.__class__ is str else key or ():
                template[each] = None
        self.template = template

    def decode(self, data):
        """{"characteristic", "uuid", "flags", "rfu_flags", "values", ...row keys}.

        Trailing bytes are an error unless an RFU flag is set. Few locals on purpose:
        MicroPython moves a call frame of more than 11 slots to the heap, which cost
        this decoder half its speed.
        """
        reader = Reader(data, self.name)
        flags = reader.u8("flags")
        result = self.template.copy()
        result["flags"] = flags
        result["rfu_flags"] = flags & self.rfu_mask
        result["values"] = []
        read_fields(reader, flags, self.rows, result)
        reader.finish(flags & self.rfu_mask)
        return result


def uint_field(size, field):
    if size == 2:
        return lambda reader, flags, result: reader.u16(field)
    return lambda reader, flags, result: reader.uint(size, field)


def sint16_field(field):
    return lambda reader, flags, result: reader.s16(field)


def date_time_field(field):
    return lambda reader, flags, result: read_date_time(reader, field)


def code_field(field, names):
    """uint8 enumeration -> named_code()."""
    return lambda reader, flags, result: named_code(reader.uint(1, field), names)


def bits_field(size, field, names):
    """Little-endian bit field of `size` bytes -> bitfield()."""
    return lambda reader, flags, result: bitfield(reader.uint(size, field), names)


def sfloat_entry(field, name, unit):
    """Row reader appending an SFLOAT measurement to result["values"] (use key None)."""

    def read(reader, flags, result):
        result["values"].append(entry(name, unit, reader.u16(field)))

    return read


# --- packing -------------------------------------------------------------------


class Writer:
    """Builds a flags byte and the fields after it; errors name "characteristic.field".

    `optional` packs a field and sets its flag bit only when its value is not None:
    fields are written in call order, which must be the GSS field-table order.
    """

    def __init__(self, name, flags=0):
        self.name = name
        self.flags = flags
        self.out = bytearray(1)

    def field(self, field, value, pack, *args):
        """Append pack(value, *args, "characteristic.field")."""
        self.out += pack(value, *args, "%s.%s" % (self.name, field))

    def optional(self, mask, field, value, pack, *args):
        if value is not None:
            self.flags |= mask
            self.field(field, value, pack, *args)

    def value(self):
        self.out[0] = self.flags
        return bytes(self.out)


def pack_uint(value, size, field):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >> (8 * size):
        raise GattError("%s: %r is not a %d-bit unsigned integer" % (field, value, 8 * size))
    return bytes((value >> (8 * i)) & 0xFF for i in range(size))


def pack_s16(value, field):
    if isinstance(value, bool) or not isinstance(value, int) or not -0x8000 <= value <= 0x7FFF:
        raise GattError("%s: %r is not a signed 16-bit integer" % (field, value))
    return pack_uint(value & 0xFFFF, 2, field)


def pack_sfloat(value, decimals, field):
    try:
        return pack_uint(ieee11073.encode_sfloat(value, decimals), 2, field)
    except GattError as exc:
        raise GattError("%s: %s" % (field, exc)) from None


def pack_float(value, decimals, field):
    try:
        return pack_uint(ieee11073.encode_float(value, decimals), 4, field)
    except GattError as exc:
        raise GattError("%s: %s" % (field, exc)) from None


def quantize(value, steps_per_unit, field):
    """Integer count of 1/steps_per_unit resolution steps nearest to `value`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise GattError("%s: %r is not a finite number" % (field, value))
    if isinstance(value, int):
        return value * steps_per_unit
    if value in (float("inf"), -float("inf")):
        raise GattError("%s: %r is not a finite number" % (field, value))
    return ieee11073.round_half_away(value * steps_per_unit)


def bit(flags, mask, present):
    return flags | mask if present else flags


# --- measurement entries -----------------------------------------------------


def entry(name, unit, raw, is_float32=False, convert=None, reported_unit=None):
    """A measurement dict from one SFLOAT/FLOAT word.

    {"n": name, "v": float, "u": unit} plus "special" when the word is an 11073 special
    value (then "v" is nan or +/-inf), plus "reported": {"v", "u"} when `convert`
    (mantissa, exponent) -> float changed the unit from `reported_unit`.
    `name` None omits "n" (not one of the project quantities).
    """
    if is_float32:
        special = ieee11073.float_special(raw)
        mantissa, exponent = ieee11073.split_float(raw)
    else:
        special = ieee11073.sfloat_special(raw)
        mantissa, exponent = ieee11073.split_sfloat(raw)
    if special is not None:
        as_reported = value = ieee11073.SPECIAL_VALUES[special]
    else:
        as_reported = ieee11073.decimal_to_float(mantissa, exponent)
        value = convert(mantissa, exponent) if convert is not None else as_reported
    result = {"v": value, "u": unit}
    if name is not None:
        result["n"] = name
    if special is not None:
        result["special"] = special
    if reported_unit is not None:
        result["reported"] = {"v": as_reported, "u": reported_unit}
    return result


def named_code(code, names):
    """{"code": n, "name": str} for an enumerated field; unknown codes are "reserved"."""
    return {"code": code, "name": names.get(code, "reserved")}


def bitfield(raw, names):
    """{"raw": int, "set": [names of the defined bits that are set]} (RFU bits unnamed)."""
    return {"raw": raw, "set": [names[i] for i in range(len(names)) if names[i] and raw >> i & 1]}


# --- Date Time (7 bytes) -----------------------------------------------------

DATE_TIME_SIZE = 7
_TIME_KEYS = ("year", "month", "day", "hour", "minute", "second")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year, month):
    if month == 2 and year and not _is_leap(year):
        return 28
    return _DAYS_IN_MONTH[month - 1]


def _check_date_time(year, month, day, hour, minute, second):
    """Reason the fields break the Date Time ranges (0 = unknown y/m/d), or None."""
    if year and not 1582 <= year <= 9999:
        return "year %d outside 1582..9999 (0 = unknown)" % year
    if month > 12:
        return "month %d outside 1..12 (0 = unknown)" % month
    if day > 31:
        return "day %d outside 1..31 (0 = unknown)" % day
    if month and day and day > _days_in_month(year, month):
        return "day %d does not exist in month %d of year %d" % (day, month, year)
    if hour > 23:
        return "hour %d outside 0..23" % hour
    if minute > 59:
        return "minute %d outside 0..59" % minute
    if second > 59:
        return "second %d outside 0..59" % second
    return None


def read_date_time(reader, field):
    """Decode a Date Time field to {"year", "month", "day", "hour", "minute", "second"}.

    Unknown year/month/day (0 on the wire) become None. Out-of-range fields raise.
    """
    year = reader.u16(field)
    month, day, hour, minute, second = reader.take(5, field)
    reason = _check_date_time(year, month, day, hour, minute, second)
    if reason is not None:
        raise reader.error(field, reason)
    return {
        "year": year or None,
        "month": month or None,
        "day": day or None,
        "hour": hour,
        "minute": minute,
        "second": second,
    }


def pack_date_time(value, field):
    """7 bytes for a Date Time given as a dict (None = unknown y/m/d) or a sequence
    whose first six items are year..second (e.g. time.localtime())."""
    if isinstance(value, dict):
        try:
            parts = [value[key] for key in _TIME_KEYS]
        except KeyError as exc:
            raise GattError("%s: missing %s" % (field, exc)) from None
    elif isinstance(value, (tuple, list)) and len(value) >= 6:
        parts = list(value[:6])
    else:
        raise GattError("%s: expected a dict or a (y, m, d, h, min, s) sequence" % field)
    for i in range(3):
        if parts[i] is None:
            parts[i] = 0
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int) or part < 0:
            raise GattError("%s: %r is not a non-negative integer" % (field, part))
    reason = _check_date_time(*parts)
    if reason is not None:
        raise GattError("%s: %s" % (field, reason))
    return pack_uint(parts[0], 2, field) + bytes(parts[1:])


def _days_from_civil(year, month, day):
    # Proleptic Gregorian day count (days since 1970-01-01), integer arithmetic only.
    if month <= 2:
        year -= 1
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days):
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    year = year_of_era + era * 400
    if month <= 2:
        year += 1
    return year, month, day


def add_minutes(date_time, minutes):
    """The Date Time dict `minutes` later (negative: earlier); None if y/m/d is unknown."""
    if date_time["year"] is None or date_time["month"] is None or date_time["day"] is None:
        return None
    days = _days_from_civil(date_time["year"], date_time["month"], date_time["day"])
    total = (days * 24 + date_time["hour"]) * 60 + date_time["minute"] + minutes
    day_count, minute_of_day = divmod(total, 1440)
    year, month, day = _civil_from_days(day_count)
    return {
        "year": year,
        "month": month,
        "day": day,
        "hour": minute_of_day // 60,
        "minute": minute_of_day % 60,
        "second": date_time["second"],
    }
