"""Device configuration: defaults, merging of overrides, validation with clear errors.

A configuration is a plain dict (JSON-compatible, so it can live in `config.json` on the
flash). load(overrides, hal) = DEFAULTS deep-merged with the overrides, validated, with
the device id and serial derived from the chip id when not given. Every problem raises
ConfigError naming the setting, e.g.

    ConfigError: sensors.max30102.poll_ms: must be an integer in 50..1000 (got 5)

Unknown keys are errors too (a typo must not silently leave a default in force).

Sections:
    device      id, model, serial, firmware, provisioning (physical provisioning mode),
                ca_public (hex Ed25519 key of the organisation CA the gateway's
                certificate must chain to, or null)
    sensors     max30102 / max30205 / bp: enabled, rates, and `filters` per quantity
                (firmware/filters.py specs)
    battery     sampling interval, empty/full voltage, low-battery threshold, filters
    retry       backoff of a failing sensor: first and longest wait
    critical    local critical values, per quantity {"low": x, "high": y}: a value <= low
                or >= high is critical (defaults: the NEWS2 single-parameter score-3
                bands -- SpO2 <= 91 %, pulse <= 40 or >= 131, temperature <= 35.0,
                systolic <= 90 or >= 220). They mark a batch critical (flushed and
                checkpointed at once) and drive the offline feedback; the gateway's rules
                stay authoritative (docs/firmware-app.md).
    transports  list of {"kind": "uart" | "ble" | "mqtt", ...options for that transport}
    link        handshake timeout and retry, send pacing, bounded queues
    outbox      firmware/outbox.py sizes and flush policy
    sealing     checkpoint interval
    feedback    buzzer on/off, how long "silence" pauses the audio
    robust      watchdog timeout, crash limit for safe mode, stable uptime, gc threshold
"""

import json

from firmware.filters import build_chain
from protocol import vitals
from protocol.checks import hexstr

FIRMWARE_VERSION = "0.1.0"
MODEL = "VB-ESP32-1"
TRANSPORT_KINDS = ("uart", "ble", "mqtt")
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 8192


class ConfigError(ValueError):
    """A setting is wrong; `path` names it (dotted), the message says why."""

    def __init__(self, path, message):
        super().__init__("%s: %s" % (path, message))
        self.path = path


DEFAULTS = {
    "device": {"id": None, "model": MODEL, "serial": None, "firmware": FIRMWARE_VERSION,
               "provisioning": False, "ca_public": None},
    "sensors": {
        "max30102": {
            "enabled": True, "sample_rate": 100, "averaging": 2, "led_ma": 7.2,
            "poll_ms": 250, "estimate_ms": 1000, "window_s": 8,
            "filters": {
                "pr": [["plausibility", 20, 250, 30], ["median", 3], ["throttle", 5, 60, 3]],
                "spo2": [["plausibility", 50, 100, 8], ["median", 3], ["throttle", 5, 60, 1]],
                "pi": [["plausibility", 0, 20], ["moving_average", 4], ["throttle", 30, 300, 0.5]],
                "sq": [["throttle", 30, 300, 25]],
            },
        },
        "max30205": {
            "enabled": True, "interval_ms": 10000,
            "filters": {
                "temp": [["plausibility", 25, 45, 1.0], ["moving_average", 3],
                         ["throttle", 60, 300, 0.1]],
            },
        },
        "bp": {
            "enabled": True, "port": 1, "poll_ms": 500,
            "filters": {
                "sys": [["plausibility", 40, 280]],
                "dia": [["plausibility", 20, 200]],
                "pr": [["plausibility", 20, 250]],
            },
        },
    },
    "battery": {
        "enabled": True, "interval_ms": 60000, "empty_mv": 3300, "full_mv": 4150,
        "low_percent": 20, "hysteresis": 5,
        "filters": {"bat": [["moving_average", 4], ["throttle", 300, 1800, 5]]},
    },
    "retry": {"min_ms": 1000, "max_ms": 60000},
    "critical": {
        "spo2": {"low": 91},
        "pr": {"low": 40, "high": 131},
        "hr": {"low": 40, "high": 131},
        "temp": {"low": 35.0},
        "sys": {"low": 90, "high": 220},
    },
    "transports": None,  # None: the platform default (see default_transports)
    "link": {
        "handshake_timeout_ms": 10000, "retry_min_ms": 2000, "retry_max_ms": 60000,
        "send_batch": 4, "send_gap_ms": 20, "resend_s": 60, "events_max": 32,
        "pending_max": 64, "inbound_max": 8,
    },
    "outbox": {"segments": 8, "segment_size": 8192, "flush_count": 16, "flush_bytes": 2048,
               "flush_age": 30},
    "sealing": {"checkpoint_interval": 60},
    "feedback": {"buzzer": True, "silence_s": 120},
    "robust": {"watchdog_ms": 10000, "feed_ms": 1000, "crash_limit": 3, "stable_s": 120,
               "gc_threshold": 16384},
}

