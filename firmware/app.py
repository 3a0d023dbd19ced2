"""The firmware application: ties HAL, identity, sealing, outbox, sampling, feedback,
transports and robustness together and runs them as asyncio tasks.

Boot: config (flash `config.json` over firmware/config.py defaults) -> safe-boot check
(firmware/robust.py) -> keystore, enrollment, seqstore, outbox -> sensors -> tasks:

    sampler     one task per sensor (firmware/sampling.py); each batch is sealed at once
                when a session exists (also while the link is down: sessions outlive
                links), else it waits in a bounded RAM queue until the first session of
                this boot (see docs/firmware-app.md for what that costs)
    link        per link-up: enrollment (provisioning) or handshake (hello/accept through
                keystore.handshake), then control messages, events, then the outbox's
                unacknowledged entries in order -- replay first, live after, one stream
    dispatch    inbound envelopes: accept, device-ack (outbox.ack), device-command
                (enroll, identify, rotate-keys, destroy-key, seq-floor, feedback),
                certificate
    feedback    LED/buzzer (firmware/feedback.py)
    supervise   every feed_ms: watchdog (fed only while every task beats), sealer.tick
                (checkpoint due), outbox.tick (aged flush), gc.collect, stable-boot mark

Safe mode (after repeated crashes): no sensors and no outbox (its files stay untouched
on flash): only the link, for the safe-mode event, diagnostics and an update.

main() is the entry point (firmware/main.py calls it on the board); run_sim() is the
unix-port entry `vitalbridge firmware run-sim` uses: a simulated reset ends the process
with an exit status naming the reset cause, so the runner restarts it like a chip.
"""

import asyncio
import binascii
import sys

from firmware import config as fw_config
from firmware.enrollment import Enrollment, EnrollmentError, blink_counts
from firmware.feedback import MAX_STEP_MS, Feedback
from firmware.keystore import KeyStore, KeyStoreError
from firmware.outbox import CHECKPOINT, FlashSegments, Outbox, OutboxFull
from firmware.robust import (
    BoundedQueue,
    Liveness,
    SafeBoot,
    Wake,
    WatchdogFeeder,
    collect,
    configure_gc,
)
from firmware.sampling import Sampler, is_critical
from firmware.sealer import Sealer, SealerError
from firmware.seqstore import BLOCKED, SeqStore, SeqStoreError
from firmware.transport.base import TransportDown
from protocol import device_link, messages, senml
from protocol.checks import hexstr
from protocol.errors import ProtocolError

TRANSPORT_CLASSES = {
    "uart": ("firmware.transport.uart", "UartTransport"),
    "ble": ("firmware.transport.ble", "BleTransport"),
    "mqtt": ("firmware.transport.mqtt", "MqttTransport"),
}
# Events that must not be pushed out of the bounded event queue by routine ones.
IMPORTANT_EVENTS = ("tamper", "safe-mode", "crash-recovered", "key-generated", "key-activated",
                    "key-retired", "key-destroyed", "key-absent", "certificate-installed",
                    "identity-invalid", "thinned", "outbox-full", "outbox-corrupt",
                    "seq-blocked", "readings-dropped")
# Sensor-side events that light the blue (technical) signal while they last.
_TECHNICAL_ON = {"sensor-fault": "sensor", "sensor-off": "sensor", "battery-low": "battery"}
_TECHNICAL_OFF = {"sensor-recovered": "sensor", "sensor-on": "sensor", "battery-ok": "battery"}
_SENSOR_QUANTITIES = {"max30102": ("pr", "spo2", "pi", "sq"), "max30205": ("temp",),
                      "bp": ("sys", "dia", "pr")}
_IDLE_MS = 2500  # idle wait of tasks woken by events (below every liveness allowance)
RESET_EXIT_BASE = 64  # run_sim: exit status 64 + index in hal.base.RESET_CAUSES


def make_transports(hal, specs, report):
    """Transport objects for the config's list: class(hal, **options). A transport that
    cannot be built (no radio, missing module) is reported and skipped."""
    out = []
    for spec in specs:
        options = dict(spec)
        kind = options.pop("kind")
        module_name, class_name = TRANSPORT_CLASSES[kind]
        try:
            module = __import__(module_name, None, None, [class_name])
            out.append(getattr(module, class_name)(hal, **options))
        except Exception as exc:  # an unusable link must not stop the device
            report("transport-unavailable", {"transport": kind, "reason": _reason(exc)})
    return out


