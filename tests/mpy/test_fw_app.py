# The whole firmware app on the MicroPython unix port: simulated board, virtual time, and
# a gateway built from protocol functions only, joined to the device by a loopback
# Transport (a pair of queues). Proves: readings of every simulated sensor sealed and
# verified, with checkpoints; outbox contents intact after a power cut; an hour without a
# link replayed in order, thinned per policy, critical kept; no seq reused across reboots;
# a failing sensor reported without stopping the others; watchdog resets -> safe mode after
# N; feedback patterns for each grade; bounded queues.
# Run: micropython -X heapsize=8M tests/mpy/run.py test_fw_app
import asyncio
import json
import os

from test_fw_identity import in_workspace

from firmware import app as fw_app
from firmware.feedback import Feedback
from firmware.hal.sim import SimHal, SimulatedReset
from firmware.robust import SafeBoot, Wake
from firmware.transport.base import Transport, TransportDown
from protocol import (
    checkpoint,
    cose,
    crypto,
    cwt,
    device_link,
    enrollment,
    messages,
    sealing,
    session,
)
from protocol.errors import ProtocolError

CA_SEED = b"\xca" * 32
GW_SEED = b"\x06" * 32
GW_X = b"\x07" * 32
DAY = 86400

# Fast, deterministic settings shared by the tests (each may add its own).
BASE_CONFIG = {
    "sealing": {"checkpoint_interval": 5},
    "sensors": {"max30205": {"interval_ms": 2000}},
    "battery": {"interval_ms": 5000},
    "link": {"handshake_timeout_ms": 2000, "retry_min_ms": 500, "retry_max_ms": 2000},
}


# ---------------------------------------------------------------- loopback link + gateway


class Loopback(Transport):
    """Device end of a loopback link: send() queues into the gateway's inbox; the
    gateway's messages arrive through deliver(). plug(False) is a pulled cable."""

    name = "loopback"

    def __init__(self, gateway, plugged=True):
        super().__init__()
        self.gateway = gateway
        self.plugged = plugged
        gateway.link = self

    async def start(self):
        self._set_link(self.plugged)

    async def stop(self):
        self._set_link(False)

    async def send(self, message):
        if not self.connected:
            raise TransportDown("unplugged")
        self.gateway.inbox.append(message)
        self.gateway.wake.set()

    def plug(self, up):
        self.plugged = up
        self._set_link(up)

    def deliver(self, message):
        if self.connected:
            self._deliver(message)


