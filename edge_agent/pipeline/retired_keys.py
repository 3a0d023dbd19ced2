"""Retired gateway agreement keys the session handshake may still need (read at start-up).

A gateway renewal moves the X25519 agreement key in use to keys/retired/<kid>.key
(edge_agent.lifecycle.gateway_keys) and the lifecycle destroys it within ten days. Devices
enrolled before the renewal keep addressing their hello to that key until they are renewed,
so the agent loads every retired, not yet destroyed agreement key of this gateway into
`GatewayKeys.retired_agreement`. Compromised or revoked keys are never loaded: a hello to
them is refused like one to a destroyed key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.ca import keyfiles
from edge_agent.lifecycle.gateway_keys import RETIRED_DIR
from edge_agent.registry import Registry
from protocol import cose, crypto

AGREEMENT = "agreement"


@dataclass(frozen=True, slots=True)
class RetiredAgreement:
    """What start-up found: private keys still usable, kids no longer usable, and why."""

    private_keys: tuple[bytes, ...] = field(default=(), repr=False)
    gone: tuple[bytes, ...] = ()
    notes: tuple[str, ...] = ()


def load_retired_agreement(keys_dir: Path, registry: Registry, gateway_id: str
                           ) -> RetiredAgreement:
    """The retired agreement keys of `gateway_id` still on disk (registry says retired, not
    destroyed, compromised or revoked; the file's key matches its kid). A file that is
    missing, loose or wrong makes that key unusable (noted), never the agent's start fail."""
    private_keys: list[bytes] = []
    gone: list[bytes] = []
    notes: list[str] = []
    for key in registry.keys("gateway", gateway_id, AGREEMENT):
        facts = key.facts
        kid = bytes.fromhex(key.kid)
        if facts.retired is None and facts.destroyed is None and facts.compromised is None \
                and facts.revoked is None:
            continue  # the key in use (or pending): loaded by the service itself
        if facts.destroyed is not None or facts.compromised is not None \
                or facts.revoked is not None:
            gone.append(kid)
            continue
        path = keys_dir / RETIRED_DIR / f"{key.kid}.key"
        try:
            private = keyfiles.load_x25519_private(path)
        except (keyfiles.KeyFileError, OSError, ValueError) as exc:
            gone.append(kid)
            notes.append(f"retired agreement key {key.kid} not loaded: {exc}")
            continue
        if cose.key_id(crypto.x25519_public_key(private)) != kid:
            gone.append(kid)
            notes.append(f"retired agreement key {key.kid}: {path} holds another key")
            continue
        private_keys.append(private)
    return RetiredAgreement(tuple(private_keys), tuple(gone), tuple(notes))
