"""Verification pipeline: every device message checked at the moment it is received.

directory (what the verifier asks about devices, patients and the gateway's keys),
sessions + state_store (session table, replay trackers, persisted), verifier (the
decisions: Verdict per message), attest (readings the gateway signs itself).
docs/verification.md describes the rules and the decisions.
"""

from edge_agent.pipeline.attest import (
    ATTESTED,
    MANUAL,
    Attested,
    Attestor,
    Observation,
    SeqAllocator,
    verify_attested,
)
from edge_agent.pipeline.directory import (
    DeviceDirectory,
    DirectoryUnavailable,
    GatewayKeys,
    MemoryDirectory,
)
from edge_agent.pipeline.sessions import (
    DeviceSession,
    SessionPolicy,
    SessionRefused,
    SessionTable,
)
from edge_agent.pipeline.state_store import StateStore, StateStoreError
from edge_agent.pipeline.verifier import AckPlan, Gap, Verdict, Verifier

__all__ = [
    "ATTESTED",
    "MANUAL",
    "AckPlan",
    "Attested",
    "Attestor",
    "DeviceDirectory",
    "DeviceSession",
    "DirectoryUnavailable",
    "Gap",
    "GatewayKeys",
    "MemoryDirectory",
    "Observation",
    "SeqAllocator",
    "SessionPolicy",
    "SessionRefused",
    "SessionTable",
    "StateStore",
    "StateStoreError",
    "Verdict",
    "Verifier",
    "verify_attested",
]