class Gateway:
    """A gateway from protocol functions: enrolls the device, answers hellos, opens and
    acknowledges sealed batches, verifies checkpoints, reads events. Survives device
    reboots (a new Loopback attaches itself)."""

    def __init__(self, hal, auto_ack=True):
        self.hal = hal
        self.pub = crypto.ed25519_public_key(GW_SEED)
        self.xpub = crypto.x25519_public_key(GW_X)
        now = hal.time()
        self.cert = cwt.issue_cwt(CA_SEED, "org-ca", "gw-1", self.pub, now - DAY,
                                  now + 5 * 365 * DAY, agreement_key=self.xpub,
                                  role="gateway")
        self.inbox = []
        self.wake = Wake(hal)
        self.link = None
        self.challenge = None
        self.device = None  # the verified EnrollRequest
        self.sessions = {}
        self.current = None
        self.seq_tags = {}  # seq -> (session id, tag): a seq seen with another tag = reuse
        self.reused = []
        self.tags = {}  # session id -> {seq: tag}
        self.received = []  # (kind, session id, first, last) in arrival order
        self.readings = []
        self.verdicts = []
        self.events = []
        self.errors = []
        self.command_id = 0
        self.auto_ack = auto_ack

    def retarget(self, hal):
        self.hal = hal
        self.wake = Wake(hal)

    async def run(self):
        while True:
            while self.inbox:
                self.handle(self.inbox.pop(0))
            await self.wake.sleep(5000)  # a message wakes it at once

    def send(self, kind, body):
        self.link.deliver(messages.encode(kind, body))

    def handle(self, message):
        kind = "?"
        try:
            kind, body = messages.decode(message)
            getattr(self, "on_" + kind.replace("-", "_"))(body)
        except ProtocolError as exc:
            self.errors.append((kind, str(exc)))

    def start_enrollment(self):
        self.challenge = enrollment.make_challenge("gw-1", self.pub, self.xpub, self.hal.time(),
                                                   nonce=os.urandom(16))
        self.send("device-command", device_link.encode_command(1, "enroll",
                                                               self.challenge.to_map()))

    def on_enroll_request(self, body):
        request = enrollment.verify_request(body, self.challenge,
                                            lambda peer: crypto.x25519_shared(GW_X, peer))
        self.device = request
        now = self.hal.time()
        cert = cwt.issue_cwt(GW_SEED, "gw-1", request.device_id, request.sign_key, now - 60,
                             now + 365 * DAY, agreement_key=request.agree_key, role="device",
                             model=request.model, serial=request.serial)
        self.send("certificate", enrollment.make_delivery(cert, self.cert, self.xpub))

    def on_hello(self, body):
        sess, accept = session.gateway_accept(body, self.device.agree_key, GW_X,
                                              now=self.hal.time())
        self.sessions[sess.session_id] = sess
        self.tags[sess.session_id] = {}
        self.current = sess
        self.send("accept", accept)

    def on_sealed(self, body):
        kid = cose.mac0_parse(body).kid
        opened = sealing.open_batch(self.sessions[kid].device_mac_key, kid, body)
        for seq in opened.seqs:
            self.tags[kid][seq] = opened.tag
            seen = self.seq_tags.get(seq)
            if seen is not None and seen != (kid, opened.tag):
                self.reused.append(seq)
            self.seq_tags[seq] = (kid, opened.tag)
        self.readings.extend(opened.readings)
        self.received.append(("sealed", kid, opened.first_seq, opened.last_seq))
        if self.auto_ack:
            self.ack(device_link.Ack(kid, ranges=[(opened.first_seq, opened.last_seq)]))

    def on_checkpoint(self, body):
        claims = checkpoint.parse_checkpoint(body)
        verdict = checkpoint.verify_checkpoint(body, self.device.sign_key,
                                               self.tags.get(claims.session_id, {}),
                                               device_id=self.device.device_id)
        self.verdicts.append(verdict)
        self.received.append(("checkpoint", claims.session_id, claims.first_seq,
                              claims.last_seq))
        if self.auto_ack:
            self.ack(device_link.Ack(claims.session_id, checkpoints_upto=claims.last_seq))

    def ack(self, ack):
        self.send("device-ack", device_link.encode_ack(ack, self.current.gateway_mac_key,
                                                       self.current.session_id))

    def on_device_event(self, body):
        if isinstance(body, dict):
            self.events.append(device_link.decode_event(body))
            return
        kid = cose.mac0_parse(body).kid
        self.events.append(device_link.decode_event(body, self.sessions[kid].device_mac_key,
                                                    kid))

    def command(self, name, args=None):
        self.command_id += 1
        self.send("device-command", device_link.encode_command(
            self.command_id, name, args, self.current.gateway_mac_key,
            self.current.session_id))

    def event_names(self):
        return [e.name for e in self.events]

    def values(self, quantity):
        return [r.value for r in self.readings if r.quantity == quantity]


# ---------------------------------------------------------------- boards


def merged(base, extra):
    out = {}
    for key in base:
        out[key] = base[key]
    for key in extra:
        if isinstance(out.get(key), dict) and isinstance(extra[key], dict):
            out[key] = merged(out[key], extra[key])
        else:
            out[key] = extra[key]
    return out


def new_board(ws, overrides=None, reset_cause="power-on", seed=1, gateway=None, plugged=True):
    """A SimHal on the workspace's flash, config.json written there, and the App."""
    hal = SimHal(flash_dir=ws.path + "/flash", seed=seed, reset_cause=reset_cause)
    with open(ws.path + "/flash/config.json", "w") as f:
        f.write(json.dumps(merged(BASE_CONFIG, overrides or {})))
    if gateway is None:
        gateway = Gateway(hal)
    else:
        gateway.retarget(hal)
    link = Loopback(gateway, plugged)
    app = fw_app.boot_app(hal, transports=[link])
    return hal, app, gateway, link


async def settle(hal):
    # Short virtual sleeps give tasks that were just created or cancelled their turns
    # (the virtual clock only knows tasks that already sleep) while time moves <= 10 ms.
    for _ in range(10):
        await hal.asleep_ms(1)


