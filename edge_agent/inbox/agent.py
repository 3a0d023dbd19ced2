"""What the running agent does with inbox entries (the handlers of consumer.py).

* manual-reading: a person's values for a patient become readings of the patient's manual
  source device (registry kind "manual"), attested with the gateway key and marked manual
  with who entered them (pipeline/attest.py), journaled, delivered and evaluated by the same
  rules as any reading of that patient.
* device-compromised: a compromise declared with `vitalbridge device compromise` (already
  recorded in the registry by the command) reaches the running agent: the device's live
  sessions and session keys are dropped, the centre gets the key event (UP_EVENT, as for a
  compromise the agent itself detects) and an orange technical alarm is raised.

A broken tamper seal reported by the device takes the same steps inside the agent
(`service._lifecycle_event` calls `raise_compromise_alarm`).

Both record events in the tamper-evident event journal when applied. `apply` runs again
after a crash (or a failure) before the outcome was recorded; the events the first run
already recorded are looked up (event_once.py) and not recorded twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.alarms.evaluator import TECHNICAL, Condition, Reading
from edge_agent.alarms.grades import Grade
from edge_agent.eventlog import Entry as EventEntry
from edge_agent.inbox import entries
from edge_agent.inbox.consumer import InboxConsumer, Refused
from edge_agent.inbox.event_once import EventJournalLookup, RecentEvents
from edge_agent.inbox.store import Entry
from edge_agent.journal import NewMessage, Priority
from edge_agent.logging_setup import redact
from edge_agent.pipeline import Observation
from protocol import messages, topics

if TYPE_CHECKING:
    from edge_agent.service import AgentService

MAX_FUTURE_SKEW_S = 120  # a manual entry may be dated this far ahead of the gateway clock
COMPROMISED = "compromised"
# Orange (IEC 60601-1-8 medium priority): the device's readings are no longer accepted, so
# the patient is partly unmonitored until it is replaced and someone must act soon; it is
# not a physiological emergency (red is kept for those, and would latch for no clinical
# reason). docs/keys-and-certificates.md, "Compromise forwarding".
COMPROMISE_GRADE = Grade.ORANGE
# Prepared work stores the event journal's head seq before apply could record anything
# (event_once.py); work prepared by an agent without it is checked from the start.
EVENTS_AFTER = "events_after"
RECEIPT = "reception.received"
FAULT = "maintenance.fault"


def compromise_condition(device: str, patient: str | None, reason: str,
                         at: float) -> Condition:
    return Condition(f"{COMPROMISED}:{device}", TECHNICAL, COMPROMISE_GRADE, float(at), patient,
                     device, detail=f"device compromised: {redact(reason)[:120]}")


def raise_compromise_alarm(service: AgentService, device: str, reason: str, at: float) -> None:
    """The technical alarm of a compromised device (idempotent: an active one stays)."""
    patient = service.directory.patient_at(device, int(at))
    service.alarms.external_conditions([compromise_condition(device, patient, reason, at)])


def compromise_event(device: str, at: int, keys: list[str]) -> bytes:
    """The key event for the centre, the same bytes as service._lifecycle_event journals for
    a compromise the agent detects itself (so both paths give one journal row)."""
    return messages.encode("event", {"lifecycle": {"kind": COMPROMISED, "holder": device,
                                                   "at": at, "keys": keys}})


def _message_json(message: NewMessage) -> dict[str, Any]:
    return {"kind": message.kind, "device_id": message.device_id,
            "payload": message.payload.hex(), "priority": int(message.priority),
            "verdict": message.verdict, "flags": list(message.flags),
            "session": None if message.session is None else message.session.hex(),
            "first_seq": message.first_seq, "last_seq": message.last_seq,
            "count": message.count, "received_at": message.received_at}


def _message(data: dict[str, Any]) -> NewMessage:
    return NewMessage(data["kind"], data["device_id"], bytes.fromhex(data["payload"]),
                      data["priority"], data["verdict"], tuple(data["flags"]),
                      None if data["session"] is None else bytes.fromhex(data["session"]),
                      data["first_seq"], data["last_seq"], data["count"], data["received_at"])


def _reading_json(reading: Reading) -> dict[str, Any]:
    return {"patient": reading.patient, "device": reading.device,
            "quantity": reading.quantity, "value": reading.value, "time": reading.time,
            "unit": reading.unit}


def _receipt_digest(entry: EventEntry) -> str | None:
    """The digest a reception entry documents (None: another kind)."""
    if entry.kind != RECEIPT:
        return None
    digest = entry.details.get("digest")
    return digest if isinstance(digest, str) else None


class ManualReadingHandler:
    def __init__(self, service: AgentService, events: EventJournalLookup,
                 clock: Any = time.time) -> None:
        self.service = service
        self._events = events
        self._recent = RecentEvents()  # digests whose receipt this process recorded
        self._clock = clock

    def prepare(self, entry: Entry, body: dict[str, Any]) -> Any:
        service, registry = self.service, self.service.registry
        now = self._clock()
        at, patient = body["at"], body["patient"]
        if at > now + MAX_FUTURE_SKEW_S:
            return Refused(f"at: {at:.0f} is in the future (gateway clock {now:.0f}); enter "
                           "the time the values were measured")
        since = registry.monitoring_since(patient)  # NotFoundError: refused
        if at < since:
            return Refused(f"at: before patient {patient} was monitored here (from {since}); "
                           "check --at")
        source = registry.manual_source(patient, service.gateway_id, actor=entry.actor,
                                        now=int(now))
        service.directory.invalidate()
        observations = [Observation(name, value, at, body["units"][name])
                        for name, value in body["values"].items()]
        attested = service.attestor.manual(
            source.id, observations, actor=entry.actor, received_at=now, patient=patient,
            flags=(f"entered-by:{entry.actor}",))
        if attested.quarantine or not attested.journal:
            reasons = "; ".join(q.reason for q in attested.quarantine) or "no reading built"
            return Refused(reasons)
        return {"messages": [_message_json(m) for m in attested.journal],
                "readings": [_reading_json(r) for r in attested.readings],
                "received_at": now, EVENTS_AFTER: self._events.mark()}

    async def apply(self, entry: Entry, body: dict[str, Any], prepared: Any) -> str:
        built = [_message(m) for m in prepared["messages"]]
        await self.service.journal.append_many(built)  # one row per digest: a retry is a no-op
        await self._document_receipts(built, prepared.get(EVENTS_AFTER, 0))
        readings = [Reading(r["patient"], r["device"], r["quantity"], r["value"], r["time"],
                            r["unit"], manual=True) for r in prepared["readings"]]
        if readings:
            self.service.alarms.readings(readings, prepared["received_at"])
        first, last = built[0].first_seq, built[-1].last_seq
        return (f"{sum(m.count for m in built)} readings journaled as {built[0].device_id} "
                f"seq {first}..{last}")

    async def _document_receipts(self, built: list[NewMessage], events_after: int) -> None:
        """One `reception.received` per message, like any receipt, and never a second one
        for a message whose receipt an earlier run of this entry recorded."""
        wanted = [m for m in built if m.digest.hex() not in self._recent]
        if not wanted:
            return
        recorded = await asyncio.to_thread(self._events.find, events_after, _receipt_digest)
        for message in wanted:
            digest = message.digest.hex()
            if digest not in recorded:
                self.service.manual_received(message)
            self._recent.add_all([digest])


class CompromiseHandler:
    def __init__(self, service: AgentService, events: EventJournalLookup) -> None:
        self.service = service
        self._events = events
        self._recent = RecentEvents(256)  # entry ids whose fault this process recorded

    def prepare(self, entry: Entry, body: dict[str, Any]) -> Any:
        registry = self.service.registry
        device = registry.device(body["device"])  # NotFoundError: refused
        if device.status != COMPROMISED:
            return Refused(f"device {device.id} is {device.status} in the registry: declare "
                           "the compromise with `vitalbridge device compromise`")
        keys = [k.kid for k in registry.keys("device", device.id)
                if k.facts.compromised == body["at"]]
        return {"keys": keys, EVENTS_AFTER: self._events.mark()}

    async def apply(self, entry: Entry, body: dict[str, Any], prepared: Any) -> str:
        service = self.service
        device, at, reason = body["device"], body["at"], body["reason"]
        service.directory.invalidate()
        ended = service.verifier.withdraw_device(device, reason, at)
        await service.journal.append(NewMessage(
            topics.UP_EVENT, None, compromise_event(device, at, prepared["keys"]),
            Priority.ALARM, "attested"))
        raise_compromise_alarm(service, device, reason, at)
        if entry.id not in self._recent:
            subject = f"device:{device}"

            def ours(event: EventEntry) -> str | None:
                return "fault" if event.kind == FAULT and event.subject == subject and \
                    event.details.get("fault") == COMPROMISED else None

            if not await asyncio.to_thread(self._events.find, prepared.get(EVENTS_AFTER, 0),
                                           ours):
                service.recorder.record(FAULT, entry.actor, subject, {
                    "component": "device", "fault": COMPROMISED, "severity": "critical",
                    "detail": redact(reason)[:200]})
            self._recent.add_all([entry.id])
        return (f"{len(ended)} live sessions withdrawn, key event queued for the centre, "
                f"{COMPROMISE_GRADE.label} technical alarm raised")


async def start_inbox(service: AgentService, data_dir: Path) -> InboxConsumer:
    """The service's inbox consumer, started (entries waiting from before are processed)."""
    from edge_agent.service import EVENTS_FILE  # the service imports this module

    events = EventJournalLookup(data_dir / EVENTS_FILE)
    consumer = InboxConsumer(data_dir, {
        entries.MANUAL_READING: ManualReadingHandler(service, events, service._clock),
        entries.DEVICE_COMPROMISED: CompromiseHandler(service, events),
    }, clock=service._clock)
    await consumer.start()
    return consumer