# path -> (kind, low, high). Kinds: int, num, bool, text, id, filters, bounds, transports.
_RULES = {
    "device.id": ("id", None, None),
    "device.model": ("text", 1, 64),
    "device.serial": ("text", 1, 64),
    "device.firmware": ("text", 1, 64),
    "device.provisioning": ("bool", None, None),
    "device.ca_public": ("hexkey", None, None),
    "sensors.max30102.enabled": ("bool", None, None),
    "sensors.max30102.sample_rate": ("choice", (50, 100, 200, 400), None),
    "sensors.max30102.averaging": ("choice", (1, 2, 4, 8, 16, 32), None),
    "sensors.max30102.led_ma": ("num", 0, 51),
    "sensors.max30102.poll_ms": ("int", 50, 1000),
    "sensors.max30102.estimate_ms": ("int", 250, 60000),
    "sensors.max30102.window_s": ("int", 4, 16),
    "sensors.max30102.filters": ("filters", ("pr", "spo2", "pi", "sq"), None),
    "sensors.max30205.enabled": ("bool", None, None),
    "sensors.max30205.interval_ms": ("int", 1000, 3600000),
    "sensors.max30205.filters": ("filters", ("temp",), None),
    "sensors.bp.enabled": ("bool", None, None),
    "sensors.bp.port": ("int", 0, 2),
    "sensors.bp.poll_ms": ("int", 50, 5000),
    "sensors.bp.filters": ("filters", ("sys", "dia", "pr"), None),
    "battery.enabled": ("bool", None, None),
    "battery.interval_ms": ("int", 1000, 3600000),
    "battery.empty_mv": ("int", 2500, 4500),
    "battery.full_mv": ("int", 2500, 4500),
    "battery.low_percent": ("int", 1, 90),
    "battery.hysteresis": ("int", 1, 50),
    "battery.filters": ("filters", ("bat",), None),
    "retry.min_ms": ("int", 100, 600000),
    "retry.max_ms": ("int", 100, 3600000),
    "critical": ("bounds", None, None),
    "transports": ("transports", None, None),
    "link.handshake_timeout_ms": ("int", 500, 120000),
    "link.retry_min_ms": ("int", 100, 600000),
    "link.retry_max_ms": ("int", 100, 3600000),
    "link.send_batch": ("int", 1, 32),
    "link.send_gap_ms": ("int", 0, 10000),
    "link.resend_s": ("int", 5, 3600),
    "link.events_max": ("int", 4, 256),
    "link.pending_max": ("int", 4, 512),
    "link.inbound_max": ("int", 2, 64),
    "outbox.segments": ("int", 2, 256),
    "outbox.segment_size": ("int", 1024, 65536),
    "outbox.flush_count": ("int", 1, 256),
    "outbox.flush_bytes": ("int", 128, 65536),
    "outbox.flush_age": ("int", 0, 3600),
    "sealing.checkpoint_interval": ("int", 5, 60),
    "feedback.buzzer": ("bool", None, None),
    "feedback.silence_s": ("int", 10, 3600),
    "robust.watchdog_ms": ("int", 2000, 120000),
    "robust.feed_ms": ("int", 100, 60000),
    "robust.crash_limit": ("int", 1, 20),
    "robust.stable_s": ("int", 10, 86400),
    "robust.gc_threshold": ("int", 0, 1 << 24),
}


def copy(value):
    """Deep copy of a JSON-like value (dicts and lists are never shared with DEFAULTS)."""
    if isinstance(value, dict):
        out = {}
        for key in value:
            out[key] = copy(value[key])
        return out
    if isinstance(value, (list, tuple)):
        return [copy(item) for item in value]
    return value


def merge(base, override, path=""):
    """base with override applied: dicts merge key by key, anything else replaces.
    A key base does not have is a ConfigError (typos must not pass)."""
    if not isinstance(override, dict):
        raise ConfigError(path or "config", "must be a map (JSON object)")
    out = copy(base)
    for key in override:
        where = path + "." + str(key) if path else str(key)
        if not isinstance(key, str) or key not in base:
            raise ConfigError(where, "unknown setting")
        value = override[key]
        if isinstance(base[key], dict) and key != "critical":
            out[key] = merge(base[key], value, where)
        else:
            out[key] = copy(value)
    return out


def default_transports(hal_name):
    """The simulated board talks over its serial PTY (UART 0); a real board over BLE."""
    if hal_name == "sim":
        return [{"kind": "uart", "port": 0, "baudrate": 115200}]
    return [{"kind": "ble"}]


def load(overrides=None, hal=None):
    """DEFAULTS + overrides, completed from the HAL (id, serial, transports), validated."""
    config = merge(DEFAULTS, overrides or {})
    device = config["device"]
    chip = hexstr(hal.unique_id()) if hal is not None else "000000000000"
    if device["serial"] is None:
        device["serial"] = chip
    if device["id"] is None:
        device["id"] = "vb-" + chip
    if config["transports"] is None:
        config["transports"] = default_transports(hal.name if hal is not None else "esp32")
    validate(config)
    return config


