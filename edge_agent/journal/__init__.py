"""The durable reading journal: nothing acknowledged to a device is ever lost.

`Journal` (committer.py) is the asyncio API the agent uses; `JournalStore` (store.py) is the
synchronous SQLite layer under it; policy.py holds the pure retention and disk-budget rules.
docs/journal.md describes the model and the decisions.
"""

from edge_agent.journal.committer import Journal, JournalClosedError, JournalConfig
from edge_agent.journal.policy import BudgetAction
from edge_agent.journal.schema import RECEIVED, SENT, STORED, SchemaError
from edge_agent.journal.store import (
    JOURNAL_KINDS,
    VERDICTS,
    BudgetOutcome,
    CheckResult,
    JournalStats,
    JournalStore,
    NewMessage,
    Priority,
    QuarantineEntry,
    ReceiptResult,
    StoredMessage,
)

__all__ = [
    "JOURNAL_KINDS",
    "RECEIVED",
    "SENT",
    "STORED",
    "VERDICTS",
    "BudgetAction",
    "BudgetOutcome",
    "CheckResult",
    "Journal",
    "JournalClosedError",
    "JournalConfig",
    "JournalStats",
    "JournalStore",
    "NewMessage",
    "Priority",
    "QuarantineEntry",
    "ReceiptResult",
    "SchemaError",
    "StoredMessage",
]
