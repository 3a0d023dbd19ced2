"""The agent's configuration file (gateway.toml): parsed with tomllib, checked completely.

Every problem is reported with the key path it concerns and what is wrong with it, e.g.

    broker.port: must be an integer 1..65535, got "abc"
    serial[1].usb: usb id 'zz' must look like VID:PID or VID:PID:SERIAL

All problems of a file are collected before anything is raised (`ConfigError.problems`), so a
technician fixes them in one pass. Unknown keys are refused with a suggestion: a misspelt
`disk_budget_md` silently ignored would leave the journal without its budget. Relative paths
are taken relative to the configuration file's directory. The layout of the sections is in
docs/deployment.md; nothing here opens a port, a file other than the TOML, or a socket.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bleak.uuids import normalize_uuid_str

from edge_agent.alarms.grades import Grade
from edge_agent.alarms.notify import NotificationPolicy, PolicyError, QuietHours
from edge_agent.ble_ingest import DeviceConfig
from edge_agent.serial_ingest import DRIVERS, PortConfig, UsbMatch
from protocol.errors import ProtocolError
from protocol.topics import check_id

T = TypeVar("T")
DAY_S = 86400.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
TRANSMISSION_RECORDS = ("all", "refusals")
CRITICAL_GRADES = ("red", "orange", "yellow")


class ConfigError(ValueError):
    """The configuration is unusable. `problems` holds one "key.path: what is wrong" each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- the parsed configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    id: str
    data_dir: Path
    keys_dir: Path  # gateway-signing.key, gateway-agreement.key (0600 in a 0700 directory)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    client_id: str | None = None
    username: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    tls: TlsSettings | None = None


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """The delivery window (edge_agent.uplink.DeliveryConfig; docs/uplink.md)."""

    max_in_flight: int = 64
    urgent_reserve: int = 8
    max_unconfirmed: int = 4096
    receipt_timeout_s: float = 300.0
    sweep_interval_s: float = 30.0  # how often overdue receipts are looked for
    stop_timeout_s: float = 5.0  # graceful shutdown: how long to wait for PUBACKs
    # Fraction of the event loop's time routine publishing may use (alarms never limited):
    # a backlog drain leaves the rest for ingest and alarms (docs/uplink.md).
    routine_cpu_share: float = 0.35


@dataclass(frozen=True, slots=True)
class SerialDevice:
    """A configured serial port and the registry device id it belongs to."""

    device: str
    port: PortConfig


@dataclass(frozen=True, slots=True)
class BleDevice:
    """A configured BLE device and the registry device id it belongs to."""

    device: str
    config: DeviceConfig


