-- Alerting: rules, notification channels, alerts with their transition history, the delivery
-- outbox and silences (see docs/alerts.md). Expand-only: new tables.

CREATE TABLE channels (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('webhook', 'discord', 'slack', 'email')),
    -- Kind-specific settings (URL, headers, SMTP host...), validated by the application.
    settings      JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- HMAC key or SMTP password; never returned by the API.
    secret        TEXT,
    allow_private BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE alert_rules (
    id                   UUID PRIMARY KEY,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('threshold', 'no_data', 'system')),
    -- Target: one device, one group's devices, or (both NULL) every device with the metric.
    -- A rule goes with its device or group: turning it into an every-device rule would be worse.
    device_id            UUID REFERENCES devices (id) ON DELETE CASCADE,
    group_id             UUID REFERENCES device_groups (id) ON DELETE CASCADE,
    metric               TEXT,
    condition            TEXT NOT NULL,
    threshold            DOUBLE PRECISION,
    threshold_high       DOUBLE PRECISION,
    clear_threshold      DOUBLE PRECISION,
    clear_threshold_high DOUBLE PRECISION,
    for_s                BIGINT NOT NULL DEFAULT 0,
    repeat_interval_s    BIGINT,
    no_data_s            BIGINT,
    system_check         TEXT,
    severity             TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    enabled              BOOLEAN NOT NULL DEFAULT TRUE,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (device_id IS NULL OR group_id IS NULL)
);

-- A rule's channels as rows rather than a JSON list: deleting a channel takes it off every rule.
CREATE TABLE alert_rule_channels (
    rule_id     UUID NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    channel_id  UUID NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    PRIMARY KEY (rule_id, channel_id)
);
CREATE INDEX alert_rule_channels_channel_idx ON alert_rule_channels (channel_id);

CREATE TABLE alerts (
    id               UUID PRIMARY KEY,
    rule_id          UUID NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id        UUID REFERENCES devices (id) ON DELETE CASCADE,
    metric           TEXT,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    value            DOUBLE PRECISION,
    pending_since    TIMESTAMPTZ,
    started_at       TIMESTAMPTZ,
    resolved_at      TIMESTAMPTZ,
    last_notified_at TIMESTAMPTZ,
    -- Newest reading evaluated: a redelivered (older or equal) reading is not evaluated again.
    last_eval_ts     TIMESTAMPTZ,
    acknowledged_by  TEXT,
    acknowledged_at  TIMESTAMPTZ,
    ack_comment      TEXT,
    -- Bumped by every transition; a transition updates the row only at the seq it read.
    seq              BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One open alert per (rule, device, metric): two instances creating it race on this index.
CREATE UNIQUE INDEX alerts_open_uidx ON alerts
    (rule_id, COALESCE(device_id, '00000000-0000-0000-0000-000000000000'::uuid), COALESCE(metric, ''))
    WHERE state <> 'resolved';
CREATE INDEX alerts_device_idx ON alerts (device_id);
CREATE INDEX alerts_resolved_at_idx ON alerts (resolved_at);

CREATE TABLE alert_transitions (
    id          BIGSERIAL PRIMARY KEY,
    alert_id    UUID NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    -- pending | firing | resolved | repeat | acknowledged
    event       TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    value       DOUBLE PRECISION,
    muted       BOOLEAN NOT NULL DEFAULT FALSE,
    actor       TEXT,
    UNIQUE (alert_id, seq)
);

-- The outbox: written in the same transaction as the transition it announces.
CREATE TABLE deliveries (
    id              UUID PRIMARY KEY,
    -- {alert_id}:{seq}:{channel_id}: one row per transition and channel, whoever writes it.
    idempotency_key TEXT NOT NULL UNIQUE,
    channel_id      UUID NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    alert_id        UUID REFERENCES alerts (id) ON DELETE SET NULL,
    rule_id         UUID,
    event           TEXT NOT NULL,
    message         JSONB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_until    TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_state_idx ON deliveries (state, created_at);
-- A notification is sent after the earlier ones of its alert to the same channel.
CREATE INDEX deliveries_alert_idx ON deliveries (alert_id, channel_id);

CREATE TABLE silences (
    id          UUID PRIMARY KEY,
    rule_id     UUID REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id   UUID REFERENCES devices (id) ON DELETE CASCADE,
    group_id    UUID REFERENCES device_groups (id) ON DELETE CASCADE,
    starts_at   TIMESTAMPTZ NOT NULL,
    until       TIMESTAMPTZ NOT NULL,
    comment     TEXT,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX silences_until_idx ON silences (until);
