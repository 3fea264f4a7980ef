-- Ingestion: device status, MQTT credentials, and leases that give each Modbus device exactly
-- one poller (and the scheduler exactly one runner) across instances. Expand-only.

CREATE TABLE device_status (
    device_id            UUID PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    status               TEXT NOT NULL CHECK (status IN ('unknown', 'online', 'offline', 'error')),
    last_error           TEXT,
    last_seen_at         TIMESTAMPTZ,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    changed_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per-device MQTT credentials issued by ddms (self-registration, API); the secret is stored
-- as a SHA-256 hash of a high-entropy random string.
CREATE TABLE mqtt_credentials (
    device_id    UUID PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    username     TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A lease is held by one instance until expires_at; the holder renews it, others may take it
-- once it has expired. Expiry uses the database clock, so instance clocks may differ.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX leases_holder_idx ON leases (holder);