def run_tasks(hal, coroutines, seconds, actions=()):
    """Run `coroutines` as tasks for `seconds` of virtual time, doing (at_s, action) on
    the way, then cut the power: the tasks are abandoned, nothing is saved. Returns a
    SimulatedReset if the board reset itself, else None."""
    outcome = []

    async def main():
        tasks = [asyncio.create_task(c) for c in coroutines]
        await settle(hal)
        elapsed = 0
        for at, action in actions:
            await hal.asleep_ms(int((at - elapsed) * 1000))
            elapsed = at
            action()
        await hal.asleep_ms(int((seconds - elapsed) * 1000))
        for task in tasks:
            task.cancel()
        await settle(hal)  # let the cancelled tasks leave the virtual clock's sleeper list

    asyncio.new_event_loop()
    try:
        asyncio.run(main())
    except SimulatedReset as reset:
        outcome.append(reset)
    asyncio.new_event_loop()
    return outcome[0] if outcome else None


def run_board(hal, app, gateway, seconds, actions=()):
    return run_tasks(hal, [app.run(), gateway.run()], seconds, actions)


def enrolled_board(ws, overrides=None, seconds=3):
    """Boot, enroll over the link and establish a session."""
    hal, app, gateway, link = new_board(ws, overrides)
    run_board(hal, app, gateway, seconds, [(0.5, gateway.start_enrollment)])
    assert app.enrollment.enrolled and app.linked, (gateway.errors, app.stats)
    return hal, app, gateway, link


def durable(app):
    buffered = [e.key for e in app.outbox.buffered]
    return [(e.key, e.data) for e in app.outbox.unacked() if e.key not in buffered]


# ---------------------------------------------------------------- tests


@in_workspace("fwapp-all")
def test_readings_from_every_sensor_sealed_and_verified(ws):
    hal, app, gateway, _ = new_board(ws)
    hal.physiology.set(hr=68, spo2=97, temp=36.6)
    run_board(hal, app, gateway, 20, [
        (0.5, gateway.start_enrollment),
        (8, lambda: hal.devices["bp"].measure(142, 91, 66)),
    ])
    assert gateway.errors == [], gateway.errors
    assert gateway.device.device_id == app.device_id == "vb-025642000001"
    quantities = set([r.quantity for r in gateway.readings])
    for q in ("pr", "spo2", "pi", "sq", "temp", "sys", "dia", "bat"):
        assert q in quantities, (q, quantities)
    assert abs(gateway.values("spo2")[0] - 97) <= 2
    assert abs(gateway.values("pr")[0] - 68) <= 2
    assert gateway.values("sys") == [142] and gateway.values("dia") == [91]
    assert abs(gateway.values("temp")[0] - 36.6) < 0.2
    # Every reading names this device, and its checkpoints prove the device sealed them.
    for reading in gateway.readings:
        assert reading.device == "urn:dev:vb:vb-025642000001:"
    assert len(gateway.verdicts) >= 2 and [v.status for v in gateway.verdicts
                                           if not v.ok] == []
    # Events of provisioning travel as bare maps (hints); once the session exists
    # they are sealed: the certificate installation is reported authenticated (after its
    # unsealed hint for an installer without a session, test_fw_followups).
    names = gateway.event_names()
    assert names[:3] == ["key-generated", "key-generated", "command-done"], names
    assert [e.authenticated for e in gateway.events[:3]] == [False, False, False]
    installed = [e for e in gateway.events if e.name == "certificate-installed"]
    assert [e.authenticated for e in installed] == [False, True], installed
    # Acknowledged entries have left the outbox.
    assert len(list(app.outbox.unacked())) <= app.config["link"]["send_batch"]
    assert app.stats["refused"] == 0 and app.feedback.state == "connected"


