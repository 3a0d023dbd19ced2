"""Glucose Measurement 0x2A18 and Record Access Control Point 0x2A52 (GLS 1.0, GSS).

A glucose meter stores records; the collector asks for them through the RACP
(report all / from a sequence number / count / abort) and receives each record as a
Glucose Measurement notification, then a RACP indication closing the procedure.
Concentrations are converted exactly (decimal shift of the SFLOAT exponent):
  kg/L  -> mg/dL : 1 kg/L  = 10**5 mg/dL  (1e6 mg per 10 dL)
  mol/L -> mmol/L: 1 mol/L = 10**3 mmol/L
Runs on MicroPython.
"""

from protocol.errors import GattError
from protocol.gatt import ieee11073
from protocol.gatt.fields import (
    ALWAYS,
    DATE_TIME_SIZE,
    FLAG,
    FlaggedLayout,
    Reader,
    Writer,
    add_minutes,
    bit,
    bits_field,
    date_time_field,
    entry,
    named_code,
    pack_date_time,
    pack_s16,
    pack_uint,
    read_date_time,
    sint16_field,
    uint_field,
)

GLUCOSE_MEASUREMENT = 0x2A18
RECORD_ACCESS_CONTROL_POINT = 0x2A52

_G_TIME_OFFSET = 0x01
_G_CONCENTRATION = 0x02
_G_MOL_PER_L = 0x04
_G_SENSOR_STATUS = 0x08
_G_CONTEXT_FOLLOWS = 0x10
_G_RFU = 0xE0

_MG_DL_SHIFT = 5  # decimal places between kg/L and mg/dL
_MMOL_L_SHIFT = 3  # decimal places between mol/L and mmol/L

SAMPLE_TYPES = {
    1: "capillary_whole_blood",
    2: "capillary_plasma",
    3: "venous_whole_blood",
    4: "venous_plasma",
    5: "arterial_whole_blood",
    6: "arterial_plasma",
    7: "undetermined_whole_blood",
    8: "undetermined_plasma",
    9: "interstitial_fluid",
    10: "control_solution",
}
SAMPLE_LOCATIONS = {
    1: "finger",
    2: "alternate_site_test",
    3: "earlobe",
    4: "control_solution",
    15: "not_available",
}
SENSOR_STATUS_BITS = (  # bits 12-15 RFU
    "device_battery_low",
    "sensor_malfunction",
    "sample_size_insufficient",
    "strip_insertion_error",
    "strip_type_incorrect",
    "result_too_high",
    "result_too_low",
    "temperature_too_high",
    "temperature_too_low",
    "read_interrupted",
    "general_device_fault",
    "time_fault",
)


def _kg_per_l_to_mg_per_dl(mantissa, exponent):
    return ieee11073.decimal_to_float(mantissa, exponent + _MG_DL_SHIFT)


def _mol_per_l_to_mmol_per_l(mantissa, exponent):
    return ieee11073.decimal_to_float(mantissa, exponent + _MMOL_L_SHIFT)


def _user_facing_time(reader, flags, result):
    # No bytes: the record's time is Base Time + Time Offset.
    offset = result["time_offset_min"]
    if offset is None:
        return dict(result["base_time"])
    return add_minutes(result["base_time"], offset)


def _concentration(raw, mmol):
    if mmol:
        return entry("glucose", "mmol/L", raw, False, _mol_per_l_to_mmol_per_l, "mol/L")
    return entry("glucose", "mg/dL", raw, False, _kg_per_l_to_mg_per_dl, "kg/L")


def _read_concentration(reader, flags, result):
    """Glucose Concentration (SFLOAT) and Type-Sample Location (two nibbles): one flag bit."""
    mmol = flags & _G_MOL_PER_L
    result["values"].append(_concentration(reader.u16("concentration"), mmol))
    type_location = reader.u8("type_sample_location")
    return (
        "mol/L" if mmol else "kg/L",
        named_code(type_location & 0x0F, SAMPLE_TYPES),
        named_code(type_location >> 4, SAMPLE_LOCATIONS),
    )


