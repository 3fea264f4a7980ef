-- Ingestion: device status, MQTT credentials, and leases that give each Modbus device exactly
-- one poller (and the scheduler exactly one runner) across instances. Expand-only.

CREATE TABLE device_status (
    device_id            TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    status               TEXT NOT NULL CHECK (status IN ('unknown', 'online', 'offline', 'error')),
    last_error           TEXT,
    last_seen_at         TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    changed_at           TEXT NOT NULL
);

CREATE TABLE mqtt_credentials (
    device_id    TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    username     TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

-- expires_at is microseconds since the Unix epoch, so comparisons are numeric.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX leases_holder_idx ON leases (holder);
