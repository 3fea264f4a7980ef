-- Initial schema. Migrations are expand-only: blue and green share this database during a deploy.
-- UUIDs are stored as hyphenated text, timestamps as RFC 3339 text, except readings (below).

CREATE TABLE device_groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    protocol    TEXT NOT NULL CHECK (protocol IN ('modbus', 'mqtt')),
    group_id    TEXT REFERENCES device_groups (id) ON DELETE SET NULL,
    config      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE series (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric      TEXT NOT NULL,
    unit        TEXT,
    UNIQUE (device_id, metric)
);

-- Clustered on (series, ts) so range scans are sequential and inserts stay cheap as the table
-- grows; ts is microseconds since the Unix epoch.
CREATE TABLE readings (
    series_id   INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    value       REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    created_at    TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
);

CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL CHECK (json_valid(value)),
    updated_at  TEXT NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    detail      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
    remote_addr TEXT
);
CREATE INDEX audit_log_at_idx ON audit_log (at);

CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    device_id       TEXT REFERENCES devices (id) ON DELETE CASCADE,
    message         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    cleared_at      TEXT,
    acknowledged_at TEXT,
    acknowledged_by TEXT
);
CREATE UNIQUE INDEX notifications_open_uidx ON notifications (kind, device_id)
    WHERE cleared_at IS NULL AND acknowledged_at IS NULL;