_CONCENTRATION_KEYS = ("concentration_unit", "sample_type", "sample_location")

# GSS "Glucose Measurement" field table, after Flags (rows: fields.read_fields).
_GLUCOSE = FlaggedLayout(
    "glucose",
    GLUCOSE_MEASUREMENT,
    _G_RFU,
    (
        (ALWAYS, "sequence_number", uint_field(2, "sequence_number")),  # Sequence Number
        (ALWAYS, "base_time", date_time_field("base_time")),  # Base Time
        (_G_TIME_OFFSET, "time_offset_min", sint16_field("time_offset")),  # Time Offset, minutes
        (ALWAYS, "timestamp", _user_facing_time),
        (_G_CONCENTRATION, _CONCENTRATION_KEYS, _read_concentration),  # + Type-Sample Location
        (_G_SENSOR_STATUS, "sensor_status", bits_field(2, "sensor_status", SENSOR_STATUS_BITS)),
        (_G_CONTEXT_FOLLOWS, "context_follows", FLAG),
    ),
)


def decode_glucose(data) -> dict:
    """One stored glucose record: sequence number, times, concentration, sample, status.

    "values" holds the concentration as "glucose" in mg/dL (wire kg/L) or mmol/L (wire
    mol/L), or is empty when the record carries no concentration. "timestamp" is the
    user-facing time, base_time + time_offset_min (None if the base date is unknown).
    """
    return _GLUCOSE.decode(data)


def _glucose_sfloat(value, decimals, mmol):
    """SFLOAT in kg/L (mol/L) for `value` mg/dL (mmol/L): same mantissa, shifted exponent."""
    shift = _MMOL_L_SHIFT if mmol else _MG_DL_SHIFT
    if isinstance(decimals, int) and decimals > 8 - shift:
        # The wire exponent is at least -8: finer resolution cannot be carried.
        raise GattError("glucose.concentration: at most %d decimals fit" % (8 - shift))
    try:
        raw = ieee11073.encode_sfloat(value, decimals)
    except GattError as exc:
        raise GattError("glucose.concentration: %s" % exc) from None
    if ieee11073.sfloat_special(raw) is not None:
        return raw
    mantissa, exponent = ieee11073.split_sfloat(raw)
    return (((exponent - shift) & 0x0F) << 12) | (mantissa & 0x0FFF)


def encode_glucose(
    sequence_number: int,
    base_time,
    time_offset_min=None,
    concentration=None,
    mmol: bool = False,
    decimals: int = 0,
    sample_type: int = 1,
    sample_location: int = 1,
    sensor_status=None,
    context_follows: bool = False,
) -> bytes:
    """Glucose Measurement value (simulator helper).

    concentration: mg/dL (mmol/L if mmol) number or 11073 special name, sent as kg/L
    (mol/L) by shifting the exponent, so decode returns exactly what was given;
    sample_type / sample_location: 4-bit codes; sensor_status: uint16 or None.
    """
    for name, value in (("mmol", mmol), ("context_follows", context_follows)):
        if not isinstance(value, bool):
            raise GattError("glucose.%s: expected True or False, got %r" % (name, value))
    flags = bit(0, _G_MOL_PER_L, concentration is not None and mmol)
    writer = Writer("glucose", bit(flags, _G_CONTEXT_FOLLOWS, context_follows))
    writer.field("sequence_number", sequence_number, pack_uint, 2)
    writer.field("base_time", base_time, pack_date_time)
    writer.optional(_G_TIME_OFFSET, "time_offset_min", time_offset_min, pack_s16)
    if concentration is not None:
        writer.flags |= _G_CONCENTRATION
        writer.field("concentration", _glucose_sfloat(concentration, decimals, mmol), pack_uint, 2)
        nibble_type = pack_uint(sample_type, 1, "glucose.sample_type")[0]
        nibble_location = pack_uint(sample_location, 1, "glucose.sample_location")[0]
        if nibble_type > 0x0F or nibble_location > 0x0F:
            raise GattError("glucose.sample_type: type and location are 4-bit codes")
        writer.out.append(nibble_type | (nibble_location << 4))
    writer.optional(_G_SENSOR_STATUS, "sensor_status", sensor_status, pack_uint, 2)
    return writer.value()