class App:
    """One device. `transports`: Transport objects (default: built from the config);
    echo: a print-like function for a console log of events, or None."""

    def __init__(self, hal, config, transports=None, safe_boot=None, boot_events=(),
                 echo=None):
        self.hal = hal
        self.config = config
        self.echo = echo
        device = config["device"]
        link = config["link"]
        self.link_cfg = link
        self.device_id = device["id"]
        self.safe_boot = safe_boot
        self.safe_mode = bool(safe_boot is not None and safe_boot.safe_mode)
        flash = hal.flash_dir
        self.events = BoundedQueue(link["events_max"])
        self.pending = BoundedQueue(link["pending_max"])  # [records, critical, ticks]
        self.inbound = BoundedQueue(link["inbound_max"])
        self.control = BoundedQueue(4)  # enroll-requests waiting for the link
        # Unsealed hints sent on the link at once, session or not (certificate-installed).
        self.hints = BoundedQueue(2)
        self.keystore = KeyStore(flash + "/keys", hal.random_bytes, hal.time)
        ca_public = device["ca_public"]
        if ca_public is not None:
            ca_public = binascii.unhexlify(ca_public)
        self.enrollment = Enrollment(flash, self.keystore, self.device_id, device["model"],
                                     device["serial"], device["firmware"], hal.time,
                                     show_code=self._show_code, ca_public=ca_public,
                                     provisioning=device["provisioning"])
        self.seqs = SeqStore(flash + "/seq")
        out = config["outbox"]
        self.outbox = Outbox(FlashSegments(flash + "/outbox"), hal.time,
                             segments=out["segments"], segment_size=out["segment_size"],
                             flush_count=out["flush_count"], flush_bytes=out["flush_bytes"],
                             flush_age=out["flush_age"])
        self.sealer = Sealer(self.device_id, self.keystore, self.seqs, self.outbox, hal.time,
                             checkpoint_interval=config["sealing"]["checkpoint_interval"])
        fb = config["feedback"]
        self.liveness = Liveness(hal)
        self.feedback = Feedback(hal, buzzer=fb["buzzer"], silence_s=fb["silence_s"],
                                 beat=lambda: self.liveness.beat("feedback"), echo=echo)
        robust = config["robust"]
        self.watchdog = WatchdogFeeder(hal, robust["watchdog_ms"], self.liveness)
        self.sampler = None
        if not self.safe_mode:
            self.sampler = Sampler(hal, config, self._on_batch, self._on_sensor_event,
                                   self._on_live, self.liveness.beat)
        if transports is None:
            transports = make_transports(hal, config["transports"], self.event)
        self.transports = transports
        self.running = False
        self.session = None  # the protocol.session.Session sealing now
        self._session_link = -1  # link generation the session was agreed on
        self._link_generation = 0
        self._handshake = None
        self._last_command_id = None
        self._acked_at = hal.ticks_ms()
        self._started = hal.ticks_ms()
        self._stable = False
        self._seq_blocked_reported = False
        self._link_wake = Wake(hal)
        self._inbound_wake = Wake(hal)
        self._tasks = []
        self._loaded = False
        self.stats = {"sealed": 0, "sent": 0, "acks": 0, "refused": 0, "events_sent": 0,
                      "events_dropped": 0, "pending_dropped": 0, "handshakes": 0}
        for event in boot_events:
            self._queue_event(event)

    # ------------------------------------------------------------ boot

    def load(self):
        """Read the flash stores once -> None (their events are queued)."""
        if self._loaded:
            return
        self._loaded = True
        for event in self.keystore.load() + self.enrollment.load():
            self._queue_event(event)
        # Loaded in safe mode too: a seq-floor command must never lower the reservation.
        if self.seqs.load() == BLOCKED:
            self.event("seq-blocked", {"reason": "sequence file unreadable"})
            self._seq_blocked_reported = True
        if self.safe_mode:
            return  # the outbox files stay untouched until normal mode
        for event in self.outbox.load():
            self._queue_event(event)

    # ------------------------------------------------------------ events

    def event(self, name, details=None):
        event = dict(details or {})
        event["event"] = name
        event["time"] = self.hal.time()
        self._queue_event(event)

    def _queue_event(self, event):
        if self.echo is not None:
            self.echo("event %s" % _describe(event))
        dropped = self.events.put(event, keep=event.get("event") in IMPORTANT_EVENTS)
        if dropped is not None:
            self.stats["events_dropped"] += 1
        self._link_wake.set()

    def _show_code(self, code):
        if self.echo is not None:
            self.echo("VitalBridge enrollment code: %s %s" % (code[:3], code[3:]))
        self.feedback.show_code(blink_counts(code))

    # ------------------------------------------------------------ readings

    def _on_batch(self, records, critical):
        self._local_alarms(records)
        if self.session is None or self.seqs.state == BLOCKED:
            self._hold(records, critical, self.hal.ticks_ms())
            return
        self._seal(records, critical)

    def _hold(self, records, critical, ticks):
        dropped = self.pending.put([records, critical, ticks], keep=critical)
        if dropped is not None:
            self.stats["pending_dropped"] += 1
            self.event("readings-dropped", {"count": len(dropped[0]),
                                            "critical": bool(dropped[1]),
                                            "reason": "no session yet, RAM queue full"})

    def _seal(self, records, critical):
        try:
            events = self.sealer.seal(records, critical,
                                      base_time=records[0].get(senml.T))
        except OutboxFull as exc:
            details = {}
            if exc.refused is not None:  # RAM's hard bound reached: these seqs are lost
                details = {"refused_first": exc.refused.first,
                           "refused_last": exc.refused.last}
            events = exc.events + [self._make_event("outbox-full", details)]
            self.feedback.local_alarm("outbox", "blue")
        except SeqStoreError as exc:
            self._hold(records, critical, self.hal.ticks_ms())
            if not self._seq_blocked_reported:
                self._seq_blocked_reported = True
                self.event("seq-blocked", {"reason": str(exc)[:100]})
            return
        except (SealerError, ProtocolError) as exc:
            self.event("seal-refused", {"reason": str(exc)[:100]})
            return
        except OSError as exc:  # the flash failed: keep the readings in RAM, report
            self._hold(records, critical, self.hal.ticks_ms())
            self.event("flash-error", {"reason": str(exc)[:100]})
            return
        self.stats["sealed"] += 1
        for event in events:
            self._queue_event(event)
        self._link_wake.set()

    def _drain_pending(self):
        """Seal what waited for a session, re-timed from the monotonic clock (the wall
        clock may have been set by the gateway since the values were taken)."""
        now = self.hal.time()
        ticks = self.hal.ticks_ms()
        while len(self.pending) and self.session is not None and self.seqs.state != BLOCKED:
            records, critical, taken = self.pending.get()
            when = now - max(0, self.hal.ticks_diff(ticks, taken)) // 1000
            for record in records:
                record[senml.T] = when
            self._seal(records, critical)

    def _local_alarms(self, records):
        bounds = self.config["critical"]
        for record in records:
            quantity = record[senml.N]
            grade = "red" if is_critical(quantity, record[senml.V], bounds) else None
            self.feedback.local_alarm("local:" + quantity, grade)

    def _on_sensor_event(self, name, details):
        self.event(name, details)
        sensor = details.get("sensor", "")
        if name in _TECHNICAL_ON:
            self.feedback.local_alarm(_TECHNICAL_ON[name] + ":" + sensor, "blue")
            # A sensor that is off or failing shows no clinical value any more.
            for quantity in _SENSOR_QUANTITIES.get(sensor, ()):
                self.feedback.local_alarm("local:" + quantity, None)
        elif name in _TECHNICAL_OFF:
            self.feedback.local_alarm(_TECHNICAL_OFF[name] + ":" + sensor, None)

    def _on_live(self, quantity, value):
        for transport in self.transports:
            publish = getattr(transport, "publish_standard", None)
            if publish is not None:
                try:
                    publish(quantity, value)
                except Exception:  # a display nicety must never stop sampling
                    pass

    # ------------------------------------------------------------ link state

    def _on_link(self, up):
        self._link_generation += 1
        self._handshake = None
        if not up:
            self.feedback.set_gateway_control(False)
            if self.enrollment.enrolled:
                self.feedback.set_state("connecting")
        self._link_wake.set()

    def _on_message(self, message):
        self.inbound.put(message)
        self._inbound_wake.set()

    def _transport(self):
        for transport in self.transports:
            if transport.connected:
                return transport
        return None

    @property
    def linked(self):
        """A session agreed on the current link: sealed traffic may flow."""
        return self.session is not None and self._session_link == self._link_generation

    # ------------------------------------------------------------ link task

    async def _link_task(self):
        retry = self.link_cfg["retry_min_ms"]
        while self.running:
            self.liveness.beat("link")
            transport = self._transport()
            if transport is None:
                await self._link_wake.sleep(_IDLE_MS)  # a link change wakes us at once
                continue
            await self._send_queued(transport, self.hints)
            if not self.enrollment.enrolled:
                self.feedback.set_state("provisioning")
                await self._send_queued(transport, self.control)
                await self._send_events(transport, sealed=False)
                await self._link_wake.sleep(1000)
                continue
            if not self.linked:
                if await self._do_handshake(transport):
                    retry = self.link_cfg["retry_min_ms"]
                else:
                    await self._link_wake.sleep(retry)
                    retry = min(retry * 2, self.link_cfg["retry_max_ms"])
                continue
            await self._send_queued(transport, self.control)
            await self._send_events(transport, sealed=True)
            busy = await self._send_outbox(transport)
            await self._link_wake.sleep(self.link_cfg["send_gap_ms"] if busy else 1000)

    async def _send(self, transport, message):
        try:
            await transport.send(message)
            return True
        except TransportDown:
            return False
        except ProtocolError as exc:  # too large for this link: cannot ever be sent
            self.event("send-refused", {"reason": str(exc)[:100]})
            return True

    async def _do_handshake(self, transport):
        generation = self._link_generation
        gateway_key = self.enrollment.gateway_agree_key
        try:
            handshake = self.keystore.handshake(self.device_id, gateway_key)
        except (KeyStoreError, ProtocolError) as exc:
            self.event("handshake-failed", {"reason": str(exc)[:100]})
            return False
        self._handshake = handshake
        if not await self._send(transport, messages.encode("hello", handshake.hello())):
            return False
        waited = 0
        timeout = self.link_cfg["handshake_timeout_ms"]
        while self.running and waited < timeout:
            if self.linked and self._session_link == generation:
                return True
            if self._link_generation != generation:
                return False
            self.liveness.beat("link")
            await self._link_wake.sleep(100)
            waited += 100
        self._handshake = None
        return self.linked

    def _session_ready(self, session):
        self.stats["handshakes"] += 1
        if session.gateway_time is not None and abs(session.gateway_time - self.hal.time()) > 2:
            self.hal.set_time(session.gateway_time)
        events = [] if self.safe_mode else self.sealer.start_session(session)
        self.session = session
        self._session_link = self._link_generation
        self._last_command_id = None
        self._handshake = None
        self._acked_at = self.hal.ticks_ms()
        for event in events:
            self._queue_event(event)
        if not self.safe_mode:
            self.outbox.reconnected()
            self._drain_pending()
        self.feedback.set_gateway_control(True)
        self.feedback.set_state("error" if self.safe_mode else "connected")
        self._link_wake.set()

    async def _send_queued(self, transport, queue):
        """Send a queue of ready envelopes in order; stop (keeping the rest) on a link loss."""
        while len(queue):
            if not await self._send(transport, queue.peek()):
                return
            queue.get()

    async def _send_events(self, transport, sealed):
        while len(self.events):
            event = self.events.peek()
            try:
                if sealed and self.session is not None:
                    body = device_link.encode_event(event, self.session.device_mac_key,
                                                    self.session.session_id)
                else:
                    body = device_link.encode_event(event)
            except ProtocolError:
                self.events.get()  # malformed details: drop it, never wedge the queue
                self.stats["events_dropped"] += 1
                continue
            if not await self._send(transport, messages.encode("device-event", body)):
                return
            self.events.get()
            self.stats["events_sent"] += 1

    async def _send_outbox(self, transport):
        """Up to send_batch unacknowledged entries -> True if any was sent."""
        if self.safe_mode:
            return False
        self._maybe_resend()
        entries = self.outbox.take_unsent(self.link_cfg["send_batch"])
        for entry in entries:
            kind = "checkpoint" if entry.kind == CHECKPOINT else "sealed"
            if not await self._send(transport, messages.encode(kind, entry.data)):
                return False  # the next session replays from the oldest unacknowledged
            self.stats["sent"] += 1
        return bool(entries)

    def _maybe_resend(self):
        # A frame lost on a live link is never acknowledged: after resend_s without any
        # acknowledgement, replay from the oldest unacknowledged (the gateway drops dups).
        elapsed = self.hal.ticks_diff(self.hal.ticks_ms(), self._acked_at)
        if elapsed > self.link_cfg["resend_s"] * 1000:
            self._acked_at = self.hal.ticks_ms()
            self.outbox.reconnected()

    # ------------------------------------------------------------ inbound

    async def _dispatch_task(self):
        while self.running:
            while len(self.inbound):
                self.handle(self.inbound.get())
            self.liveness.beat("dispatch")
            await self._inbound_wake.sleep(_IDLE_MS)  # a message wakes us at once

    def handle(self, message):
        """One inbound envelope; failures become events, never exceptions."""
        kind = "?"
        try:
            kind, body = messages.decode(message)
            if kind == "accept":
                self._on_accept(body)
            elif kind == "device-ack":
                self._on_ack(body)
            elif kind == "device-command":
                self._on_command(body)
            elif kind == "certificate":
                self._on_certificate(body)
            else:
                raise ProtocolError("unexpected %s message on the device link" % kind)
        except (ProtocolError, EnrollmentError, KeyStoreError, SeqStoreError, ValueError) as exc:
            self.stats["refused"] += 1
            self.event("message-refused", {"kind": kind, "reason": _reason(exc)})
        except Exception as exc:  # e.g. a flash error: report it, keep serving the link
            self.stats["refused"] += 1
            self.event("message-error", {"kind": kind, "reason": _reason(exc)})

    def _on_accept(self, body):
        handshake = self._handshake
        if handshake is None:
            raise ProtocolError("accept without a hello in progress")
        session = handshake.finish(body)  # SealError: the handshake stays usable
        self._session_ready(session)

    def _on_ack(self, body):
        if self.session is None:
            raise ProtocolError("device-ack without a session")
        ack = device_link.decode_ack(body, self.session.gateway_mac_key,
                                     self.session.session_id)
        self.stats["acks"] += 1
        self._acked_at = self.hal.ticks_ms()
        if not self.safe_mode:
            self.outbox.ack(ack)

    def _on_certificate(self, body):
        for event in self.enrollment.on_certificate(body):
            self._queue_event(event)
            if event["event"] == "certificate-installed":
                self._queue_hint(event)
        self.feedback.set_state("enrolled")
        self._session_link = -1  # handshake with the new identity
        self._link_wake.set()

    def _queue_hint(self, event):
        # The installer (`vitalbridge device enroll`) holds no session with this device:
        # it gets an unsealed copy now, a hint and not proof (docs/firmware-identity.md);
        # the sealed event of the next session stays the proof the gateway journals.
        try:
            message = messages.encode("device-event", device_link.encode_event(event))
        except ProtocolError:
            return
        self.hints.put(message, keep=True)
        self._link_wake.set()

    def _on_command(self, body):
        session = self.session if self.linked else None
        command = device_link.decode_command(
            body, session.gateway_mac_key if session else None,
            session.session_id if session else None, self._last_command_id)
        if command.authenticated:
            self._last_command_id = command.command_id
        name = command.name
        result = {"command": name, "id": command.command_id}
        if name in ("enroll", "rotate-keys"):
            request, _, events = self.enrollment.on_challenge(command.args,
                                                              rotate=name == "rotate-keys")
            for event in events:
                self._queue_event(event)
            self.control.put(messages.encode("enroll-request", request), keep=True)
        elif name == "identify":
            self.feedback.command("identify")
        elif name == "destroy-key":
            for event in self.keystore.destroy(command.args):
                self._queue_event(event)
        elif name == "seq-floor":
            self.seqs.set_floor(command.args)
            self._seq_blocked_reported = False
            result["floor"] = command.args
            self._drain_pending()
        elif name == "feedback":
            self.feedback.command(command.args)
            result["pattern"] = command.args
        self.event("command-done", result)
        self._link_wake.set()

    # ------------------------------------------------------------ supervision

    async def _supervise(self):
        robust = self.config["robust"]
        while self.running:
            self.liveness.beat("supervise")
            self.watchdog.feed()
            if not self.safe_mode:
                try:
                    events = self.sealer.tick() + self.outbox.tick()
                except OutboxFull as exc:
                    events = exc.events + [self._make_event("outbox-full", {})]
                for event in events:
                    self._queue_event(event)
            collect()
            if not self._stable and self.safe_boot is not None and not self.safe_mode:
                uptime = self.hal.ticks_diff(self.hal.ticks_ms(), self._started)
                if uptime >= robust["stable_s"] * 1000:
                    self._stable = True
                    self.safe_boot.mark_stable()
            await self.hal.asleep_ms(robust["feed_ms"])

    def _make_event(self, name, details):
        event = dict(details)
        event["event"] = name
        event["time"] = self.hal.time()
        return event

    async def run(self):
        """Boot and run until stop(); a cancellation (simulated power cut) saves nothing."""
        robust = self.config["robust"]
        configure_gc(robust["gc_threshold"])
        self.load()
        self.running = True
        if self.safe_mode:
            self.feedback.set_state("error")
        elif not self.enrollment.enrolled:
            self.feedback.set_state("provisioning")
        slow = max(self.link_cfg["handshake_timeout_ms"], 2000) + 5000
        self.liveness.register("supervise", robust["feed_ms"] * 3)
        self.liveness.register("link", slow)
        self.liveness.register("dispatch", slow)
        self.liveness.register("feedback", MAX_STEP_MS + 5000)
        for transport in self.transports:
            transport.set_receiver(self._on_message)
            transport.set_link_callback(self._on_link)
        self.watchdog.start()
        coroutines = [self.feedback.run(), self._link_task(), self._dispatch_task()]
        if self.sampler is not None:
            for sensor in self.sampler.sensors:
                self.liveness.register("sensor:" + sensor.name, self.sampler.allowance_ms())
            coroutines.extend(self.sampler.tasks())
        self._tasks = [asyncio.create_task(c) for c in coroutines]
        try:
            for transport in self.transports:
                try:
                    await transport.start()
                except Exception as exc:  # one dead link must not stop the device
                    self.event("transport-unavailable",
                               {"transport": transport.name, "reason": str(exc)[:100]})
            await self._supervise()
        finally:
            for task in self._tasks:
                task.cancel()
            self._tasks = []

    async def shutdown(self):
        """Orderly stop: flush the outbox and acknowledgements, stop the links."""
        self.running = False
        if self.sampler is not None:
            self.sampler.stop()
        self.feedback.stop()
        if not self.safe_mode:
            for event in self.outbox.save():
                self._queue_event(event)
        for transport in self.transports:
            try:
                await transport.stop()
            except Exception:  # already down
                pass


