"""Alarm notifications carried out: the policy's decisions (notify.py) turned into notified
steps, feedback commands to the patient's devices, the local sink, and the retained active
set on up/alarms. The I/O glue of the alarms package; the decisions themselves are pure.

Runs on the event loop. AlarmPath calls `durable(steps)` once steps are journaled and
stored (never before: an alarm is notified only once it cannot be lost) and `restored()`
at start-up; the service calls `device_ready` / `device_gone` on session and link changes
and `tick()` about once a second (quiet hours ending, link reconnects).

Patient devices. A patient's devices show one pattern: the highest grade among the
patient's alarms that call for attention (notify.device_pattern). It goes out as a sealed
device-command "feedback" under the device's current session, to every device of the
patient with a live session on a connected link, whenever it differs from what that
device was last told under that session; a new session or a reconnected link is told
again. Command ids are the milliseconds since the session opened (at least the previous
id + 1): they increase within a session across an agent restart, which the device's
replay check demands, without storing a counter (sessions live at most 2 days < 2**32 ms).

Local sink. A structured log event ("alarm notification", with grade, condition, alarm id)
and, when configured, the notify_command argv with grade, condition key and alarm id
appended: no shell, no patient id, no value, no key; 10 s to finish, then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Protocol

from edge_agent.alarms.active_set import ActiveSet
from edge_agent.alarms.lifecycle import NOTIFIED, NOTIFY_KINDS, Alarm, AlarmLifecycle, Step
from edge_agent.alarms.notify import (
    DEVICE,
    LOCAL,
    POLICY_ACTOR,
    Decision,
    Deferrals,
    NotificationPolicy,
    decide,
    device_pattern,
    minute_of_day,
)
from protocol import device_link, messages

log = logging.getLogger("vitalbridge.agent.notify")

COMMAND_TIMEOUT_S = 10.0
_COMMAND_ID_LIMIT = device_link.COMMAND_ID_LIMIT - 1


class LiveSession(Protocol):
    kid: bytes
    gateway_mac_key: bytes
    created_at: float


class DeviceChannel(Protocol):
    """The service's view of patient devices (edge_agent/service.py implements it)."""

    def patient_devices(self, patient: str, now: float) -> list[str]: ...

    def session(self, device_id: str) -> LiveSession | None: ...

    def send(self, device_id: str, payload: bytes) -> bool: ...  # False: link not connected


class Notifier(Protocol):
    """Where notified steps go (AlarmPath.notified)."""

    def __call__(self, alarm_id: str, detail: str, time: float, actor: str) -> bool: ...


