"""The device registry: gateways, devices, patients (pseudonyms only), device-patient
bindings, certificates and the append-only key journal, in one SQLite file in the agent's
data directory. docs/keys-and-certificates.md describes the model and the decisions.
"""

from edge_agent.registry.schema import FILE_NAME, RegistrySchemaError
from edge_agent.registry.store import (
    Binding,
    CertificateRecord,
    ConflictError,
    Device,
    Gateway,
    KeyRecord,
    NotFoundError,
    OrgCARecord,
    Registry,
    RegistryError,
    Step,
    check_pseudonym,
    kid_hex,
    link_address,
    manual_source_id,
    tls_key_id,
)

__all__ = [
    "FILE_NAME",
    "Binding",
    "CertificateRecord",
    "ConflictError",
    "Device",
    "Gateway",
    "KeyRecord",
    "NotFoundError",
    "OrgCARecord",
    "Registry",
    "RegistryError",
    "RegistrySchemaError",
    "Step",
    "check_pseudonym",
    "kid_hex",
    "link_address",
    "manual_source_id",
    "tls_key_id",
]