# --- Record Access Control Point 0x2A52 -----------------------------------------

RACP_REPORT_STORED_RECORDS = 0x01
RACP_DELETE_STORED_RECORDS = 0x02
RACP_ABORT_OPERATION = 0x03
RACP_REPORT_NUMBER_OF_RECORDS = 0x04
RACP_NUMBER_OF_RECORDS_RESPONSE = 0x05
RACP_RESPONSE_CODE = 0x06

OP_CODES = {
    1: "report_stored_records",
    2: "delete_stored_records",
    3: "abort_operation",
    4: "report_number_of_stored_records",
    5: "number_of_stored_records_response",
    6: "response_code",
    7: "combined_report",  # GSS, not used by GLS
    8: "combined_report_response",
}

OPERATOR_NULL = 0x00
OPERATOR_ALL = 0x01
OPERATOR_LESS_OR_EQUAL = 0x02
OPERATOR_GREATER_OR_EQUAL = 0x03
OPERATOR_WITHIN_RANGE = 0x04
OPERATOR_FIRST = 0x05
OPERATOR_LAST = 0x06
OPERATORS = {
    0: "null",
    1: "all_records",
    2: "less_than_or_equal_to",
    3: "greater_than_or_equal_to",
    4: "within_range_of",
    5: "first_record",
    6: "last_record",
}

FILTER_SEQUENCE_NUMBER = 0x01
FILTER_USER_FACING_TIME = 0x02
FILTER_TYPES = {1: "sequence_number", 2: "user_facing_time"}

RESPONSE_SUCCESS = 0x01
RESPONSE_OP_CODE_NOT_SUPPORTED = 0x02
RESPONSE_INVALID_OPERATOR = 0x03
RESPONSE_OPERATOR_NOT_SUPPORTED = 0x04
RESPONSE_INVALID_OPERAND = 0x05
RESPONSE_NO_RECORDS_FOUND = 0x06
RESPONSE_ABORT_UNSUCCESSFUL = 0x07
RESPONSE_PROCEDURE_NOT_COMPLETED = 0x08
RESPONSE_OPERAND_NOT_SUPPORTED = 0x09
RESPONSE_CODES = {
    1: "success",
    2: "op_code_not_supported",
    3: "invalid_operator",
    4: "operator_not_supported",
    5: "invalid_operand",
    6: "no_records_found",
    7: "abort_unsuccessful",
    8: "procedure_not_completed",
    9: "operand_not_supported",
    10: "server_busy",  # GSS addition, not in GLS 1.0
}

_RECORD_OPS = (
    RACP_REPORT_STORED_RECORDS,
    RACP_DELETE_STORED_RECORDS,
    RACP_REPORT_NUMBER_OF_RECORDS,
)


def _time_order(date_time):
    return tuple(
        date_time[key] or 0 for key in ("year", "month", "day", "hour", "minute", "second")
    )