class AlarmDispatch:
    """See the module docstring."""

    def __init__(self, policy: NotificationPolicy, lifecycle: AlarmLifecycle, *,
                 notified: Notifier, devices: DeviceChannel,
                 publish_set: Callable[[bytes], bool], link_epoch: Callable[[], object],
                 clock: Callable[[], float] = time.time, zone: tzinfo | None = None) -> None:
        self.policy = policy
        self.lifecycle = lifecycle
        self._notified = notified
        self._devices = devices
        self._publish_set = publish_set
        self._link_epoch = link_epoch
        self._clock = clock
        self._zone = zone
        self.deferrals = Deferrals()
        self.active = ActiveSet()
        self._told: dict[str, tuple[bytes, str]] = {}  # device -> (session kid, pattern)
        self._last_command: dict[bytes, int] = {}  # session kid -> last command id
        self._patients: set[str] = set()  # patients whose devices may show a pattern
        self._published: tuple[bytes, object] | None = None  # (payload, link epoch)
        self._commands: set[asyncio.Task[None]] = set()
        self.feedback_sent: list[tuple[str, str]] = []  # (device, pattern), newest last
        self.local_notifications = 0

    # -- inputs --------------------------------------------------------------------------------

    def restored(self, alarm: Alarm, steps: list[Step]) -> None:
        """Start-up: an open alarm and its stored steps (no one is notified again)."""
        self.active.update(steps, {alarm.id: alarm}, int(self._clock() * 1000))
        self.deferrals.restore(alarm.id, [s.detail for s in steps
                                          if s.kind == NOTIFIED and s.actor == POLICY_ACTOR],
                               alarm.grade)
        if alarm.patient is not None:
            self._patients.add(alarm.patient)

    def durable(self, steps: list[Step]) -> None:
        now = self._clock()
        alarms = {s.alarm_id: self.lifecycle.alarm(s.alarm_id) for s in steps}
        if self.active.update(steps, alarms, int(now * 1000)):
            self.publish_set()
        minute = self._minute(now)
        patients = {a.patient for a in alarms.values() if a.patient is not None}
        self._patients |= patients
        told = {patient: self._refresh(patient, now, minute) for patient in patients}
        for step in steps:
            if step.kind in NOTIFY_KINDS:
                alarm = alarms[step.alarm_id]
                for decision in decide(self.policy, alarm.id, step.grade, minute):
                    self._carry_out(decision, alarm, now, told.get(alarm.patient, []))

    def device_ready(self, device_id: str) -> None:
        """A session opened or the device's link came up: tell it the pattern again."""
        self._told.pop(device_id, None)
        now = self._clock()
        for patient in list(self._patients):
            if device_id in self._devices.patient_devices(patient, now):
                self._refresh(patient, now, self._minute(now))

    def device_gone(self, device_id: str) -> None:
        self._told.pop(device_id, None)

    def tick(self) -> None:
        """Quiet hours ending (deferred notifications, patterns) and link reconnects."""
        now = self._clock()
        minute = self._minute(now)
        if len(self.deferrals):
            open_alarms = {a.id: a for a in self.lifecycle.open_alarms()}
            deliver, lapsed = self.deferrals.due(self.policy, open_alarms, minute)
            for alarm_id, recipient in lapsed:
                log.info("deferred %s notification of alarm %s lapsed: no longer active",
                         recipient, alarm_id)
            for decision in deliver:
                alarm = open_alarms[decision.alarm_id]
                told = self._refresh(alarm.patient, now, minute) if alarm.patient else []
                self._carry_out(decision, alarm, now, told, after_quiet=True)
        for patient in list(self._patients):
            self._refresh(patient, now, minute)
        self.publish_set()

    # -- the retained active set ------------------------------------------------------------

    def publish_set(self) -> None:
        """Publish the set when it changed or the link reconnected since the last publish."""
        payload = self.active.payload()
        epoch = self._link_epoch()
        if epoch is None or self._published == (payload, epoch):
            return  # not connected: the next tick after the reconnect publishes it
        if self._publish_set(payload):
            self._published = (payload, epoch)
            if self.active.truncated:
                log.error("active alarm set: %d open alarms beyond the %d published",
                          self.active.truncated, len(self.active) - self.active.truncated)

    # -- carrying out ------------------------------------------------------------------------

    def _carry_out(self, decision: Decision, alarm: Alarm, now: float, told: list[str],
                   after_quiet: bool = False) -> None:
        detail = decision.detail
        if decision.deliver:
            self.deferrals.discard(alarm.id, decision.recipient)
            if decision.recipient == DEVICE:
                detail = ("device " + ",".join(told)) if told else \
                    "device pending: no device connected, told when one connects"
            elif decision.recipient == LOCAL:
                self._local(alarm, decision)
            if after_quiet:
                detail += " (after quiet hours)"
        else:
            self.deferrals.hold(decision)
        self._notified(alarm.id, detail[:200], now, POLICY_ACTOR)

    def _refresh(self, patient: str | None, now: float, minute: int) -> list[str]:
        """Bring the patient's connected devices to the pattern due -> devices that show it."""
        if patient is None:
            return []
        pattern = device_pattern(self.policy, self.lifecycle.open_alarms(patient), minute)
        showing = []
        for device in self._devices.patient_devices(patient, now):
            session = self._devices.session(device)
            if session is None:
                continue
            if self._told.get(device) == (session.kid, pattern):
                showing.append(device)
                continue
            command_id = self._next_command_id(session, now)
            body = device_link.encode_command(command_id, "feedback", pattern,
                                              session.gateway_mac_key, session.kid)
            if self._devices.send(device, messages.encode("device-command", body)):
                self._told[device] = (session.kid, pattern)
                self.feedback_sent.append((device, pattern))
                del self.feedback_sent[:-256]
                showing.append(device)
                log.info("feedback %s sent to %s", pattern, device)
        return showing

    def _next_command_id(self, session: LiveSession, now: float) -> int:
        elapsed_ms = int(max(0.0, now - session.created_at) * 1000)
        command_id = min(max(self._last_command.get(session.kid, 0) + 1, elapsed_ms + 1),
                         _COMMAND_ID_LIMIT)
        self._last_command[session.kid] = command_id
        return command_id

    def _local(self, alarm: Alarm, decision: Decision) -> None:
        self.local_notifications += 1
        condition = alarm.key  # the condition key ("spo2:low"), not key material
        # The text names grade and condition too: a plain (non-JSON) handler prints no extras.
        log.warning("alarm notification: %s %s (alarm %s)", decision.grade.label, condition,
                    alarm.id, extra={"alarm_id": alarm.id, "grade": decision.grade.label,
                                     "condition": condition})
        if self.policy.notify_command:
            argv = [*self.policy.notify_command, decision.grade.label, condition, alarm.id]
            task = asyncio.ensure_future(_run_command(argv))
            self._commands.add(task)
            task.add_done_callback(self._commands.discard)

    def _minute(self, now: float) -> int:
        return minute_of_day(datetime.fromtimestamp(now, self._zone))

    async def stop(self) -> None:
        """Let running notify commands finish (each is bounded by COMMAND_TIMEOUT_S)."""
        if self._commands:
            await asyncio.gather(*list(self._commands), return_exceptions=True)


async def _run_command(argv: list[str]) -> None:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        log.error("notify_command could not start: %s", exc.strerror or exc)
        return
    try:
        code = await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        log.error("notify_command did not finish within %.0f s: killed", COMMAND_TIMEOUT_S)
        return
    if code != 0:
        log.error("notify_command exited with status %d", code)

