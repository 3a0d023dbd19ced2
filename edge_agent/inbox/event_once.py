"""Events an inbox entry already left in the tamper-evident event journal, so that applying
the entry again (after a crash, or a failure after the events were recorded) adds none twice.

The reading journal deduplicates by payload digest; the event journal is append-only and
cannot. SQLite gives no transaction across the two files, so the only exact check is to
look: `mark()` (at prepare time, stored with the prepared work) is the journal's head seq
before the entry could have recorded anything; a retry reads the entries after the mark
and skips the events found there. Read-only connection (WAL: never blocks the writer);
what the recorder still queues is covered by `RecentEvents`, in memory, for retries in the
same process (a crashed process's queue is gone with it: not recorded, so recorded now).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

from edge_agent.eventlog import Entry, EventLogFile

# Identity of an event within one inbox entry: e.g. ("reception.received", digest hex).
Match = Callable[[Entry], Hashable | None]


class EventJournalLookup:
    """Read-only questions to the agent's event journal file (`events.sqlite3`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """The seq of the last committed entry (0 for an empty journal)."""
        journal = EventLogFile.open_readonly(self.path)
        try:
            return journal.head()[0]
        finally:
            journal.close()

    def find(self, after: int, match: Match) -> set[Hashable]:
        """The identities `match` gives the entries after seq `after` (None: not ours).
        Blocking: run it on a worker thread."""
        journal = EventLogFile.open_readonly(self.path)
        try:
            found = set()
            for entry in journal.entries(after + 1):
                identity = match(entry)
                if identity is not None:
                    found.add(identity)
            return found
        finally:
            journal.close()


class RecentEvents:
    """Identities recorded by this process, newest kept (bounded: a retry comes soon)."""

    def __init__(self, limit: int = 4096) -> None:
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._limit = limit

    def __contains__(self, identity: Hashable) -> bool:
        return identity in self._seen

    def add_all(self, identities: Iterable[Hashable]) -> None:
        for identity in identities:
            self._seen[identity] = None
            self._seen.move_to_end(identity)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