@in_workspace("fwapp-cut")
def test_power_cut_keeps_the_outbox_and_seqs_are_never_reused(ws):
    overrides = {"sensors": {"max30102": {"enabled": False},
                             "max30205": {"filters": {"temp": [["throttle", 0, 600, 0]]}}}}
    hal, app, gateway, link = enrolled_board(ws, overrides)
    first_session = gateway.current.session_id
    run_board(hal, app, gateway, 40, [
        (1, lambda: link.plug(False)),
        (20, lambda: hal.physiology.set(temp=34.5)),  # critical: flushed at once
        (24, lambda: hal.physiology.set(temp=36.8)),  # routine again: batched in RAM
    ])
    kept = durable(app)
    lost = [e.key for e in app.outbox.buffered]
    assert kept and lost, (kept, lost)
    last_seq = max([k[0][0] for k in kept] + [k[0] for k in lost])
    # Power cut: the next boot finds every flushed entry, byte for byte.
    hal, app, gateway, link = new_board(ws, overrides, gateway=gateway, plugged=False)
    reread = []
    run_board(hal, app, gateway, 1, [(0.5, lambda: reread.extend(durable(app)))])
    assert reread == kept, (len(reread), len(kept))
    hal, app, gateway, link = new_board(ws, overrides, gateway=gateway, plugged=False)
    run_board(hal, app, gateway, 20, [(2, lambda: link.plug(True))])
    assert gateway.errors == [] and gateway.reused == []
    assert gateway.current.session_id != first_session
    received = set(gateway.seq_tags)
    for key, _ in kept:
        assert key[0] in received
    for key in lost:  # lost in RAM by the cut, and their seqs are never used again
        assert key[0] not in received, key
    new_seqs = [s for s in received if gateway.seq_tags[s][0] == gateway.current.session_id]
    assert new_seqs and min(new_seqs) > last_seq
    # The critical batch and the checkpoint signed right after it arrived and verify.
    critical = [v for v in gateway.values("temp") if v <= 35.0]
    assert critical
    assert gateway.verdicts and [v.status for v in gateway.verdicts if not v.ok] == []


@in_workspace("fwapp-hour")
def test_an_hour_without_link_replays_in_order_thinned_with_critical_kept(ws):
    overrides = {
        "sensors": {"max30102": {"enabled": False}, "bp": {"enabled": False},
                    "max30205": {"interval_ms": 10000,
                                 "filters": {"temp": [["throttle", 0, 600, 0]]}}},
        "battery": {"interval_ms": 60000},
        "sealing": {"checkpoint_interval": 60},
        "outbox": {"segments": 8, "segment_size": 4096},
        "link": {"events_max": 64},
        "robust": {"feed_ms": 3000},
    }
    hal, app, gateway, link = enrolled_board(ws, overrides)
    sealed = []  # (first seq, critical) of every batch the device sealed
    seal = app.sealer.seal

    def recording_seal(records, critical=False, base_time=None):
        sealed.append((app.seqs.next, critical))
        return seal(records, critical, base_time)
    app.sealer.seal = recording_seal
    cold = [(1200 + 600 * i, 34.2) for i in range(4)]  # 1 min of hypothermia 4 times
    actions = [(1, lambda: link.plug(False))]
    for at, temp in cold:
        actions.append((at, lambda t=temp: hal.physiology.set(temp=t)))
        actions.append((at + 60, lambda: hal.physiology.set(temp=36.8)))
    replay_from = len(gateway.received)
    actions.append((3601, lambda: link.plug(True)))
    run_board(hal, app, gateway, 3640, actions)
    outbox = app.outbox
    assert outbox.stats()["bytes"] <= outbox.capacity + outbox.reserve
    assert gateway.errors == [] and gateway.reused == []
    replayed = gateway.received[replay_from:]
    keys = [(last, 0 if kind == "sealed" else 1) for kind, _, _, last in replayed]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "replay out of order"
    received = set(gateway.seq_tags)
    critical = [first for first, crit in sealed if crit]
    assert len(critical) >= 8, sealed
    assert [s for s in critical if s not in received] == []  # critical kept
    thinned = [e for e in gateway.events if e.name == "thinned"]
    assert thinned, "a 32 KB outbox cannot hold an hour: thinning must be reported"
    thinned_seqs = set()
    for event in thinned:
        for seq in range(event.details["first"], event.details["last"] + 1):
            thinned_seqs.add(seq)
    routine = [first for first, crit in sealed if not crit]
    missing = [s for s in routine if s not in received]
    assert missing and [s for s in missing if s not in thinned_seqs] == []
    # Oldest first: nothing kept is older than something thinned... of the same kind.
    assert max(thinned_seqs) < max([s for s in routine if s in received])
    # Checkpoints: all kept; those over thinned readings report the gap honestly.
    statuses = set([v.status for v in gateway.verdicts])
    assert statuses <= set([checkpoint.VERIFIED, checkpoint.GAP]), statuses
    assert len(gateway.verdicts) >= 55


