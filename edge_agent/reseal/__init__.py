"""Re-sealing data at rest before a retired key is destroyed (docs/keys-and-certificates.md).

* plan.py    — pure: which items a key's destruction would leave unverifiable, verdicts,
               statements, and the check of a re-seal table against what is stored.
* sources.py — reads the items (event-log checkpoints, sealed journal rows) and checks them.
* store.py   — the re-seal table (`reseal.sqlite3` in the data directory), append-only.
* keeper.py  — the destroyer the lifecycle scheduler calls: re-seal first, destroy only then.
"""

from edge_agent.reseal.plan import Item, ResealOutcome, Statement, reseal_items

__all__ = ["Item", "ResealOutcome", "Statement", "reseal_items"]
