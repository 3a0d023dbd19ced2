"""The edge agent: one asyncio service from device links to the monitoring centre.

    serial (pyserial) ─┐                                ┌─▶ device-ack over the same link
    BLE (bleak) ───────┴─▶ Reception: verify ─▶ journal ┼─▶ AlarmPath ─▶ alarm steps ─▶ journal
                                                        └─▶ event journal, metrics
    journal ─▶ Delivery (MQTT 5, QoS 1, window, receipts) ─▶ broker ─▶ centre
    centre ─▶ down/receipt, down/alarm-ack, down/limits

`AgentService(config).run()` opens the stores, starts the pipeline, then ingest last, and
waits for SIGTERM/SIGINT. Shutdown runs in the opposite order: ingest stops first (no new
input), everything received is verified and committed, pending alarm steps are journaled,
the uplink waits up to `uplink.stop_timeout_s` for outstanding PUBACKs, the event journal
signs its tail, and the reading journal is flushed and closed last. docs/agent.md has the
tasks, queues, back-pressure and measured figures.

Never logged: key material, payload bytes, measured values (logging_setup's redaction
filter is the second line of defence).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from edge_agent.agent.alarm_path import AlarmPath, JournaledAlarm, PatientDevices
from edge_agent.agent.durable import CursorFile, LimitCommandStore
from edge_agent.agent.observed_link import ObservedLink, Transmission
from edge_agent.agent.reception import Inbound, LinkRef, Outcome, Reception
from edge_agent.agent.recorder import EventRecorder
from edge_agent.alarms import evaluator as rules
from edge_agent.alarms import history
from edge_agent.alarms.dispatch import AlarmDispatch
from edge_agent.alarms.evaluator import Evaluator, EvaluatorConfig
from edge_agent.alarms.lifecycle import AlarmLifecycle, LifecycleConfig
from edge_agent.alarms.limits import LimitsBook
from edge_agent.alarms.store import AlarmStore
from edge_agent.ca import keyfiles
from edge_agent.config import AgentConfig
from edge_agent.directory_registry import RegistryDirectory
from edge_agent.eventlog import Checkpoint
from edge_agent.inbox.agent import raise_compromise_alarm, start_inbox
from edge_agent.journal import (
    Journal,
    JournalConfig,
    JournalStats,
    JournalStore,
    NewMessage,
    Priority,
    QuarantineEntry,
)
from edge_agent.lifecycle.engine import DestructionTask, LifecycleEngine, LifecycleEvent
from edge_agent.logging_setup import redact
from edge_agent.metrics import AgentMetrics, MetricsServer
from edge_agent.pipeline import Attestor, GatewayKeys, Observation, SessionTable, StateStore
from edge_agent.pipeline import verifier as verdicts
from edge_agent.pipeline.retired_keys import load_retired_agreement  # SESSIONS helper
from edge_agent.registry import NotFoundError, Registry
from edge_agent.registry.links import registered_links
from edge_agent.reseal.agent_hook import reseal_guard  # RENEWAL helper
from edge_agent.uplink import (
    PUBACK_REASONS,
    Delivery,
    DeliveryConfig,
    LinkConfig,
    MqttLink,
    TechnicalAlarm,
    TlsFiles,
)
from protocol import crypto, cwt, messages, topics

log = logging.getLogger("vitalbridge.agent")

SIGNING_KEY_FILE = "gateway-signing.key"
AGREEMENT_KEY_FILE = "gateway-agreement.key"
JOURNAL_FILE = "journal.sqlite3"
EVENTS_FILE = "events.sqlite3"
STATE_FILE = "pipeline-state.sqlite3"
ALARMS_FILE = "alarms.sqlite3"
LIMITS_FILE = "limits.sqlite3"
CURSORS_FILE = "ble-cursors.json"

HOUSEKEEPING_S = 60.0
ALARM_TICK_S = 1.0
METRICS_S = 5.0
LIFECYCLE_MAX_SLEEP_S = 3600.0
_LATENCY_MEMORY = 4096  # alarm digests awaiting their publish, receipts awaiting theirs
_ACTOR = re.compile(r"[a-z][a-z0-9-]{0,31}(:[A-Za-z0-9][A-Za-z0-9._@-]{0,63})?")  # eventlog


class AgentStartError(RuntimeError):
    """The agent cannot start (missing keys, gateway not provisioned...). One line."""


def agent_version() -> str:
    try:
        return metadata.version("vitalbridge")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class BleBackends:
    """bleak backends and connection options for tests and the simulator (the bumble-backed
    virtual radio); None in production, where bleak uses BlueZ."""

    scanner: type | None = None
    client: type | None = None
    options: Any = None  # edge_agent.ble_ingest.ConnectionOptions


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about READY/STOPPING/WATCHDOG; nothing without systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


class AgentService:
    """The running agent. `await run()`; tests may `start()` / `stop()` it themselves."""

    def __init__(self, config: AgentConfig, *, ble: BleBackends | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._ble_backends = ble or BleBackends()
        self._clock = clock
        self.gateway_id = config.gateway.id
        self.metrics = AgentMetrics()
        self._stop_requested = asyncio.Event()
        self._stop_reason = "stopped"
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alarm-store")
        self._metrics_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        self._journal_reader: JournalStore | None = None
        self._closers: list[Callable[[], Any]] = []
        self._metrics_server: MetricsServer | None = None
        self._serial_devices = {d.port.name: d.device for d in config.serial}
        self._ble_devices = {d.config.name: d.device for d in config.ble.devices}
        self._online: dict[str, set[str]] = {"serial": set(), "ble": set()}
        self._certificates_journaled: set[bytes] = set()
        self._alarm_started: dict[bytes, tuple[float, str]] = {}  # digest -> (received, grade)
        self._published_at: dict[bytes, tuple[float, str]] = {}  # digest -> (monotonic, prio)
        # PERF hook: the journal hands an alarm to the uplink right after its commit, so its
        # publish may come before the alarm path reports it journaled. digest -> wall time.
        self._alarm_published_first: dict[bytes, float] = {}
        self._refusing: set[str] = set()  # topics the broker refused and has not taken since
        self.serial: Any = None
        self.ble: Any = None
        self.started = False

    # -- the whole life ---------------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or `request_stop`), shut down gracefully."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop(self._stop_reason)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def request_stop(self, reason: str = "stop requested") -> None:
        log.info("stopping: %s", reason)
        self._stop_reason = reason
        self._stop_requested.set()

    # -- start-up -----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        data_dir = self._private_dir(cfg.gateway.data_dir, "gateway.data_dir")
        keys = self._load_keys()
        self.registry = Registry.open_in(data_dir)
        self._closers.append(self.registry.close)
        self._check_enrolled(self.registry)
        # MANUAL helper: a link at a registered standard device's address carries its id
        for note in registered_links(self.registry, cfg, self._serial_devices,
                                     self._ble_devices):
            log.warning("%s", note)
        # SESSIONS helper: retired, not destroyed agreement keys answer not-yet-renewed devices
        retired = load_retired_agreement(cfg.gateway.keys_dir, self.registry, self.gateway_id)
        for note in retired.notes:
            log.warning("%s", note)
        keys = GatewayKeys(self.gateway_id, keys[0], keys[1],
                           previous_issuers=self._previous_issuers(keys[0]),
                           retired_agreement=retired.private_keys,
                           destroyed_agreement=retired.gone)
        self.engine = LifecycleEngine(self.registry, on_event=self._lifecycle_event)
        self.directory = RegistryDirectory(self.registry, self.engine, keys)
        self._closers.append(self.directory.close)
        self.state_store = StateStore.open(data_dir / STATE_FILE)
        self._closers.append(self.state_store.close)
        self.sessions = SessionTable(self.state_store, now=self._clock())  # SESSIONS: load time

        self.journal_path = data_dir / JOURNAL_FILE
        self.journal = await Journal.open(self.journal_path, JournalConfig(
            retention_s=cfg.journal.retention_s, budget_bytes=cfg.journal.budget_bytes))
        self.recorder = await EventRecorder.open(
            data_dir / EVENTS_FILE, self.gateway_id, keys.ed25519_seed,
            checkpoint_every=cfg.eventlog.checkpoint_every,
            checkpoint_interval_s=cfg.eventlog.checkpoint_interval_s,
            on_checkpoint=self._checkpoint_signed_threadsafe(asyncio.get_running_loop()))
        self.recorder.record("agent.started", "agent", f"gateway:{self.gateway_id}",
                             {"version": agent_version()})

        self.alarm_store = await self._in_store_thread(lambda: AlarmStore(data_dir / ALARMS_FILE))
        self.limit_store = LimitCommandStore(data_dir / LIMITS_FILE)
        self._closers.append(self.limit_store.close)
        restored = await self._in_store_thread(self.alarm_store.load_open)
        evaluator = Evaluator(LimitsBook(), EvaluatorConfig(
            offline_after=cfg.alarms.offline_after_s,
            battery_low=cfg.alarms.battery_low_percent),
            continuous_link=self._continuous_link)  # ALARM-2 hook: no offline for manual
        lifecycle = AlarmLifecycle(LifecycleConfig(
            escalate_after=cfg.alarms.escalate_after_s,
            max_escalation_level=cfg.alarms.max_escalation_level), restored=restored)
        self.alarms = AlarmPath(
            evaluator=evaluator, lifecycle=lifecycle, store=self.alarm_store,
            store_executor=self._executor, journal=self.journal, recorder=self.recorder,
            limit_store=self.limit_store, organisation_keys=self._organisation_keys,
            critical_grade=cfg.alarms.critical, on_journaled=self._alarm_journaled,
            clock=self._clock)
        restored_limits = self.alarms.restore_limits()

        self.verifier = verdicts.Verifier(self.directory, self.sessions,
                                          critical=self.alarms.is_critical)
        self.attestor = Attestor(self.directory, self.state_store, critical=self.alarms.is_critical)
        self.reception = Reception(self.verifier, self.attestor, self.journal,
                                   reply=self._reply, on_durable=self._durable,
                                   on_verified=self._verified)
        mqtt_link = MqttLink(self._link_config())
        self.link = ObservedLink(mqtt_link, self, time.monotonic)
        self.delivery = Delivery(self.journal, self.link, DeliveryConfig(
            self.gateway_id, max_in_flight=cfg.uplink.max_in_flight,
            urgent_reserve=cfg.uplink.urgent_reserve,
            max_unconfirmed=cfg.uplink.max_unconfirmed,
            receipt_timeout_s=cfg.uplink.receipt_timeout_s,
            sweep_interval_s=cfg.uplink.sweep_interval_s,
            stop_timeout_s=cfg.uplink.stop_timeout_s,
            routine_cpu_share=cfg.uplink.routine_cpu_share),  # PERF-2 hook
            on_alarm=self._technical_alarm, on_downlink=self._downlink)
        self._start_alarm_dispatch(mqtt_link)  # ALARM-MESSAGES hook (docs/alarms.md)

        await self.alarms.start(await self._rules_history(evaluator))  # ALARM-2 hook
        reissued = await self.alarms.journal_open_alarms()
        self._lifecycle_tick()
        await self._journal_certificates()
        await self._journal_latest_checkpoint()
        await self.reception.start()
        await self.delivery.start()
        self.inbox = await start_inbox(self, data_dir)  # MANUAL helper: CLI -> agent (inbox/)
        if cfg.metrics.port is not None:
            self._metrics_server = self.metrics.start_http_server(cfg.metrics.port,
                                                                  cfg.metrics.addr)
        await self._start_ingest(data_dir)
        for name, job in (("housekeeping", self._housekeeping), ("alarm-tick", self._alarm_tick),
                          ("lifecycle", self._lifecycle_scheduler), ("metrics", self._metrics),
                          ("eventlog-checkpoints", self._eventlog_checkpoints),
                          ("watchdog", self._watchdog)):
            self._tasks.append(asyncio.create_task(self._forever(name, job), name=name))
        self.started = True
        log.info("agent %s started: %d serial ports, %d BLE devices, %d open alarms "
                 "(%d steps journaled again), %d limit commands restored", self.gateway_id,
                 len(cfg.serial), len(cfg.ble.devices), len(lifecycle.open_alarms()),
                 reissued, restored_limits)
        sd_notify("READY=1")

    # ALARM-2 hooks (docs/alarms.md "Restart" and "Technical conditions") -----------------

    async def _rules_history(self, evaluator: Evaluator) -> list[rules.Reading]:
        """The readings journaled within the rules' rebuild window, so persistence clocks
        survive this restart. Trouble here must not stop the agent: it only costs the
        clocks (logged), as before this existed."""
        since = self._clock() - evaluator.config.rebuild_window
        try:
            batches = await self._in_store_thread(
                lambda: history.journaled_batches(self.journal_path, since))
            return history.rule_readings_of(batches, self.directory)
        except Exception:
            log.exception("rules history not rebuilt from the journal")
            return []

    def _continuous_link(self, device_id: str) -> bool:
        """Offline tracking only for devices with a link (not a patient's manual source)."""
        try:
            return self.registry.device(device_id).kind != "manual"
        except NotFoundError:
            return True

    def manual_received(self, message: NewMessage) -> None:
        """A manual entry journaled by the inbox, documented like any receipt."""
        self._reception_entry(LinkRef("manual", "inbox", message.device_id or ""), message,
                              "manual")

    def _start_alarm_dispatch(self, mqtt_link: MqttLink) -> None:
        """ALARM-MESSAGES hook: the notification policy, patient-device feedback and the
        retained active set (edge_agent/alarms/dispatch.py) behind the alarm path."""
        cfg = self.config
        links = {d.device: LinkRef("serial", d.port.name, d.device) for d in cfg.serial}
        links.update({d.device: LinkRef("ble", d.config.name, d.device)
                      for d in cfg.ble.devices})
        policy = cfg.alarms.notify
        topic = topics.up(self.gateway_id, topics.UP_ALARMS)
        self.alarm_dispatch = AlarmDispatch(
            policy, self.alarms.lifecycle, notified=self.alarms.notified,
            devices=PatientDevices(self.directory.patient_at, self.sessions.current, links,
                                   self._online, self._reply),
            publish_set=lambda payload: mqtt_link.publish(topic, payload, retain=True).accepted,
            link_epoch=lambda: (self.delivery.counters().reconnects
                                if mqtt_link.is_connected() else None),
            clock=self._clock, zone=ZoneInfo(policy.timezone) if policy.timezone else None)
        self.alarms.observer = self.alarm_dispatch

    def _private_dir(self, path: Path, key: str) -> Path:
        try:
            return keyfiles.ensure_private_dir(path)
        except (keyfiles.KeyFileError, OSError) as exc:
            raise AgentStartError(f"{key}: {exc}") from None

    def _load_keys(self) -> tuple[bytes, bytes]:
        keys_dir = self.config.gateway.keys_dir
        try:
            return (keyfiles.load_ed25519_seed(keys_dir / SIGNING_KEY_FILE),
                    keyfiles.load_x25519_private(keys_dir / AGREEMENT_KEY_FILE))
        except (keyfiles.KeyFileError, OSError) as exc:
            raise AgentStartError(f"gateway keys: {exc}") from None

    def _check_enrolled(self, registry: Registry) -> None:
        try:
            gateway = registry.gateway(self.gateway_id)
        except NotFoundError:
            raise AgentStartError(
                f"gateway {self.gateway_id!r} is not in the registry of "
                f"{self.config.gateway.data_dir}: provision and enroll it first") from None
        if gateway.status != "active":
            raise AgentStartError(f"gateway {self.gateway_id!r} is {gateway.status}")

    def _previous_issuers(self, seed: bytes) -> tuple[bytes, ...]:
        """Earlier signing keys of this gateway: device certificates they issued stay valid."""
        current = crypto.ed25519_public_key(seed)
        return tuple(k.public_key for k in self.registry.keys("gateway", self.gateway_id,
                                                              "signing")
                     if k.public_key is not None and k.public_key != current)

    def _organisation_keys(self) -> list[bytes]:
        keys = []
        for ca in self.registry.org_cas():
            try:
                keys.append(cwt.parse_cwt(ca.cwt).public_key)
            except Exception:  # noqa: BLE001 - an unreadable CA record is skipped, logged
                log.error("organisation CA %s in the registry is unreadable", ca.name)
        return keys

    def _link_config(self) -> LinkConfig:
        broker = self.config.broker
        tls = None
        if broker.tls is not None:
            tls = TlsFiles(str(broker.tls.ca), str(broker.tls.cert), str(broker.tls.key))
        return LinkConfig(self.gateway_id, broker.host, broker.port, client_id=broker.client_id,
                          username=broker.username, tls=tls, keepalive_s=broker.keepalive_s,
                          session_expiry_s=broker.session_expiry_s)

    async def _in_store_thread(self, call: Callable[[], Any]) -> Any:
        """The alarm store lives on its own thread (SQLite connections stay on theirs)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _start_ingest(self, data_dir: Path) -> None:
        if self.config.serial:
            from edge_agent.serial_ingest import SerialSupervisor

            self.serial = SerialSupervisor([d.port for d in self.config.serial],
                                           self._serial_event)
            await self.serial.start()
        if self.config.ble.devices:
            from edge_agent.ble_ingest import BleManager, ConnectionOptions

            backends = self._ble_backends
            options = backends.options or ConnectionOptions(client_backend=backends.client)
            self._cursors = CursorFile(data_dir / CURSORS_FILE)
            self.ble = BleManager([d.config for d in self.config.ble.devices], self._ble_event,
                                  max_connections=self.config.ble.max_connections,
                                  scanner_backend=backends.scanner, options=options,
                                  cursors=_DurableCursors(self))
            await self.ble.start()

    # -- shutdown ------------------------------------------------------------------------------

    async def stop(self, reason: str = "stopped") -> None:
        """Ingest first, then drain reception and alarms, uplink (PUBACKs up to the timeout),
        event journal (signs its tail), reading journal last."""
        if not self.started and not self._closers:
            return
        self.started = False
        sd_notify("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._step("serial ingest", self.serial.stop() if self.serial else None)
        await self._step("ble ingest", self.ble.stop() if self.ble else None)
        if getattr(self, "inbox", None) is not None:  # MANUAL helper: no new inbox entries
            await self._step("inbox", self.inbox.stop())
        if hasattr(self, "reception"):
            await self._step("reception", self.reception.stop())
        if hasattr(self, "alarms"):
            await self._step("alarm steps", self.alarms.stop())
        if hasattr(self, "alarm_dispatch"):
            await self._step("alarm notifications", self.alarm_dispatch.stop())
        if hasattr(self, "delivery"):
            await self._step("uplink", self.delivery.stop(self.config.uplink.stop_timeout_s))
        if hasattr(self, "recorder"):
            self.recorder.record("agent.stopped", "agent", f"gateway:{self.gateway_id}",
                                 {"reason": redact(reason)[:200] or "stopped"})
            await self._step("event journal", self.recorder.close())
            await asyncio.sleep(0)  # the final checkpoint's hand-over to the loop
        await self._step("background", self._settle_background())
        if hasattr(self, "journal"):
            await self._step("journal", self.journal.close())
        if hasattr(self, "alarm_store"):
            await self._step("alarm store", self._in_store_thread(self.alarm_store.close))
        self._executor.shutdown(wait=True)
        self._metrics_executor.submit(self._close_journal_reader)
        self._metrics_executor.shutdown(wait=True)
        if self._metrics_server is not None:
            self._metrics_server.close()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()
        log.info("agent %s stopped (%s)", self.gateway_id, reason)

    def _close_journal_reader(self) -> None:
        if self._journal_reader is not None:
            self._journal_reader.close()
            self._journal_reader = None

    async def _step(self, what: str, work: Awaitable[Any] | None) -> None:
        if work is None:
            return
        try:
            await work
        except Exception:
            log.exception("shutdown: %s failed", what)

    async def _settle_background(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _spawn(self, work: Awaitable[Any], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", what)
        task = asyncio.ensure_future(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- ingest callbacks (event loop, must not block) ------------------------------------------

    def _serial_event(self, event: Any) -> None:
        from edge_agent.serial_ingest import DeviceStatus, Frame, LinkStatus, Measurement

        link = LinkRef("serial", event.port, self._serial_devices[event.port])
        item = event.event
        if isinstance(item, Frame):
            self.reception.submit(Inbound(link, event.received_at, message=item.payload))
        elif isinstance(item, Measurement):
            observation = Observation(item.quantity, item.value, event.received_at, item.unit)
            self.reception.submit(Inbound(link, event.received_at, observations=(observation,)))
        elif isinstance(item, DeviceStatus):
            off = bool({"sensor-error", "searching-too-long"} & set(item.conditions))
            self._device_state(link, event.received_at, sensor_off=off)
        elif isinstance(item, LinkStatus):
            self._link_state(link, item.connected, item.reason)

    def _ble_event(self, event: Any) -> None:
        from edge_agent.ble_ingest import (
            DeviceConditions,
            FirmwareMessage,
            LinkNote,
            LinkStatus,
            Reading,
            Rejected,
        )

        link = LinkRef("ble", event.device, self._ble_devices[event.device])
        item = event.event
        source = f"ble:{event.device}"
        if isinstance(item, FirmwareMessage):
            if item.channel == "uplink":
                self.reception.submit(Inbound(link, event.received_at, message=item.payload))
        elif isinstance(item, Reading):
            if item.value is None:  # a special value: kept as evidence, nothing to compare
                entry = QuarantineEntry(item.source.encode(), f"{item.source}: no value "
                                        f"({item.special})", link.device_id, source,
                                        event.received_at)
                self.reception.submit(Inbound(link, event.received_at, quarantine=entry))
            else:
                observation = Observation(item.quantity, item.value, item.time, item.unit)
                self.reception.submit(Inbound(link, event.received_at,
                                              observations=(observation,),
                                              flags=tuple(sorted(item.flags))))
        elif isinstance(item, Rejected):
            entry = QuarantineEntry(item.raw, f"{item.source}: {item.reason}", link.device_id,
                                    source, event.received_at)
            self.reception.submit(Inbound(link, event.received_at, quarantine=entry))
        elif isinstance(item, DeviceConditions):
            self._device_state(link, event.received_at,
                               sensor_off=bool({"sensor-off", "no-sensor-contact"}
                                               & item.conditions))
        elif isinstance(item, LinkStatus):
            self._link_state(link, item.connected, item.reason)
        elif isinstance(item, LinkNote):
            log.info("ble %s: %s", event.device, item.reason)

    def _link_state(self, link: LinkRef, connected: bool, reason: str) -> None:
        online = self._online[link.transport]
        if connected:
            online.add(link.link)
        else:
            online.discard(link.link)
        if hasattr(self, "alarm_dispatch"):  # ALARM-MESSAGES hook: feedback on (re)connect
            if connected:
                self.alarm_dispatch.device_ready(link.device_id)
            else:
                self.alarm_dispatch.device_gone(link.device_id)
        log.info("%s %s (%s): %s", link.transport, link.link, link.device_id,
                 "connected" if connected else f"link lost: {reason}")

    def _device_state(self, link: LinkRef, at: float, *, sensor_off: bool) -> None:
        patient = self.directory.patient_at(link.device_id, int(at))
        self.alarms.device_status(rules.DeviceStatus(link.device_id, patient, at,
                                                     sensor_off=sensor_off))

    def _reply(self, link: LinkRef, payload: bytes) -> None:
        if link.transport == "serial":
            self.serial.send(link.link, payload)
        else:
            self._spawn(self.ble.send(link.link, payload), f"answer to ble {link.link}")

    # -- after verification, after the journal commit --------------------------------------------

    def _verified(self, outcome: Outcome) -> None:
        """Readings to the rules as soon as they are verified (reception.py says why)."""
        readings = (outcome.verdict.readings if outcome.verdict is not None else
                    outcome.attested.readings if outcome.attested is not None else ())
        if readings:
            self.alarms.readings(readings, outcome.received_at)

    def _durable(self, outcomes: list[Outcome]) -> None:
        # Readings counted once per group and label pair (the same sums, one update each).
        ingested: dict[tuple[str, str], int] = {}
        for outcome in outcomes:
            if outcome.verdict is not None:
                self._durable_verdict(outcome, outcome.verdict, ingested)
            elif outcome.attested is not None:
                attested = outcome.attested
                for message in attested.journal:
                    self._reception_entry(outcome.link, message, "attested", ingested)
                for entry in attested.quarantine:
                    self._quarantine_entry(outcome.link, entry)
            elif outcome.quarantine is not None:
                self._quarantine_entry(outcome.link, outcome.quarantine)
        for (transport, verdict), count in ingested.items():
            self.metrics.count_ingest(transport, verdict, count)

    def _durable_verdict(self, outcome: Outcome, verdict: verdicts.Verdict,
                         ingested: dict[tuple[str, str], int]) -> None:
        link = outcome.link
        for message in verdict.journal:
            self._reception_entry(link, message, "sealed", ingested)
        for entry in verdict.quarantine:
            self._quarantine_entry(link, entry)
        for gap in verdict.gaps:
            log.info("device %s: seqs %d..%d of session %s not received (yet)", gap.device_id,
                     gap.first, gap.last, gap.session.hex())
        if verdict.outcome == verdicts.OPENED and verdict.device_id is not None:
            self._session_opened(verdict)
        for event in verdict.events:
            self._device_event(link, event, outcome.received_at)
        if verdict.outcome == verdicts.FORWARD:
            log.warning("%s sent an enrollment request: enroll devices with the technician's "
                        "tools, the agent does not", link.link)

    def _reception_entry(self, link: LinkRef, message: NewMessage, verdict: str,
                         ingested: dict[tuple[str, str], int] | None = None) -> None:
        """The event-journal entry of a journaled message; its readings are counted at
        once, or added to `ingested` for the caller to count."""
        if message.kind == topics.UP_READINGS:  # manual entries too (transport "manual")
            if ingested is None:
                self.metrics.count_ingest(link.transport, verdict, message.count)
            else:
                labels = (link.transport, verdict)
                ingested[labels] = ingested.get(labels, 0) + message.count
        details: dict[str, Any] = {"device": link.device_id, "transport": link.transport,
                                   "verdict": verdict, "count": message.count,
                                   "digest": message.digest.hex()}
        if message.first_seq is not None:
            details["first_seq"] = message.first_seq
            details["last_seq"] = message.last_seq
        if message.session is not None and len(message.session) == 8:
            details["session"] = message.session.hex()
        if message.flags:
            details["flags"] = list(message.flags)[:64]
        self.recorder.record("reception.received", f"device:{link.device_id}",
                             f"device:{link.device_id}", details, at=message.received_at)

    def _quarantine_entry(self, link: LinkRef, entry: QuarantineEntry) -> None:
        reason = redact(entry.reason)
        self.metrics.count_quarantine(link.transport, _quarantine_cause(reason))
        log.warning("quarantined input from %s (%s): %s", link.link, link.device_id, reason)
        details = {"reason": reason[:200], "raw_digest": crypto.sha256(entry.raw).hex(),
                   "raw_len": len(entry.raw), "device": link.device_id,
                   "transport": link.transport}
        self.recorder.record("reception.quarantined", "agent", f"device:{link.device_id}",
                             details, at=entry.received_at)

    def _session_opened(self, verdict: verdicts.Verdict) -> None:
        device = verdict.device_id
        assert device is not None
        for note in verdict.notes:
            log.info("device %s: %s", device, note)
        session = next((s for s in reversed(self.sessions.of_device(device))), None)
        if session is not None:
            self.recorder.record("key.activated", "agent", f"key:{session.kid.hex()}",
                                 {"key_id": session.kid.hex(), "owner": device})
        self._spawn(self._journal_device_certificate(device), f"certificate of {device}")
        self.alarm_dispatch.device_ready(device)  # ALARM-MESSAGES hook: new session, tell it

    def _device_event(self, link: LinkRef, event: Any, received_at: float) -> None:
        name = event.name
        at = event_time(event, received_at)
        if name == "tamper":
            if not event.authenticated:
                log.warning("unauthenticated tamper report on %s: a hint only", link.link)
                self.recorder.record("maintenance.fault", f"device:{link.device_id}",
                                     f"device:{link.device_id}", {
                                         "component": "device", "fault": "tamper-hint",
                                         "severity": "warning"})
                return
            try:
                self.engine.report_tamper(link.device_id, int(received_at))
            except Exception as exc:  # already compromised, or unknown to the registry
                log.warning("tamper report of %s not recorded: %s", link.device_id, exc)
        elif name in ("sensor-off", "sensor-fault"):
            self._device_state(link, at, sensor_off=True)
        elif name in ("sensor-on", "sensor-recovered"):
            self._device_state(link, at, sensor_off=False)
        else:
            log.info("device %s reported %s", link.device_id, name)

    # -- lifecycle ------------------------------------------------------------------------------

    def _lifecycle_event(self, event: LifecycleEvent) -> None:
        """Engine events (this process): caches drop, a compromise withdraws sessions at once,
        each key step is journaled and the centre is told."""
        self.directory.invalidate()
        if event.kind == "compromised" and event.holder_kind == "device":
            ended = self.verifier.withdraw_device(event.holder_id, event.reason, event.at)
            log.error("device %s compromised (%s): %d sessions withdrawn", event.holder_id,
                      event.reason, len(ended))
            raise_compromise_alarm(self, event.holder_id, event.reason, event.at)  # MANUAL
        kind = {"compromised": "key.compromised", "retired": "key.retired",
                "expired": "key.retired", "destroyed": "key.destroyed"}.get(event.kind)
        for kid in event.keys:
            if kind is None or len(kid) != 16:
                continue
            details: dict[str, Any] = {"key_id": kid, "owner": event.holder_id}
            if kind in ("key.compromised", "key.retired"):
                details["reason"] = redact(event.reason)[:200] or event.kind
            actor = event.actor if _ACTOR.fullmatch(event.actor) else "agent"
            self.recorder.record(kind, actor, f"key:{kid}", details)
        if event.severity == "alarm":
            body = {"lifecycle": {"kind": event.kind, "holder": event.holder_id,
                                  "at": event.at, "keys": list(event.keys)}}
            self._spawn(self.journal.append(NewMessage(
                topics.UP_EVENT, None, messages.encode("event", body), Priority.ALARM,
                "attested")), "lifecycle event to the centre")

    def _lifecycle_tick(self) -> int | None:
        now = int(self._clock())
        # RENEWAL helper: re-seal what only a retired key verifies before destroying it
        result = self.engine.tick(now, reseal_guard(self, self._destroy))
        for task in result.overdue:
            log.error("key %s of %s %s is overdue for destruction (deadline %d)", task.kid,
                      task.holder_kind, task.holder_id, task.deadline)
        return self.engine.next_event(now)

    def _destroy(self, task: DestructionTask) -> bool:
        """Session keys held by this gateway are wiped here; other keys are destroyed by
        their holder (device command, technician) and stay open tasks until confirmed."""
        if task.held_at == "gateway" and task.purpose == "session" and task.holder_kind == \
                "device":
            # SESSIONS helper: kept while a device may still re-send under it (sessions.owed)
            return self.sessions.destroy(bytes.fromhex(task.kid), self._clock())
        return False

    # -- uplink side -----------------------------------------------------------------------------

    async def _journal_certificates(self) -> None:
        """The centre verifies checkpoints with certificates it learns from us: the gateway's
        own and every active device's (deduplicated by digest in the journal)."""
        now = int(self._clock())
        key = self.registry.current_key("gateway", self.gateway_id, "signing", now)
        if key is not None:
            with contextlib.suppress(NotFoundError):
                raw = self.registry.certificate_of_key(key.kid, "cwt").raw
                await self._journal_event({"gateway-certificate": raw})
        for device in self.registry.devices(gateway_id=self.gateway_id, status="active"):
            await self._journal_device_certificate(device.id)

    async def _journal_device_certificate(self, device_id: str) -> None:
        raw = self.directory.certificate(device_id, int(self._clock()))
        if raw is not None:
            await self._journal_event({"device-certificate": raw})

    async def _journal_event(self, body: dict[str, Any],
                             priority: Priority = Priority.ROUTINE) -> None:
        payload = messages.encode("event", body)
        digest = crypto.sha256(payload)
        if digest in self._certificates_journaled:
            return
        await self.journal.append(NewMessage(topics.UP_EVENT, None, payload, priority,
                                             "attested"))
        self._certificates_journaled.add(digest)

    def _checkpoint_signed_threadsafe(self, loop: asyncio.AbstractEventLoop
                                      ) -> Callable[[Checkpoint], None]:
        def hand_over(checkpoint: Checkpoint) -> None:  # on the event journal's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: published next start
                loop.call_soon_threadsafe(self._checkpoint_signed, checkpoint)
        return hand_over

    def _checkpoint_signed(self, checkpoint: Checkpoint) -> None:
        self._spawn(self._journal_event({"eventlog-checkpoint": checkpoint.cose}),
                    "event journal checkpoint to the centre")

    async def _journal_latest_checkpoint(self) -> None:
        """The checkpoint signed at the last shutdown could not be published then."""
        checkpoint = await self.recorder.latest_checkpoint()
        if checkpoint is not None:
            await self._journal_event({"eventlog-checkpoint": checkpoint.cose})

    def _downlink(self, kind: str, payload: bytes) -> None:
        if kind == topics.DOWN_ALARM_ACK:
            self.alarms.acknowledgement(payload)
        elif kind == topics.DOWN_LIMITS:
            self.alarms.limits_command(payload)
        else:
            log.info("downlink %s ignored: the agent does not act on it", kind)

    def _technical_alarm(self, alarm: TechnicalAlarm) -> None:
        log.error("uplink: %s: %s", alarm.condition, alarm.text)
        self.recorder.record("maintenance.fault", "agent", f"gateway:{self.gateway_id}", {
            "component": "uplink", "fault": alarm.condition, "severity": "error",
            "detail": redact(alarm.text)[:200]})
        if alarm.condition == "publish-refused" and alarm.topic is not None:
            self._refusing.add(alarm.topic)
            self.alarms.gateway_status(rules.GatewayStatus(self._clock(), broker_refusing=True))

    def _alarm_journaled(self, alarm: JournaledAlarm) -> None:
        if alarm.received_at is not None and alarm.kind in ("raised", "regraded", "recurred"):
            published = self._alarm_published_first.pop(alarm.digest, None)
            if published is not None:
                self.metrics.observe_alarm_latency(published - alarm.received_at, alarm.grade)
                return
            self._alarm_started[alarm.digest] = (alarm.received_at, alarm.grade)
            _bound(self._alarm_started)

    # TransmissionObserver (ObservedLink calls these on the event loop)

    def published(self, sent: Transmission) -> None:
        started = self._alarm_started.pop(sent.digest, None)
        if started is not None:
            self.metrics.observe_alarm_latency(self._clock() - started[0], started[1])
        elif sent.kind == topics.UP_ALARM:
            self._alarm_published_first[sent.digest] = self._clock()
            _bound(self._alarm_published_first)
        self._published_at[sent.digest] = (sent.published_at,
                                           "alarm" if sent.kind == topics.UP_ALARM else "routine")
        _bound(self._published_at)
        if self.config.eventlog.transmissions == "all":
            self.recorder.record("transmission.published", "agent", f"gateway:{self.gateway_id}",
                                 {"topic": sent.topic, "message_id": sent.mid,
                                  "digest": sent.digest.hex()})

    def acknowledged(self, sent: Transmission, reason_code: int, at: float) -> None:
        if self.config.eventlog.transmissions == "all":
            self.recorder.record("transmission.puback", "agent", f"gateway:{self.gateway_id}",
                                 {"digest": sent.digest.hex(), "message_id": sent.mid,
                                  "reason_code": reason_code})
        if sent.topic in self._refusing:
            self._refusing.discard(sent.topic)
            if not self._refusing:
                self.alarms.gateway_status(rules.GatewayStatus(self._clock(),
                                                               broker_refusing=False))

    def refused(self, sent: Transmission, reason_code: int, at: float) -> None:
        if 0x80 <= reason_code <= 0xFF:
            self.metrics.count_refused(reason_code)
        self.recorder.record("transmission.refused", "agent", f"gateway:{self.gateway_id}", {
            "digest": sent.digest.hex(), "message_id": sent.mid,
            "reason_code": reason_code & 0xFF,
            "reason": PUBACK_REASONS.get(reason_code, f"reason 0x{reason_code:02x}")})

    def receipt(self, digest: bytes, status: str, at: float) -> None:
        published = self._published_at.pop(digest, None)
        details: dict[str, Any] = {"digest": digest.hex()}
        if published is not None:
            lag = max(0.0, at - published[0])
            self.metrics.observe_delivery_lag(lag, published[1])
            details["lag_ms"] = round(lag * 1000, 1)
        if self.config.eventlog.transmissions == "all" and status == "stored":
            self.recorder.record("transmission.receipt", "centre", f"gateway:{self.gateway_id}",
                                 details)

    # -- background duties ---------------------------------------------------------------------

    async def _forever(self, name: str, job: Callable[[], Awaitable[float]]) -> None:
        """Run `job` again after the delay it returns; an error is logged, not fatal."""
        while True:
            try:
                delay = await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; retrying in a minute", name)
                delay = 60.0
            await asyncio.sleep(delay)

    async def _alarm_tick(self) -> float:
        self.alarms.tick(self._clock())
        self.alarm_dispatch.tick()  # ALARM-MESSAGES hook: quiet hours, retained set
        return ALARM_TICK_S

    async def _housekeeping(self) -> float:
        # FLEET hook: the period is [journal] housekeeping_s (default HOUSEKEEPING_S = 60 s)
        await asyncio.sleep(self.config.journal.housekeeping_s)
        now = self._clock()
        purged = await self.journal.purge(now)
        if purged:
            self.recorder.record("storage.deleted", "agent", f"gateway:{self.gateway_id}",
                                 {"action": "retention", "rows": purged, "bytes": 0})
        outcome = await self.journal.enforce_budget(now)
        if outcome is not None:
            for action in outcome.actions:
                log.warning("disk budget: %s", action.description)
                self.recorder.record("storage.deleted", "agent", f"gateway:{self.gateway_id}",
                                     {"action": action.step, "rows": len(action.ids),
                                      "bytes": action.bytes})
            self.alarms.gateway_status(rules.GatewayStatus(
                now, disk_used=outcome.used_after, disk_budget=outcome.budget_bytes))
        self.verifier.tick(now)
        return 0.0

    async def _lifecycle_scheduler(self) -> float:
        now = self._clock()
        upcoming = self._lifecycle_tick()
        wait = LIFECYCLE_MAX_SLEEP_S if upcoming is None else upcoming - now
        return min(LIFECYCLE_MAX_SLEEP_S, max(1.0, wait))

    async def _metrics(self) -> float:
        stats = await asyncio.get_running_loop().run_in_executor(
            self._metrics_executor, self._journal_stats)
        self.metrics.update_from_journal(dataclasses.replace(
            stats, in_flight=self.delivery.counters().in_flight))
        self.metrics.update_from_eventlog(await self.recorder.stats())
        self.metrics.set_devices_online("serial", len(self._online["serial"]))
        self.metrics.set_devices_online("ble", len(self._online["ble"]))
        return METRICS_S

    def _journal_stats(self) -> JournalStats:
        """Journal statistics on a read-only connection of the metrics thread: the scans
        (tens of ms over a large backlog) never queue on the journal's writer, where they
        would hold up an alarm's commit."""
        if self._journal_reader is None:
            conn = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True)
            self._journal_reader = JournalStore(conn, self.journal_path, 0)
        return self._journal_reader.stats(self._clock())

    async def _eventlog_checkpoints(self) -> float:
        await self.recorder.maybe_checkpoint()
        return min(10.0, self.config.eventlog.checkpoint_interval_s / 2)

    async def _watchdog(self) -> float:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not usec.isdigit():
            return 3600.0
        sd_notify("WATCHDOG=1")
        return max(1.0, int(usec) / 1e6 / 3)