@in_workspace("fwapp-fault")
def test_failing_sensor_is_reported_and_the_others_go_on(ws):
    hal, app, gateway, _ = enrolled_board(ws)
    hal.inject_fault("max30205", "timeout")
    oximeter = app.sampler.sensor("max30102")
    estimates = oximeter.estimates
    # Retries after 1, 2, 4, 8, 16 s: the one at 31 s finds the fault cleared.
    run_board(hal, app, gateway, 40, [(20, lambda: hal.inject_fault("max30205", None))])
    faults = [e for e in gateway.events if e.name == "sensor-fault"]
    assert faults and faults[0].authenticated
    assert faults[0].details["sensor"] == "max30205" and faults[0].details["kind"] == "fault"
    assert "sensor-recovered" in gateway.event_names()
    assert app.feedback._local.get("sensor:max30205") is None  # blue cleared again
    assert oximeter.estimates - estimates >= 35  # the oximeter never stopped
    assert "pr" in [r.quantity for r in gateway.readings]


@in_workspace("fwapp-wdt")
def test_watchdog_resets_lead_to_safe_mode_after_three(ws):
    hal, app, gateway, link = enrolled_board(ws)
    cause = "power-on"
    for boot in range(3):
        if boot:
            hal, app, gateway, link = new_board(ws, gateway=gateway, reset_cause=cause)
        assert not app.safe_mode and app.sampler is not None
        app.liveness.register("stuck", 500)  # a task that hangs: it never beats
        started = hal.clock.monotonic_ms()
        reset = run_board(hal, app, gateway, 60)
        assert reset is not None and reset.cause == "watchdog", boot
        bitten = hal.clock.monotonic_ms() - started
        assert bitten <= app.config["robust"]["watchdog_ms"] + 2000, bitten
        assert app.watchdog.starved == ["stuck"]
        cause = reset.cause
    hal, app, gateway, link = new_board(ws, gateway=gateway, reset_cause=cause)
    assert app.safe_mode and app.sampler is None
    before = len(gateway.readings)
    run_board(hal, app, gateway, 10)
    safe = [e for e in gateway.events if e.name == "safe-mode"]
    assert safe and safe[-1].authenticated and safe[-1].details["crashes"] == 3
    assert safe[-1].details["causes"] == "watchdog,watchdog,watchdog"
    assert len(gateway.readings) == before  # no sensors in safe mode
    assert app.feedback.state == "error"
    # A power-on reset (someone power-cycled the device) tries normal mode again.
    hal, app, gateway, link = new_board(ws, gateway=gateway, reset_cause="power-on")
    assert not app.safe_mode and app.sampler is not None


@in_workspace("fwapp-crash")
def test_safe_boot_counts_recorded_crashes_and_stable_running_clears_them(ws):
    path = ws.path
    boot = SafeBoot(path, limit=3)
    assert boot.boot("power-on") == [] and boot.writes == 0
    boot.record_crash("TypeError: boom")
    boot = SafeBoot(path, limit=3)
    events = boot.boot("software")  # main() reset after recording the crash
    assert [e["event"] for e in events] == ["crash-recovered"]
    assert events[0]["cause"] == "TypeError: boom" and not boot.safe_mode
    assert boot.boot("hard")[0]["crashes"] == 2
    assert boot.mark_stable() and SafeBoot(path, 3).boot("soft") == []
    for _ in range(3):
        events = SafeBoot(path, 3).boot("watchdog")
    assert events[-1]["event"] == "safe-mode"
    with open(path + "/bootstate", "wb") as f:
        f.write(b"garbage")
    assert SafeBoot(path, 3).boot("soft") == []  # unreadable state: start counting again


def _tone_starts(hal, since=0):
    return [(start - since, freq) for start, freq, _ in hal.buzzer().history if start >= since]


def _changes(hal, name, since=0):
    return [(t - since, lit) for t, lit in hal.led(name).history if t >= since]


def _play(hal, feedback, seconds, actions=()):
    run_tasks(hal, [feedback.run()], seconds, actions)