def read_file(path):
    """Overrides from a JSON file -> dict, or None when there is no file. ConfigError when
    it is not readable JSON (a broken file must not start the device on defaults
    silently: the caller reports it)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "larger than %d bytes" % MAX_CONFIG_BYTES)
    try:
        value = json.loads(data)
    except ValueError:
        raise ConfigError(path, "not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(path, "must hold a JSON object")
    return value


# ---------------------------------------------------------------- validation


def _get(config, path):
    value = config
    for part in path.split("."):
        value = value[part]
    return value


def validate(config):
    """Check every setting -> config; ConfigError for the first problem."""
    for path in _RULES:
        kind, low, high = _RULES[path]
        _check(path, _get(config, path), kind, low, high)
    if config["battery"]["empty_mv"] >= config["battery"]["full_mv"]:
        raise ConfigError("battery.full_mv", "must be above battery.empty_mv")
    if config["retry"]["min_ms"] > config["retry"]["max_ms"]:
        raise ConfigError("retry.max_ms", "must be >= retry.min_ms")
    if config["link"]["retry_min_ms"] > config["link"]["retry_max_ms"]:
        raise ConfigError("link.retry_max_ms", "must be >= link.retry_min_ms")
    if config["robust"]["feed_ms"] * 2 > config["robust"]["watchdog_ms"]:
        raise ConfigError("robust.feed_ms", "must be at most half of robust.watchdog_ms")
    return config


def _is_int(value):
    return type(value) is int


def _is_num(value):
    return (type(value) is int or type(value) is float) and value - value == 0


def _check(path, value, kind, low, high):
    if kind == "int":
        if not _is_int(value) or not low <= value <= high:
            raise ConfigError(path, "must be an integer in %d..%d (got %r)" % (low, high, value))
    elif kind == "num":
        if not _is_num(value) or not low <= value <= high:
            raise ConfigError(path, "must be a number in %s..%s (got %r)" % (low, high, value))
    elif kind == "choice":
        if not _is_int(value) or value not in low:
            raise ConfigError(path, "must be one of %s (got %r)"
                              % (", ".join([str(c) for c in low]), value))
    elif kind == "bool":
        if value is not True and value is not False:
            raise ConfigError(path, "must be true or false (got %r)" % (value,))
    elif kind == "text":
        if not isinstance(value, str) or not low <= len(value) <= high:
            raise ConfigError(path, "must be text of %d..%d characters" % (low, high))
    elif kind == "hexkey":
        if value is not None and (not isinstance(value, str) or len(value) != 64
                                  or not _is_hex(value)):
            raise ConfigError(path, "must be null or 64 hex digits (an Ed25519 public key)")
    elif kind == "id":
        _check_id(path, value)
    elif kind == "filters":
        _check_filters(path, value, low)
    elif kind == "bounds":
        _check_bounds(path, value)
    elif kind == "transports":
        _check_transports(path, value)


def _is_hex(text):
    for ch in text:
        if ch not in "0123456789abcdefABCDEF":
            return False
    return True


def _check_id(path, value):
    from protocol.errors import ValidationError
    from protocol.topics import check_id
    try:
        check_id(path, value)
    except ValidationError as exc:
        raise ConfigError(path, "not a usable device id: %s" % exc) from None


def _check_filters(path, value, quantities):
    if not isinstance(value, dict):
        raise ConfigError(path, "must map quantity -> filter chain")
    for quantity in value:
        if quantity not in quantities:
            raise ConfigError(path + "." + str(quantity),
                              "this sensor reports only %s" % ", ".join(quantities))
        try:
            build_chain(value[quantity])
        except ValueError as exc:
            raise ConfigError(path + "." + quantity, str(exc)) from None
    for quantity in quantities:
        if quantity not in value:
            raise ConfigError(path + "." + quantity, "missing (use [] for no filtering)")


def _check_bounds(path, value):
    if not isinstance(value, dict):
        raise ConfigError(path, "must map quantity -> {\"low\": x, \"high\": y}")
    for quantity in value:
        where = path + "." + str(quantity)
        if quantity not in vitals.QUANTITIES:
            raise ConfigError(where, "unknown quantity")
        bounds = value[quantity]
        if not isinstance(bounds, dict) or not bounds:
            raise ConfigError(where, "must be {\"low\": x} and/or {\"high\": y}")
        for side in bounds:
            if side not in ("low", "high") or not _is_num(bounds[side]):
                raise ConfigError(where + "." + str(side), "must be low or high, a number")
        if "low" in bounds and "high" in bounds and bounds["low"] >= bounds["high"]:
            raise ConfigError(where, "low must be below high")


def _check_transports(path, value):
    if not isinstance(value, list) or not value or len(value) > 4:
        raise ConfigError(path, "must be a list of 1..4 transports")
    for i in range(len(value)):
        spec = value[i]
        where = "%s[%d]" % (path, i)
        if not isinstance(spec, dict) or spec.get("kind") not in TRANSPORT_KINDS:
            raise ConfigError(where + ".kind", "must be one of %s" % ", ".join(TRANSPORT_KINDS))
