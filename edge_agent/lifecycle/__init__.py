"""Key and certificate lifecycle.

states.py is pure: a key's or certificate's state as a function of its recorded facts and an
instant, and which steps may follow. engine.py applies it to the registry (acceptance at every
reading, compromise, retirement, destruction scheduling, renewal planning); import it as
`edge_agent.lifecycle.engine` — this package does not import it, because the registry itself
uses the pure states and the engine uses the registry.
"""

from edge_agent.lifecycle.states import (
    ACTIVE,
    COMPROMISED,
    DESTROYED,
    DESTRUCTION_WINDOW,
    EXPIRED,
    EXPIRING,
    PENDING,
    RENEWAL_DUE,
    RETIRED,
    REVOKED,
    STATES,
    STEPS,
    USABLE,
    Facts,
    TransitionError,
    check_step,
    destruction_deadline,
    next_change,
    state,
)

__all__ = [
    "ACTIVE",
    "COMPROMISED",
    "DESTROYED",
    "DESTRUCTION_WINDOW",
    "EXPIRED",
    "EXPIRING",
    "PENDING",
    "RENEWAL_DUE",
    "RETIRED",
    "REVOKED",
    "STATES",
    "STEPS",
    "USABLE",
    "Facts",
    "TransitionError",
    "check_step",
    "destruction_deadline",
    "next_change",
    "state",
]