def test_feedback_patterns_for_each_grade():
    expected_tones = {
        "red": [(0, 880), (250, 880), (500, 880), (1000, 880), (1250, 880), (2100, 880),
                (2350, 880), (2600, 880), (3100, 880), (3350, 880), (9500, 880)],
        "orange": [(0, 660), (400, 660), (800, 660)],
        "yellow": [(0, 440), (400, 440)],
        "blue": [],
    }
    for grade in ("red", "orange", "yellow", "blue"):
        hal = SimHal(flash_dir="/tmp/vb-mpy-fw-feedback", seed=1)
        feedback = Feedback(hal)
        feedback.set_gateway_control(True)
        start = []

        def raise_alarm(g=grade, hal=hal, feedback=feedback, start=start):
            start.append(hal.clock.monotonic_ms())
            feedback.command(g)
        _play(hal, feedback, 12, [(1, raise_alarm)])
        tones = _tone_starts(hal, start[0])[:len(expected_tones[grade])]
        assert tones == expected_tones[grade], (grade, _tone_starts(hal), start)
        changes = _changes(hal, grade, start[0])
        if grade == "red":  # 2 Hz, 50 % on (the history keeps the last 32 of 44 changes)
            assert len(changes) == 32, changes
            for i in range(1, len(changes)):
                assert changes[i][0] - changes[i - 1][0] == 250
                assert changes[i][1] != changes[i - 1][1]
        elif grade == "orange":  # 0.5 Hz, 50 % on
            assert changes[:3] == [(0, True), (1000, False), (2000, True)], changes
        else:  # steady
            assert changes == [(0, True)], (grade, changes)
        for other in ("red", "orange", "yellow", "blue"):
            if other != grade:
                assert not hal.led(other).value()


def test_feedback_gateway_is_authoritative_local_is_the_fallback():
    hal = SimHal(flash_dir="/tmp/vb-mpy-fw-feedback", seed=1)
    feedback = Feedback(hal, silence_s=120)
    seen = []

    def note():
        seen.append((feedback.grade(), hal.led("red").value() or hal.led("orange").value()))

    _play(hal, feedback, 200, [
        (1, lambda: feedback.local_alarm("local:spo2", "red")),  # offline: local shows
        (2, note),
        (3, lambda: feedback.set_gateway_control(True)),  # gateway in charge: its choice
        (4, note),
        (5, lambda: feedback.command("orange")),
        (6, note),
        (7, lambda: feedback.set_gateway_control(False)),  # link lost: local red again
        (8, note),
        (9, lambda: feedback.command("silence")),
        (70, lambda: feedback.command("off")),
        (71, lambda: feedback.local_alarm("local:spo2", None)),
        (72, note),
    ])
    assert [g for g, _ in seen] == ["red", None, "orange", "red", None], seen
    tones = [start for start, freq, _ in hal.buzzer().history if freq == 880]
    # Silenced at 9 s for 120 s; by 70 s no alarm is left to sound.
    assert tones and max(tones) < 9000 + 200
    assert not hal.led("red").value() and not hal.led("orange").value()


@in_workspace("fwapp-bounds")
def test_bounded_queues_in_the_app(ws):
    overrides = {"link": {"events_max": 8, "pending_max": 4},
                 "sensors": {"max30205": {"filters": {"temp": []}}}}
    hal, app, gateway, link = new_board(ws, overrides, plugged=False)
    for i in range(30):
        app.event("noise", {"i": i})
    app.event("tamper", {"cause": "test"})
    for i in range(30):
        app.event("noise", {"i": 100 + i})
    assert len(app.events) == 8 and app.stats["events_dropped"] == 53
    assert "tamper" in [e["event"] for e in app.events.items()]  # important ones stay
    run_board(hal, app, gateway, 20)  # unenrolled, unplugged: readings wait in RAM
    assert len(app.pending) == 4 and app.stats["pending_dropped"] > 0
    assert "readings-dropped" in [e["event"] for e in app.events.items()]


@in_workspace("fwapp-main")
def test_main_records_an_uncaught_exception_as_a_crash_and_resets(ws):
    from firmware.hal import set_hal

    set_hal(SimHal(flash_dir=ws.path + "/flash", seed=1))
    real_run = fw_app.App.run

    async def broken_run(self):
        raise RuntimeError("bug in the app")
    fw_app.App.run = broken_run
    try:
        fw_app.main(echo=None)
    except SimulatedReset as reset:
        assert reset.cause == "software"
    else:
        raise AssertionError("main() did not reset the board")
    finally:
        fw_app.App.run = real_run
        set_hal(None)
    # The next boot counts it.
    hal = SimHal(flash_dir=ws.path + "/flash", seed=1, reset_cause="software")
    app = fw_app.boot_app(hal, transports=[])
    recovered = [e for e in app.events.items() if e["event"] == "crash-recovered"]
    assert recovered and recovered[0]["cause"] == "RuntimeError: bug in the app"
    assert app.safe_boot.crashes == 1 and not app.safe_mode
