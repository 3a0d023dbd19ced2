"""Registry schema: DDL, integrity triggers and migrations versioned by `PRAGMA user_version`.

Each migration runs in one transaction with its user_version bump, so a crash leaves the file at
the previous version. A file from a newer agent is refused, never guessed at.

The key journal (`key_steps`) and the certificate steps are append-only: triggers refuse UPDATE
and DELETE, a step before `created`, anything after `destroyed`, destroying a key still in use,
and a step dated before the key's previous one. Key and certificate rows are immutable. The
triggers guard against bugs and careless tools; someone who can write the file can drop them,
which is why the journal is also forwarded to the monitoring centre as events.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from edge_agent.journal import schema as journal_schema

FILE_NAME = "registry.sqlite3"

HOLDER_KINDS = ("org", "gateway", "device")
# Where the private part lives, i.e. who must destroy it.
CUSTODIANS = ("ca", "gateway", "device")
PURPOSES = ("ca-signing", "tls-ca", "signing", "agreement", "session", "tls-client",
            "tls-server")
HOLDER_STATUSES = ("active", "retired", "compromised")
_STEP_CHECK = "('created', 'activated', 'retired', 'revoked', 'compromised', 'destroyed')"


def _forbid(table: str, action: str, message: str) -> str:
    return (f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


def _steps_table(table: str, subject: str, subject_type: str, parent: str,
                 what: str) -> tuple[str, ...]:
    """An append-only step journal (each step once per subject) with the ordering rules
    shared by the key journal and the certificate steps."""
    same = f"{subject} = NEW.{subject}"
    return (
        f"""
        CREATE TABLE {table} (
            seq    INTEGER PRIMARY KEY AUTOINCREMENT,
            {subject} {subject_type} NOT NULL REFERENCES {parent},
            step   TEXT NOT NULL CHECK (step IN {_STEP_CHECK}),
            at     INTEGER NOT NULL,
            actor  TEXT NOT NULL CHECK (length(actor) > 0),
            reason TEXT NOT NULL DEFAULT '',
            UNIQUE ({subject}, step)
        )
        """,
        f"""
        CREATE TRIGGER {table}_order BEFORE INSERT ON {table}
        BEGIN
            SELECT RAISE(ABORT, '{what}: the first step must be created')
             WHERE NEW.step <> 'created' AND NOT EXISTS
                   (SELECT 1 FROM {table} WHERE {same} AND step = 'created');
            SELECT RAISE(ABORT, '{what}: nothing may follow destroyed')
             WHERE EXISTS (SELECT 1 FROM {table} WHERE {same} AND step = 'destroyed');
            SELECT RAISE(ABORT, '{what}: retire, revoke or compromise before destroyed')
             WHERE NEW.step = 'destroyed' AND NOT EXISTS
                   (SELECT 1 FROM {table} WHERE {same}
                      AND step IN ('retired', 'revoked', 'compromised'));
            SELECT RAISE(ABORT, '{what}: a step cannot be dated before the previous one')
             WHERE NEW.at < (SELECT max(at) FROM {table} WHERE {same});
        END
        """,
        _forbid(table, "UPDATE", f"{what} are append-only"),
        _forbid(table, "DELETE", f"{what} are append-only"),
    )


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"



# Gateways and devices are enrolled, then retired or compromised: never deleted.
_HOLDER_LIFE = f"""status      TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN {_in(HOLDER_STATUSES)}),
        enrolled_at INTEGER NOT NULL,
        enrolled_by TEXT NOT NULL,
        ended_at    INTEGER,
        ended_by    TEXT,
        end_reason  TEXT,
        CHECK ((status = 'active') = (ended_at IS NULL))"""

_V1 = (
    """
    CREATE TABLE org_ca (
        name         TEXT PRIMARY KEY,
        kid          TEXT NOT NULL UNIQUE,      -- its Ed25519 key (keys.kid)
        cwt          BLOB NOT NULL,             -- self-signed CA certificate
        x509_pem     BLOB,                      -- TLS CA certificate (broker credentials)
        installed_at INTEGER NOT NULL,
        installed_by TEXT NOT NULL
    )
    """,
    f"""
    CREATE TABLE gateways (
        id          TEXT PRIMARY KEY,            -- topic-safe; also its TLS certificate CN
        {_HOLDER_LIFE}
    )
    """,
    f"""
    CREATE TABLE devices (
        id                       TEXT PRIMARY KEY,
        gateway_id               TEXT NOT NULL REFERENCES gateways (id),
        model                    TEXT NOT NULL,
        serial                   TEXT NOT NULL,
        firmware                 TEXT NOT NULL,
        registration_number      TEXT,        -- regulatory (e.g. EUDAMED/FDA) registration
        registration_valid_until INTEGER,
        calibration_due          INTEGER,
        battery                  REAL CHECK (battery IS NULL OR (battery >= 0 AND battery <= 100)),
        last_seen                INTEGER,
        {_HOLDER_LIFE}
    )
    """,
    # One physical device is enrolled once at a time; a refurbished one may come back later.
    "CREATE UNIQUE INDEX devices_active_serial ON devices (model, serial) WHERE status = 'active'",
    """
    CREATE TABLE patients (
        id         TEXT PRIMARY KEY,              -- pseudonym only: no names, no contact data
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE bindings (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id  TEXT NOT NULL REFERENCES devices (id),
        patient_id TEXT NOT NULL REFERENCES patients (id),
        since      INTEGER NOT NULL,                -- [since, until): until NULL = still worn
        until      INTEGER,
        created_by TEXT NOT NULL,
        ended_by   TEXT,
        CHECK (until IS NULL OR until > since)
    )
    """,
    "CREATE INDEX bindings_device ON bindings (device_id, since)",
    # Which patient a reading belongs to must never be ambiguous.
    """
    CREATE TRIGGER bindings_no_overlap BEFORE INSERT ON bindings
    BEGIN
        SELECT RAISE(ABORT, 'binding overlaps another binding of this device')
         WHERE EXISTS (SELECT 1 FROM bindings b WHERE b.device_id = NEW.device_id
                         AND b.since < coalesce(NEW.until, 9223372036854775807)
                         AND coalesce(b.until, 9223372036854775807) > NEW.since);
    END
    """,
    """
    CREATE TRIGGER bindings_end_only BEFORE UPDATE ON bindings
    BEGIN
        SELECT RAISE(ABORT, 'a binding can only be ended once; its other fields are history')
         WHERE OLD.until IS NOT NULL OR NEW.device_id IS NOT OLD.device_id
            OR NEW.patient_id IS NOT OLD.patient_id OR NEW.since IS NOT OLD.since
            OR NEW.created_by IS NOT OLD.created_by;
    END
    """,
    _forbid("bindings", "DELETE", "bindings are history: end them, never delete them"),
    f"""
    CREATE TABLE keys (
        kid         TEXT PRIMARY KEY CHECK (length(kid) = 16 AND kid NOT GLOB '*[^0-9a-f]*'),
        holder_kind TEXT NOT NULL CHECK (holder_kind IN {_in(HOLDER_KINDS)}),
        holder_id   TEXT NOT NULL,
        purpose     TEXT NOT NULL CHECK (purpose IN {_in(PURPOSES)}),
        held_at     TEXT NOT NULL CHECK (held_at IN {_in(CUSTODIANS)}),
        public_key  BLOB,                        -- NULL for symmetric (session) keys
        anchor      TEXT REFERENCES keys (kid),  -- the certified key it is used together with
        not_before  INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        CHECK (not_before < expires),
        CHECK ((anchor IS NULL) = (purpose NOT IN ('agreement', 'session')))
    )
    """,
    "CREATE INDEX keys_holder ON keys (holder_kind, holder_id)",
    "CREATE INDEX keys_anchor ON keys (anchor)",
    _forbid("keys", "UPDATE", "keys are immutable: record a step in the key journal instead"),
    _forbid("keys", "DELETE", "keys are never deleted: the key journal accounts for each one"),
    *_steps_table("key_steps", "kid", "TEXT", "keys (kid)", "key journal steps"),
    """
    CREATE TABLE certificates (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        format      TEXT NOT NULL CHECK (format IN ('cwt', 'x509')),
        serial      TEXT NOT NULL,               -- CWT cti or X.509 serial, hex
        kid         TEXT NOT NULL REFERENCES keys (kid),   -- the certified key
        subject     TEXT NOT NULL,
        issuer      TEXT NOT NULL,
        issued_by   INTEGER REFERENCES certificates (id),  -- NULL: self-signed or a CA root
        not_before  INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        raw         BLOB NOT NULL,
        CHECK (not_before < expires),
        UNIQUE (format, issuer, serial)
    )
    """,
    "CREATE INDEX certificates_kid ON certificates (kid)",
    _forbid("certificates", "UPDATE", "certificates are immutable: record a step instead"),
    _forbid("certificates", "DELETE", "certificates are never deleted"),
    *_steps_table("certificate_steps", "certificate_id", "INTEGER", "certificates (id)",
                  "certificate steps"),
    _forbid("devices", "DELETE", "devices are retired, never deleted"),
    _forbid("gateways", "DELETE", "gateways are retired, never deleted"),
    # The key journal as one row per key: what a technician or auditor reads.
    """
    CREATE VIEW key_journal AS
    SELECT k.kid, k.holder_kind, k.holder_id, k.purpose, k.held_at, k.anchor,
           k.not_before, k.expires,
           c.at AS created_at,   c.actor AS created_by,
           a.at AS activated_at, a.actor AS activated_by,
           r.at AS retired_at,   r.actor AS retired_by,
           v.at AS revoked_at,   v.actor AS revoked_by,
           x.at AS compromised_at, x.actor AS compromised_by,
           d.at AS destroyed_at, d.actor AS destroyed_by
      FROM keys k
      LEFT JOIN key_steps c ON c.kid = k.kid AND c.step = 'created'
      LEFT JOIN key_steps a ON a.kid = k.kid AND a.step = 'activated'
      LEFT JOIN key_steps r ON r.kid = k.kid AND r.step = 'retired'
      LEFT JOIN key_steps v ON v.kid = k.kid AND v.step = 'revoked'
      LEFT JOIN key_steps x ON x.kid = k.kid AND x.step = 'compromised'
      LEFT JOIN key_steps d ON d.kid = k.kid AND d.step = 'destroyed'
    """,
)

# What a device is: "sealing" (our firmware: certified keys, sealed readings), "standard" (a
# BLE health device or third-party serial device: no keys, its readings are attested by the
# gateway, found by its link address) or "manual" (the source of one patient's manual
# entries). The kind never changes after enrollment.
DEVICE_KINDS = ("sealing", "standard", "manual")
LINK_TRANSPORTS = ("ble", "serial")

_V2 = (
    f"""ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'sealing'
        CHECK (kind IN {_in(DEVICE_KINDS)})""",
    f"""ALTER TABLE devices ADD COLUMN transport TEXT
        CHECK (transport IS NULL OR transport IN {_in(LINK_TRANSPORTS)})""",
    # ble: "AA:BB:CC:DD:EE:FF"; serial: "path:/dev/..." or "usb:303a:1001[:SERIAL]"
    "ALTER TABLE devices ADD COLUMN address TEXT",
    # One active device per link address: the agent maps an address to exactly one id.
    "CREATE UNIQUE INDEX devices_active_link ON devices (transport, address) "
    "WHERE status = 'active' AND address IS NOT NULL",
    """
    CREATE TRIGGER devices_kind_fixed BEFORE UPDATE OF kind, transport, address ON devices
    BEGIN
        SELECT RAISE(ABORT, 'a device keeps its kind and link: retire it and register anew')
         WHERE NEW.kind IS NOT OLD.kind OR NEW.transport IS NOT OLD.transport
            OR NEW.address IS NOT OLD.address;
    END
    """,
)

# MIGRATIONS[i] brings a file from user_version i to i + 1. Append only; never edit a shipped one.
MIGRATIONS: tuple[Sequence[str], ...] = (_V1, _V2)
LATEST_VERSION = len(MIGRATIONS)


class RegistrySchemaError(RuntimeError):
    """The registry file has a schema this agent cannot use."""


schema_version = journal_schema.user_version


def upgrade(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Apply the missing migrations (conn in autocommit mode); return how many ran. Each runs
    in its own transaction with its user_version bump (the journal's migrate() does that)."""
    found = schema_version(conn)
    if found > len(migrations):
        raise RegistrySchemaError(
            f"registry schema version {found} is newer than this agent's {len(migrations)}: "
            "upgrade the agent instead of opening this file with an older one")
    return journal_schema.migrate(conn, migrations)
