"""Chain of trust: the organisation CA (org_ca), private key files (keyfiles), the broker's
mosquitto configuration with its per-gateway ACL (mosquitto_config), the gateway <-> CA
exchange files (exchange) and the CA's decision on a gateway request (gateway_policy).
docs/keys-and-certificates.md describes the chain and the decisions.
"""

from edge_agent.ca.keyfiles import KeyFileError
from edge_agent.ca.org_ca import (
    DEFAULT_CENTRE_NAME,
    CAError,
    IssuedRecord,
    OrgCA,
    RevokedRecord,
    new_tls_key,
    tls_request,
)

__all__ = [
    "DEFAULT_CENTRE_NAME",
    "CAError",
    "IssuedRecord",
    "KeyFileError",
    "OrgCA",
    "RevokedRecord",
    "new_tls_key",
    "tls_request",
]