@dataclass(frozen=True, slots=True)
class BleSettings:
    max_connections: int = 4
    devices: tuple[BleDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class JournalSettings:
    retention_days: float = 365.0
    disk_budget_mb: float | None = None
    housekeeping_s: float = 60.0  # how often retention and the disk budget are enforced

    @property
    def retention_s(self) -> float:
        return self.retention_days * DAY_S

    @property
    def budget_bytes(self) -> int | None:
        return None if self.disk_budget_mb is None else int(self.disk_budget_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class AlarmSettings:
    escalate_after_s: float = 120.0
    max_escalation_level: int = 3
    # Readings graded at least this (against the patient's limits) travel as critical
    # (priority 1): committed and published ahead of routine data.
    critical_grade: str = "yellow"
    offline_after_s: float = 60.0
    battery_low_percent: float = 20.0
    notify: NotificationPolicy = NotificationPolicy()  # [alarms.notify], docs/alarms.md

    @property
    def critical(self) -> Grade:
        return Grade.from_label(self.critical_grade)


@dataclass(frozen=True, slots=True)
class EventLogSettings:
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 60.0
    # "all": every publish, PUBACK and receipt is an entry; "refusals": only refused publishes
    # (for gateways whose message rate makes three entries per message too costly).
    transmissions: str = "all"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int | None = None  # None: no endpoint; 0: any free port (tests)
    addr: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    source: Path
    gateway: GatewaySettings
    broker: BrokerSettings
    uplink: UplinkSettings = UplinkSettings()
    serial: tuple[SerialDevice, ...] = ()
    ble: BleSettings = BleSettings()
    journal: JournalSettings = JournalSettings()
    alarms: AlarmSettings = AlarmSettings()
    eventlog: EventLogSettings = EventLogSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()


# -- reading ----------------------------------------------------------------------------------


def load_config(path: str | Path) -> AgentConfig:
    """Read and check `path`. ConfigError lists every problem found."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read ({exc.strerror or exc})"]) from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    return parse_config(document, source)


def parse_config(document: Mapping[str, Any], source: Path) -> AgentConfig:
    """Check a parsed TOML document; relative paths are relative to `source`'s directory."""
    reader = _Reader(source.parent if source.suffix else source)
    config = reader.config(document, source)
    if reader.problems:
        raise ConfigError(reader.problems)
    assert config is not None
    return config


def _show(value: object) -> str:
    """A value as the technician wrote it, for error messages (strings quoted)."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


_MISSING = object()


class _Reader:
    """Walks the document, collecting problems instead of stopping at the first."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def problem(self, path: str, text: str) -> None:
        self.problems.append(f"{path}: {text}")

    # -- tables ---------------------------------------------------------------------------

    def table(self, parent: Mapping[str, Any], key: str, path: str,
              required: bool = False) -> Mapping[str, Any] | None:
        value = parent.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.problem(path, "missing table")
            return None if required else {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a table, got {_show(value)}")
            return None
        return value

    def known(self, table: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                where = f"{path}.{key}" if path else key
                suggestion = f"; did you mean {hint[0]!r}?" if hint else \
                    f" (known: {', '.join(allowed)})"
                self.problem(where, f"unknown key{suggestion}")

    # -- scalars ---------------------------------------------------------------------------

    def value(self, table: Mapping[str, Any], key: str, path: str, check: Callable[[Any], Any],
              default: Any = _MISSING) -> Any:
        raw = table.get(key, _MISSING)
        where = f"{path}.{key}"
        if raw is _MISSING:
            if default is _MISSING:
                self.problem(where, "missing")
                return None
            return default
        try:
            return check(raw)
        except ValueError as exc:
            self.problem(where, f"{exc}, got {_show(raw)}")
            return default if default is not _MISSING else None

    def integer(self, table: Mapping[str, Any], key: str, path: str, low: int, high: int,
                default: Any = _MISSING) -> Any:
        def check(raw: object) -> int:
            if type(raw) is not int or not low <= raw <= high:
                raise ValueError(f"must be an integer {low}..{high}")
            return raw
        return self.value(table, key, path, check, default)

    def number(self, table: Mapping[str, Any], key: str, path: str, low: float,
               high: float = math.inf, default: Any = _MISSING, above: bool = False) -> Any:
        def check(raw: object) -> float:
            ok = isinstance(raw, int | float) and not isinstance(raw, bool) and \
                math.isfinite(raw) and (raw > low if above else raw >= low) and raw <= high
            if not ok:
                bound = f"> {low:g}" if above else f">= {low:g}"
                upper = "" if high == math.inf else f" and <= {high:g}"
                raise ValueError(f"must be a number {bound}{upper}")
            return float(raw)  # type: ignore[arg-type]
        return self.value(table, key, path, check, default)

    def text(self, table: Mapping[str, Any], key: str, path: str, default: Any = _MISSING,
             choices: tuple[str, ...] = ()) -> Any:
        def check(raw: object) -> str:
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError("must be a non-empty string")
            if choices and raw not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return raw
        return self.value(table, key, path, check, default)

    def ident(self, table: Mapping[str, Any], key: str, path: str,
              default: Any = _MISSING) -> Any:
        def check(raw: object) -> str:
            try:
                return check_id(key, raw)
            except ProtocolError:
                raise ValueError("must be 1-64 of letters, digits, '-', '_', '.' (a topic "
                                 "segment)") from None
        return self.value(table, key, path, check, default)

    def path(self, table: Mapping[str, Any], key: str, where: str,
             default: Any = _MISSING) -> Any:
        def check(raw: object) -> Path:
            if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
                raise ValueError("must be a file system path")
            given = Path(raw).expanduser()
            return given if given.is_absolute() else (self.base / given)
        return self.value(table, key, where, check, default)

    def boolean(self, table: Mapping[str, Any], key: str, path: str, default: bool) -> Any:
        def check(raw: object) -> bool:
            if not isinstance(raw, bool):
                raise ValueError("must be true or false")
            return raw
        return self.value(table, key, path, check, default)

    # -- sections --------------------------------------------------------------------------

    def config(self, doc: Mapping[str, Any], source: Path) -> AgentConfig | None:
        self.known(doc, "", ("gateway", "broker", "uplink", "serial", "ble", "journal",
                             "alarms", "eventlog", "metrics", "logging"))
        gateway = self.gateway(doc)
        broker = self.broker(doc)
        uplink = self.uplink(doc)
        serial = self.serial(doc)
        ble = self.ble(doc)
        self.unique_devices(serial, ble)
        journal = self.journal(doc)
        alarms = self.alarms(doc)
        eventlog = self.eventlog(doc)
        metrics = self.metrics(doc)
        logging = self.logging(doc)
        if gateway is None or broker is None or self.problems:
            return None
        return AgentConfig(source, gateway, broker, uplink, serial, ble, journal, alarms,
                           eventlog, metrics, logging)

    def gateway(self, doc: Mapping[str, Any]) -> GatewaySettings | None:
        table = self.table(doc, "gateway", "gateway", required=True)
        if table is None:
            return None
        self.known(table, "gateway", ("id", "data_dir", "keys_dir"))
        gateway_id = self.ident(table, "id", "gateway")
        data_dir = self.path(table, "data_dir", "gateway", Path("/var/lib/vitalbridge"))
        keys_dir = self.path(table, "keys_dir", "gateway", None)
        if gateway_id is None or data_dir is None:
            return None
        return GatewaySettings(gateway_id, data_dir, keys_dir or data_dir / "keys")

    def broker(self, doc: Mapping[str, Any]) -> BrokerSettings | None:
        table = self.table(doc, "broker", "broker", required=True)
        if table is None:
            return None
        self.known(table, "broker", ("host", "port", "client_id", "username", "keepalive_s",
                                     "session_expiry_s", "tls"))
        host = self.text(table, "host", "broker")
        tls = self.tls(table)
        port = self.integer(table, "port", "broker", 1, 65535, 8883 if tls else 1883)
        client_id = self.text(table, "client_id", "broker", None)
        username = self.text(table, "username", "broker", None)
        keepalive = self.integer(table, "keepalive_s", "broker", 5, 3600, 30)
        expiry = self.integer(table, "session_expiry_s", "broker", 0, 0xFFFFFFFF, 3600)
        if host is None or port is None:
            return None
        return BrokerSettings(host, port, client_id, username, keepalive, expiry, tls)

    def tls(self, broker: Mapping[str, Any]) -> TlsSettings | None:
        table = broker.get("tls")
        if table is None:
            return None
        if not isinstance(table, dict):
            self.problem("broker.tls", f"must be a table, got {_show(table)}")
            return None
        self.known(table, "broker.tls", ("ca", "cert", "key"))
        ca = self.path(table, "ca", "broker.tls")
        cert = self.path(table, "cert", "broker.tls")
        key = self.path(table, "key", "broker.tls")
        if ca is None or cert is None or key is None:
            return None
        return TlsSettings(ca, cert, key)

    def uplink(self, doc: Mapping[str, Any]) -> UplinkSettings:
        table = self.table(doc, "uplink", "uplink") or {}
        self.known(table, "uplink", ("max_in_flight", "urgent_reserve", "max_unconfirmed",
                                     "receipt_timeout_s", "sweep_interval_s",
                                     "stop_timeout_s", "routine_cpu_share"))
        defaults = UplinkSettings()
        window = self.integer(table, "max_in_flight", "uplink", 2, 65534, defaults.max_in_flight)
        reserve = self.integer(table, "urgent_reserve", "uplink", 0, 65533,
                               defaults.urgent_reserve)
        if window is not None and reserve is not None and reserve >= window:
            self.problem("uplink.urgent_reserve", f"must be below uplink.max_in_flight "
                         f"({window}), got {reserve}")
        return UplinkSettings(
            window, reserve,
            self.integer(table, "max_unconfirmed", "uplink", 1, 1 << 40,
                         defaults.max_unconfirmed),
            self.number(table, "receipt_timeout_s", "uplink", 1.0,
                        default=defaults.receipt_timeout_s),
            self.number(table, "sweep_interval_s", "uplink", 0.1,
                        default=defaults.sweep_interval_s),
            self.number(table, "stop_timeout_s", "uplink", 0.0, 600.0,
                        default=defaults.stop_timeout_s),
            self.number(table, "routine_cpu_share", "uplink", 0.0, 1.0, above=True,
                        default=defaults.routine_cpu_share))

    def array(self, doc: Mapping[str, Any], key: str, path: str) -> list[Mapping[str, Any]]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problem(path, f"must be an array of tables ([[{path}]]), got {_show(value)}")
            return []
        return value

    def serial(self, doc: Mapping[str, Any]) -> tuple[SerialDevice, ...]:
        devices = []
        for index, table in enumerate(self.array(doc, "serial", "serial")):
            where = f"serial[{index}]"
            self.known(table, where, ("name", "device", "driver", "path", "usb", "baudrate"))
            name = self.text(table, "name", where)
            device = self.ident(table, "device", where)
            driver = self.text(table, "driver", where, None, choices=tuple(DRIVERS))
            path = self.text(table, "path", where, None)
            usb = self.value(table, "usb", where, _usb, None)
            baudrate = self.integer(table, "baudrate", where, 50, 12_000_000, None)
            port = self.entry(where, (name, device), PortConfig, name, driver, path, usb,
                              baudrate)
            if port is not None:
                devices.append(SerialDevice(device, port))
        self.unique("serial", [d.port.name for d in devices], "name")
        return tuple(devices)

    def ble(self, doc: Mapping[str, Any]) -> BleSettings:
        table = self.table(doc, "ble", "ble") or {}
        self.known(table, "ble", ("max_connections", "devices"))
        max_connections = self.integer(table, "max_connections", "ble", 1, 32, 4)
        devices = []
        for index, item in enumerate(self.array(table, "devices", "ble.devices")):
            where = f"ble.devices[{index}]"
            self.known(item, where, ("name", "device", "address", "local_name", "service_uuid",
                                     "bonding"))
            name = self.text(item, "name", where)
            device = self.ident(item, "device", where)
            address = self.text(item, "address", where, None)
            local_name = self.text(item, "local_name", where, None)
            service = self.value(item, "service_uuid", where, _uuid, None)
            bonding = self.boolean(item, "bonding", where, False)
            config = self.entry(where, (name, device), DeviceConfig, name, address, local_name,
                                service, bonding)
            if config is not None:
                devices.append(BleDevice(device, config))
        self.unique("ble.devices", [d.config.name for d in devices], "name")
        self.unique("ble.devices", [d.config.address for d in devices if d.config.address],
                    "address")
        return BleSettings(max_connections or 4, tuple(devices))

    def entry(self, where: str, required: tuple[Any, ...], build: Callable[..., T],
              *args: Any) -> T | None:
        """`build(*args)`: the component's own settings object for one array entry, once its
        keys read cleanly; its refusal (ValueError) becomes a problem at `where`."""
        if any(value is None for value in required) or \
                any(p.startswith(where + ".") for p in self.problems):
            return None
        try:
            return build(*args)
        except ValueError as exc:
            self.problem(where, _without_prefix(str(exc)))
            return None

    def unique(self, path: str, values: list[Any], key: str) -> None:
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            self.problem(path, f"{key} must be unique, repeated: {', '.join(repeated)}")

    def unique_devices(self, serial: tuple[SerialDevice, ...],
                       ble: BleSettings) -> None:
        """A registry device reaches the gateway over one link: two links claiming it would
        let one carry the other's messages past the link binding."""
        owners = [d.device for d in serial] + [d.device for d in ble.devices]
        self.unique("serial/ble", owners, "device")

    def journal(self, doc: Mapping[str, Any]) -> JournalSettings:
        table = self.table(doc, "journal", "journal") or {}
        self.known(table, "journal", ("retention_days", "disk_budget_mb", "housekeeping_s"))
        return JournalSettings(
            self.number(table, "retention_days", "journal", 0.0, default=365.0, above=True),
            self.number(table, "disk_budget_mb", "journal", 1.0, default=None),
            self.number(table, "housekeeping_s", "journal", 0.5, 3600.0, default=60.0))

    def alarms(self, doc: Mapping[str, Any]) -> AlarmSettings:
        table = self.table(doc, "alarms", "alarms") or {}
        self.known(table, "alarms", ("escalate_after_s", "max_escalation_level",
                                     "critical_grade", "offline_after_s",
                                     "battery_low_percent", "notify"))
        defaults = AlarmSettings()
        return AlarmSettings(
            self.number(table, "escalate_after_s", "alarms", 0.0,
                        default=defaults.escalate_after_s, above=True),
            self.integer(table, "max_escalation_level", "alarms", 0, 255,
                         defaults.max_escalation_level),
            self.text(table, "critical_grade", "alarms", defaults.critical_grade,
                      choices=CRITICAL_GRADES),
            self.number(table, "offline_after_s", "alarms", 0.0,
                        default=defaults.offline_after_s, above=True),
            self.number(table, "battery_low_percent", "alarms", 0.0, 100.0,
                        default=defaults.battery_low_percent),
            self.notify(table))

    # -- [alarms.notify]: who hears of an alarm, quiet hours (edge_agent/alarms/notify.py) --

    def notify(self, alarms: Mapping[str, Any]) -> NotificationPolicy:
        where = "alarms.notify"
        table = self.table(alarms, "notify", where) or {}
        grades = tuple(g.label for g in Grade)
        self.known(table, where, (*grades, "quiet_hours", "notify_command", "timezone"))
        defaults = NotificationPolicy()
        routes = {}
        for grade in Grade:
            routes[grade] = self.value(table, grade.label, where, _recipients,
                                       defaults.routes[grade])
        quiet = None
        quiet_table = self.table(table, "quiet_hours", f"{where}.quiet_hours")
        if quiet_table:
            quiet = self.quiet_hours(quiet_table, f"{where}.quiet_hours")
        command = self.value(table, "notify_command", where, _argv, ())
        zone = self.value(table, "timezone", where, _timezone, None)
        try:
            return NotificationPolicy(routes, quiet, command, zone)
        except PolicyError as exc:
            self.problem(f"{where}.{exc.key}", exc.message)
            return defaults

    def quiet_hours(self, table: Mapping[str, Any], where: str) -> QuietHours | None:
        self.known(table, where, ("start", "end", "grades"))
        grades = table.get("grades", ["yellow", "blue"])
        if not isinstance(grades, list):
            self.problem(f"{where}.grades", f"must be an array of grades, got {_show(grades)}")
            return None
        for key in ("start", "end"):
            if key not in table:
                self.problem(f"{where}.{key}", "missing (a time of day \"HH:MM\")")
        try:
            return QuietHours.parse(table.get("start"), table.get("end"), grades)
        except PolicyError as exc:
            if exc.key not in ("start", "end") or exc.key in table:
                self.problem(f"{where}.{exc.key}", exc.message)
            return None

    def eventlog(self, doc: Mapping[str, Any]) -> EventLogSettings:
        table = self.table(doc, "eventlog", "eventlog") or {}
        self.known(table, "eventlog", ("checkpoint_every", "checkpoint_interval_s",
                                       "transmissions"))
        defaults = EventLogSettings()
        return EventLogSettings(
            self.integer(table, "checkpoint_every", "eventlog", 1, 1_000_000,
                         defaults.checkpoint_every),
            self.number(table, "checkpoint_interval_s", "eventlog", 0.0,
                        default=defaults.checkpoint_interval_s, above=True),
            self.text(table, "transmissions", "eventlog", defaults.transmissions,
                      choices=TRANSMISSION_RECORDS))

    def metrics(self, doc: Mapping[str, Any]) -> MetricsSettings:
        table = self.table(doc, "metrics", "metrics") or {}
        self.known(table, "metrics", ("port", "addr"))
        return MetricsSettings(self.integer(table, "port", "metrics", 0, 65535, None),
                               self.text(table, "addr", "metrics", "127.0.0.1"))

    def logging(self, doc: Mapping[str, Any]) -> LoggingSettings:
        table = self.table(doc, "logging", "logging") or {}
        self.known(table, "logging", ("level", "format"))

        def level(raw: object) -> str:
            if not isinstance(raw, str) or raw.upper() not in LOG_LEVELS:
                raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
            return raw.upper()
        return LoggingSettings(self.value(table, "level", "logging", level, "INFO"),
                               self.text(table, "format", "logging", "json",
                                         choices=LOG_FORMATS))


def _usb(raw: object) -> UsbMatch:
    if not isinstance(raw, str):
        raise ValueError("must be a string VID:PID or VID:PID:SERIAL")
    return UsbMatch.parse(raw)


def _recipients(raw: object) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ValueError("must be an array of recipients (centre, device, local)")
    return frozenset(raw)


def _argv(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or \
            not all(isinstance(item, str) and item and "\x00" not in item for item in raw):
        raise ValueError("must be a non-empty array of strings (argv, no shell)")
    return tuple(raw)


def _timezone(raw: object) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(raw, str) or not raw:
        raise ValueError("must be an IANA time zone name such as \"Europe/London\"")
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a known IANA time zone") from None
    return raw


def _uuid(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a UUID string (16-bit like \"1822\" or 128-bit)")
    try:
        return normalize_uuid_str(raw)
    except (ValueError, TypeError, AttributeError):
        raise ValueError("is not a UUID") from None


def _without_prefix(text: str) -> str:
    """The ingest packages prefix their messages with "serial port 'x': " / "ble device 'x':
    "; the key path already says where."""
    head, sep, rest = text.partition(": ")
    return rest if sep and ("'" in head) else text
