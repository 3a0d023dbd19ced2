"""The reference monitoring centre: the oracle for "nothing lost" (docs/centre.md).

verifier.py  what can be proven about a relayed message (pure)
store.py     SQLite on disk: readings, receipts, checkpoints, keys, alarms, counters
service.py   the MQTT 5 side: shared subscription, receipts after commit, alarm commands
report.py    generated vs received vs duplicated vs lost, latencies, alarms (a plain dict)
"""

from simulator.centre.report import build_report
from simulator.centre.service import Centre, CentreConfig, CentreError, Inbound, Ingest, Sent
from simulator.centre.store import AlarmView, Store
from simulator.centre.verifier import TrustAnchor, TrustedKey

__all__ = [
    "AlarmView",
    "Centre",
    "CentreConfig",
    "CentreError",
    "Inbound",
    "Ingest",
    "Sent",
    "Store",
    "TrustAnchor",
    "TrustedKey",
    "build_report",
]
