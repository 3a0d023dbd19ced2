"""Readings the gateway vouches for itself: standard devices that cannot seal (BLE GATT
health services, CMS50 serial oximeters) and manual entries by a person.

Each group of readings becomes a SenML pack (protocol.senml) with gateway-assigned
per-device sequence numbers, signed as a COSE_Sign1 with the gateway's own Ed25519 key
(kid = key_id(gateway public key), content type SenML-CBOR in the protected header), and is
journaled with verdict "attested" or "manual". The signature says "this gateway received
these values", not "this device measured them": the journal's verdict keeps the two apart.

Seqs are reserved in blocks in the state store before use, so they are never reused, even
across a crash (an unused rest of a block becomes a gap, as on the firmware).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.alarms.evaluator import Reading
from edge_agent.journal import NewMessage, QuarantineEntry
from edge_agent.pipeline.directory import DeviceDirectory
from edge_agent.pipeline.state_store import StateStore
from edge_agent.pipeline.verifier import (
    CriticalCheck,
    clean_flags,
    priority_for,
    rule_readings,
    verdict_text,
)
from protocol import cose, sealing, senml, topics, uplink, vitals
from protocol.errors import ProtocolError, ValidationError

ATTESTED = "attested"
MANUAL = "manual"
DEFAULT_BLOCK = 64
MAX_PACK = sealing.MAX_BATCH
MAX_ACTOR = 64


@dataclass(frozen=True, slots=True)
class Observation:
    """One value to attest: a protocol.vitals quantity, its value, POSIX time and unit
    (None: the quantity's only unit; required when it allows several, e.g. glucose)."""

    quantity: str
    value: float
    time: float
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Attested:
    """What to journal and evaluate for one attest()/manual() call."""

    journal: tuple[NewMessage, ...]
    quarantine: tuple[QuarantineEntry, ...]
    readings: tuple[Reading, ...]
    flags: tuple[str, ...]
    notes: tuple[str, ...]
    actor: str | None = None


class SeqAllocator:
    """Per-source seqs handed out from blocks reserved durably in the state store."""

    def __init__(self, store: StateStore, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.store = store
        self.block = block
        self._free: dict[str, tuple[int, int]] = {}  # source -> (next, end of reservation)

    def take(self, source: str, count: int) -> int:
        """`count` consecutive seqs for `source` -> the first."""
        if count < 1:
            raise ValueError("count must be >= 1")
        nxt, end = self._free.get(source, (-1, -1))
        if end - nxt < count or nxt < 0:
            want = max(self.block, count)
            first = self.store.reserve_seqs(source, want)
            if nxt < 0 or first != end:  # not contiguous (first use since start): a gap
                nxt = first
            end = first + want
        self._free[source] = (nxt + count, end)
        return nxt


def _actor(actor: object) -> str:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR \
            or not actor.isprintable():
        raise ValidationError("actor", f"must be printable text of 1..{MAX_ACTOR} characters")
    return actor.strip()


class Attestor:
    def __init__(self, directory: DeviceDirectory, store: StateStore, *,
                 critical: CriticalCheck | None = None, block: int = DEFAULT_BLOCK) -> None:
        self.directory = directory
        self.seqs = SeqAllocator(store, block)
        self.critical = critical

    def attest(self, device_id: str, observations: Sequence[Observation], *,
               received_at: float, flags: Iterable[str] = ()) -> Attested:
        """Readings of a standard device. `flags`: conditions the ingest reported with them
        ("stored", "clock-skew", ...). The device's calibration/registration currency is
        added here."""
        topics.check_id("device_id", device_id)
        currency = [f for f in self.directory.currency_flags(device_id, int(received_at))
                    if not f.endswith("-due-soon")]
        return self._build(device_id, observations, received_at, ATTESTED,
                           [*flags, *currency], None, None)

    def manual(self, device_id: str, observations: Sequence[Observation], *, actor: str,
               received_at: float, patient: str | None = None,
               flags: Iterable[str] = ()) -> Attested:
        """Values a person entered. `device_id` names the entry source (one per patient,
        bound in the registry, so the centre finds the patient as for any device); `patient`
        overrides the binding for the rules. The actor goes into the uplink verdict text
        and the result (for the event journal)."""
        topics.check_id("device_id", device_id)
        return self._build(device_id, observations, received_at, MANUAL, list(flags),
                           _actor(actor), patient)

    def _build(self, device_id: str, observations: Sequence[Observation], received_at: float,
               verdict: str, flags: list[str], actor: str | None,
               patient: str | None) -> Attested:
        keys = self.directory.gateway_keys()
        records: list[dict[int, object]] = []
        refused: list[QuarantineEntry] = []
        for obs in observations:
            try:
                if obs.unit is None and len(vitals.quantity(obs.quantity)["units"]) > 1:
                    # as the SenML profile does: an implied unit could turn 50 mg/dL
                    # into 50 mmol/L, so the canonical unit is never assumed here
                    raise ValidationError("u", f"unit required: {obs.quantity} has more "
                                          "than one allowed unit")
                record = senml.make_record(obs.quantity, obs.value, obs.unit, obs.time, seq=0)
                senml.validate_record(record)
            except (ProtocolError, TypeError) as exc:
                refused.append(QuarantineEntry(repr(obs).encode(), f"{verdict} reading refused: "
                                               f"{exc}", device_id, verdict, received_at))
                continue
            records.append(record)
        journal: list[NewMessage] = []
        readings: list[Reading] = []
        notes: list[str] = []
        all_flags: list[str] = []
        for start in range(0, len(records), MAX_PACK):
            chunk = records[start:start + MAX_PACK]
            first = self.seqs.take(device_id, len(chunk))
            for offset, record in enumerate(chunk):
                record[senml.SEQ] = first + offset
            pack = senml.encode_pack(chunk, base_name=f"urn:dev:vb:{device_id}:")
            signed = cose.sign1_create(keys.ed25519_seed, pack, kid=keys.signing_kid,
                                       content_type=cose.CT_SENML_CBOR)
            rules, reading_flags = rule_readings(
                self.directory, device_id, senml.decode_pack(pack), manual=verdict == MANUAL,
                patient=patient)
            chunk_flags = clean_flags([*flags, *reading_flags])
            text = verdict if actor is None else f"{verdict} by {actor}"
            payload = uplink.encode_readings(device_id, signed, verdict_text(text, chunk_flags),
                                             int(received_at * 1000))
            journal.append(NewMessage(
                topics.UP_READINGS, device_id, payload, priority_for(rules, self.critical, notes),
                verdict, chunk_flags, keys.signing_kid, first, first + len(chunk) - 1,
                len(chunk), received_at))
            readings += rules
            all_flags += chunk_flags
        return Attested(tuple(journal), tuple(refused), tuple(readings),
                        clean_flags(all_flags), tuple(notes), actor)


def verify_attested(data: bytes, gateway_public: bytes, now: int | None = None
                    ) -> list[senml.Reading]:
    """Check an attestation (field 2 of an uplink readings message whose verdict is
    attested/manual) against the gateway's Ed25519 public key -> its readings.
    Raises SealError (signature, kid) or DecodeError/ValidationError (content)."""
    msg = cose.sign1_verify(gateway_public, data, kid=cose.key_id(gateway_public))
    if msg.content_type != cose.CT_SENML_CBOR:
        raise ValidationError("content_type", f"expected {cose.CT_SENML_CBOR} (SenML CBOR)")
    return senml.decode_pack(msg.payload, max_records=MAX_PACK, now=now)