class _DurableCursors:
    """The BLE ingest's glucose cursor store: a cursor is written only behind the readings
    handed over before it (a reception barrier), so a crash gives duplicates, never loss."""

    def __init__(self, service: AgentService) -> None:
        self._service = service

    def get(self, device: str) -> int | None:
        return self._service._cursors.get(device)

    def set(self, device: str, sequence_number: int) -> None:
        service = self._service
        link = LinkRef("ble", device, service._ble_devices.get(device, device))
        service.reception.submit_barrier(
            link, lambda: service._cursors.set(device, sequence_number))


# How far a sealed device event's own time may lie from its arrival and still be used: a
# device replaying its outbox after an outage reports events of the past (hours, days), and a
# device clock runs at most a few minutes ahead of the gateway's once synced at handshake.
EVENT_TIME_MAX_AGE_S = 30 * 86400
EVENT_TIME_MAX_AHEAD_S = 300


def event_time(event: Any, received_at: float) -> float:
    """When a device event happened: its own time when sealed and plausible, else arrival.

    A sensor-off replayed from a device's outbox after an outage belongs at the moment the
    finger left, not now, or it would mark the sensor off after the readings that followed
    it. An unsealed event's time is only a claim, and an implausible one (an unset RTC, a
    clock far ahead) is not used."""
    own = getattr(event, "time", None)
    if (getattr(event, "authenticated", False) and isinstance(own, int | float)
            and received_at - EVENT_TIME_MAX_AGE_S <= own <= received_at
            + EVENT_TIME_MAX_AHEAD_S):
        return float(own)
    return received_at


def _bound(table: dict[bytes, Any]) -> None:
    """Keep a latency table from growing without end (entries whose publish or receipt never
    comes are simply forgotten)."""
    while len(table) > _LATENCY_MEMORY:
        del table[next(iter(table))]


def _quarantine_cause(reason: str) -> str:
    """The metrics' bounded cause label from a free-text quarantine reason."""
    text = reason.lower()
    for cause, words in (("replay", ("replay",)), ("seal", ("seal", "mac", "signature")),
                         ("certificate", ("certificate",)),
                         ("range", ("possible range", "outside")),
                         ("decode", ("envelope", "cbor", "decode", "content", "body"))):
        if any(word in text for word in words):
            return cause
    return "other"