def _parse_filter(operator, operand):
    """(problem response code or None, filter_type, minimum, maximum) of a record filter."""
    if not operand:
        return RESPONSE_INVALID_OPERAND, None, None, None
    filter_type = operand[0]
    if filter_type not in FILTER_TYPES:
        return RESPONSE_OPERAND_NOT_SUPPORTED, filter_type, None, None
    count = 2 if operator == OPERATOR_WITHIN_RANGE else 1
    size = 2 if filter_type == FILTER_SEQUENCE_NUMBER else DATE_TIME_SIZE
    if len(operand) != 1 + count * size:
        return RESPONSE_INVALID_OPERAND, filter_type, None, None
    reader = Reader(operand[1:], "racp.operand")
    bounds = []
    try:
        for _ in range(count):
            if filter_type == FILTER_SEQUENCE_NUMBER:
                bounds.append(reader.u16("sequence_number"))
            else:
                bounds.append(read_date_time(reader, "user_facing_time"))
    except GattError:
        return RESPONSE_INVALID_OPERAND, filter_type, None, None
    if operator == OPERATOR_LESS_OR_EQUAL:
        return None, filter_type, None, bounds[0]
    if operator == OPERATOR_GREATER_OR_EQUAL:
        return None, filter_type, bounds[0], None
    low, high = bounds
    ordered = (
        low <= high
        if filter_type == FILTER_SEQUENCE_NUMBER
        else _time_order(low) <= _time_order(high)
    )
    if not ordered:
        return RESPONSE_INVALID_OPERAND, filter_type, None, None
    return None, filter_type, low, high


def _request_problem(op_code, operator, operand, result):
    """Response code a GLS server must answer with, or None; fills the filter fields."""
    if op_code == RACP_ABORT_OPERATION:
        if operator != OPERATOR_NULL:
            return RESPONSE_INVALID_OPERATOR
        return RESPONSE_INVALID_OPERAND if operand else None
    if op_code not in _RECORD_OPS:
        return RESPONSE_OP_CODE_NOT_SUPPORTED
    if operator is None or operator == OPERATOR_NULL:
        return RESPONSE_INVALID_OPERATOR
    if operator not in OPERATORS:
        return RESPONSE_OPERATOR_NOT_SUPPORTED
    if operator in (OPERATOR_ALL, OPERATOR_FIRST, OPERATOR_LAST):
        return RESPONSE_INVALID_OPERAND if operand else None
    problem, filter_type, minimum, maximum = _parse_filter(operator, operand)
    result["filter_type"] = filter_type
    result["filter_name"] = FILTER_TYPES.get(filter_type)
    result["minimum"] = minimum
    result["maximum"] = maximum
    return problem


def decode_racp(data) -> dict:
    """A RACP value, request or response.

    Always: "op_code", "op_name", "operator", "operator_name", "operand" (raw bytes),
    "kind" ("request" or "response").
    Responses (op 5, 6) must be well formed or GattError is raised; they add
    "number_of_records" (op 5, uint16 or uint32 operand) or "request_op_code",
    "request_op_name", "response_code", "response_name" (op 6).
    Requests never raise once they have an op code: "problem" is the response code a
    GLS server must answer (None = valid), and record filters add "filter_type",
    "filter_name", "minimum", "maximum" (sequence numbers or Date Time dicts).
    """
    reader = Reader(data, "racp")
    op_code = reader.u8("op_code")
    operator = reader.u8("operator") if reader.remaining() else None
    operand = reader.take(reader.remaining(), "operand")
    result = {
        "characteristic": "racp",
        "uuid": RECORD_ACCESS_CONTROL_POINT,
        "op_code": op_code,
        "op_name": OP_CODES.get(op_code, "reserved"),
        "operator": operator,
        "operator_name": OPERATORS.get(operator, "reserved") if operator is not None else None,
        "operand": operand,
    }
    if op_code in (RACP_NUMBER_OF_RECORDS_RESPONSE, RACP_RESPONSE_CODE):
        result["kind"] = "response"
        if operator != OPERATOR_NULL:
            raise reader.error(
                "operator", "a response carries the Null operator, got %r" % operator
            )
        if op_code == RACP_NUMBER_OF_RECORDS_RESPONSE:
            if len(operand) not in (2, 4):
                raise reader.error(
                    "operand", "number of records must be 2 or 4 bytes, got %d" % len(operand)
                )
            result["number_of_records"] = Reader(operand, "racp").uint(len(operand), "operand")
        else:
            if len(operand) != 2:
                raise reader.error(
                    "operand", "response code operand must be 2 bytes, got %d" % len(operand)
                )
            result["request_op_code"] = operand[0]
            result["request_op_name"] = OP_CODES.get(operand[0], "reserved")
            result["response_code"] = operand[1]
            result["response_name"] = RESPONSE_CODES.get(operand[1], "reserved")
        return result
    result["kind"] = "request"
    result["problem"] = _request_problem(op_code, operator, operand, result)
    return result


