"""The tamper-evident journal of events: transmissions, receptions, key and certificate
lifecycle, alarm steps, configuration and maintenance (docs/eventlog.md).

chain.py is the format and its verification (pure), kinds.py the event kinds and the rule
that keeps keys and patient data out, store.py the SQLite file with signed checkpoints.
"""

from edge_agent.eventlog.chain import Checkpoint, Entry, Problem, Report, verify_chain
from edge_agent.eventlog.kinds import KINDS
from edge_agent.eventlog.store import EventLog, EventLogFile, EventLogStats

__all__ = ["KINDS", "Checkpoint", "Entry", "EventLog", "EventLogFile", "EventLogStats",
           "Problem", "Report", "verify_chain"]