def _reason(exc):
    return ("%s: %s" % (type(exc).__name__, exc))[:100]


def _describe(event):
    parts = []
    for key in sorted(event):
        if key in ("event", "time"):
            continue
        value = event[key]
        if isinstance(value, bytes):
            value = hexstr(value)
        parts.append("%s=%s" % (key, value))
    return "%s %s" % (event.get("event"), " ".join(parts))


# ---------------------------------------------------------------- entry points


def load_config(hal, path=None):
    """-> (config, error): the flash config.json (or `path`) over the defaults; on a bad
    file the defaults, and the ConfigError to report."""
    try:
        overrides = fw_config.read_file(path or hal.flash_dir + "/" + fw_config.CONFIG_FILE)
        return fw_config.load(overrides, hal), None
    except fw_config.ConfigError as exc:
        return fw_config.load(None, hal), exc


def banner(config, hal):
    """The boot line: firmware version, device id and why the chip (re)started."""
    device = config["device"]
    return "VitalBridge firmware %s %s reset=%s" % (device["firmware"], device["id"],
                                                    hal.reset_cause())


def boot_app(hal, config_path=None, transports=None, echo=None):
    """Config, safe-boot check and the App (not yet running); with an echo, the banner
    is the first line, before any boot event."""
    config, error = load_config(hal, config_path)
    if echo is not None:
        echo(banner(config, hal))
    safe_boot = SafeBoot(hal.flash_dir, config["robust"]["crash_limit"])
    events = safe_boot.boot(hal.reset_cause(), hal.time())
    app = App(hal, config, transports, safe_boot, events, echo)
    if error is not None:
        app.event("config-invalid", {"reason": str(error)[:100]})
    return app


def main(config_path=None, echo=print):
    """Board entry point: run forever; an uncaught exception is
    recorded as a crash (for safe boot) and the chip is reset."""
    from firmware.hal import get_hal

    hal = get_hal()
    app = boot_app(hal, config_path, echo=echo)
    try:
        asyncio.run(app.run())
    except Exception as exc:
        if app.safe_boot is not None:
            app.safe_boot.record_crash(_reason(exc))
        sys.print_exception(exc)
        hal.reset()


def run_sim():
    """`vitalbridge firmware run-sim`'s entry on the unix port (VB_SIM_* environment,
    VB_CONFIG = optional config file): a simulated reset exits with 64 + the index of its
    cause in RESET_CAUSES so the runner starts the next boot."""
    import os

    from firmware.hal.base import RESET_CAUSES
    from firmware.hal.sim import SimulatedReset

    try:
        main(os.getenv("VB_CONFIG"))
    except SimulatedReset as reset:
        print("vitalbridge-sim: reset (%s)" % reset.cause)
        sys.exit(RESET_EXIT_BASE + RESET_CAUSES.index(reset.cause))