def encode_racp_request(
    op_code: int, operator: int, filter_type=None, minimum=None, maximum=None
) -> bytes:
    """Any RACP request: op code, operator and (for <=, >=, within) a filter operand.

    `minimum`/`maximum`: sequence numbers (FILTER_SEQUENCE_NUMBER) or Date Time values
    (FILTER_USER_FACING_TIME); <= takes maximum, >= takes minimum, within takes both.
    """
    out = bytearray(pack_uint(op_code, 1, "racp.op_code") + pack_uint(operator, 1, "racp.operator"))
    bounds = ()
    if operator == OPERATOR_LESS_OR_EQUAL:
        bounds = (maximum,)
    elif operator == OPERATOR_GREATER_OR_EQUAL:
        bounds = (minimum,)
    elif operator == OPERATOR_WITHIN_RANGE:
        bounds = (minimum, maximum)
    elif filter_type is not None or minimum is not None or maximum is not None:
        raise GattError("racp.operand: operator %r takes no operand" % (operator,))
    if bounds:
        if filter_type not in FILTER_TYPES:
            raise GattError("racp.filter_type: %r is not a known filter type" % (filter_type,))
        out.append(filter_type)
        for bound in bounds:
            if bound is None:
                raise GattError("racp.operand: operator %r needs minimum/maximum" % (operator,))
            if filter_type == FILTER_SEQUENCE_NUMBER:
                out += pack_uint(bound, 2, "racp.sequence_number")
            else:
                out += pack_date_time(bound, "racp.user_facing_time")
    return bytes(out)


def encode_racp_report_all() -> bytes:
    """Report all stored records: 01 01."""
    return encode_racp_request(RACP_REPORT_STORED_RECORDS, OPERATOR_ALL)


def encode_racp_report_from(sequence_number: int) -> bytes:
    """Report records with sequence number >= `sequence_number`: 01 03 01 <uint16>."""
    return encode_racp_request(
        RACP_REPORT_STORED_RECORDS,
        OPERATOR_GREATER_OR_EQUAL,
        FILTER_SEQUENCE_NUMBER,
        sequence_number,
    )


def encode_racp_number_of_records(from_sequence_number=None) -> bytes:
    """Report the number of all records (04 01) or of those >= a sequence number."""
    if from_sequence_number is None:
        return encode_racp_request(RACP_REPORT_NUMBER_OF_RECORDS, OPERATOR_ALL)
    return encode_racp_request(
        RACP_REPORT_NUMBER_OF_RECORDS,
        OPERATOR_GREATER_OR_EQUAL,
        FILTER_SEQUENCE_NUMBER,
        from_sequence_number,
    )


def encode_racp_abort() -> bytes:
    """Abort the running procedure: 03 00."""
    return encode_racp_request(RACP_ABORT_OPERATION, OPERATOR_NULL)


def encode_racp_number_of_records_response(count: int) -> bytes:
    """Server answer to a count request: 05 00 <uint16>."""
    return bytes((RACP_NUMBER_OF_RECORDS_RESPONSE, OPERATOR_NULL)) + pack_uint(
        count, 2, "racp.count"
    )


def encode_racp_response_code(request_op_code: int, response_code: int) -> bytes:
    """Server answer closing a procedure: 06 00 <request op code> <response code>."""
    return (
        bytes((RACP_RESPONSE_CODE, OPERATOR_NULL))
        + pack_uint(request_op_code, 1, "racp.request_op_code")
        + pack_uint(response_code, 1, "racp.response_code")
    )
