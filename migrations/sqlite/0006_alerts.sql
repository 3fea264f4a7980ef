-- Alerting (SQLite): TEXTs are text; the alerting timestamps are microseconds since the Unix
-- epoch (INTEGER), like readings and leases, so that due-time comparisons are numeric.
-- Alerting: rules, notification channels, alerts with their transition history, the delivery
-- outbox and silences (see docs/alerts.md). Expand-only: new tables.

CREATE TABLE channels (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('webhook', 'discord', 'slack', 'email')),
    -- Kind-specific settings (URL, headers, SMTP host...), validated by the application.
    settings      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
    -- HMAC key or SMTP password; never returned by the API.
    secret        TEXT,
    allow_private INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE alert_rules (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('threshold', 'no_data', 'system')),
    -- Target: one device, one group's devices, or (both NULL) every device with the metric.
    -- A rule goes with its device or group: turning it into an every-device rule would be worse.
    device_id            TEXT REFERENCES devices (id) ON DELETE CASCADE,
    group_id             TEXT REFERENCES device_groups (id) ON DELETE CASCADE,
    metric               TEXT,
    condition            TEXT NOT NULL,
    threshold            REAL,
    threshold_high       REAL,
    clear_threshold      REAL,
    clear_threshold_high REAL,
    for_s                INTEGER NOT NULL DEFAULT 0,
    repeat_interval_s    INTEGER,
    no_data_s            INTEGER,
    system_check         TEXT,
    severity             TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    enabled              INTEGER NOT NULL DEFAULT 1,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    CHECK (device_id IS NULL OR group_id IS NULL)
);

-- A rule's channels as rows rather than a JSON list: deleting a channel takes it off every rule.
CREATE TABLE alert_rule_channels (
    rule_id     TEXT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    channel_id  TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    PRIMARY KEY (rule_id, channel_id)
);
CREATE INDEX alert_rule_channels_channel_idx ON alert_rule_channels (channel_id);

CREATE TABLE alerts (
    id               TEXT PRIMARY KEY,
    rule_id          TEXT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id        TEXT REFERENCES devices (id) ON DELETE CASCADE,
    metric           TEXT,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    value            REAL,
    pending_since    INTEGER,
    started_at       INTEGER,
    resolved_at      INTEGER,
    last_notified_at INTEGER,
    -- Newest reading evaluated: a redelivered (older or equal) reading is not evaluated again.
    last_eval_ts     INTEGER,
    acknowledged_by  TEXT,
    acknowledged_at  INTEGER,
    ack_comment      TEXT,
    -- Bumped by every transition; a transition updates the row only at the seq it read.
    seq              INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
-- One open alert per (rule, device, metric): two instances creating it race on this index.
CREATE UNIQUE INDEX alerts_open_uidx ON alerts
    (rule_id, COALESCE(device_id, ''), COALESCE(metric, ''))
    WHERE state <> 'resolved';
CREATE INDEX alerts_device_idx ON alerts (device_id);
CREATE INDEX alerts_resolved_at_idx ON alerts (resolved_at);

CREATE TABLE alert_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    TEXT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    -- pending | firing | resolved | repeat | acknowledged
    event       TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    value       REAL,
    muted       INTEGER NOT NULL DEFAULT 0,
    actor       TEXT,
    UNIQUE (alert_id, seq)
);

-- The outbox: written in the same transaction as the transition it announces.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    -- {alert_id}:{seq}:{channel_id}: one row per transition and channel, whoever writes it.
    idempotency_key TEXT NOT NULL UNIQUE,
    channel_id      TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    alert_id        TEXT REFERENCES alerts (id) ON DELETE SET NULL,
    rule_id         TEXT,
    event           TEXT NOT NULL,
    message         TEXT NOT NULL CHECK (json_valid(message)),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_state_idx ON deliveries (state, created_at);
-- A notification is sent after the earlier ones of its alert to the same channel.
CREATE INDEX deliveries_alert_idx ON deliveries (alert_id, channel_id);

CREATE TABLE silences (
    id          TEXT PRIMARY KEY,
    rule_id     TEXT REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id   TEXT REFERENCES devices (id) ON DELETE CASCADE,
    group_id    TEXT REFERENCES device_groups (id) ON DELETE CASCADE,
    starts_at   INTEGER NOT NULL,
    until       INTEGER NOT NULL,
    comment     TEXT,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX silences_until_idx ON silences (until);
